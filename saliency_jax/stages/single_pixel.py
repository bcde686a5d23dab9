"""The single-pixel grid (docs/evaluation.md, "Single-pixel metrics"): every method x target x output x
test jitter of `config.single_pixel` on a trained model.

A unit is a cell. Its program computes, per batch and on device, the maps, the attributed pixels, the
five image versions and their forward passes (`evaluation.single_pixel.batch_outcomes`); only a few
numbers per image come back, kept in `single_pixel/per_image/` beside the one row per cell of
`single_pixel/results.csv`. No map is computed twice: where the model's prediction equals the label,
the two targets explain the same class, so a cell reuses the other target's per-image outcomes and
computes only the images where they differ.
"""

from __future__ import annotations

import hashlib
import pathlib
import zipfile

import jax
import numpy as np
from absl import logging

from saliency_jax import backend
from saliency_jax import data as data_lib
from saliency_jax.attribution import core, registry
from saliency_jax.checks import require_choice, require_non_negative
from saliency_jax.evaluation import results, single_pixel
from saliency_jax.stages import base
from saliency_jax.stages.runner import ModelRunner

# The original's columns (docs/evaluation.md), in its order.
METRIC_COLUMNS = single_pixel.METRIC_COLUMNS
POINTING = "overall.attribution_correct_accuracy"
# Which run and which cell a row is.
ID_COLUMNS = (*results.RUN_COLUMNS, "train_position_sd", "train_colour_sd", "test_position_sd", "test_colour_sd",
              *results.METHOD_COLUMNS, results.REVISION, "reduction", "target", "output", "num_images", "num_missed")
# A cell is done when a row with these values exists (the rest are its results).
CELL_KEY = ("checkpoint_epoch", "weights", "test_position_sd", "test_colour_sd", "method", "method_options", "reduction",
            "target", "output", "num_images", results.REVISION)
# Graded localisation (`single_pixel.localisation_metrics`), after the original's columns.
LOCALISATION_COLUMNS = single_pixel.LOCALISATION_COLUMNS
# Maps that are constant or not finite on an image (counted, never silently scored: docs/evaluation.md);
# the time the cell took and, of it, compiling its programs. Rows written before these existed lack them.
EXTRA_COLUMNS = ("degenerate", "compile_seconds")
TABLE = results.Table(
    columns=(*ID_COLUMNS, *METRIC_COLUMNS, "seconds", *LOCALISATION_COLUMNS, *EXTRA_COLUMNS), key=CELL_KEY,
    kinds={**{c: "count" for c in ("model_seed", "data_seed", "checkpoint_epoch", results.REVISION, "num_images",
                                   "num_missed", "overall.attribution_incorrect", "degenerate")},
           **{c: "finite" for c in ("train_position_sd", "train_colour_sd", "test_position_sd", "test_colour_sd",
                                    "seconds", "compile_seconds", "localisation.rank_mean",
                                    "localisation.rank_median", "localisation.top1", "localisation.top5",
                                    "localisation.top10")},
           **{c: "finite" for c in METRIC_COLUMNS[:4]},
           **{c: "number" for c in (*METRIC_COLUMNS[5:], "localisation.mass_mean")}},
    optional=("weights", *EXTRA_COLUMNS), former={results.REVISION: "1"})
# A cell whose maps are degenerate on more than this share of images is flagged in the log and the report.
DEGENERATE_SHARE = 0.5


def per_image_file(workdir, row: dict):
  """Where the grid keeps the per-image outcomes of one of its rows (`index`, `label`, `hit`, `rank`,
  `mass`, `predicted`, `versions`, `degenerate`)."""
  return pathlib.Path(workdir) / "single_pixel" / _per_image_name(TABLE.key_of(row))


def _per_image_name(key: tuple[str, ...]) -> str:
  # A run's own training (no imported weights) and a method's first revision keep the name they had
  # before the key held `weights` and the revision.
  named = list(key)
  if named[-1] == "1":
    named.pop()
  if named[CELL_KEY.index("weights")] == "":
    del named[CELL_KEY.index("weights")]
  return f"per_image/{hashlib.sha1('|'.join(named).encode()).hexdigest()[:16]}.npz"


def test_indices(data: data_lib.Prepared, max_images: int = 0) -> np.ndarray:
  """Which test images a grid evaluates: all, or a class-balanced subset of `max_images` drawn from
  the data seed (`data.balanced_indices`), the same for every jitter and model seed."""
  return data_lib.balanced_indices(data.source.test.labels, max_images, data.seed)


def test_sets(data: data_lib.Prepared, position_sd: float, colour_sd: float, max_images: int = 0):
  """(pix_NHWC, nopix_NHWC, labels_N, location_N2) of the subset `test_indices` picks, as numpy: the
  test images with the pixel and without it, under the test jitter (an image's draw does not depend
  on the subset)."""
  keep = test_indices(data, max_images)
  pix, nopix = (data.test_set(c, position_sd, colour_sd) for c in ("pixel", "nopix"))
  return (np.asarray(pix.images_BHWC)[keep], np.asarray(nopix.images_BHWC)[keep], np.asarray(pix.labels_B)[keep],
          np.asarray(pix.location_B2)[keep])


