"""A method spec bound for running: the one place a spec and an output become a map function.

`bind(spec, output, ...)` returns `fn(forward, x_BHWC, target_B, index_B)`: the method with its
options, plus what the run supplies where the method declared it needs it (`registry.supply`: the
inputs' normalization, the chunk size of a path method) and, for a method that needs a random key,
image i's own key `fold_in(key, index_B[i])`: an image's noise does not depend on the batch it came
in, so batched maps equal one-by-one maps and a rerun gives the same numbers. With `reduce=True` the
map is reduced over channels by the spec's reduction (what pointing, localisation and the
faithfulness curves read). Every stage binds its methods here, and so does the Explainer.
"""

from __future__ import annotations

import zlib
from typing import Callable

import jax

from saliency_jax.attribution import display, registry


def needs_key(spec: registry.MethodSpec) -> bool:
  """Whether the run must supply a random key (the method needs one and the spec sets none)."""
  return "key" in registry.needs(spec.name) and "key" not in dict(spec.options)


def method_key(seed: int, salt: int, spec: registry.MethodSpec, output: str) -> jax.Array:
  """The key of a method's maps in one stage: from a seed, the stage's `salt` and the method and
  output (not the target, so two targets see the same noise)."""
  label = f"{spec.label}|{spec.reduction}|{output}"
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), salt), zlib.crc32(label.encode()))


def bind(spec: registry.MethodSpec, output: str, *, normalization=None, chunk_size: int | None = None, key=None,
         reduce: bool = False) -> Callable:
  """`fn(forward, x_BHWC, target_B, index_B, **overrides) -> map`: see the module docstring. `key`: the
  method's key (`method_key`), needed when `needs_key(spec)`; `index_B`: each image's index in its
  split (its key's)."""
  fn = registry.get(spec.name)
  options = registry.supply(spec.name, dict(spec.options), normalization=normalization, chunk_size=chunk_size or None)
  if needs_key(spec) and key is None:
    raise ValueError(f"{spec.label} needs a random key; bind it with key=")
  keyed = needs_key(spec)

  def method(forward, x_BHWC, target_B, index_B=None, **overrides):
    more = dict(overrides)
    if keyed:
      if index_B is None:
        raise ValueError(f"{spec.label} draws a key per image: pass each image's index (index_B)")
      more.setdefault("key", jax.vmap(lambda i: jax.random.fold_in(key, i))(index_B))
    maps = fn(forward, x_BHWC, target_B, output=output, **{**options, **more})
    return display.reduce_channels(maps, spec.reduction) if reduce else maps

  return method
