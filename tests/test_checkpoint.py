"""Checkpoint faults end in one line with nothing lost: a damaged newest checkpoint falls back to
the one before (training past it saves that epoch afresh), a disk without room is named before
anything is written."""

import errno
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from saliency_jax.training import checkpoint, parallel, train
from tests.conftest import make_tiny_config

# orbax reads a checkpoint's arrays concurrently; when one read of a damaged file fails, the
# others' failures are left unretrieved and reported as warnings at garbage collection.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _leaves_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-epoch run with a checkpoint after each epoch, and its final state. The MLP: what is saved
  does not matter here, and it compiles in a fraction of the CNN's time."""
  config = make_tiny_config()
  config.model.name = "mlp"
  workdir = tmp_path_factory.mktemp("trained")
  result = train.train_and_evaluate(config, workdir, mesh=parallel.make_mesh(jax.devices()[:1]))
  return config, workdir, parallel.to_host(result.state)


def _copy(trained, tmp_path):
  shutil.copytree(trained[1], tmp_path / "w")
  return tmp_path / "w"


def _truncate_data(step_dir):
  """Cut the largest array file of a checkpoint short, as a crash of the disk or a copy would."""
  data = max((p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"), key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:1000])


DAMAGE = {
    "truncated data": (lambda ckpt: _truncate_data(ckpt / "2"), 1, "after epoch 2"),
    "missing metadata": (lambda ckpt: (ckpt / "2" / "default" / "_METADATA").unlink(), 1, "after epoch 2"),
    "empty step folder": (lambda ckpt: (ckpt / "8").mkdir(), 2, "after epoch 8"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before_with_a_warning(trained, tmp_path, caplog, damage):
  workdir = _copy(trained, tmp_path)
  harm, expected_epoch, named = DAMAGE[damage]
  harm(workdir / "checkpoints")
  with caplog.at_level(logging.WARNING):
    restored = train.restore(trained[0], workdir)
  assert restored.epoch == expected_epoch
  warnings = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(warnings) == 1 and named in warnings[0] and str(workdir / "checkpoints") in warnings[0]
  # Evaluating moves nothing: the workdir may be another run's.
  assert not list((workdir / "checkpoints").glob("*.damaged"))


def test_training_resumes_past_a_damaged_checkpoint_and_ends_where_the_first_run_did(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  _truncate_data(workdir / "checkpoints" / "2")
  again = train.train_and_evaluate(trained[0], workdir, mesh=parallel.make_mesh(jax.devices()[:1]))
  # Resumed from epoch 1 and retrained epoch 2: bit-identical, as an uninterrupted run.
  _leaves_equal(parallel.to_host(again.state), trained[2])
  assert (workdir / "checkpoints" / "2.damaged").is_dir()  # kept for the user, out of orbax's way
  assert train.restore(trained[0], workdir).epoch == 2  # the new epoch-2 checkpoint restores


def test_when_no_checkpoint_restores_one_line_names_the_newest_and_nothing_moves(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  for step in ("1", "2"):
    _truncate_data(workdir / "checkpoints" / step)
  with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint in .* restores; the newest, after epoch 2"):
    train.restore(trained[0], workdir)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2"]


def test_a_disk_without_room_for_a_checkpoint_is_one_line_and_leaves_the_last_one_to_resume_from(trained, tmp_path,
                                                                                                 monkeypatch):
  workdir = _copy(trained, tmp_path)
  shutil.rmtree(workdir / "checkpoints" / "2")  # as if stopped after epoch 1
  monkeypatch.setattr(checkpoint, "free_bytes", lambda directory: 100_000)  # less than the state
  with pytest.raises(checkpoint.CheckpointError, match=r"the checkpoint after epoch 2 was not written: .* has 0\.1 MB "
                     r"free .*rerun the same command to resume from the checkpoint after epoch 1"):
    train.train_and_evaluate(trained[0], workdir, mesh=parallel.make_mesh(jax.devices()[:1]))
  # Nothing half written; the rerun resumes from epoch 1 (and continues bit-identically, as the
  # damaged-checkpoint test above shows).
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1"]
  assert train.restore(trained[0], workdir).epoch == 1


def test_a_disk_that_fills_during_the_write_is_one_line_naming_that_checkpoint(tmp_path, monkeypatch):
  saves = checkpoint.Checkpoints(tmp_path / "checkpoints")
  state = {"w": jnp.ones(3)}
  saves.save(1, state)
  saves.wait()

  def full(*args, **kwargs):  # what orbax's tensorstore write raised on a full tmpfs
    raise ValueError("RESOURCE_EXHAUSTED: Error writing \"w/0\": Failed to write 80279 bytes to file 8: No space "
                     "left on device [os_error_code='28']")

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  with pytest.raises(checkpoint.CheckpointError, match=r"after epoch 2 was not written: no space left on the device "
                     r".*resume from the checkpoint after epoch 1"):
    saves.save(2, state)
  def broken(*args, **kwargs):
    raise OSError(errno.EIO, "I/O error")

  monkeypatch.setattr(ocp.CheckpointManager, "save", broken)
  with pytest.raises(OSError, match="I/O error"):  # other faults are not dressed up as a full disk
    saves.save(2, state)


def test_no_space_for_metrics_or_results_ends_the_binary_with_one_line(tmp_path, monkeypatch, capsys):
  import types  # pylint: disable=g-import-not-at-top

  from saliency_jax import main, pipeline  # pylint: disable=g-import-not-at-top

  def full(config, workdir):
    raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.csv"))

  monkeypatch.setattr(pipeline, "run", full)
  # The flags' values without parsing flags: parsing (and unparsing) them resets absl's verbosity
  # for every later test.
  monkeypatch.setattr(main, "_CONFIG", types.SimpleNamespace(value=make_tiny_config()))
  monkeypatch.setattr(main, "_WORKDIR", types.SimpleNamespace(value=str(tmp_path)))
  with pytest.raises(SystemExit) as exit_:
    main.main(["main"])
  assert exit_.value.code == 2
  errors = capsys.readouterr().err.strip().splitlines()
  assert errors == [f"error: no space left on the device of {tmp_path / 'metrics.csv'}; free space there and rerun "
                    "the same command (finished epochs, grid cells and sanity methods are kept)"]
