"""`run(config, workdir)`: what the binary does. Train (resuming), then the single-pixel grid on
the trained model, then the sanity studies of `sanity.studies`; `train.enabled` /
`single_pixel.enabled` skip the first two, an empty `sanity.studies` the last."""

from __future__ import annotations

import pathlib
import time

from absl import logging

from saliency_jax.config_checks import ConfigError
from saliency_jax.evaluation import grid
from saliency_jax.evaluation import run as single_pixel_run
from saliency_jax.evaluation import sanity
from saliency_jax.training import train


def run(config, workdir: str | pathlib.Path) -> dict:
  """Returns {'train': TrainResult or None, 'single_pixel': rows or None, 'sanity': {study: rows} or
  None} and logs each stage's time. The trained model is handed to the evaluations once
  (`train.Trained`): from training, or restored from the workdir's newest checkpoint."""
  studies = sanity.studies_of(config.sanity)
  if not (config.train.enabled or config.single_pixel.enabled or studies):
    raise ConfigError("train.enabled and single_pixel.enabled are False and sanity.studies is empty; nothing to run")
  if config.single_pixel.enabled:
    grid.check_config(config.single_pixel)  # before hours of training, not after
  if studies:
    sanity.check_config(config.sanity)
  out = {"train": None, "single_pixel": None, "sanity": None}
  trained = None
  if config.train.enabled:
    t0 = time.perf_counter()
    out["train"] = train.train_and_evaluate(config, workdir)
    trained = out["train"].trained
    logging.info("stage train: %.1f s", time.perf_counter() - t0)
  if (config.single_pixel.enabled or studies) and trained is None:
    trained = train.restore(config, workdir)
  if config.single_pixel.enabled:
    t0 = time.perf_counter()
    out["single_pixel"] = single_pixel_run.evaluate(config, workdir, trained)
    logging.info("stage single_pixel: %.1f s", time.perf_counter() - t0)
  if studies:
    t0 = time.perf_counter()
    reference = None
    if "label_randomization" in studies:
      reference = train.restore(config, config.sanity.reference_workdir, data=trained.data)
      logging.info("label randomisation: reference model from %s (epoch %d)", config.sanity.reference_workdir,
                   reference.epoch)
    out["sanity"] = sanity.run(config, workdir, trained, reference=reference)
    logging.info("stage sanity: %.1f s", time.perf_counter() - t0)
  return out
