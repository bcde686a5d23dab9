"""The plain gradient family: gradient, |gradient|, gradient x input, |gradient| x |input|."""

from __future__ import annotations

import jax.numpy as jnp

from saliency_jax.attribution.core import input_gradient
from saliency_jax.attribution.registry import register


@register("gradient")
def gradient(forward, x_BHWC, target_B, *, output: str = "logit"):
  """d output_c / d x. Guided Backprop, Deconvnet and RectGrad are this with a modified ReLU."""
  return input_gradient(forward, x_BHWC, target_B, output)


@register("absolute_gradient")
def absolute_gradient(forward, x_BHWC, target_B, *, output: str = "logit"):
  return jnp.abs(input_gradient(forward, x_BHWC, target_B, output))


@register("gradient_x_input")
def gradient_x_input(forward, x_BHWC, target_B, *, output: str = "logit"):
  return input_gradient(forward, x_BHWC, target_B, output) * x_BHWC


@register("abs_gradient_x_abs_input")
def abs_gradient_x_abs_input(forward, x_BHWC, target_B, *, output: str = "logit"):
  return jnp.abs(input_gradient(forward, x_BHWC, target_B, output)) * jnp.abs(x_BHWC)
