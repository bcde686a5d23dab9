"""The compiled parts of training: a whole epoch as one `lax.scan`, and on-device evaluation.

The dataset lives on the devices as uint8. An epoch draws a permutation on the device, and
each step gathers its batch from it, so no image crosses the host boundary after the start;
the host dispatches one call per epoch and reads back a handful of scalars.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from saliency_jax.data import Normalization
from saliency_jax import lowering
from saliency_jax.training.parallel import DATA_AXIS
from saliency_jax.training.state import TrainState

SHUFFLE, DROPOUT = 1, 2  # fold_in tags of the model seed's streams (0 initialises)


def _gather(array, index_B):
  """array[index_B], the result split over the batch axis like the indices."""
  return array.at[index_B].get(out_sharding=P(DATA_AXIS))


@dataclasses.dataclass(frozen=True)
class Steps:
  """Jitted train/eval functions for one model, optimiser, normalisation and batch size."""

  model: Any
  optimizer: optax.GradientTransformation
  normalization: Normalization
  batch_size: int
  eval_batch_size: int

  def loss_and_grads(self, state: TrainState, x_u8, labels_B, dropout_key):
    """Mean cross-entropy of one batch, its gradient, the new BatchNorm statistics, #correct."""
    x_BHWC = self.normalization(x_u8)

    def loss_fn(params):
      variables = {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
      # Bound for running: the CPU lowering's fast convolution gradients where it is on.
      apply = lowering.bind(self.model.apply)
      logits_BK, updates = apply(variables, x_BHWC, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key})
      logits_BK = logits_BK.astype(jnp.float32)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits_BK, labels_B).mean()
      return loss, (logits_BK, updates.get("batch_stats", state.batch_stats))

    (loss, (logits_BK, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    correct = jnp.sum(jnp.argmax(logits_BK, -1) == labels_B)
    return loss, grads, batch_stats, correct

  def train_step(self, state: TrainState, x_u8, labels_B, dropout_key) -> tuple[TrainState, jax.Array, jax.Array]:
    loss, grads, batch_stats, correct = self.loss_and_grads(state, x_u8, labels_B, dropout_key)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), loss, correct

  def steps_per_epoch(self, num_examples: int) -> int:
    # Fixed shapes: the last partial batch is dropped (a different few images each epoch).
    return num_examples // self.batch_size

  def _epoch_index(self, seed, epoch, num_examples: int):
    """(steps, batch) indices of one epoch: a permutation drawn from (seed, epoch) alone."""
    num_steps = self.steps_per_epoch(num_examples)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), SHUFFLE), epoch)
    perm = jax.random.permutation(key, num_examples)
    return perm[: num_steps * self.batch_size].reshape(num_steps, self.batch_size)

  def _indexed_step(self, state: TrainState, images_u8, labels, index_SB, step, seed, epoch):
    """Step `step` of an epoch: gathers its batch on the device from the epoch's indices."""
    index_B = jax.sharding.reshard(index_SB[step], P(DATA_AXIS))
    dropout_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), DROPOUT), epoch),
                                     step)
    state, loss, correct = self.train_step(state, _gather(images_u8, index_B), _gather(labels, index_B), dropout_key)
    return state, (loss, correct)

  def _scan_epoch(self, state: TrainState, images_u8, labels, seed, epoch):
    index_SB = self._epoch_index(seed, epoch, labels.shape[0])
    body = lambda state, step: self._indexed_step(state, images_u8, labels, index_SB, step, seed, epoch)
    state, (loss_S, correct_S) = jax.lax.scan(body, state, jnp.arange(index_SB.shape[0]))
    return state, {"loss_S": loss_S, "correct": jnp.sum(correct_S)}

  @functools.cached_property
  def _jit_scan_epoch(self):
    return jax.jit(self._scan_epoch, donate_argnums=0, compiler_options=lowering.compiler_options(training=True))

  @functools.cached_property
  def _jit_epoch_index(self):
    return jax.jit(self._epoch_index, static_argnums=2)

  @functools.cached_property
  def _jit_step(self):
    return jax.jit(self._indexed_step, donate_argnums=0, compiler_options=lowering.compiler_options(training=True))

  def train_epoch(self, state: TrainState, images_u8, labels, seed: int, epoch: int, loop: str = "scan",
                  on_step: Callable[[int, list, list], None] | None = None):
    """One epoch; returns `(state, {"loss_S", "correct"})` without waiting for the device.

    `loop="scan"`: the whole epoch is one compiled `lax.scan`, one dispatch per epoch (the fast
    path on GPUs and TPUs). `loop="python"`: one dispatch per step of a compiled step that
    indexes the on-device permutation; on XLA:CPU convolutions inside a loop run an order of
    magnitude slower than outside one, so this is the fast path there. Both compute the same
    thing: shuffling and dropout depend only on (seed, epoch, step), so a run resumed from a
    checkpoint continues exactly as the uninterrupted run would have. The state is donated.
    `on_step(step, losses, corrects)`: called in the python loop once step `step` is dispatched,
    with the arrays of the steps so far (for progress; it should not wait for `step` itself).
    """
    if loop == "scan":
      return self._jit_scan_epoch(state, images_u8, labels, seed, epoch)
    index_SB = self._jit_epoch_index(seed, epoch, labels.shape[0])
    losses, corrects = [], []
    for step in range(index_SB.shape[0]):
      state, (loss, correct) = self._jit_step(state, images_u8, labels, index_SB, step, seed, epoch)
      losses.append(loss)
      corrects.append(correct)
      if on_step is not None:
        on_step(step, losses, corrects)
    return state, {"loss_S": jnp.stack(losses), "correct": jnp.sum(jnp.stack(corrects))}

  def compile_train_epoch(self, state: TrainState, images_u8, labels, seed: int, loop: str = "scan") -> None:
    """Compile ahead, so that the first epoch's time is training, not the compiler."""
    if loop == "scan":
      self._jit_scan_epoch.lower(state, images_u8, labels, seed, 0).compile()
    else:
      index_SB = self._jit_epoch_index(seed, 0, labels.shape[0])
      self._jit_step.lower(state, images_u8, labels, index_SB, 0, seed, 0).compile()

  def _eval_index(self, num_examples: int):
    """(batches, batch) indices covering every example once, and which entries are padding."""
    num_batches = -(-num_examples // self.eval_batch_size)
    index = jnp.arange(num_batches * self.eval_batch_size)
    valid = index < num_examples
    shape = (num_batches, self.eval_batch_size)
    return jnp.where(valid, index, 0).reshape(shape), valid.reshape(shape)

  def _batch_correct(self, variables, images_u8, labels, index_NB, valid_NB, batch):
    index_B = jax.sharding.reshard(index_NB[batch], P(DATA_AXIS))
    valid_B = jax.sharding.reshard(valid_NB[batch], P(DATA_AXIS))
    logits_BK = lowering.bind(self.model.apply)(variables, self.normalization(_gather(images_u8, index_B)), train=False)
    return jnp.sum((jnp.argmax(logits_BK, -1) == _gather(labels, index_B)) & valid_B)

  def _scan_correct(self, variables, images_u8, labels):
    index_NB, valid_NB = self._eval_index(labels.shape[0])
    body = lambda total, b: (total + self._batch_correct(variables, images_u8, labels, index_NB, valid_NB, b), None)
    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.int32), jnp.arange(index_NB.shape[0]))
    return total

  @functools.cached_property
  def _jit_scan_correct(self):
    return jax.jit(self._scan_correct, compiler_options=lowering.compiler_options())

  @functools.cached_property
  def _jit_eval_index(self):
    return jax.jit(self._eval_index, static_argnums=0)

  @functools.cached_property
  def _jit_batch_correct(self):
    return jax.jit(self._batch_correct, compiler_options=lowering.compiler_options())

  def count_correct(self, variables, images_u8, labels, loop: str = "scan") -> jax.Array:
    """How many of `images_u8` the model classifies as `labels`; batched on the device, not
    waited for. `loop` as in `train_epoch`."""
    if loop == "scan":
      return self._jit_scan_correct(variables, images_u8, labels)
    index_NB, valid_NB = self._jit_eval_index(labels.shape[0])
    counts = [self._jit_batch_correct(variables, images_u8, labels, index_NB, valid_NB, b)
              for b in range(index_NB.shape[0])]
    return jnp.sum(jnp.stack(counts))
