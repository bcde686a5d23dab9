"""`BatchRunner`: the one way a set of images goes through a compiled program here.

The Explainer, the single-pixel grid and the sanity studies all run `fn(*shared, *per_image)`
over batches: the per-image arrays are padded to the batch shape and split over the devices,
the shared ones (a forward with its variables, randomised parameters) are replicated, each device
maps its own images (`jax.shard_map`, so no program holds a collective), the program is compiled
once per name, and the padding is cut off the outputs. Batches are
dispatched back to back and read once, after the last (with `progress`, each is waited for
once the next one is dispatched, to count it).

Over several processes (`jax.distributed`) the mesh spans every process's devices: each process
passes the same host values, holds its share of every batch, and gets every output back, so each
one computes what a single process would.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from saliency_jax import backend, lowering
from saliency_jax.progress import Progress
from saliency_jax.training.parallel import DATA_AXIS


def batch_shape(n: int, batch_size: int | None, multiple: int) -> int:
  """Images per call for a set of n, a multiple of the devices: all n without a `batch_size`;
  else `batch_size`, or for fewer images the next power of two, so a small remainder (the images
  where two targets differ) neither pays for a full batch nor compiles for every n."""
  round_up = lambda k: math.ceil(k / multiple) * multiple
  if not batch_size:
    return round_up(max(n, 1))
  return round_up(min(batch_size, 2 ** math.ceil(math.log2(max(n, 1)))))


def _pad(a, pad: int):
  xp = np if isinstance(a, np.ndarray) else jnp
  return xp.concatenate([a, xp.repeat(a[-1:], pad, axis=0)]) if pad else a


def _is_key(a) -> bool:
  return jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


def _host(a) -> np.ndarray:
  """`a` as this process's numpy array (an array spanning processes gathered whole)."""
  if isinstance(a, jax.Array) and not a.is_fully_addressable:
    if a.sharding.is_fully_replicated:
      return np.asarray(a.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))
  return np.asarray(a)


def _put_global(a, sharding: NamedSharding):
  """A host value every process holds alike, as one array over the devices of all processes
  (`jax.device_put` moves arrays only between this process's devices). Keys travel as key data."""
  if _is_key(a):
    return jax.random.wrap_key_data(_put_global(jax.random.key_data(a), sharding), impl=jax.random.key_impl(a))
  host = _host(a)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


class BatchRunner:
  """A 1-D mesh over `devices` (default: every device of every process) and the programs compiled
  on it."""

  def __init__(self, devices: Sequence[jax.Device] | None = None, batch_size: int | None = None):
    devices = list(devices) if devices is not None else jax.devices()
    self.spans_processes = any(d.process_index != jax.process_index() for d in devices)
    # Auto axes: outside the per-device programs (placing batches, cutting outputs) XLA places arrays.
    self.mesh = jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                              devices=devices)
    self.batch_size = batch_size
    self._split = NamedSharding(self.mesh, P(DATA_AXIS))
    self._compiled: dict[Any, Callable] = {}

  def replicate(self, tree):
    """Arrays every device needs whole (variables, randomised parameters), placed once."""
    sharding = NamedSharding(self.mesh, P())
    if self.spans_processes:
      return jax.tree.map(lambda a: _put_global(a, sharding), tree)
    return jax.device_put(tree, sharding)

  def run(self, name, fn: Callable, per_image, shared: tuple = (), *, image_axis: int = 0,
          batch_size: int | None = None, progress: str | None = None):
    """`fn(*shared, *per_image_batch)` over the images of `per_image` (a tuple of pytrees whose
    leaves have the images first), compiled once under `name`. Returns the outputs (a pytree of
    device arrays) for every image, concatenated along `image_axis`. The model forwards among
    `shared` are bound for running (`lowering.bind_arguments`: the CPU lowering where it is on), the
    program traced at the maps' precision (`backend.map_precision`) and compiled with
    `lowering.compiler_options()`. `progress`: what to call the work in progress lines (a long run,
    e.g. an integrated-gradients cell, logs its images done, rate and time left)."""
    if name not in self._compiled:
      # Each device maps its own images: the programs are per image (an image's outputs depend on
      # it alone), so under `shard_map` they hold no collective. Left to XLA's partitioner, a
      # vmapped while loop (CG's convergence test in ROAD's imputation) all-reduced its predicate
      # every iteration and reshapes of the batch were all-gathered; on XLA:CPU's emulated
      # devices such a program deadlocked now and then, and on GPUs each collective costs a sync.
      per_device = jax.shard_map(backend.map_precision(lowering.bind_arguments(fn)), mesh=self.mesh,
                                 in_specs=(P(),) * len(shared) + (P(DATA_AXIS),) * len(per_image),
                                 out_specs=P(*[None] * image_axis, DATA_AXIS), check_vma=False)
      self._compiled[name] = jax.jit(per_device, compiler_options=lowering.compiler_options())
    program = self._compiled[name]
    leaves, treedef = jax.tree.flatten(per_image)
    n = leaves[0].shape[0]
    size = batch_shape(n, batch_size or self.batch_size, self.mesh.size)
    if self.spans_processes:
      leaves = [a if _is_key(a) else _host(a) for a in leaves]
    parts = []
    report = None
    for start in range(0, n, size):
      chunk = [a[start:start + size] for a in leaves]
      m = chunk[0].shape[0]
      if self.spans_processes:
        chunk = [_put_global(_pad(a, size - m), self._split) for a in chunk]
      else:
        chunk = [jnp.asarray(a) if not _is_key(a) else a for a in chunk]
        chunk = jax.device_put([_pad(a, size - m) for a in chunk], self._split)
      parts.append((program(*shared, *jax.tree.unflatten(treedef, chunk)), m))
      if progress and report is None:  # its clock starts once the first batch has compiled
        report = Progress(progress, n, "images")
      elif report:  # one batch late: the one just dispatched runs meanwhile
        jax.block_until_ready(parts[-2][0])
        report.update(start)
    if self.spans_processes:  # every process gets every image's outputs, as local arrays
      parts = [(jax.tree.map(lambda a: jnp.asarray(_host(a)), out), m) for out, m in parts]
    cut = lambda out, m: jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, m, axis=image_axis), out)
    outs = [cut(out, m) if m < size else out for out, m in parts]
    return outs[0] if len(outs) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a, axis=image_axis), *outs)
