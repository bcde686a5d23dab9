"""Single-pixel evaluation on hand-built models whose answers are known (docs/evaluation.md,
"Single-pixel metrics")."""

import hashlib
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from saliency_jax import data as data_lib
from saliency_jax import pipeline
from saliency_jax.attribution import display, gradients, registry
from saliency_jax.config_checks import ConfigError
from saliency_jax.evaluation import aggregate, results, single_pixel
from saliency_jax.stages import single_pixel as grid
from saliency_jax.stages.runner import ModelRunner

LOC = (2, 3)


def _counts(forward, normalization, importance, pix, nopix, labels, location=None, valid=None, target="predicted"):
  location = np.tile(LOC, (len(labels), 1)) if location is None else location
  valid = np.ones(len(labels), bool) if valid is None else valid
  fn = jax.jit(lambda *a: single_pixel.batch_counts(forward, normalization, importance, target, *a))
  return {k: int(v) for k, v in fn(pix, nopix, jnp.asarray(labels), jnp.asarray(location), valid).items()}


def _random_images(n, hw=6, seed=0):
  return np.asarray(jax.random.randint(jax.random.key(seed), (n, hw, hw, 3), 0, 256), np.uint8)


def test_a_model_that_reads_only_the_pixel_is_pointed_at_by_the_gradient():
  normalization = data_lib.Normalization(jnp.array([0.5, 0.4, 0.3]), jnp.array([0.25, 0.2, 0.3]))
  codes_u8 = data_lib.colour_code(3)
  centres = normalization(jnp.asarray(codes_u8, jnp.uint8).reshape(3, 1, 1, 3)).reshape(3, 3)

  def forward(x):  # nearest class colour at LOC, as a linear function of the pixel
    p = x[:, LOC[0], LOC[1], :]
    return p @ centres.T - 0.5 * jnp.sum(centres**2, axis=1)

  labels = np.arange(12) % 3
  pix = _random_images(12)
  nopix = pix.copy()
  pix[:, LOC[0], LOC[1]] = codes_u8[labels]

  def importance(f, x, t):
    return display.reduce_channels(gradients.absolute_gradient(f, x, t), "mean")

  counts = _counts(forward, normalization, importance, pix, nopix, labels)
  assert counts["images"] == 12
  assert counts["withpix_correct"] == 12
  assert counts["attribution_correct"] == 12 and counts["missed"] == 0
  assert counts["blackbg_withpix_correct"] == 12  # the pixel alone carries the class
  metrics = single_pixel.metrics_from_counts(counts)
  assert metrics["overall.attribution_correct_accuracy"] == 1.0
  assert np.isnan(metrics["attribution_incorrect.blackbg_withpix_model_accuracy"])  # no misses


def test_a_model_that_ignores_the_pixel_is_as_accurate_without_it():
  normalization = data_lib.Normalization(jnp.zeros(3), jnp.ones(3))
  w = jax.random.normal(jax.random.key(1), (6 * 6 * 3, 4))

  def forward(x):
    return x.at[:, LOC[0], LOC[1], :].set(0.0).reshape(len(x), -1) @ w

  pix = _random_images(16, seed=2)
  labels = np.array(jnp.argmax(forward(normalization(pix)), -1))
  labels[::3] = (labels[::3] + 1) % 4  # some wrong, so accuracy is not trivially 1
  nopix = pix.copy()
  pix[:, LOC[0], LOC[1]] = 255
  importance = lambda f, x, t: display.reduce_channels(gradients.gradient(f, x, t), "mean")
  counts = _counts(forward, normalization, importance, pix, nopix, labels)
  assert counts["withpix_correct"] == counts["nopix_correct"] == counts["truebg_withblackpix_correct"] < 16
  # Its gradient is exactly 0 at the pixel: the pixel is attributed only when the map ties everywhere.
  assert counts["attribution_correct"] == 0


