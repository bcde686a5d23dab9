"""Per-epoch metrics: `metrics.csv` (rewritten atomically each epoch) and TensorBoard events."""

from __future__ import annotations

import csv
import pathlib
from typing import Mapping

from absl import logging

from saliency_jax.files import atomic_open, read_csv


class MetricsWriter:
  """One row per epoch. Reopening a workdir after a restart keeps the rows up to the epoch
  the run resumes from, so the file never holds an epoch twice."""

  def __init__(self, workdir: str | pathlib.Path, resume_epoch: int = 0, tensorboard: bool = True,
               enabled: bool = True):
    self.path = pathlib.Path(workdir) / "metrics.csv"
    self.enabled = enabled
    self.rows = [r for r in read_csv(self.path) if int(r["epoch"]) <= resume_epoch] if enabled else []
    self._tb = None
    if enabled and tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"), purge_step=resume_epoch + 1)
      except ImportError:
        logging.warning("tensorboardX is not installed: writing metrics.csv only")

  def write(self, epoch: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    self.rows.append({"epoch": epoch, **metrics})
    fields = list(dict.fromkeys(k for row in self.rows for k in row))
    with atomic_open(self.path, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=fields)
      writer.writeheader()
      writer.writerows(self.rows)
    if self._tb is not None:
      for name, value in metrics.items():
        self._tb.add_scalar(name, value, epoch)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
