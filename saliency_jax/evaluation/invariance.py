"""Input invariance (Kindermans et al. 2017; SPEC section 5): a trained f1 and its shifted twin f2.

f2 is f1 with the bias of its first linear layer adjusted so that f2(x + c) = f1(x) for a
constant shift c of the model's input (per channel). Behind a zero-padded conv the adjustment is
per position, since the padding is not shifted; it lives in the model's `input_shift` layer
(`models.common.InputShiftBias`). The two networks compute the same function of the image, so
a method is input invariant when its maps for f1 at x and f2 at x + c agree: the gradient
does, gradient x input and integrated gradients from a zero baseline do not, and integrated
gradients whose baseline is shifted alongside the input does.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from saliency_jax import models
from saliency_jax.attribution import core, integrated, registry
from saliency_jax.models.common import InputShiftBias


def shift_vector(shift, channels: int) -> jax.Array:
  """The constant shift c as a (C,) vector: a number for every channel, or one per channel."""
  c = jnp.asarray(shift, jnp.float32).reshape(-1)
  if c.size not in (1, channels):
    raise ValueError(f"sanity.input_shift={shift!r} must be one number or {channels} (one per input channel)")
  return jnp.broadcast_to(c, (channels,))


def _first_layer_output(model, variables, x_BHWC):
  """The first linear layer's output before the twin's bias (the input of `input_shift`)."""
  seen = []

  def record(module, a, z):
    seen.append(a)
    return z

  core.ModelForward(model, variables).intercepted(core.module_interceptor((InputShiftBias,), record))(x_BHWC)
  if not seen:
    raise ValueError(f"{type(model).__name__} has no InputShiftBias layer after its first linear layer; "
                     "add `common.InputShiftBias(name='input_shift')` to build its shifted twin")
  return seen[0]


def shifted_twin(model, variables, shift, input_shape) -> dict:
  """The variables of f2: f1's, with `params/input_shift/bias` set so that f2(x + c) = f1(x).

  The bias is minus what the shift adds to the first layer's output, layer(c) - layer(0),
  computed by the layer itself, so padding, strides and any first-layer type are handled alike.
  """
  H, W, C = input_shape[-3:]
  c = shift_vector(shift, C)
  variables = models.model_variables(variables)
  at = lambda image: _first_layer_output(model, variables, image)[0]
  added = at(jnp.broadcast_to(c, (1, H, W, C))) - at(jnp.zeros((1, H, W, C)))
  params = dict(variables["params"])
  old = params.get("input_shift", {}).get("bias", 0.0)
  params["input_shift"] = {"bias": old - added}
  return {**variables, "params": params}


def takes_baseline(name: str) -> bool:
  return "baseline" in registry.needs(name)


def shifted_baseline(method: Callable, shift_C, normalization, baseline="black") -> Callable:
  """`method(forward, x, target, baseline=...)` for the twin, with the named `baseline` taken at
  the unshifted image and shifted alongside the input: IG's input-invariant variant."""

  def shifted(forward, x_BHWC, target_B):
    reference = integrated.make_baseline(baseline, x_BHWC - shift_C, normalization=normalization)
    return method(forward, x_BHWC, target_B, baseline=reference + shift_C)

  return shifted
