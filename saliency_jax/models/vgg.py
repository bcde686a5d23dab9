"""VGG16 laid out as torchvision's `vgg16` (configuration D, no BatchNorm), SPEC section 2."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from saliency_jax.models import common

# torchvision's cfgs["D"]: channel counts, "M" for a 2x2/2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def adaptive_avg_pool(x_BHWC: jax.Array, output_hw: tuple[int, int]) -> jax.Array:
  """torch.nn.AdaptiveAvgPool2d: bin i covers [floor(i*H/out), ceil((i+1)*H/out)).

  On CIFAR's 1x1 final map every 7x7 bin is that one pixel, i.e. the map is replicated.
  """
  _, h, w, _ = x_BHWC.shape
  oh, ow = output_hw
  rows = []
  for i in range(oh):
    r0, r1 = (i * h) // oh, math.ceil((i + 1) * h / oh)
    cols = []
    for j in range(ow):
      c0, c1 = (j * w) // ow, math.ceil((j + 1) * w / ow)
      cols.append(jnp.mean(x_BHWC[:, r0:r1, c0:c1, :], axis=(1, 2)))
    rows.append(jnp.stack(cols, axis=1))
  return jnp.stack(rows, axis=1)


class VGG(nn.Module):
  """Tapped activations: 'convB_L' after each conv's activation (B = block 1..5, L = layer),
  'block1'..'block5' after each max-pool, 'fc1', 'fc2' and 'logits'."""

  num_classes: int = 10
  layout: tuple = VGG16_LAYOUT
  dropout_rate: float = 0.5
  activation: common.Activation = nn.relu
  dtype: common.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC, train: bool = False):
    x = x_BHWC.astype(self.dtype)
    block, layer = 1, 1
    for i, item in enumerate(self.layout):
      if item == "M":
        x = common.max_pool(x, (2, 2), (2, 2))
        x = common.tap(self, f"block{block}", x)
        block, layer = block + 1, 1
        continue
      # Conv names keep torchvision's `features.<index>` numbering.
      x = common.Conv(item, (3, 3), padding=common.torch_padding(3), dtype=self.dtype,
                  kernel_init=common.kaiming_normal_fan_out, name=f"features_{i}")(x)
      x = common.tap(self, f"conv{block}_{layer}", self.activation(x))
      layer += 1
    x = adaptive_avg_pool(x, (7, 7))
    # torch flattens NCHW, so the classifier's input order is (channel, row, col).
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
                                     bias_init=nn.initializers.zeros, name=name)
    for k in (1, 2):
      x = common.tap(self, f"fc{k}", self.activation(dense(4096, f"classifier_{3 * (k - 1)}")(x)))
      x = common.dropout(self, x, self.dropout_rate, train)
    x = dense(self.num_classes, "classifier_6")(x)
    return common.tap(self, "logits", x)
