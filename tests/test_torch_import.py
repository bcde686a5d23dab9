"""Importing PyTorch state_dicts (models/torch_import.py): a round trip without torch, then
logits and input gradients against the same weights in torch (skipped without torch)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import attribution, models
from saliency_jax.models import torch_import


def _random_variables(name, seed=0, input_shape=(1, 32, 32, 3), zeros=False, **options):
  """A model and variables of its own shapes, every leaf random (so no two leaves coincide, as
  BatchNorm's init scale 1 and var 1 would); `zeros`: free read-only zeros, for names only."""
  model = models.create_model(name, **options)
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), input_shape))
  rng = np.random.default_rng(seed)
  draw = ((lambda s: np.broadcast_to(np.float32(0), s.shape)) if zeros
          else (lambda s: rng.standard_normal(s.shape, dtype=np.float32)))
  return model, jax.tree.map(draw, shapes)


# torchvision's vgg16: the Conv2d indices in `features` (ReLUs and max-pools take the others), and
# the Flax VGG's conv names (their index in VGG16_LAYOUT), in the same order.
TORCHVISION_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
FLAX_VGG16_CONVS = (0, 1, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16)


def _hand_made_state_dict(variables, flat_nhwc=None):
  """The inverse mapping, written out independently of the importer: torchvision names and
  layouts from Flax's. `flat_nhwc`: {dense layer: (H, W, C)} of layers on a NHWC-flattened map."""
  vgg_convs = {f"features_{f}": f"features.{t}" for f, t in zip(FLAX_VGG16_CONVS, TORCHVISION_VGG16_CONVS)}
  state = {}
  for collection, tree in variables.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      names = [p.key for p in path]
      module = ".".join(vgg_convs.get(n, n) for n in names[:-1])
      module = module.replace("downsample_conv", "downsample.0").replace("downsample_bn", "downsample.1")
      module = module.replace("_", ".")  # layer1_0 -> layer1.0, classifier_3 -> classifier.3
      leaf = np.asarray(leaf)
      if collection == "batch_stats":
        state[f"{module}.running_{names[-1]}"] = leaf
        state[f"{module}.num_batches_tracked"] = np.asarray(7, np.int64)
      elif names[-1] == "scale":
        state[f"{module}.weight"] = leaf
      elif names[-1] == "kernel" and leaf.ndim == 4:
        state[f"{module}.weight"] = leaf.transpose(3, 2, 0, 1)
      elif names[-1] == "kernel" and flat_nhwc and names[-2] in flat_nhwc:
        h, w, c = flat_nhwc[names[-2]]
        state[f"{module}.weight"] = leaf.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(leaf.shape[1], -1)
      elif names[-1] == "kernel":
        state[f"{module}.weight"] = leaf.T
      else:
        state[f"{module}.{names[-1]}"] = leaf
  return state


FLAT_NHWC = {"resnet18": None, "vgg16": None, "small_cnn": {"out": (8, 8, 64)}}


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "small_cnn"])
def test_round_trip_of_a_hand_made_state_dict(name):
  _, variables = _random_variables(name)
  state = _hand_made_state_dict(variables, FLAT_NHWC[name])
  _, imported = torch_import.from_torch(state, name)
  assert jax.tree.structure(imported) == jax.tree.structure(variables)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(imported)[0], jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), b, err_msg=jax.tree_util.keystr(path))


def test_resnet_key_names_are_torchvisions():
  _, variables = _random_variables("resnet18", zeros=True)
  keys = set(_hand_made_state_dict(variables))
  assert {"conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight",
          "layer4.1.bn2.bias", "fc.weight", "fc.bias"} <= keys
  assert "layer1.0.downsample.0.weight" not in keys  # stage 1 keeps its shape: no downsample


