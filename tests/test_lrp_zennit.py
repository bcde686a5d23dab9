"""The LRP rules against zennit 0.5.1 (chr5tphr/zennit), the reference PyTorch LRP library: the same
weights in a tiny Flax network and its torch.nn twin, every Linear/Conv2d given one zennit rule, no
canonizers and no BatchNorm (zennit merges BatchNorm into the convolution before; here it is a layer
of its own: docs/methods.md, "Conventions against other libraries"). Skipped without torch or zennit
(pip install -e '.[compare]').

Convention differences, each tested as such:
- zennit divides by z + stabilizer(z), 1e-6 by default for Gamma and ZPlus. Here a unit is divided by
  its denominator exactly, and one with a zero denominator carries no relevance; zennit is given that
  stabilizer (`_exact`). With its default 1e-6 the maps differ by up to 5e-6 (Gamma), 2e-5 (ZPlus) and
  4e-3 (Epsilon(1e-6) against LRP-0) of their maximum on this network, from units with small denominators.
- zennit's ZPlus (= AlphaBeta(1, 0)) keeps the positive part of the bias in the denominator, a+ w+ +
  a- w- + b+, so b+ absorbs relevance; lrp_alpha1beta0 leaves the bias out and conserves relevance. They
  agree with ZPlus(zero_params='bias'), zennit's switch for that.
"""

import importlib
import importlib.util
import sys
import types
from unittest import mock

import jax
import flax.linen as nn
import numpy as np
import pytest

from saliency_jax import attribution as A

torch = pytest.importorskip("torch")


def _import_zennit():
  """zennit's composites and rules. zennit imports torchvision when it is imported, for its ResNet
  canonizers only (unused here); torchvision's PyPI wheels need CUDA torch and fail to import beside
  the CPU wheel (pyproject.toml, `bench`), so then zennit is imported with a stand-in
  `torchvision.models.resnet` that is removed from sys.modules afterwards."""
  if importlib.util.find_spec("zennit") is None:
    pytest.skip("zennit is not installed (pip install zennit==0.5.1)", allow_module_level=True)
  stand_ins = {}
  try:
    import torchvision.models.resnet  # noqa: F401
  except Exception:  # ImportError, or RuntimeError from a CUDA torchvision beside CPU torch
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.BasicBlock = type("BasicBlock", (torch.nn.Module,), {})
    resnet.Bottleneck = type("Bottleneck", (torch.nn.Module,), {})
    stand_ins = {"torchvision": types.ModuleType("torchvision"),
                 "torchvision.models": types.ModuleType("torchvision.models"), "torchvision.models.resnet": resnet}
  if not stand_ins:
    return importlib.import_module("zennit.composites"), importlib.import_module("zennit.rules")
  with mock.patch.dict(sys.modules, stand_ins):  # restores sys.modules as it was on leaving
    return importlib.import_module("zennit.composites"), importlib.import_module("zennit.rules")


composites, rules = _import_zennit()

# Zennit's stabilizer as the library divides: exactly, and a zero denominator passes no relevance
# (R / inf = 0, where the default would add 1e-6 and Stabilizer(0) would give inf * 0 = nan).
_exact = lambda denominator: denominator.masked_fill(denominator == 0, float("inf"))  # noqa: E731

NUM_CLASSES = 5


class _Net(nn.Module):
  """conv -> ReLU -> max-pool -> conv -> ReLU -> flatten -> dense -> ReLU -> dense, biases on."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(x))
    x = nn.relu(nn.Dense(8, name="dense1")(x.reshape(x.shape[0], -1)))
    return nn.Dense(NUM_CLASSES, name="dense2")(x)


class _TorchNet(torch.nn.Module):
  """The twin: NCHW, flattened in NHWC order so dense1's weight is the Flax kernel transposed."""

  def __init__(self):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
    self.conv2 = torch.nn.Conv2d(4, 6, 3, padding=1)
    self.dense1 = torch.nn.Linear(4 * 4 * 6, 8)
    self.dense2 = torch.nn.Linear(8, NUM_CLASSES)

  def forward(self, x):
    x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
    x = torch.relu(self.conv2(x))
    x = torch.relu(self.dense1(x.permute(0, 2, 3, 1).flatten(1)))
    return self.dense2(x)


