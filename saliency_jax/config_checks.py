"""The one validation pass over a whole config, before any work: `check_config(config, num_devices)`.

It checks the model's fields, the data's, training's and every enabled stage's (each stage's own
`check`), refuses a field that does not apply to the chosen model or data source when it is set,
and returns the `Plan` the run follows (the stages to run and their parsed methods). The checks
raise ValueError naming the field, as the library does everywhere; `pipeline` runs this pass once
and the command line turns the error into one line and exit code 2 (`ConfigError`). What needs the
data or the model built (whether each method traces on the model, imported weights) is checked by
`pipeline` right after this pass, still before any training.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

from saliency_jax import models
from saliency_jax.checks import require_choice, require_non_negative, require_positive, require_subset


class ConfigError(ValueError):
  """A setting or a file a user can fix: the command line prints its message as one line and exits
  with 2. Raised at the boundary (`pipeline`, the report's command line) from the library's
  ValueErrors, never inside the library."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a checked config asks for: `stages`, the evaluation stages to run in order with their
  plans (`Stage.check`'s result); `train`, whether to train."""

  train: bool
  stages: dict[str, Any]


def _check_model(config) -> None:
  require_choice("train.dtype", config.train.dtype, models.DTYPES)
  # Builds nothing, a module definition; the class count is checked against the data's in `pipeline`.
  models.from_config(config.model, num_classes=config.model.get("num_classes") or 10, dtype=config.train.dtype)


def _check_data(config) -> None:
  from saliency_jax import data as data_lib  # pylint: disable=g-import-not-at-top

  dc = config.data
  require_choice("data.source", dc.source, data_lib.SOURCES)
  require_choice("data.normalization", dc.normalization, data_lib.NORMALIZATIONS)
  require_choice("pixel.variant", config.pixel.variant, data_lib.VARIANTS)
  for field in ("pixel.position_sd", "pixel.colour_sd", "data.max_per_class"):
    section, name = field.split(".")
    require_non_negative(field, config[section][name])
  for field in ("data.synthetic_train_per_class", "data.synthetic_test_per_class"):
    require_positive(field, dc[field.split(".")[1]], integer=True)
  applies = {"path": "folder", "cache_dir": "folder", "tfds_data_dir": "cifar10"}
  for field, source in applies.items():
    if dc.get(field) and dc.source != source:
      raise ValueError(f"data.{field}={dc[field]!r} applies to data.source={source!r}, not {dc.source!r}; remove it "
                       f"or set data.source={source!r}")
  if dc.source == "folder" and not pathlib.Path(dc.path or "").expanduser().is_dir():
    raise ValueError(f"data.path={dc.path!r} is not a folder; data.source='folder' needs DIR with train/<class>/ and "
                     "test/<class>/")


def _check_train(config, num_devices: int) -> None:
  from saliency_jax.training import train  # pylint: disable=g-import-not-at-top

  tc = config.train
  require_subset("train.eval_conditions", tc.eval_conditions, _conditions())
  require_choice("train.epoch_loop", tc.epoch_loop, train.EPOCH_LOOPS)
  for field in ("momentum", "weight_decay", "keep_checkpoints"):
    require_non_negative(f"train.{field}", tc[field])
  require_positive("train.learning_rate", tc.learning_rate)
  if not math.isfinite(tc.learning_rate):
    raise ValueError(f"train.learning_rate={tc.learning_rate!r} is not allowed; it must be a finite number")
  for setting, column in train.STOPS.items():
    value = tc.get(setting, 0.0)
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"train.{setting}={value!r} is not allowed; give a fraction in [0, 1] (0: train for "
                       "train.epochs)")
    condition = column.removeprefix("test_").removesuffix("_accuracy")
    if value and column.startswith("test_") and condition not in tc.eval_conditions:
      raise ValueError(f"train.{setting} watches the test accuracy on '{condition}' images; add it to "
                       f"train.eval_conditions (now {tuple(tc.eval_conditions)})")
  for field in ("batch_size", "epochs", "checkpoint_every_epochs", "eval_batch_size"):
    require_positive(f"train.{field}", tc[field], integer=True)
  if tc.batch_size % num_devices:
    raise ValueError(f"train.batch_size={tc.batch_size} does not divide over the {num_devices} devices; use a "
                     f"multiple of {num_devices}")
  if tc.batch_size // num_devices < 2:
    raise ValueError(f"train.batch_size={tc.batch_size} gives each of the {num_devices} device(s) "
                     f"{tc.batch_size // num_devices} image per step; BatchNorm needs at least 2: use at least "
                     f"{2 * num_devices}")


def _conditions():
  from saliency_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  return data_lib.CONDITIONS


def check_config(config, num_devices: int) -> Plan:
  """Every setting of `config` (see the module docstring); ValueError naming the first that is wrong."""
  from saliency_jax import stages  # pylint: disable=g-import-not-at-top

  _check_model(config)
  _check_data(config)
  if config.train.enabled:
    _check_train(config, num_devices)
  if config.model.get("torch_weights"):
    if config.train.enabled:
      raise ValueError(f"model.torch_weights={config.model.torch_weights!r} evaluates weights trained elsewhere; set "
                       "train.enabled=False (nothing is trained)")
    if not pathlib.Path(config.model.torch_weights).expanduser().is_file():
      raise ValueError(f"model.torch_weights={config.model.torch_weights!r} is not a file; give a .pt/.pth "
                       "state_dict (or an .npz of its arrays)")
  plans = {name: stage.check(config) for name, stage in stages.STAGES.items() if stage.enabled(config)}
  if not (config.train.enabled or plans):
    raise ValueError("train.enabled, single_pixel.enabled and faithfulness.enabled are False and sanity.studies is "
                     "empty; nothing to run")
  return Plan(train=bool(config.train.enabled), stages=plans)
