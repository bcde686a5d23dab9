"""ResNet-18 laid out as torchvision's `resnet18`, with the CIFAR 3x3 stem (docs/evaluation.md,
"Models and training"), or torchvision's standard 7x7 stride-2 stem (`stem='7x7'`), for weights
trained in PyTorch on ImageNet-style inputs (`models.torch_import`). The stem changes conv1's kernel
and stride only: the parameter names and the rest of the network stay the same.

Parameter names follow torchvision (conv1, bn1, layer1_0.conv1, ..., fc) so weights can be
mapped across by replacing '.' with '_'. BatchNorm momentum 0.9 here is torch's 0.1; one
difference remains: torch updates the running variance with the unbiased batch variance,
flax with the biased one (a factor n/(n-1), n = batch x height x width per channel).
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from saliency_jax.models import common

# conv1's (kernel, stride) per stem; padding is kernel // 2 in both, as torchvision's.
STEMS = {"3x3": (3, 1), "7x7": (7, 2)}


class BasicBlock(nn.Module):
  features: int
  stride: int
  activation: common.Activation
  dtype: common.Dtype

  @nn.compact
  def __call__(self, x, train: bool):
    conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=common.kaiming_normal_fan_out)
    norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    residual = x
    y = conv(self.features, (3, 3), (self.stride, self.stride), padding=common.torch_padding(3), name="conv1")(x)
    y = self.activation(norm(name="bn1")(y))
    y = conv(self.features, (3, 3), padding=common.torch_padding(3), name="conv2")(y)
    y = norm(name="bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      residual = conv(self.features, (1, 1), (self.stride, self.stride), padding="VALID", name="downsample_conv")(x)
      residual = norm(name="downsample_bn")(residual)
    return common.tap(self, common.OUTPUT, self.activation(y + residual))


class ResNet(nn.Module):
  """Tapped activations: 'stem', 'layer1'..'layer4' (stage outputs), 'layerS_B' (block outputs, named as the block's parameters),
  'pooled' (the 512-vector) and 'logits'."""

  num_classes: int = 10
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  maxpool: bool = True
  stem: str = "3x3"  # a key of STEMS
  activation: common.Activation = nn.relu
  dtype: common.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC, train: bool = False):
    if self.stem not in STEMS:
      raise ValueError(f"stem={self.stem!r} is not allowed; choose one of: {', '.join(map(repr, STEMS))}")
    kernel, stride = STEMS[self.stem]
    x = x_BHWC.astype(self.dtype)
    x = nn.Conv(64, (kernel, kernel), (stride, stride), padding=common.torch_padding(kernel), use_bias=False,
                dtype=self.dtype, kernel_init=common.kaiming_normal_fan_out, name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name="bn1")(x)
    x = self.activation(x)
    if self.maxpool:
      x = nn.max_pool(x, (3, 3), (2, 2), common.torch_padding(3))
    x = common.tap(self, "stem", x)
    for stage, num_blocks in enumerate(self.stage_sizes):
      features = 64 * 2**stage
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        name = f"layer{stage + 1}_{block}"
        x = BasicBlock(features, stride, self.activation, self.dtype, name=name)(x, train)
      # A stage's output is its last block's; the stage name is the one GradCAM users expect.
      x = common.tap(self, f"layer{stage + 1}", x)
    x = common.tap(self, "pooled", jnp.mean(x, axis=(1, 2)))
    fan_in = x.shape[-1]
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=common.torch_linear_kernel,
                 bias_init=common.torch_linear_bias(fan_in), name="fc")(x)
    return common.tap(self, "logits", x)
