"""Faithfulness curves (evaluation/faithfulness.py) against their definitions; Quantus where installed."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import attribution, models
from saliency_jax.attribution.integrated import gaussian_blur
from saliency_jax.evaluation import faithfulness as F

CURVE_STATIC = ("steps", "order", "replacement", "output", "step_chunk", "blur_sigma")
ROAD_STATIC = ("percentages", "order", "output", "step_chunk", "tol", "maxiter")


def _sum_forward(x_BHWC):
  """Logit 0 = the sum of all values, logit 1 = 0."""
  s = x_BHWC.sum(axis=(1, 2, 3))
  return jnp.stack([s, jnp.zeros_like(s)], axis=-1)


def _linear(weights_HWC):
  """Logit 0 = sum(w * x), logit 1 = 0: each pixel's contribution is sum_c w x, known exactly."""
  def forward(x_BHWC):
    s = (x_BHWC * weights_HWC).sum(axis=(1, 2, 3))
    return jnp.stack([s, jnp.zeros_like(s)], axis=-1)
  return forward


def _small_cnn(seed=0):
  model = models.create_model("small_cnn")
  return attribution.ModelForward(model, models.init_variables(model, jax.random.key(seed), (1, 32, 32, 3)))


# 2x2, one channel, forward = sum: every curve by hand.
X22 = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
MAP22 = jnp.asarray([[0.1, 0.4], [0.3, 0.2]])[None]  # MoRF: 2, 3, 4, 1; LeRF: 1, 4, 3, 2
ZERO = jnp.zeros(1, jnp.int32)


@pytest.mark.parametrize("fn,order,replacement,value,expected", [
    (F.deletion_curve, "morf", "mean", None, [10, 8, 5, 1, 0]),
    (F.deletion_curve, "lerf", "mean", None, [10, 9, 5, 2, 0]),
    (F.deletion_curve, "morf", "black", -1.0, [10, 7, 3, -2, -4]),
    (F.insertion_curve, "morf", "mean", None, [0, 2, 5, 9, 10]),
    (F.insertion_curve, "lerf", "black", -1.0, [-4, -2, 3, 7, 10]),
])
def test_hand_computed_2x2(fn, order, replacement, value, expected):
  curve = fn(_sum_forward, X22, MAP22, ZERO, steps=4, order=order, replacement=replacement, value=value,
             output="logit")
  np.testing.assert_allclose(curve.fractions, [0, 0.25, 0.5, 0.75, 1])
  np.testing.assert_allclose(curve.scores[0], expected, atol=1e-6)
  y = np.asarray(expected, float)
  np.testing.assert_allclose(curve.area[0], 0.25 * ((y[:-1] + y[1:]) / 2).sum(), atol=1e-6)


def test_ties_are_removed_in_row_major_order_in_both_orders():
  flat = jnp.zeros((1, 2, 2)).at[0, 1, 1].set(-0.0)  # -0.0 ties with 0.0
  for order in ("morf", "lerf"):
    curve = F.deletion_curve(_sum_forward, X22, flat, ZERO, steps=4, order=order, output="logit")
    np.testing.assert_allclose(curve.scores[0], [10, 9, 7, 4, 0])


def test_steps_that_do_not_divide_the_pixels_floor_the_counts():
  curve = F.deletion_curve(_sum_forward, X22, MAP22, ZERO, steps=3, output="logit")
  np.testing.assert_allclose(curve.fractions, [0, 0.25, 0.5, 1])  # floor(k * 4 / 3) = 0, 1, 2, 4 pixels
  np.testing.assert_allclose(curve.scores[0], [10, 8, 5, 0])


