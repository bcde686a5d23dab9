"""Pieces shared by the models: torchvision's initialisers, torch-style padding, named taps."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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


# XLA:CPU's convolution has slow paths: on maps smaller than the kernel (a 3x3 conv on a 2x2x512
# map runs at ~2 GFLOP/s, 680 ms at batch 80) and in autodiff's input gradient of some strided
# convs (4x4x256 -> 2x2x512: 224 ms, against 7 ms as a matmul). Forward-style stride-1 convs are
# fast. So on CPU: stride 1 is the native conv with a custom gradient that is again a forward-style
# conv; strided convs are im2col (shifted slices + one matmul); maps smaller than the kernel are one
# matmul with the conv's Toeplitz matrix. Measured on 2 cores, integrated gradients (100 steps,
# batch 8, chunks of 10): resnet18 16 -> 255 path images/s, vgg16 -> 112 (PyTorch: ~200 and ~90).
_NHWC = ("NHWC", "HWIO", "NHWC")


def _window_slices(x, window, strides):
  """For each offset (i, j) of the window, row-major: the strided slice holding that element of
  every window of the (already padded) `x`, shape (B, H', W', C)."""
  (kh, kw), (sh, sw) = window, strides
  ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  return [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] for i in range(kh) for j in range(kw)]


def _columns(lhs, kernel_hw, window_strides, padding):
  """(B, H', W', kh * kw * C): every output position's receptive field, in the row-major order
  of an HWIO kernel's first three axes."""
  x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  return jnp.concatenate(_window_slices(x, kernel_hw, window_strides), axis=-1)


def _im2col_conv(lhs, rhs, window_strides, padding, precision):
  cols = _columns(lhs, rhs.shape[:2], window_strides, padding)
  return jnp.einsum("bhwk,kc->bhwc", cols, rhs.reshape(-1, rhs.shape[-1]), precision=precision)


def _native_conv(lhs, rhs, padding, precision):
  dimension_numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  return lax.conv_general_dilated(lhs, rhs, (1, 1), padding, dimension_numbers=dimension_numbers,
                                  precision=precision)


# Stride 1: the input gradient is the correlation with the flipped, transposed kernel: a forward
# conv again, rather than the transposed conv autodiff emits. The weight gradient is an im2col product.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_stride1(lhs, rhs, padding, precision):
  return _native_conv(lhs, rhs, padding, precision)


def _conv_stride1_fwd(lhs, rhs, padding, precision):
  return _conv_stride1(lhs, rhs, padding, precision), (lhs, rhs)


def _conv_stride1_bwd(padding, precision, residuals, g):
  lhs, rhs = residuals
  kh, kw = rhs.shape[:2]
  (top, bottom), (left, right) = padding
  flipped = jnp.flip(rhs, (0, 1)).swapaxes(2, 3)
  d_lhs = _conv_stride1(g, flipped, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)), precision)
  cols = _columns(lhs, (kh, kw), (1, 1), padding)
  # The batch is summed away: under a batch-split mesh the weight gradient is replicated, like the weights.
  d_rhs = jnp.einsum("bhwk,bhwc->kc", cols, g, precision=precision,
                     out_sharding=jax.typeof(rhs).sharding).reshape(rhs.shape)
  return d_lhs, d_rhs


_conv_stride1.defvjp(_conv_stride1_fwd, _conv_stride1_bwd)


def _taps(in_hw, out_hw, kernel_hw, window_strides, padding):
  """(H*W, H'*W') kernel-tap index linking input to output position; kh*kw where none does."""
  (h, w), (ho, wo), (kh, kw) = in_hw, out_hw, kernel_hw
  (sh, sw), ((top, _), (left, _)) = window_strides, padding
  di = np.arange(h)[:, None] - sh * np.arange(ho)[None, :] + top  # (H, H') kernel row
  dj = np.arange(w)[:, None] - sw * np.arange(wo)[None, :] + left
  valid = ((di >= 0) & (di < kh))[:, None, :, None] & ((dj >= 0) & (dj < kw))[None, :, None, :]
  taps = np.where(valid, di[:, None, :, None] * kw + dj[None, :, None, :], kh * kw)
  return taps.reshape(h * w, ho * wo)