def _fixed_model_batch():
  """Four 4x4 images; the model predicts the class written in channel 0 of pixel (1, 1); the
  'method' attributes channel 0 of the image itself. Each count is worked out by hand below."""
  pix = np.zeros((5, 4, 4, 3), np.uint8)
  labels = np.array([1, 2, 1, 0, 2])
  pix[0, 1, 1, 0], pix[0, 3, 3, 0] = 1, 5  # correct; attributes (3, 3): a miss
  pix[1, 1, 1, 0] = 2  # correct; attributes the pixel: a hit
  pix[2, 1, 1, 0], pix[2, 0, 0, 0] = 1, 1  # correct; a tie between the pixel and (0, 0): a hit
  pix[3, 2, 2, 0] = 3  # class 0 (pixel value 0); attributes (2, 2): a miss
  pix[4, 1, 1, 0] = 2  # padding: must not count
  nopix = pix.copy()
  nopix[:, 1, 1] = 0
  location = np.tile((1, 1), (5, 1))
  valid = np.array([True, True, True, True, False])
  return pix, nopix, labels, location, valid


def _fixed_forward(x):
  v = jnp.clip(jnp.round(x[:, 1, 1, 0]).astype(jnp.int32), 0, 2)
  return 10.0 * jax.nn.one_hot(v, 3)


IDENTITY = data_lib.Normalization(jnp.zeros(3), jnp.full(3, 1 / 255))  # x = the uint8 value


def test_every_count_of_a_fixed_model_and_map():
  pix, nopix, labels, location, valid = _fixed_model_batch()
  counts = _counts(_fixed_forward, IDENTITY, lambda f, x, t: x[..., 0], pix, nopix, labels, location, valid)
  assert counts == {
      "images": 4, "attribution_correct": 2, "missed": 2, "withpix_correct": 4, "missed_withpix_correct": 2,
      "nopix_correct": 1, "missed_nopix_correct": 1, "missed_nopix_preserved": 1,
      "truebg_withblackpix_correct": 1, "missed_truebg_withblackpix_correct": 1,
      "missed_truebg_withblackpix_preserved": 1,
      "blackbg_withpix_correct": 4, "missed_blackbg_withpix_correct": 2, "missed_blackbg_withpix_preserved": 2,
      "blackbg_withattrpix_correct": 3, "missed_blackbg_withattrpix_correct": 1,
      "missed_blackbg_withattrpix_preserved": 1,
      "truebg_withblackattrpix_correct": 2, "missed_truebg_withblackattrpix_correct": 2,
      "missed_truebg_withblackattrpix_preserved": 2,
  }
  m = single_pixel.metrics_from_counts(counts)
  assert list(m) == list(grid.METRIC_COLUMNS)
  assert m["overall.attribution_correct_accuracy"] == 0.5 and m["overall.attribution_incorrect"] == 2
  assert m["overall.nopix_model_accuracy"] == 0.25 and m["overall.truebg_withblackpix_model_accuracy"] == 0.25
  assert m["attribution_incorrect.blackbg_withpix_model_accuracy"] == 1.0
  assert m["attribution_incorrect.blackbg_withattrpix_model_accuracy"] == 0.5
  assert m["attribution_incorrect.truebg_withblackpix_model_accuracy"] == 0.5
  assert m["attribution_incorrect.truebg_withblackattrpix_model_accuracy"] == 1.0
  assert m["attribution_incorrect.truebg_withblackattrpix_preserved_accuracy"] == 1.0
  assert m["attribution_incorrect.truebg_withblackpix_preserved_accuracy"] == 0.5


def test_ties_all_count_as_attributed():
  imp = jnp.array([[[1.0, 3.0], [3.0, 0.0]]])
  np.testing.assert_array_equal(single_pixel.pointing_mask(imp), [[[False, True], [True, False]]])


def test_method_specs_parse_and_bad_ones_name_the_setting():
  spec = registry.parse("integrated_gradients(baseline='white', steps=100, chunk_size=5, reduce='abs_mean')")
  assert spec.name == "integrated_gradients" and spec.reduction == "abs_mean"
  assert spec.options_text == "baseline='white', steps=100"  # chunk_size changes memory, not the map
  assert registry.parse("gradient").options == ()
  for bad, match in [("gradient(", "name\\(option=value"), ("no_such_method", "single_pixel.methods"),
                     ("gradient(steps=3)", "steps"), ("gradient(reduce='median')", "reduce"),
                     ("gradient(sigma=x)", "literals")]:
    with pytest.raises(ValueError, match=match):
      registry.parse(bad, "single_pixel.methods")


