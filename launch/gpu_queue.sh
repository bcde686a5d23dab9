# One job per GPU, from a queue; sourced by sweep_local.sh and sanity_local.sh:
#
#   job() { ...; }       # job NAME GPU: runs job NAME with CUDA_VISIBLE_DEVICES=GPU ('' on the CPU)
#   run_queue NAME...    # every job; each GPU takes the next one not yet started as soon as its own ends
#
# The GPUs: those of CUDA_VISIBLE_DEVICES if it is set, else every GPU `nvidia-smi -L` lists; with
# none, one job after another on the CPU. A job has its GPU to itself, so JAX may take 90% of its
# memory up front (JAX's default is 75%; the rest holds the CUDA context and cuDNN's workspace):
# set XLA_PYTHON_CLIENT_MEM_FRACTION to choose another share.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}

_queue_worker() {  # claimed-folder gpu name...: one at a time, every job no other worker has taken
  local claimed=$1 gpu=$2 name
  shift 2
  for name in "$@"; do
    mkdir "$claimed/$name" 2>/dev/null || continue  # mkdir is atomic: exactly one worker takes a job
    job "$name" "$gpu" || touch "$claimed/$name/failed"
  done
}

run_queue() {  # name...: returns 1, naming them, if any job failed (the others still run)
  local claimed gpu failed count i
  local -a gpus=()
  if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
    IFS=, read -r -a gpus <<< "$CUDA_VISIBLE_DEVICES"
  else
    count=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)
    for (( i = 0; i < count; i++ )); do gpus+=("$i"); done
  fi
  claimed=$(mktemp -d)
  if (( ${#gpus[@]} )); then
    for gpu in "${gpus[@]}"; do _queue_worker "$claimed" "$gpu" "$@" & done
    wait
  else
    _queue_worker "$claimed" "" "$@"
  fi
  failed=$(cd "$claimed" && find . -name failed | cut -d/ -f2 | sort | tr '\n' ' ')
  rm -rf "$claimed"
  if [[ -n $failed ]]; then
    echo "failed: ${failed% }; rerun the same command to resume" >&2
    return 1
  fi
}
