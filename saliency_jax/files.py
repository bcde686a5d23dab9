"""Atomic file writes: results, metrics and caches are whole or absent, never half written; and
the one CSV reader of the metrics and result tables."""

from __future__ import annotations

import contextlib
import csv
import os
import pathlib
import tempfile


@contextlib.contextmanager
def atomic_open(path: str | pathlib.Path, mode: str = "w", **kwargs):
  """Open a temporary file beside `path`; on success rename it over `path` in one step.

  A reader, or a run killed mid-write, sees the old file or the new one. The file gets the
  permissions of an ordinary `open` (the umask), not mkstemp's private 0600.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def set_aside(path: str | pathlib.Path) -> pathlib.Path:
  """Rename a damaged file to `<name>.damaged` (`<name>.damaged2`, ... if that exists: never
  overwrite an earlier one) and return the new path."""
  path = pathlib.Path(path)
  aside, n = path.with_name(f"{path.name}.damaged"), 1
  while aside.exists():
    n += 1
    aside = path.with_name(f"{path.name}.damaged{n}")
  path.replace(aside)
  return aside


def read_csv(path: str | pathlib.Path) -> list[dict[str, str]]:
  """The rows of a CSV written by `atomic_open`, as dicts of strings; no file: no rows."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  with path.open(newline="") as f:
    return list(csv.DictReader(f))
