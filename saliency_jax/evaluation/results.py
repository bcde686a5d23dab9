"""results.csv: one row per grid cell, rewritten atomically after every cell, so a killed run
loses at most the cell in progress and a rerun computes only the cells that are missing."""

from __future__ import annotations

import csv
import pathlib

from saliency_jax import files
from saliency_jax.evaluation.grid import CELL_KEY, ID_COLUMNS, METRIC_COLUMNS

COLUMNS = (*ID_COLUMNS, *METRIC_COLUMNS, "seconds")


def cell_key(row: dict) -> tuple[str, ...]:
  """Compared as text: rows read back from the CSV are strings."""
  return tuple(str(row[k]) for k in CELL_KEY)


def read_rows(path: str | pathlib.Path) -> list[dict]:
  path = pathlib.Path(path)
  if not path.exists():
    return []
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def write_rows(path: str | pathlib.Path, rows: list[dict], columns=COLUMNS) -> None:
  with files.atomic_open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