def test_vgg_key_names_are_torchvisions():
  _, variables = _random_variables("vgg16", zeros=True)
  keys = set(_hand_made_state_dict(variables))
  expected = {f"features.{i}.{p}" for i in TORCHVISION_VGG16_CONVS for p in ("weight", "bias")}
  expected |= {f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")}
  assert keys == expected


def test_npz_file_round_trip(tmp_path):
  _, variables = _random_variables("small_cnn")
  state = _hand_made_state_dict(variables, FLAT_NHWC["small_cnn"])
  np.savez(tmp_path / "small.npz", **state)
  _, imported = torch_import.from_torch(tmp_path / "small.npz", "small_cnn")
  np.testing.assert_array_equal(imported["params"]["out"]["kernel"], variables["params"]["out"]["kernel"])


def test_every_missing_or_unexpected_key_and_shape_mismatch_is_named():
  _, variables = _random_variables("resnet18")
  state = _hand_made_state_dict(variables)
  del state["fc.bias"]
  state["fc.extra"] = np.zeros(3, np.float32)
  state["conv1.weight"] = np.zeros((64, 3, 7, 7), np.float32)  # torchvision's standard stem
  with pytest.raises(ValueError) as info:
    torch_import.from_torch(state, "resnet18")
  message = str(info.value)
  assert "missing key 'fc.bias' (expected shape (10,))" in message
  assert "unexpected key 'fc.extra'" in message
  assert "key 'conv1.weight' has shape (64, 3, 7, 7), expected (64, 3, 3, 3)" in message and "7x7" in message


def test_a_classifier_of_another_size_names_num_classes():
  # torchvision's own resnet18 has 1000 classes: the error says which num_classes the file has.
  imagenet = _hand_made_state_dict(_random_variables("resnet18", zeros=True, num_classes=1000)[1])
  with pytest.raises(ValueError, match=r"key 'fc.weight' has shape \(1000, 512\), expected \(10, 512\) \(its model "
                     r"has 1000 classes: pass num_classes=1000; in a config model.num_classes=1000"):
    torch_import.from_torch(imagenet, "resnet18")
  model, _ = torch_import.from_torch(imagenet, "resnet18", num_classes=1000)
  assert model.num_classes == 1000


def test_standard_7x7_stem_keeps_the_parameter_names_and_halves_the_map_twice():
  _, cifar = _random_variables("resnet18", zeros=True)
  model, standard = _random_variables("resnet18", stem="7x7")
  assert jax.tree.structure(standard) == jax.tree.structure(cifar)  # same names: only conv1's shape differs
  assert standard["params"]["conv1"]["kernel"].shape == (7, 7, 3, 64)
  # torchvision's stem on 32x32: conv 7x7/2 pad 3 -> floor((32 + 6 - 7) / 2) + 1 = 16, max-pool 3x3/2 pad 1 -> 8.
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  assert models.feature_shapes(model, standard, x)["stem"].shape == (1, 8, 8, 64)
  assert models.feature_shapes(models.create_model("resnet18"), cifar, x)["stem"].shape == (1, 16, 16, 64)
  _, imported = torch_import.from_torch(_hand_made_state_dict(standard), "resnet18", stem="7x7")
  np.testing.assert_array_equal(imported["params"]["conv1"]["kernel"], standard["params"]["conv1"]["kernel"])
  with pytest.raises(ValueError, match="CIFAR 3x3/1 stem: pass stem='3x3'"):
    torch_import.from_torch(_hand_made_state_dict(cifar), "resnet18", stem="7x7")


def test_num_batches_tracked_only_ignored_on_batchnorms():
  _, variables = _random_variables("small_cnn")
  state = _hand_made_state_dict(variables, FLAT_NHWC["small_cnn"])
  state["conv1.num_batches_tracked"] = np.asarray(1)  # conv1 is no BatchNorm here
  with pytest.raises(ValueError, match="unexpected key 'conv1.num_batches_tracked'"):
    torch_import.from_torch(state, "small_cnn")


def test_the_module_imports_without_torch():
  code = "import sys; sys.modules['torch'] = None; import saliency_jax.models.torch_import"
  subprocess.run([sys.executable, "-c", code], check=True)


# With torch: the same weights in torch.nn and in Flax give the same logits and input gradients.


def _torch_model(name):
  torch = pytest.importorskip("torch")
  from benchmarks import faithfulness_throughput, torch_reference  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  if name == "small_cnn":
    net = faithfulness_throughput.torch_small_cnn()
  else:
    net, _ = torch_reference.build_model(name, arch_source="torch.nn")
  torch_reference.randomize_batchnorm(net, biases=True)  # so every mapped tensor matters
  return torch, net.eval()


def _torch_input_gradient(torch, net, x, target):
  """captum's Saliency without abs (the plain input gradient) when captum is there, else autograd."""
  try:
    from captum.attr import Saliency  # pylint: disable=g-import-not-at-top
    return Saliency(net).attribute(x, target=target, abs=False).numpy()
  except ImportError:
    x = x.clone().requires_grad_(True)
    net(x).gather(1, target[:, None]).sum().backward()
    return x.grad.numpy()


# Logits of vgg16 at 64x64: on 32x32 its 7x7 adaptive pool replicates a 1x1 map, which would hide a
# wrong spatial order of classifier.0's rows; at 64x64 the last map is 2x2 and the 49 bins differ.
# Gradients at 32x32: a max-pool window whose two largest values are closer than float32 rounding
# routes the gradient to either one (torch and XLA round differently), a legitimate difference that
# the many windows of VGG16 at 64x64 do hit (seed 1: one block-3 window, 0.565984 vs 0.5659844).
@pytest.mark.parametrize("name,size", [("resnet18", 32), ("vgg16", 64), ("small_cnn", 32)])
def test_logits_and_input_gradients_match_torch(name, size, tmp_path):
  torch, net = _torch_model(name)
  torch.set_num_threads(1)
  path = tmp_path / "weights.pt"
  torch.save(net.state_dict(), path)
  model, variables = torch_import.from_torch(path, name, input_shape=(1, size, size, 3))

  rng = np.random.default_rng(1)
  x_nchw = rng.standard_normal((2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(x_nchw)).numpy()
  logits = np.asarray(model.apply(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)), train=False))
  # float32 throughout, with different summation orders (oneDNN vs XLA): the rounding differences
  # grow to ~1e-6 of the logits' scale over the network; a mapping error is of order 1.
  np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())

  x_nchw = x_nchw[:, :, :32, :32].copy()
  target = np.array([3, 7])
  grad_torch = _torch_input_gradient(torch, net, torch.from_numpy(x_nchw), torch.from_numpy(target))
  forward = attribution.ModelForward(model, variables)
  grad = attribution.gradient(forward, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)), jnp.asarray(target))
  grad = np.asarray(grad).transpose(0, 3, 1, 2)
  np.testing.assert_allclose(grad, grad_torch, rtol=0, atol=1e-5 * np.abs(grad_torch).max())


