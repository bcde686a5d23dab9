"""SmoothGrad²: a new method is one file; it then works by name everywhere."""

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax import attribution as A
from saliency_jax import pipeline


def test_smoothgrad_squared_is_the_mean_of_squared_noisy_gradients_and_runs_in_every_stage(trained_tmp_path, tiny_config):
  # A quadratic model: the gradient of f(x) = sum(w * x^2) is 2 w x, so at x + s e the squared
  # gradient is 4 w^2 (x + s e)^2, and its mean over the noise draws is computed here by hand.
  w = jnp.arange(1.0, 13.0).reshape(1, 2, 2, 3) / 10
  forward = lambda x: jnp.stack([jnp.sum(w * x**2, axis=(1, 2, 3)), jnp.zeros(len(x))], axis=-1)
  x = jax.random.normal(jax.random.key(0), (2, 2, 2, 3))
  key, samples, sigma = jax.random.key(3), 64, 0.5
  noise = jax.random.normal(key, (samples, *x.shape))
  expected = (4 * w**2 * (x + sigma * noise) ** 2).mean(0)
  got = A.smoothgrad_squared(forward, x, jnp.zeros(2, jnp.int32), samples=samples, sigma=sigma,
                             sigma_mode="absolute", key=key)
  np.testing.assert_allclose(got, expected, rtol=1e-5)  # float32 sums of 64 samples

  # By name: in the single-pixel grid and the sanity studies, with the grid's per-image keys.
  config = tiny_config
  config.single_pixel.methods = ("smoothgrad_squared(samples=4)",)
  config.single_pixel.max_images, config.single_pixel.examples = 20, 0
  config.single_pixel.outputs = ("logit",)
  config.sanity.studies, config.sanity.methods, config.sanity.num_images = ("cascading",), ("smoothgrad_squared(samples=4)",), 10
  out = pipeline.run(config, trained_tmp_path)  # the tiny run, trained: the grid and the study follow
  assert {r["method"] for r in out["single_pixel"]} == {"smoothgrad_squared"}
  assert {r["method"] for r in out["sanity"]["cascading"]} == {"smoothgrad_squared"}
