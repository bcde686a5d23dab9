"""Where a workdir's results came from, as data: `provenance.json` beside them.

Every stage that computes something (training, each evaluation stage) appends one entry: the stage,
the code's commit, when it started and ended, what it computed, the host, JAX's version and the
devices. The report reads this file, not log text, to say which commits and machines made a run.
Process 0 writes it (atomically); a file that does not parse is set aside (`.damaged`) with a
warning, never trusted and never fatal: it only describes the results, it does not define them.
"""

from __future__ import annotations

import datetime
import functools
import json
import pathlib
import platform
import subprocess

import jax
from absl import logging

from saliency_jax import files

FILE = "provenance.json"


@functools.lru_cache(maxsize=None)
def commit() -> str:
  """The short commit of the checkout the package was imported from, with '+dirty' for uncommitted
  changes to tracked files; '' outside a git checkout (an installed package)."""
  here = pathlib.Path(__file__).resolve().parent
  try:
    head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ""
  return head + ("+dirty" if dirty else "")


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine() -> dict:
  devices = jax.devices()
  return {"host": platform.node(), "processes": jax.process_count(), "jax": jax.__version__,
          "platform": devices[0].platform, "device_kind": devices[0].device_kind, "devices": len(devices)}


def read(workdir: str | pathlib.Path) -> list[dict]:
  """The entries of a workdir, oldest first; [] without a file or for one that does not parse."""
  path = pathlib.Path(workdir) / FILE
  if not path.exists():
    return []
  try:
    entries = json.loads(path.read_text())
    if isinstance(entries, list) and all(isinstance(e, dict) for e in entries):
      return entries
    problem = "not a list of entries"
  except (ValueError, UnicodeDecodeError) as e:
    problem = str(e)
  logging.warning("%s does not parse (%s); its entries are left out", path, problem)
  return []


def computed(entries: list[dict]) -> list[dict]:
  """The entries that computed something: without a training entry that trained no epoch (a resume of
  a finished run; code before 2026-12-07 recorded those too, without `from_epoch`, so for them no
  more epochs than an earlier entry had means nothing trained)."""
  kept, trained = [], 0
  for e in entries:
    epochs = e.get("epochs") if e.get("stage") == "train" else None
    start = e.get("from_epoch", trained)
    if isinstance(epochs, int) and isinstance(start, int) and epochs <= start:
      continue
    trained = max(trained, epochs) if isinstance(epochs, int) else trained
    kept.append(e)
  return kept


def _readable(path: pathlib.Path) -> list[dict]:
  """`read`, with a file that does not parse set aside (`files.set_aside`) before it is replaced."""
  entries = read(path.parent)
  try:
    json.loads(path.read_text()) if path.exists() else None
  except (ValueError, UnicodeDecodeError):
    files.set_aside(path)
  return entries


def record(workdir: str | pathlib.Path, stage: str, started: str, **what) -> None:
  """Append an entry for `stage` (started at `started`, ended now); `what`: what it computed."""
  if jax.process_index() != 0:
    return
  entries = _readable(pathlib.Path(workdir) / FILE) + [{"stage": stage, "commit": commit(), "started": started, "ended": now(), **what,
                              **machine()}]
  with files.atomic_open(pathlib.Path(workdir) / FILE, "w") as f:
    json.dump(entries, f, indent=1)
