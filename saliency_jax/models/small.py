"""Small models for fast tests and the sanity checks (docs/evaluation.md, "Models and training")."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from saliency_jax.models import common


class MLP(nn.Module):
  """Tapped activations: 'hidden1'.. after each hidden layer's activation, and 'logits'."""

  num_classes: int = 10
  hidden: Sequence[int] = (256, 128)
  activation: common.Activation = nn.relu
  dtype: common.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC, train: bool = False):
    del train  # no dropout or normalisation: the same function in both modes
    x = x_BHWC.astype(self.dtype).reshape(x_BHWC.shape[0], -1)
    for i, width in enumerate(self.hidden, start=1):
      x = nn.Dense(width, dtype=self.dtype, name=f"dense{i}")(x)
      x = common.tap(self, f"hidden{i}", self.activation(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="out")(x)
    return common.tap(self, "logits", x)


class SmallCNN(nn.Module):
  """Two conv/pool blocks and a linear head on the flattened map. Tapped: 'features1',
  'features2' (after each conv's activation, before pooling: the GradCAM layers) and 'logits'.

  Flattening rather than global pooling keeps where things are, so the location-keyed
  pixel variant is learnable too."""

  num_classes: int = 10
  channels: Sequence[int] = (32, 64)
  activation: common.Activation = nn.relu
  dtype: common.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC, train: bool = False):
    del train
    x = x_BHWC.astype(self.dtype)
    for i, width in enumerate(self.channels, start=1):
      x = nn.Conv(width, (3, 3), padding=common.torch_padding(3), dtype=self.dtype,
                  kernel_init=common.kaiming_normal_fan_out, name=f"conv{i}")(x)
      x = common.tap(self, f"features{i}", self.activation(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="out")(x.reshape(x.shape[0], -1))
    return common.tap(self, "logits", x)
