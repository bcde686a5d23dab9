"""Result tables: the one mechanism behind every stage's CSV (the single-pixel grid's `results.csv`,
the sanity studies' `<study>.csv`, faithfulness's `results.csv`).

A table declares, once, its columns, the key of a unit of work (a grid cell, a study's method) and
what each column must hold. Rows are written atomically after every unit, so a killed run loses at
most the unit in progress. Rows read back are validated against the declaration: a row that is cut
short, lacks a key, or holds text where a number belongs is left out with a warning naming the file
and the row, so its unit is computed again (`read(..., repair=True)` also rewrites the file without
it). Rows read back are strings; the kinds say how to read them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
from typing import Mapping

from absl import logging

from saliency_jax import files

# Which trained run a row is about; then which method (its options as in `MethodSpec.options_text`).
# `weights`: the digest of imported weights (`model.torch_weights`), '' for the workdir's own training.
RUN_COLUMNS = ("model", "model_seed", "data_seed", "checkpoint_epoch", "weights")
METHOD_COLUMNS = ("method", "method_options")
# The method's revision (`registry.revision`) its row was computed with: a column of every table that
# has methods, the last of its key, so a run recomputes a method's units after a change and keeps
# the older rows beside them; `fresh` leaves those out. Tables written before it existed read as 1.
REVISION = "method_revision"
# Column kinds: `text` anything (also ''), `number` a float (NaN allowed: an undefined value),
# `finite` a finite float, `count` a non-negative integer, `json` a JSON list of numbers.
KINDS = ("text", "number", "finite", "count", "json")


def run_columns(config, trained) -> dict:
  """The run columns of rows about `trained` (a `training.train.Trained`)."""
  return {"model": config.model.name, "model_seed": config.seed, "data_seed": config.data.seed,
          "checkpoint_epoch": trained.epoch, "weights": trained.weights}


def method_columns(spec) -> dict:
  return {"method": spec.name, "method_options": spec.options_text, REVISION: spec.revision}


def fresh(frame, source=""):
  """`frame` without the rows of another revision of their method than this process registers (rows
  computed before a change to it, or by newer code), with a warning naming `source`. A method not
  registered here (a researcher's own, imported by the runs but not by this process) keeps the rows
  of the newest revision `frame` holds; pass every run's rows at once so that holds across runs."""
  if frame.empty or REVISION not in frame:
    return frame
  from saliency_jax.attribution import registry  # pylint: disable=g-import-not-at-top

  revision = frame[REVISION].astype(int)
  wanted = frame["method"].map(lambda m: registry.revision(m) or 0)
  wanted = wanted.where(wanted > 0, revision.groupby(frame["method"]).transform("max"))
  stale = revision != wanted
  if stale.any():
    which = sorted({f"{m} (revision {r}; counted: {w})"
                    for m, r, w in zip(frame["method"][stale], revision[stale], wanted[stale])})
    logging.warning("%s: left out %d row(s) of another revision of their method than the one counted: %s; "
                    "rerun the stage with the current code to compute them", source or "a table", int(stale.sum()),
                    ", ".join(which))
  return frame[~stale]


def current(frame, source=""):
  """The rows of a run's table about its model and methods as they are now: the newest checkpoint,
  with imported weights those of the newest rows' file (a table keeps older rows: their keys differ),
  and each method's current revision (`fresh`)."""
  frame = fresh(frame, source)
  if frame.empty:
    return frame
  frame = frame[frame["checkpoint_epoch"] == frame["checkpoint_epoch"].max()]
  return frame[frame["weights"] == frame["weights"].iloc[-1]] if "weights" in frame else frame


def method_label(method, options):
  """'name(options)' or 'name': of one row's values, or of two pandas columns at once."""
  if isinstance(method, str):
    return f"{method}({options})" if options else method
  return method + options.fillna("").map(lambda o: f"({o})" if o else "")


class DamagedTable(ValueError):
  """A table file that cannot be read at all (not text, no header, another table's header)."""


def _valid(kind: str, value: str) -> bool:
  try:
    if kind == "number":
      float(value)
    elif kind == "finite":
      return math.isfinite(float(value))
    elif kind == "count":
      return int(value) >= 0
    elif kind == "json":
      values = json.loads(value)
      return isinstance(values, list) and all(isinstance(v, (int, float)) for v in values)
    return True
  except (ValueError, TypeError):
    return False


@dataclasses.dataclass(frozen=True)
class Table:
  columns: tuple[str, ...]
  key: tuple[str, ...]  # rows with equal values here are the same unit of work
  # column -> one of KINDS; columns not named are `text`.
  kinds: Mapping[str, str] = dataclasses.field(default_factory=dict)
  # Columns a row may leave empty (a metric that does not apply to it, e.g. ROAD's accuracy on a
  # deletion row); every other column must be there.
  optional: tuple[str, ...] = ()
  # Columns added after files were written: what such a file's rows hold in them (REVISION: 1).
  former: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if len(set(self.columns)) != len(self.columns):
      raise ValueError(f"table declares a column twice: {self.columns}")
    unknown = (set(self.key) | set(self.kinds) | set(self.former)) - set(self.columns)
    if unknown or set(self.kinds.values()) - set(KINDS):
      raise ValueError(f"table declares columns it does not have or unknown kinds: {sorted(unknown)}")

  def key_of(self, row: dict) -> tuple[str, ...]:
    """Compared as text: rows read back from the CSV are strings."""
    return tuple(str(row[k]) for k in self.key)

  def problem(self, row: dict) -> str:
    """Why a row read back is not a complete row of this table; '' when it is."""
    for column in self.columns:
      value = row.get(column)
      if value is None:
        return f"no value for {column!r} (the row is cut short)"
      if value == "" and (column in self.optional or self.kinds.get(column, "text") == "text"):
        continue
      if not _valid(self.kinds.get(column, "text"), value):
        return f"{column}={value!r} is not a {self.kinds[column]} value"
    if None in row:  # csv.DictReader's key for fields beyond the header
      return "more fields than the header has"
    return ""

  def read(self, path: str | pathlib.Path, *, repair: bool = False, suspect: set | None = None,
           strict: bool = False) -> list[dict]:
    """The complete rows of the table at `path` (none if there is no file). Incomplete rows are
    left out with a warning (a stage computes their units again); `repair=True` also rewrites the
    file without them (atomically), so the next reader sees a whole table; `strict=True` raises
    `DamagedTable` instead, for a reader that would only report fewer rows (the report). `suspect`,
    when given, receives the keys of units that lost rows: those of damaged rows whose key survived,
    and the last complete row's when the damage is at the end (a file is rewritten whole after every
    unit, so a cut tail belongs to the last unit written).
    A file that is not a table of these columns at all raises `DamagedTable` naming it."""
    path = pathlib.Path(path)
    if not path.exists():
      return []
    try:
      text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
      raise DamagedTable(f"{path} is not a text table ({e.reason} at byte {e.start})") from None
    if not text.strip():
      return []
    lines = text.splitlines(keepends=True)
    header = next(csv.reader(lines[:1]))
    missing = [c for c in self.columns if c not in header and c not in self.optional and c not in self.former]
    if missing:
      raise DamagedTable(f"{path} lacks the columns {', '.join(missing)}; it is not this stage's table "
                         "(or it was cut inside its header)")
    rows, dropped = [], []
    records = list(csv.DictReader(lines))
    # Written before the column existed.
    absent = {c: self.former.get(c, "") for c in (*self.optional, *self.former) if c not in header}
    for i, row in enumerate(records):
      row = {**row, **absent}
      problem = self.problem(row)
      # A row without its line end was cut inside its last field: a number cut short still parses.
      if not problem and i == len(records) - 1 and not lines[-1].endswith(("\n", "\r")):
        problem = "the file ends inside it"
      if problem:
        dropped.append(f"row {i + 1} ({problem})")
        if suspect is not None:
          if all(row.get(k) is not None for k in self.key):
            suspect.add(self.key_of(row))
          if i == len(records) - 1 and rows:
            suspect.add(self.key_of(rows[-1]))
      else:
        rows.append({c: row[c] for c in (*header, *absent)})
    if dropped and strict:
      raise DamagedTable(f"{path}: {len(dropped)} damaged row(s): {'; '.join(dropped)}; rerun the stage that "
                         "wrote it (it computes them again) or restore the file")
    if dropped:
      logging.warning("%s: left out %d damaged row(s), which will be computed again: %s", path, len(dropped),
                      "; ".join(dropped))
      if repair:
        self.write(path, rows)
    return rows

  def write(self, path: str | pathlib.Path, rows: list[dict]) -> None:
    with files.atomic_open(path, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
      writer.writeheader()
      writer.writerows(rows)

  def parse(self, row: dict) -> dict:
    """A row read back with its numbers as numbers (the declared kinds; '' stays '' where optional):
    the same types as a row just computed."""
    out = dict(row)
    for column, kind in self.kinds.items():
      value = out.get(column)
      if isinstance(value, str) and value != "":
        out[column] = int(value) if kind == "count" else float(value) if kind in ("number", "finite") else value
    return out

  def frame(self, path: str | pathlib.Path, strict: bool = False):
    """The table's complete rows as a pandas DataFrame, numeric columns as floats, empty options as
    '' and a `method_label` column; `strict` as in `read`."""
    import pandas as pd  # pylint: disable=g-import-not-at-top

    df = pd.DataFrame(self.read(path, strict=strict), columns=list(self.columns))
    for column, kind in self.kinds.items():
      if kind in ("number", "finite", "count"):  # '' (an optional value absent) and 'nan' as NaN
        values = df[column].map(lambda v: float("nan") if v in ("", None) else float(v)).astype(float)
        df[column] = values.astype(int) if kind == "count" and values.notna().all() else values
    if "method_options" in df:
      df["method_options"] = df["method_options"].fillna("")
      df["method_label"] = method_label(df["method"], df["method_options"])
    return df
