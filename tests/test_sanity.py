"""Sanity checks (docs/evaluation.md, "Sanity checks"): similarity metrics, parameter and label
randomisation, class sensitivity and input invariance, on models whose answers are known."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from saliency_jax import attribution as A
from saliency_jax.attribution import registry
from saliency_jax import data as data_lib
from saliency_jax import models, pipeline
from saliency_jax.config_checks import check_config
from saliency_jax.evaluation import invariance, randomization, similarity
from saliency_jax.stages import sanity
from saliency_jax.stages.runner import ModelRunner


def _noise(seed, shape=(24, 32, 32, 3)):
  return np.array(jax.random.normal(jax.random.key(seed), shape))


def test_identical_maps_score_one_and_independent_random_maps_about_zero():
  a = _noise(0)
  same = similarity.compare(a, a.copy())
  for metric in similarity.METRICS:
    np.testing.assert_allclose(same[metric], 1.0, atol=1e-9)
  independent = similarity.summarize(similarity.compare(a, _noise(1)))
  for metric in ("spearman_abs", "spearman", "ssim"):
    assert abs(independent[f"{metric}_mean"]) < 0.05, (metric, independent)
  # HOG features are non-negative and block-normalised, so noise against noise sits a little above
  # zero: what the random-map calibration rows are for.
  assert abs(independent["hog_mean"]) < 0.25
  # A map against its negation: the signed ranks reverse, the absolute maps are the same.
  flipped = similarity.compare(a, -a)
  np.testing.assert_allclose(flipped["spearman"], -1.0, atol=1e-9)
  np.testing.assert_allclose(flipped["spearman_abs"], 1.0, atol=1e-9)


def test_rank_correlation_is_scipys_spearman_and_a_constant_map_is_undefined():
  a, b = _noise(2, (3, 8, 8, 3)), _noise(3, (3, 8, 8, 3))
  got = similarity.compare(a, b)
  signed_a, abs_a = similarity.reduce_maps(a)
  signed_b, abs_b = similarity.reduce_maps(b)
  for i in range(3):
    assert got["spearman"][i] == pytest.approx(scipy.stats.spearmanr(signed_a[i].ravel(), signed_b[i].ravel())[0])
    assert got["spearman_abs"][i] == pytest.approx(scipy.stats.spearmanr(abs_a[i].ravel(), abs_b[i].ravel())[0])
  b[1] = 0.0  # e.g. a GradCAM that randomisation drove to zero
  summary = similarity.summarize(similarity.compare(a, b))
  assert summary["spearman_undefined"] == 1 and summary["hog_undefined"] == 1
  assert np.isfinite(summary["spearman_mean"])


def test_edge_map_finds_the_edge_of_a_step_image():
  image = np.zeros((1, 8, 8, 3), np.uint8)
  image[:, :, 4:] = 255
  edges = similarity.edge_maps(image)[0]
  assert edges.shape == (8, 8)
  assert edges[:, 3:5].min() > 0 and np.all(edges[:, :2] == 0) and np.all(edges[:, 6:] == 0)


def _small_cnn(channels=(4, 6), seed=0):
  model = models.create_model("small_cnn", channels=channels)
  return model, models.init_variables(model, jax.random.key(seed), (1, 8, 8, 3))


def test_cascading_randomisation_changes_exactly_the_intended_layers():
  model, variables = _small_cnn()
  order = randomization.layer_order(model, variables, (1, 8, 8, 3))
  assert order == ["out", "conv2", "conv1"]  # logits first
  assert randomization.layer_order(*_resnet_shapes(), (1, 32, 32, 3))[::10] == ["fc", "conv1"]
  params = variables["params"]
  rnd = randomization.random_params(jax.random.key(7), params, order)
  cascade, independent = randomization.schedule("cascading", 3), randomization.schedule("independent", 3)
  np.testing.assert_array_equal(cascade, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
  np.testing.assert_array_equal(independent, [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
  for which, changed in ((cascade[2], {"out", "conv2"}), (independent[2], {"conv2"}), (cascade[0], set())):
    mixed = jax.jit(lambda w: randomization.mix(params, rnd, order, w))(jnp.asarray(which))
    for name in order:
      for new, old, drawn in zip(jax.tree.leaves(mixed[name]), jax.tree.leaves(params[name]),
                                 jax.tree.leaves(rnd[name])):
        if name in changed:
          np.testing.assert_array_equal(new, drawn)
          assert not np.any(np.asarray(new) == np.asarray(old))
        else:
          np.testing.assert_array_equal(new, old)  # bit-identical
  # The re-initialisation: truncated at 2 std of 0.01, from the key alone.
  kernel = np.asarray(rnd["conv1"]["kernel"])
  assert np.abs(kernel).max() <= 0.02 and 0.006 < kernel.std() < 0.01
  again = randomization.random_params(jax.random.key(7), params, order)
  np.testing.assert_array_equal(again["conv1"]["kernel"], kernel)
  uniform = randomization.random_params(jax.random.key(7), params, order, "uniform")["conv2"]["kernel"]
  assert np.abs(uniform).max() <= 0.01 * np.sqrt(3) and np.std(uniform) == pytest.approx(0.01, rel=0.1)
  with pytest.raises(ValueError, match="sanity.distribution"):
    randomization.random_params(jax.random.key(7), params, order, "normal")


def _resnet_shapes():
  model = models.create_model("resnet18")
  return model, jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), (1, 32, 32, 3)))


@pytest.mark.parametrize("devices", [1, 4])
def test_randomised_models_mapped_together_equal_one_model_at_a_time(devices):
  model, variables = _small_cnn()
  x = _noise(4, (6, 8, 8, 3)).astype(np.float32)
  order = randomization.layer_order(model, variables, (1, 8, 8, 3))
  rnd = randomization.random_params(jax.random.key(1), variables["params"], order)
  which = randomization.schedule("cascading", len(order))
  runner = ModelRunner(model, variables, None, batch_size=4, devices=jax.devices()[:devices])
  targets = np.arange(6) % 10
  spec = registry.parse("gradient")
  together = sanity.randomized_maps(runner, spec, "logit", variables, rnd, order, which, x, targets, np.arange(6),
                                    model_chunk=3)
  assert together.shape == (4, 6, 8, 8, 3)
  for s, w in enumerate(which):
    params = randomization.mix(variables["params"], rnd, order, w)
    alone = A.gradient(A.ModelForward(model, {"params": params}), x, targets)
    np.testing.assert_allclose(together[s], alone, rtol=1e-5, atol=1e-7)


def test_class_sensitivity_is_low_when_classes_read_disjoint_inputs():
  # A linear model: each class reads its own random quarter of the input values, so the
  # gradients of any two classes have disjoint supports.
  model = models.create_model("mlp", num_classes=4, hidden=())
  owner = np.asarray(jax.random.permutation(jax.random.key(2), np.arange(16 * 16 * 3) % 4))
  weights = np.asarray(jax.random.uniform(jax.random.key(1), (16 * 16 * 3, 4), minval=0.5, maxval=1.5))
  kernel = np.where(owner[:, None] == np.arange(4)[None, :], weights, 0.0)
  variables = {"params": {"out": {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.zeros(4)}}}
  x = np.abs(_noise(5, (10, 16, 16, 3))).astype(np.float32)
  runner = ModelRunner(model, variables, None, batch_size=10)
  top = runner.targets("predicted", x, np.zeros(10))
  bottom = runner.targets("lowest", x, np.zeros(10))
  assert np.all(top != bottom)
  spec = registry.parse("gradient")
  maps_top, maps_bottom = (runner.maps(spec, "logit", x, t, np.arange(10)) for t in (top, bottom))
  assert not np.any((maps_top != 0) & (maps_bottom != 0))  # disjoint supports
  low = similarity.summarize(similarity.compare(maps_top, maps_bottom))
  chance = similarity.summarize(similarity.compare(maps_top, _noise(9, maps_top.shape)))
  same = similarity.summarize(similarity.compare(maps_top, maps_top * 2.0))
  for metric in similarity.METRICS:
    assert low[f"{metric}_mean"] < chance[f"{metric}_mean"] + 0.1, (metric, low, chance)
    assert same[f"{metric}_mean"] == pytest.approx(1.0)


def test_others_mean_leaves_each_image_out_and_averages_absolute_maps():
  # Three 1x2 one-channel maps; image 0's reference is the mean of images 1 and 2.
  maps = np.array([[[1.0, -4.0]], [[-2.0, 0.0]], [[4.0, 2.0]]])[..., None]
  signed, absolute = similarity.others_mean(maps)
  np.testing.assert_allclose(signed[0], [[1.0, 1.0]])  # (-2 + 4) / 2, (0 + 2) / 2
  np.testing.assert_allclose(absolute[0], [[3.0, 1.0]])  # (2 + 4) / 2, (0 + 2) / 2: signs do not cancel
  np.testing.assert_allclose(absolute[2], [[1.5, 2.0]])
  with pytest.raises(ValueError, match="at least 2"):
    similarity.others_mean(maps[:1])
  # A map that is not finite stays out of the others' references; its own is the mean of the rest.
  with_nan = np.concatenate([maps, np.full((1, 1, 2, 1), np.nan)])
  signed, absolute = similarity.others_mean(with_nan)
  np.testing.assert_allclose(absolute[0], [[3.0, 1.0]])
  np.testing.assert_allclose(absolute[3], [[7 / 3, 2.0]])  # (1 + 2 + 4) / 3, (4 + 0 + 2) / 3
  noisy = _noise(8, (5, 8, 8, 3))
  noisy[2, 3, 3, 0] = np.nan
  summary = similarity.summarize(similarity.compare(noisy, similarity.others_mean(noisy)))
  assert summary["spearman_abs_undefined"] == 1 and np.isfinite(summary["spearman_abs_mean"])


def test_image_sensitivity_is_one_for_a_map_that_ignores_the_image_and_low_for_one_that_reads_it():
  # A linear model: its gradient is the class's weight row whatever the image (one target for all),
  # so every map equals the others' mean; gradient x input multiplies in the image, so it differs.
  model = models.create_model("mlp", num_classes=2, hidden=())
  kernel = np.asarray(jax.random.normal(jax.random.key(1), (8 * 8 * 3, 2)), np.float32)
  variables = {"params": {"out": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(2)}}}
  x = _noise(7, (12, 8, 8, 3)).astype(np.float32)
  runner = ModelRunner(model, variables, None, batch_size=12)
  targets = np.zeros(12, np.int32)
  fixed = runner.maps(registry.parse("gradient"), "logit", x, targets, np.arange(12))
  reading = runner.maps(registry.parse("gradient_x_input"), "logit", x, targets, np.arange(12))
  same = similarity.summarize(similarity.compare(fixed, similarity.others_mean(fixed)))
  differ = similarity.summarize(similarity.compare(reading, similarity.others_mean(reading)))
  assert same["spearman_abs_mean"] == pytest.approx(1.0) and same["spearman_mean"] == pytest.approx(1.0)
  # |w x| against the mean |w x'| over independent noise images: they share |w|'s ranks only in part.
  assert differ["spearman_abs_mean"] < 0.8 and abs(differ["spearman_mean"]) < 0.2


@pytest.mark.parametrize("name", ["small_cnn", "mlp"])
def test_shifted_twin_computes_the_same_function_and_only_the_gradient_is_invariant(name):
  model = models.create_model(name, **({"channels": (4, 6)} if name == "small_cnn" else {"hidden": (16,)}))
  variables = models.init_variables(model, jax.random.key(0), (1, 8, 8, 3))
  shift = invariance.shift_vector([1.0, -0.5, 2.0], 3)
  twin_model, twin = invariance.shifted_twin(model, variables, shift, (8, 8, 3))
  # Behind the zero-padded conv the bias is per position (the border differs); behind a dense layer per unit.
  assert twin["params"]["input_shift"]["bias"].shape == ((8, 8, 4) if name == "small_cnn" else (16,))
  assert set(twin["params"]) - set(variables["params"]) == {"input_shift"}  # the model carries nothing for it
  f1, f2 = A.ModelForward(model, variables), A.ModelForward(twin_model, twin)
  x = _noise(6, (5, 8, 8, 3)).astype(np.float32)
  y1, y2 = f1(x), f2(x + shift)
  np.testing.assert_allclose(y2, y1, rtol=1e-5, atol=1e-5 * float(jnp.abs(y1).max()))
  t = A.select_targets(f1, x)
  np.testing.assert_allclose(A.gradient(f2, x + shift, t), A.gradient(f1, x, t), rtol=1e-4, atol=1e-6)

  def differ(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(a).max()) > 0.05

  assert differ(A.gradient_x_input(f1, x, t), A.gradient_x_input(f2, x + shift, t))
  ig = lambda f, z, **kw: A.integrated_gradients(f, z, t, steps=16, rule="trapezoid", **kw)
  assert differ(ig(f1, x, baseline="zero"), ig(f2, x + shift, baseline="zero"))
  # The baseline shifted alongside the input: the same path through the same function. (Not from
  # zero here: at x = 0 the untrained MLP's pre-activations are exactly 0, a ReLU tie that rounding
  # in the twin breaks either way.)
  shifted = invariance.shifted_baseline(lambda f, z, tt, index, **kw: A.integrated_gradients(
      f, z, tt, steps=16, rule="trapezoid", **kw), shift, "unit", baseline="white")
  np.testing.assert_allclose(shifted(f2, x + shift, t), ig(f1, x, baseline="white", normalization="unit"), rtol=1e-3,
                             atol=1e-5)


def test_label_permutation_is_deterministic_from_the_data_seed(tiny_config):
  config = tiny_config
  config.data.permute_train_labels = True
  first, again = data_lib.prepare(config, ()), data_lib.prepare(config, ())
  np.testing.assert_array_equal(first.train.labels_B, again.train.labels_B)
  config.data.permute_train_labels = False
  true = data_lib.prepare(config, ("pixel",))
  assert np.mean(np.asarray(first.train.labels_B) != np.asarray(true.train.labels_B)) > 0.7
  np.testing.assert_array_equal(np.bincount(first.train.labels_B), np.bincount(true.train.labels_B))
  # The images (and their true class's pixel) do not move; only the labels do.
  np.testing.assert_array_equal(first.train.images_BHWC, true.train.images_BHWC)
  config.data.permute_train_labels, config.data.seed = True, 1
  other = data_lib.prepare(config, ())
  assert not np.array_equal(other.train.labels_B, first.train.labels_B)


def test_training_stops_once_it_fits_and_a_rerun_trains_no_more(tmp_path, tiny_config, one_device_mesh):
  from saliency_jax.training import train

  config = tiny_config
  config.train.epochs, config.train.stop_at_train_accuracy = 4, 0.01
  result = train.train_and_evaluate(config, tmp_path, mesh=one_device_mesh)
  assert result.epoch == 1 and len(result.metrics) == 1
  assert train.train_and_evaluate(config, tmp_path, mesh=one_device_mesh).epoch == 1
  config.train.stop_at_train_accuracy = 1.5
  with pytest.raises(ValueError, match="train.stop_at_train_accuracy"):
    check_config(config, 1)


def test_training_stops_once_the_shortcut_is_taken(tmp_path, tiny_config, one_device_mesh, caplog):
  # Test accuracy with the pixel: a tiny model passes 1% after one epoch, not 100% after four.
  from saliency_jax.training import train

  caplog.set_level(logging.INFO, logger="absl")
  config = tiny_config
  config.train.epochs, config.train.stop_at_pixel_accuracy = 4, 0.01
  result = train.train_and_evaluate(config, tmp_path / "a", mesh=one_device_mesh)
  assert result.epoch == 1 and result.metrics[-1]["test_pixel_accuracy"] >= 0.01
  assert any(r.getMessage().startswith("test_pixel_accuracy ") and "train.stop_at_pixel_accuracy=1.0%" in
             r.getMessage() for r in caplog.records)  # the stop watched the pixel column
  assert train.stop_reached(config.train, {"test_pixel_accuracy": ""}) == ""  # an epoch that did not evaluate it
  config.train.epochs, config.train.stop_at_pixel_accuracy = 2, 1.0
  assert train.train_and_evaluate(config, tmp_path / "b", mesh=one_device_mesh).epoch == 2
  config.train.stop_at_pixel_accuracy, config.train.eval_conditions = 0.99, ("nopix",)
  with pytest.raises(ValueError, match="train.stop_at_pixel_accuracy watches .* 'pixel' images"):
    check_config(config, 1)


def test_sanity_studies_on_a_trained_workdir_write_tables_and_figures_and_resume(tmp_path, tiny_config, caplog):
  config = tiny_config
  config.model.channels = (4, 8)
  config.train.epochs = 1
  config.single_pixel.enabled = False
  s = config.sanity
  s.studies = ("cascading", "class_sensitivity", "image_sensitivity", "input_invariance", "label_randomization")
  s.methods = ("gradient", "integrated_gradients(baseline='black', steps=4)", "gradcam_pos")
  s.num_images, s.batch_size, s.strip_images, s.model_chunk = 6, 4, 1, 2
  s.reference_workdir = str(tmp_path)  # itself: a stand-in for the true-label run
  caplog.set_level(logging.INFO, logger="absl")
  out = pipeline.run(config, tmp_path)["sanity"]
  # Each method's line says how long the rest of the stage will take; the last has no rest.
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sanity ") and "/15 " in r.getMessage()]
  assert [line.split()[1:3] for line in lines[:3]] == [["1/15", "cascading"], ["2/15", "cascading"],
                                                       ["3/15", "cascading"]]
  assert all("left in this stage" in line for line in lines[:-1]) and "left" not in lines[-1]
  cascade = pd.DataFrame(out["cascading"])
  steps = cascade[cascade.comparison == "randomized"]
  assert list(steps[steps.method == "gradient"].layer) == ["none", "out", "conv2", "conv1"]
  assert steps[steps.step == 0]["spearman_abs_mean"].tolist() == pytest.approx([1.0] * 3)
  assert set(cascade.comparison) == {"randomized", "random_map", "edge_map"}
  twin = pd.DataFrame(out["input_invariance"]).set_index(["method", "comparison"])
  assert twin.loc[("gradient", "twin"), "max_relative_difference"] < 1e-4
  assert twin.loc[("integrated_gradients", "twin"), "max_relative_difference"] > 1e-2  # black baseline, not shifted
  assert twin.loc[("integrated_gradients", "twin_shifted_baseline"), "max_relative_difference"] < 1e-3
  alike = pd.DataFrame(out["image_sensitivity"]).set_index(["method", "comparison"])
  assert set(alike.index.get_level_values("comparison")) == {"vs_other_images", "random_map", "edge_map"}
  labels = pd.DataFrame(out["label_randomization"])
  assert labels[labels.comparison == "random_vs_true_labels"]["ssim_mean"].tolist() == pytest.approx([1.0] * 3)
  for study in ("cascading", "class_sensitivity", "image_sensitivity", "input_invariance", "label_randomization"):
    assert (tmp_path / "sanity" / f"{study}.csv").exists()
    assert (tmp_path / "sanity" / f"{study}_strip0.png").exists()
  assert (tmp_path / "sanity" / "cascading_curves.png").exists()
  assert (tmp_path / "sanity" / "class_sensitivity_bars.png").exists()
  # A rerun reads every method back instead of computing it again.
  config.train.enabled = False
  before = (tmp_path / "sanity" / "cascading.csv").read_text()
  again = pipeline.run(config, tmp_path)["sanity"]
  assert (tmp_path / "sanity" / "cascading.csv").read_text() == before
  assert len(again["cascading"]) == len(out["cascading"])


def test_sanity_settings_are_checked_with_the_field_named(tiny_config):
  s = tiny_config.sanity
  s.studies = ("cascading", "pixel_flipping")
  with pytest.raises(ValueError, match="sanity.studies"):
    sanity.Sanity.check(tiny_config)
  s.studies = ("label_randomization",)
  with pytest.raises(ValueError, match="sanity.reference_workdir"):
    sanity.Sanity.check(tiny_config)
  s.studies, s.methods = ("cascading",), ("gradient(steps=3)",)
  with pytest.raises(ValueError, match="steps"):
    sanity.Sanity.check(tiny_config)
  s.studies, s.methods, s.num_images = ("image_sensitivity",), ("gradient",), 1
  with pytest.raises(ValueError, match="sanity.num_images=1"):
    sanity.Sanity.check(tiny_config)


def test_fullgrad_counts_the_twins_extra_bias_so_its_decomposition_stays_complete():
  model = models.create_model("small_cnn", channels=(4, 6))
  variables = models.init_variables(model, jax.random.key(0), (1, 8, 8, 3))
  twin_model, twin = invariance.shifted_twin(model, variables, jnp.array([1.0, -0.5, 2.0]), (8, 8, 3))
  f2 = A.ModelForward(twin_model, twin)
  x = jnp.asarray(_noise(4, (3, 8, 8, 3)), jnp.float32) + jnp.array([1.0, -0.5, 2.0])
  t = A.select_targets(f2, x)
  input_term, named = A.cam.fullgrad_terms(f2, x, t)
  assert "input_shift" in [layer for layer, _ in named]
  # A piecewise-linear network: the input term and every bias term sum to the logit exactly, which
  # fails if the twin's bias were left out (its term is of the logit's order here).
  total = input_term.sum((1, 2, 3)) + sum(term.reshape(len(x), -1).sum(-1) for _, term in named)
  logits = jnp.take_along_axis(f2(x), t[:, None], axis=-1)[:, 0]
  np.testing.assert_allclose(total, logits, rtol=1e-4, atol=1e-4 * float(jnp.abs(logits).max()))


def test_summary_reads_back_undefined_similarities_from_the_csv(tmp_path):
  # A constant map has an undefined rank correlation: written as nan, read back as the string 'nan'
  # beside this run's floats. A resumed study summarises both (pandas' to_numeric rejects 'nan').
  from saliency_jax.evaluation import similarity  # pylint: disable=g-import-not-at-top

  row = {"model": "small_cnn", "model_seed": 0, "data_seed": 0, "checkpoint_epoch": 1, "study": "cascading",
         "method": "gradient", "method_options": "", "method_revision": 1, "output": "logit", "target": "predicted",
         "num_images": 2, "comparison": "randomized", "step": 1, "layer": "fc", "max_relative_difference": "", "seconds": 1.0}
  row.update({f"{m}_{s}": v for m in similarity.METRICS for s, v in (("mean", 0.25), ("std", 0.0), ("undefined", 0))})
  undefined = {**row, "method": "deconvnet", "spearman_mean": float("nan")}
  path = tmp_path / "cascading.csv"
  sanity.TABLE.write(path, [row, undefined])
  back = sanity.TABLE.read(path)
  assert back[1]["spearman_mean"] == "nan"
  text = sanity.summary_text([back[0], back[1], {**row, "method": "guided_backprop"}])
  lines = {line.split()[1]: line.split() for line in text.splitlines()[1:]}
  assert set(lines) == {"gradient", "deconvnet", "guided_backprop"}
  assert "NaN" in lines["deconvnet"] and "NaN" not in lines["gradient"]
  assert lines["gradient"][4:] == lines["guided_backprop"][4:]  # '0.25' read back and 0.25 computed agree
