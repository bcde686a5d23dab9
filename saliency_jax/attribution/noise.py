"""SmoothGrad and VarGrad: the mean and the variance of any method over noisy copies of the input."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution import chunks, core, registry
from saliency_jax.checks import require_choice, require_non_negative, require_positive

SIGMA_MODES = ("fraction", "absolute")


def noise_samples(key, x_BHWC, samples: int) -> jax.Array:
  """Standard normal noise, (samples, B, H, W, C).

  `key` is one key for the batch, or a (B,) array of keys, one per image: then an image's
  noise does not depend on the batch it came in, so batched maps equal one-by-one maps.
  """
  key = core.check_key(key, x_BHWC.shape[0], "smoothgrad/vargrad")
  if key.ndim == 0:
    return jax.random.normal(key, (samples, *x_BHWC.shape), x_BHWC.dtype)
  per_image = jax.vmap(lambda k: jax.random.normal(k, (samples, *x_BHWC.shape[1:]), x_BHWC.dtype))(key)
  return jnp.swapaxes(per_image, 0, 1)


def noisy_moments(forward, x_BHWC, target_B, *, output, method, samples, sigma, sigma_mode, key, method_options,
                  chunk_size, variance: bool = True) -> tuple[jax.Array, jax.Array | None]:
  """The mean and the variance (ddof 0) of `method`'s maps at x + sigma * noise over the
  samples, chunk by chunk: the samples' maps are never all held at once. The variance by a
  running merge (`chunks.mean_and_variance`); with `variance=False` the mean alone, as a weighted
  sum (`chunks.weighted_sum`, weights 1 / samples), and None: SmoothGrad's whole cost is then its
  gradients (the merge's extra passes over each chunk's maps cost 3% of a user CNN's SmoothGrad)."""
  require_positive("samples", samples, integer=True)
  require_non_negative("sigma", sigma)
  require_choice("sigma_mode", sigma_mode, SIGMA_MODES)
  fn: Callable = registry.get(method) if isinstance(method, str) else method
  options = dict(method_options or {})
  if sigma_mode == "fraction":  # Smilkov et al.: a fraction of each image's value range
    axes = tuple(range(1, x_BHWC.ndim))
    scale_B = sigma * (jnp.max(x_BHWC, axis=axes, keepdims=True) - jnp.min(x_BHWC, axis=axes, keepdims=True))
  else:
    scale_B = sigma
  samples = int(samples)
  noise_SBHWC = noise_samples(key, x_BHWC, samples)

  def one(noise_BHWC):
    return fn(forward, x_BHWC + scale_B * noise_BHWC, target_B, output=output, **options)

  if not variance:
    return chunks.weighted_sum(one, noise_SBHWC, np.full(samples, 1 / samples), chunk_size), None
  return chunks.mean_and_variance(one, noise_SBHWC, chunk_size)


@registry.register("smoothgrad", needs=("key", "path"))
def smoothgrad(forward, x_BHWC, target_B, *, output: str = "logit", method="gradient", samples: int = 50,
               sigma: float = 0.15, sigma_mode: str = "fraction", key=None, method_options=None,
               chunk_size: int | None = None):
  """Mean of `method` (a name or a function) over `samples` copies x + N(0, s^2), where s is
  `sigma` itself ('absolute') or `sigma` times each image's max - min ('fraction')."""
  return noisy_moments(forward, x_BHWC, target_B, output=output, method=method, samples=samples, sigma=sigma,
                       sigma_mode=sigma_mode, key=key, method_options=method_options, chunk_size=chunk_size,
                       variance=False)[0]


@registry.register("vargrad", needs=("key", "path"))
def vargrad(forward, x_BHWC, target_B, *, output: str = "logit", method="gradient", samples: int = 50,
            sigma: float = 0.15, sigma_mode: str = "fraction", key=None, method_options=None,
            chunk_size: int | None = None):
  """Variance (over the samples, ddof 0) of `method`; options as `smoothgrad`."""
  return noisy_moments(forward, x_BHWC, target_B, output=output, method=method, samples=samples, sigma=sigma,
                       sigma_mode=sigma_mode, key=key, method_options=method_options, chunk_size=chunk_size)[1]
