"""Attribution methods against closed forms: linear models, hand-worked ReLU networks,
completeness and conservation identities, and batch / chunk / device invariances."""

import inspect
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from saliency_jax import attribution as A
from saliency_jax import models
from saliency_jax.attribution import noise
from saliency_jax.data import Normalization
from saliency_jax.models.common import tap

# ---------------------------------------------------------------- linear model


def _linear(key, shape=(3, 4, 4, 2), classes=5):
  kw, kb, kx = jax.random.split(key, 3)
  W = jax.random.normal(kw, (np.prod(shape[1:]), classes))
  b = jax.random.normal(kb, (classes,))
  forward = lambda x: x.reshape(x.shape[0], -1) @ W + b
  return forward, W, jax.random.normal(kx, shape)


def test_linear_model_gradient_is_the_weights_and_ig_is_delta_times_weights():
  forward, W, x = _linear(jax.random.key(0))
  target = jnp.array([0, 3, 4])
  w_BHWC = W[:, target].T.reshape(x.shape)
  np.testing.assert_allclose(A.gradient(forward, x, target), w_BHWC, rtol=1e-6)
  np.testing.assert_allclose(A.gradient_x_input(forward, x, target), w_BHWC * x, rtol=1e-6)
  np.testing.assert_allclose(A.absolute_gradient(forward, x, target), jnp.abs(w_BHWC), rtol=1e-6)
  np.testing.assert_allclose(A.abs_gradient_x_abs_input(forward, x, target), jnp.abs(w_BHWC * x), rtol=1e-6)
  baseline = jax.random.normal(jax.random.key(9), x.shape)
  for rule in A.RULES:
    ig = A.integrated_gradients(forward, x, target, baseline=baseline, steps=7, rule=rule)
    np.testing.assert_allclose(ig, (x - baseline) * w_BHWC, rtol=1e-5, atol=1e-6, err_msg=rule)


def test_quadrature_rules():
  alphas, weights = A.path_points("original", 100)
  np.testing.assert_allclose(alphas, np.arange(100) / 99, rtol=1e-6)
  np.testing.assert_allclose(weights, 0.01)
  # Exactness on polynomials: Gauss-Legendre with n points for degree 2n-1, trapezoid for degree 1.
  a, w = A.path_points("gauss_legendre", 3)
  assert np.dot(w, a**5) == pytest.approx(1 / 6, rel=1e-6)
  a, w = A.path_points("trapezoid", 2)
  assert np.dot(w, 3 * a + 1) == pytest.approx(2.5)
  a, w = A.path_points("left", 4)
  np.testing.assert_allclose(a, [0, 0.25, 0.5, 0.75])
  a, w = A.path_points("right", 4)
  np.testing.assert_allclose(a, [0.25, 0.5, 0.75, 1])
  with pytest.raises(ValueError, match="rule='simpson' is not allowed; choose one of: 'original'"):
    A.path_points("simpson", 10)
  with pytest.raises(ValueError, match="at least 2"):
    A.path_points("original", 1)


# ---------------------------------------------------------------- small CNN: completeness


@pytest.fixture(scope="module")
def small_cnn():
  model = models.create_model("small_cnn", channels=(8, 16))
  variables = models.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  forward = A.ModelForward(model, variables)
  return forward, x, A.select_targets(forward, x)


@pytest.mark.parametrize("output", A.OUTPUTS)
def test_ig_completeness_small_cnn(small_cnn, output):
  forward, x, target = small_cnn
  baseline = A.make_baseline("blur", x, blur_sigma=2.0)
  ig = jax.jit(lambda f, x, t: A.integrated_gradients(f, x, t, output=output, baseline=baseline, steps=256))(
      forward, x, target)
  expected = A.scores(forward, x, target, output) - A.scores(forward, baseline, target, output)
  np.testing.assert_allclose(ig.sum((1, 2, 3)), expected, rtol=0.01)


def test_ig_chunked_equals_unchunked(small_cnn):
  forward, x, target = small_cnn
  run = jax.jit(lambda f, x, t, chunk: A.integrated_gradients(f, x, t, steps=10, chunk_size=chunk, normalization="unit"),
                static_argnums=3)
  full = run(forward, x, target, None)
  scale = float(jnp.abs(full).max())
  for chunk in (3, 5):  # 10 points in chunks of 3 leaves a remainder
    # The same sums in another grouping: float32 reassociation moves the last bits, and by how much
    # depends on the CPU's vector width (1e-10 seen on a 2-core EPYC). A wrong chunk (a point
    # dropped or counted twice) moves the map by ~1/10 of its scale.
    np.testing.assert_allclose(run(forward, x, target, chunk), full, rtol=0, atol=1e-5 * scale)


def test_baselines():
  norm = Normalization(jnp.array([0.5, 0.4, 0.3]), jnp.array([0.2, 0.25, 0.3]))
  x = jnp.ones((2, 8, 8, 3))
  np.testing.assert_allclose(A.make_baseline("black", x, normalization=norm)[0, 0, 0], -jnp.array([2.5, 1.6, 1.0]))
  np.testing.assert_allclose(A.make_baseline("white", x, normalization=norm)[1, 7, 7], [2.5, 2.4, 7 / 3], rtol=1e-6)
  np.testing.assert_array_equal(A.make_baseline("zero", x), 0)
  np.testing.assert_array_equal(A.make_baseline("white", x, normalization="unit"), 1)  # pixels in [0, 1]
  # A colour without the input space is an error, never a guess: on normalised inputs [0, 1]'s
  # black is not black (here it would be 0 instead of -2.5, -1.6, -1).
  for colour in ("black", "white", "uniform"):
    with pytest.raises(ValueError, match="needs the input space"):
      A.make_baseline(colour, x, key=jax.random.key(0))
  with pytest.raises(ValueError, match="needs the input space"):
    A.integrated_gradients(lambda z: z.reshape(len(z), -1)[:, :3], x, jnp.zeros(2, jnp.int32))
  # Blurring keeps a constant image and the mean of a periodic one (reflecting borders aside).
  np.testing.assert_allclose(A.make_baseline("blur", 3 * x), 3 * x, rtol=1e-6)
  u = A.make_baseline("uniform", x, normalization=norm, key=jax.random.key(0))
  assert u.shape == x.shape and float(u.min()) >= -2.5 - 1e-6 and float(u.max()) <= 2.5 + 1e-6
  with pytest.raises(ValueError, match="needs an explicit random key"):
    A.make_baseline("uniform", x, normalization=norm)
  with pytest.raises(ValueError, match="baseline='grey' is not allowed"):
    A.make_baseline("grey", x)


