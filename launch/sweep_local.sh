#!/usr/bin/env bash
# The paper's sweep on one machine: resnet18 and vgg16 x model seeds 0 1 2, each trained and then
# evaluated on the single-pixel grid, then the tables over seeds.
#
#   launch/sweep_local.sh CIFAR_FOLDER [OUT_DIR] [--config.field=value ...]
#
# CIFAR_FOLDER: a CIFAR-10 image folder (train/<class>/, test/<class>/); OUT_DIR defaults to
# workdirs/sweep. With GPUs, one run per GPU at a time (CUDA_VISIBLE_DEVICES); without, one
# after another on all CPU cores. MODELS="resnet18" SEEDS="0" narrow the sweep. A rerun resumes
# every run from its last checkpoint and computes only missing cells.
set -euo pipefail
DATA=${1:?usage: launch/sweep_local.sh CIFAR_FOLDER [OUT_DIR] [--config.field=value ...]}
OUT=${2:-workdirs/sweep}
EXTRA=("${@:3}")
MODELS=${MODELS:-"resnet18 vgg16"}
SEEDS=${SEEDS:-"0 1 2"}
GPUS=$( (nvidia-smi -L 2>/dev/null || true) | wc -l)
SLOTS=$(( GPUS > 0 ? GPUS : 1 ))
mkdir -p "$OUT"

run() {  # model seed slot
  local workdir="$OUT/$1_seed$2" config="configs/resnet.py"
  [[ $1 == vgg16 ]] && config="configs/vgg16.py"
  local env=()
  (( GPUS > 0 )) && env=(CUDA_VISIBLE_DEVICES="$3")
  echo "start: $1 seed $2 -> $workdir (log: $workdir.log)"
  env "${env[@]}" python -m saliency_jax.main --config="$config" --workdir="$workdir" --config.seed="$2" \
      --config.data.source=folder --config.data.path="$DATA" "${EXTRA[@]}" > "$workdir.log" 2>&1
  echo "done:  $workdir/single_pixel/results.csv"
}

slot=0
for model in $MODELS; do
  for seed in $SEEDS; do
    if (( $(jobs -rp | wc -l) >= SLOTS )); then wait -n; fi
    run "$model" "$seed" $(( slot % SLOTS )) &
    slot=$(( slot + 1 ))
  done
done
wait
python -m saliency_jax.evaluation.aggregate --workdirs="$OUT/*_seed*" --out="$OUT/summary"
echo "tables and figure: $OUT/summary (summary.md, summary.csv, pointing_accuracy_*.png)"
