"""VGG16 laid out as torchvision's `vgg16` (configuration D, no BatchNorm): docs/evaluation.md,
"Models and training"."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from saliency_jax.models import common

# torchvision's cfgs["D"]: channel counts, "M" for a 2x2/2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
POOLED_HW = (7, 7)  # torchvision's AdaptiveAvgPool2d((7, 7)) before the classifier


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


def replicated_input_dot(repeats: int):
  """A `dot_general` for a Dense layer whose input is known to hold each feature `repeats` times
  in a row: the product is taken with the kernel's `repeats` rows per feature summed first.

  On CIFAR the adaptive pool replicates a 1x1 map 49 times, so classifier_0 multiplies 49 copies
  of 512 features by a 25088x4096 kernel: a quarter of VGG16's work, for a 512x4096 product. The
  kernel, its initialisation, its gradient and every rewrite of the layer (LRP, FullGrad) stay
  those of the 25088-input layer: reading one copy is exact because all copies are equal.
  """

  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    (((lhs_contract,), (rhs_contract,)), batch) = dimension_numbers
    assert lhs_contract == lhs.ndim - 1 and rhs_contract == 0 and batch == ((), ()), dimension_numbers
    features = lhs[..., ::repeats]
    kernel = rhs.reshape(features.shape[-1], repeats, rhs.shape[-1]).sum(axis=1)
    return lax.dot_general(features, kernel, (((features.ndim - 1,), (0,)), ((), ())), precision=precision,
                           preferred_element_type=preferred_element_type)

  return dot_general


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
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = common.tap(self, f"block{block}", x)
        block, layer = block + 1, 1
        continue
      # Conv names are features_<index in the layout>, not torchvision's features index (which also counts
      # the ReLUs); models.torch_import maps one onto the other.
      x = nn.Conv(item, (3, 3), padding=common.torch_padding(3), dtype=self.dtype,
                  kernel_init=common.kaiming_normal_fan_out, name=f"features_{i}")(x)
      x = common.tap(self, f"conv{block}_{layer}", self.activation(x))
      layer += 1
    replicated = x.shape[1:3] == (1, 1)
    x = adaptive_avg_pool(x, POOLED_HW)
    # torch flattens NCHW, so the classifier's input order is (channel, row, col).
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    dense = lambda n, name, **kw: nn.Dense(n, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
                                           bias_init=nn.initializers.zeros, name=name, **kw)
    for k in (1, 2):
      fold = dict(dot_general=replicated_input_dot(math.prod(POOLED_HW))) if k == 1 and replicated else {}
      x = common.tap(self, f"fc{k}", self.activation(dense(4096, f"classifier_{3 * (k - 1)}", **fold)(x)))
      x = common.dropout(self, x, self.dropout_rate, train)
    x = dense(self.num_classes, "classifier_6")(x)
    return common.tap(self, "logits", x)
