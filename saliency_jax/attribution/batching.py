"""`BatchRunner`: the one way a set of images goes through a compiled program here.

The Explainer, the single-pixel grid and the sanity studies all run `fn(*shared, *per_image)`
over batches: the per-image arrays are padded to the batch shape and split over the devices,
the shared ones (a forward with its variables, randomised parameters) are replicated, the
program is compiled once per name, and the padding is cut off the outputs. Batches are
dispatched back to back and read once, after the last.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

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
  return jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a


class BatchRunner:
  """A 1-D mesh over `devices` (default: every local device) and the programs compiled on it."""

  def __init__(self, devices: Sequence[jax.Device] | None = None, batch_size: int | None = None):
    devices = list(devices) if devices is not None else jax.local_devices()
    # Auto axes: methods vmap paths and noise over a sharded batch, and XLA should place those
    # intermediate reshapes itself rather than ask for an explicit sharding each time.
    self.mesh = jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                              devices=devices)
    self.batch_size = batch_size
    self._split = NamedSharding(self.mesh, P(DATA_AXIS))
    self._compiled: dict[Any, Callable] = {}

  def replicate(self, tree):
    """Arrays every device needs whole (variables, randomised parameters), placed once."""
    return jax.device_put(tree, NamedSharding(self.mesh, P()))

  def run(self, name, fn: Callable, per_image, shared: tuple = (), *, image_axis: int = 0,
          batch_size: int | None = None):
    """`fn(*shared, *per_image_batch)` over the images of `per_image` (a tuple of pytrees whose
    leaves have the images first), compiled once under `name`. Returns the outputs (a pytree of
    device arrays) for every image, concatenated along `image_axis`."""
    if name not in self._compiled:
      self._compiled[name] = jax.jit(fn)
    program = self._compiled[name]
    leaves, treedef = jax.tree.flatten(per_image)
    n = leaves[0].shape[0]
    size = batch_shape(n, batch_size or self.batch_size, self.mesh.size)
    parts = []
    for start in range(0, n, size):
      chunk = [jnp.asarray(a[start:start + size]) if not jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
               else a[start:start + size] for a in leaves]
      m = chunk[0].shape[0]
      chunk = jax.device_put([_pad(a, size - m) for a in chunk], self._split)
      parts.append((program(*shared, *jax.tree.unflatten(treedef, chunk)), m))
    cut = lambda out, m: jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, m, axis=image_axis), out)
    outs = [cut(out, m) if m < size else out for out, m in parts]
    return outs[0] if len(outs) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a, axis=image_axis), *outs)
