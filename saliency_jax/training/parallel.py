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
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Environment variables by which launchers say "this is one process of several".
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")
_WORLD_SIZE_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")


def maybe_initialize_distributed() -> None:
  """`jax.distributed.initialize()` when the environment describes a multi-process run."""
  if jax.distributed.is_initialized():
    return
  asked = any(os.environ.get(v) for v in _DISTRIBUTED_ENV)
  asked = asked or any(int(os.environ.get(v, "1") or 1) > 1 for v in _WORLD_SIZE_ENV)
  if asked:
    jax.distributed.initialize()  # reads the coordinator and process ids from the environment
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


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
