"""Models: exact torchvision layouts, initialisation, options, named activations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import models
from saliency_jax.models import vgg


def _shapes(name, **options):
  model = models.create_model(name, **options)
  return model, jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), (2, 32, 32, 3)))


@pytest.mark.parametrize("name,expected", [("resnet18", 11_173_962), ("vgg16", 134_301_514)])
def test_parameter_counts_match_torchvision(name, expected):
  _, variables = _shapes(name)
  assert models.count_params(variables["params"]) == expected


def test_resnet_without_maxpool_has_the_same_parameters_and_bigger_maps():
  with_pool, v1 = _shapes("resnet18")
  without, v2 = _shapes("resnet18", maxpool=False)
  assert models.count_params(v1["params"]) == models.count_params(v2["params"])
  x = jnp.zeros((1, 32, 32, 3))
  f1 = jax.eval_shape(lambda v: models.read_features(with_pool, v, x), v1)
  f2 = jax.eval_shape(lambda v: models.read_features(without, v, x), v2)
  assert f1["stem"].shape == (1, 16, 16, 64) and f2["stem"].shape == (1, 32, 32, 64)
  assert f1["layer4"].shape == (1, 2, 2, 512) and f2["layer4"].shape == (1, 4, 4, 512)


@pytest.mark.parametrize("name", ["resnet18", "small_cnn", "mlp"])
def test_output_shapes_and_batch_independence(name):
  model = models.create_model(name, num_classes=7)
  variables = models.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
  x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32
  # Inference is per image: the batch's logits equal each image's own.
  one = jnp.concatenate([model.apply(variables, x[i:i + 1], train=False) for i in range(3)])
  np.testing.assert_allclose(logits, one, rtol=1e-5, atol=1e-5)


def test_vgg16_forward_shape_and_dropout_only_in_training():
  model = models.create_model("vgg16")
  variables = models.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  eval_logits = model.apply(variables, x, train=False)
  assert eval_logits.shape == (2, 10)
  np.testing.assert_array_equal(eval_logits, model.apply(variables, x, train=False))
  train_logits = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(train_logits, eval_logits)


def test_vgg_classifier_on_a_replicated_1x1_map_equals_the_full_product():
  # A 4x4 input pools to 1x1, which the adaptive pool replicates 49 times: VGG reads one copy.
  model = models.create_model("vgg16", layout=(8, "M", 8, "M"))
  variables = models.init_variables(model, jax.random.key(0), (1, 4, 4, 3))
  x = jax.random.normal(jax.random.key(1), (3, 4, 4, 3))
  weights = jax.random.normal(jax.random.key(2), (3, 4096))

  def fc1(kernel, replicated):
    params = {**variables["params"], "classifier_0": {**variables["params"]["classifier_0"], "kernel": kernel}}
    _, state = model.apply({**variables, "params": params}, x, mutable=["intermediates"])
    pooled = state["intermediates"]["block2"][0]
    flat = jnp.transpose(vgg.adaptive_avg_pool(pooled, (7, 7)), (0, 3, 1, 2)).reshape(3, -1)
    full = jax.nn.relu(flat @ kernel + params["classifier_0"]["bias"])
    return jnp.sum((state["intermediates"]["fc1"][0] if replicated else full) * weights)

  kernel = variables["params"]["classifier_0"]["kernel"]
  assert kernel.shape == (8 * 49, 4096)
  np.testing.assert_allclose(fc1(kernel, True), fc1(kernel, False), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(fc1)(kernel, True), jax.grad(fc1)(kernel, False), rtol=1e-5, atol=1e-6)


def test_adaptive_avg_pool_matches_torch_bins():
  # torch.nn.AdaptiveAvgPool2d((2, 2)) on a 3x3 map: bins rows/cols [0, 2) and [1, 3).
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  out = vgg.adaptive_avg_pool(x, (2, 2))[0, :, :, 0]
  np.testing.assert_allclose(out, [[(0 + 1 + 3 + 4) / 4, (1 + 2 + 4 + 5) / 4], [(3 + 4 + 6 + 7) / 4, (4 + 5 + 7 + 8) / 4]])
  # A 1x1 map (VGG16 on CIFAR) is replicated to 7x7.
  y = jnp.arange(4.0).reshape(1, 1, 1, 4)
  np.testing.assert_array_equal(vgg.adaptive_avg_pool(y, (7, 7)), jnp.broadcast_to(y, (1, 7, 7, 4)))


def test_torch_padding_keeps_stride_two_maps_aligned():
  # A 3x3/2 conv with padding 1 on a 4x4 input reads rows (-1,0,1) and (1,2,3) as in torch;
  # flax 'SAME' would read (0,1,2) and (2,3,4).
  conv = nn.Conv(1, (3, 3), strides=(2, 2), padding=models.common.torch_padding(3), use_bias=False)
  x = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(1.0)
  kernel = jnp.zeros((3, 3, 1, 1)).at[1, 1, 0, 0].set(1.0)  # picks the centre of each window
  out = conv.apply({"params": {"kernel": kernel}}, x)
  assert out[0, 0, 0, 0] == 1.0  # the first window is centred on pixel (0, 0)


def test_torchvision_initialisation_statistics():
  params = models.init_variables(models.create_model("resnet18"), jax.random.key(0), (1, 32, 32, 3))["params"]
  kernel = params["layer3_0"]["conv1"]["kernel"]  # 3x3, 128 -> 256: fan_out = 9 * 256
  assert abs(float(jnp.std(kernel)) - np.sqrt(2 / (9 * 256))) < 0.02 * np.sqrt(2 / (9 * 256))
  bound = 1 / np.sqrt(512)
  kernel_max = float(jnp.max(jnp.abs(params["fc"]["kernel"])))
  assert 0.99 * bound < kernel_max <= bound  # U(-1/sqrt(512), 1/sqrt(512)), 5120 draws
  assert 0 < float(jnp.max(jnp.abs(params["fc"]["bias"]))) <= bound
  bn = params["layer1_0"]["bn1"]
  assert np.all(bn["scale"] == 1) and np.all(bn["bias"] == 0)
  vgg_params = jax.jit(lambda k: models.init_variables(models.create_model("vgg16"), k, (1, 32, 32, 3)))(
      jax.random.key(0))["params"]
  fc = vgg_params["classifier_3"]
  assert abs(float(jnp.std(fc["kernel"])) - 0.01) < 0.0005 and np.all(fc["bias"] == 0)
  assert np.all(vgg_params["features_0"]["bias"] == 0)


def test_activation_is_a_constructor_option():
  # With the identity as activation the MLP is affine: f(-x) - f(0) = -(f(x) - f(0)).
  # With ReLU it is not (it is only positively homogeneous).
  x = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))
  odd = []
  for activation in (lambda z: z, "relu"):
    model = models.create_model("mlp", activation=activation)
    variables = models.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
    f = lambda v: model.apply(variables, v)
    odd.append(np.allclose(f(-x) - f(0 * x), -(f(x) - f(0 * x)), rtol=1e-4, atol=1e-4))
  assert odd == [True, False]


def test_feature_gradients_match_closed_form():
  # logits = hidden2 @ W + b, so d logits[:, k] / d hidden2 = W[:, k] for every image.
  model = models.create_model("mlp", hidden=(16, 8))
  variables = models.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  feats, grads = models.feature_gradients(model, variables, x, ["hidden2"], lambda logits: logits[:, 3].sum())
  assert feats["hidden2"].shape == (4, 8)
  w = variables["params"]["out"]["kernel"]
  np.testing.assert_allclose(grads["hidden2"], jnp.broadcast_to(w[:, 3], (4, 8)), rtol=1e-6)
  # Taps do not change the forward pass.
  np.testing.assert_array_equal(model.apply(variables, x), models.read_features(model, variables, x)["logits"])


def test_layers_are_listed_in_the_order_the_network_computes_them():
  # Alphabetical order would put 'layer4' before 'stem' and 'block5' before 'conv1_1'.
  assert models.feature_names(models.create_model("resnet18")) == [
      "stem", "layer1_0", "layer1_1", "layer1", "layer2_0", "layer2_1", "layer2", "layer3_0", "layer3_1", "layer3",
      "layer4_0", "layer4_1", "layer4", "pooled", "logits"]
  vgg = models.feature_names(models.create_model("vgg16"))
  assert vgg[:3] == ["conv1_1", "conv1_2", "block1"] and vgg[-6:] == ["conv5_2", "conv5_3", "block5", "fc1", "fc2",
                                                                     "logits"]
  assert models.feature_names(models.create_model("small_cnn")) == ["features1", "features2", "logits"]


@pytest.mark.parametrize("name, layer", [("resnet18", "layer4"), ("vgg16", "conv5_3"), ("small_cnn", "features2")])
def test_the_default_cam_layer_is_the_last_computed_spatial_one(name, layer):
  from saliency_jax.attribution import cam, core  # pylint: disable=g-import-not-at-top

  model = models.create_model(name)
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), (1, 32, 32, 3)))
  forward = core.ModelForward(model, variables)
  assert cam.default_layer(forward, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)) == layer


def test_bfloat16_compute_keeps_float32_parameters():
  model = models.create_model("small_cnn", dtype="bfloat16")
  variables = models.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert model.apply(variables, jnp.ones((2, 32, 32, 3))).dtype == jnp.bfloat16


@pytest.mark.parametrize("call,field", [
    (lambda: models.create_model("resnet50"), "model.name"),
    (lambda: models.create_model("vgg16", maxpool=False), "maxpool"),
    (lambda: models.create_model("mlp", activation="no_such_fn"), "model.activation"),
    (lambda: models.create_model("mlp", dtype="float16"), "train.dtype"),
])
def test_bad_model_settings_name_the_field(call, field):
  with pytest.raises(ValueError, match=field):
    call()


