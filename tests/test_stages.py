"""The stage protocol: a new stage is one class (its section, table, checks, units and run), and the
one loop gives it resume, validated read-back, atomic writes, the running marker and provenance."""

import dataclasses
import json

import ml_collections
import numpy as np
import pytest

from saliency_jax import data as data_lib
from saliency_jax import pipeline, provenance, stages
from saliency_jax.checks import require_subset
from saliency_jax.config_checks import ConfigError
from saliency_jax.evaluation import results
from saliency_jax.stages import base
from saliency_jax.stages.runner import ModelRunner


class ClassAccuracy(base.Stage):
  """The model's accuracy per class on each test condition: a stage of one file, as a user adds one."""

  name = "class_accuracy"
  table = results.Table(columns=(*results.RUN_COLUMNS, "condition", "cls", "images", "accuracy", "seconds",
                                 "compile_seconds"),
                        key=("checkpoint_epoch", "weights", "condition", "cls"),
                        kinds={"cls": "count", "images": "count", "accuracy": "finite", "seconds": "finite",
                               "checkpoint_epoch": "count", "model_seed": "count", "data_seed": "count",
                               "compile_seconds": "finite"},
                        optional=("weights",))
  noun = "conditions"

  @classmethod
  def check(cls, config):
    require_subset("class_accuracy.conditions", config.class_accuracy.conditions, data_lib.CONDITIONS)
    return tuple(config.class_accuracy.conditions)

  def __init__(self, config, plan, trained, workdir, devices=None):
    super().__init__(config, plan, trained, workdir, devices)
    self.runner = ModelRunner(trained.model, trained.variables, trained.data.normalization, batch_size=50)

  def units(self):
    # A row per class: each row's key names it, so a row lost at a line break is found missing.
    classes = range(self.trained.data.num_classes)
    ident = lambda c: {**results.run_columns(self.config, self.trained), "condition": c}
    return [base.Unit(tuple(self.table.key_of({**ident(c), "cls": k}) for k in classes), "results.csv", c, ident(c))
            for c in self.plan]

  def run(self, unit):
    tests = self.trained.data.test_set(unit.payload["condition"])
    labels = np.asarray(tests.labels_B)
    predicted = self.runner.targets("predicted", np.asarray(tests.images_BHWC), labels)
    rows = [{**unit.payload, "cls": k, "images": int(np.sum(labels == k)),
             "accuracy": float(np.mean(predicted[labels == k] == k))} for k in np.unique(labels)]
    return base.Output(rows, note=f"{np.mean(predicted == labels):.1%} over all classes")


class Twice(ClassAccuracy):
  """A stage whose units share a key: refused, since the table would keep one and count both."""

  def units(self):
    return super().units() * 2


def _with_stage(config, monkeypatch):
  monkeypatch.setitem(stages.STAGES, ClassAccuracy.name, ClassAccuracy)
  with config.unlocked():  # configs/default.py locks its settings; a new stage declares its section there
    config.class_accuracy = ml_collections.ConfigDict({"enabled": True, "conditions": ("pixel", "nopix")})
  config.single_pixel.enabled = False
  return config


def test_a_new_stage_is_one_class_and_the_loop_runs_it_resumably(trained_tmp_path, tiny_config, monkeypatch):
  config = _with_stage(tiny_config, monkeypatch)
  calls = []
  run = ClassAccuracy.run
  monkeypatch.setattr(ClassAccuracy, "run", lambda self, unit: calls.append(unit.label) or run(self, unit))
  rows = pipeline.run(config, trained_tmp_path)["class_accuracy"]
  assert calls == ["pixel", "nopix"] and len(rows) == 20  # 10 classes per condition
  path = trained_tmp_path / "class_accuracy" / "results.csv"
  assert all(0 <= float(r["accuracy"]) <= 1 for r in ClassAccuracy.table.read(path))
  entries = [e for e in provenance.read(trained_tmp_path) if e["stage"] == "class_accuracy"]
  assert entries[-1]["units"] == 2 and entries[-1]["commit"] == provenance.commit()
  assert not (trained_tmp_path / "class_accuracy" / base.RUNNING).exists()
  # A rerun reads both back; with a condition's rows cut short, only that one is computed again.
  # Provenance records what was computed: the rerun, which computes nothing, adds no entry.
  calls.clear()
  before = provenance.read(trained_tmp_path)
  assert len(pipeline.run(config, trained_tmp_path)["class_accuracy"]) == 20 and calls == []
  assert provenance.read(trained_tmp_path) == before and config.train.enabled
  lines = path.read_text().splitlines(keepends=True)
  path.write_text("".join(lines[:-1]) + lines[-1][:-8])
  assert len(pipeline.run(config, trained_tmp_path)["class_accuracy"]) == 20 and calls == ["nopix"]


class OneKind(ClassAccuracy):
  """Every condition's unit takes about as long: one kind."""

  def units(self):
    return [dataclasses.replace(u, kind="one") for u in super().units()]


def test_the_time_left_counts_the_units_done_before_at_their_kind_s_time(trained_tmp_path, tiny_config, monkeypatch):
  config = _with_stage(tiny_config, monkeypatch)
  config.train.enabled = False
  trained = pipeline.train.restore(config, trained_tmp_path)
  base.run_stage(OneKind(config, ("pixel",), trained, trained_tmp_path))
  path = trained_tmp_path / "class_accuracy" / "results.csv"
  ClassAccuracy.table.write(path, [{**r, "seconds": 36000.0} for r in ClassAccuracy.table.read(path)])  # 10 h
  lines = []
  monkeypatch.setattr(base.logging, "info", lambda fmt, *args: lines.append(fmt % args))
  base.run_stage(OneKind(config, ("pixel", "nopix", "conflict"), trained, trained_tmp_path))
  # After nopix (a second), conflict is left: about the mean of 10 h read back and that second.
  assert [line.split()[1] for line in lines] == ["2/3", "3/3"]
  assert "about 5.0 h left in this stage" in lines[0] and "left" not in lines[1]


def test_units_that_share_a_key_are_refused(trained_tmp_path, tiny_config, monkeypatch):
  config = _with_stage(tiny_config, monkeypatch)
  config.train.enabled = False
  stage = Twice(config, ("pixel",), pipeline.train.restore(config, trained_tmp_path), trained_tmp_path)
  with pytest.raises(ValueError, match="class_accuracy: units share a key"):
    base.run_stage(stage)


def test_its_settings_are_checked_with_every_other_before_any_work(tmp_path, tiny_config, monkeypatch):
  config = _with_stage(tiny_config, monkeypatch)
  config.class_accuracy.conditions = ("pixel", "sepia")
  with pytest.raises(ConfigError, match="class_accuracy.conditions contains 'sepia'"):
    pipeline.run(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()


def test_the_running_marker_lists_every_key_the_stage_plans(trained_tmp_path, tiny_config, monkeypatch):
  config = _with_stage(tiny_config, monkeypatch)

  def interrupted(self, unit):
    raise KeyboardInterrupt

  monkeypatch.setattr(ClassAccuracy, "run", interrupted)
  config.train.enabled = False
  with pytest.raises(KeyboardInterrupt):
    pipeline.run(config, trained_tmp_path)
  marker = json.loads((trained_tmp_path / "class_accuracy" / base.RUNNING).read_text())
  assert marker["stage"] == "class_accuracy"
  assert [k[-2:] for k in marker["keys"]] == [[c, str(k)] for c in ("pixel", "nopix") for k in range(10)]
