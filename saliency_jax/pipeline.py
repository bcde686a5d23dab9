"""`run(config, workdir)`: what the binary does. Check the whole config once, then train (resuming),
then the evaluation stages in order (`stages.STAGES`: the single-pixel grid, the sanity studies of
`sanity.studies`, the faithfulness curves); `train.enabled` / `single_pixel.enabled` skip the first
two, an empty `sanity.studies` the third, `faithfulness.enabled` (off by default) runs the last. With
`model.torch_weights` the stages run on a PyTorch state_dict instead of the workdir's training
(`train.from_torch_weights`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from saliency_jax import config_checks
from saliency_jax import data as data_lib
from saliency_jax import files, lowering, models, provenance, stages
from saliency_jax.attribution import core, registry
from saliency_jax.checks import require_choice
from saliency_jax.config_checks import ConfigError
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
# without one was made with this value (as JSON holds it: tuples are lists).
ADDED_MODEL_FIELDS = {"model.stem": "3x3", "model.torch_weights": "", "model.num_classes": 0,
                      "model.channels": [32, 64], "model.hidden": [256, 128], "model.dropout_rate": 0.5}


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


def check_workdir_config(config, workdir: pathlib.Path) -> bool:
  """Whether `workdir/config.json` exists; if it does, a rerun that would change what defines its
  model is one ValueError naming the fields, since it would resume another model's weights under this
  run's labels. The first run's `write_workdir_config` stores it (after every check has passed)."""
  path = workdir / "config.json"
  if not path.exists():
    return False
  try:
    stored = {**ADDED_MODEL_FIELDS, **json.loads(path.read_text())["model_settings"]}
  except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is damaged ({type(e).__name__}: {e}); it records which model this workdir trains: "
                     "restore it, or give another --workdir") from None
  mine = _model_settings(config)
  differ = [k for k in sorted(set(stored) | set(mine)) if stored.get(k) != mine.get(k)]
  if differ:
    shown = "; ".join(f"{k}: {stored.get(k)!r} there, {mine.get(k)!r} here" for k in differ)
    raise ValueError(f"--workdir={str(workdir)!r} holds a model trained with other settings ({shown}); use the same "
                     "settings or another --workdir")
  return True


def write_workdir_config(config, workdir: pathlib.Path) -> None:
  if jax.process_index() == 0:
    with files.atomic_open(workdir / "config.json", "w") as f:
      json.dump({"model_settings": _model_settings(config), "config": json.loads(config.to_json_best_effort())}, f,
                indent=1)


@contextlib.contextmanager
def user_errors():
  """The library's ValueErrors in what a user controls (the settings, the data, the files given, the
  workdir's checkpoints) as ConfigError: one line on the command line, no traceback."""
  try:
    yield
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(" ".join(str(e).split())) from None


def run(config, workdir: str | pathlib.Path) -> dict:
  """Check everything, then train (resuming) and run the evaluation stages of `config`, under the
  workdir's lock. Nothing is written into the workdir before every check has passed: the config, the
  data, imported weights and every method of every stage traced on the model.

  Returns {'train': TrainResult or None, stage name: its rows or None}, the sanity stage's rows by
  study. The trained model is handed to the stages once (`train.Trained`): from training, restored
  from the workdir's newest checkpoint, or imported from `model.torch_weights`."""
  workdir = pathlib.Path(workdir)
  with user_errors():
    # The researcher's own methods (`imports`), registered before any method name is checked; the
    # CPU path's switch (`cpu_lowering`) for every program this run binds.
    registry.import_modules(config.get("imports", ()), "imports")
    require_choice("cpu_lowering", config.get("cpu_lowering", "auto"), lowering.SETTINGS)
    lowering.check_env()
  with lowering.configured(config.get("cpu_lowering", "auto")), workdir_lock(workdir):
    with user_errors():
      plan = config_checks.check_config(config, jax.device_count())
      known = check_workdir_config(config, workdir)
      data = data_lib.prepare(config, conditions=tuple(config.train.eval_conditions) if plan.train else ())
      models.from_config(config.model, data.num_classes, dtype=config.train.dtype)  # model.num_classes: the data's
      trained = train.from_torch_weights(config, data) if config.model.get("torch_weights") else None
      check_methods_build(config, plan, data)
      check_reference_workdir(config, plan, workdir)
    if not known:
      write_workdir_config(config, workdir)
    return _run(config, plan, workdir, data, trained)


