"""launch/gpu_check.sh: its estimate against a hand computation, and the whole check at its tiny
size on CPU (what a GPU machine runs at full size)."""

import json
import subprocess

import pytest

from benchmarks import gpu_check
from tests.conftest import REPO


def test_the_paper_estimate_from_hand_made_figures():
  stages = {
      "run": {"epochs": [{"epoch_seconds": 40.0}, {"epoch_seconds": 10.0}],  # the first compiles
              "cells": [dict(method="integrated_gradients", images=1000, seconds=30.0),
                        dict(method="absolute_gradient", images=1000, seconds=5.0),
                        dict(method="integrated_gradients", images=1000, seconds=10.0),
                        dict(method="absolute_gradient", images=1000, seconds=1.0)]},
      "train_step": {"rows": [dict(model="resnet18", batch_size=256, variant="jax", images_per_s=1000.0),
                              dict(model="vgg16", batch_size=256, variant="jax", images_per_s=500.0),
                              dict(model="vgg16", batch_size=256, variant="torch", images_per_s=900.0)]},
  }
  e = gpu_check.estimate(stages, gpu_check.SIZES["full"])
  # Training: 200 epochs of 10 s. The grid: 10,000 / 1,000 images x 20 cells per method (5 jitters x
  # 2 outputs x 2 targets) x (2 IG methods x 10 s + 3 gradient methods x 1 s) = 4,600 s, plus
  # 4 programs per method (2 outputs x 2 targets) compiling 20 s (IG) and 4 s: 4 x 52 = 208 s.
  assert e["runs"]["resnet18"] == pytest.approx(dict(train_h=2000 / 3600, grid_h=4808 / 3600), abs=1e-3)
  # vgg16: the training step is half as fast, so twice resnet18's hours.
  assert e["runs"]["vgg16"] == pytest.approx(dict(train_h=4000 / 3600, grid_h=9616 / 3600), abs=1e-3)
  assert e["paper_on_one_gpu_h"] == pytest.approx(3 * (6808 + 13616) / 3600, abs=0.01)
  assert e["paper_on_six_gpus_h"] == pytest.approx(13616 / 3600, abs=0.01)
  assert "not enough figures" in gpu_check.estimate({"run": {}}, gpu_check.SIZES["full"])["status"]


def test_the_check_at_its_tiny_size_runs_every_stage_and_writes_its_figures(tmp_path):
  result = subprocess.run(["bash", "launch/gpu_check.sh", "tiny", str(tmp_path / "check")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
  stages = report["stages"]
  assert {name: stages[name]["status"] for name in ("run", "train_step", "rerun")} == dict.fromkeys(
      ("run", "train_step", "rerun"), "ok"), result.stderr[-3000:]
  (row,) = stages["train_step"]["rows"]
  assert row["variant"] == "jax" and row["images_per_s"] > 0
  assert stages["run"]["backend"].startswith("cpu: 1 device")
  assert len(stages["run"]["epochs"]) == 2 and len(stages["run"]["cells"]) == 4
  assert stages["run"]["programs_compiled"] > 0 and stages["rerun"]["programs_compiled"] == 0  # the cache
  assert report["estimate"]["paper_on_one_gpu_h"] > 0
  assert "| estimated paper (3 runs of small_cnn): one GPU / one run per GPU " in result.stdout
