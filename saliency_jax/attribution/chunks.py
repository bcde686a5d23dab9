"""Reductions over many gradient evaluations per image (IG's path points, SmoothGrad's noise
samples), chunk by chunk with a running result, so memory holds one chunk's maps, never all.

`chunk_size` is the one memory knob: the evaluations of a chunk are vectorised together (their
activations and gradients are live at once), the chunks run one after another in a `lax.scan`
whose carry is the running result. None: one chunk of everything (fastest when it fits).
The result does not depend on `chunk_size` beyond float32 summation order.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from saliency_jax.checks import require_positive


def _fold(fn: Callable, update: Callable, init, xs, chunk_size: int | None):
  """`update(carry, fn-vmapped over a chunk of xs, that chunk)` over consecutive chunks of the
  leading axis of `xs` (a pytree); a last, shorter chunk is its own step."""
  n = jax.tree.leaves(xs)[0].shape[0]
  if chunk_size is None:
    return update(init, jax.vmap(fn)(xs), xs)
  require_positive("chunk_size", chunk_size, integer=True)
  size = min(int(chunk_size), n)
  full = n // size * size
  head = jax.tree.map(lambda a: a[:full].reshape(n // size, size, *a.shape[1:]), xs)
  carry, _ = jax.lax.scan(lambda c, chunk: (update(c, jax.vmap(fn)(chunk), chunk), None), init, head)
  if full < n:
    tail = jax.tree.map(lambda a: a[full:], xs)
    carry = update(carry, jax.vmap(fn)(tail), tail)
  return carry


def _zeros_like_output(fn: Callable, xs_S):
  shapes = jax.eval_shape(fn, jax.tree.map(lambda a: a[0], xs_S))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.promote_types(s.dtype, jnp.float32)), shapes)


def weighted_sum(fn: Callable, xs_S, weights_S, chunk_size: int | None = None):
  """sum_s weights_S[s] * fn(xs_S[s]), where fn returns a pytree of float arrays."""
  weights_S = jnp.asarray(weights_S, jnp.float32)
  update = lambda total, maps_S, chunk: jax.tree.map(lambda t, m: t + jnp.tensordot(chunk[1], m, axes=1),
                                                     total, maps_S)
  return _fold(lambda item: fn(item[0]), update, _zeros_like_output(fn, xs_S), (xs_S, weights_S), chunk_size)


def mean_and_variance(fn: Callable, xs_S, chunk_size: int | None = None):
  """The mean and the variance (ddof 0) over s of fn(xs_S[s]), a float array.
  Chunks are merged with Chan et al.'s pairwise update (count, mean, sum of squared
  deviations), so a small variance next to a large mean keeps its digits, as in two passes."""

  def update(carry, maps_S, _):
    count, mean, m2 = carry
    n = maps_S.shape[0]
    chunk_mean = maps_S.mean(0)
    chunk_m2 = ((maps_S - chunk_mean) ** 2).sum(0)
    total = count + n
    delta = chunk_mean - mean
    return total, mean + delta * (n / total), m2 + chunk_m2 + delta**2 * (count * n / total)

  zeros = _zeros_like_output(fn, xs_S)
  count, mean, m2 = _fold(fn, update, (jnp.zeros((), jnp.float32), zeros, zeros), xs_S, chunk_size)
  return mean, m2 / count
