"""SmoothGrad² (SmoothGrad-Squared): the mean of the squared maps of noisy copies of the input.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019),
where it was the method ROAR ranked best: E[(grad f(x + e))^2] per input value, e ~ N(0, s^2),
with the noise of `smoothgrad` (SmoothGrad's s: `sigma` times each image's max - min).
"""

from __future__ import annotations

from saliency_jax.attribution.noise import noisy_moments
from saliency_jax.attribution.registry import register


@register("smoothgrad_squared", needs=("key", "path"))
def smoothgrad_squared(forward, x_BHWC, target_B, *, output: str = "logit", method="gradient", samples: int = 50,
                       sigma: float = 0.15, sigma_mode: str = "fraction", key=None, method_options=None,
                       chunk_size: int | None = None):
  """Mean over `samples` noisy copies of the squared map of `method`; options as `smoothgrad`."""
  mean, variance = noisy_moments(forward, x_BHWC, target_B, output=output, method=method, samples=samples,
                                 sigma=sigma, sigma_mode=sigma_mode, key=key, method_options=method_options,
                                 chunk_size=chunk_size)
  return variance + mean**2  # E[m^2], from the running moments
