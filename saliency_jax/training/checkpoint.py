"""Checkpoints through orbax's CheckpointManager, keyed by the number of finished epochs.

orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact and the next run resumes from it (and
orbax removes the leftover temporary folder). What orbax cannot know is a complete checkpoint
damaged afterwards (a truncated file, missing metadata, an empty step folder): `restore_latest`
falls back to the newest one that restores, and a disk too full for the next checkpoint is one
line (`CheckpointError`) before anything is written.
"""

from __future__ import annotations

import errno
import pathlib
import shutil

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from saliency_jax.training import parallel

# Room a checkpoint needs beyond its arrays' bytes: orbax's metadata files and the file system's
# blocks (measured: a 0.48 MB state takes 0.52 MB on disk).
_OVERHEAD_BYTES, _OVERHEAD_FRACTION = 256 << 10, 0.05


class CheckpointError(ValueError):
  """A checkpoint that cannot be written or read; the message names it and what to do."""


def _disk_full(error: BaseException) -> bool:
  # tensorstore reports ENOSPC inside a ValueError's text, Python as an OSError.
  return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error)


def _megabytes(n: float) -> str:
  return f"{n / 2**20:.1f} MB"


def free_bytes(directory: pathlib.Path) -> int:
  return shutil.disk_usage(directory).free


class Checkpoints:
  """`read_only`: for evaluating a workdir (perhaps another run's): nothing is created, moved or
  deleted there."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 3, read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    self._read_only = read_only
    # orbax's read_only mode warns on every use; not creating, cleaning or saving is what it means here.
    self._options = ocp.CheckpointManagerOptions(max_to_keep=keep or None, create=not read_only,
                                                 cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)
    self._pending = None  # the epoch of the save in flight

  def latest_epoch(self) -> int | None:
    return self._manager.latest_step()

  def save(self, epoch: int, state) -> None:
    """Starts an asynchronous save; the device-to-host copy happens before this returns,
    so the caller may donate `state` to the next step right away. A disk without room for it is
    a `CheckpointError` before anything is written, so the checkpoints there stay as they were."""
    need = sum(x.nbytes for x in jax.tree.leaves(state)) * (1 + _OVERHEAD_FRACTION) + _OVERHEAD_BYTES
    # One decision for every process: they share the folder but look at it at different moments.
    free = free_bytes(self.directory)
    if not parallel.agree(free >= need):
      self._fail(epoch, f"{self.directory} has {_megabytes(free)} free and a checkpoint needs about "
                        f"{_megabytes(need)}")
    previous, self._pending = self._pending, epoch
    try:
      self._manager.save(epoch, args=ocp.args.StandardSave(state))
    except Exception as e:  # the previous asynchronous save's error surfaces here, or this save's own
      self._reraise(e, previous if previous is not None and previous not in self._manager.all_steps() else epoch)

  def _fail(self, epoch: int, why: str):
    self._manager.reload()
    latest = self._manager.latest_step()
    resume = f"resume from the checkpoint after epoch {latest}" if latest else "start again"
    raise CheckpointError(f"the checkpoint after epoch {epoch} was not written: {why}; free space there (or give "
                          f"another --workdir) and rerun the same command to {resume}") from None

  def _reraise(self, error: Exception, epoch: int):
    if _disk_full(error):
      self._fail(epoch, f"no space left on the device of {self.directory}")
    raise error

  def restore(self, epoch: int, abstract_state):
    """`abstract_state`: the state's shapes and shardings (`jax.ShapeDtypeStruct` leaves)."""
    return self._manager.restore(epoch, args=ocp.args.StandardRestore(abstract_state))

  def restore_latest(self, abstract_state) -> tuple[int, object] | None:
    """(epoch, state) of the newest checkpoint that restores, or None if there is none.

    A newer one that does not restore is damaged (an older one restores the same state, so it is
    not a changed model): it is named in a warning and, unless `read_only`, renamed to
    `<epoch>.damaged` so that training past it saves that epoch afresh. When none restores,
    nothing is touched and the error names the newest.
    """
    damaged = []
    for epoch in sorted(self._manager.all_steps(), reverse=True):
      try:
        state, problem = self.restore(epoch, abstract_state), None
      except Exception as e:  # orbax and tensorstore raise plain Exception / ValueError for damaged files
        state, problem = None, e
        # A manager keeps what it guessed from the failed folder (e.g. its item layout): start afresh.
        self._manager.close()
        self._manager = ocp.CheckpointManager(self.directory, options=self._options)
      if not parallel.everywhere(problem is None):  # one process's failure is every process's
        damaged.append((epoch, problem))
        continue
      for bad, why in damaged:
        logging.warning("the checkpoint after epoch %d in %s does not restore (%s); using the one after epoch %d%s",
                        bad, self.directory, _first_line(why), epoch,
                        "" if self._read_only else f" and keeping the damaged one as {bad}.damaged")
      if damaged and not self._read_only:
        self._set_aside([bad for bad, _ in damaged])
      return epoch, state
    if damaged:
      epoch, why = damaged[0]
      raise CheckpointError(f"no checkpoint in {self.directory} restores; the newest, after epoch {epoch}, fails with "
                            f"{_first_line(why)}; if the model settings changed use another --workdir, else remove "
                            f"the damaged checkpoint folders") from None
    return None

  def _set_aside(self, epochs: list[int]) -> None:
    if jax.process_index() == 0:
      for epoch in epochs:
        path = self.directory / str(epoch)
        target = path.with_name(f"{epoch}.damaged")
        n = 1
        while target.exists():
          target, n = path.with_name(f"{epoch}.damaged{n}"), n + 1
        path.rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoints set aside")
    self._manager.reload()

  def wait(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      self._reraise(e, self._pending)

  def close(self) -> None:
    self.wait()
    self._manager.close()


def _first_line(error: BaseException | None) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"[:160]


def abstract_like(tree, sharding):
  """Shapes and dtypes of `tree` (arrays or `jax.eval_shape` output), placed with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