def _eval_config(tiny_config):
  config = tiny_config
  sp = config.single_pixel
  sp.methods = ("absolute_gradient", "gradient_x_input")
  sp.targets, sp.outputs, sp.test_jitter = ("predicted", "label"), ("logit",), ((0.0, 0.0),)
  sp.max_images, sp.batch_size, sp.examples = 40, 16, 2
  return config


def test_grid_resumes_computing_only_missing_cells_and_evaluates_a_trained_workdir(trained_tmp_path, tiny_config,
                                                                                  monkeypatch, caplog):
  tmp_path = trained_tmp_path  # the tiny run, trained
  config = _eval_config(tiny_config)
  caplog.set_level(logging.INFO, logger="absl")
  out = pipeline.run(config, tmp_path)
  cells = [r.getMessage() for r in caplog.records if r.getMessage().startswith("single_pixel ")
           and "/4 " in r.getMessage()]
  # Each cell's line says how long the rest of the grid will take; the last has no rest.
  assert [line.split()[1] for line in cells] == ["1/4", "2/4", "3/4", "4/4"]
  assert all("left in this stage" in line for line in cells[:3]) and "left" not in cells[3]
  rows = out["single_pixel"]
  assert len(rows) == 4 and (tmp_path / "single_pixel" / "examples.png").exists()
  path = tmp_path / "single_pixel" / "results.csv"
  saved = grid.TABLE.read(path)
  assert [r["num_images"] for r in saved] == ["40"] * 4
  assert list(saved[0]) == list(grid.TABLE.columns)
  grid.TABLE.write(path, saved[:1] + saved[2:])  # as if killed before that cell

  calls = []
  outcomes = grid.SinglePixel.outcomes
  monkeypatch.setattr(grid.SinglePixel, "outcomes", lambda self, spec, target, output, pix, *a, **kw: calls.append(
      (spec.name, target, len(pix))) or outcomes(self, spec, target, output, pix, *a, **kw))
  config.train.enabled = False  # evaluate the newest checkpoint of the workdir
  again = pipeline.run(config, tmp_path)["single_pixel"]
  # Only the missing cell, and of it only the images whose prediction differs from the label: the
  # others' maps are the predicted target's, whose per-image outcomes the first run kept.
  _, _, labels, _ = grid.test_sets(out["train"].data, 0.0, 0.0, max_images=40)
  predicted_cell = next(r for r in saved if r["method"] == "absolute_gradient" and r["target"] == "predicted")
  wrong = round(40 * (1 - float(predicted_cell["overall.withpix_model_accuracy"])))
  assert 0 < wrong < 40, "the test needs a model that is neither always right nor always wrong"
  assert calls == [("absolute_gradient", "label", wrong)]
  again_saved = grid.TABLE.read(path)
  assert len(again_saved) == 4
  by_key = {grid.TABLE.key_of(r): r for r in again_saved}
  for r in saved:  # the recomputed cell equals what the first run wrote
    assert by_key[grid.TABLE.key_of(r)]["overall.attribution_correct_accuracy"] == r[
        "overall.attribution_correct_accuracy"]
  assert len(again) == 4

  # A change to a method (its revision raised) recomputes its cells, keeps the older rows and their
  # per-image files beside them, and only the new rows count. A first revision's per-image file keeps
  # the name it had before keys held a revision: sha1 of the key without it (and without weights='').
  old_files = {grid.per_image_file(tmp_path, r) for r in again_saved}
  for r in again_saved:
    before = [str(r[k]) for k in grid.CELL_KEY if k not in ("weights", "method_revision")]
    assert grid.per_image_file(tmp_path, r).name == hashlib.sha1("|".join(before).encode()).hexdigest()[:16] + ".npz"
  calls.clear()
  monkeypatch.setitem(registry._REVISIONS, "absolute_gradient", 2)  # pylint: disable=protected-access
  changed = pipeline.run(config, tmp_path)["single_pixel"]
  assert calls == [("absolute_gradient", "predicted", 40), ("absolute_gradient", "label", wrong)]
  assert sorted((r["method"], r["method_revision"]) for r in changed) == [
      ("absolute_gradient", 2)] * 2 + [("gradient_x_input", 1)] * 2
  kept = grid.TABLE.read(path)
  assert len(kept) == 6 and all(f.exists() for f in old_files)
  assert len({grid.per_image_file(tmp_path, r) for r in kept}) == 6
  now = results.current(grid.TABLE.frame(path), path)
  assert sorted(zip(now["method"], now["method_revision"])) == sorted((r["method"], r["method_revision"])
                                                                        for r in changed)


