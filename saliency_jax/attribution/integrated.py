"""Integrated gradients: (x - x') times the average gradient on the straight path x' -> x.

The path is one `vmap` over the quadrature points (each a whole batch), so XLA sees a
single large batch; `chunk_size` walks it in chunks of that many points with a running
weighted sum (`chunks.weighted_sum`), so memory holds one chunk's activations and gradients.
Chunked and unchunked runs give the same numbers to float32 summation order. On the CPU path the
path is walked past the forward's affine head (`affine_head.for_path`): its first convolution runs
twice per image, its transpose once, not once per point each.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution import affine_head, chunks, core
from saliency_jax.attribution.core import input_gradient
from saliency_jax.attribution.registry import register
from saliency_jax.checks import require_choice, require_positive

RULES = ("original", "left", "right", "trapezoid", "gauss_legendre")
BASELINES = ("black", "white", "zero", "uniform", "blur")
PIXEL_BASELINES = ("black", "white", "uniform")  # colours: made through the inputs' normalization


def path_points(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Quadrature nodes alpha in [0, 1] and weights summing to 1, for `steps` gradient evaluations.

  'original' is the single-pixel paper's: alpha = i / (steps - 1), i = 0..steps-1, plain mean
  (both ends in, so it is a trapezoid rule with the ends over-weighted).
  """
  require_choice("rule", rule, RULES)
  require_positive("steps", steps, integer=True)
  steps = int(steps)
  if rule in ("original", "trapezoid") and steps < 2:
    raise ValueError(f"steps={steps} is not allowed for rule={rule!r}; it needs at least 2 (both ends)")
  i = np.arange(steps, dtype=np.float64)
  if rule == "original":
    alphas, weights = i / (steps - 1), np.full(steps, 1.0 / steps)
  elif rule == "left":
    alphas, weights = i / steps, np.full(steps, 1.0 / steps)
  elif rule == "right":
    alphas, weights = (i + 1) / steps, np.full(steps, 1.0 / steps)
  elif rule == "trapezoid":
    alphas = i / (steps - 1)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2
  else:
    nodes, w = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (nodes + 1) / 2, w / 2
  return alphas.astype(np.float32), weights.astype(np.float32)


