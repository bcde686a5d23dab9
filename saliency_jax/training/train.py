"""`train_and_evaluate(config, workdir)`: the paper's training run, resumable, on every device."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import pathlib
import signal
import threading
import time
import zipfile
from typing import Any

import jax
import numpy as np
from absl import logging

from saliency_jax import data as data_lib
from saliency_jax import models
from saliency_jax.checks import require_choice
from saliency_jax.progress import Progress
from saliency_jax.training import parallel
from saliency_jax.training.checkpoint import Checkpoints, abstract_like
from saliency_jax.training.metrics import MetricsWriter
from saliency_jax.training.state import TrainState, init_state, make_optimizer
from saliency_jax.training.steps import Steps


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; the message names the epoch and step."""


@dataclasses.dataclass(frozen=True)
class Trained:
  """What training hands to every evaluation, once: the model, its variables (parameters and
  BatchNorm statistics, no optimiser state), the epochs it was trained for, and its data."""

  model: Any
  variables: dict
  epoch: int
  data: data_lib.Prepared
  weights: str = ""  # imported weights: their file's digest (`file_digest`); '' for the workdir's own training


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  model: Any
  data: data_lib.Prepared
  metrics: list[dict]  # one row per epoch, as in metrics.csv
  epoch: int  # epochs the state has been trained for
  resumed_from: int = 0  # the epoch of the checkpoint it started from; == epoch when nothing was trained

  @property
  def trained(self) -> Trained:
    return Trained(self.model, for_evaluation(self.state.variables), self.epoch, self.data)


# Early stops: the train setting (a fraction; 0: off) and the metrics.csv column it watches.
# Training ends after the first epoch where a column reaches its setting (a resumed run that
# already did trains no more): the label-randomisation run stops once it fits its labels, a
# CPU-scale run once the model has taken the shortcut (test accuracy with the pixel).
STOPS = {"stop_at_train_accuracy": "train_accuracy", "stop_at_pixel_accuracy": "test_pixel_accuracy"}


def stop_reached(train_config, row) -> str:
  """The first early-stop setting of `train_config` (a ConfigDict, or a dict as config.json holds
  it) that `row` (an epoch's metrics) meets; '' if none."""
  for setting, column in STOPS.items():
    value = float(train_config.get(setting, 0.0) or 0.0)
    seen = row.get(column)  # '' in metrics.csv for an epoch that did not evaluate it
    if value and seen not in (None, "") and float(seen) >= value:
      return setting
  return ""


EPOCH_LOOPS = ("auto", "scan", "python")


