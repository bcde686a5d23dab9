"""Atomic writes: a failed write leaves the previous file whole and no temporary behind."""

import os
import stat

import pytest

from saliency_jax.files import atomic_open


def test_atomic_open_replaces_whole_or_not_at_all(tmp_path):
  path = tmp_path / "sub" / "results.csv"
  with atomic_open(path) as f:
    f.write("a,b\n1,2\n")
  assert path.read_text() == "a,b\n1,2\n"
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask

  with pytest.raises(RuntimeError):
    with atomic_open(path) as f:
      f.write("a,b\n3,")
      raise RuntimeError("killed mid-write")
  assert path.read_text() == "a,b\n1,2\n"
  assert [p.name for p in path.parent.iterdir()] == ["results.csv"]
