"""docs/extending.md: its three worked examples run as the page shows them, and a method from a
file outside the package runs by name in every stage; docs/methods.md's table of methods is the
registry's."""

import inspect
import re
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import attribution as A
from saliency_jax import pipeline
from saliency_jax.attribution import registry
from tests.conftest import REPO
from tests.test_faithfulness_stage import _config, _untrained

PAGE = REPO / "docs" / "extending.md"
EXAMPLES = REPO / "docs" / "examples"


def test_the_page_shows_each_example_file_as_it_is():
  shown = dict(re.findall(r"<!-- (docs/examples/\S+) -->\n```python\n(.*?)```", PAGE.read_text(), re.S))
  assert sorted(shown) == sorted(f"docs/examples/{p.name}" for p in EXAMPLES.glob("*.py"))
  for path, code in shown.items():
    assert code == (REPO / path).read_text(), f"{path} differs from what docs/extending.md shows"


def test_the_methods_page_lists_every_method_with_its_defaults_and_needs():
  table = (REPO / "docs" / "methods.md").read_text().split("## The methods")[1].split("\n\n")[1]
  documented = set()
  for line in table.splitlines()[2:]:
    names, options, needs = line.strip("|").strip().split(" | ")
    for name in re.findall(r"`(\w+)`", names):
      documented.add(name)
      method = registry.get(name)
      params = inspect.signature(inspect.unwrap(method)).parameters
      presets = getattr(method.__wrapped__, "defaults", {})  # a name that presets options of a shared function
      shown = dict(re.findall(r"`(\w+)=([^`]+)`", options))
      # Every option a caller may set, with the default that name gives it.
      assert set(shown) == {p.name for p in params.values() if p.kind == p.KEYWORD_ONLY} - {"output"}, name
      for option, default in shown.items():
        assert repr(presets.get(option, params[option].default)) == default, (name, option)
      assert set(re.findall(r"\w+", needs)) & set(registry.NEEDS) == registry.needs(name), name
  ours = {n for n, m in registry.METHODS.items() if inspect.unwrap(m).__module__.startswith("saliency_jax.")}
  assert documented == ours


def _occlusion():
  """The example method, registered once per test process (a second import is not a second registration)."""
  registry.import_modules(("docs/examples/occlusion.py",))
  return registry.get("occlusion")


def test_occlusion_example_is_the_score_drop_of_each_occluded_square(monkeypatch):
  monkeypatch.chdir(REPO)  # the documented way: files found from the working directory
  occlusion = _occlusion()
  # A linear model: occluding a square drops the score by that square's sum of w * x, over every channel.
  w = jax.random.normal(jax.random.key(0), (8 * 8 * 2, 3))
  forward = lambda x: x.reshape(x.shape[0], -1) @ w
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 2))
  target = jnp.array([2, 0])
  contribution = (x * w[:, target].T.reshape(x.shape)).sum(-1)  # (B, H, W)
  want = contribution.reshape(2, 2, 4, 2, 4).sum((2, 4)).repeat(4, 1).repeat(4, 2)
  got = occlusion(forward, x, target, patch=4)
  np.testing.assert_allclose(got, np.broadcast_to(want[..., None], x.shape), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="patch=3 is not allowed"):
    occlusion(forward, x, target, patch=3)


def test_a_method_from_a_file_outside_the_package_runs_in_the_grid_the_sanity_studies_and_faithfulness(
    tmp_path, tiny_config, monkeypatch):
  monkeypatch.chdir(REPO)
  config = _config(tiny_config)
  _untrained(config, tmp_path)  # random weights as model.torch_weights: the stages without training
  config.imports = ("docs/examples/occlusion.py",)
  config.single_pixel.enabled = True
  config.single_pixel.methods = ("occlusion(patch=8)",)
  config.single_pixel.test_jitter = ((0.0, 0.0),)
  config.single_pixel.targets, config.single_pixel.outputs = ("predicted",), ("logit",)
  config.single_pixel.max_images, config.single_pixel.batch_size = 8, 8
  config.single_pixel.examples = 0
  config.sanity.studies = ("cascading",)
  config.sanity.methods = ("occlusion(patch=16)",)
  config.sanity.num_images, config.sanity.batch_size, config.sanity.strip_images = 4, 4, 1
  f = config.faithfulness
  f.methods, f.curves, f.orders, f.replacements, f.num_images = ("occlusion(patch=8)",), ("deletion",), ("morf",), \
      ("black",), 4
  out = pipeline.run(config, tmp_path / "run")
  assert {r["method"] for r in out["single_pixel"]} == {"occlusion"}
  assert {r["method"] for r in out["sanity"]["cascading"]} == {"occlusion"}
  assert {r["method"] for r in out["faithfulness"]} == {"occlusion"}


