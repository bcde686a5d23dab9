"""`run(config, workdir)`: what the binary does. Train (resuming), then the single-pixel grid on
the trained model; `train.enabled` / `single_pixel.enabled` skip either stage."""

from __future__ import annotations

import pathlib
import time

from absl import logging

from saliency_jax.config_checks import ConfigError
from saliency_jax.evaluation import grid
from saliency_jax.evaluation import run as single_pixel_run
from saliency_jax.training import train


def run(config, workdir: str | pathlib.Path) -> dict:
  """Returns {'train': TrainResult or None, 'single_pixel': rows or None} and logs each stage's time."""
  if not (config.train.enabled or config.single_pixel.enabled):
    raise ConfigError("train.enabled and single_pixel.enabled are both False; nothing to run")
  if config.single_pixel.enabled:
    grid.check_config(config.single_pixel)  # before hours of training, not after
  out = {"train": None, "single_pixel": None}
  kwargs = {}
  if config.train.enabled:
    t0 = time.perf_counter()
    result = out["train"] = train.train_and_evaluate(config, workdir)
    logging.info("stage train: %.1f s", time.perf_counter() - t0)
    kwargs = dict(model=result.model, variables=result.state.variables, epoch=result.epoch, data=result.data)
  if config.single_pixel.enabled:
    t0 = time.perf_counter()
    out["single_pixel"] = single_pixel_run.evaluate(config, workdir, **kwargs)
    logging.info("stage single_pixel: %.1f s", time.perf_counter() - t0)
  return out