def test_standard_resnet18_logits_match_torchvision():
  torch = pytest.importorskip("torch")
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  torch.set_num_threads(1)
  # torchvision's resnet18 itself where it imports, else its torch.nn copy with the same stem and names.
  net, _ = torch_reference.build_model("resnet18", arch_source="auto", stem="7x7")
  with torch.no_grad():  # non-trivial BatchNorm statistics, so every mapped tensor matters
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 2.0)
  model, variables = torch_import.from_torch(net.state_dict(), "resnet18", stem="7x7", input_shape=(1, 64, 64, 3))
  # 64x64: the stem leaves 16x16 and layer4 a 2x2 map, so a misaligned stride or padding shows.
  x_nchw = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(x_nchw)).numpy()
  logits = np.asarray(model.apply(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)), train=False))
  # float32 with different summation orders: ~1e-6 of the logits' scale; a wrong stem is of order 1.
  np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


# The single-pixel grid and the sanity studies on weights trained elsewhere
# (`model.torch_weights`): a .pt where torch is installed, else the same mapping from an .npz.


def _weights_file(fmt, tmp_path):
  """(path, forward of the weights as the source framework computes it) for a small_cnn (4, 8)."""
  if fmt == "pt":
    torch = pytest.importorskip("torch")
    from benchmarks import faithfulness_throughput  # pylint: disable=g-import-not-at-top
    torch.manual_seed(0)
    net = faithfulness_throughput.torch_small_cnn(channels=(4, 8)).eval()
    torch.save(net.state_dict(), tmp_path / "weights.pt")

    def forward(x_BHWC):
      with torch.no_grad():
        return net(torch.from_numpy(np.asarray(x_BHWC).transpose(0, 3, 1, 2).copy())).numpy()

    return tmp_path / "weights.pt", forward
  model, variables = _random_variables("small_cnn", channels=(4, 8))
  np.savez(tmp_path / "weights.npz", **_hand_made_state_dict(variables, {"out": (8, 8, 8)}))
  return tmp_path / "weights.npz", lambda x_BHWC: np.asarray(model.apply(variables, x_BHWC, train=False))


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_grid_and_sanity_evaluate_weights_trained_elsewhere(tmp_path, tiny_config, fmt):
  from saliency_jax import data as data_lib, pipeline  # pylint: disable=g-import-not-at-top
  from saliency_jax.config_checks import ConfigError  # pylint: disable=g-import-not-at-top
  from saliency_jax.stages import single_pixel as run  # pylint: disable=g-import-not-at-top
  path, forward = _weights_file(fmt, tmp_path)
  config = tiny_config
  config.model.channels, config.model.torch_weights, config.train.enabled = (4, 8), str(path), False
  sp = config.single_pixel
  sp.methods, sp.targets, sp.outputs, sp.test_jitter = ("gradient",), ("predicted",), ("logit",), ((0.0, 0.0),)
  sp.max_images, sp.batch_size, sp.examples = 20, 10, 0
  s = config.sanity
  s.studies, s.methods, s.num_images, s.batch_size, s.strip_images = ("class_sensitivity",), ("gradient",), 4, 4, 0
  out = pipeline.run(config, tmp_path / "workdir")  # the faithfulness stage too: tests/test_faithfulness_stage.py

  # The grid evaluated these weights: its prediction for every image is the source model's.
  data = data_lib.prepare(config, conditions=())
  pix, _, labels, _ = run.test_sets(data, 0.0, 0.0, max_images=20)
  predicted = forward(np.asarray(data.normalization(pix))).argmax(-1)
  (cell,) = out["single_pixel"]
  assert cell["checkpoint_epoch"] == 0
  assert cell["overall.withpix_model_accuracy"] == pytest.approx(np.mean(predicted == labels))
  (per_image,) = (tmp_path / "workdir" / "single_pixel" / "per_image").glob("*.npz")
  np.testing.assert_array_equal(np.load(per_image)["predicted"], predicted)
  assert [r["comparison"] for r in out["sanity"]["class_sensitivity"]] == ["top_vs_bottom", "random_map", "edge_map"]
  assert not (tmp_path / "workdir" / "checkpoints").exists()  # nothing trained

  # Other weights in the same file: the results are keyed by the file's content, so they are computed
  # again, not read back as if current.
  if fmt == "npz":
    with np.load(path) as z:
      np.savez(path, **{k: -z[k] for k in z.files})
    (again,) = pipeline.run(config, tmp_path / "workdir")["single_pixel"]
    assert again["weights"] != cell["weights"] and len(again["weights"]) == 12
    rows = run.TABLE.read(tmp_path / "workdir" / "single_pixel" / "results.csv")
    assert [r["weights"] for r in rows] == [cell["weights"], again["weights"]]

  config.train.enabled = True
  with pytest.raises(ConfigError, match="model.torch_weights=.* set train.enabled=False"):
    pipeline.run(config, tmp_path / "other1")
  config.train.enabled, config.model.channels = False, (4, 6)
  mismatch = r"model.torch_weights=.* does not load into small_cnn: .* key 'conv2.bias' has shape \(8,\), expected \(6,\)"
  with pytest.raises(ConfigError, match=mismatch):
    pipeline.run(config, tmp_path / "other2")
  config.model.torch_weights = str(tmp_path / "missing.pt")
  with pytest.raises(ConfigError, match="is not a file"):
    pipeline.run(config, tmp_path / "other3")
