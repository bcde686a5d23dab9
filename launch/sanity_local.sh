#!/usr/bin/env bash
# The sanity checks after the paper's sweep (launch/sweep_local.sh): on every trained run, the
# model-only studies (cascading and independent randomisation, class and image sensitivity, input
# invariance); then, per model, the label-randomisation run (trained on permuted labels until it
# fits them) compared with its seed-0 run trained on true labels.
#
#   launch/sanity_local.sh CIFAR_FOLDER [OUT_DIR] [--config.field=value ...]
#
# OUT_DIR (default workdirs/sweep) holds the sweep's <model>_seed<k> workdirs; results land in
# each one's sanity/ folder. MODELS, SEEDS narrow it as for the sweep; LABELS=0 skips the
# label-randomisation runs. One job per GPU at a time, as the sweep (gpu_queue.sh). Reruns resume.
set -euo pipefail
DATA=${1:?usage: launch/sanity_local.sh CIFAR_FOLDER [OUT_DIR] [--config.field=value ...]}
OUT=${2:-workdirs/sweep}
EXTRA=("${@:3}")
MODELS=${MODELS:-"resnet18 vgg16"}
SEEDS=${SEEDS:-"0 1 2"}
LABELS=${LABELS:-1}
source "$(dirname "${BASH_SOURCE[0]}")/gpu_queue.sh"
DATA_FLAGS=(--config.data.source=folder --config.data.path="$DATA")

base() { [[ $1 == vgg16 ]] && echo vgg16 || echo resnet; }

job() {  # <model>_seed<k> (the sanity studies of a sweep run) or <model>_random_labels, gpu
  local model=${1%%_*} workdir="$OUT/$1" log config flags=() env=()
  [[ -n $2 ]] && env=(CUDA_VISIBLE_DEVICES="$2")
  if [[ $1 == *_random_labels ]]; then
    log="$workdir.log" config="configs/label_randomization.py:$(base "$model")"
    flags=(--config.sanity.reference_workdir="$OUT/${model}_seed0")
  else
    log="$workdir.sanity.log" config="configs/sanity.py:$(base "$model")"
    flags=(--config.seed="${1##*_seed}")
  fi
  echo "start: $log"
  if ! env "${env[@]}" python -m saliency_jax.main --config="$config" --workdir="$workdir" "${flags[@]}" \
      "${DATA_FLAGS[@]}" "${EXTRA[@]}" > "$log" 2>&1; then
    echo "FAILED: see $log" >&2
    return 1
  fi
  echo "done:  $log"
}

JOBS=()
for model in $MODELS; do
  for seed in $SEEDS; do JOBS+=("${model}_seed$seed"); done
  if [[ $LABELS == 1 ]]; then JOBS+=("${model}_random_labels"); fi
done
run_queue "${JOBS[@]}"
echo "tables and figures: $OUT/*/sanity/ (<study>.csv, <study>_curves.png, <study>_strip0.png, ...)"
