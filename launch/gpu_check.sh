#!/usr/bin/env bash
# The GPU figures in one command, for docs/gpu.md: the training step's speed (PyTorch beside it when
# installed), an integrated-gradients cell of the grid, a short run of the paper's config and the
# estimated time of the paper's runs (benchmarks/gpu_check.py says what each stage runs).
#
#   launch/gpu_check.sh [full|tiny] [OUT_DIR]
#
# full (the default): under 10 minutes on one H100 (GPU_CHECK_BUDGET_S=540 caps it); tiny: seconds,
# on any machine (the test suite runs it on CPU). Writes OUT_DIR/gpu_check.json (default
# workdirs/gpu_check) and prints a table. DATA=<CIFAR-10 image folder> runs on it instead of
# synthetic images of CIFAR's size.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ ${1:-full} == full ]] && nvidia-smi -L > /dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  if ! python -c 'import jax, sys; sys.exit(jax.default_backend() == "cpu")'; then
    echo "error: nvidia-smi sees a GPU but JAX runs on the CPU; install pip install -e '.[cuda12]'" >&2
    exit 2
  fi
fi
exec python benchmarks/gpu_check.py "$@"