class SinglePixel(base.Stage):
  name = "single_pixel"
  table = TABLE
  noun = "cells"

  @classmethod
  def check(cls, config) -> list[registry.MethodSpec]:
    """The `single_pixel` section; returns its parsed methods."""
    sp = config.single_pixel
    methods = registry.parse_all(sp.methods, "single_pixel.methods")
    if not sp.targets or not sp.outputs or not sp.test_jitter:
      raise ValueError("single_pixel.targets, single_pixel.outputs and single_pixel.test_jitter must not be empty")
    for field in ("targets", "outputs", "test_jitter"):
      values = [tuple(v) if not isinstance(v, str) else v for v in sp[field]]
      if len(set(values)) != len(values):
        raise ValueError(f"single_pixel.{field} lists an entry twice: {tuple(sp[field])}")
    for t in sp.targets:
      require_choice("single_pixel.targets", t, core.TARGETS)
    for o in sp.outputs:
      require_choice("single_pixel.outputs", o, core.OUTPUTS)
    for pair in sp.test_jitter:
      if len(pair) != 2:
        raise ValueError(f"single_pixel.test_jitter entry {pair!r} is not (position_sd, colour_sd)")
      require_non_negative("single_pixel.test_jitter position_sd", pair[0])
      require_non_negative("single_pixel.test_jitter colour_sd", pair[1])
    for field in ("batch_size", "chunk_size", "max_images", "examples"):  # sizes 0: for the device (backend.py)
      require_non_negative(f"single_pixel.{field}", sp[field])
    return methods

  @classmethod
  def methods(cls, config, plan):
    return [(spec, config.single_pixel.outputs[0]) for spec in plan]

  def __init__(self, config, plan, trained, workdir, devices=None):
    super().__init__(config, plan, trained, workdir, devices)
    sp = config.single_pixel
    self.data = trained.data
    batch_size, chunk_size = backend.evaluation_sizes(self.name, sp, devices)
    self.runner = ModelRunner(trained.model, trained.variables, self.data.normalization, batch_size=batch_size,
                              chunk_size=chunk_size, seed=config.seed, devices=devices)
    self.index = test_indices(self.data, sp.max_images)
    self._sets, self._memory = {}, {}

  def _ident(self, jitter, spec, target, output) -> dict:
    c = self.config
    return {**results.run_columns(c, self.trained), "train_position_sd": float(c.pixel.position_sd),
            "train_colour_sd": float(c.pixel.colour_sd), "test_position_sd": float(jitter[0]),
            "test_colour_sd": float(jitter[1]), **results.method_columns(spec), "reduction": spec.reduction,
            "target": target, "output": output, "num_images": len(self.index)}

  def units(self) -> list[base.Unit]:
    sp = self.config.single_pixel
    cells = [(tuple(j), m, t, o) for j in sp.test_jitter for m in self.plan for t in sp.targets for o in sp.outputs]
    return [base.Unit((TABLE.key_of(self._ident(*cell)),), "results.csv",
                      f"test jitter ({cell[0][0]:g}, {cell[0][1]:g})  {cell[1].label}  target={cell[2]} "
                      f"output={cell[3]}", cell, kind=cell[:3]) for cell in cells]  # outputs cost alike

  def _test_set(self, jitter):
    if jitter not in self._sets:
      self._sets[jitter] = test_sets(self.data, float(jitter[0]), float(jitter[1]), self.config.single_pixel.max_images)
    return self._sets[jitter]

  def outcomes(self, spec, target, output, pix, nopix, labels, location, index, progress=None) -> dict:
    return cell_outcomes(self.runner, spec, target, output, pix, nopix, labels, location, index, progress)

  def _prior(self, key) -> dict | None:
    """The outcomes of the cell `key` on these images, from memory or its per-image file; None if
    not saved (or saved before an outcome this code keeps existed: then they are computed again)."""
    if key in self._memory:
      return self._memory[key]
    if jax.process_count() > 1:  # only process 0 has the files
      return None
    try:
      with np.load(self.out_dir / _per_image_name(key)) as z:
        if not np.array_equal(z["index"], self.index) or not set(single_pixel.OUTCOMES) <= set(z.files):
          return None
        return {k: z[k] for k in single_pixel.OUTCOMES}
    except FileNotFoundError:
      return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # damaged: computing again cures it
      logging.warning("%s is unreadable (%s); its outcomes are computed again", self.out_dir / _per_image_name(key),
                      e)
      return None

  def run(self, unit: base.Unit) -> base.Output:
    jitter, spec, target, output = unit.payload
    pix, nopix, labels, location = self._test_set(jitter)
    ident = self._ident(jitter, spec, target, output)
    other = next((t for t in self.config.single_pixel.targets if t != target), None)
    prior = other and self._prior(TABLE.key_of({**ident, "target": other}))
    name = f"single-pixel {unit.label}"
    reused = 0
    if prior:
      outcomes = {k: v.copy() for k, v in prior.items()}
      differ = np.flatnonzero(prior["predicted"] != labels)
      if differ.size:
        sub = self.outcomes(spec, target, output, pix[differ], nopix[differ], labels[differ], location[differ],
                            self.index[differ], progress=name)
        for k, v in sub.items():
          outcomes[k][differ] = v
      reused = len(labels) - differ.size
    else:
      outcomes = self.outcomes(spec, target, output, pix, nopix, labels, location, self.index, progress=name)
    metrics = single_pixel.metrics_from_counts(single_pixel.counts_from_outcomes(outcomes, labels))
    degenerate = int(np.sum(outcomes["degenerate"]))
    row = {**ident, "num_missed": metrics["overall.attribution_incorrect"], **metrics,
           **single_pixel.localisation_metrics(outcomes), "degenerate": degenerate}
    key = unit.keys[0]
    self._memory = {key: outcomes}  # every process holds it: the next cell may be this one's other target
    note = f"pointing {100 * metrics[POINTING]:.1f}%, {row['num_missed']} missed"
    if reused:
      note += f"; {reused} maps reused from target={other}"
    if degenerate > DEGENERATE_SHARE * len(labels):
      logging.warning("single-pixel %s: the map is constant or not finite on %d of %d images; its pointing "
                      "accuracy says nothing about the method (every pixel ties)", unit.label, degenerate, len(labels))
      note += f"; DEGENERATE maps on {degenerate} images"
    return base.Output([row], {_per_image_name(key): {"index": self.index, "label": labels, **outcomes}}, note)

  def finish(self, rows: list[dict], computed: int) -> None:
    sp = self.config.single_pixel
    path = self.out_dir / "examples.png"
    write = jax.process_index() == 0
    if write and rows:
      logging.info("single-pixel results (%s):\n%s", self.out_dir / "results.csv", summary_text(rows))
    # Every process computes the maps (one program over all of them); process 0 draws.
    from saliency_jax.training import parallel  # pylint: disable=g-import-not-at-top
    if not sp.examples or not parallel.agree(bool(computed or not path.exists())):
      return
    pix, _, labels, location = self._test_set(tuple(sp.test_jitter[0]))
    n = min(sp.examples, len(labels))
    targets = self.runner.targets(sp.targets[0], pix[:n], labels[:n])
    maps = {spec.label: self.runner.maps(spec, sp.outputs[0], pix[:n], targets, self.index[:n], reduce=True)
            for spec in self.plan}
    if write:
      from saliency_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
      figures.examples(path, pix[:n], labels[:n], location[:n], maps,
                       title=f"{self.config.model.name}, target={sp.targets[0]}, output={sp.outputs[0]}, "
                             f"test jitter {tuple(sp.test_jitter[0])}")


