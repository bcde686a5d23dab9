"""The launchers (launch/), run with a fake `python` and a fake `nvidia-smi` on PATH: which run
goes to which GPU, when, and with which memory settings."""

import collections
import os
import subprocess

import pytest

from tests.conftest import REPO

# A fake `python`: each call of the binary appends one line, `workdir gpu start end memory-fraction`,
# after sleeping the seconds FAKE_SECONDS gives its seed (seed 0 is slow, 1 fast; gpu 'none': no
# CUDA_VISIBLE_DEVICES, or empty); it fails where FAKE_FAIL names its workdir. Anything else (the
# aggregation) is only logged.
_FAKE_PYTHON = r"""#!/usr/bin/env bash
seed=0 workdir=
for a in "$@"; do
  case $a in --config.seed=*) seed=${a#*=};; --workdir=*) workdir=${a#*=};; esac
done
[[ -z $workdir ]] && { echo "other $*" >> "$FAKE_LOG"; exit 0; }
seconds=($FAKE_SECONDS)
start=$(date +%s.%N)
sleep "${seconds[$seed]}"
end=$(date +%s.%N) name=$(basename "$workdir")
echo "$name ${CUDA_VISIBLE_DEVICES:-none} $start $end ${XLA_PYTHON_CLIENT_MEM_FRACTION-none}" >> "$FAKE_LOG"
[[ $name != "${FAKE_FAIL:-}" ]]
"""


def _fakes(tmp_path, gpus: int):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in (("python", _FAKE_PYTHON),
                     ("nvidia-smi", "#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA H100 (UUID: GPU-{i})'\n"
                                                          for i in range(gpus)))):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_MEM_FRACTION")}
  env.update(PATH=f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", FAKE_LOG=str(tmp_path / "calls.log"),
             FAKE_SECONDS="1.2 0.1 0.4")
  return env


def _runs(tmp_path):
  lines = (tmp_path / "calls.log").read_text().splitlines()
  runs = [line.split() for line in lines if not line.startswith("other ")]
  return [(name, gpu, float(start), float(end), fraction) for name, gpu, start, end, fraction in runs], \
         [line for line in lines if line.startswith("other ")]


def _sweep(tmp_path, env, **extra):
  return subprocess.run(["bash", "launch/sweep_local.sh", str(tmp_path / "data"), str(tmp_path / "out")], cwd=REPO,
                        env={**env, **extra}, capture_output=True, text=True, timeout=60)


def test_the_local_sweep_runs_one_process_per_free_gpu(tmp_path):
  result = _sweep(tmp_path, _fakes(tmp_path, gpus=2))
  assert result.returncode == 0, result.stderr
  runs, others = _runs(tmp_path)
  assert sorted(r[0] for r in runs) == sorted(f"{m}_seed{s}" for m in ("resnet18", "vgg16") for s in (0, 1, 2))
  by_gpu = collections.defaultdict(list)
  for name, gpu, start, end, _ in runs:
    by_gpu[gpu].append((start, end, name))
  assert set(by_gpu) == {"0", "1"}
  for gpu, spans in by_gpu.items():  # never two runs on one GPU at once
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
      assert end <= start, f"{first} and {second} shared GPU {gpu}"
  # The GPU freed by the fast seed 1 takes seed 2 while seed 0 (the slow one) still runs.
  span = {name: (gpu, start, end) for name, gpu, start, end, _ in runs}
  assert span["resnet18_seed2"][0] == span["resnet18_seed1"][0] != span["resnet18_seed0"][0]
  assert span["resnet18_seed2"][1] < span["resnet18_seed0"][2]
  assert {r[4] for r in runs} == {"0.90"}  # JAX may take 90% of its GPU: the run has it alone
  assert len(others) == 1 and "saliency_jax.evaluation.aggregate" in others[0]


def test_the_local_sweep_without_gpus_runs_one_after_another_and_names_a_failed_run(tmp_path):
  env = _fakes(tmp_path, gpus=0)
  result = _sweep(tmp_path, env, MODELS="resnet18", FAKE_SECONDS="0.1 0.1 0.1", FAKE_FAIL="resnet18_seed1")
  assert result.returncode == 1
  assert "failed: resnet18_seed1; rerun the same command to resume" in result.stderr
  runs, others = _runs(tmp_path)
  assert sorted(r[0] for r in runs) == ["resnet18_seed0", "resnet18_seed1", "resnet18_seed2"]  # the rest still ran
  assert {r[1] for r in runs} == {"none"}  # no CUDA_VISIBLE_DEVICES on the CPU
  assert all(a[3] <= b[2] for a, b in zip(runs, runs[1:]))
  assert not others  # no tables from a sweep with a failed run


@pytest.mark.parametrize("visible,expected", [("3,5", {"3", "5"}), ("", {"none"})])
def test_the_local_sweep_uses_the_gpus_cuda_visible_devices_names(tmp_path, visible, expected):
  result = _sweep(tmp_path, _fakes(tmp_path, gpus=8), SEEDS="1 2", CUDA_VISIBLE_DEVICES=visible)
  assert result.returncode == 0, result.stderr
  runs, _ = _runs(tmp_path)
  assert len(runs) == 4 and {r[1] for r in runs} == expected  # '': hidden, so the CPU, one run after another


def test_the_sanity_launcher_shares_the_queue(tmp_path):
  (tmp_path / "out").mkdir()  # the sweep's
  result = subprocess.run(["bash", "launch/sanity_local.sh", str(tmp_path / "data"), str(tmp_path / "out")], cwd=REPO,
                          env={**_fakes(tmp_path, gpus=2), "SEEDS": "0 1", "FAKE_SECONDS": "0.3 0.1"},
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  runs, _ = _runs(tmp_path)
  assert sorted(r[0] for r in runs) == sorted(["resnet18_seed0", "resnet18_seed1", "resnet18_random_labels",
                                               "vgg16_seed0", "vgg16_seed1", "vgg16_random_labels"])
  for gpu in ("0", "1"):
    spans = sorted((s, e) for _, g, s, e, _ in runs if g == gpu)
    assert spans and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_the_slurm_task_runs_its_model_and_seed_with_the_memory_setting(tmp_path):
  env = {**_fakes(tmp_path, gpus=1), "SLURM_ARRAY_TASK_ID": "4", "DATA": str(tmp_path / "data"),
         "OUT": str(tmp_path / "out"), "FAKE_SECONDS": "0 0 0"}
  result = subprocess.run(["bash", "launch/sweep_slurm.sbatch"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 0, result.stderr
  runs, _ = _runs(tmp_path)
  assert [(r[0], r[4]) for r in runs] == [("vgg16_seed1", "0.90")]