@pytest.fixture(scope="module")
def nets():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, 8, 8, 3), dtype=np.float32)  # normalised images: both signs
  shapes = jax.eval_shape(lambda: _Net().init(jax.random.key(0), x))

  def draw(path, leaf):  # He-like kernels; biases of either sign, large enough to matter (init's are 0)
    if path[-1].key == "bias":
      return (0.3 * rng.standard_normal(leaf.shape)).astype(np.float32)
    return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(draw, shapes)
  twin = _TorchNet()
  with torch.no_grad():
    for name, params in variables["params"].items():
      kernel = np.asarray(params["kernel"])
      layer = getattr(twin, name)
      layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(
          kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T)))  # HWIO -> OIHW, (in, out) -> (out, in)
      layer.bias.copy_(torch.from_numpy(np.asarray(params["bias"])))
  return A.ModelForward(_Net(), variables), twin, x, np.array([0, 1, 2, 3])


def _zennit_relevance(twin, x, target, rule):
  """zennit's relevance at the input, NHWC, starting from the target's logit (as x * grad does here)."""
  composite = composites.LayerMapComposite(layer_map=[(torch.nn.Linear, rule), (torch.nn.Conv2d, rule)])
  x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
  with composite.context(twin) as modified:
    out = modified(x_t)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(target), NUM_CLASSES).to(out)
    # zennit's hooks return relevance, not a gradient: the first layer's rule already multiplies by
    # its input, so what arrives at x is the relevance itself (no further x *).
    relevance, = torch.autograd.grad(out, x_t, grad_outputs=onehot * out.detach())
  return relevance.numpy().transpose(0, 2, 3, 1)


CASES = {
    "lrp_0": (dict(rule="zero"), lambda: rules.Epsilon(epsilon=_exact)),
    "lrp_epsilon": (dict(rule="epsilon", epsilon=0.01), lambda: rules.Epsilon(epsilon=0.01)),
    "lrp_gamma(0.25)": (dict(rule="gamma", gamma=0.25), lambda: rules.Gamma(gamma=0.25, stabilizer=_exact)),
    "lrp_gamma(2.0)": (dict(rule="gamma", gamma=2.0), lambda: rules.Gamma(gamma=2.0, stabilizer=_exact)),
    "lrp_alpha1beta0": (dict(rule="alpha1beta0"), lambda: rules.ZPlus(stabilizer=_exact, zero_params="bias")),
}


@pytest.fixture(scope="module")
def ours(nets):
  """The library's maps, every case in one jitted program: compiling it once takes about a third of
  the time the cases take run eagerly (3.5 s against 8 to 11 s on 2 busy cores)."""
  forward, _, x, target = nets
  maps = jax.jit(lambda x: {"logits": forward(x), **{case: A.lrp(forward, x, target, **options)
                                                     for case, (options, _) in CASES.items()}})(x)
  return {case: np.asarray(m) for case, m in maps.items()}


def test_the_twins_agree(nets, ours):
  _, twin, x, target = nets
  logits = twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy()
  np.testing.assert_allclose(logits, ours["logits"], rtol=0, atol=1e-6)
  explained = logits[np.arange(len(target)), target]
  assert (explained > 0).any() and (explained < 0).any()  # relevance of both signs arrives at the input


@pytest.mark.parametrize("case", list(CASES))
def test_lrp_matches_zennit(nets, ours, case):
  _, twin, x, target = nets
  theirs = _zennit_relevance(twin, x, target, CASES[case][1]())
  # Float32 sums in another order (zennit splits a layer into its positive and negative parts
  # otherwise than here, and runs torch's kernels): each map to 1e-5 of its own largest value
  # (measured: at most 1.3e-6). A tolerance relative to each value would fail on values near 0.
  for i, (mine, zennits) in enumerate(zip(ours[case], theirs)):
    scale = np.abs(mine).max()
    assert scale > 0
    np.testing.assert_allclose(mine, zennits, rtol=0, atol=1e-5 * scale, err_msg=f"image {i}")


def test_zplus_with_its_bias_differs_from_lrp_alpha1beta0(nets, ours):
  # The convention difference of the module docstring: zennit's ZPlus as it comes, b+ in the
  # denominator, loses relevance to the biases; lrp_alpha1beta0 conserves the logit.
  _, twin, x, target = nets
  mine = ours["lrp_alpha1beta0"]
  theirs = _zennit_relevance(twin, x, target, rules.ZPlus(stabilizer=_exact))
  logits = ours["logits"][np.arange(len(target)), target]
  np.testing.assert_allclose(mine.sum((1, 2, 3)), logits, rtol=1e-5)
  assert (np.abs(theirs.sum((1, 2, 3))) < np.abs(logits) - 1e-3).any()
  assert not np.allclose(mine, theirs, atol=1e-3 * np.abs(mine).max())
