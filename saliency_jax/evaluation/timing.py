"""What each method costs per image on this machine: the leaderboard's `ms / image` column.

`time_methods` runs each method the way the stages run it (`ModelRunner.maps`: the same compiled
program, batch and chunk sizes, lowering and compiler options), compiles it and calls it once
untimed, then times one call per method per round, round-robin, so every method sees the same
machine load; a row is the median seconds per image over the rounds, with the range. The seconds
a run records for its own cells include whatever else the machine ran meanwhile (a test suite, a
paused stage), so the report prefers these: `benchmarks/method_seconds.py` writes them into a
run's `timing/seconds.csv` (`FILE`), on a machine kept otherwise idle.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import time

import jax
import numpy as np

from saliency_jax import provenance
from saliency_jax.evaluation import results

FILE = "timing/seconds.csv"  # in a run's workdir (and its exported run data)
TABLE = results.Table(
    columns=("model", *results.METHOD_COLUMNS, results.REVISION, "output", "images", "rounds", "seconds_per_image",
             "seconds_min", "seconds_max", "machine", "jax", "date", "commit"),
    key=("model", *results.METHOD_COLUMNS, "output", results.REVISION),
    kinds={results.REVISION: "count", "images": "count", "rounds": "count", "seconds_per_image": "finite",
           "seconds_min": "finite", "seconds_max": "finite"},
    former={results.REVISION: "1"})


def machine() -> str:
  """The processor and how many cores this process may use, or the accelerators: what the seconds
  are seconds of."""
  devices = jax.devices()
  if devices[0].platform != "cpu":
    return f"{len(devices)} x {devices[0].device_kind}"
  name = ""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        name = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return f"{name or 'CPU'}, {cores} cores"


def time_methods(runner, specs, output: str, images_u8, model_name: str, *, rounds: int = 3) -> list[dict]:
  """`TABLE` rows: the seconds per image of each of `specs`' maps of `images_u8` (one call of
  `runner.maps` per method per round, for the predicted class at `output`)."""
  if rounds < 1:
    raise ValueError(f"rounds={rounds}: time each method at least once")
  n = len(images_u8)
  index = np.arange(n)
  targets = runner.targets("predicted", images_u8, np.zeros(n, np.int32))
  call = lambda spec: runner.maps(spec, output, images_u8, targets, index, reduce=True)  # as the grid does
  for spec in specs:  # compiled and run once, untimed
    call(spec)
  seconds = {spec: [] for spec in specs}
  for _ in range(rounds):
    for spec in specs:
      start = time.perf_counter()
      call(spec)  # returns host arrays: the call has finished
      seconds[spec].append((time.perf_counter() - start) / n)
  where = {"machine": machine(), "jax": jax.__version__, "date": provenance.now(), "commit": provenance.commit()}
  return [{"model": model_name, **results.method_columns(spec), "output": output, "images": n, "rounds": rounds,
           "seconds_per_image": statistics.median(s), "seconds_min": min(s), "seconds_max": max(s), **where}
          for spec, s in seconds.items()]
