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
  # The grid keeps each image's label beside its outcomes (the per-class table reads them).
  import numpy as np  # pylint: disable=g-import-not-at-top

  from saliency_jax.data import sources  # pylint: disable=g-import-not-at-top
  from saliency_jax.evaluation import run  # pylint: disable=g-import-not-at-top
  with np.load(run.per_image_file(workdirs[0], grid.TABLE.read(workdirs[0] / "single_pixel" / "results.csv")[0])) as z:
    np.testing.assert_array_equal(z["label"], np.asarray(sources.load(config.data).test.labels)[z["index"]])

  path = report.build(workdirs, tmp_path / "docs", notes="The pixel is found.", commit="abc1234")
  text = path.read_text()
  for heading in ("## What differs from the paper", "## Models", "## Pointing accuracy", "## Importance",
                  "## Pointing accuracy per class", "## Sanity checks", "## Wall time per stage", "## Reading",
                  "abc1234"):
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


def test_runs_still_training_stay_out_of_the_means(tmp_path):
  # Three resnet18 seeds: one done (5 of 5 epochs), one stopped early because it fit the training
  # set, one killed after 2 of 5 epochs. The means are over the first two only.
  import json  # pylint: disable=g-import-not-at-top

  from saliency_jax import files  # pylint: disable=g-import-not-at-top

  def workdir(seed, accuracies, stop_at=0.0):
    w = tmp_path / f"resnet18_seed{seed}"
    w.mkdir()
    (w / "config.json").write_text(json.dumps({"config": {"train": {"epochs": 5, "stop_at_train_accuracy": stop_at}}}))
    rows = [{"epoch": e + 1, "train_accuracy": a, "test_pixel_accuracy": a, "test_nopix_accuracy": 0.1,
             "test_conflict_accuracy": 0.02, "epoch_seconds": 60,
             "images_per_sec": 100} for e, a in enumerate(accuracies)]
    with files.atomic_open(w / "metrics.csv", "w") as f:
      f.write(",".join(rows[0]) + "\n" + "".join(",".join(map(str, r.values())) + "\n" for r in rows))
    return w

  runs, text = report.training_table([workdir(0, [0.5, 0.8, 0.9, 0.95, 0.99]), workdir(1, [0.6, 0.97], stop_at=0.95),
                                      workdir(2, [0.4, 0.7])])
  line = next(l for l in text.splitlines() if l.startswith("| resnet18 |"))
  assert line.startswith("| resnet18 | 0 1 | 5 2 | 98.0 (1.4) | 98.0 (1.4) |"), line
  assert "Still training, left out of the table" in text and "resnet18 seed 2: 2 of 5, 70.0 / 10.0 / 2.0" in text
  assert len(runs) == 3


def test_sanity_table_tells_not_applicable_from_undefined(tmp_path):
  from saliency_jax.evaluation import sanity, similarity  # pylint: disable=g-import-not-at-top

  base = {"model": "resnet18", "model_seed": 0, "data_seed": 0, "checkpoint_epoch": 5, "study": "input_invariance",
          "method_options": "", "output": "logit", "target": "predicted", "num_images": 4, "step": "", "layer": ""}
  metrics = lambda v: {f"{m}_mean": v for m in similarity.METRICS}
  rows = [{**base, "method": "gradient", "comparison": "twin", **metrics(1.0)},
          {**base, "method": "gradient", "comparison": "random_map", **metrics(0.0)},
          {**base, "method": "integrated_gradients", "comparison": "twin", **metrics(0.5)},
          {**base, "method": "integrated_gradients", "comparison": "twin_shifted_baseline", **metrics(float("nan"))},
          {**base, "method": "integrated_gradients", "comparison": "random_map", **metrics(0.0)}]
  (tmp_path / "resnet18_seed0" / "sanity").mkdir(parents=True)
  sanity.TABLE.write(tmp_path / "resnet18_seed0" / "sanity" / "input_invariance.csv", rows)
  text, _ = report.sanity_tables([tmp_path / "resnet18_seed0"])
  lines = {l.split(" | ")[0][2:]: l for l in text.splitlines() if l.startswith("| ") and "---" not in l}
  assert lines["gradient"] == "| gradient | 1.00 | – | 0.00 |"  # no baseline to shift: not applicable
  assert lines["integrated_gradients"] == "| integrated_gradients | 0.50 | nan | 0.00 |"
  assert "nan: the rank correlation is undefined" in text