def _dense_conv(lhs, rhs, window_strides, padding, precision):
  """The conv as one matmul with its (H*W*C, H'*W'*C') Toeplitz matrix. On a map smaller than
  the window (resnet18's and VGG16's 2x2 maps) this is fewer multiplications than im2col, whose
  columns are mostly padding: 16 vs 36 per channel pair on 2x2 with a 3x3 kernel."""
  b, h, w, c = lhs.shape
  kh, kw, _, co = rhs.shape
  ho, wo = (h + sum(padding[0]) - kh) // window_strides[0] + 1, (w + sum(padding[1]) - kw) // window_strides[1] + 1
  taps = _taps((h, w), (ho, wo), (kh, kw), window_strides, padding)
  kernels = jnp.concatenate([rhs.reshape(kh * kw, c, co), jnp.zeros((1, c, co), rhs.dtype)])
  toeplitz = kernels[taps].transpose(0, 2, 1, 3).reshape(h * w * c, ho * wo * co)
  return jnp.dot(lhs.reshape(b, h * w * c), toeplitz, precision=precision).reshape(b, ho, wo, co)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated` for `nn.Conv`, with the CPU lowerings above.

  The choice is made per platform when the program is lowered (`lax.platform_dependent`), so
  GPU and TPU programs are the plain convolution and the model code is the same everywhere.
  """
  native = functools.partial(lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                             lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                             dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                             precision=precision, **kwargs)
  plain_2d = (lhs.ndim == 4 and feature_group_count == 1 and not kwargs
              and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
              and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  if not plain_2d:
    return native(lhs, rhs)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  window_strides = tuple(window_strides)
  if lhs.shape[1] * lhs.shape[2] < rhs.shape[0] * rhs.shape[1]:
    cpu = functools.partial(_dense_conv, window_strides=window_strides, padding=padding, precision=precision)
  elif window_strides == (1, 1) and all(0 <= p < k for pair, k in zip(padding, rhs.shape[:2]) for p in pair):
    cpu = functools.partial(_conv_stride1, padding=padding, precision=precision)
  else:
    cpu = functools.partial(_im2col_conv, window_strides=window_strides, padding=padding, precision=precision)
  return lax.platform_dependent(lhs, rhs, cpu=cpu, default=native)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_sliced_backward(x, window, strides, padding):
  return nn.max_pool(x, window, strides=strides, padding=padding)


def _max_pool_fwd(x, window, strides, padding):
  y = _max_pool_sliced_backward(x, window, strides, padding)
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, g):
  # Each window's gradient goes to its first maximum in row-major order, as select-and-scatter
  # sends it (ties included); window offset (i, j) is one strided slice, placed back by `lax.pad`.
  x, y = residuals
  (_, kw), (sh, sw), ((top, bottom), (left, right)) = window, strides, padding
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
  ho, wo = y.shape[1:3]
  taken = jnp.zeros(y.shape, bool)
  dxp = jnp.zeros(xp.shape, g.dtype)
  for offset, values in enumerate(_window_slices(xp, window, strides)):
    i, j = divmod(offset, kw)
    first = (values == y) & ~taken
    taken = taken | first
    placement = ((0, 0, 0), (i, xp.shape[1] - i - sh * (ho - 1) - 1, sh - 1),
                 (j, xp.shape[2] - j - sw * (wo - 1) - 1, sw - 1), (0, 0, 0))
    dxp = dxp + lax.pad(jnp.where(first, g, 0).astype(g.dtype), jnp.zeros((), g.dtype), placement)
  return (dxp[:, top:xp.shape[1] - bottom, left:xp.shape[2] - right, :],)


_max_pool_sliced_backward.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x_BHWC, window, strides, padding=((0, 0), (0, 0))):
  """`nn.max_pool` with explicit padding pairs. On CPU the backward pass is nine strided slices:
  XLA:CPU's select-and-scatter took 115 ms for resnet18's stem pool at batch 80, 19 ms this way,
  with the same gradient. Elsewhere it is the plain reduce-window and its usual gradient."""
  window, strides = tuple(window), tuple(strides)
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  native = functools.partial(nn.max_pool, window_shape=window, strides=strides, padding=padding)
  sliced = lambda x: _max_pool_sliced_backward(x, window, strides, padding)
  return lax.platform_dependent(x_BHWC, cpu=sliced, default=native)


# The models' convolution: flax's, with the CPU lowering above.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
