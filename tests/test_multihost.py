"""Several hosts, as 2 JAX processes on this machine (CPU; gloo carries the cross-process
collectives): training, resume, the single-pixel grid, a sanity study and the faithfulness curves
give what one process with the same two devices gives, and a rerun of a run stopped at `train.stop_at_train_accuracy`
ends on every process.

The 2-process test starts the binary 4 times (about 3 min on 2 cores): a CI step of its own,
`python -m pytest -q -m multiprocess`; the default run leaves it out (pyproject.toml).
"""

import csv
import os
import socket
import subprocess
import sys

import jax
import pytest

from saliency_jax.training import parallel
from tests.conftest import REPO

FLAGS = ["--config=configs/quickstart.py", "--config.data.synthetic_train_per_class=20",
         "--config.data.synthetic_test_per_class=5", "--config.train.batch_size=32", "--config.train.tensorboard=False",
         "--config.single_pixel.max_images=20", "--config.single_pixel.methods=('gradient',)",
         "--config.single_pixel.outputs=logit", "--config.single_pixel.examples=2"]
# After training: a sanity study and the faithfulness curves, at their smallest.
EVALUATIONS = ["--config.sanity.studies=cascading", "--config.sanity.methods=('gradient',)",
               "--config.sanity.num_images=8", "--config.sanity.batch_size=8", "--config.sanity.strip_images=1",
               "--config.faithfulness.enabled=True", "--config.faithfulness.methods=('gradient',)",
               "--config.faithfulness.num_images=10", "--config.faithfulness.batch_size=10",
               "--config.faithfulness.curves=('deletion', 'road')", "--config.faithfulness.orders=('morf',)",
               "--config.faithfulness.replacements=('black',)", "--config.faithfulness.steps=4",
               "--config.faithfulness.road_percentages=(50,)"]


def test_the_multi_process_variables_are_passed_to_jax_distributed(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  parallel.maybe_initialize_distributed()
  assert calls == [{"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1}]
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
    parallel.maybe_initialize_distributed()
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name)
  calls.clear()
  parallel.maybe_initialize_distributed()  # a single process: nothing to initialise
  assert calls == []


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(workdir, name: str, *flags, processes: int) -> list[str]:
  """The binary on `workdir`: `processes` processes of one CPU device each, or one process with two
  devices. Returns each process's log; fails if any exits non-zero or they do not all end."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env["JAX_PLATFORMS"] = "cpu"
  if processes == 1:
    envs = [{**env, "JAX_NUM_CPU_DEVICES": "2"}]
  else:
    address = f"localhost:{_free_port()}"
    envs = [{**env, "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(i)}
            for i in range(processes)]
  logs = [workdir.parent / f"{name}.{i}.log" for i in range(len(envs))]
  outs = [open(log, "w") for log in logs]  # pylint: disable=consider-using-with
  runs = [subprocess.Popen([sys.executable, "-m", "saliency_jax.main", f"--workdir={workdir}", *FLAGS, *flags],
                           cwd=REPO, env=e, stdout=out, stderr=subprocess.STDOUT) for e, out in zip(envs, outs)]
  try:
    codes = [run.wait(timeout=240) for run in runs]
  except subprocess.TimeoutExpired:
    for run in runs:
      run.kill()
      run.wait()
    pytest.fail("the processes did not all end (one waits for the others): " + logs[0].read_text()[-3000:])
  finally:
    for out in outs:
      out.close()
  texts = [log.read_text() for log in logs]
  for code, text in zip(codes, texts):
    assert code == 0, text[-3000:]
  return texts


def _table(path, drop=()):
  with open(path, newline="") as f:
    return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


@pytest.mark.multiprocess
def test_two_processes_train_resume_and_evaluate_as_one_process_with_two_devices(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  _run(one, "one", "--config.train.epochs=2", *EVALUATIONS, processes=1)

  _run(two, "first", "--config.train.epochs=1", "--config.single_pixel.enabled=False", processes=2)
  logs = _run(two, "resumed", "--config.train.epochs=2", *EVALUATIONS, processes=2)
  assert all("resumed from the checkpoint after epoch 1" in log for log in logs)
  # Only process 0 reads metrics.csv; every process must take its decision (they hung, apart).
  logs = _run(two, "stopped", "--config.train.epochs=5", "--config.train.stop_at_train_accuracy=0.01", *EVALUATIONS,
              processes=2)
  assert all("already meets" in log and "nothing to train" in log for log in logs)

  # The same numbers: a gradient all-reduce over two devices adds the same two numbers in any
  # process layout, and each device evaluates the same images; only timings differ.
  timing = ("images_per_sec", "epoch_seconds", "seconds", "compile_seconds")
  assert _table(two / "metrics.csv", timing) == _table(one / "metrics.csv", timing)
  assert len(_table(two / "metrics.csv")) == 2
  assert _table(two / "single_pixel" / "results.csv", timing) == _table(one / "single_pixel" / "results.csv", timing)
  assert _table(two / "sanity" / "cascading.csv", timing) == _table(one / "sanity" / "cascading.csv", timing)
  assert _table(two / "faithfulness" / "results.csv", timing) == _table(one / "faithfulness" / "results.csv", timing)
  assert (two / "single_pixel" / "examples.png").exists() and (two / "sanity" / "cascading_strip0.png").exists()