def test_commits_line_names_each_runs_commit(tmp_path):
  # Runs resumed or started after a change of code are reported at the commit each was made at.
  workdirs = [tmp_path / name for name in ("resnet18_seed0", "resnet18_seed1", "vgg16_seed0")]
  for w in workdirs:
    w.mkdir()
  assert report.commits_line(workdirs) == ""
  assert report.commits_line(workdirs, "aaa1111") == "Runs started at commit `aaa1111`."
  (workdirs[2] / "COMMIT").write_text("bbb2222\n")
  assert report.commits_line(workdirs, "aaa1111") == (
      "Runs started at more than one commit: `aaa1111`: resnet18_seed0, resnet18_seed1; `bbb2222`: vgg16_seed0.")
  # The launcher's stage logs: vgg16 resumed twice with work done (its grid log sorts first, its
  # later stage); the same commit again, a '?' (no git) and a relaunch that found everything done
  # (eee5555) are not news; resnet18_seed1's log is not vgg16's.
  logs = tmp_path / "logs"
  logs.mkdir()
  cell = "I1130 12:42:38.601827 1398 run.py:231] single-pixel cell 1/20  test jitter (0, 0)  ...\n"
  epoch = "I1130 10:40:01.000000 1404 train.py:153] epoch 3/15  loss 0.5759  train  79.2%\n"
  (logs / "vgg16_seed0_grid_jitter.log").write_text(
      "=== 2026-11-30T12:41:21Z at ddd4444: python ...\n" + cell
      + "=== 2026-11-30T14:00:00Z at eee5555: python ...\nI1130 run.py:232] single-pixel grid: 20 cells, 0 computed\n")
  (logs / "vgg16_seed0_train_grid.log").write_text(
      "=== 2026-11-30T09:21:04Z at bbb2222: python ...\n" + epoch + "=== 2026-11-30T11:06:23Z at ccc3333: python ...\n"
      + epoch + "=== 2026-11-30T11:50:00Z at ?: python ...\n" + epoch)
  (logs / "resnet18_seed1_train_grid.log").write_text("=== 2026-11-30T08:00:00Z at fff6666: python ...\n" + epoch)
  assert report.commits_line(workdirs, "aaa1111") == (
      "Runs started at more than one commit: `aaa1111`: resnet18_seed0, resnet18_seed1 (resumed at `fff6666`); "
      "`bbb2222`: vgg16_seed0 (resumed at `ccc3333`, `ddd4444`).")
  assert report.commits_line(workdirs[:1], "aaa1111") == "Runs started at commit `aaa1111`."
  assert report.commits_line(workdirs[:2], "aaa1111") == (
      "Runs started at commit `aaa1111`: resnet18_seed0, resnet18_seed1 (resumed at `fff6666`).")


def test_a_grid_still_running_is_left_out_of_the_means_and_listed():
  # Seed 2 has finished 1 of the 2 cells at jitter (0, 0): averaging it in would give one row 3
  # seeds and the other 2. Its jitter-(3, 5) grid is complete and stays.
  def cells(workdir, seed, jitter, methods):
    return [dict(model="resnet18", test_position_sd=jitter, test_colour_sd=jitter, workdir=workdir, model_seed=seed,
                 method=m) for m in methods]
  runs = pd.DataFrame(cells("s0", 0, 0.0, "ab") + cells("s1", 1, 0.0, "ab") + cells("s2", 2, 0.0, "a")
                      + cells("s0", 0, 3.0, "ab") + cells("s2", 2, 3.0, "ab"))
  kept, running = report.complete_grids(runs)
  assert running == ["resnet18 seed 2 at test jitter (0, 0): 1 of 2 cells"]
  assert len(kept) == len(runs) - 1 and not ((kept["workdir"] == "s2") & (kept["test_position_sd"] == 0)).any()
  assert report.complete_grids(kept)[1] == []
  # A model's only seed: its grid at (3, 3) is partial by its own word (2 cells planned, 1 done),
  # and so is one killed after its last cell and before it could say it finished.
  vgg = pd.DataFrame(cells("v0", 0, 0.0, "ab") + cells("v0", 0, 3.0, "a")).assign(model="vgg16")
  assert report.complete_grids(vgg)[1] == []
  kept, running = report.complete_grids(vgg, {"v0": {(3.0, 3.0): 2}})
  assert running == ["vgg16 seed 0 at test jitter (3, 3): 1 of 2 cells"] and len(kept) == 2
  assert report.complete_grids(vgg, {"v0": {(0.0, 0.0): 2}})[1] == ["vgg16 seed 0 at test jitter (0, 0): 2 of 2 cells"]