# ---------------------------------------------------------------- hand-worked ReLU networks

# Two weight layers: z = W1 x, f = w2 . act(z). At x = (1, 2): z = (-3, 1, 4), relu(z) = (0, 1, 4),
# f = 7. The backward signal reaching the ReLUs is w2 = (1, -1, 2).
W1 = jnp.array([[1.0, -2.0], [-1.0, 1.0], [2.0, 1.0]])
W2 = jnp.array([[1.0], [-1.0], [2.0]])
X = jnp.array([1.0, 2.0]).reshape(1, 1, 1, 2)
T0 = jnp.array([0])


def _two_layer(activation):
  return lambda x: activation(x.reshape(x.shape[0], -1) @ W1.T) @ W2


def test_gradient_guided_backprop_deconvnet_by_hand():
  # gradient: W1^T (w2 * [z > 0]) = W1^T (0, -1, 2) = (5, 1)
  np.testing.assert_allclose(A.gradient(_two_layer(jax.nn.relu), X, T0).ravel(), [5, 1])
  # guided: only where z > 0 and the signal > 0: W1^T (0, 0, 2) = (4, 2)
  np.testing.assert_allclose(A.gradient(_two_layer(A.guided_relu), X, T0).ravel(), [4, 2])
  # deconvnet: relu of the signal whatever z is: W1^T (1, 0, 2) = (5, 0)
  np.testing.assert_allclose(A.gradient(_two_layer(A.deconv_relu), X, T0).ravel(), [5, 0])
  # the forward pass is an ordinary ReLU in all three
  for act in (A.guided_relu, A.deconv_relu, A.RectifiedReLU(50.0)):
    np.testing.assert_allclose(_two_layer(act)(X), [[7.0]])


def test_rectgrad_by_hand():
  # a * grad at the ReLUs: (0, 1, 4) * (1, -1, 2) = (0, -1, 8).
  rect = lambda q, absolute: A.gradient(_two_layer(A.RectifiedReLU(q, absolute)), X, T0).ravel()
  np.testing.assert_allclose(rect(50.0, False), [4, 2])  # tau = median 0: unit 3 only
  np.testing.assert_allclose(rect(0.0, False), [5, 0])  # tau = -1: units 1 and 3
  np.testing.assert_allclose(rect(0.0, True), [5, 1])  # |a g| = (0, 1, 8) > 0: units 2 and 3 (= gradient)
  np.testing.assert_allclose(rect(50.0, True), [4, 2])  # |a g| > 1: unit 3


