"""The stage protocol, and the one loop that runs every stage.

A stage is one file: a `Stage` subclass that says which config section it reads (`name`, also its
folder in the workdir), the table it writes (`table`: columns, key and kinds, declared once), and

- `check(config) -> plan`: its section's settings, checked without any work (ValueError naming
  the field); the plan is what the stage needs from them (parsed methods, ...);
- `units()`: its resumable units of work (a grid cell, a study's method, a method's curves), each
  naming the table rows it will produce;
- `run(unit) -> Output`: the unit's rows (and arrays to keep beside them);
- `finish(rows, computed)`: figures, once the units are done.

`run_stage` owns everything else, the same for every stage: it reads the stage's tables back
(validated: a damaged row is computed again, and the file rewritten without it), skips the units
whose rows are there, marks the stage as running until its last unit is done (`RUNNING`), logs
progress with the time left, writes each unit's rows and arrays atomically as soon as it is done
(process 0 only; every process computes its share of every batch), and records the stage in the
workdir's provenance. A killed run loses at most the unit in progress; a rerun computes the rest.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import json
import pathlib
import time
from typing import Any, ClassVar

import jax
import numpy as np
from absl import logging

from saliency_jax import files, progress, provenance
from saliency_jax.evaluation import results
from saliency_jax.training import parallel

# Seconds JAX has spent tracing, lowering and compiling programs in this process (its monitoring
# events), so a unit's row can say how much of its time was compilation: what is left is the time a
# warm run takes (the leaderboard's seconds per image).
_COMPILING = [0.0]
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **_: _COMPILING.__setitem__(0, _COMPILING[0] + seconds)
    if event.startswith("/jax/core/compile/") else None)

# In a stage's folder while it has units left (written first, removed after the last): the row keys
# it plans, so a report can tell a stage in progress from a finished one.
RUNNING = "running.json"


class DegenerateResult(ValueError):
  """A unit whose result is no number (a curve that is NaN): the run stops, naming it, rather than
  writing it as a result."""


@dataclasses.dataclass(frozen=True)
class Unit:
  """A resumable piece of work: `keys` are the table keys of the rows it produces, in `table` (a
  file in the stage's folder); `label` names it in log lines; `payload` is the stage's own."""

  keys: tuple[tuple[str, ...], ...]
  table: str
  label: str
  payload: Any = None
  kind: Any = None  # units of one kind take about as long (progress lines); default: the label

  def __post_init__(self):
    if self.kind is None:
      object.__setattr__(self, "kind", self.label)  # frozen


@dataclasses.dataclass
class Output:
  """A unit's rows; `arrays`: files in the stage's folder (name -> arrays, saved as .npz) kept
  beside them; `note`: what the log line says of it."""

  rows: list[dict]
  arrays: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
  note: str = ""


class Stage(abc.ABC):
  """One kind of evaluation over a trained model. Subclasses declare `name`, `table`, `noun` and
  `check`, and implement `units` and `run` (and `finish` if they draw figures)."""

  name: ClassVar[str]  # the config section and the folder in the workdir
  table: ClassVar[results.Table]
  noun: ClassVar[str] = "units"  # what a unit is called in progress lines

  @classmethod
  def enabled(cls, config) -> bool:
    return bool(config[cls.name].get("enabled", True))

  @classmethod
  @abc.abstractmethod
  def check(cls, config) -> Any:
    """The stage's settings in `config`, checked (ValueError naming the field); returns its plan."""

  @classmethod
  def methods(cls, config, plan) -> list[tuple[Any, str]]:
    """(method spec, output) of every attribution method the plan runs: each is traced on the model
    before any work (`pipeline.check_methods_build`). None by default."""
    return []

  def __init__(self, config, plan, trained, workdir: str | pathlib.Path, devices=None):
    self.config, self.plan, self.trained, self.devices = config, plan, trained, devices
    self.workdir = pathlib.Path(workdir)
    self.out_dir = self.workdir / self.name

  @abc.abstractmethod
  def units(self) -> list[Unit]:
    ...

  @abc.abstractmethod
  def run(self, unit: Unit) -> Output:
    ...

  def complete(self, unit: Unit, rows: list[dict]) -> bool:
    """Whether `rows` (read back, the unit's keys) are all the unit writes: by default, a row for
    each of its keys."""
    found = {self.table.key_of(r) for r in rows}
    return all(k in found for k in unit.keys)

  def finish(self, rows: list[dict], computed: int) -> None:
    """After the last unit (every process calls it; figures are drawn on process 0)."""


def _read(stage: Stage, name: str, write: bool) -> list[dict]:
  """A table's complete rows; a file that is no table of the stage's at all is set aside (never
  deleted) as `<name>.damaged`, with a warning, and its units computed again."""
  path = stage.out_dir / name
  try:
    suspect = set()
    rows = stage.table.read(path, repair=write, suspect=suspect)
    # A unit that lost some of its rows is computed again whole (its other rows are dropped here).
    return [r for r in rows if stage.table.key_of(r) not in suspect]
  except results.DamagedTable as e:
    aside = files.set_aside(path) if write else path.with_name(f"{path.name}.damaged")
    logging.warning("%s; set aside as %s, its units are computed again", e, aside.name)
    return []


def _seconds(rows: list[dict]) -> float | None:
  """The seconds a unit took, from its rows (each carries the unit's); None if they do not say."""
  try:
    seconds = float(rows[0]["seconds"])
  except (IndexError, KeyError, TypeError, ValueError):
    return None
  return seconds if np.isfinite(seconds) else None


def run_stage(stage: Stage) -> list[dict]:
  """Run `stage`'s missing units (see the module docstring); returns all its rows, computed or
  read back, in unit order."""
  units = stage.units()
  repeated = sorted(k for k, n in collections.Counter((u.table, k) for u in units for k in u.keys).items() if n > 1)
  if repeated:  # the table would keep one unit's rows and the run count them twice
    raise ValueError(f"{stage.name}: units share a key (a setting lists the same thing twice?): {repeated[:3]}")
  write = jax.process_index() == 0
  tables = {name: _read(stage, name, write) for name in dict.fromkeys(u.table for u in units)}
  mine = lambda unit: [stage.table.parse(r) for r in tables[unit.table] if stage.table.key_of(r) in set(unit.keys)]
  # Process 0's files decide for every process: they must run the same units, or their collectives part.
  todo_mask = parallel.agree_all([not stage.complete(u, mine(u)) for u in units])
  todo = [u for u, missing in zip(units, todo_mask) if missing]
  pending = {id(u) for u in todo}
  running = stage.out_dir / RUNNING
  if todo and write:
    with files.atomic_open(running, "w") as f:
      json.dump({"stage": stage.name, "keys": [list(k) for u in units for k in u.keys]}, f)
  started, timed = provenance.now(), collections.defaultdict(list)
  for unit in units:  # what the units done before took, for the time left
    seconds = _seconds(mine(unit)) if id(unit) not in pending else None
    if seconds is not None:
      timed[unit.kind].append(seconds)
  rows = []
  for i, unit in enumerate(units):
    if id(unit) not in pending:
      rows += mine(unit)
      continue
    t0, compiling = time.perf_counter(), _COMPILING[0]
    out = stage.run(unit)
    seconds = time.perf_counter() - t0
    timed[unit.kind].append(seconds)
    for row in out.rows:
      row.setdefault("seconds", round(seconds, 2))
      row.setdefault("compile_seconds", round(_COMPILING[0] - compiling, 2))
    if write:
      for name, arrays in out.arrays.items():
        with files.atomic_open(stage.out_dir / name, "wb") as f:
          np.savez(f, **arrays)
      tables[unit.table] = [r for r in tables[unit.table] if stage.table.key_of(r) not in set(unit.keys)] + out.rows
      stage.table.write(stage.out_dir / unit.table, tables[unit.table])
    rows += out.rows
    rest = [u.kind for u in units[i + 1:] if id(u) in pending]
    logging.info("%s %d/%d %s: %s  (%.1f s)%s", stage.name, i + 1, len(units), unit.label, out.note, seconds,
                 f"; {progress.left_by_kind(timed, rest, stage.noun, ' in this stage')}" if rest else "")
  if write:
    running.unlink(missing_ok=True)
  stage.finish(rows, len(todo))
  if todo:
    provenance.record(stage.workdir, stage.name, started, units=len(todo), of=len(units))
  return rows
