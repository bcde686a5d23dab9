"""`ModelRunner`: a trained model bound for running, the way every stage runs it.

Its variables are placed on the mesh once (replicated; traced as arguments, not baked into the
programs), each program is compiled once by name (`BatchRunner`), and the two things every stage
asks of a model are made here alone: the classes each image is explained for (`targets`, through
`core.select_targets`) and a method's maps (`maps`, through `binding.bind`). Images may be uint8
pixels (normalised inside the program) or model inputs already.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax import models
from saliency_jax.attribution import binding, core, registry
from saliency_jax.attribution.batching import BatchRunner


class ModelRunner:
  """`model` with `variables` on a 1-D mesh over `devices` (default: every device of every process).
  `seed` and `salt` make each method's random key (`binding.method_key`)."""

  def __init__(self, model, variables, normalization, *, batch_size: int, chunk_size: int = 0, seed: int = 0,
               salt: int = 4, devices=None):
    self.runner = BatchRunner(devices, batch_size)
    self.mesh = self.runner.mesh
    self.model, self.normalization = model, normalization
    self.chunk_size, self.seed, self.salt = chunk_size, seed, salt
    self.forward = self.bind(variables)

  def bind(self, variables, model=None) -> core.ModelForward:
    """Another set of variables (a reference run), or another model (the shifted twin), replicated."""
    return core.ModelForward(model or self.model, self.runner.replicate(models.model_variables(variables)))

  def inputs(self, images):
    """Model inputs of uint8 pixels (inside a program), or the inputs themselves."""
    return self.normalization(images) if images.dtype == jnp.uint8 else images

  def run(self, name, fn: Callable, per_image: tuple, *shared, image_axis: int = 0, progress: str | None = None):
    """`fn(*shared, *per_image_batch)` over the images, compiled once under `name` (device arrays)."""
    return self.runner.run(name, fn, per_image, shared, image_axis=image_axis, progress=progress)

  def targets(self, which: str, images, labels, forward: core.ModelForward | None = None) -> np.ndarray:
    """The class each image is explained for (`core.select_targets`: 'predicted', 'label', 'lowest')."""
    forward = forward or self.forward
    program = lambda f, x, y: core.select_targets(f, self.inputs(x), y, which)
    return np.asarray(self.run(("targets", which, jax.tree.structure(forward)), program, (images, labels), forward))

  def method(self, spec: registry.MethodSpec, output: str, reduce: bool = False) -> Callable:
    """`fn(forward, x, target, index)`: `spec` bound with this run's normalization, chunk size and key."""
    key = binding.method_key(self.seed, self.salt, spec, output) if binding.needs_key(spec) else None
    return binding.bind(spec, output, normalization=self.normalization, chunk_size=self.chunk_size, key=key,
                        reduce=reduce)

  def maps(self, spec: registry.MethodSpec, output: str, images, targets, index, *, reduce: bool = False,
           forward: core.ModelForward | None = None, fn: Callable | None = None, tag: str = "",
           progress: str | None = None) -> np.ndarray:
    """`spec`'s maps (reduced over channels with `reduce`) of `images` for `targets`; `index`: the
    images' indices in their split (their keys'); `fn` replaces the bound method (same signature)."""
    forward = forward or self.forward
    method = fn or self.method(spec, output, reduce)
    program = lambda f, x, t, i: method(f, self.inputs(x), t, i)
    name = ("maps", spec, output, reduce, tag, jax.tree.structure(forward))
    return np.asarray(self.run(name, program, (images, np.asarray(targets, np.int32), np.asarray(index)), forward,
                               progress=progress))
