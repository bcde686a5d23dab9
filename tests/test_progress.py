"""Progress where a user waits: a few lines with the count, the rate and the time left, read one
step late so that the device is never waited for."""

import jax.numpy as jnp

from saliency_jax import progress
from saliency_jax.data import sources
from saliency_jax.training import train
from tests.test_data import _write_tree


def test_progress_reads_the_steps_before_the_one_just_dispatched(monkeypatch):
  monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)

  class NotYet:  # the step just dispatched: reading it would make the host wait for the device
    def __array__(self, *args, **kwargs):
      raise AssertionError("progress read the step that was just dispatched")

  on_step = train._step_progress(1, 1, 4, batch_size=8)
  losses, corrects = [jnp.float32(2.0), jnp.float32(4.0)], [jnp.int32(2), jnp.int32(6)]
  lines = []
  monkeypatch.setattr(progress.logging, "info", lambda fmt, *args: lines.append(fmt % args))
  on_step(2, losses + [NotYet()], corrects + [NotYet()])
  assert len(lines) == 1 and "2/4 steps" in lines[0] and "loss 3.0000, train 50.0% so far" in lines[0]


def test_decoding_reports_count_rate_and_time_left(tmp_path, monkeypatch):
  _write_tree(tmp_path / "tree", per_class=4)
  monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
  lines = []
  monkeypatch.setattr(progress.logging, "info", lambda fmt, *args: lines.append(fmt % args))
  sources.folder(str(tmp_path / "tree"), cache_dir=str(tmp_path / "cache"))
  train_lines = [line for line in lines if line.startswith("decoding train: ")]
  assert train_lines and all("/12 images (" in line and "images/s" in line and "left" in line for line in train_lines)
  assert len(train_lines) <= 10  # a tenth of the images at a time, not one line per image


def test_a_long_batched_run_reports_the_images_done(monkeypatch):
  """An integrated-gradients cell runs for minutes: `BatchRunner.run(progress=...)` logs the images
  finished (one batch late), their rate and the time left, between the cell's own lines."""
  from saliency_jax.attribution.batching import BatchRunner  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
  lines = []
  monkeypatch.setattr(progress.logging, "info", lambda fmt, *args: lines.append(fmt % args))
  runner = BatchRunner(batch_size=4)
  x = jnp.arange(32.0).reshape(16, 2)
  out = runner.run("double", lambda x: 2 * x, (x,), progress="cell 3/20 gradient")
  assert jnp.array_equal(out, 2 * x)
  assert lines and all(line.startswith("cell 3/20 gradient: ") and "images/s" in line for line in lines)
  # The batches before the one just dispatched: 4, 8, 12 of 16 images, never all 16.
  assert [line.split(": ")[1].split(" ")[0] for line in lines] == ["4/16", "8/16", "12/16"]
  runner.run("double", lambda x: 2 * x, (x,))  # without a name: no lines
  assert len(lines) == 3


def test_a_stage_s_time_left_counts_each_unit_at_its_own_kind_s_time():
  # A grid's cells: the gradient's took a minute, integrated gradients' thirteen. The mean of the
  # cells done said "about 9 min" for the seven left of a VGG16 grid that took another 1.5 h.
  timed = {"gradient": [60.0], "ig": [700.0, 860.0]}
  assert progress.left_by_kind(timed, ["ig"] * 7, "cells", " in this stage") == "about 1.5 h left in this stage"
  assert progress.left_by_kind(timed, ["gradient", "ig", "lrp"], "cells") == (
      "about 14 min left, and 1 of its cells unlike any timed yet")
  assert progress.left_by_kind({}, ["lrp"] * 2, "cells", " in this stage") == "2 cells left in this stage, none like one timed yet"
