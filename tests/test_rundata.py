"""The report rebuilt from committed run data alone (a small copy of runs/cpu: resnet18 seed 0's
training, its paper grid, the first cells of its leaderboard grid, still running): no workdir needed."""

import json
import pathlib
import shutil

import pandas as pd
import pytest

from saliency_jax import report
from saliency_jax.evaluation import timing
from saliency_jax.stages import single_pixel as grid

RUNDATA = pathlib.Path(__file__).parent / "data" / "rundata"


def test_the_report_is_rebuilt_from_run_data_and_quotes_its_numbers(tmp_path):
  runs = sorted(RUNDATA.glob("*_seed*"))
  text = report.build(runs, tmp_path / "docs").read_text()
  assert "on a 2-core CPU" in text and "## What differs from the paper" in text  # the CPU reproduction's runs
  assert "Runs started at `19fed20`: resnet18_seed0 (stages also at `df66b54`)" in text
  rows = pd.DataFrame(grid.TABLE.read(runs[0] / "single_pixel" / "results.csv"))
  pick = lambda method, target, output: float(rows[(rows["method"] == method) & (rows["target"] == target)
                                                    & (rows["output"] == output)]["overall.attribution_correct_accuracy"]
                                               .iloc[0])
  # The paper's table: every target and output, its leaderboard cells (predicted only) not in it.
  table = text.split("## Pointing accuracy\n")[1].split("## Importance")[0]
  line = next(l for l in table.splitlines() if l.startswith("| gradient_x_input |"))
  assert [c.strip() for c in line.split("|")[2:6]] == [f"{100 * pick('gradient_x_input', t, o):.1f}" for t, o in
                                                      report.HUES]
  assert "| gradient |" not in table
  # The leaderboard: the paper's methods and the first leaderboard cells, sorted by pointing (logit).
  board = text.split("## Leaderboard")[1].split("**On the misses**")[0]
  methods = [l.split("|")[1].strip() for l in board.splitlines() if l.startswith("| ") and "---" not in l][1:]
  assert methods[:2] == ["abs_gradient_x_abs_input", "absolute_gradient"] and "gradient_x_input" in methods
  assert "| abs_gradient_x_abs_input | 99.7 | 97.7 |" in board
  # The methods whose cells the running grid still plans are listed, marked as running.
  assert methods[-1] == "vargrad" and "| vargrad | running | running | – |" in board
  # Its misses: the importance columns of every method with a cell, in the leaderboard's order.
  misses = text.split("**On the misses**")[1].split("<details>")[0]
  listed = [l.split("|")[1].strip() for l in misses.splitlines() if l.startswith("| ") and "---" not in l][1:]
  logit = {l.split("|")[1].strip(): l.split("|")[3].strip() for l in board.splitlines() if l.startswith("| ")}
  assert logit["gradient"] == "running" and listed == [m for m in methods if logit[m] != "running"]
  cell = rows[(rows["method"] == "gradient_x_input") & (rows["target"] == "predicted") & (rows["output"] == "logit")]
  assert f"| gradient_x_input | predicted / logit | {int(cell['num_missed'].iloc[0])}.0 |" in misses
  # The per-class table comes from the run data's per-class summary (no per-image files here).
  assert "## Pointing accuracy per class" in text
  assert "<details><summary><b>Per class and seed</b>" in text and "| gradient_x_input | 0 |" in text


def test_the_leaderboard_takes_its_times_from_an_idle_timing_and_export_keeps_it(tmp_path):
  run = tmp_path / "runs" / "resnet18_seed0"
  shutil.copytree(RUNDATA / "resnet18_seed0", run)
  row = {"model": "resnet18", "method": "absolute_gradient", "method_options": "", "method_revision": 1, "output": "logit",
         "images": 32,
         "rounds": 3, "seconds_per_image": 0.0123, "seconds_min": 0.012, "seconds_max": 0.013,
         "machine": "Some CPU, 2 cores", "jax": "0", "date": "2026-12-07T00:00:00+00:00", "commit": "abc"}
  timing.TABLE.write(run / timing.FILE, [row, {**row, "output": "softmax", "seconds_per_image": 9.0}])
  board = report.build([run], tmp_path / "docs").read_text().split("## Leaderboard")[1].split("## Sanity")[0]
  assert "timed apart on an idle machine (Some CPU, 2 cores; 2026-12-07; 32 images per call" in board
  line = next(l for l in board.splitlines() if l.startswith("| absolute_gradient |"))
  assert line.rstrip(" |").endswith("| 12.3")  # ms, the logit row's
  assert next(l for l in board.splitlines() if l.startswith("| gradient_x_input |")).rstrip(" |").endswith("| –")
  (out,) = report.export([run], tmp_path / "export")
  assert (out / timing.FILE).read_text() == (run / timing.FILE).read_text()
  (run / timing.FILE).write_text("not,a\ntiming,table\n")
  with pytest.raises(report.ReportError, match="seconds.csv lacks the columns"):
    report.build([run], tmp_path / "docs2")


def test_a_rebuild_removes_the_figures_it_no_longer_links(tmp_path):
  runs = sorted(RUNDATA.glob("*_seed*"))
  figures = tmp_path / "docs" / "results"
  figures.mkdir(parents=True)
  (figures / "pointing_accuracy_vgg16.png").write_bytes(b"an earlier build's figure of a run left out")
  (figures / "notes.txt").write_text("not a figure: kept")
  text = report.build(runs, tmp_path / "docs").read_text()
  assert not (figures / "pointing_accuracy_vgg16.png").exists() and (figures / "notes.txt").exists()
  assert (figures / "leaderboard.png").exists() and "(results/leaderboard.png)" in text


def test_a_run_stored_before_later_model_fields_resumes_and_reports_beside_a_new_one(tmp_path):
  # resnet18 seed 0's config.json predates model.channels and model.hidden (fields of other models):
  # its workdir resumes under today's config, and a run stored today counts as a seed of the same model.
  from configs import resnet_cpu  # pylint: disable=g-import-not-at-top
  from saliency_jax import pipeline  # pylint: disable=g-import-not-at-top

  old = tmp_path / "resnet18_seed0"
  shutil.copytree(RUNDATA / "resnet18_seed0", old)
  assert "model.channels" not in json.loads((old / "config.json").read_text())["model_settings"]
  config = resnet_cpu.get_config()
  config.data.source = "folder"  # as launch/reproduce_cpu.sh runs it
  assert pipeline.check_workdir_config(config, old)
  new = tmp_path / "resnet18_seed1"
  new.mkdir()
  config.seed = 1
  (new / "config.json").write_text(json.dumps({"model_settings": pipeline._model_settings(config),  # pylint: disable=protected-access
                                               "config": json.loads(config.to_json_best_effort())}))
  report.check_runs([report.load_run(old), report.load_run(new)])
  config.train.learning_rate = 0.5
  (new / "config.json").write_text(json.dumps({"model_settings": pipeline._model_settings(config)}))  # pylint: disable=protected-access
  with pytest.raises(report.ReportError, match="train.learning_rate"):
    report.check_runs([report.load_run(old), report.load_run(new)])
  (new / "config.json").write_text(json.dumps({"model_settings": None}))
  with pytest.raises(report.ReportError, match="model_settings are not a JSON object"):
    report.load_run(new)