@contextlib.contextmanager
def _sigint_deferred():
  """Ctrl-C while a checkpoint save is being handed to orbax takes effect once the call returns:
  interrupted inside it, orbax's background save fails with a traceback; after it, the save
  completes while the run shuts down (`Checkpoints.close` waits for it)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
    if received:
      raise KeyboardInterrupt


def epoch_loop(name: str) -> str:
  """'auto': one compiled scan per epoch on accelerators, a step-per-dispatch loop on CPU,
  where XLA runs convolutions inside loops far slower (see `Steps.train_epoch`)."""
  require_choice("train.epoch_loop", name, EPOCH_LOOPS)
  if name == "auto":
    return "python" if jax.default_backend() == "cpu" else "scan"
  return name


def _check_finite(loss_S: np.ndarray, epoch: int, steps_per_epoch: int, learning_rate: float) -> None:
  bad = np.flatnonzero(~np.isfinite(loss_S))
  if bad.size:
    step = int(bad[0])
    raise TrainingDiverged(
        f"training stopped: the loss is {loss_S[step]} at epoch {epoch + 1}, step {step + 1} of {steps_per_epoch} "
        f"(global step {epoch * steps_per_epoch + step + 1}); try a smaller train.learning_rate "
        f"(now {learning_rate}) or train.dtype='float32'")


def _log_epoch(epoch: int, epochs: int, row: dict, left: str) -> None:
  tests = "  ".join(f"{k[5:-9]} {100 * v:5.1f}%" for k, v in row.items() if k.startswith("test_"))
  logging.info("epoch %d/%d  loss %.4f  train %5.1f%%  | test %s  | %.0f img/s (%.2f s)%s", epoch, epochs,
               row["train_loss"], 100 * row["train_accuracy"], tests, row["images_per_sec"], row["epoch_seconds"],
               f"; {left}" if epoch < epochs else "")


def _step_progress(epoch: int, epochs: int, steps_per_epoch: int, batch_size: int):
  """`on_step` for `Steps.train_epoch`: a few lines per long epoch. A line reports the steps
  before the one just dispatched, so reading their loss waits only for the previous step while
  the current one is queued: the device is never left idle for the log."""
  progress = Progress(f"epoch {epoch}/{epochs}", steps_per_epoch, "steps")

  def so_far(losses, corrects) -> str:
    losses, corrects = parallel.to_host((losses, corrects))
    accuracy = float(np.sum(corrects)) / (len(corrects) * batch_size)
    return (f"loss {float(np.mean(losses)):.4f}, train {100 * accuracy:.1f}% so far, "
            f"{progress.rate(len(losses)) * batch_size:.0f} img/s")

  return lambda step, losses, corrects: progress.update(step, lambda: so_far(losses[:step], corrects[:step]))


def train_and_evaluate(config, workdir: str | pathlib.Path, *, mesh: jax.sharding.Mesh | None = None,
                       data: data_lib.Prepared | None = None) -> TrainResult:
  """Train `config` (checked by `config_checks.check_config`) in `workdir`, resuming from its latest
  checkpoint, and test every epoch. Writes `metrics.csv` (and TensorBoard events) and `checkpoints/`. `mesh` defaults to all devices;
  `data`: `data.prepare(config)`'s, when the caller has it already.
  """
  workdir = pathlib.Path(workdir)
  mesh = mesh or parallel.make_mesh()
  tc = config.train

  data = data or data_lib.prepare(config, conditions=tuple(tc.eval_conditions))
  model = models.from_config(config.model, data.num_classes, dtype=tc.dtype)
  optimizer = make_optimizer(tc)
  eval_batch = math.ceil(tc.eval_batch_size / mesh.size) * mesh.size
  steps = Steps(model, optimizer, data.normalization, tc.batch_size, eval_batch)
  steps_per_epoch = steps.steps_per_epoch(len(data.train.labels_B))
  examples_per_epoch = steps_per_epoch * tc.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"train.batch_size={tc.batch_size} is larger than the {len(data.train.labels_B)} training images")
  logging.info("%s on %s: %d train / %d test images, %d classes, %d steps per epoch, %d device(s)",
               config.model.name, config.data.source, len(data.train.labels_B), len(data.source.test.labels),
               data.num_classes, steps_per_epoch, mesh.size)

  with jax.set_mesh(mesh):
    replicated = parallel.replicated(mesh)
    init = jax.jit(functools.partial(init_state, model, optimizer, input_shape=(1, *data.train.images_BHWC.shape[1:])),
                   out_shardings=replicated)
    init_key = jax.random.fold_in(jax.random.key(config.seed), 0)
    checkpoints = Checkpoints(workdir / "checkpoints", keep=tc.keep_checkpoints)
    start, state = checkpoints.restore_latest(abstract_like(jax.eval_shape(init, init_key), replicated)) or (0, None)
    if start:
      logging.info("resumed from the checkpoint after epoch %d in %s", start, workdir)
    else:
      state = init(init_key)
    logging.info("%s: %s trainable parameters", config.model.name, f"{models.count_params(state.params):,}")

    train_images, train_labels = parallel.put_replicated((data.train.images_BHWC, data.train.labels_B), mesh)
    tests = {c: parallel.put_replicated((s.images_BHWC, s.labels_B), mesh) for c, s in data.tests.items()}
    writer = MetricsWriter(workdir, resume_epoch=start, tensorboard=tc.tensorboard, enabled=jax.process_index() == 0)

    loop = epoch_loop(tc.epoch_loop)
    end = tc.epochs
    # Only process 0 reads metrics.csv: its decision is every process's, or they would part ways.
    met = stop_reached(tc, writer.rows[-1]) if start and writer.rows else ""  # '' on processes > 0
    if parallel.agree(bool(met)):
      logging.info("the checkpoint after epoch %d already meets %s; nothing to train", start,
                   f"train.{met}" if met else "its early stop (process 0's metrics.csv says)")
      end = start
    last = start
    if start < end:
      t0 = time.perf_counter()
      steps.compile_train_epoch(state, train_images, train_labels, config.seed, loop)
      logging.info("compiled the training %s in %.1f s", "epoch" if loop == "scan" else "step",
                   time.perf_counter() - t0)

    training = Progress("training", end - start, "epochs")
    try:
      for epoch in range(start, end):
        t0 = time.perf_counter()
        state, train_metrics = steps.train_epoch(state, train_images, train_labels, config.seed, epoch, loop,
                                                 on_step=_step_progress(epoch + 1, tc.epochs, steps_per_epoch,
                                                                        tc.batch_size))
        # Evaluation is queued behind the epoch before anything is read back.
        correct = {c: steps.count_correct(state.variables, *arrays, loop=loop) for c, arrays in tests.items()}
        train_metrics = parallel.to_host(train_metrics)
        seconds = time.perf_counter() - t0
        _check_finite(train_metrics["loss_S"], epoch, steps_per_epoch, tc.learning_rate)
        row = {
            "train_loss": float(np.mean(train_metrics["loss_S"])),
            "train_accuracy": float(train_metrics["correct"]) / examples_per_epoch,
            **{f"test_{c}_accuracy": float(parallel.to_host(n)) / len(data.tests[c].labels_B)
               for c, n in correct.items()},
            "images_per_sec": examples_per_epoch / seconds,
            "epoch_seconds": seconds,
        }
        writer.write(epoch + 1, row)
        _log_epoch(epoch + 1, tc.epochs, row, training.left(epoch + 1 - start))
        last = epoch + 1
        stop = stop_reached(tc, row)
        if last % tc.checkpoint_every_epochs == 0 or last == tc.epochs or stop:
          with _sigint_deferred():
            checkpoints.save(last, state)
        if stop:
          logging.info("%s %.1f%% >= train.%s=%.1f%%: stopping after epoch %d", STOPS[stop],
                       100 * row[STOPS[stop]], stop, 100 * tc[stop], last)
          break
    finally:
      checkpoints.close()
      writer.close()
  return TrainResult(state=state, model=model, data=data, metrics=writer.rows, epoch=last, resumed_from=start)


def restore(config, workdir: str | pathlib.Path, data: data_lib.Prepared | None = None,
            mesh: jax.sharding.Mesh | None = None) -> Trained:
  """The newest checkpoint of `workdir`, trained as `config` says, for evaluating a finished run."""
  mesh = mesh or parallel.make_mesh()
  data = data or data_lib.prepare(config, conditions=())
  model = models.from_config(config.model, data.num_classes, dtype=config.train.dtype)
  optimizer = make_optimizer(config.train)
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    raise ValueError(f"no checkpoint in {directory}; train first (train.enabled=True) or point --workdir at a "
                      "trained run")
  checkpoints = Checkpoints(directory, keep=config.train.keep_checkpoints, read_only=True)
  try:
    with jax.set_mesh(mesh):
      init = functools.partial(init_state, model, optimizer, input_shape=(1, *data.source.test.images.shape[1:]))
      abstract = abstract_like(jax.eval_shape(init, jax.random.key(0)), parallel.replicated(mesh))
      epoch, state = checkpoints.restore_latest(abstract) or (0, None)
    if not epoch:
      raise ValueError(f"no checkpoint in {directory}; train first (train.enabled=True) or point --workdir at a "
                        "trained run")
  finally:
    checkpoints.close()
  return Trained(model, for_evaluation(state.variables), epoch, data)


def for_evaluation(variables) -> dict:
  """The model's variables as evaluation takes them. Evaluation places them on its own mesh
  (`attribution.batching.BatchRunner`); over several processes it starts from each process's copy
  of the replicated arrays, as host values, since arrays spanning processes cannot meet this
  process's own arrays outside a program over all of them (the shifted twin, layer order)."""
  variables = models.model_variables(variables)
  return parallel.to_host(variables) if jax.process_count() > 1 else variables



