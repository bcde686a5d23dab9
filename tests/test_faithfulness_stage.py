"""The faithfulness stage (`config.faithfulness`): end to end on a tiny model, its curves against
their definitions, resuming per method, settings named, and the report."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import data as data_lib
from saliency_jax import models, pipeline, report
from saliency_jax.config_checks import ConfigError
from saliency_jax.stages import faithfulness as faithfulness_stage
from saliency_jax.stages import run_stage
from saliency_jax.stages.runner import ModelRunner
from saliency_jax.training import train
from tests.test_torch_import import _hand_made_state_dict


def _config(tiny_config):
  config = tiny_config
  config.model.channels = (4, 8)
  config.train.enabled = False
  config.single_pixel.enabled = False
  f = config.faithfulness
  f.enabled = True
  f.methods = ("gradient", "gradient_x_input")
  f.num_images, f.batch_size, f.steps, f.road_percentages = 12, 8, 4, (25, 50)
  f.replacements = ("black", "blur")  # 'mean' is a constant like 'black' (tests/test_faithfulness.py)
  f.road_noise = 0.0  # noise-free ROAD compiles in a third of the time; keys per image: tests/test_faithfulness.py
  return config


def _untrained(config, tmp_path):
  """A model with random weights (the stage needs a model, not a good one; drawn in numpy, as
  jitting the initialisation costs seconds), also saved as a state_dict for `model.torch_weights`."""
  data = data_lib.prepare(config, conditions=())
  model = models.from_config(config.model, data.num_classes)
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), (1, 32, 32, 3)))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), jnp.float32), shapes)
  np.savez(tmp_path / "weights.npz", **_hand_made_state_dict(variables, {"out": (8, 8, 8)}))
  config.model.torch_weights = str(tmp_path / "weights.npz")
  return train.Trained(model, variables, 0, data, weights=train.file_digest(tmp_path / "weights.npz"))


def _evaluate(config, tmp_path, trained):
  stage = faithfulness_stage.Faithfulness
  return run_stage(stage(config, stage.check(config), trained, tmp_path))


def _row(rows, method, curve, order, replacement):
  return next(r for r in rows if (r["method"], r["curve"], r["order"], r["replacement"]) ==
              (method, curve, order, replacement))


def test_stage_writes_curves_that_meet_their_definitions_and_resumes_per_method(tmp_path, tiny_config, monkeypatch):
  config = _config(tiny_config)
  trained = _untrained(config, tmp_path)
  rows = pipeline.run(config, tmp_path)["faithfulness"]  # the stage alone, on the weights of `trained`
  # 2 methods x (deletion and insertion: 2 orders x 2 replacements, ROAD: 2 orders).
  assert len(rows) == 2 * (2 * 2 * 2 + 2)
  path = tmp_path / "faithfulness" / "results.csv"
  assert list(faithfulness_stage.TABLE.read(path)[0]) == list(faithfulness_stage.TABLE.columns)
  figure = tmp_path / "faithfulness" / "curves.png"
  assert figure.exists() and figure.stat().st_size < 150_000

  # The end points of the curves are the model's probabilities on images computed here directly.
  data = trained.data
  tests = data.test_set("pixel")
  keep = data_lib.balanced_indices(tests.labels_B, 12, data.seed)
  x = data.normalization(jnp.asarray(np.asarray(tests.images_BHWC)[keep]))
  probs = lambda images: jax.nn.softmax(trained.model.apply(trained.variables, images, train=False), -1)
  target = jnp.argmax(probs(x), -1)
  on = lambda images: float(jnp.take_along_axis(probs(images), target[:, None], -1).mean())
  black = data.normalization(jnp.zeros((1, 1, 1, 3), jnp.uint8)) + 0 * x
  # Float32 forward passes of the same images in other batch shapes: rounding only.
  tol = dict(rel=1e-4, abs=1e-6)
  for method in ("gradient", "gradient_x_input"):
    for order in ("morf", "lerf"):
      deletion = json.loads(_row(rows, method, "deletion", order, "black")["curve_mean"])
      insertion = json.loads(_row(rows, method, "insertion", order, "black")["curve_mean"])
      assert deletion[0] == pytest.approx(on(x), **tol) and insertion[-1] == pytest.approx(on(x), **tol)
      assert deletion[-1] == pytest.approx(on(black), **tol) and insertion[0] == pytest.approx(on(black), **tol)
  row = _row(rows, "gradient", "deletion", "morf", "blur")
  assert json.loads(row["x"]) == [0, 0.25, 0.5, 0.75, 1]
  # The mean of the images' trapezoid areas is the trapezoid area of the mean curve (it is linear).
  assert row["area_mean"] == pytest.approx(np.trapezoid(json.loads(row["curve_mean"]), json.loads(row["x"])), rel=1e-5)
  road = _row(rows, "gradient", "road", "morf", "noisy_linear")
  assert json.loads(road["x"]) == [0.25, 0.5] and 0 <= road["accuracy_mean"] <= 1
  assert road["area_mean"] == pytest.approx(np.mean(json.loads(road["curve_mean"])), rel=1e-5)

  # A rerun computes nothing; with one method's rows gone, only that method.
  calls = []
  maps = ModelRunner.maps
  monkeypatch.setattr(ModelRunner, "maps", lambda self, spec, *a, **kw: calls.append(spec.name) or maps(self, spec, *a, **kw))
  before = path.read_text()
  _evaluate(config, tmp_path, trained)
  assert calls == [] and path.read_text() == before
  saved = faithfulness_stage.TABLE.read(path)
  faithfulness_stage.TABLE.write(path, [r for r in saved if r["method"] != "gradient_x_input"])
  again = _evaluate(config, tmp_path, trained)
  assert calls == ["gradient_x_input"] and len(again) == len(rows)
  recomputed = _row(again, "gradient_x_input", "road", "lerf", "noisy_linear")
  assert recomputed["area_mean"] == pytest.approx(_row(rows, "gradient_x_input", "road", "lerf", "noisy_linear")[
      "area_mean"], rel=1e-5)

  text = report.build([tmp_path], tmp_path / "docs").read_text()
  assert "## Faithfulness" in text and "| gradient_x_input |" in text.split("## Faithfulness")[1]
  assert (tmp_path / "docs" / "results" / f"{tmp_path.name}_faithfulness_curves.png").exists()


@pytest.mark.parametrize("field,value,message", [
    ("methods", ("gradient", "nope"), "faithfulness.methods"),
    ("curves", ("deletion", "flip"), "faithfulness.curves contains 'flip'"),
    ("replacements", ("zero",), "faithfulness.replacements contains 'zero'"),
    ("orders", (), "faithfulness.orders is empty"),
    ("steps", 0, "faithfulness.steps=0"),
    ("road_percentages", (50, 100), "faithfulness.road_percentages"),
    ("score", "probability", "faithfulness.score='probability'"),
])
def test_settings_are_checked_with_the_field_named(tiny_config, field, value, message):
  tiny_config.faithfulness[field] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    faithfulness_stage.Faithfulness.check(tiny_config)


def test_a_method_that_cannot_run_is_refused_before_training(tmp_path, tiny_config):
  config = _config(tiny_config)
  config.train.enabled = True
  config.faithfulness.methods = ("gradcam(layer='nope')",)
  with pytest.raises(ConfigError, match="faithfulness.methods entry .* does not build"):
    pipeline.run(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()