def gaussian_blur(x_BHWC, sigma: float) -> jax.Array:
  """Separable Gaussian blur of each channel, reflecting at the borders."""
  radius = max(1, min(math.ceil(3 * sigma), x_BHWC.shape[1] - 1, x_BHWC.shape[2] - 1))
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-0.5 * (t / sigma) ** 2)
  kernel = jnp.asarray(kernel / kernel.sum(), x_BHWC.dtype)
  C = x_BHWC.shape[-1]
  padded = jnp.pad(x_BHWC, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
  conv = lambda y, k: jax.lax.conv_general_dilated(
      y, jnp.tile(k, (1, 1, 1, C)), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=C)
  y = conv(padded, kernel.reshape(-1, 1, 1, 1))
  return conv(y, kernel.reshape(1, -1, 1, 1))


def make_baseline(baseline, x_BHWC, *, normalization=None, key=None, blur_sigma: float = 5.0) -> jax.Array:
  """The reference image x' as an array shaped like `x_BHWC`.

  'black', 'white' and 'uniform' are pixel colours, so they need the input space: `normalization`
  is the `data.Normalization` the model's inputs went through (uint8 pixels -> inputs), or
  'unit' for inputs that are pixels scaled to [0, 1]. Without one they are an error, never a
  guess: on normalised inputs [0, 1]'s black is not black. 'black' and 'white' are the all-0 and
  all-255 images, 'uniform' is uniform random pixels (needs `key`). 'zero' is 0 in the model's
  input space (the dataset mean when normalised) and 'blur' the input blurred with a Gaussian of
  `blur_sigma` pixels; neither needs a normalization.
  """
  if not isinstance(baseline, str):
    shape = jnp.shape(baseline)
    if len(shape) > 4 or any(b not in (1, x) for b, x in zip(shape[::-1], x_BHWC.shape[::-1])):
      raise ValueError(f"baseline has shape {shape}; give one shaped like the images {x_BHWC.shape}, one image "
                       f"{x_BHWC.shape[1:]}, or any shape that broadcasts to them")
    return jnp.broadcast_to(jnp.asarray(baseline, x_BHWC.dtype), x_BHWC.shape)
  require_choice("baseline", baseline, BASELINES)
  if baseline in PIXEL_BASELINES and normalization is None:
    raise ValueError(f"baseline={baseline!r} is a pixel colour and needs the input space: pass normalization= "
                     "(the data.Normalization of the model's inputs, e.g. Explainer(..., normalization=...)), or "
                     "normalization='unit' for inputs that are pixels in [0, 1]; or pass baseline='zero', an "
                     "all-zero input (captum's default baseline)")
  to_input = (lambda u8: u8 / 255.0) if isinstance(normalization, str) and normalization == "unit" else normalization
  if baseline == "zero":
    return jnp.zeros_like(x_BHWC)
  if baseline == "black":
    return jnp.broadcast_to(to_input(jnp.zeros(x_BHWC.shape, jnp.float32)), x_BHWC.shape)
  if baseline == "white":
    return jnp.broadcast_to(to_input(jnp.full(x_BHWC.shape, 255.0)), x_BHWC.shape)
  if baseline == "uniform":
    key = core.check_key(key, x_BHWC.shape[0], "baseline='uniform'")
    if key.ndim == 0:
      pixels = jax.random.uniform(key, x_BHWC.shape, jnp.float32, 0.0, 255.0)
    else:  # one key per image: an image's baseline does not depend on its batch
      pixels = jax.vmap(lambda k: jax.random.uniform(k, x_BHWC.shape[1:], jnp.float32, 0.0, 255.0))(key)
    return to_input(pixels).astype(x_BHWC.dtype)
  require_positive("blur_sigma", blur_sigma)
  return gaussian_blur(x_BHWC, blur_sigma)


@register("integrated_gradients", needs=("normalization", "path", "baseline", "key"))
def integrated_gradients(forward, x_BHWC, target_B, *, output: str = "logit", baseline="black",
                         steps: int = 100, rule: str = "original", chunk_size: int | None = None,
                         normalization=None, key=None, blur_sigma: float = 5.0):
  """(x - x') * sum_i w_i grad(x' + alpha_i (x - x')) over the nodes of `rule` (see `path_points`).

  `baseline`: an array or a name (see `make_baseline`). `chunk_size`: path points per
  vectorised chunk (None: the whole path at once). The target is held fixed along the path.
  """
  baseline_BHWC = make_baseline(baseline, x_BHWC, normalization=normalization, key=key, blur_sigma=blur_sigma)
  alphas_S, weights_S = path_points(rule, steps)
  delta_BHWC = x_BHWC - baseline_BHWC
  # With an affine head, the path is walked in the head's output space, where it is straight too:
  # head(x' + a (x - x')) = head(x') + a (head(x) - head(x')) (see affine_head).
  # The path's points are float32 (or wider) as before: a bfloat16 input is walked in float32.
  dtype = jnp.promote_types(x_BHWC.dtype, jnp.float32)
  x_f, baseline_f = x_BHWC.astype(dtype), baseline_BHWC.astype(dtype)
  split = affine_head.for_path(forward, x_f)
  start, end = split.head(baseline_f), split.head(x_f)

  def grad_at(alpha):
    point = [(s + alpha * (e - s)).astype(s.dtype) for s, e in zip(start, end)]
    return input_gradient(split.rest, point, target_B, output)

  # A running sum over chunks of path points: the per-point gradients are never all stacked.
  summed = chunks.weighted_sum(grad_at, jnp.asarray(alphas_S), weights_S, chunk_size)
  return delta_BHWC * split.transpose(x_f, summed)