def from_torch_weights(config, data: data_lib.Prepared) -> Trained:
  """The model of `config.model` with the weights of `config.model.torch_weights` (a PyTorch
  state_dict, `models.torch_import`), as a run of 0 epochs here: what the evaluations receive in
  place of a checkpoint. Every problem with the file is one ValueError naming the field."""
  from saliency_jax.models import torch_import  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(config.model.torch_weights).expanduser()
  field = f"model.torch_weights={config.model.torch_weights!r}"
  require_choice("model.name (with model.torch_weights)", config.model.name, torch_import.SUPPORTED)
  model = models.from_config(config.model, data.num_classes, dtype=config.train.dtype)
  try:
    variables = torch_import.variables_from_torch(path, model, config.model.name,
                                                  input_shape=(1, *data.source.test.images.shape[1:]))
  except (ValueError, ImportError, OSError, RuntimeError, EOFError, zipfile.BadZipFile) as e:
    problems = " ".join(str(e).split())  # one line
    raise ValueError(f"{field} does not load into {config.model.name}: {problems}") from None
  return Trained(model, variables, 0, data, weights=file_digest(path))


def file_digest(path: pathlib.Path) -> str:
  """The first 12 hex digits of the file's SHA-256: what a result computed from it is keyed by, so a
  changed file computes again rather than reading the old file's results back."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()[:12]
