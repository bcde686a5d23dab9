"""The leaderboard's `ms / image`: every method of a config, timed on this machine while nothing else runs.

  python benchmarks/method_seconds.py --config=configs/leaderboard.py:resnet_cpu \\
      --out=workdirs/cpu/resnet18_seed0/timing/seconds.csv
  python benchmarks/method_seconds.py --config=configs/leaderboard.py:vgg16_cpu \\
      --out=workdirs/cpu/vgg16_seed0/timing/seconds.csv

The report reads `timing/seconds.csv` from a model's lowest-seed run that has one (and `--export`
copies it into the run data); without it, the column falls back on the seconds the runs recorded.
The config's model is built with random weights (speed does not depend on them) and each method of
`single_pixel.methods` is run for output logit the way the grid runs it (`ModelRunner.maps`, the
config's chunk size, the same lowering and compiler options) on `--images` random images per call:
compiled and called once, then timed one call per method per round, round-robin over `--rounds`
(saliency_jax/evaluation/timing.py). Pause anything else on the machine first (kill -STOP, then
-CONT): the column says idle. A method that is already in the file is timed again and replaced.
"""

from __future__ import annotations

import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/*.py import `configs`

from saliency_jax import backend, data, models  # pylint: disable=wrong-import-position
from saliency_jax.attribution import registry  # pylint: disable=wrong-import-position
from saliency_jax.evaluation import results, timing  # pylint: disable=wrong-import-position
from saliency_jax.stages.runner import ModelRunner

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config (configs/leaderboard.py:BASE).", lock_config=True)
_OUT = flags.DEFINE_string("out", None, f"The table to write: a run's {timing.FILE}.")
_IMAGES = flags.DEFINE_integer("images", 32, "Images per call (the grid's CPU batch is 250: a round of every "
                               "leaderboard method on 250 resnet18 images takes minutes).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed calls per method, one per round.")
_METHODS = flags.DEFINE_list("methods", [], "Only these of the config's methods (their labels); default: all.")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
  del argv
  config = _CONFIG.value
  busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
  if busy > 0.5:  # the column says idle; this script cannot pause what else runs
    print(f"warning: load average {busy:.1f} before timing: the seconds will include other work (pause it)")
  backend.start(config)
  specs = registry.parse_all(config.single_pixel.methods, "single_pixel.methods")
  if _METHODS.value:
    unknown = set(_METHODS.value) - {s.label for s in specs}
    if unknown:
      raise app.UsageError(f"--methods: {', '.join(sorted(unknown))} not in the config's single_pixel.methods")
    specs = [s for s in specs if s.label in _METHODS.value]
  model = models.from_config(config.model, num_classes=10)
  variables = models.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
  normalization = data.Normalization(jnp.full((3,), 0.5), jnp.full((3,), 0.25))
  _, chunk = backend.evaluation_sizes("single_pixel", config.single_pixel)
  runner = ModelRunner(model, variables, normalization, batch_size=_IMAGES.value, chunk_size=chunk)
  images = np.random.default_rng(0).integers(0, 256, (_IMAGES.value, 32, 32, 3), dtype=np.uint8)
  rows = timing.time_methods(runner, specs, "logit", images, config.model.name, rounds=_ROUNDS.value)
  out = pathlib.Path(_OUT.value)
  fresh = {timing.TABLE.key_of(r) for r in rows}
  kept = [r for r in timing.TABLE.read(out) if timing.TABLE.key_of(r) not in fresh]
  timing.TABLE.write(out, kept + rows)
  for r in rows:
    print(f"{results.method_label(r['method'], r['method_options'])}: {1000 * r['seconds_per_image']:.1f} ms/image "
          f"({1000 * r['seconds_min']:.1f}-{1000 * r['seconds_max']:.1f})")
  print(f"{len(rows)} methods on {rows[0]['machine']}, {_IMAGES.value} images per call: {out}")


if __name__ == "__main__":
  app.run(main)
