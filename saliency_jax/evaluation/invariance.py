"""Input invariance (Kindermans et al. 2017; docs/evaluation.md, "Sanity checks"): a trained f1 and
its shifted twin f2.

f2 is f1 with the bias of its first linear layer adjusted so that f2(x + c) = f1(x) for a
constant shift c of the model's input (per channel). Behind a zero-padded conv the adjustment is
per position, since the padding is not shifted. The twin is built around any flax model
(`ShiftedTwin`, through `nn.intercept_methods`); the models carry nothing for it. The two networks compute the same function of the image, so
a method is input invariant when its maps for f1 at x and f2 at x + c agree: the gradient
does, gradient x input and integrated gradients from a zero baseline do not, and integrated
gradients whose baseline is shifted alongside the input does.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

import jax
import jax.numpy as jnp

from saliency_jax import models
from saliency_jax.attribution import integrated, registry


def shift_vector(shift, channels: int) -> jax.Array:
  """The constant shift c as a (C,) vector: a number for every channel, or one per channel."""
  c = jnp.asarray(shift, jnp.float32).reshape(-1)
  if c.size not in (1, channels):
    raise ValueError(f"sanity.input_shift={shift!r} must be one number or {channels} (one per input channel)")
  return jnp.broadcast_to(c, (channels,))


_LINEAR = (nn.Conv, nn.Dense)


class PositionBias(nn.Module):
  """y = x + bias: a layer whose only parameter is its bias, one per position and channel behind a
  conv (behind a zero-padded conv the border needs its own), one per unit behind a dense layer.
  FullGrad and LRP treat it as what it is, an affine layer with weight 1 (`core.bias_only`)."""

  @nn.compact
  def __call__(self, y):
    return y + self.param("bias", nn.initializers.zeros_init(), y.shape[1:], jnp.float32).astype(y.dtype)


class ShiftedTwin(nn.Module):
  """f2 built around f1 = `model`: `input_shift` (a `PositionBias`) added to the output of the first
  linear layer the network calls, through `nn.intercept_methods`; the model's code is untouched.
  It shares the model's scope (`nn.share_scope`), so f2's variables are f1's plus
  `params/input_shift/bias`, and its layers and taps keep their names."""

  model: nn.Module
  activation: Any = None  # Guided Backprop & co. replace the network's activations through the twin

  def setup(self):
    self.inner = self.model if self.activation is None else self.model.clone(activation=self.activation)
    nn.share_scope(self, self.inner)
    self.input_shift = PositionBias()

  def __call__(self, x_BHWC, train: bool = False):
    done = []

    def after_first_linear(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if not done and context.method_name == "__call__" and isinstance(context.module, _LINEAR):
        done.append(True)
        return self.input_shift(out)
      return out

    with nn.intercept_methods(after_first_linear):
      return self.inner(x_BHWC, train=train)


def _first_layer_output(model, variables, x_BHWC):
  """The output of the first linear layer `model` calls, at `x_BHWC`."""
  seen = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if not seen and context.method_name == "__call__" and isinstance(context.module, _LINEAR):
      seen.append(out)
    return out

  with nn.intercept_methods(record):
    model.apply(variables, x_BHWC, train=False)
  if not seen:
    raise ValueError(f"{type(model).__name__} calls no flax Conv or Dense layer, so it has no first-layer bias "
                     "for a shifted twin")
  return seen[0]


def shifted_twin(model, variables, shift, input_shape) -> tuple[ShiftedTwin, dict]:
  """f2 = (`ShiftedTwin(model)`, its variables): f1's, with `params/input_shift/bias` set so that
  f2(x + c) = f1(x).

  The bias is minus what the shift adds to the first layer's output, layer(c) - layer(0),
  computed by the layer itself, so padding, strides and any first-layer type are handled alike.
  """
  H, W, C = input_shape[-3:]
  c = shift_vector(shift, C)
  variables = models.model_variables(variables)
  at = lambda image: _first_layer_output(model, variables, image)[0]
  added = at(jnp.broadcast_to(c, (1, H, W, C))) - at(jnp.zeros((1, H, W, C)))
  return ShiftedTwin(model), {**variables, "params": {**variables["params"], "input_shift": {"bias": -added}}}


def takes_baseline(name: str) -> bool:
  return "baseline" in registry.needs(name)


def shifted_baseline(method: Callable, shift_C, normalization, baseline="black") -> Callable:
  """`method(forward, x, target, index, baseline=...)` (a method bound by `attribution.binding`) for
  the twin, with the named `baseline` taken at the unshifted image and shifted alongside the input:
  IG's input-invariant variant."""

  def shifted(forward, x_BHWC, target_B, index_B=None):
    reference = integrated.make_baseline(baseline, x_BHWC - shift_C, normalization=normalization)
    return method(forward, x_BHWC, target_B, index_B, baseline=reference + shift_C)

  return shifted
