"""Result tables: one mechanism for the single-pixel grid's `results.csv` and the sanity studies'
`<study>.csv`. Both start with the columns of the trained run and the method; a table declares
its columns and the key of a unit of work (a grid cell, a study's method), written atomically after
every unit, so a killed run loses at most the unit in progress and a rerun computes only the
missing ones. Rows read back are strings.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib

from saliency_jax import files

# Which trained run a row is about; then which method (its options as in `MethodSpec.options_text`).
RUN_COLUMNS = ("model", "model_seed", "data_seed", "checkpoint_epoch")
METHOD_COLUMNS = ("method", "method_options")


def run_columns(config, epoch: int) -> dict:
  return {"model": config.model.name, "model_seed": config.seed, "data_seed": config.data.seed,
          "checkpoint_epoch": epoch}


def method_columns(spec) -> dict:
  return {"method": spec.name, "method_options": spec.options_text}


def method_label(method, options):
  """'name(options)' or 'name': of one row's values, or of two pandas columns at once."""
  if isinstance(method, str):
    return f"{method}({options})" if options else method
  return method + options.fillna("").map(lambda o: f"({o})" if o else "")


@dataclasses.dataclass(frozen=True)
class Table:
  columns: tuple[str, ...]
  key: tuple[str, ...]  # rows with equal values here are the same unit of work

  def key_of(self, row: dict) -> tuple[str, ...]:
    """Compared as text: rows read back from the CSV are strings."""
    return tuple(str(row[k]) for k in self.key)

  def read(self, path: str | pathlib.Path) -> list[dict]:
    return files.read_csv(path)

  def write(self, path: str | pathlib.Path, rows: list[dict]) -> None:
    with files.atomic_open(path, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
      writer.writeheader()
      writer.writerows(rows)

  def frame(self, path: str | pathlib.Path):
    """The table as a pandas DataFrame, with empty options as '' and a `method_label` column."""
    import pandas as pd  # pylint: disable=g-import-not-at-top

    df = pd.read_csv(path, dtype={"method_options": str})
    df["method_options"] = df["method_options"].fillna("")
    df["method_label"] = method_label(df["method"], df["method_options"])
    return df
