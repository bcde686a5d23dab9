#!/usr/bin/env bash
# The sanity checks after the paper's sweep (launch/sweep_local.sh): on every trained run, the
# model-only studies (cascading and independent randomisation, class sensitivity, input
# invariance); then, per model, the label-randomisation run (trained on permuted labels until it
# fits them) compared with its seed-0 run trained on true labels.
#
#   launch/sanity_local.sh CIFAR_FOLDER [OUT_DIR] [--config.field=value ...]
#
# OUT_DIR (default workdirs/sweep) holds the sweep's <model>_seed<k> workdirs; results land in
# each one's sanity/ folder. MODELS, SEEDS narrow it as for the sweep; LABELS=0 skips the
# label-randomisation runs. One job per GPU at a time, as the sweep. Reruns resume.
set -euo pipefail
DATA=${1:?usage: launch/sanity_local.sh CIFAR_FOLDER [OUT_DIR] [--config.field=value ...]}
OUT=${2:-workdirs/sweep}
EXTRA=("${@:3}")
MODELS=${MODELS:-"resnet18 vgg16"}
SEEDS=${SEEDS:-"0 1 2"}
LABELS=${LABELS:-1}
GPUS=$( (nvidia-smi -L 2>/dev/null || true) | wc -l)
SLOTS=$(( GPUS > 0 ? GPUS : 1 ))
DATA_FLAGS=(--config.data.source=folder --config.data.path="$DATA")

base() { [[ $1 == vgg16 ]] && echo vgg16 || echo resnet; }

job() {  # slot log command...
  local slot=$1 log=$2
  shift 2
  local env=()
  (( GPUS > 0 )) && env=(CUDA_VISIBLE_DEVICES="$slot")
  echo "start: $log"
  env "${env[@]}" "$@" > "$log" 2>&1
  echo "done:  $log"
}

slot=0
launch() {
  if (( $(jobs -rp | wc -l) >= SLOTS )); then wait -n; fi
  job $(( slot % SLOTS )) "$@" &
  slot=$(( slot + 1 ))
}

for model in $MODELS; do
  for seed in $SEEDS; do
    workdir="$OUT/${model}_seed$seed"
    launch "$workdir.sanity.log" python -m saliency_jax.main --config="configs/sanity.py:$(base "$model")" \
        --workdir="$workdir" --config.seed="$seed" "${DATA_FLAGS[@]}" "${EXTRA[@]}"
  done
  if [[ $LABELS == 1 ]]; then
    workdir="$OUT/${model}_random_labels"
    launch "$workdir.log" python -m saliency_jax.main --config="configs/label_randomization.py:$(base "$model")" \
        --workdir="$workdir" --config.sanity.reference_workdir="$OUT/${model}_seed0" "${DATA_FLAGS[@]}" "${EXTRA[@]}"
  fi
done
wait
echo "tables and figures: $OUT/*/sanity/ (<study>.csv, <study>_curves.png, <study>_strip0.png, ...)"