class _BiasFreeNet(nn.Module):
  """Conv -> ReLU -> max-pool -> Dense -> ReLU -> Dense, no biases: LRP's textbook setting."""

  activation: object = nn.relu

  @nn.compact
  def __call__(self, x, train=False):
    x = self.activation(nn.Conv(4, (3, 3), use_bias=False)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = self.activation(nn.Dense(6, use_bias=False)(x.reshape(x.shape[0], -1)))
    return nn.Dense(3, use_bias=False)(x)


@pytest.fixture(scope="module")
def bias_free():
  model = _BiasFreeNet()
  variables = model.init(jax.random.key(3), jnp.zeros((1, 6, 6, 2)))
  forward = A.ModelForward(model, variables)
  x = jax.random.normal(jax.random.key(4), (5, 6, 6, 2))
  return forward, x, A.select_targets(forward, x)


def test_guided_backprop_is_the_gradient_when_every_signal_is_positive():
  model = models.create_model("mlp", hidden=(7, 5), num_classes=3)
  variables = models.init_variables(model, jax.random.key(0), (1, 2, 2, 3))
  positive = {"params": jax.tree.map(jnp.abs, variables["params"])}
  forward = A.ModelForward(model, positive)
  x = jax.random.normal(jax.random.key(1), (4, 2, 2, 3))
  target = jnp.array([0, 1, 2, 0])
  np.testing.assert_allclose(A.guided_backprop(forward, x, target), A.gradient(forward, x, target), rtol=1e-6)
  # ...and differs once signals of both signs meet a ReLU (the test can fail)
  mixed = A.ModelForward(model, variables)
  assert not np.allclose(A.guided_backprop(mixed, x, target), A.gradient(mixed, x, target))


def _lrp_by_hand(x, rule, eps=0.0, gamma=0.0):
  """Textbook LRP on the two-layer dense net above, numpy: R_j = sum_k z_jk / (z_k + stab) R_k."""
  x = np.asarray(x).ravel()
  w1, w2 = np.asarray(W1).T, np.asarray(W2)  # (in, out)
  a1 = np.maximum(x @ w1, 0)
  f = a1 @ w2

  def step(a, w, r):
    z_jk = a[:, None] * w
    if rule == "gamma":  # the generalized rule (zennit's Gamma): a unit's contributions of its own sign boosted
      z_k = z_jk.sum(0)
      boosted = z_jk + gamma * np.where(z_jk * z_k[None] > 0, z_jk, 0)
      z_b = boosted.sum(0)
      return (boosted * np.where(z_k != 0, r / np.where(z_b != 0, z_b, 1), 0)).sum(1)
    if rule == "alpha1beta0":
      z_jk = np.maximum(z_jk, 0)
    z_k = z_jk.sum(0)
    z_k = z_k + eps * np.where(z_k >= 0, 1, -1)
    safe = np.where(z_k != 0, z_k, 1)
    return (z_jk * np.where(z_k != 0, r / safe, 0)).sum(1)

  return step(x, w1, step(a1, w2, f))


class _TwoLayer(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.relu(nn.Dense(3, use_bias=False, name="d1")(x.reshape(x.shape[0], -1)))
    return nn.Dense(1, use_bias=False, name="d2")(h)


@pytest.mark.parametrize("rule,eps,gamma", [("zero", 0.0, 0.0), ("epsilon", 0.5, 0.0), ("alpha1beta0", 0.0, 0.0),
                                            ("gamma", 0.0, 0.25), ("gamma", 0.0, 3.0)])
def test_lrp_rules_by_hand(rule, eps, gamma):
  forward = A.ModelForward(_TwoLayer(), {"params": {"d1": {"kernel": W1.T}, "d2": {"kernel": W2}}})
  x = jnp.array([1.0, -2.0]).reshape(1, 1, 1, 2)  # a negative input, where z+ must split (a w)+ properly
  got = A.lrp(forward, x, T0, rule=rule, epsilon=eps, gamma=gamma).ravel()
  np.testing.assert_allclose(got, _lrp_by_hand(x, rule, eps, gamma), rtol=1e-6)


class _OneDense(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(1, use_bias=False, name="d")(x.reshape(x.shape[0], -1))


def test_lrp_gamma_on_signed_inputs_stays_bounded_and_conserves():
  # z = 1*1 + (-2)*1 + (-1.25)*(-1) = 0.25. The rule as first written boosts w+ whatever the input's
  # sign: its denominator 1.25 - 2.5 + 1.25 = 0 at gamma = 0.25 (and 0.01 at gamma = 0.24: every value
  # x25). The generalized rule boosts the contributions of z's sign, 1 and 1.25: 0.25 + 0.25 * 2.25.
  forward = A.ModelForward(_OneDense(), {"params": {"d": {"kernel": jnp.array([[1.0], [1.0], [-1.0]])}}})
  x = jnp.array([1.0, -2.0, -1.25]).reshape(1, 1, 1, 3)
  for gamma in (0.24, 0.25):
    got = np.asarray(A.lrp_gamma(forward, x, T0, gamma=gamma)).ravel()
    # a_j w_j, boosted where of z's sign, over the boosted sum.
    expected = np.array([1.0 * (1 + gamma), -2.0, 1.25 * (1 + gamma)]) * 0.25 / (0.25 + gamma * 2.25)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got.sum(), 0.25, rtol=1e-6)  # no bias: relevance conserved


class _OneBiasedDense(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(2, name="d")(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("gamma", [0.7, float("inf")])
def test_lrp_gamma_by_hand_with_a_bias_and_a_negative_output(gamma):
  # Unit 0: z = 1*2 + (-1)*1 + 0.5 = 1.5 > 0, whose positive parts are 1*2 and the bias 0.5.
  # Unit 1: z = 1*(-3) + (-1)*(-1) - 0.5 = -2.5 < 0, whose negative parts are 1*(-3) and the bias -0.5.
  # The relevance of the explained unit, z, goes to each input as its boosted part over the boosted sum
  # (the boosted bias keeps its share); gamma=inf keeps only the parts of z's sign.
  kernel = jnp.array([[2.0, -3.0], [1.0, -1.0]])
  forward = A.ModelForward(_OneBiasedDense(), {"params": {"d": {"kernel": kernel, "bias": jnp.array([0.5, -0.5])}}})
  x = jnp.array([1.0, -1.0]).reshape(1, 1, 1, 2)
  g = gamma
  parts = {0: (np.array([2.0, -1.0]), 0.5, np.array([True, False]), True),
           1: (np.array([-3.0, 1.0]), -0.5, np.array([True, False]), True)}
  for target, (contributions, bias, same_sign, bias_same) in parts.items():
    z = contributions.sum() + bias
    if g == float("inf"):
      boosted, boosted_bias = np.where(same_sign, contributions, 0.0), bias if bias_same else 0.0
    else:
      boosted, boosted_bias = contributions + g * np.where(same_sign, contributions, 0.0), bias * (1 + g)
    expected = boosted * z / (boosted.sum() + boosted_bias)
    got = np.asarray(A.lrp_gamma(forward, x, jnp.array([target]), gamma=g)).ravel()
    np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"unit {target}")


def test_lrp_0_is_gradient_x_input_on_a_bias_free_relu_network(bias_free):
  forward, x, target = bias_free
  np.testing.assert_allclose(A.lrp_0(forward, x, target), A.gradient_x_input(forward, x, target), rtol=1e-5,
                             atol=1e-7)


def test_lrp_epsilon_tends_to_lrp_0(bias_free):
  forward, x, target = bias_free
  lrp0 = A.lrp_0(forward, x, target)
  # Convergence is pointwise: it sets in once epsilon is below the smallest |z| of a layer.
  errors = [float(jnp.abs(A.lrp_epsilon(forward, x, target, epsilon=e) - lrp0).max()) for e in (1e-2, 1e-4, 1e-6, 1e-8)]
  assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-4 * float(jnp.abs(lrp0).max())


def test_lrp_alpha1beta0_conserves_relevance(bias_free):
  forward, x, target = bias_free
  relevance = A.lrp_alpha1beta0(forward, x, target)
  np.testing.assert_allclose(relevance.sum((1, 2, 3)), A.scores(forward, x, target), rtol=1e-5)
  assert not np.allclose(relevance, A.gradient_x_input(forward, x, target))


def test_lrp_gamma_limits(bias_free):
  forward, x, target = bias_free
  lrp0 = A.lrp_0(forward, x, target)
  # gamma=0 recomputes z as the sum of its positive and negative inputs' parts: float32 rounding, which
  # a unit whose z nearly cancels amplifies by |parts| / |z| (measured: up to 2.2e-5 of the map's
  # largest value with XLA's own convolutions, 1.3e-5 with the CPU lowering). A wrong rule is off by
  # order 1.
  np.testing.assert_allclose(A.lrp_gamma(forward, x, target, gamma=0.0), lrp0, rtol=1e-5,
                             atol=1e-4 * float(jnp.abs(lrp0).max()))
  near_inf = A.lrp_gamma(forward, x, target, gamma=1e6)
  np.testing.assert_allclose(A.lrp_gamma(forward, x, target, gamma=float("inf")), near_inf, rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------- CAM family, FullGrad


class _ConvGapDense(nn.Module):
  """conv -> ReLU -> global average pool -> dense: the network CAM was defined for."""

  @nn.compact
  def __call__(self, x, train=False):
    a = tap(self, "features", nn.relu(nn.Conv(5, (3, 3), name="conv")(x)))
    return nn.Dense(4, name="dense")(a.mean(axis=(1, 2)))


def test_gradcam_equals_cam_on_conv_gap_dense():
  model = _ConvGapDense()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  variables = {"params": variables["params"]}
  forward = A.ModelForward(model, variables)
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
  target = jnp.array([0, 2, 3])
  features = models.read_features(model, variables, x)["features"]
  w_KC = variables["params"]["dense"]["kernel"]
  cam = jnp.einsum("bhwk,kb->bhw", features, w_KC[:, target])
  expected = jax.nn.relu(cam) / (8 * 8)  # GradCAM's weights are CAM's divided by the pool size
  got = A.gradcam(forward, x, target, layer="features")
  np.testing.assert_allclose(got, jnp.broadcast_to(expected[..., None], x.shape), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(A.gradcam(forward, x, target), got)  # default layer: the last spatial one
  # GradCAM_Pos takes |w|; GradCAM++ weights are positive too: both differ from GradCAM here.
  expected_pos = jax.nn.relu(jnp.einsum("bhwk,kb->bhw", features, jnp.abs(w_KC[:, target]))) / 64
  np.testing.assert_allclose(A.gradcam_pos(forward, x, target)[..., 0], expected_pos, rtol=1e-5, atol=1e-7)


def test_guided_gradcam_is_the_product(small_cnn):
  forward, x, target = small_cnn
  np.testing.assert_allclose(
      A.guided_gradcam(forward, x, target, layer="features2"),
      A.gradcam(forward, x, target, layer="features2") * A.guided_backprop(forward, x, target), rtol=1e-6)


def test_fullgrad_decomposition_is_complete_on_a_resnet():
  # Piecewise linear (ReLU, max-pool, eval BatchNorm, residual sums): input term + bias terms = logit.
  model = models.create_model("resnet18", stage_sizes=(1, 1))
  variables = models.init_variables(model, jax.random.key(0), (1, 16, 16, 3))
  variables["batch_stats"] = jax.tree.map(lambda s: s + 0.3, variables["batch_stats"])  # non-trivial BN bias
  forward = A.ModelForward(model, variables)
  x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
  target = jnp.array([1, 5, 9])
  blocks = ("bn1", "layer1_0", "layer2_0", "fc")

  @jax.jit  # one program for all the maps below (op by op, each would compile its every primitive)
  def maps(forward, x, target):
    return {"decomposition": A.fullgrad_decomposition(forward, x, target), "scores": A.scores(forward, x, target),
            "saliency": A.fullgrad(forward, x, target), "blocks": A.fullgrad(forward, x, target, blocks=blocks),
            "stem": A.fullgrad(forward, x, target, blocks="bn1", with_input=False),
            "none": A.fullgrad(forward, x, target, blocks=(), with_input=False)}

  out = maps(forward, x, target)
  input_term, bias_terms = out["decomposition"]
  assert len(bias_terms) == 1 + 2 + 3 + 1  # bn1, block 1 (2 BN), block 2 (3 BN), fc
  total = input_term.sum((1, 2, 3)) + sum(b.reshape(3, -1).sum(1) for b in bias_terms)
  np.testing.assert_allclose(total, out["scores"], rtol=1e-4)
  saliency = out["saliency"]
  assert saliency.shape == x.shape and float(saliency.min()) >= 0
  # Per block and accumulated (positive aggregation, docs/evaluation.md, "Sanity checks"): a
  # block's map is its terms' normalised magnitudes; every block plus the input term is FullGrad
  # itself.
  np.testing.assert_allclose(out["blocks"], saliency, rtol=1e-6)
  peak = jnp.abs(bias_terms[0]).sum(-1).reshape(3, -1)  # bn1's term is input-sized here (no max-pool)
  np.testing.assert_array_equal(jnp.argmax(out["stem"][..., 0].reshape(3, -1), 1), jnp.argmax(peak, 1))
  assert float(out["none"].max()) == 0.0
  with pytest.raises(ValueError, match="'layer9' is not a layer with a bias"):  # found tracing, nothing computed
    jax.eval_shape(lambda: A.fullgrad(forward, x, target, blocks=("layer9",)))


def test_layer_methods_explain_what_they_need(small_cnn):
  forward, x, target = small_cnn
  with pytest.raises(ValueError, match="needs saliency_jax.attribution.ModelForward"):
    A.gradcam(lambda x: forward(x), x, target)
  with pytest.raises(ValueError, match="layer='conv9' is not a layer of SmallCNN; choose one of: 'conv1', 'features1'"):
    A.gradcam(forward, x, target, layer="conv9")
  with pytest.raises(ValueError, match="needs a spatial"):
    A.gradcam(forward, x, target, layer="logits")


# ---------------------------------------------------------------- noise wrappers


def test_smoothgrad_with_sigma_zero_is_the_wrapped_method(small_cnn):
  forward, x, target = small_cnn

  @jax.jit  # one program for all the maps below (op by op, each would compile its every primitive)
  def maps(forward, x, target, key):
    return {"smooth": A.smoothgrad(forward, x, target, sigma=0.0, samples=3, key=key),
            "gradient": A.gradient(forward, x, target),
            "smooth_ig": A.smoothgrad(forward, x, target, sigma=0.0, samples=2, key=key, method="integrated_gradients",
                                      method_options={"steps": 4, "normalization": "unit"}),
            "ig": A.integrated_gradients(forward, x, target, steps=4, normalization="unit"),
            "var": A.vargrad(forward, x, target, sigma=0.0, samples=3, key=key),
            "noisy": A.smoothgrad(forward, x, target, sigma=0.2, samples=3, key=key)}

  out = maps(forward, x, target, jax.random.key(0))
  np.testing.assert_allclose(out["smooth"], out["gradient"], rtol=1e-6)
  np.testing.assert_allclose(out["smooth_ig"], out["ig"], rtol=1e-6)
  np.testing.assert_allclose(out["var"], 0.0, atol=1e-12)
  assert not np.allclose(out["noisy"], out["gradient"])


@pytest.mark.parametrize("chunk_size", [None, 1, 3])  # 3 of 7 samples leaves a remainder
def test_smoothgrad_is_the_mean_over_the_noisy_copies_and_vargrad_their_variance(chunk_size):
  # On a linear model gradient x input at x + n is (x + n) w: SmoothGrad is x w + mean_s(n_s) w,
  # VarGrad var_s(n_s) w^2, with n_s the noise of the given key (sigma absolute), per sample.
  forward, W, x = _linear(jax.random.key(3), shape=(2, 3, 3, 2), classes=3)
  target = jnp.array([2, 0])
  w = np.asarray(W[:, target].T.reshape(x.shape), np.float64)
  key, samples, sigma = jax.random.key(4), 7, 0.3
  noise_S = sigma * np.asarray(noise.noise_samples(key, x, samples), np.float64)
  options = dict(method="gradient_x_input", sigma=sigma, sigma_mode="absolute", samples=samples, key=key,
                 chunk_size=chunk_size)
  scale = np.abs(np.asarray(x) * w).max()  # float32 products and sums of 7 terms: ~1e-7 of the largest
  np.testing.assert_allclose(A.smoothgrad(forward, x, target, **options), (np.asarray(x) + noise_S.mean(0)) * w,
                             rtol=0, atol=1e-6 * scale)
  np.testing.assert_allclose(A.vargrad(forward, x, target, **options), noise_S.var(0) * w**2, rtol=0,
                             atol=1e-6 * scale**2)


def test_smoothgrad_noise_scale():
  # A linear model's gradient ignores noise, so VarGrad of gradient x input is Var((x + n) w) = (s w)^2.
  forward, W, x = _linear(jax.random.key(1), shape=(2, 2, 2, 1), classes=2)
  target = jnp.array([0, 1])
  w = W[:, target].T.reshape(x.shape)
  var = A.vargrad(forward, x, target, method="gradient_x_input", sigma=0.5, sigma_mode="absolute", samples=20000,
                  key=jax.random.key(2))
  np.testing.assert_allclose(var, (0.5 * w) ** 2, rtol=0.05)


# ---------------------------------------------------------------- invariances


def _options(name, batch):
  """Small settings, and a key per image for every method that declares it needs one."""
  options = {}
  if "key" in A.registry.needs(name):
    options["key"] = jax.random.split(jax.random.key(5), batch)
  for option, value in (("samples", 3), ("steps", 6)):
    if option in A.registry.options_of(name):
      options[option] = value
  return options


def test_every_method_batched_on_4_devices_equals_one_by_one_on_1(small_cnn):
  # One comparison checks both invariances, at two compilations per method rather than three: the
  # 6 distinct images split 2, 2, 2 and (padded) 1 over the 4 devices, so a map that read another
  # image of its batch or of its device's shard, or a per-image key or row sent to the wrong
  # device, would differ from the map of that image alone on one device.
  forward, x, target = small_cnn
  x, target = jnp.concatenate([x, x[:2] * 0.5]), jnp.concatenate([target, target[:2]])  # 6: pads to 8 on 4
  one = A.Explainer(forward.model, forward.variables, normalization="unit", devices=jax.devices()[:1])
  four = A.Explainer(forward.model, forward.variables, normalization="unit", devices=jax.devices()[:4])
  assert four.mesh.size == 4
  # The package's methods (another test may have registered its own in this process).
  for name in [n for n, fn in A.METHODS.items() if inspect.unwrap(fn).__module__.startswith("saliency_jax.")]:
    sharded = np.asarray(four(name, x, target, **_options(name, 6)))
    singles = []
    for i in range(6):
      options = _options(name, 6)
      if "key" in options:
        options["key"] = options["key"][i:i + 1]
      singles.append(np.asarray(one(name, x[i:i + 1], target[i:i + 1], **options)))
    # Relative to the map's scale: batch shapes and shards change only float32 summation order
    # (about 1e-7 relative); another image's or key's map differs at order 1.
    scale = np.abs(sharded).max() + 1e-30
    np.testing.assert_allclose(np.concatenate(singles) / scale, sharded / scale, atol=1e-5, err_msg=name)


def test_explainer_runs_sharded_over_the_batch(small_cnn):
  forward, x, target = small_cnn
  four = A.Explainer(forward.model, forward.variables, normalization="unit", devices=jax.devices()[:4])
  out = four("integrated_gradients", x, steps=4)
  assert out.sharding.spec[0] == "data" and len(out.sharding.device_set) == 4
  np.testing.assert_array_equal(four.targets(x), target)


def test_each_device_maps_its_own_images_with_no_collective():
  # A vmapped while loop (ROAD's CG imputation) runs until every image has converged. Partitioned
  # by XLA over a split batch, that test was an all-reduce on every iteration, and on emulated CPU
  # devices such programs deadlocked now and then (a CI worker aborted after 600 s at a rendezvous).
  from saliency_jax.attribution.batching import BatchRunner
  halvings = lambda x_B: jax.vmap(lambda v: jax.lax.while_loop(lambda c: c[0] > 1, lambda c: (c[0] / 2, c[1] + 1),
                                                               (v, 0))[1])(x_B)
  runner = BatchRunner(jax.devices()[:4])
  x_B = jnp.asarray([1, 2, 3, 5, 8, 100, 1000, 1e6], jnp.float32)
  np.testing.assert_array_equal(runner.run("halvings", halvings, (x_B,)), [0, 1, 2, 3, 3, 7, 10, 20])  # ceil(log2 x)
  program = runner._compiled["halvings"].lower(jax.ShapeDtypeStruct(x_B.shape, x_B.dtype, sharding=runner._split))
  hlo = program.compile().as_text()
  assert "while" in hlo and not any(op in hlo for op in ("all-reduce", "all-gather", "collective-permute", "all-to-all"))


def test_one_key_gives_the_same_maps_on_any_number_of_devices(small_cnn):
  # Each device draws its own images' noise: one key for the batch, not split per image, would give
  # every device's first image the same noise (maps 0.8 of their scale apart from one device's).
  forward, x, target = small_cnn
  key = jax.random.key(3)
  one = A.Explainer(forward.model, forward.variables, normalization="unit", devices=jax.devices()[:1])
  four = A.Explainer(forward.model, forward.variables, normalization="unit", devices=jax.devices()[:4])
  for method, options in [("smoothgrad", dict(samples=4)), ("integrated_gradients", dict(baseline="uniform", steps=4))]:
    maps = [np.asarray(e(method, x, target, key=key, **options)) for e in (one, four)]
    scale = np.abs(maps[0]).max()
    np.testing.assert_allclose(maps[1] / scale, maps[0] / scale, atol=1e-5, err_msg=method)  # float32 sums


def test_a_baseline_image_as_tall_as_the_batch_is_one_for_all(small_cnn):
  forward, x, target = small_cnn
  explain = A.Explainer(forward.model, forward.variables, normalization="unit", devices=jax.devices()[:4])
  x = jnp.concatenate([x] * 32)[:32]  # 32 images of 32 x 32: the baseline's first axis is the batch's
  baseline = jnp.full(x.shape[1:], 0.5, jnp.float32)
  np.testing.assert_allclose(explain("integrated_gradients", x, steps=4, baseline=baseline),
                             explain("integrated_gradients", x, steps=4, baseline=jnp.broadcast_to(baseline, x.shape)),
                             rtol=1e-5, atol=1e-7)


def test_explainer_takes_a_method_in_the_configs_spelling(small_cnn):
  forward, x, _ = small_cnn
  explain = A.Explainer(forward.model, forward.variables, normalization="unit", devices=jax.devices()[:1])
  np.testing.assert_array_equal(explain("lrp_gamma(gamma=0.5)", x), explain("lrp_gamma", x, gamma=0.5))
  assert not np.allclose(explain("lrp_gamma(gamma=0.5)", x), explain("lrp_gamma", x))  # the option reached it
  with pytest.raises(ValueError, match="both set gamma"):
    explain("lrp_gamma(gamma=0.5)", x, gamma=0.1)
  with pytest.raises(ValueError, match="reduce= is the stages' channel reduction"):
    explain("gradient(reduce='abs_max')", x)
  with pytest.raises(ValueError, match="option 'gama' is not known"):
    explain("lrp_gamma(gama=0.5)", x)


# ---------------------------------------------------------------- registry, helpers


def test_registry_from_config(small_cnn):
  forward, x, target = small_cnn
  expected = A.integrated_gradients(forward, x, target, steps=5, rule="trapezoid", normalization="unit")
  cfg = ml_collections.ConfigDict({"name": "integrated_gradients",
                                   "options": {"steps": 5, "rule": "trapezoid", "normalization": "unit"}})
  np.testing.assert_allclose(A.from_config(cfg)(forward, x, target), expected, rtol=1e-6)
  # The one grammar of configs and the command line gives the same method.
  spec = "integrated_gradients(steps=5, rule='trapezoid', normalization='unit')"
  np.testing.assert_allclose(A.from_config(spec)(forward, x, target), expected, rtol=1e-6)
  with pytest.raises(ValueError, match="attribution.method='gradcm' is not allowed; choose one of: .*'gradcam'"):
    A.get("gradcm")
  with pytest.raises(ValueError, match="option 'step' is not known for attribution.method='integrated_gradients'"):
    A.from_config({"name": "integrated_gradients", "options": {"step": 5}})
  with pytest.raises(ValueError, match="output='probability' is not allowed"):
    A.gradient(forward, x, target, output="probability")


def test_select_targets(small_cnn):
  forward, x, _ = small_cnn
  np.testing.assert_array_equal(A.select_targets(forward, x), jnp.argmax(forward(x), -1))
  np.testing.assert_array_equal(A.select_targets(forward, x, jnp.array([1, 2, 3, 4]), "label"), [1, 2, 3, 4])
  with pytest.raises(ValueError, match="needs the labels"):
    A.select_targets(forward, x, which="label")


def test_reduce_channels_and_display():
  m = jnp.array([[[[1.0, -3.0, 2.0]]]])
  assert float(A.reduce_channels(m, "mean")[0, 0, 0]) == 0.0
  assert float(A.reduce_channels(m, "abs_mean")[0, 0, 0]) == 2.0
  assert float(A.reduce_channels(m, "max")[0, 0, 0]) == 2.0
  assert float(A.reduce_channels(m, "abs_max")[0, 0, 0]) == 3.0
  maps = jnp.array([[[-4.0, 1.0], [2.0, 0.0]]])
  np.testing.assert_allclose(A.normalize_for_display(maps, "signed", 100), [[[-1.0, 0.25], [0.5, 0.0]]])
  np.testing.assert_allclose(A.normalize_for_display(maps, "absolute", 100), [[[1.0, 0.25], [0.5, 0.0]]])
  with pytest.raises(ValueError, match="reduction='median' is not allowed"):
    A.reduce_channels(m, "median")


# ---------------------------------------------------------------- a researcher's own network, checked inputs


class _UserCNN(nn.Module):
  """A researcher's CNN: no `train` argument, no taps, a nested block."""

  tapped: bool = False

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
    x = _Block(name="block")(x)
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.Conv(6, (3, 3), name="conv3")(x)
    if self.tapped:  # the twin: the same function, conv3's output exposed the old way, as a tap
      x = tap(self, "conv3_tap", x)
    return nn.Dense(5, name="head")(nn.relu(x).mean(axis=(1, 2)))


class _Block(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(4, (3, 3), name="conv1")(x)) + x


@pytest.fixture(scope="module")
def user_cnn():
  model = _UserCNN()
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))
  variables = model.init(jax.random.key(1), x)
  return model, variables, x, jnp.array([0, 3, 4])


def test_a_user_cnn_without_train_or_taps_gets_gradcam_on_a_submodule_by_its_path(user_cnn):
  model, variables, x, target = user_cnn
  forward = A.ModelForward(model, variables)
  assert forward.layer_names(x) == ["conv1", "block/conv1", "block", "conv3", "head"]
  # The submodule's output, read and differentiated by interception, against the same network with
  # that output tapped (the mechanism the library's own models use, tested above): the same maps.
  twin = A.ModelForward(_UserCNN(tapped=True), variables)

  @jax.jit
  def maps(forward, twin, x, target):
    return (A.gradcam(forward, x, target, layer="conv3"), A.gradcam(twin, x, target, layer="conv3_tap"),
            A.gradcam_plusplus(forward, x, target, layer="block/conv1"), A.gradcam(forward, x, target))

  got, want, nested, default = maps(forward, twin, x, target)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert float(jnp.abs(got).max()) > 0 and nested.shape == x.shape
  np.testing.assert_allclose(default, got, rtol=1e-6)  # the last spatial layer: conv3
  value, grad = forward.layer_and_gradient(x, target, "block", "softmax")
  assert value.shape == grad.shape == (3, 8, 8, 4)
  with pytest.raises(ValueError, match="layer='conv9' is not a layer of _UserCNN; choose one of: 'conv1', "
                     "'block/conv1', 'block', 'conv3', 'head'"):
    A.gradcam(forward, x, target, layer="conv9")
  # The Explainer takes the model as it is too, by name, for any method that needs no activation swap.
  explain = A.Explainer(model, variables, devices=jax.devices()[:1])
  np.testing.assert_allclose(explain("gradcam", x, target, layer="conv3"), got, rtol=1e-5, atol=1e-7)
  fullgrad = explain("fullgrad", x, target)
  assert fullgrad.shape == x.shape and bool(jnp.isfinite(fullgrad).all())
  with pytest.raises(ValueError, match="_UserCNN has no 'activation' option to replace"):
    A.guided_backprop(forward, x, target)


def test_a_model_whose_call_needs_more_than_the_images_is_named():
  class Conditioned(nn.Module):
    @nn.compact
    def __call__(self, x, condition):
      return nn.Dense(2)(x.reshape(x.shape[0], -1)) * condition

  with pytest.raises(ValueError, match=r"Conditioned.__call__\(self, x, condition\) does not take the images alone"):
    A.ModelForward(Conditioned(), {})
  # nn.Sequential takes *args: the images alone, and its layers are named as flax names them.
  sequential = nn.Sequential([nn.Conv(3, (3, 3)), nn.relu, lambda y: y.mean((1, 2))])
  x = jnp.ones((2, 4, 4, 1))
  forward = A.ModelForward(sequential, sequential.init(jax.random.key(0), x))
  assert forward.layer_names(x) == ["layers_0"] and A.gradcam(forward, x, 1).shape == x.shape


def test_targets_are_checked_once_at_the_boundary(user_cnn):
  model, variables, x, _ = user_cnn
  forward = A.ModelForward(model, variables)
  # A Python int is every image's class: the same maps as the array.
  np.testing.assert_allclose(A.gradient(forward, x, 4), A.gradient(forward, x, jnp.array([4, 4, 4])), rtol=1e-6)
  bad = [(11, r"target 11 \(image 0\) is not a class of this forward: its 5 outputs are classes 0..4"),
         (5, "target 5"), (-1, "target -1"), (np.array([0, 1, 7]), r"target 7 \(image 2\)"),
         (jnp.zeros((3, 1), jnp.int32), r"target has shape \(3, 1\); give one class index per image, shape \(3,\)"),
         (jnp.array([1, 2]), r"target has shape \(2,\)"),
         (jax.nn.one_hot(jnp.array([0, 1, 2]), 5), r"target has dtype float32; .*jnp.argmax\(target, -1\)"),
         (2.0, "target=2.0 is not a class index"), ("predicted", "select_targets"), (True, "is not a class index")]
  for target, message in bad:
    with pytest.raises(ValueError, match=message):
      A.gradient(forward, x, target)
    with pytest.raises(ValueError, match=message):
      A.integrated_gradients(forward, x, target, baseline="zero", steps=2)
  # Traced (inside jit) the values are unknown until the program runs: an image whose target is not a
  # class gets a NaN map, never another class's (JAX's gather would clip 11 to class 4).
  maps = jax.jit(lambda f, x, t: A.gradient(f, x, t))(forward, x, jnp.array([1, 11, -1]))
  assert bool(jnp.isfinite(maps[0]).all()) and bool(jnp.isnan(maps[1:]).all())
  np.testing.assert_allclose(maps[0], A.gradient(forward, x, 1)[0], rtol=1e-6)
  # The Explainer checks concrete targets before compiling anything.
  explain = A.Explainer(model, variables, devices=jax.devices()[:1])
  with pytest.raises(ValueError, match=r"target 9 \(image 1\)"):
    explain("gradient", x, np.array([0, 9, 1]))
  np.testing.assert_allclose(explain("gradient", x, 2), A.gradient(forward, x, 2), rtol=1e-6)


def test_images_output_and_option_names_are_checked_once_at_the_boundary(user_cnn):
  model, variables, x, target = user_cnn
  forward = A.ModelForward(model, variables)
  nchw = jnp.zeros((3, 3, 8, 8))
  for method in (A.gradient, A.gradcam, A.integrated_gradients):
    with pytest.raises(ValueError, match=r"x_BHWC has shape \(3, 3, 8, 8\), an NCHW batch .* x.transpose\(0, 2, 3, 1\)"):
      method(forward, nchw, target)
  with pytest.raises(ValueError, match=r"x_BHWC has shape \(8, 8, 3\); .* one image\? add the batch axis: x\[None\]"):
    A.gradient(forward, x[0], target)
  with pytest.raises(ValueError, match="x_BHWC has dtype uint8"):
    A.gradient(forward, x.astype(jnp.uint8), target)
  with pytest.raises(ValueError, match="output='probability' is not allowed; choose one of: 'logit', 'softmax'"):
    A.gradcam(forward, x, target, output="probability")
  with pytest.raises(ValueError, match="option 'n_steps' is not known for attribution.method='integrated_gradients'"):
    A.integrated_gradients(forward, x, target, n_steps=50)  # captum's name: a ValueError, not a TypeError
  # A captum-style call takes the default baseline, a pixel colour: the error says exactly what to pass.
  with pytest.raises(ValueError, match="pass normalization= .* or pass baseline='zero'"):
    A.integrated_gradients(forward, x, target)


def _moded_body(x, eval_mode: bool):
  x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
  x = nn.BatchNorm(use_running_average=eval_mode, name="bn")(x)
  x = nn.Dropout(0.5, deterministic=eval_mode)(x)
  return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


class _Training(nn.Module):  # as a researcher first writes it: the mode is required
  @nn.compact
  def __call__(self, x, training: bool):
    return _moded_body(x, not training)


class _IsTraining(nn.Module):
  @nn.compact
  def __call__(self, x, is_training: bool):
    return _moded_body(x, not is_training)


class _RunningAverage(nn.Module):
  @nn.compact
  def __call__(self, x, use_running_average: bool):
    return _moded_body(x, use_running_average)


@pytest.mark.parametrize("cls,mode", [(_Training, {"training": False}), (_IsTraining, {"is_training": False}),
                                      (_RunningAverage, {"use_running_average": True})])
def test_the_other_spellings_of_eval_mode_are_set(cls, mode):
  model, x = cls(), jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  variables = model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x, **mode)
  variables = {**variables, "batch_stats": jax.tree.map(lambda v: v + 0.5, variables["batch_stats"])}
  forward = A.ModelForward(model, variables)
  # Eval mode: no dropout key needed, the stored statistics used, the same logits every call.
  np.testing.assert_array_equal(forward(x), model.apply(variables, x, **mode))
  assert A.gradcam(forward, x, 1, layer="conv1").shape == x.shape


class _TwoModes(nn.Module):  # Dropout's and BatchNorm's own spellings, both: both are set
  @nn.compact
  def __call__(self, x, deterministic: bool, use_running_average: bool):
    x = nn.BatchNorm(use_running_average=use_running_average)(nn.Conv(4, (3, 3))(x))
    return nn.Dense(3)(nn.Dropout(0.5, deterministic=deterministic)(x).mean(axis=(1, 2)))


def test_a_model_taking_two_spellings_of_eval_mode_gets_both():
  model, x = _TwoModes(), jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  variables = model.init(jax.random.key(1), x, deterministic=True, use_running_average=True)
  np.testing.assert_array_equal(A.ModelForward(model, variables)(x),
                                model.apply(variables, x, deterministic=True, use_running_average=True))


def test_modified_relu_methods_refuse_a_network_that_is_not_relu():
  class Net(nn.Module):
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(self.activation(nn.Conv(4, (3, 3))(x)).mean(axis=(1, 2)))

  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  variables = Net().init(jax.random.key(1), x)
  for activation in (nn.gelu, jnp.tanh, nn.leaky_relu, nn.silu, jax.nn.relu6):
    forward = A.ModelForward(Net(activation=activation), variables)
    for method in (A.guided_backprop, A.deconvnet, A.rectgrad, A.guided_gradcam):
      with pytest.raises(ValueError, match="Net.activation is .*, not a ReLU: Guided Backprop, Deconvnet and RectGrad"):
        method(forward, x, 1)
  # Any ReLU passes, however it is written, also while jax.jit traces; and the map is the guided one.
  for activation in (nn.relu, lambda v: jnp.maximum(v, 0.0)):
    forward = A.ModelForward(Net(activation=activation), variables)
    got = jax.jit(A.guided_backprop)(forward, x, 1)
    want = A.gradient(A.ModelForward(Net(activation=A.guided_relu), variables), x, 1)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("norm", [nn.LayerNorm, lambda **kw: nn.GroupNorm(num_groups=2, **kw), nn.RMSNorm,
                                  nn.InstanceNorm, lambda **kw: nn.SelfAttention(num_heads=1, **kw)])
def test_lrp_refuses_normalisation_by_the_input_s_own_statistics(norm):
  class Normed(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(norm(name="norm")(nn.Conv(4, (3, 3), use_bias=False, name="conv")(x)))
      return nn.Dense(3, use_bias=False)(x.mean(axis=(1, 2)))

  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  forward = A.ModelForward(Normed(), Normed().init(jax.random.key(1), x))
  # Across a LayerNorm, input x gradient sums to 0 (the output is unchanged when the input is scaled):
  # passed through, relevance would vanish without a word.
  for method in (A.lrp_0, A.lrp_epsilon, A.lrp_gamma, A.lrp_alpha1beta0):
    with pytest.raises(ValueError, match=r"LRP has no rule for (LayerNorm|GroupNorm|RMSNorm|InstanceNorm|"
                       r"SelfAttention) \(at norm\)"):
      method(forward, x, 1)


class _Flat(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_keys_as_jax_makes_them_old_and_new():
  f = lambda x: x.reshape(x.shape[0], -1)[:, :3] ** 2
  for batch in (2, 4):  # 2: PRNGKey(0)'s own shape, (2,), once read as two per-image keys
    x = jax.random.normal(jax.random.key(0), (batch, 4, 4, 1))
    new = A.smoothgrad(f, x, 0, key=jax.random.key(7), samples=3)
    np.testing.assert_array_equal(A.smoothgrad(f, x, 0, key=jax.random.PRNGKey(7), samples=3), new)
    keys = jax.random.split(jax.random.key(7), batch)
    np.testing.assert_array_equal(A.smoothgrad(f, x, 0, key=jax.random.key_data(keys), samples=3),
                                  A.smoothgrad(f, x, 0, key=keys, samples=3))
  # The Explainer, which splits per-image options over the devices, takes a raw key for 2 images as one key.
  flat = _Flat()
  explain = A.Explainer(flat, flat.init(jax.random.key(0), x[:2]))  # every device: 2 images padded to 4
  np.testing.assert_allclose(explain("smoothgrad", x[:2], 0, key=jax.random.PRNGKey(7), samples=3),
                             explain("smoothgrad", x[:2], 0, key=jax.random.key(7), samples=3), rtol=1e-6)
  with pytest.raises(ValueError, match=r"key=0 is a seed, not a random key; pass key=jax.random.key\(0\)"):
    A.smoothgrad(f, x, 0, key=0)
  with pytest.raises(ValueError, match=r"smoothgrad/vargrad: key has shape \(3,\); give one key .* shape \(4,\)"):
    A.smoothgrad(f, x, 0, key=jax.random.split(jax.random.key(0), 3))
  # IG's uniform baseline takes the same keys, one per image too: batched equals one by one.
  keys = jax.random.split(jax.random.key(3), 4)
  ig = lambda x, k: A.integrated_gradients(f, x, 0, baseline="uniform", normalization="unit", steps=4, key=k)
  np.testing.assert_allclose(ig(x, keys)[1:2], ig(x[1:2], keys[1:2]), rtol=1e-6)
  np.testing.assert_array_equal(ig(x, jax.random.PRNGKey(3)), ig(x, jax.random.key(3)))
  with pytest.raises(ValueError, match=r"baseline has shape \(8, 8, 1\); give one shaped like the images \(4, 4, 4, 1\)"):
    A.integrated_gradients(f, x, 0, baseline=jnp.zeros((8, 8, 1)), steps=4)
  np.testing.assert_array_equal(A.integrated_gradients(f, x, 0, baseline=jnp.zeros((4, 4, 1)), steps=4),
                                A.integrated_gradients(f, x, 0, baseline="zero", steps=4))
