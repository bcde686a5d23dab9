"""The affine head split off a forward (attribution/affine_head.py), and IG walked through it."""

from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import attribution, models
from saliency_jax.attribution import affine_head

# float32: the split sums the same products in another order (the head's transpose applied to a sum
# instead of summed after it); a wrong head, a lost constant or a missing term is off by O(1).
TOL = dict(rtol=1e-5, atol=1e-6)


class SmoothNet(nn.Module):
  """A normalised input, a convolution with its bias and a per-channel scale (an eval-mode batch
  norm), then tanh (smooth: no ReLU or max-pool ties that float32 rounding could flip); the rest
  also reads the input itself and an input-independent value computed in the head's span."""

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.constant(1.5), (4,))
    h = nn.Conv(4, (3, 3))((x - 0.5) / 0.25) * scale
    h = jnp.tanh(h)
    h = nn.Dense(3)(h.reshape(h.shape[0], -1))
    return h + x.reshape(x.shape[0], -1)[:, :3] * jnp.tanh(scale[:3])


def _net():
  model = SmoothNet()
  x = jax.random.normal(jax.random.key(0), (3, 6, 6, 2))
  variables = model.init(jax.random.key(1), x)
  return (lambda x: model.apply(variables, x)), x


def test_the_head_is_the_affine_part_and_rest_of_head_is_the_forward():
  forward, x = _net()
  split = affine_head.split(forward, x)
  assert split is not None
  z = split.head(x)
  # The head ends at tanh: its outputs are the conv's pre-activation (6x6x4) and the input itself.
  assert sorted(a.shape for a in z) == sorted([(3, 6, 6, 4), (3, 6, 6, 2)])
  np.testing.assert_allclose(split.rest(z), forward(x), **TOL)
  # Affine: the head of a mix is the mix of the heads.
  y = jax.random.normal(jax.random.key(2), x.shape)
  for mixed, a, b in zip(split.head(0.3 * x + 0.7 * y), z, split.head(y)):
    np.testing.assert_allclose(mixed, 0.3 * a + 0.7 * b, **TOL)
  # The transpose is the input gradient of <head(x), g> for head-output gradients g.
  g = [jax.random.normal(jax.random.key(3), a.shape) for a in z]
  want = jax.grad(lambda x: sum(jnp.vdot(a, b) for a, b in zip(split.head(x), g)))(x)
  np.testing.assert_allclose(split.transpose(x, g), want, **TOL)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_integrated_gradients_through_the_head_equal_their_definition(chunk_size):
  forward, x = _net()
  target = jnp.array([0, 2, 1])
  steps, baseline = 7, jnp.full_like(x, 0.2)
  alphas, weights = attribution.path_points("original", steps)
  per_point = [jax.grad(lambda p: jnp.take_along_axis(forward(p), target[:, None], 1).sum())(baseline + a * (x - baseline))
               for a in alphas]
  want = (x - baseline) * sum(w * g for w, g in zip(weights, per_point))
  got = attribution.integrated_gradients(forward, x, target, steps=steps, baseline=baseline, chunk_size=chunk_size)
  np.testing.assert_allclose(got, want, **TOL)


def test_a_linear_model_is_all_head_and_integrated_gradients_are_its_closed_form():
  # logits = x W + b: IG of class k from baseline 0 is x * W[:, k] exactly (completeness, per term).
  w = jax.random.normal(jax.random.key(0), (2 * 2 * 3, 5))
  forward = lambda x: x.reshape(x.shape[0], -1) @ w + 1.0
  x = jax.random.normal(jax.random.key(1), (4, 2, 2, 3))
  target = jnp.array([0, 1, 4, 2])
  split = affine_head.split(forward, x)
  assert split is not None
  got = attribution.integrated_gradients(forward, x, target, steps=5, baseline="zero")
  np.testing.assert_allclose(got, x * w[:, target].T.reshape(x.shape), **TOL)


def test_no_split_without_a_product_in_the_head_or_with_a_head_much_larger_than_the_input():
  x = jnp.ones((2, 4, 4, 3))
  assert affine_head.split(lambda x: jnp.tanh(x).sum(axis=(1, 2)), x) is None  # nonlinear at once
  assert affine_head.split(lambda x: jnp.maximum(x * 2.0 + 1.0, 0).sum(axis=(1, 2)), x) is None  # no product
  w = jnp.ones((3, 3))  # a product of constants only: the head scales x, no product of x
  assert affine_head.split(lambda x: jnp.tanh(x * (w @ w)[0]).sum(axis=(1, 2)), x) is None
  wide = jnp.ones((48, affine_head.MAX_GROWTH * 48 + 1))  # per image: 48 inputs, 64 x 48 + 1 head outputs
  assert affine_head.split(lambda x: jnp.tanh(x.reshape(2, -1) @ wide)[:, :3], x) is None


def test_a_relu_network_gives_the_maps_it_gives_without_the_split():
  # The library's small CNN (conv, bias, ReLU, max-pool): with and without the split, IG and the
  # model's other methods agree to float32 rounding.
  model = models.create_model("small_cnn")
  variables = models.init_variables(model, jax.random.key(0), (1, 8, 8, 3))
  forward = attribution.ModelForward(model, variables)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  target = jnp.array([3, 7])
  ig = jax.jit(lambda f, x: attribution.integrated_gradients(f, x, target, steps=8, baseline="zero", chunk_size=3))
  assert affine_head.split(forward, x) is not None
  with mock.patch.object(affine_head, "split", lambda forward, x: None):
    plain = ig(forward, x)
  np.testing.assert_allclose(ig(forward, x), plain, rtol=1e-5, atol=1e-5 * float(jnp.abs(plain).max()))


def test_bfloat16_inputs_and_layers_are_walked_in_float32_and_a_narrowing_cast_ends_the_head():
  # A bfloat16 input: the path's points are float32, as without the split, and so is the map.
  forward, x = _net()
  x16, target = x.astype(jnp.bfloat16), jnp.array([0, 2, 1])
  got = attribution.integrated_gradients(forward, x16, target, steps=5, baseline="zero", chunk_size=2)
  want = attribution.integrated_gradients(forward, x16.astype(jnp.float32), target, steps=5, baseline="zero")
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, **TOL)
  # A bfloat16 first layer on float32 inputs: the cast to bfloat16 rounds, so it is not in the head.
  narrowing = lambda x: jnp.tanh(jax.lax.conv_general_dilated(
      x.astype(jnp.bfloat16), jnp.ones((3, 3, 2, 4), jnp.bfloat16), (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))).astype(jnp.float32).sum(axis=(1, 2))
  assert affine_head.split(narrowing, x) is None
  assert attribution.integrated_gradients(narrowing, x, target, steps=3, baseline="zero").dtype == jnp.float32


def test_smoothgrad_of_a_bfloat16_map_sums_in_float32():
  forward, x = _net()
  x16, target = x.astype(jnp.bfloat16), jnp.array([0, 2, 1])
  method = lambda f, x, t, output: attribution.gradient(f, x, t, output=output).astype(jnp.bfloat16)
  got = attribution.smoothgrad(forward, x16, target, method=method, samples=3, chunk_size=2, key=jax.random.key(0))
  assert got.dtype == jnp.float32