def test_linear_model_deletion_curve_in_closed_form():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((8, 8, 3)).astype(np.float32)
  x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
  contribution = (w * x).sum(-1).reshape(2, -1)  # per pixel, all channels
  maps = rng.standard_normal((2, 8, 8)).astype(np.float32)
  curve = F.deletion_curve(_linear(w), jnp.asarray(x), jnp.asarray(maps), jnp.zeros(2, jnp.int32), steps=16,
                           output="logit")
  order = np.argsort(-maps.reshape(2, -1), axis=1, kind="stable")
  removed = np.take_along_axis(contribution, order, axis=1)
  expected = contribution.sum(1, keepdims=True) - np.concatenate(
      [np.zeros((2, 1)), np.cumsum(removed, axis=1)[:, 3::4]], axis=1)  # 4 pixels per step
  np.testing.assert_allclose(curve.scores, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(curve.area, np.trapezoid(expected, np.linspace(0, 1, 17), axis=1), rtol=1e-5)
  # Softmax of (s, 0) is sigmoid(s).
  probs = F.deletion_curve(_linear(w), jnp.asarray(x), jnp.asarray(maps), jnp.zeros(2, jnp.int32), steps=16)
  np.testing.assert_allclose(probs.scores, 1 / (1 + np.exp(-expected)), rtol=1e-5, atol=1e-6)


def test_morf_of_the_true_relevance_removes_the_score_faster_than_random_orders():
  rng = np.random.default_rng(1)
  w = rng.standard_normal((8, 8, 3)).astype(np.float32)
  x = jnp.asarray(rng.standard_normal((4, 8, 8, 3)).astype(np.float32))
  relevance = (w * x).sum(-1)  # the exact contribution of each pixel to logit 0
  target = jnp.zeros(4, jnp.int32)
  best = F.deletion_curve(_linear(w), x, relevance, target, steps=16, output="logit")
  for seed in range(3):
    random_map = jax.random.normal(jax.random.key(seed), (4, 8, 8))
    other = F.deletion_curve(_linear(w), x, random_map, target, steps=16, output="logit")
    # Removing the largest contributions first leaves the smallest sum at every step.
    assert np.all(np.asarray(best.scores) <= np.asarray(other.scores) + 1e-4)
    assert np.all(np.asarray(best.area) < np.asarray(other.area))
  worst = F.deletion_curve(_linear(w), x, relevance, target, steps=16, order="lerf", output="logit")
  assert np.all(np.asarray(worst.area) > np.asarray(best.area))


def test_blur_replacement_ends_at_the_blurred_image():
  forward = _small_cnn()
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  maps = jax.random.normal(jax.random.key(2), (2, 32, 32))
  target = jnp.array([1, 2])
  curve = F.deletion_curve(forward, x, maps, target, steps=4, replacement="blur", blur_sigma=2.0)
  blurred = attribution.scores(forward, gaussian_blur(x, 2.0), target, "softmax")
  np.testing.assert_allclose(curve.scores[:, -1], blurred, atol=1e-6)
  np.testing.assert_allclose(curve.scores[:, 0], attribution.scores(forward, x, target, "softmax"), atol=1e-6)


def test_batch_equals_one_by_one():
  forward = _small_cnn()
  x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  maps = jax.random.normal(jax.random.key(2), (3, 32, 32))
  target = jnp.array([1, 5, 9])
  calls = [functools.partial(F.deletion_curve, steps=8, step_chunk=4),
           functools.partial(F.insertion_curve, steps=8, replacement="mean"),
           functools.partial(F.road, percentages=(10, 50, 90))]
  for call in calls:
    batch = call(forward, x, maps, target)
    for i in range(3):
      one = call(forward, x[i:i + 1], maps[i:i + 1], target[i:i + 1])
      np.testing.assert_allclose(batch.scores[i], one.scores[0], rtol=1e-5, atol=1e-6)


def test_road_with_a_key_per_image_does_not_depend_on_the_batch():
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
  maps = jax.random.normal(jax.random.key(2), (3, 8, 8))
  keys = jax.random.split(jax.random.key(3), 3)
  call = jax.jit(lambda x, m, k: F.road(_sum_forward, x, m, jnp.zeros(len(x), jnp.int32), percentages=(25, 50),
                                        noise=0.5, key=k, output="logit").scores)
  batch = call(x, maps, keys)
  # Each image with its key, in another place of the batch: the same scores, moved with it (summation
  # order only: the scores are sums of 192 values of order 1).
  order = jnp.array([2, 0, 1])
  np.testing.assert_allclose(call(x[order], maps[order], keys[order]), batch[order], rtol=1e-5, atol=1e-5)
  # Another key for the same image: other noise.
  assert not np.allclose(call(x, maps, keys[order])[0], batch[0], atol=1e-3)


def test_whole_batch_is_one_compiled_program():
  traces = []

  def forward(x_BHWC):
    traces.append(x_BHWC.shape)  # runs once per trace, not per call
    return _small_cnn()(x_BHWC)

  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  maps = jax.random.normal(jax.random.key(2), (4, 32, 32))
  target = jnp.arange(4)
  deletion = jax.jit(functools.partial(F.deletion_curve, forward), static_argnames=CURVE_STATIC)
  curve = deletion(x, maps, target, steps=8)
  # One forward traced, of all 9 versions of the 4 images at once: no Python loop over steps.
  assert traces == [(36, 32, 32, 3)] and curve.scores.shape == (4, 9)
  traces.clear()
  chunked = deletion(x, maps, target, steps=8, step_chunk=3)  # a scan over 3 chunks of 3 steps
  assert traces == [(12, 32, 32, 3)]
  np.testing.assert_allclose(chunked.scores, curve.scores, atol=1e-6)
  traces.clear()
  road = jax.jit(functools.partial(F.road, forward), static_argnames=ROAD_STATIC)
  result = road(x, maps, target, percentages=(20, 40, 60), noise=0.01, key=jax.random.key(0))
  assert traces == [(12, 32, 32, 3)] and result.scores.shape == (4, 3) and result.correct.dtype == jnp.bool_


def test_imputation_of_a_constant_image_is_the_constant():
  x = jnp.full((8, 8, 3), 0.7)
  removed = jax.random.bernoulli(jax.random.key(0), 0.6, (8, 8))
  np.testing.assert_allclose(F.noisy_linear_imputation(x, removed), x, atol=1e-6)


def test_imputation_by_hand_center_and_corner():
  x = jnp.asarray(np.arange(9, dtype=np.float32).reshape(3, 3, 1))
  center = jnp.zeros((3, 3), bool).at[1, 1].set(True)
  out = F.noisy_linear_imputation(x, center)
  expected = (1 + 3 + 5 + 7) / 6 + (0 + 2 + 6 + 8) / 12  # weights sum to 1
  np.testing.assert_allclose(out[1, 1, 0], expected, rtol=1e-6)
  np.testing.assert_allclose(np.delete(np.asarray(out).ravel(), 4), np.delete(np.arange(9), 4))
  corner = jnp.zeros((3, 3), bool).at[0, 0].set(True)
  out = F.noisy_linear_imputation(x, corner)  # in-image neighbours only, renormalised
  np.testing.assert_allclose(out[0, 0, 0], (1 / 6 + 3 / 6 + 4 / 12) / (5 / 12), rtol=1e-6)


def test_imputation_noise_only_on_removed_pixels():
  x = jax.random.normal(jax.random.key(0), (8, 8, 3))
  removed = jax.random.bernoulli(jax.random.key(1), 0.3, (8, 8))
  clean = F.noisy_linear_imputation(x, removed)
  noisy = F.noisy_linear_imputation(x, removed, noise=0.1, key=jax.random.key(2))
  draw = 0.1 * jax.random.normal(jax.random.key(2), x.shape)
  np.testing.assert_allclose(noisy, jnp.where(removed[..., None], clean + draw, x), atol=1e-6)


def test_road_lerf_keeps_the_score_of_a_linear_model_longer():
  rng = np.random.default_rng(3)
  w = rng.standard_normal((8, 8, 3)).astype(np.float32)
  x = jnp.asarray(rng.standard_normal((4, 8, 8, 3)).astype(np.float32))
  relevance = (w * x).sum(-1)
  kw = dict(percentages=(25, 50, 75), output="logit")
  morf = F.road(_linear(w), x, relevance, jnp.zeros(4, jnp.int32), **kw)
  lerf = F.road(_linear(w), x, relevance, jnp.zeros(4, jnp.int32), order="lerf", **kw)
  assert np.all(np.asarray(morf.scores) < np.asarray(lerf.scores))


def test_bad_settings_raise():
  with pytest.raises(ValueError, match="needs value"):
    F.deletion_curve(_sum_forward, X22, MAP22, ZERO, replacement="black")
  with pytest.raises(ValueError, match="order="):
    F.deletion_curve(_sum_forward, X22, MAP22, ZERO, order="random")
  with pytest.raises(ValueError, match="percentages"):
    F.road(_sum_forward, X22, MAP22, ZERO, percentages=(50, 100))
  with pytest.raises(ValueError, match="needs a key"):
    F.road(_sum_forward, X22, MAP22, ZERO, noise=0.01)
  with pytest.raises(ValueError, match="reduce the channels"):
    F.deletion_curve(_sum_forward, X22, MAP22[..., None], ZERO)


# Quantus, on the same weights in torch and JAX (models.torch_import).


def test_pixel_flipping_agrees_with_quantus():
  pytest.importorskip("quantus")
  pytest.importorskip("torch")
  from benchmarks import faithfulness_throughput as bench  # pylint: disable=g-import-not-at-top
  net, model, variables = bench.shared_model("small_cnn")
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
  maps = rng.standard_normal((4, 32, 32)).astype(np.float32)
  target = np.array([0, 3, 5, 9])
  theirs = bench.quantus_pixel_flipping(net, x, target, maps, steps=48, batch_size=4)
  ours = F.deletion_curve(attribution.ModelForward(model, variables), jnp.asarray(x.transpose(0, 2, 3, 1)),
                          jnp.asarray(maps), jnp.asarray(target), steps=48)
  # Quantus steps are 64 channel values (21 1/3 pixels); at every third step 64 j whole pixels are gone.
  shared = np.arange(3, 49, 3)
  np.testing.assert_allclose(np.asarray(ours.scores)[:, shared], theirs[:, shared - 1], rtol=0, atol=1e-4)


def test_road_agrees_with_quantus_on_one_channel_images():
  quantus = pytest.importorskip("quantus")
  pytest.importorskip("torch")
  from quantus.functions.perturb_func import noisy_linear_imputation  # pylint: disable=g-import-not-at-top

  from benchmarks import faithfulness_throughput as bench  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  # The imputation itself, RGB: Quantus's copy of the ROAD code (sparse LU in float64) vs CG in float32.
  image = rng.standard_normal((3, 32, 32))
  idx = np.argsort(-rng.standard_normal(1024), kind="stable")[:400]
  removed = np.zeros(1024, bool)
  removed[idx] = True
  ours = F.noisy_linear_imputation(jnp.asarray(image.transpose(1, 2, 0), jnp.float32), removed.reshape(32, 32))
  theirs = noisy_linear_imputation(image, idx, noise=0.0)
  np.testing.assert_allclose(np.asarray(ours).transpose(2, 0, 1), theirs, rtol=0, atol=1e-4)
  # The whole metric. Quantus 0.6's ROAD indexes the channel-broadcast map's C*H*W order as pixels and
  # fails on RGB (IndexError), so this runs on one-channel images.
  net, model, variables = bench.shared_model("small_cnn", in_channels=1)
  x = rng.standard_normal((8, 1, 32, 32)).astype(np.float32)
  maps = rng.standard_normal((8, 32, 32)).astype(np.float32)
  target = rng.integers(0, 10, 8)
  percentages = [10, 30, 50, 70, 90]
  metric = quantus.ROAD(percentages=percentages, noise=0.0, normalise=False, abs=False, disable_warnings=True)
  theirs = metric(model=net, x_batch=x, y_batch=target, a_batch=maps[:, None], channel_first=True, device="cpu")
  ours = F.road(attribution.ModelForward(model, variables), jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(maps),
                jnp.asarray(target), percentages=tuple(percentages))
  np.testing.assert_allclose(np.asarray(ours.correct).mean(0), [theirs[p] for p in percentages])
