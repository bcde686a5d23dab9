"""Data parallelism over every device: one mesh axis 'data', batches split, the rest replicated.

`jax.jit` over a `NamedSharding` does the rest: XLA inserts the gradient all-reduce and
computes BatchNorm statistics over the global batch, so N devices compute what 1 would.
Several hosts work the same way once `maybe_initialize_distributed` has run: every host
holds the whole (small) dataset and the mesh spans all hosts' devices.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P


DATA_AXIS = "data"

# What a launcher without SLURM or Open MPI sets on every process (launch/multihost_slurm.sbatch).
# jax reads only the coordinator address from the environment itself: the other two are passed.
_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# Launchers whose job jax detects on its own (`jax.distributed.initialize()` without arguments).
_WORLD_SIZE_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def maybe_initialize_distributed() -> None:
  """`jax.distributed.initialize` when the environment describes a multi-process run: the three
  `JAX_*` variables of `_ENV`, or a SLURM / Open MPI job of more than one task."""
  if jax.distributed.is_initialized():
    return
  given = {name: os.environ.get(name, "").strip() for name in _ENV}
  detected = any(int(os.environ.get(v, "1") or 1) > 1 for v in _WORLD_SIZE_ENV)
  if not (any(given.values()) or detected):
    return
  kwargs = {}
  try:
    if given["JAX_COORDINATOR_ADDRESS"]:
      kwargs["coordinator_address"] = given["JAX_COORDINATOR_ADDRESS"]
    if given["JAX_NUM_PROCESSES"]:
      kwargs["num_processes"] = int(given["JAX_NUM_PROCESSES"])
    if given["JAX_PROCESS_ID"]:
      kwargs["process_id"] = int(given["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
  except ValueError as e:  # a missing or malformed variable; jax names what it lacks
    shown = ", ".join(f"{k}={v!r}" for k, v in given.items())
    raise ValueError(f"a multi-process run needs {', '.join(_ENV)} on every process (or a SLURM / Open MPI "
                      f"job); here {shown} ({e})") from None
  logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def agree(value: int) -> int:
  """Process 0's `value` (an int or bool) on every process: a decision read from a file only
  process 0 writes, or one that must not differ between processes, is taken once."""
  if jax.process_count() == 1:
    return int(value)
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def agree_all(flags) -> list[bool]:
  """Process 0's list of flags on every process (`agree` for a list of decisions)."""
  if jax.process_count() == 1:
    return [bool(f) for f in flags]
  return [bool(f) for f in multihost_utils.broadcast_one_to_all(np.asarray(flags, np.int32))]


def everywhere(flag: bool) -> bool:
  """Whether `flag` holds on every process (e.g. a file read back on each of them)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.all(multihost_utils.process_allgather(np.int32(flag))))


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def put_replicated(tree, mesh):
  """Every process passes the same host values; each device gets a full copy.

  `make_array_from_callback` rather than `device_put` because it also builds arrays whose
  devices span several hosts.
  """
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def to_host(tree):
  """Fetch replicated results: each process reads its own local copy (no cross-host gather)."""

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)
    return np.asarray(x)

  return jax.tree.map(get, tree)
