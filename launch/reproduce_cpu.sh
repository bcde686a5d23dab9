#!/usr/bin/env bash
# The paper's experiment and the leaderboard at the scale of a CPU machine (configs/resnet_cpu.py
# says what differs from the paper and why), from scratch to docs/results.md:
#
#   launch/reproduce_cpu.sh CIFAR_FOLDER [OUT_DIR]
#
# Per model and seed, in this order: train (until the shortcut is taken) and the paper's grid on
# 1,000 class-balanced test images at test jitter (0, 0); the leaderboard grid (every method,
# configs/leaderboard.py) on the same images, sharing the paper grid's cells; on seed 0 of each model
# the rest of the leaderboard: every method's time per image (benchmarks/method_seconds.py, about
# 5 min for resnet18: keep the machine otherwise idle then, the column says idle), its sanity
# studies (cascading randomisation, class and image sensitivity) and the faithfulness curves; the paper's grid on 500 images at test jitter (3, 5);
# and on seed 0 of each model the paper's sanity checks. Runs go resnet18 seeds 0 1 2, then vgg16
# seed 0, then vgg16 seeds 1 2, so a partial finish is useful. Each stage's log is in OUT_DIR/logs/.
# A rerun resumes every stage (checkpoints, finished grid cells, sanity and faithfulness methods), so
# the same command continues a killed run. RUNS narrows it, e.g. RUNS="resnet18:0".
set -euo pipefail
DATA=${1:?usage: launch/reproduce_cpu.sh CIFAR_FOLDER [OUT_DIR]}
OUT=${2:-workdirs/cpu}
RUNS=${RUNS:-"resnet18:0 resnet18:1 resnet18:2 vgg16:0 vgg16:1 vgg16:2"}  # model:seed, in this order
SANITY_SEED=${SANITY_SEED:-0}
JITTER=${JITTER:-"((3.0, 5.0),)"}
JITTER_IMAGES=${JITTER_IMAGES:-500}
mkdir -p "$OUT/logs"
DATA_FLAGS=(--config.data.source=folder --config.data.path="$DATA")

stage() {  # name command...: its log in OUT_DIR/logs/NAME.log; a rerun resumes it, appending to the log
  local log="$OUT/logs/$1.log"
  shift
  echo "$(date -u +%FT%TZ) start: $log"
  echo "=== $(date -u +%FT%TZ) at $(git rev-parse --short HEAD 2>/dev/null || echo '?'): $*" >> "$log"
  "$@" >> "$log" 2>&1
  echo "$(date -u +%FT%TZ) done:  $log"
}

for run in $RUNS; do
  model=${run%%:*} seed=${run##*:}
  workdir="$OUT/${model}_seed$seed"
  base="${model/resnet18/resnet}_cpu"
  common=(--workdir="$workdir" --config.seed="$seed" "${DATA_FLAGS[@]}")
  mkdir -p "$workdir"  # the commit a run starts at stays its commit when later resumed at another
  [[ -e "$workdir/COMMIT" ]] || git rev-parse --short HEAD > "$workdir/COMMIT" 2>/dev/null || true
  stage "${model}_seed${seed}_train_grid" python -m saliency_jax.main --config="configs/$base.py" "${common[@]}"
  stage "${model}_seed${seed}_leaderboard_grid" python -m saliency_jax.main --config="configs/leaderboard.py:$base" \
      "${common[@]}" --config.sanity.studies= --config.faithfulness.enabled=False
  if [[ $seed == "$SANITY_SEED" ]]; then  # the rest of the leaderboard's row first
    [[ -e "$workdir/timing/seconds.csv" ]] || stage "${model}_seed${seed}_timing" python benchmarks/method_seconds.py \
        --config="configs/leaderboard.py:$base" --out="$workdir/timing/seconds.csv"
    stage "${model}_seed${seed}_leaderboard_sanity_faithfulness" python -m saliency_jax.main \
        --config="configs/leaderboard.py:$base" "${common[@]}" --config.single_pixel.enabled=False
  fi
  stage "${model}_seed${seed}_grid_jitter" python -m saliency_jax.main --config="configs/$base.py" "${common[@]}" \
      --config.train.enabled=False --config.single_pixel.test_jitter="$JITTER" \
      --config.single_pixel.max_images="$JITTER_IMAGES"
  if [[ $seed == "$SANITY_SEED" ]]; then
    stage "${model}_seed${seed}_sanity" python -m saliency_jax.main --config="configs/sanity.py:$base" "${common[@]}"
  fi
done
echo "report: python -m saliency_jax.report --workdirs='$OUT/*_seed*' --out=OUT_DIR --notes=docs/results_notes.md"