def _run(config, plan: config_checks.Plan, workdir: pathlib.Path, data, trained) -> dict:
  out = {"train": None, **{name: None for name in stages.STAGES}}
  if plan.train:
    t0, started = time.perf_counter(), provenance.now()
    out["train"] = train.train_and_evaluate(config, workdir, data=data)
    trained = out["train"].trained
    logging.info("stage train: %.1f s", time.perf_counter() - t0)
    if out["train"].epoch > out["train"].resumed_from:  # a resume with nothing to train computed nothing
      provenance.record(workdir, "train", started, epochs=out["train"].epoch, from_epoch=out["train"].resumed_from)
  if not plan.stages:
    return out
  if trained is None:
    with user_errors():
      trained = train.restore(config, workdir, data=data)
  check_outputs_finite(trained)
  for name, stage_plan in plan.stages.items():
    t0 = time.perf_counter()
    extra = {}
    if name == "sanity" and "label_randomization" in stages.sanity.studies_of(config.sanity):
      with user_errors():
        extra["reference"] = train.restore(config, config.sanity.reference_workdir, data=trained.data)
      logging.info("label randomisation: reference model from %s (epoch %d)", config.sanity.reference_workdir,
                   extra["reference"].epoch)
    try:
      rows = stages.run_stage(stages.STAGES[name](config, stage_plan, trained, workdir, **extra))
    except stages.base.DegenerateResult as e:
      raise ConfigError(" ".join(str(e).split())) from None
    if name == "sanity":
      rows = {study: [r for r in rows if r["study"] == study] for study in stages.sanity.studies_of(config.sanity)}
    out[name] = rows
    logging.info("stage %s: %.1f s", name, time.perf_counter() - t0)
  return out


def check_reference_workdir(config, plan: config_checks.Plan, workdir: pathlib.Path) -> None:
  """label_randomization's reference run has a checkpoint (or is this run, trained first): found
  before any training, not after it."""
  if "sanity" not in plan.stages or "label_randomization" not in stages.sanity.studies_of(config.sanity):
    return
  reference = pathlib.Path(config.sanity.reference_workdir).expanduser()
  if reference.resolve() == workdir.resolve() and plan.train:
    return
  if not (reference / "checkpoints").is_dir():
    raise ValueError(f"sanity.reference_workdir={config.sanity.reference_workdir!r} has no checkpoints/; give the "
                     "workdir of the same model trained on true labels")


def check_outputs_finite(trained, images: int = 256) -> None:
  """A model whose logits are not finite (NaN or infinite weights, imported or trained) would give
  maps and curves that look like results; it stops here with one line instead."""
  x = trained.data.normalization(trained.data.source.test.images[:images])
  logits = jax.jit(lambda v, x: trained.model.apply(v, x, train=False))(trained.variables, x)
  bad = int(np.sum(~np.all(np.isfinite(np.asarray(logits)), axis=-1)))
  if bad:
    weights = f"the weights of model.torch_weights={trained.weights!r}" if trained.weights else \
        f"the checkpoint after epoch {trained.epoch}"
    raise ConfigError(f"the model's outputs are not finite on {bad} of {len(x)} test images: {weights} hold NaN or "
                      "infinite values; nothing was evaluated")


def check_methods_build(config, plan: config_checks.Plan, data: data_lib.Prepared) -> None:
  """Every method of every stage traced on the configured model with abstract variables (nothing is
  computed), so a method that cannot run on it is found before any training."""
  methods = [(f"{name}.methods", spec, output) for name, stage_plan in plan.stages.items()
             for spec, output in stages.STAGES[name].methods(config, stage_plan)]
  if not methods:
    return
  model = models.from_config(config.model, data.num_classes, dtype=config.train.dtype)
  shape = (2, *data.source.test.images.shape[1:])
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), shape))
  forward = core.ModelForward(model, models.model_variables(variables))
  x, t = jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape[:1], jnp.int32)
  for field, spec, output in methods:
    registry.check_builds(spec, forward, x, t, output=output, normalization=data.normalization, field=field)