def test_imports_that_fail_are_one_line_naming_the_field(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match="imports entry 'no_such_module' cannot be imported"):
    registry.import_modules(("no_such_module",))
  with pytest.raises(ValueError, match="imports entry 'missing.py': no such file"):
    registry.import_modules("missing.py")
  (tmp_path / "broken.py").write_text("raise RuntimeError('oops')\n")
  with pytest.raises(ValueError, match="imports entry 'broken' failed to import: RuntimeError: oops"):
    registry.import_modules("broken")
  # A module name found from the working directory, and --config.imports=a,b's spelling.
  (tmp_path / "lab_methods.py").write_text(
      "from saliency_jax.attribution import registry, gradient\n"
      "@registry.register('lab_gradient_twice')\n"
      "def lab_gradient_twice(forward, x_BHWC, target_B, *, output='logit'):\n"
      "  return 2 * gradient(forward, x_BHWC, target_B, output=output)\n")
  assert registry.import_modules(("lab_methods,",)) == ["lab_methods"]
  forward = lambda x: x.reshape(x.shape[0], -1)[:, :3] * 2.0
  x = jnp.ones((1, 2, 2, 1))
  np.testing.assert_allclose(A.get("lab_gradient_twice")(forward, x, 1).ravel(), [0.0, 4.0, 0.0, 0.0])
  assert registry.revision("lab_gradient_twice") == 1 and registry.revision("not_registered") is None
  for bad in (0, 1.5, True):
    with pytest.raises(ValueError, match=f"method 'lab_changed': revision={bad!r} is not allowed"):
      registry.register("lab_changed", revision=bad)


def test_own_flax_cnn_example():
  example = runpy.run_path(str(EXAMPLES / "own_flax_cnn.py"), run_name="example")
  maps = example["main"]()
  for name in ("gradient", "integrated_gradients", "gradcam"):
    assert maps[name].shape == (8, 32, 32, 3) and bool(jnp.isfinite(maps[name]).all()), name
  assert float(maps["gradcam"].min()) >= 0.0
  # Completeness to the quadrature's accuracy (32 Gauss-Legendre points on a ReLU network; a wrong
  # baseline, path or weight is off by the whole gap).
  np.testing.assert_allclose(maps["integrated_gradients"].sum((1, 2, 3)), maps["gap"], rtol=0.05,
                             atol=0.05 * float(jnp.abs(maps["gap"]).max()))


def test_own_model_planted_pixel_example():
  example = runpy.run_path(str(EXAMPLES / "own_model_planted_pixel.py"), run_name="example")
  # Pointing, by hand: image 0's map peaks at its planted pixel (and ties elsewhere: ties all count),
  # image 1's peaks one pixel away.
  map_BHWC = jnp.zeros((2, 4, 4, 3)).at[0, 1, 2].set(1.0).at[0, 3, 3].set(1.0).at[1, 2, 0].set(1.0)
  assert example["pointing"](map_BHWC, jnp.array([[1, 2], [2, 1]])) == 0.5
  # The whole example, small: 20 training and 5 test images per class, 1 epoch (nothing need be learnt).
  accuracy, scores = example["main"](per_class=20, epochs=1, test_per_class=5)
  assert set(accuracy) == {"pixel", "nopix"} and set(scores) == {"absolute_gradient", "gradient_x_input",
                                                                   "integrated_gradients", "gradcam"}
  assert all(0.0 <= v <= 1.0 for v in [*accuracy.values(), *scores.values()])


