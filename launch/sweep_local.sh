#!/usr/bin/env bash
# The paper's sweep on one machine: resnet18 and vgg16 x model seeds 0 1 2, each trained and then
# evaluated on the single-pixel grid, then the tables over seeds.
#
#   launch/sweep_local.sh CIFAR_FOLDER [OUT_DIR] [--config.field=value ...]
#
# CIFAR_FOLDER: a CIFAR-10 image folder (train/<class>/, test/<class>/); OUT_DIR defaults to
# workdirs/sweep. With GPUs (CUDA_VISIBLE_DEVICES, else all that nvidia-smi lists), one run per
# GPU: each GPU takes the next run as soon as its own ends (gpu_queue.sh; docs/gpu.md says why one
# run per GPU). Without, one after another on all CPU cores. MODELS="resnet18" SEEDS="0" narrow
# the sweep. A rerun resumes every run from its last checkpoint and computes only missing cells.
set -euo pipefail
DATA=${1:?usage: launch/sweep_local.sh CIFAR_FOLDER [OUT_DIR] [--config.field=value ...]}
OUT=${2:-workdirs/sweep}
EXTRA=("${@:3}")
MODELS=${MODELS:-"resnet18 vgg16"}
SEEDS=${SEEDS:-"0 1 2"}
source "$(dirname "${BASH_SOURCE[0]}")/gpu_queue.sh"
mkdir -p "$OUT"

job() {  # <model>_seed<k> gpu
  local model=${1%_seed*} seed=${1##*_seed} workdir="$OUT/$1" config="configs/resnet.py" where="the CPU"
  [[ $model == vgg16 ]] && config="configs/vgg16.py"
  local env=()
  [[ -n $2 ]] && env=(CUDA_VISIBLE_DEVICES="$2") && where="GPU $2"
  echo "start: $model seed $seed on $where -> $workdir (log: $workdir.log)"
  if ! env "${env[@]}" python -m saliency_jax.main --config="$config" --workdir="$workdir" --config.seed="$seed" \
      --config.data.source=folder --config.data.path="$DATA" "${EXTRA[@]}" > "$workdir.log" 2>&1; then
    echo "FAILED: $model seed $seed: see $workdir.log" >&2
    return 1
  fi
  echo "done:  $workdir/single_pixel/results.csv"
}

RUNS=()
for model in $MODELS; do
  for seed in $SEEDS; do RUNS+=("${model}_seed$seed"); done
done
run_queue "${RUNS[@]}"
python -m saliency_jax.evaluation.aggregate --workdirs="$OUT/*_seed*" --out="$OUT/summary"
echo "tables and figure: $OUT/summary (summary.md, summary.csv, pointing_accuracy_*.png)"
