"""Progress of the loops a user waits for (decoding images, epochs, grid cells, sanity studies):
absl log lines with the count, the rate and the time left, so they land in the same log as
everything else (a terminal, a SLURM output file) without redrawing a line.

A loop that has run for less than `QUIET_SECONDS` says nothing between its own lines; a longer one
logs each time it passes another `every` fraction of its work, a few lines whatever its length.
"""

from __future__ import annotations

import time
from typing import Callable, Hashable, Mapping, Sequence

from absl import logging

QUIET_SECONDS = 10.0


def duration(seconds: float) -> str:
  if seconds < 90:
    return f"{seconds:.0f} s"
  if seconds < 90 * 60:
    return f"{seconds / 60:.0f} min"
  return f"{seconds / 3600:.1f} h"


def left_by_kind(timed: Mapping[Hashable, Sequence[float]], kinds_left: Sequence[Hashable], unit: str,
                 scope: str = "") -> str:
  """The time the units still to run (`kinds_left`, one kind each) will take at the mean time of
  their kind so far (`timed`: seconds by kind), and how many are of a kind not timed yet: a grid's
  cells differ by method (a gradient's takes a minute, integrated gradients' ten), so a mean over
  every cell done misjudges the rest. `scope`: where, after 'left' (' in this stage')."""
  known = [sum(timed[k]) / len(timed[k]) for k in kinds_left if timed.get(k)]
  untimed = len(kinds_left) - len(known)
  if not known:
    return f"{untimed} {unit} left{scope}, none like one timed yet"
  return f"about {duration(sum(known))} left{scope}" + (f", and {untimed} of its {unit} unlike any timed yet"
                                                         if untimed else "")


class Progress:
  """`total` units of work (images, steps, cells) started now."""

  def __init__(self, what: str, total: int, unit: str, every: float = 0.25):
    self.what, self.total, self.unit, self.every = what, total, unit, every
    self.start = time.perf_counter()
    self._next = every  # the fraction whose passing logs the next line

  def rate(self, done: int) -> float:
    return done / max(time.perf_counter() - self.start, 1e-9)

  def left(self, done: int) -> str:
    """'about 3 min left' for the rest of the work at the rate so far."""
    if not done:
      return "time left unknown"
    return f"about {duration((self.total - done) / self.rate(done))} left"

  def update(self, done: int, note: Callable[[], str] | None = None) -> None:
    """`done` units finished; logs a line when another `every` of the work is done, the loop has
    run for `QUIET_SECONDS` and the work is not complete (its own line says that). `note`: more
    for the line, called only when one is logged (it may wait for the device)."""
    if self.total <= 0 or done < self._next * self.total:
      return
    while self._next * self.total <= done:
      self._next += self.every
    if done >= self.total or time.perf_counter() - self.start < QUIET_SECONDS:
      return
    extra = note() if note else ""
    logging.info("%s: %d/%d %s (%.0f%%), %.3g %s/s, %s%s", self.what, done, self.total, self.unit,
                 100 * done / self.total, self.rate(done), self.unit, self.left(done), f"; {extra}" if extra else "")
