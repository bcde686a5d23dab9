"""`run(config, workdir)`: what the binary does. Train (resuming), then the single-pixel grid on
the trained model, then the sanity studies of `sanity.studies`, then the faithfulness curves;
`train.enabled` / `single_pixel.enabled` skip the first two, an empty `sanity.studies` the third,
`faithfulness.enabled` (off by default) runs the last. With `model.torch_weights` the evaluations
run on a PyTorch state_dict instead of the workdir's training (`train.from_torch_weights`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
from absl import logging

from saliency_jax import data as data_lib
from saliency_jax import files
from saliency_jax import lowering
from saliency_jax import models
from saliency_jax.attribution import core, registry

from saliency_jax.config_checks import ConfigError, require_choice
from saliency_jax.evaluation import faithfulness_run, grid
from saliency_jax.evaluation import run as single_pixel_run
from saliency_jax.evaluation import sanity
from saliency_jax.training import train


@contextlib.contextmanager
def workdir_lock(workdir: pathlib.Path):
  """One run per workdir at a time: an exclusive lock on `workdir/.lock` (holding the owner's
  pid), taken before any work and released when the run ends, however it ends. Multi-host runs
  share one workdir: process 0 holds the lock for all of them."""
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"--workdir={str(workdir)!r} is a file; give a folder (it is created if missing)")
  if jax.process_index() != 0:
    yield
    return
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    handle = open(workdir / ".lock", "a+")  # pylint: disable=consider-using-with
  except OSError as e:
    raise ConfigError(f"--workdir={str(workdir)!r} is not writable ({e.strerror}); give a folder this user can "
                      "write to") from None
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      owner = handle.read().strip() or "unknown"
      raise ConfigError(f"--workdir={str(workdir)!r} is in use by another run (pid {owner}); wait for it to end, "
                        "or give another --workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    yield
  finally:
    handle.close()  # closing releases the lock


# What defines the trained model: a rerun on a workdir may change anything else (evaluation, epochs
# to train for, checkpointing, where the data lives), but not these.
MODEL_FIELDS = ("seed", "model", "data.source", "data.seed", "data.normalization", "data.max_per_class",
                "data.synthetic_train_per_class", "data.synthetic_test_per_class", "data.permute_train_labels",
                "pixel", "train.learning_rate", "train.momentum", "train.weight_decay", "train.batch_size",
                "train.dtype")


# Fields added to the model's settings after workdirs began storing them: a stored config.json
# without one was made with this value.
ADDED_MODEL_FIELDS = {"model.stem": "3x3", "model.torch_weights": "", "model.num_classes": 0}


def _model_settings(config) -> dict:
  flat = {}
  for field in MODEL_FIELDS:
    value = config
    for part in field.split("."):
      value = value.get(part) if hasattr(value, "get") else None
    items = value.to_dict().items() if hasattr(value, "to_dict") else [("", value)]
    for key, v in items:
      flat[f"{field}.{key}" if key else field] = json.loads(json.dumps(v, default=str))
  return flat


def check_workdir_config(config, workdir: pathlib.Path) -> None:
  """The first run stores what defines its model in `workdir/config.json` (with the whole config
  beside it, for the record); a rerun that would change it is one line naming the fields, since it
  would resume another model's weights under this run's labels."""
  path = workdir / "config.json"
  mine = _model_settings(config)
  if path.exists():
    stored = {**ADDED_MODEL_FIELDS, **json.loads(path.read_text())["model_settings"]}
    differ = [k for k in sorted(set(stored) | set(mine)) if stored.get(k) != mine.get(k)]
    if differ:
      shown = "; ".join(f"{k}: {stored.get(k)!r} there, {mine.get(k)!r} here" for k in differ)
      raise ConfigError(f"--workdir={str(workdir)!r} holds a model trained with other settings ({shown}); "
                        "use the same settings or another --workdir")
    return
  if jax.process_index() == 0:
    with files.atomic_open(path, "w") as f:
      json.dump({"model_settings": mine, "config": json.loads(config.to_json_best_effort())}, f, indent=1)


def run(config, workdir: str | pathlib.Path) -> dict:
  """See `_run`; under the workdir's lock, after checking the workdir holds this config's model."""
  workdir = pathlib.Path(workdir)
  # The researcher's own methods (`imports`), registered before any method name is checked; the
  # CPU path's switch (`cpu_lowering`) for every program this run binds.
  registry.import_modules(config.get("imports", ()), "imports")
  require_choice("cpu_lowering", config.get("cpu_lowering", "auto"), lowering.SETTINGS)
  with lowering.configured(config.get("cpu_lowering", "auto")), workdir_lock(workdir):
    check_workdir_config(config, workdir)
    return _run(config, workdir)


def _run(config, workdir: pathlib.Path) -> dict:
  """Returns {'train': TrainResult or None, 'single_pixel': rows or None, 'sanity': {study: rows} or
  None, 'faithfulness': rows or None} and logs each stage's time. The trained model is handed to the
  evaluations once (`train.Trained`): from training, restored from the workdir's newest checkpoint,
  or imported from `model.torch_weights`."""
  studies = sanity.studies_of(config.sanity)
  faithful = config.faithfulness.enabled
  if not (config.train.enabled or config.single_pixel.enabled or studies or faithful):
    raise ConfigError("train.enabled, single_pixel.enabled and faithfulness.enabled are False and sanity.studies is "
                      "empty; nothing to run")
  # Every setting is checked before hours of training, not after: the fields, then the data, then
  # every method of every stage traced once on the model (nothing is computed).
  methods = []
  if config.single_pixel.enabled:
    methods += [("single_pixel.methods", m, config.single_pixel.outputs[0]) for m in grid.check_config(config.single_pixel)]
  if studies:
    methods += [("sanity.methods", m, config.sanity.output) for m in sanity.check_config(config.sanity)]
  if faithful:
    methods += [("faithfulness.methods", m, config.faithfulness.output)
                for m in faithfulness_run.check_config(config.faithfulness)]
  if config.train.enabled:
    train.check_config(config, jax.device_count())
  if config.model.get("torch_weights"):
    train.check_torch_weights(config)
  data = data_lib.prepare(config, conditions=tuple(config.train.eval_conditions) if config.train.enabled else ())
  trained = train.from_torch_weights(config, data) if config.model.get("torch_weights") else None
  check_methods_build(config, data, methods)
  out = {"train": None, "single_pixel": None, "sanity": None, "faithfulness": None}
  if config.train.enabled:
    t0 = time.perf_counter()
    out["train"] = train.train_and_evaluate(config, workdir, data=data)
    trained = out["train"].trained
    logging.info("stage train: %.1f s", time.perf_counter() - t0)
  if (config.single_pixel.enabled or studies or faithful) and trained is None:
    trained = train.restore(config, workdir, data=data)
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
  if faithful:
    t0 = time.perf_counter()
    out["faithfulness"] = faithfulness_run.evaluate(config, workdir, trained)
    logging.info("stage faithfulness: %.1f s", time.perf_counter() - t0)
  return out


def check_methods_build(config, data: data_lib.Prepared, methods) -> None:
  """Each (field, method spec, output) traced on the configured model with abstract variables."""
  if not methods:
    return
  model = models.from_config(config.model, data.num_classes, dtype=config.train.dtype)
  shape = (2, *data.source.test.images.shape[1:])
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), shape))
  forward = core.ModelForward(model, models.model_variables(variables))
  x, t = jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape[:1], jnp.int32)
  for field, spec, output in methods:
    registry.check_builds(spec, forward, x, t, output=output, normalization=data.normalization, field=field)