def test_a_grid_says_it_is_running_until_its_last_cell(trained_tmp_path, tiny_config, monkeypatch):
  # Killed in its second cell, the grid leaves its plan behind; finished, it removes it.
  from saliency_jax.evaluation import run  # pylint: disable=g-import-not-at-top

  config = tiny_config
  sp = config.single_pixel
  sp.methods, sp.targets, sp.outputs = ("absolute_gradient", "gradient_x_input"), ("predicted",), ("logit",)
  sp.test_jitter, sp.max_images, sp.examples = ((0.0, 0.0),), 8, 0
  config.train.enabled = False  # evaluate the trained workdir's checkpoint
  outcomes, calls = run.CellRunner.outcomes, []

  def killed_in_the_second(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return outcomes(self, *args, **kwargs)

  monkeypatch.setattr(run.CellRunner, "outcomes", killed_in_the_second)
  try:
    pipeline.run(config, trained_tmp_path)
  except KeyboardInterrupt:
    pass
  assert report.grids_running(trained_tmp_path) == {(0.0, 0.0): 2}
  monkeypatch.setattr(run.CellRunner, "outcomes", outcomes)
  pipeline.run(config, trained_tmp_path)
  assert report.grids_running(trained_tmp_path) == {}


def test_a_run_stopped_at_the_shortcut_is_finished(tmp_path):
  # configs/vgg16_cpu.py trains at most 15 epochs, until 99% test accuracy with the pixel.
  import json  # pylint: disable=g-import-not-at-top

  (tmp_path / "config.json").write_text(json.dumps({"config": {"train": {"epochs": 15,
                                                                           "stop_at_pixel_accuracy": 0.99}}}))
  stopped = {"epoch": 4, "train_accuracy": 0.6, "test_pixel_accuracy": 0.995}
  assert report._planned_epochs(tmp_path, stopped) == 4.0
  assert report._planned_epochs(tmp_path, {**stopped, "test_pixel_accuracy": 0.98}) == 15.0


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


def test_per_class_pointing_is_the_hit_rate_of_each_class_over_seeds(tmp_path):
  # Two seeds of one cell, 6 test images of classes 0, 0, 1, 1, 2, 2: seed 0's per-image file holds
  # the labels, seed 1's (written before they were stored) has them from its data config.
  import json  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

  from saliency_jax.data import sources  # pylint: disable=g-import-not-at-top
  from saliency_jax.evaluation import run  # pylint: disable=g-import-not-at-top

  data = {"source": "synthetic", "path": "", "cache_dir": "", "tfds_data_dir": "", "seed": 0,
          "max_per_class": 0, "synthetic_train_per_class": 2, "synthetic_test_per_class": 10}
  test_labels = sources.synthetic(0, 2, 10).test.labels
  index = np.concatenate([np.flatnonzero(test_labels == k)[:2] for k in range(3)])
  # Seed 1 also has an older checkpoint's cell (all misses) and a grid at jitter (3, 5) that is
  # still running (not in `runs`): both stay out.
  hits = {0: [1, 1, 1, 0, 0, 0], 1: [1, 0, 1, 1, 1, 0]}
  workdirs = [tmp_path / f"small_cnn_seed{seed}" for seed in hits]
  for (seed, hit), w in zip(hits.items(), workdirs):
    (w / "single_pixel" / "per_image").mkdir(parents=True)
    (w / "config.json").write_text(json.dumps({"config": {"data": data, "pixel": {"variant": "colour"}}}))
    row = {c: "0" for c in grid.TABLE.columns}
    row.update(model="small_cnn", model_seed=seed, method="gradient_x_input", method_options="", target="predicted",
               output="logit", test_position_sd=0.0, test_colour_sd=0.0, checkpoint_epoch=5)
    rows = [row] + ([{**row, "checkpoint_epoch": 3}, {**row, "test_position_sd": 3.0, "test_colour_sd": 5.0}]
                    if seed == 1 else [])
    grid.TABLE.write(w / "single_pixel" / "results.csv", rows)
    for r, h in zip(grid.TABLE.read(w / "single_pixel" / "results.csv"), [hit, [0] * 6, [0] * 6]):
      extra = {"label": np.array([0, 0, 1, 1, 2, 2])} if seed == 0 else {}
      np.savez(run.per_image_file(w, r), index=index, hit=np.array(h, bool), **extra)
  runs = pd.DataFrame({"workdir": [str(w) for w in workdirs], "test_position_sd": 0.0, "test_colour_sd": 0.0,
                       "checkpoint_epoch": 5})  # as aggregate.read_runs keeps: each run's newest checkpoint
  text = report.per_class_tables(workdirs, runs)
  assert "| method | output | class 0 | class 1 | class 2 |" in text
  # class 0: (100 + 50) / 2, class 1: (50 + 100) / 2, class 2: (0 + 50) / 2
  assert "| gradient_x_input | logit | 75 | 75 | 25 |" in text
  assert "test jitter (3, 5)" not in text
  # A run whose labels cannot be had (no config, no labels in its files) is left out, not the table.
  (workdirs[1] / "config.json").unlink()
  assert "| gradient_x_input | logit | 100 | 50 | 0 |" in report.per_class_tables(workdirs, runs)