def test_torch_resnet18_example_both_stems_and_class_counts(tmp_path):
  torch = pytest.importorskip("torch")
  example = runpy.run_path(str(EXAMPLES / "torch_resnet18.py"), run_name="example")
  for stem, classes, size in (("7x7", 1000, 64), ("3x3", 10, 32)):
    path = str(tmp_path / f"{stem}.pt")
    example["random_weights"](path, stem, classes)
    forward, x, target, maps = example["explain"](path, stem, classes, size)
    assert forward.model.num_classes == classes and all(m.shape == x.shape for m in maps.values())
    # The gradient is torch's, on the torch model the file came from.
    net, _ = __import__("benchmarks.torch_reference", fromlist=["x"]).build_model(
        "resnet18", num_classes=classes, arch_source="auto", stem=stem)
    net.load_state_dict(torch.load(path))
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    net.eval()(xt).gather(1, torch.from_numpy(np.asarray(target, np.int64))[:, None]).sum().backward()
    want = xt.grad.numpy().transpose(0, 2, 3, 1)
    # float32 in two summation orders: ~1e-6 of the largest value at these sizes (docs/extending.md).
    np.testing.assert_allclose(maps["gradient"], want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.fixture
def scratch_registry(monkeypatch):
  """The registry's tables as copies: what a test registers leaves with it."""
  for table in ("METHODS", "_NEEDS", "_REVISIONS", "_ORIGINS"):
    monkeypatch.setattr(registry, table, dict(getattr(registry, table)))


def test_registration_refuses_what_no_runner_could_call(scratch_registry):
  with pytest.raises(ValueError, match="method 'lab_no_output': lab_no_output takes no keyword-only output= option"):
    @registry.register("lab_no_output")
    def lab_no_output(forward, x_BHWC, target_B):
      return x_BHWC
  with pytest.raises(ValueError, match="takes no keyword-only output= option"):  # options are keyword-only
    registry.register("lab_positional")(lambda forward, x, t, output="logit": x)
  # A key that no runner would supply: the grid would call it with key=None on every image.
  with pytest.raises(ValueError, match=r"takes key= but does not declare needs=\('key',\)"):
    @registry.register("lab_noisy")
    def lab_noisy(forward, x_BHWC, target_B, *, output="logit", key=None):
      return x_BHWC
  with pytest.raises(ValueError, match="method .lab_preset. presets steps, which <lambda> does not take"):
    registry.register("lab_preset", steps=3)(lambda forward, x, t, *, output="logit": x)


def test_a_method_runs_again_in_a_notebook_but_a_name_is_not_taken_twice(scratch_registry):
  source = ("from saliency_jax.attribution import registry, gradient\n"
            "@registry.register('lab_twice')\n"
            "def lab_twice(forward, x_BHWC, target_B, *, output='logit'):\n"
            "  return {factor} * gradient(forward, x_BHWC, target_B, output=output)\n")
  namespace = {"__name__": "__main__"}
  forward = lambda x: x.reshape(x.shape[0], -1)[:, :3] * 2.0
  x = jnp.ones((1, 2, 2, 1))
  for factor in (2, 3):  # the cell run twice, edited in between: the newer definition counts
    exec(source.format(factor=factor), namespace)  # pylint: disable=exec-used
    assert float(A.get("lab_twice")(forward, x, 1).max()) == 2.0 * factor
  with pytest.raises(ValueError, match=r"'lab_twice' is registered twice: by __main__.lab_twice and by "):
    registry.register("lab_twice")(lambda forward, x, t, *, output="logit": x)
  # The same function under a built-in's name with another preset would relabel its rows: refused.
  with pytest.raises(ValueError, match="'lrp_0' is registered twice: .* with other presets, needs or revision"):
    registry.register("lrp_0", needs=("model",), rule="gamma")(__import__("saliency_jax.attribution.lrp",
                                                                          fromlist=["_lrp"])._lrp)


def test_a_map_not_shaped_like_the_input_is_named_before_any_work(scratch_registry, tiny_config, tmp_path):
  @registry.register("lab_reduced")
  def lab_reduced(forward, x_BHWC, target_B, *, output="logit"):
    return A.gradient(forward, x_BHWC, target_B, output=output).mean(-1)  # (B, H, W): reduced too early

  x = jnp.ones((2, 4, 4, 3))
  forward = lambda x: x.reshape(x.shape[0], -1)[:, :3]
  message = r"method 'lab_reduced' returned shape \(2, 4, 4\); a method returns a map shaped like its input, \(2, 4, 4, 3\)"
  with pytest.raises(ValueError, match=message):
    A.get("lab_reduced")(forward, x, 1)
  with pytest.raises(ValueError, match=message):
    jax.jit(lambda x: A.get("lab_reduced")(forward, x, 1))(x)
  # In a run it is the one line of the method check, before training.
  tiny_config.single_pixel.methods = ("gradient", "lab_reduced")
  with pytest.raises(ValueError, match=r"single_pixel.methods entry 'lab_reduced' does not build for this model: "
                     r"method 'lab_reduced' returned shape \(\d+, 32, 32\);"):
    pipeline.run(tiny_config, tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()