def cell_outcomes(runner: ModelRunner, spec, target: str, output: str, pix, nopix, labels, location, index,
                  progress: str | None = None) -> dict[str, np.ndarray]:
  """Per-image outcomes of a cell (`single_pixel.batch_outcomes`) over uint8 test images, as numpy
  arrays; `index`: the images' indices in the test split (their random keys')."""
  importance = runner.method(spec, output, reduce=True)

  def program(forward, pix, nopix, labels, location, index_B):
    return single_pixel.batch_outcomes(forward, runner.normalization, lambda f, x, t: importance(f, x, t, index_B),
                                       target, pix, nopix, labels, location)

  out = runner.run(("outcomes", spec, target, output), program, (pix, nopix, labels, location, np.asarray(index)),
                   runner.forward, progress=progress)
  return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


def summary_text(rows: list[dict]) -> str:
  """A compact table of a grid's rows: pointing, and additive / subtractive accuracy on the misses."""
  import pandas as pd  # pylint: disable=g-import-not-at-top

  df = pd.DataFrame(rows)
  pct = lambda c: (100 * df[c].astype(float)).round(1)
  table = pd.DataFrame({
      "test jitter": "(" + df["test_position_sd"].astype(str) + ", " + df["test_colour_sd"].astype(str) + ")",
      "method": results.method_label(df["method"], df["method_options"]),
      "target": df["target"], "output": df["output"],
      "pointing %": pct(POINTING),
      "withpix %": pct("overall.withpix_model_accuracy"), "nopix %": pct("overall.nopix_model_accuracy"),
      "missed": df["num_missed"],
      "add pix/attr %": pct("attribution_incorrect.blackbg_withpix_model_accuracy").astype(str) + " / "
                        + pct("attribution_incorrect.blackbg_withattrpix_model_accuracy").astype(str),
      "sub pix/attr %": pct("attribution_incorrect.truebg_withblackpix_model_accuracy").astype(str) + " / "
                        + pct("attribution_incorrect.truebg_withblackattrpix_model_accuracy").astype(str),
  })
  return table.to_string(index=False)
