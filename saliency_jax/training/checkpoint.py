"""Checkpoints through orbax's CheckpointManager, keyed by the number of finished epochs.

orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact and the next run resumes from it.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp


class Checkpoints:

  def __init__(self, directory: str | pathlib.Path, keep: int = 3):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep or None, create=True)
    self._manager = ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)

  def latest_epoch(self) -> int | None:
    return self._manager.latest_step()

  def save(self, epoch: int, state) -> None:
    """Starts an asynchronous save; the device-to-host copy happens before this returns,
    so the caller may donate `state` to the next step right away."""
    self._manager.save(epoch, args=ocp.args.StandardSave(state))

  def restore(self, epoch: int, abstract_state):
    """`abstract_state`: the state's shapes and shardings (`jax.ShapeDtypeStruct` leaves)."""
    return self._manager.restore(epoch, args=ocp.args.StandardRestore(abstract_state))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree, sharding):
  """Shapes and dtypes of `tree` (arrays or `jax.eval_shape` output), placed with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
