"""`Explainer`: a model and its variables bound once, then one line per method.

    explain = Explainer(model, variables, normalization=prepared.normalization)
    maps_BHWC = explain("integrated_gradients", x_BHWC, steps=100, baseline="black")

Each (method, output, options) compiles once. Options holding arrays (random keys, baseline
images) are traced arguments; the rest are compile-time constants. The batch is split over
the devices like the training step (padded to a multiple of their number, then cut back),
and the variables are traced, not baked into the program.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from saliency_jax import models
from saliency_jax.attribution import registry
from saliency_jax.attribution.core import ModelForward, select_targets
from saliency_jax.training.parallel import DATA_AXIS


def _holds_arrays(value) -> bool:
  return any(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in jax.tree.leaves(value))


class Explainer:
  """Binds `model` and `variables`; `normalization` (a `data.Normalization`) is passed to every
  method that takes one (the named IG baselines). `devices`: where the batch is split
  (default: every local device)."""

  def __init__(self, model, variables, *, normalization=None, devices: Sequence[jax.Device] | None = None):
    devices = list(devices) if devices is not None else jax.local_devices()
    # Auto axes: methods vmap paths and noise over a sharded batch, and XLA should place
    # those intermediate reshapes itself rather than ask for an explicit sharding each time.
    self.mesh = jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                              devices=devices)
    self._batch = NamedSharding(self.mesh, P(DATA_AXIS))
    variables = models.model_variables(variables)
    self.forward = ModelForward(model, jax.device_put(variables, NamedSharding(self.mesh, P())))
    self.normalization = normalization
    self._compiled: dict[Any, Callable] = {}

  def targets(self, x_BHWC, labels_B=None, which: str = "predicted") -> jax.Array:
    return self._run(("targets", which), lambda fwd, x, _, dyn: select_targets(fwd, x, dyn["labels"], which),
                     x_BHWC, jnp.zeros(len(x_BHWC), jnp.int32), {"labels": labels_B})

  def __call__(self, method: str | Callable, x_BHWC, target="predicted", *, labels_B=None, output: str = "logit",
               **options) -> jax.Array:
    """The map of `method` (a registered name or a function) for `target`: 'predicted', 'label'
    (with `labels_B`) or an array of class indices."""
    if isinstance(method, str):
      options = registry.supply(method, registry.check_options(method, options), normalization=self.normalization)
      fn = registry.get(method)
    else:
      fn = method
    if isinstance(target, str):
      target = self.targets(x_BHWC, labels_B, target)
    static = {k: v for k, v in options.items() if not _holds_arrays(v)}
    dynamic = {k: v for k, v in options.items() if _holds_arrays(v)}

    def run(forward, x, t, dyn):
      return fn(forward, x, t, output=output, **static, **dyn)

    key = (method, output, repr(sorted(static.items())))
    return self._run(key, run, x_BHWC, target, dynamic)

  def _run(self, key, fn, x_BHWC, target_B, dynamic):
    if key not in self._compiled:
      self._compiled[key] = jax.jit(fn)
    B = x_BHWC.shape[0]
    pad = -B % self.mesh.size

    def batch(a):
      # Per-image arrays (inputs, targets, per-image keys) are padded and split; the rest replicated.
      a = jnp.asarray(a) if isinstance(a, np.ndarray) else a
      if not isinstance(a, jax.Array) or a.ndim == 0 or a.shape[0] != B:
        return a
      if pad:
        a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
      return jax.device_put(a, self._batch)

    out = self._compiled[key](self.forward, batch(jnp.asarray(x_BHWC, jnp.float32)), batch(jnp.asarray(target_B)),
                              jax.tree.map(batch, dynamic))
    return out[:B] if pad else out