def test_four_devices_count_as_one(trained_tmp_path, tiny_config):
  tmp_path = trained_tmp_path  # the tiny run, trained
  config = _eval_config(tiny_config)
  config.single_pixel.enabled = False
  trained = pipeline.run(config, tmp_path)["train"]
  pix, nopix, labels, location = grid.test_sets(trained.data, 1.0, 3.0, max_images=30)
  spec = registry.parse("integrated_gradients(baseline='black', steps=8)")
  counts = [single_pixel.counts_from_outcomes(grid.cell_outcomes(
      ModelRunner(trained.model, trained.state.variables, trained.data.normalization, batch_size=12, chunk_size=4,
                  devices=d), spec, "label", "softmax", pix, nopix, labels, location, np.arange(30)), labels)
            for d in (jax.devices()[:1], jax.devices())]
  counts = [{k: int(v) for k, v in c.items()} for c in counts]
  assert counts[0] == counts[1] and counts[0]["images"] == 30


def _fake_results(workdir, seed, pointing):
  rows = []
  for method, p in (("gradient_x_input", pointing), ("absolute_gradient", pointing / 2)):
    row = {c: 0.5 for c in grid.METRIC_COLUMNS + grid.LOCALISATION_COLUMNS}
    row.update(model="small_cnn", model_seed=seed, data_seed=0, checkpoint_epoch=6, train_position_sd=0.0,
               train_colour_sd=0.0, test_position_sd=0.0, test_colour_sd=0.0, method=method, method_options="",
               method_revision=1, reduction="mean", target="predicted", output="logit", num_images=100,
               num_missed=10, seconds=1.0)
    row["overall.attribution_correct_accuracy"] = p
    row["overall.attribution_incorrect"] = 10 * (seed + 1)
    rows.append(row)
  grid.TABLE.write(workdir / "single_pixel" / "results.csv", rows)


def test_aggregation_of_three_runs_gives_mean_and_std(tmp_path):
  for seed, p in enumerate((0.2, 0.4, 0.9)):
    _fake_results(tmp_path / f"run{seed}", seed, p)
  summary = aggregate.summarize(aggregate.read_runs([str(tmp_path / "run*")]))
  row = summary[summary["method"] == "gradient_x_input"].iloc[0]
  assert row["runs"] == 3 and row["model_seeds"] == "0 1 2"
  assert row["overall.attribution_correct_accuracy mean"] == pytest.approx(0.5)
  assert row["overall.attribution_correct_accuracy std"] == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))
  assert row["overall.attribution_incorrect mean"] == pytest.approx(20.0)
  paths = aggregate.write_summary(summary, tmp_path / "summary")
  md = paths["markdown"].read_text()
  lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
  assert "| 50.0 (36.1) |" in lines["gradient_x_input"]  # pointing: mean 0.5, sample std 0.361
  assert "| 25.0 (18.0) |" in lines["absolute_gradient"]
  assert paths["figure"].exists()
  assert len(pd.read_csv(paths["csv"])) == 2


def test_aggregation_refuses_the_same_seed_twice(tmp_path):
  _fake_results(tmp_path / "a", 0, 0.2)
  _fake_results(tmp_path / "b", 0, 0.4)
  with pytest.raises(ValueError, match="share a model seed"):
    aggregate.summarize(aggregate.read_runs([str(tmp_path / "*")]))


