"""Pieces shared by the models: torchvision's initialisers, torch-style padding, named taps.

The models are plain flax (`nn.Conv`, `nn.max_pool`); their CPU speed comes from
`saliency_jax.lowering`, bound where they are run, not from code in them. A tap names an activation
that is not a submodule's output (a submodule's output is a layer by its path already).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]
Dtype = Any

# Kaiming-normal, mode='fan_out', nonlinearity='relu' (torchvision's conv init). jax's
# 'normal' distribution is the plain (untruncated) normal that torch samples from.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# torch.nn.Linear's default weight init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), +).
torch_linear_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias(fan_in: int) -> nn.initializers.Initializer:
  """torch.nn.Linear's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric padding k // 2, as torch's `padding=k//2`.

  Flax's 'SAME' pads (0, 1) for a stride-2 conv on an even input where torch pads (1, 1),
  which shifts every feature map by half a pixel; explicit padding keeps the layouts equal.
  """
  p = kernel_size // 2
  return ((p, p), (p, p))


def dropout(module: nn.Module, x: jax.Array, rate: float, train: bool) -> jax.Array:
  """Inverted dropout, as torch's, from the module's 'dropout' stream.

  Not `nn.Dropout`: under an Explicit-axes mesh its mask comes out replicated while `x` is split
  over the batch, and the select between them is rejected. Drawing the mask with `x`'s sharding
  fixes that; the values do not depend on the sharding (threefry is partitionable).
  """
  if not train or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, x.shape, out_sharding=jax.typeof(x).sharding)
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


# A tap of this name inside a submodule is that submodule's output, and is named as the submodule
# (a ResNet block's output is 'layer3_1', like its parameters).
OUTPUT = "output"


def tap(module: nn.Module, name: str, x: jax.Array) -> jax.Array:
  """Expose an activation under `name`, to read and to differentiate.

  Reading: `apply(..., mutable=['intermediates'])` returns it under 'intermediates'.
  Differentiating: pass zeros under 'perturbations' (see `models.feature_gradients`);
  the gradient with respect to that zero tensor is the gradient with respect to `x`.
  Without those collections both are no-ops, so the plain forward pass is unchanged.
  """
  module.sow("intermediates", name, x)
  return module.perturb(name, x)
