"""Running reductions over chunks (IG's path, SmoothGrad's samples) against direct numpy sums."""

import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax.attribution import chunks


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 7, 50])  # 3 leaves a remainder of 1; 50 > the 7 items
def test_weighted_sum_is_the_sum_of_weighted_items(chunk_size):
  xs = np.arange(7.0)
  weights = np.linspace(0.1, 0.7, 7)
  fn = lambda a: jnp.stack([a, a**2, jnp.ones_like(a)])
  expected = sum(w * np.array([a, a**2, 1.0]) for a, w in zip(xs, weights))
  got = chunks.weighted_sum(fn, jnp.asarray(xs), weights, chunk_size)
  np.testing.assert_allclose(got, expected, rtol=1e-6)  # float32 sums of 7 terms


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 10])
def test_mean_and_variance_keep_a_small_variance_next_to_a_large_mean(chunk_size):
  # Values 1000 + N(0, 0.01): E[m^2] - E[m]^2 in float32 would lose the variance (1e6 * 2^-24 ~
  # 0.06 > 1e-4); Chan's merge keeps it, as numpy's two-pass float64 variance does.
  rng = np.random.default_rng(0)
  samples = 1000.0 + 0.01 * rng.standard_normal((10, 5))
  mean, variance = chunks.mean_and_variance(lambda s: s, jnp.asarray(samples, jnp.float32), chunk_size)
  np.testing.assert_allclose(mean, samples.mean(0), rtol=1e-6)
  # float32 samples carry ~6e-5 absolute rounding at 1000, so the variance (~1e-4) has 2-3 digits.
  np.testing.assert_allclose(variance, np.asarray(samples, np.float32).astype(np.float64).var(0), rtol=0.05)