def test_the_label_cell_that_reuses_the_predicted_maps_equals_one_computed_alone(trained_tmp_path, tiny_config):
  # SmoothGrad needs a random key: the grid derives one per image from the model seed, so the
  # two targets see the same noise and a rerun gives the same numbers.
  tmp_path = trained_tmp_path  # the tiny run, trained
  config = _eval_config(tiny_config)
  config.single_pixel.methods = ("gradient_x_input", "smoothgrad(samples=4)")
  reused = {(r["method"], r["target"]): r for r in pipeline.run(config, tmp_path)["single_pixel"]}
  assert 0 < float(reused["gradient_x_input", "predicted"]["overall.withpix_model_accuracy"]) < 1
  (tmp_path / "single_pixel" / "results.csv").unlink()
  for f in (tmp_path / "single_pixel" / "per_image").iterdir():
    f.unlink()
  config.train.enabled = False
  config.single_pixel.targets = ("label", "predicted")  # now the label cells are computed whole
  alone = {(r["method"], r["target"]): r for r in pipeline.run(config, tmp_path)["single_pixel"]}
  for cell, row in reused.items():
    for column in grid.METRIC_COLUMNS:
      np.testing.assert_equal(float(alone[cell][column]), float(row[column]), err_msg=f"{cell} {column}")


@pytest.mark.parametrize("field, spec, message", [
    ("single_pixel.methods", "integrated_gradients(baseline='purple')", "baseline='purple' is not allowed"),
    ("single_pixel.methods", "integrated_gradients(steps=-5)", "steps=-5"),
    ("single_pixel.methods", "gradcam(layer='nope')", "layer='nope' is not a layer of SmallCNN"),
    ("single_pixel.methods", "gradient(output='logit')", "output"),
    ("sanity.methods", "fullgrad(blocks=('layer9',))", "'layer9' is not a layer with a bias"),
])
def test_a_method_that_cannot_run_is_refused_before_training_naming_the_field(tmp_path, tiny_config, field, spec,
                                                                              message):
  config = _eval_config(tiny_config)
  if field == "sanity.methods":
    config.sanity.studies, config.sanity.methods = ("class_sensitivity",), ("gradient", spec)
  else:
    config.single_pixel.methods = ("absolute_gradient", spec)
  with pytest.raises(ConfigError, match=f"{field} entry .*{message}"):
    pipeline.run(config, tmp_path)
  assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "checkpoints").exists()  # nothing trained


def test_graded_localisation_on_hand_built_maps_with_known_ranks():
  # 4x4 maps, planted pixel at LOC = (2, 3). Image 0: the pixel is the strict maximum (rank 1);
  # 1: two pixels score higher (rank 3); 2: tied at the maximum with one other (rank 1, as pointing
  # counts ties); 3: seven pixels higher (rank 8), negative values count by magnitude in the mass.
  maps = np.zeros((4, 4, 4), np.float32)
  maps[0, 2, 3], maps[0, 0, 0] = 3.0, 1.0
  maps[1, 2, 3], maps[1, 0, 0], maps[1, 1, 1] = 1.0, 2.0, 5.0
  maps[2, 2, 3], maps[2, 3, 3] = 4.0, 4.0
  maps[3] = -1.0
  maps[3, 0, :], maps[3, 1, :3], maps[3, 2, 3] = 2.0, 2.0, 1.0
  pix = np.zeros((4, 4, 4, 3), np.uint8)
  outcomes = single_pixel.batch_outcomes(lambda x: jnp.zeros((len(x), 2)), IDENTITY, lambda f, x, t: jnp.asarray(maps),
                                         "predicted", pix, pix, jnp.zeros(4, jnp.int32),
                                         jnp.tile(jnp.asarray(LOC), (4, 1)))
  np.testing.assert_array_equal(outcomes["rank"], [1, 3, 1, 8])
  np.testing.assert_allclose(outcomes["mass"], [3 / 4, 1 / 8, 4 / 8, 1 / (7 * 2 + 1 + 8 * 1)], rtol=1e-6)
  m = single_pixel.localisation_metrics(jax.device_get(outcomes))
  assert m["localisation.rank_mean"] == 13 / 4 and m["localisation.rank_median"] == 2.0
  assert (m["localisation.top1"], m["localisation.top5"], m["localisation.top10"]) == (0.5, 0.75, 1.0)
  assert m["localisation.top1"] == float(np.mean(outcomes["hit"]))  # top 1 is pointing accuracy
