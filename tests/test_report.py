"""The report: rebuilt from workdirs or their exported run data, its numbers are those of the result
files; runs it cannot use are named, conflicts and bad arguments are one line, nothing is overwritten."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from saliency_jax import files, pipeline, report
from saliency_jax.evaluation import similarity
from saliency_jax.stages import base
from saliency_jax.stages import sanity as sanity_stage
from saliency_jax.stages import single_pixel as grid
from tests.conftest import REPO


def _two_seeds(tmp_path, tiny_config, tiny_trained_run):
  """The tiny run with a grid and a study, and a second 'seed': its copy with other pointing accuracies."""
  config = tiny_config
  sp = config.single_pixel
  sp.methods, sp.targets, sp.outputs = ("absolute_gradient", "gradient_x_input"), ("predicted", "label"), ("logit",)
  sp.max_images, sp.batch_size, sp.examples = 20, 10, 2
  config.sanity.studies, config.sanity.methods, config.sanity.num_images = ("class_sensitivity",), ("gradient",), 10
  workdirs = [tmp_path / "runs" / f"small_cnn_seed{s}" for s in range(3)]
  shutil.copytree(tiny_trained_run, workdirs[0])
  pipeline.run(config, workdirs[0])
  shutil.copytree(workdirs[0], workdirs[1])
  rows = grid.TABLE.read(workdirs[1] / "single_pixel" / "results.csv")
  for r in rows:
    r["model_seed"] = 1
    r["overall.attribution_correct_accuracy"] = float(r["overall.attribution_correct_accuracy"]) / 2
  grid.TABLE.write(workdirs[1] / "single_pixel" / "results.csv", rows)
  stored = json.loads((workdirs[1] / "config.json").read_text())
  stored["config"]["seed"] = stored["model_settings"]["seed"] = 1
  (workdirs[1] / "config.json").write_text(json.dumps(stored))
  workdirs[2].mkdir()  # a run that has not started yet is named, not averaged in
  return workdirs


def test_report_is_rebuilt_from_workdirs_and_from_their_run_data_alike(tmp_path, tiny_config, tiny_trained_run):
  workdirs = _two_seeds(tmp_path, tiny_config, tiny_trained_run)
  path = report.build(workdirs, tmp_path / "docs", notes="The pixel is found.")
  text = path.read_text()
  for heading in ("## Models", "## Pointing accuracy", "## Importance", "## Pointing accuracy per class",
                  "## Leaderboard", "## Sanity checks", "## Wall time per stage", "## Reading"):
    assert heading in text
  # Not the CPU reproduction (synthetic data, small_cnn): its scale and commands are not claimed.
  assert "**Runs.** small_cnn seed 0: synthetic data, 2 epochs" in text and "## What differs" not in text
  # The reproduction's runs get the configs' differences from the paper, derived from the two configs.
  assert "| `train.learning_rate` | 0.001 | 0.01 |" in report.config_differences("resnet", "resnet_cpu")
  rows = [r for w in workdirs[:2] for r in grid.TABLE.read(w / "single_pixel" / "results.csv")]
  pointing = pd.Series([float(r["overall.attribution_correct_accuracy"]) for r in rows
                        if r["method"] == "gradient_x_input" and r["target"] == "label"])
  expected = f"{100 * pointing.mean():.1f} ({100 * pointing.std(ddof=1):.1f})"
  line = next(l for l in text.split("## Pointing accuracy")[1].splitlines() if l.startswith("| gradient_x_input |"))
  assert line.split("|")[5].strip() == expected  # the label / logit column
  # The leaderboard's misses per seed: each seed's own numbers, as its results.csv has them.
  mine = next(r for r in rows if r["method"] == "gradient_x_input" and r["target"] == "predicted"
              and r["output"] == "logit" and str(r["model_seed"]) == "0")
  sub = float(mine["attribution_incorrect.truebg_withblackpix_model_accuracy"])
  per_seed = text.split("On the misses, per seed")[1].split("</details>")[0]
  row = next(l for l in per_seed.splitlines() if l.startswith("| gradient_x_input | 0 |")).split("|")
  assert row[3].strip() == f"{float(mine['overall.attribution_incorrect']):.0f}"
  assert row[6].strip() == f"{100 * sub:.1f}"  # sub: pix, the fourth importance column
  # The pointing table's head: the model's accuracy with the pixel, the mean of the seeds' own.
  with_pixel = np.mean([float(next(r for r in rows if str(r["model_seed"]) == s)["overall.withpix_model_accuracy"])
                        for s in ("0", "1")])
  assert f"the model's accuracy on them with the pixel {100 * with_pixel:.1f}%" in text
  assert "the planted pixel set black: % of each class's images still right" in text
  assert "small_cnn seed 2 (small_cnn_seed2): no metrics.csv" in text  # named, with the reason
  assert "small_cnn_seed2" not in text.split("## Wall time")[1].split("## Commands")[0]
  assert (tmp_path / "docs" / "results" / "pointing_accuracy_small_cnn.png").exists()
  assert (tmp_path / "docs" / "results" / "leaderboard.png").exists()
  assert (tmp_path / "docs" / "results" / "examples_small_cnn_seed0.png").exists()
  assert "small_cnn_seed0: class_sensitivity" in text
  assert "Runs started at `" in text  # the commit, from provenance.json

  # The run data: no checkpoints, no per-image files, a few kB; the same document from it.
  exported = report.export(workdirs, tmp_path / "rundata")
  assert [e.name for e in exported] == ["small_cnn_seed0", "small_cnn_seed1"]  # seed 2: nothing trained to keep
  assert not list((tmp_path / "rundata").rglob("checkpoints")) and not list((tmp_path / "rundata").rglob("*.npz"))
  assert (exported[0] / report.PER_CLASS).exists()
  assert sum(f.stat().st_size for f in (tmp_path / "rundata").rglob("*") if f.is_file()) < 2_000_000
  again = report.build(exported, tmp_path / "docs2", notes="The pixel is found.").read_text()
  # The same but for the paths and the not-yet-trained seed 2, which the run data leaves out.
  strip = lambda t: [l for l in t.splitlines() if l and ("small_cnn_seed" not in l or l.startswith("|"))]
  assert strip(again) == strip(text)


def _metrics(w, accuracies, **train):
  w.mkdir(parents=True, exist_ok=True)
  (w / "config.json").write_text(json.dumps({"config": {"train": {"epochs": 5, **train}}}))
  rows = [{"epoch": e + 1, "train_accuracy": a, "test_pixel_accuracy": a, "test_nopix_accuracy": 0.1,
           "test_conflict_accuracy": 0.02, "epoch_seconds": 60, "images_per_sec": 100} for e, a in enumerate(accuracies)]
  with files.atomic_open(w / "metrics.csv", "w") as f:
    f.write(",".join(rows[0]) + "\n" + "".join(",".join(map(str, r.values())) + "\n" for r in rows))
  return w


def test_runs_still_training_stay_out_of_the_means(tmp_path):
  # Three resnet18 seeds: one done (5 of 5 epochs), one stopped early because it fit the training
  # set, one killed after 2 of 5 epochs. The means are over the first two only.
  runs = [report.load_run(_metrics(tmp_path / "resnet18_seed0", [0.5, 0.8, 0.9, 0.95, 0.99])),
          report.load_run(_metrics(tmp_path / "resnet18_seed1", [0.6, 0.97], stop_at_train_accuracy=0.95)),
          report.load_run(_metrics(tmp_path / "resnet18_seed2", [0.4, 0.7]))]
  done, left_out = report.trained_runs(runs)
  text = report.training_table(done, left_out)
  line = next(l for l in text.splitlines() if l.startswith("| resnet18 |"))
  assert line.startswith("| resnet18 | 0 1 | 5 2 | 98.0 (1.4) | 98.0 (1.4) |"), line
  assert "resnet18 seed 2 (resnet18_seed2): still training (2 of 5 epochs)" in text


def test_a_run_stopped_at_the_shortcut_is_finished(tmp_path):
  # configs/vgg16_cpu.py trains at most 15 epochs, until 99% test accuracy with the pixel.
  run = report.load_run(_metrics(tmp_path / "vgg16_seed0", [0.5], epochs=15, stop_at_pixel_accuracy=0.99))
  stopped = {"epoch": 4, "train_accuracy": 0.6, "test_pixel_accuracy": 0.995}
  assert report._planned_epochs(run, stopped) == 4.0
  assert report._planned_epochs(run, {**stopped, "test_pixel_accuracy": 0.98}) == 15.0


def test_sanity_table_tells_not_applicable_from_undefined(tmp_path):
  base_row = {"model": "resnet18", "model_seed": 0, "data_seed": 0, "checkpoint_epoch": 5, "study": "input_invariance",
              "method_options": "", "method_revision": 1, "output": "logit", "target": "predicted", "num_images": 4, "step": "",
              "layer": "", "seconds": 1.0, **{f"{m}_{s}": 0 for m in similarity.METRICS for s in ("std", "undefined")}}
  metrics = lambda v: {f"{m}_mean": v for m in similarity.METRICS}
  rows = [{**base_row, "method": "gradient", "comparison": "twin", **metrics(1.0)},
          {**base_row, "method": "gradient", "comparison": "random_map", **metrics(0.0)},
          {**base_row, "method": "integrated_gradients", "comparison": "twin", **metrics(0.5)},
          {**base_row, "method": "integrated_gradients", "comparison": "twin_shifted_baseline", **metrics(float("nan"))},
          {**base_row, "method": "integrated_gradients", "comparison": "random_map", **metrics(0.0)}]
  (tmp_path / "resnet18_seed0" / "sanity").mkdir(parents=True)
  sanity_stage.TABLE.write(tmp_path / "resnet18_seed0" / "sanity" / "input_invariance.csv", rows)
  text, _ = report.sanity_tables([report.load_run(tmp_path / "resnet18_seed0")])
  lines = {l.split(" | ")[0][2:]: l for l in text.splitlines() if l.startswith("| ") and "---" not in l}
  assert lines["gradient"] == "| gradient | 1.00 | – | 0.00 |"  # no baseline to shift: not applicable
  assert lines["integrated_gradients"] == "| integrated_gradients | 0.50 | nan | 0.00 |"
  assert "nan: the rank correlation is undefined" in text


def test_commits_line_names_each_runs_commit_from_its_data(tmp_path):
  runs = []
  for name, commit, stages in (("resnet18_seed0", "aaa1111", ["aaa1111", "aaa1111"]),
                               ("resnet18_seed1", "", ["aaa1111", "ccc3333"]), ("vgg16_seed0", "bbb2222", [])):
    w = tmp_path / name
    w.mkdir()
    if commit:
      (w / "COMMIT").write_text(commit + "\n")
    (w / "provenance.json").write_text(json.dumps([{"stage": "train", "commit": c, "device_kind": "cpu",
                                                    "devices": 1, "platform": "cpu"} for c in stages]))
    runs.append(report.load_run(w))
  assert report.commits_line(runs) == ("Runs started at `aaa1111`: resnet18_seed0, resnet18_seed1 (stages also at "
                                       "`ccc3333`); `bbb2222`: vgg16_seed0. Devices: cpu x1 (cpu).")


def test_a_resume_that_trained_nothing_is_not_a_commit_that_computed(tmp_path):
  w = tmp_path / "resnet18_seed0"
  w.mkdir()
  (w / "COMMIT").write_text("aaa1111\n")
  entries = [("train", "aaa1111", {"epochs": 3}), ("train", "bbb2222", {"epochs": 5}),  # stopped, resumed
             ("train", "ccc3333", {"epochs": 5}),  # finished already: the resume trained nothing
             ("single_pixel", "ccc3333", {"units": 2})]
  (w / "provenance.json").write_text(json.dumps([{"stage": s, "commit": c, **what} for s, c, what in entries]))
  assert report.commits_line([report.load_run(w)]).startswith(
      "Runs started at `aaa1111`: resnet18_seed0 (stages also at `bbb2222`, `ccc3333`).")
  entries[-1] = ("train", "ddd4444", {"epochs": 5})
  (w / "provenance.json").write_text(json.dumps([{"stage": s, "commit": c, **what} for s, c, what in entries]))
  assert "`ccc3333`" not in report.commits_line([report.load_run(w)])
  # Entries that say where they started: epoch 5 trained again (a damaged checkpoint set aside) counts.
  entries[-1] = ("train", "eee5555", {"epochs": 5, "from_epoch": 4})
  (w / "provenance.json").write_text(json.dumps([{"stage": s, "commit": c, **what} for s, c, what in entries]))
  assert "`eee5555`" in report.commits_line([report.load_run(w)])


def test_an_incomplete_or_running_grid_is_left_out_of_the_means_and_listed(tmp_path):
  # Seeds 1 and 2 have 1 of the 2 paper methods at (0, 0): averaging them in would give one row 3 seeds
  # and the other 1. Seed 1's grid still plans the missing method's label cell. Seed 0's third method
  # has the predicted target only: a leaderboard method, not a paper row.
  frames, runs = [], []
  for seed, methods in ((0, "abc"), (1, "a"), (2, "a")):
    w = tmp_path / f"resnet18_seed{seed}"
    (w / "single_pixel").mkdir(parents=True)
    runs.append(report.load_run(w))
    frames += [dict(model="resnet18", model_seed=seed, workdir=str(w), test_position_sd=0.0, test_colour_sd=0.0,
                    method_label=m, target=t, output="logit") for m in methods for t in ("predicted", "label")
               if not (m == "c" and t == "label")]
  marker = runs[1].path / "single_pixel" / base.RUNNING
  marker.write_text(json.dumps({"keys": [grid_stage_key("a", "label"), grid_stage_key("b", "label")]}))
  kept, left_out = report.paper_grids(runs, pd.DataFrame(frames))
  assert set(kept["model_seed"]) == {0} and set(kept["method_label"]) == {"a", "b"}
  assert left_out == ["resnet18 seed 1 at test jitter (0, 0): 2 of 4 cells, its grid still running",
                      "resnet18 seed 2 at test jitter (0, 0): 2 of 4 cells"]
  # A grid still running whose paper cells are all done (the leaderboard's are left) enters.
  frames += [dict(frames[-1], model_seed=1, workdir=str(runs[1].path), method_label="b", target=t) for t in
             ("predicted", "label")]
  kept, left_out = report.paper_grids(runs, pd.DataFrame(frames))
  assert set(kept["model_seed"]) == {0, 1} and len(left_out) == 1


def grid_stage_key(method, target):
  return grid.TABLE.key_of({"checkpoint_epoch": 5, "weights": "", "test_position_sd": 0.0, "test_colour_sd": 0.0,
                            "method": method, "method_options": "", "reduction": "mean", "target": target,
                            "output": "logit", "num_images": 10, "method_revision": 1})


def test_a_stage_says_it_is_running_until_its_last_unit(trained_tmp_path, tiny_config, monkeypatch):
  # Killed in its second cell, the grid leaves its plan behind; finished, it removes it.
  config = tiny_config
  sp = config.single_pixel
  sp.methods, sp.targets, sp.outputs = ("absolute_gradient", "gradient_x_input"), ("predicted",), ("logit",)
  sp.test_jitter, sp.max_images, sp.examples = ((0.0, 0.0),), 8, 0
  config.train.enabled = False  # evaluate the trained workdir's checkpoint
  outcomes, calls = grid.SinglePixel.outcomes, []

  def killed_in_the_second(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return outcomes(self, *args, **kwargs)

  monkeypatch.setattr(grid.SinglePixel, "outcomes", killed_in_the_second)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run(config, trained_tmp_path)
  marker = trained_tmp_path / "single_pixel" / base.RUNNING
  assert len(json.loads(marker.read_text())["keys"]) == 2
  assert len(grid.TABLE.read(trained_tmp_path / "single_pixel" / "results.csv")) == 1
  monkeypatch.setattr(grid.SinglePixel, "outcomes", outcomes)
  pipeline.run(config, trained_tmp_path)
  assert not marker.exists() and len(calls) == 2  # the first cell was read back


def test_importance_rows_follow_the_methods_and_targets_not_the_order_cells_finished():
  # Seed 0 re-ran its IG predicted / softmax cell last: its row must still come first under IG.
  def cell(seed, method, target, output):
    return {"model": "resnet18", "test_position_sd": 0.0, "test_colour_sd": 0.0, "model_seed": seed,
            "method_label": method, "target": target, "output": output,
            "overall.attribution_incorrect": 3.0, **{c: 0.5 for c in report.IMPORTANCE}}
  order = [("gradient", "predicted", "logit"), ("ig", "label", "logit"), ("ig", "predicted", "logit"),
           ("gradient", "predicted", "softmax"), ("ig", "predicted", "softmax")]
  runs = pd.DataFrame([cell(s, *c) for s in (0, 1) for c in order])
  rows = [l.split("|")[1:3] for l in report.importance_tables(runs).splitlines() if l.startswith("| ") and "---" not in l]
  assert [(m.strip(), t.strip()) for m, t in rows[1:]] == [
      ("gradient", "predicted / softmax"), ("gradient", "predicted / logit"), ("ig", "predicted / softmax"),
      ("ig", "predicted / logit"), ("ig", "label / logit")]


def _grid_row(seed, **changes):
  row = {**{c: "0" for c in grid.TABLE.columns}, "method_revision": "1"}
  row.update(model="small_cnn", model_seed=seed, method="gradient_x_input", method_options="", reduction="mean",
             target="predicted", output="logit", test_position_sd=0.0, test_colour_sd=0.0, checkpoint_epoch=5,
             num_images=6, weights="", degenerate=0, compile_seconds=0)
  return {**row, **changes}


def test_per_class_pointing_is_the_hit_rate_of_each_class_over_seeds(tmp_path):
  # Two seeds of one cell, 6 test images of classes 0, 0, 1, 1, 2, 2. Seed 1 also has an older
  # checkpoint's cell (all misses), which stays out.
  hits = {0: [1, 1, 1, 0, 0, 0], 1: [1, 0, 1, 1, 1, 0]}
  runs = []
  for seed, hit in hits.items():
    w = tmp_path / f"small_cnn_seed{seed}"
    (w / "single_pixel" / "per_image").mkdir(parents=True)
    _metrics(w, [0.9], epochs=1)
    rows = [_grid_row(seed)] + ([_grid_row(seed, checkpoint_epoch=3)] if seed == 1 else [])
    grid.TABLE.write(w / "single_pixel" / "results.csv", rows)
    for r, h in zip(grid.TABLE.read(w / "single_pixel" / "results.csv"), [hit, [0] * 6]):
      np.savez(grid.per_image_file(w, r), index=np.arange(6), hit=np.array(h, bool), label=np.array([0, 0, 1, 1, 2, 2]))
    runs.append(report.load_run(w))
  text = report.per_class_tables(runs, report.read_grids(runs))
  assert "| method | output | class 0 | class 1 | class 2 |" in text
  # class 0: (100 + 50) / 2, class 1: (50 + 100) / 2, class 2: (0 + 50) / 2
  assert "| gradient_x_input | logit | 75 | 75 | 25 |" in text
  # Per seed, the rows the mean blurs: seed 0 finds class 0's pixel and misses class 2's, seed 1 the reverse.
  text = report.per_class_tables(runs, report.read_grids(runs), by_seed=True)
  assert "| method | seed | class 0 | class 1 | class 2 |" in text and "% per seed" in text
  assert "| gradient_x_input | 0 | 100 | 50 | 0 |" in text and "| gradient_x_input | 1 | 50 | 100 | 50 |" in text


def test_the_pixel_set_black_table_takes_one_cell_per_jitter(tmp_path):
  # Test images of classes 0, 0, 1, 1, 2, 2. The gradient's cell (first in key order) says 1, 0, 1, 1,
  # 1, 2 with the pixel set black: right, class 0 1 of 2, class 1 2 of 2, class 2 1 of 2; the share
  # of all images put in each class 1, 4 and 1 of 6. Another method's cell of the same images says
  # otherwise (it cannot for one model; here it shows which cell is read): it is not mixed in.
  w = tmp_path / "small_cnn_seed0"
  (w / "single_pixel" / "per_image").mkdir(parents=True)
  _metrics(w, [0.9], epochs=1)
  grid.TABLE.write(w / "single_pixel" / "results.csv", [_grid_row(0), _grid_row(0, method="gradient")])
  for r in grid.TABLE.read(w / "single_pixel" / "results.csv"):
    versions = np.zeros((6, len(report.single_pixel.VERSIONS)), np.int32)
    versions[:, report.BLACK_PIXEL] = [1, 0, 1, 1, 1, 2] if r["method"] == "gradient" else [0, 0, 1, 1, 2, 2]
    np.savez(grid.per_image_file(w, r), index=np.arange(6), hit=np.array([1, 0, 1, 1, 0, 1], bool),
             label=np.array([0, 0, 1, 1, 2, 2]), versions=versions)
  runs = [report.load_run(w)]
  text = report.blackpix_tables(runs, report.read_grids(runs))
  assert "| 0 | still right | 50 | 100 | 50 |" in text and "| 0 | share of all | 17 | 67 | 17 |" in text
  assert text.count("| 0 | still right |") == 1
  # Pointing where the pixel decides: the gradient's cell needs it for images 0 and 4 (wrong with it
  # set black), and finds it on image 0 only; the other cell's model never needs it.
  grids = report.read_grids(runs)
  needed = report.needed_pointing(runs, grids)
  assert needed[("small_cnn", 0, "gradient", "logit")] == 0.5
  assert np.isnan(needed[("small_cnn", 0, "gradient_x_input", "logit")])
  # The run data keeps the counts: the same table from its per-class summary.
  exported = report.export([w], tmp_path / "rundata")
  again = [report.load_run(exported[0])]
  assert report.blackpix_tables(again, report.read_grids(again)) == text
  assert report.needed_pointing(again, report.read_grids(again))[("small_cnn", 0, "gradient", "logit")] == 0.5
  board = report.leaderboard_markdown(report.leaderboard(runs, grids), runs)
  # Pointing as results.csv holds it (0 in these made-up rows), then the pixel-needed column.
  assert "| gradient | n/a | 0.0 | 50.0 |" in board and "| gradient_x_input | n/a | 0.0 | – |" in board
  # A per-image file written before the grid kept the versions: its rows have no counts, the
  # summary stays readable, and the table comes from the cell that has them.
  old = grid.per_image_file(w, grid.TABLE.read(w / "single_pixel" / "results.csv")[0])
  np.savez(old, index=np.arange(6), hit=np.ones(6, bool), label=np.array([0, 0, 1, 1, 2, 2]))
  exported = report.export([w], tmp_path / "rundata2")
  again = [report.load_run(exported[0])]
  assert report.blackpix_tables(again, report.read_grids(again)) == text
  # A damaged summary: one line naming it.
  summary = exported[0] / report.PER_CLASS
  summary.write_text(summary.read_text().replace(",6,", ",six,", 1))
  with pytest.raises(report.ReportError, match="per_class.csv"):
    report.blackpix_tables(again, report.read_grids(again))


def test_the_leaderboard_gives_each_seed_s_median_rank_where_they_differ(tmp_path):
  # One method puts the planted pixel first on seed 0 and last on seed 1: their mean, 512.5, is a rank
  # neither seed's maps give it.
  runs = []
  for seed, ranks in ((0, (1, 7)), (1, (1024, 7))):
    w = tmp_path / f"small_cnn_seed{seed}"
    _metrics(w, [0.9], epochs=1)
    rows = [_grid_row(seed, method=m, **{"localisation.rank_median": r}) for m, r in zip(("gradient", "ig"), ranks)]
    grid.TABLE.write(w / "single_pixel" / "results.csv", rows)
    runs.append(report.load_run(w))
  text = report.leaderboard_markdown(report.leaderboard(runs, report.read_grids(runs)), runs)
  cells = {l.split("|")[1].strip(): l.split("|")[5].strip() for l in text.splitlines() if l.startswith("| ")}
  assert cells["gradient"] == "1 / 1024" and cells["ig"] == "7"
  assert report.rank_text([float("nan")]) == ""
  # The graded localisation table likewise (its other columns stay means over seeds).
  grids = report.read_grids(runs)
  table = report.localisation_tables(report.aggregate.summarize(grids), grids)
  assert "| gradient | logit | 0.0 | 1 / 1024 |" in table and "| ig | logit | 0.0 | 7 |" in table  # rank mean: 0 here


def _report(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "saliency_jax.report", *args], cwd=cwd, capture_output=True, text=True,
                        timeout=120)


def _one_line(result):
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
  return errors[0]


def _line(capsys, workdirs, **kw):
  """`report.command` in this process (the command line less the interpreter's start): its one error line."""
  assert report.command([str(workdirs)], **{k: str(v) for k, v in kw.items()}) == 2
  errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, errors
  return errors[0]


def test_bad_arguments_and_conflicts_are_one_line_and_write_nothing(tmp_path, capsys):
  for seed in (0, 1):
    w = _metrics(tmp_path / f"small_cnn_seed{seed}", [0.9], epochs=1)
    (w / "single_pixel").mkdir()
    grid.TABLE.write(w / "single_pixel" / "results.csv", [_grid_row(seed), _grid_row(seed, target="label")])
  runs = f"--workdirs={tmp_path}/small_cnn_seed*"
  # The command line itself: no default output (never the repo's docs by surprise), one line.
  assert "--out=DIR" in _one_line(_report(runs))
  # Run from outside the repository (no configs/ on the path): the report is built all the same.
  result = _report(runs, f"--out={tmp_path / 'docs'}", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  built = (tmp_path / "docs" / "results.md").read_text()
  glob_ = tmp_path / "small_cnn_seed*"
  (tmp_path / "afile").write_text("")
  assert "is a file" in _line(capsys, glob_, out=tmp_path / "afile")
  # A build from fewer runs does not replace it without force.
  assert "small_cnn seed 1" in _line(capsys, tmp_path / "small_cnn_seed0", out=tmp_path / "docs")
  assert (tmp_path / "docs" / "results.md").read_text() == built
  assert report.command([str(tmp_path / "small_cnn_seed0")], out=str(tmp_path / "docs"), force=True) == 0
  # One that does not say which runs built it (an earlier report's, or hand-written) is kept too.
  (tmp_path / "legacy").mkdir()
  (tmp_path / "legacy" / "results.md").write_text("# Results\n")
  assert "does not say which runs it was built from" in _line(capsys, glob_, out=tmp_path / "legacy")
  # Two workdirs of one seed: one line, nothing written.
  shutil.copytree(tmp_path / "small_cnn_seed0", tmp_path / "again_seed0")
  stored = json.loads((tmp_path / "small_cnn_seed0" / "config.json").read_text())
  (tmp_path / "again_seed0" / "config.json").write_text(json.dumps(
      {**stored, "config": {**stored["config"], "seed": 0, "model": {"name": "small_cnn"}}}))
  line = _line(capsys, tmp_path / "*seed0", out=tmp_path / "docs3")
  assert "are both small_cnn seed 0" in line and not (tmp_path / "docs3").exists()
  # A garbage config.json, a cut per-image file: one line naming the file.
  (tmp_path / "again_seed0" / "config.json").write_text("{not json")
  assert "again_seed0/config.json is not valid JSON" in _line(capsys, tmp_path / "again_seed0", out=tmp_path / "docs4")
  shutil.rmtree(tmp_path / "again_seed0")
  per_image = grid.per_image_file(tmp_path / "small_cnn_seed0", grid.TABLE.read(
      tmp_path / "small_cnn_seed0" / "single_pixel" / "results.csv")[0])
  per_image.parent.mkdir()
  per_image.write_bytes(b"PK\x03\x04 cut")
  assert f"{per_image} is unreadable" in _line(capsys, glob_, out=tmp_path / "docs5")
  # A stage table cut short (a copy gone wrong): one line naming it, and the report already built stays.
  table = tmp_path / "small_cnn_seed1" / "single_pixel" / "results.csv"
  table.write_text(table.read_text()[:-40])
  before = (tmp_path / "docs" / "results.md").read_text()
  line = _line(capsys, glob_, out=tmp_path / "docs")
  assert f"{table}: 1 damaged row(s)" in line and (tmp_path / "docs" / "results.md").read_text() == before
  # An output folder that cannot be written: one line.
  (tmp_path / "ro").mkdir(mode=0o500)
  if subprocess.run(["touch", str(tmp_path / "ro" / "x")], capture_output=True).returncode != 0:  # not as root
    assert "cannot write" in _line(capsys, tmp_path / "small_cnn_seed1", out=tmp_path / "ro")


def test_stage_tables_with_rows_of_an_older_checkpoint_report_the_newest(tmp_path):
  # Trained longer and evaluated again: the tables keep the older epoch's rows beside the newer
  # (their keys differ). The report reads the newest only, in every section.
  from saliency_jax.stages import faithfulness as faithfulness_stage  # pylint: disable=g-import-not-at-top

  w = _metrics(tmp_path / "small_cnn_seed0", [0.5, 0.9], epochs=2)
  row = {**{c: "0" for c in faithfulness_stage.TABLE.columns}, "method_revision": "1"}
  row.update(model="small_cnn", method="gradient", method_options="", reduction="mean", curve="deletion",
             order="morf", replacement="black", weights="", x="[0, 1]", curve_mean="[1, 0]", accuracy_mean="",
             accuracy_curve="", settings="steps=1")
  rows = [{**row, "checkpoint_epoch": 1, "area_mean": 0.1}, {**row, "checkpoint_epoch": 2, "area_mean": 0.7}]
  (w / "faithfulness").mkdir()
  faithfulness_stage.TABLE.write(w / "faithfulness" / "results.csv", rows)
  text, _ = report.faithfulness_tables([report.load_run(w)])
  assert "| gradient | 0.700 (0.000) |" in text and "0.100" not in text


def test_the_leaderboard_figure_names_a_methods_entries_by_what_tells_them_apart():
  from saliency_jax.evaluation import figures  # pylint: disable=g-import-not-at-top

  labels = ["integrated_gradients(baseline='black', rule='original', steps=100)",
            "integrated_gradients(baseline='white', rule='original', steps=100)", "gradcam(layer='layer4')",
            "smoothgrad(samples=10)", "smoothgrad(samples=50)", "gradient"]
  assert figures._short_labels(labels) == ["integrated_gradients(black)", "integrated_gradients(white)", "gradcam",
                                           "smoothgrad(10)", "smoothgrad(50)", "gradient"]
