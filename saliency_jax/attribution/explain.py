"""`Explainer`: a model and its variables bound once, then one line per method.

    explain = Explainer(model, variables, normalization=prepared.normalization)
    maps_BHWC = explain("integrated_gradients", x_BHWC, steps=100, baseline="black")
    maps_BHWC = explain("integrated_gradients(steps=100, baseline='black')", x_BHWC)   # the same

Each (method, output, options) compiles once. Options holding arrays (random keys, baseline
images) are traced arguments; the rest are compile-time constants. The batch goes through a
`BatchRunner`, as the grid's and the sanity studies' do: split over the devices (padded, then cut
back), the variables replicated and traced, not baked into the program. One random key is split
into one per image (`jax.random.split(key, B)`), so the maps do not depend on the number of devices
(a method called directly draws the batch's noise from the key itself).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax import models
from saliency_jax.attribution import registry
from saliency_jax.attribution.batching import BatchRunner
from saliency_jax.attribution.core import (ModelForward, check_images, check_key, check_targets, num_classes,
                                           select_targets)


def _holds_arrays(value) -> bool:
  return any(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in jax.tree.leaves(value))


class Explainer:
  """Binds `model` and `variables`; `normalization` (a `data.Normalization`, or 'unit' for inputs
  that are pixels in [0, 1]) is passed to every method that declared it needs one (the named IG
  baselines). `devices`: where the batch is split (default: every device of every process)."""

  def __init__(self, model, variables, *, normalization=None, devices: Sequence[jax.Device] | None = None):
    self.runner = BatchRunner(devices)
    self.mesh = self.runner.mesh
    self.forward = ModelForward(model, self.runner.replicate(models.model_variables(variables)))
    self.normalization = normalization

  def targets(self, x_BHWC, labels_B=None, which: str = "predicted") -> jax.Array:
    labels = {} if labels_B is None else {"labels": labels_B}
    return self.runner.run(("targets", which), lambda fwd, x, per_image: select_targets(
        fwd, x, per_image.get("labels"), which), (jnp.asarray(x_BHWC, jnp.float32), labels), (self.forward,))

  def __call__(self, method: str | Callable, x_BHWC, target="predicted", *, labels_B=None, output: str = "logit",
               **options) -> jax.Array:
    """The map of `method` (a registered name or a function) for `target`: 'predicted', 'label'
    (with `labels_B`), a class index for every image, or an array of class indices (checked here:
    one ValueError for one out of range or of the wrong shape, before anything is compiled). A name
    may carry its options in the one spelling of the configs, "lrp_gamma(gamma=0.1)". Options left
    out take the method's defaults (every method's, in one table: docs/methods.md, "The methods")."""
    check_images(x_BHWC)
    if isinstance(method, str) and "(" in method:
      spec = registry.parse(method, "method")
      if spec.reduction != "mean":
        raise ValueError(f"method {method!r}: reduce= is the stages' channel reduction; the Explainer returns "
                         "every channel (reduce the map yourself)")
      twice = sorted(set(dict(spec.options)) & set(options))
      if twice:
        raise ValueError(f"method {method!r} and the keyword arguments both set {', '.join(twice)}; set each once")
      method, options = spec.name, {**dict(spec.options), **options}
    if isinstance(method, str):
      options = registry.supply(method, registry.check_options(method, options), normalization=self.normalization)
      fn = registry.get(method)
    else:
      fn = method
    B = x_BHWC.shape[0]
    if options.get("key") is not None:  # typed here: a raw PRNGKey's (2,) would pass for 2 images' keys
      key = check_key(options["key"], B, f"{getattr(method, '__name__', method)}")
      # One key becomes one per image: each device draws its own images' noise, and from one key
      # every device would draw the same.
      options = {**options, "key": jax.random.split(key, B) if key.ndim == 0 else key}
    if isinstance(target, str):
      target = self.targets(x_BHWC, labels_B, target)
    else:
      target, _ = check_targets(target, B, num_classes(self.forward, jnp.asarray(x_BHWC, jnp.float32)))
    static = {k: v for k, v in options.items() if not _holds_arrays(v)}
    dynamic = {k: v for k, v in options.items() if _holds_arrays(v)}
    # Arrays with a row per image (per-image keys, a baseline per image) travel with the images.
    per_image = {k: v for k, v in dynamic.items() if _per_image(v, x_BHWC.shape)}
    shared = {k: v for k, v in dynamic.items() if k not in per_image}

    def run(forward, shared, x, t, per_image):
      return fn(forward, x, t, output=output, **static, **shared, **per_image)

    name = (method, output, repr(sorted(static.items())), tuple(sorted(per_image)))
    return self.runner.run(name, run, (jnp.asarray(x_BHWC, jnp.float32), jnp.asarray(target), per_image),
                           (self.forward, self.runner.replicate(shared)))


def _per_image(value, images_shape) -> bool:
  """Whether every array of `value` has a row per image; one image's shape (a baseline (H, W, C)
  with H the batch size) is one for all."""
  leaves = jax.tree.leaves(value)
  return bool(leaves) and all(getattr(a, "ndim", 0) > 0 and a.shape[0] == images_shape[0]
                              and tuple(a.shape) != tuple(images_shape[1:]) for a in leaves)
