"""Nothing silent, nothing overwritten: damaged stage files, imported weights that are not what they
should be, degenerate models and maps, and settings out of range. Each case once gave a traceback or a
silently wrong number; each is now one line naming the file or the setting, or a named recomputation."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saliency_jax import data as data_lib
from saliency_jax import models, pipeline, report
from saliency_jax.attribution import registry
from saliency_jax.config_checks import ConfigError, check_config
from saliency_jax.evaluation import results
from saliency_jax.stages import faithfulness as faithfulness_stage
from saliency_jax.stages import single_pixel as grid
from tests.test_torch_import import _hand_made_state_dict


def _faithfulness_config(config):
  config.model.channels, config.train.enabled, config.single_pixel.enabled = (4, 8), False, False
  f = config.faithfulness
  f.enabled, f.methods, f.num_images, f.batch_size = True, ("gradient", "gradient_x_input"), 8, 8
  f.steps, f.road_percentages, f.replacements, f.curves, f.road_noise = 2, (50,), ("black",), ("deletion", "road"), 0.0
  return config


def _weights(config, tmp_path, scale=0.3, name="weights.npz"):
  """Random small_cnn weights (times `scale`: 0 makes every map constant, NaN every output NaN) as
  a state_dict file for `model.torch_weights`."""
  data = data_lib.prepare(config, conditions=())
  model = models.from_config(config.model, data.num_classes)
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), (1, 32, 32, 3)))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float32), shapes)
  np.savez(tmp_path / name, **_hand_made_state_dict(variables, {"out": (8, 8, 8)}))
  config.model.torch_weights = str(tmp_path / name)
  return tmp_path / name


def test_a_damaged_stage_table_is_recomputed_where_damaged_and_named(tmp_path, tiny_config, caplog):
  config = _faithfulness_config(tiny_config)
  _weights(config, tmp_path)
  workdir = tmp_path / "run"
  first = pipeline.run(config, workdir)["faithfulness"]
  path = workdir / "faithfulness" / "results.csv"
  whole = path.read_text()
  caplog.set_level(logging.WARNING, logger="absl")

  # Cut inside its last row (a number cut short still parses): the row is named and its method computed again.
  path.write_text(whole[:-3])  # the line end and the last digit of its last number
  again = pipeline.run(config, workdir)["faithfulness"]
  assert "left out 1 damaged row(s)" in caplog.text and "the file ends inside it" in caplog.text
  assert len(again) == len(first) and path.read_text().count("\n") == whole.count("\n")
  assert [float(r["area_mean"]) for r in faithfulness_stage.TABLE.read(path)] == pytest.approx(
      [float(r["area_mean"]) for r in first])

  # Cut inside the key columns of a row: no junk row is left beside the recomputed one.
  lines = whole.splitlines(keepends=True)
  path.write_text("".join(lines[:-1]) + lines[-1][:30] + "\n")
  pipeline.run(config, workdir)
  assert len(faithfulness_stage.TABLE.read(path)) == len(first) and path.read_text().count("\n") == len(lines)

  # A table without one of its columns, or random bytes: set aside, named, and computed again.
  for aside, damage in (("results.csv.damaged", whole.replace("area_std,", "", 1).encode()),
                        ("results.csv.damaged2", bytes(range(256)) * 4)):  # never over an earlier one
    caplog.clear()
    path.write_bytes(damage)
    assert len(pipeline.run(config, workdir)["faithfulness"]) == len(first)
    assert f"set aside as {aside}," in caplog.text
    assert (path.parent / aside).read_bytes() == damage
  # The report reads what the stage wrote; a damaged table there is one line naming it.
  path.write_bytes(bytes(range(256)))
  with pytest.raises(ConfigError, match="results.csv is not a text table"):
    report.faithfulness_tables([report.load_run(workdir)])


def test_weights_that_are_not_finite_stop_before_any_stage_and_constant_maps_are_counted(tmp_path, tiny_config,
                                                                                         caplog):
  config = _faithfulness_config(tiny_config)
  config.faithfulness.enabled, config.single_pixel.enabled = False, True
  sp = config.single_pixel
  sp.methods, sp.targets, sp.outputs, sp.max_images, sp.batch_size, sp.examples = (
      ("gradient",), ("predicted",), ("logit",), 10, 10, 0)
  _weights(config, tmp_path, scale=float("nan"), name="nan.npz")
  with pytest.raises(ConfigError, match=r"outputs are not finite on \d+ of \d+ test images: the weights of "
                                        r"model.torch_weights='[0-9a-f]{12}' hold NaN"):
    pipeline.run(config, tmp_path / "nan")
  assert not (tmp_path / "nan" / "single_pixel").exists()
  # All-zero weights: every map is constant, so every pixel ties and pointing is 100% on a model at
  # chance. The cell counts them and the log says so; the report marks the cell.
  _weights(config, tmp_path, scale=0.0, name="zeros.npz")
  caplog.set_level(logging.WARNING, logger="absl")
  (cell,) = pipeline.run(config, tmp_path / "zeros")["single_pixel"]
  assert cell["overall.attribution_correct_accuracy"] == 1.0 and cell["degenerate"] == 10
  assert "the map is constant or not finite on 10 of 10 images" in caplog.text


@pytest.mark.parametrize("damage", ["truncated", "empty", "npy"])
def test_a_weights_file_that_is_not_one_is_one_line(tmp_path, tiny_config, damage):
  config = _faithfulness_config(tiny_config)
  path = _weights(config, tmp_path)
  if damage == "truncated":
    path.write_bytes(path.read_bytes()[:200])
  elif damage == "empty":
    path.write_bytes(b"")
  else:
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "array.npy").rename(path)
  with pytest.raises(ConfigError, match=r"model.torch_weights='.*weights.npz' does not load into small_cnn"):
    pipeline.run(config, tmp_path / "run")
  assert not (tmp_path / "run" / "config.json").exists()


def test_config_json_is_written_only_after_every_check_passed(tmp_path, tiny_config):
  tiny_config.model.name = "resnet50"
  with pytest.raises(ConfigError, match="model.name='resnet50'"):
    pipeline.run(tiny_config, tmp_path)
  assert not (tmp_path / "config.json").exists()
  tiny_config.model.name = "small_cnn"  # the corrected command is not refused as another model's workdir
  tiny_config.train.epochs, tiny_config.single_pixel.enabled = 1, False
  assert pipeline.run(tiny_config, tmp_path)["train"].epoch == 1


@pytest.mark.parametrize("field,value,message", [
    ("faithfulness.road_noise", float("nan"), "faithfulness.road_noise=nan is not allowed"),
    ("faithfulness.road_noise", 5.0, "faithfulness.road_noise=5.0 is not allowed; give a std in \\[0, 1\\]"),
    ("train.batch_size", 1, "train.batch_size=1 gives each of the 1 device\\(s\\) 1 image per step"),
    ("train.learning_rate", float("inf"), "train.learning_rate=inf"),
    ("model.maxpool", False, "model.maxpool=False does not apply to model.name='small_cnn'"),
    ("data.path", "somewhere", "data.path='somewhere' applies to data.source='folder'"),
])
def test_values_out_of_range_are_named(tiny_config, field, value, message):
  tiny_config.faithfulness.enabled = True
  section, name = field.split(".")
  tiny_config[section][name] = value
  with pytest.raises(ValueError, match=message):
    check_config(tiny_config, num_devices=1)


def test_a_grid_of_a_workdir_without_metrics_stays_out_of_the_means(tmp_path):
  # A workdir with a grid but no metrics.csv (and no imported weights): not trained there, named.
  w = tmp_path / "small_cnn_seed0"
  (w / "single_pixel").mkdir(parents=True)
  row = {**{c: "0" for c in grid.TABLE.columns}, "method_revision": "1"}
  row.update(model="small_cnn", method="gradient", method_options="", reduction="mean", target="predicted",
             output="logit", weights="", num_images=10)
  grid.TABLE.write(w / "single_pixel" / "results.csv", [row, {**row, "target": "label"}])
  (w / "config.json").write_text(json.dumps({"config": {"seed": 0, "model": {"name": "small_cnn"}}}))
  text = report.build([w], tmp_path / "docs").read_text()
  assert "small_cnn seed 0 (small_cnn_seed0): no metrics.csv" in text and "No complete single-pixel grid yet" in text


def test_rows_of_a_changed_method_are_left_out_and_named_and_old_tables_read_as_revision_1(tmp_path, monkeypatch,
                                                                                         caplog):
  path = tmp_path / "results.csv"
  row = {**{c: "0" for c in grid.TABLE.columns}, "weights": "", "method_options": "", "target": "predicted"}
  old = [c for c in grid.TABLE.columns if c != results.REVISION]  # as written before the column existed
  rows = [{**row, "method": m} for m in ("gradient", "integrated_gradients", "someone_elses_method")]
  path.write_text(",".join(old) + "\n" + "".join(",".join(str(r[c]) for c in old) + "\n" for r in rows))
  assert [r[results.REVISION] for r in grid.TABLE.read(path)] == ["1"] * 3
  assert len(results.current(grid.TABLE.frame(path), path)) == 3
  monkeypatch.setitem(registry._REVISIONS, "integrated_gradients", 2)  # pylint: disable=protected-access
  caplog.set_level(logging.WARNING, logger="absl")
  now = results.current(grid.TABLE.frame(path), path)
  assert list(now["method"]) == ["gradient", "someone_elses_method"]
  assert any(str(path) in r.getMessage() and "integrated_gradients (revision 1; counted: 2)" in r.getMessage()
             for r in caplog.records)
  # A method this process does not know (a run's own import) counts the newest revision the rows hold.
  grid.TABLE.write(path, [{**rows[2], results.REVISION: 1, "target": t} for t in ("predicted", "label")]
                   + [{**rows[2], results.REVISION: 2}])
  now = results.current(grid.TABLE.frame(path), path)
  assert list(zip(now["method"], now[results.REVISION], now["target"])) == [("someone_elses_method", 2, "predicted")]
