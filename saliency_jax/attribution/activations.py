"""ReLUs with modified backward passes, and the methods that are the gradient through them.

Guided Backprop, Deconvnet and RectGrad change only how the backward signal crosses each
ReLU, so each is a `jax.custom_vjp` activation: build the model with it (every model takes
`activation=`) and take the ordinary gradient. `ModelForward.with_activation` does the
rebuilding for flax models; for a hand-written forward, call these instead of `jax.nn.relu`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from saliency_jax.attribution.core import input_gradient, require_model_forward
from saliency_jax.attribution.registry import register


@jax.custom_vjp
def guided_relu(x):
  """ReLU whose backward pass lets gradient through only where it is positive and the forward input was."""
  return jax.nn.relu(x)


guided_relu.defvjp(lambda x: (jax.nn.relu(x), x), lambda x, g: (jnp.where((x > 0) & (g > 0), g, 0.0),))


@jax.custom_vjp
def deconv_relu(x):
  """ReLU whose backward pass is a ReLU of the gradient, whatever the forward input was (Deconvnet)."""
  return jax.nn.relu(x)


deconv_relu.defvjp(lambda x: (jax.nn.relu(x), None), lambda _, g: (jax.nn.relu(g),))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _rectified_relu(percentile, absolute, x):
  return jax.nn.relu(x)


def _rectified_fwd(percentile, absolute, x):
  y = jax.nn.relu(x)
  return y, y


def _rectified_bwd(percentile, absolute, y, g):
  # Importance of each unit to the output, a * grad; the threshold is per image, over the layer.
  s = jnp.abs(y * g) if absolute else y * g
  tau = jnp.percentile(s, percentile, axis=tuple(range(1, s.ndim)), keepdims=True)
  return (jnp.where(s > tau, g, 0.0),)


_rectified_relu.defvjp(_rectified_fwd, _rectified_bwd)


@dataclasses.dataclass(frozen=True)
class RectifiedReLU:
  """RectGrad's ReLU: backward passes gradient where a * grad (|a * grad| if `absolute`, the
  RectGrad_Mod variant) exceeds its `percentile`-th percentile over the layer, per image.

  A frozen dataclass rather than a closure so equal settings hash equal and `jit` caches.
  The activation's first axis must be the batch.
  """

  percentile: float = 98.0
  absolute: bool = False

  def __post_init__(self):
    if not 0 <= self.percentile <= 100:
      raise ValueError(f"percentile={self.percentile!r} is not allowed; it must be in [0, 100]")

  def __call__(self, x):
    return _rectified_relu(float(self.percentile), bool(self.absolute), x)


@register("guided_backprop", needs=("model", "activations"))
def guided_backprop(forward, x_BHWC, target_B, *, output: str = "logit"):
  forward = require_model_forward(forward, "guided_backprop").with_activation(guided_relu)
  return input_gradient(forward, x_BHWC, target_B, output)


@register("deconvnet", needs=("model", "activations"))
def deconvnet(forward, x_BHWC, target_B, *, output: str = "logit"):
  forward = require_model_forward(forward, "deconvnet").with_activation(deconv_relu)
  return input_gradient(forward, x_BHWC, target_B, output)


def _rectgrad(forward, x_BHWC, target_B, *, output: str = "logit", percentile: float = 98.0, absolute: bool = False):
  """The gradient through `RectifiedReLU(percentile, absolute)` activations."""
  forward = require_model_forward(forward, "rectgrad").with_activation(RectifiedReLU(percentile, absolute))
  return input_gradient(forward, x_BHWC, target_B, output)


rectgrad = register("rectgrad", needs=("model", "activations"), absolute=False)(_rectgrad)
rectgrad_mod = register("rectgrad_mod", needs=("model", "activations"), absolute=True)(_rectgrad)
