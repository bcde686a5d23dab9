#!/usr/bin/env bash
# The paper's experiment at the scale of a CPU machine (configs/resnet_cpu.py says what differs and
# why), from scratch to docs/results.md:
#
#   launch/reproduce_cpu.sh CIFAR_FOLDER [OUT_DIR]
#
# Per model and seed: train (until the shortcut is taken), the single-pixel grid on 1,000
# class-balanced test images at test jitter (0, 0) and on 500 at (3, 5); the sanity checks on seed
# 0 of each model; then the report. Stages run one after another, each with its log in
# OUT_DIR/logs/. A rerun resumes every stage (checkpoints, finished grid cells and sanity methods),
# so the same command continues a killed run. MODELS/SEEDS narrow it, e.g. MODELS=resnet18 SEEDS=0.
set -euo pipefail
DATA=${1:?usage: launch/reproduce_cpu.sh CIFAR_FOLDER [OUT_DIR]}
OUT=${2:-workdirs/cpu}
RUNS=${RUNS:-"resnet18:0 resnet18:1 resnet18:2 vgg16:0"}  # model:seed, in this order
SANITY_SEED=${SANITY_SEED:-0}
JITTER=${JITTER:-"((3.0, 5.0),)"}
JITTER_IMAGES=${JITTER_IMAGES:-500}
mkdir -p "$OUT/logs"
git rev-parse --short HEAD > "$OUT/COMMIT" 2>/dev/null || true  # the report names the commit the runs used
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
  flags=(--config="configs/$base.py" --workdir="$workdir" --config.seed="$seed" "${DATA_FLAGS[@]}")
  mkdir -p "$workdir"  # the commit a run starts at stays its commit when later resumed at another
  [[ -e "$workdir/COMMIT" ]] || git rev-parse --short HEAD > "$workdir/COMMIT" 2>/dev/null || true
  stage "${model}_seed${seed}_train_grid" python -m saliency_jax.main "${flags[@]}"
  stage "${model}_seed${seed}_grid_jitter" python -m saliency_jax.main "${flags[@]}" --config.train.enabled=False \
      --config.single_pixel.test_jitter="$JITTER" --config.single_pixel.max_images="$JITTER_IMAGES"
  if [[ $seed == "$SANITY_SEED" ]]; then
    stage "${model}_seed${seed}_sanity" python -m saliency_jax.main --config="configs/sanity.py:$base" \
        --workdir="$workdir" --config.seed="$seed" "${DATA_FLAGS[@]}"
  fi
done
python -m saliency_jax.report --workdirs="$OUT/*_seed*" --out=docs
echo "report: docs/results.md (figures in docs/results/)"
