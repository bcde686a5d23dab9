"""The report: rebuilt from workdirs, its numbers are those of the result files."""

import shutil

import pandas as pd

from saliency_jax import pipeline, report
from saliency_jax.evaluation import grid


def test_report_is_rebuilt_from_workdirs_and_quotes_their_numbers(tmp_path, tiny_config, tiny_trained_run):
  config = tiny_config
  sp = config.single_pixel
  sp.methods, sp.targets, sp.outputs = ("absolute_gradient", "gradient_x_input"), ("predicted", "label"), ("logit",)
  sp.max_images, sp.batch_size, sp.examples = 20, 10, 2
  config.sanity.studies, config.sanity.methods, config.sanity.num_images = ("class_sensitivity",), ("gradient",), 10
  workdirs = [tmp_path / "runs" / "small_cnn_seed0", tmp_path / "runs" / "small_cnn_seed1",
              tmp_path / "runs" / "small_cnn_seed2"]
  shutil.copytree(tiny_trained_run, workdirs[0])  # the tiny run, trained: the grid and the study follow
  pipeline.run(config, workdirs[0])
  # A second seed without a second training run: seed 0's workdir with other pointing accuracies.
  shutil.copytree(workdirs[0], workdirs[1])
  rows = grid.TABLE.read(workdirs[1] / "single_pixel" / "results.csv")
  for r in rows:
    r["model_seed"] = 1
    r["overall.attribution_correct_accuracy"] = float(r["overall.attribution_correct_accuracy"]) / 2
  grid.TABLE.write(workdirs[1] / "single_pixel" / "results.csv", rows)
  workdirs[2].mkdir()  # a run that has not started yet is reported as such, not skipped

  path = report.build(workdirs, tmp_path / "docs", notes="The pixel is found.", commit="abc1234")
  text = path.read_text()
  for heading in ("## What differs from the paper", "## Models", "## Pointing accuracy", "## Importance",
                  "## Sanity checks", "## Wall time per stage", "## Reading", "abc1234"):
    assert heading in text
  assert "| `train.learning_rate` | 0.001 | 0.01 |" in text  # derived from the two configs

  rows = [r for w in workdirs[:2] for r in grid.TABLE.read(w / "single_pixel" / "results.csv")]
  pointing = pd.Series([float(r["overall.attribution_correct_accuracy"]) for r in rows
                        if r["method"] == "gradient_x_input" and r["target"] == "label"])
  expected = f"{100 * pointing.mean():.1f} ({100 * pointing.std(ddof=1):.1f})"
  line = next(l for l in text.splitlines() if l.startswith("| gradient_x_input |"))
  assert line.split("|")[5].strip() == expected  # the label / logit column
  assert "Runs not trained yet: small_cnn seed 2." in text
  assert "small_cnn_seed2" not in text.split("## Wall time")[1].split("## Commands")[0]
  assert (tmp_path / "docs" / "results" / "pointing_accuracy_small_cnn.png").exists()
  assert (tmp_path / "docs" / "results" / "examples_small_cnn_seed0.png").exists()
  assert "small_cnn_seed0: class_sensitivity" in text
