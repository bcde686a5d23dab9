"""The experiment's report, rebuilt from workdirs or from the compact run data committed in `runs/`:

  python -m saliency_jax.report --workdirs='runs/cpu/*_seed*' --out=docs --notes=docs/results_notes.md
  python -m saliency_jax.report --workdirs='workdirs/cpu/*_seed*' --export=runs/cpu   # a workdir's compact data

writes `OUT/results.md` and its figures under `OUT/results/`: model accuracies, pointing accuracy per
method x target x output x test jitter, additive and subtractive importance on the misses, graded
localisation, pointing per class, the leaderboard of every method, the sanity checks and faithfulness
curves, and the wall time and commit of every stage. Every number is read from the runs' files
through the tables the stages declare (`stages.*.TABLE`, `metrics.csv`, `provenance.json`), so
rerunning it after more runs finished regenerates the same document. A run or a grid still in
progress is listed and kept out of the means; every run left out is named with the reason.

It never replaces a document with a worse one silently: `--out` has no default, a results.md built
from runs that this build lacks is kept unless `--force` is given, and a conflict (two runs of one
model seed, runs of one model trained with other settings, an unreadable file) is one line naming
it, with nothing written. `--export` copies what the report needs of each workdir (no checkpoints,
no per-image files: their per-class summary instead) into a folder of run data a few MB in size.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import glob
import json
import pathlib
import re
import shutil
import sys
import zipfile

import numpy as np
import pandas as pd
from absl import app, flags, logging
from ml_collections import ConfigDict

from saliency_jax import files, pipeline, provenance
from saliency_jax.config_checks import ConfigError
from saliency_jax.data import pixel
from saliency_jax.evaluation import aggregate, figures, results, single_pixel, timing
from saliency_jax.files import read_csv
from saliency_jax.progress import duration
from saliency_jax.stages import base, faithfulness as faithfulness_stage, sanity as sanity_stage
from saliency_jax.stages import single_pixel as grid_stage
from saliency_jax.training.train import stop_reached

CONDITIONS = {"test_pixel_accuracy": "with pixel", "test_nopix_accuracy": "without pixel",
              "test_conflict_accuracy": "conflicting pixel"}
HUES = (("predicted", "softmax"), ("predicted", "logit"), ("label", "softmax"), ("label", "logit"))
IMPORTANCE = {"attribution_incorrect.blackbg_withpix_model_accuracy": "add: pix",
              "attribution_incorrect.blackbg_withattrpix_model_accuracy": "add: attr",
              "attribution_incorrect.truebg_withblackpix_model_accuracy": "sub: pix",
              "attribution_incorrect.truebg_withblackattrpix_model_accuracy": "sub: attr"}
POINTING = grid_stage.POINTING
# The leaderboard reads the grid at no test jitter, target predicted; these faithfulness curves (the
# RISE paper's deletion onto black and insertion from a blur, ROAD both ways) and cascading
# randomisation's last step.
BOARD_JITTER = (0.0, 0.0)
BOARD_CURVES = {("deletion", "morf", "black"): "deletion MoRF (black) ↓",
                ("insertion", "morf", "blur"): "insertion MoRF (blur) ↑",
                ("road", "morf", "noisy_linear"): "ROAD MoRF acc. ↓", ("road", "lerf", "noisy_linear"): "ROAD LeRF acc. ↑"}
# The line results.md carries, read back before it is replaced: which runs it was built from.
_BUILT_FROM = re.compile(r"<!-- built from: (.*?) -->")
# What `--export` copies of a workdir (relative paths or globs); the per-image files become a summary.
EXPORT = ("config.json", "metrics.csv", "provenance.json", "COMMIT", f"*/{base.RUNNING}", timing.FILE,
          "single_pixel/results.csv",
          "single_pixel/examples.png", "sanity/*.csv", "sanity/*_curves.png", "sanity/*_bars.png",
          "sanity/*_strip0.png", "faithfulness/results.csv", "faithfulness/curves.png")
PER_CLASS = "single_pixel/per_class.csv"
# What the run data keeps of a grid's per-image files: per cell and class, the images, the hits and,
# with the planted pixel set black, the images still right and those the model puts in the class,
# and the hits on the images it then gets wrong (it needs the pixel for them).
PER_CLASS_TABLE = results.Table(
    columns=(*grid_stage.CELL_KEY, "class", "images", "hits", "blackpix_hits", "blackpix_predicted", "needed_hits"),
    key=(*grid_stage.CELL_KEY, "class"),
    kinds={**{c: "count" for c in ("checkpoint_epoch", "num_images", results.REVISION, "class", "images", "hits",
                                   "blackpix_hits", "blackpix_predicted", "needed_hits")},
           "test_position_sd": "finite", "test_colour_sd": "finite"},
    optional=("weights", "blackpix_hits", "blackpix_predicted", "needed_hits"), former={results.REVISION: "1"})
BLACK_PIXEL = single_pixel.VERSIONS.index("truebg_withblackpix")
# The names of the figures the report writes into `out/results/` (a rebuild removes those it no
# longer links).
REPORT_FIGURES = ("leaderboard.png", "pointing_accuracy_*.png", "examples_*.png", "*_seed*_*.png")


class ReportError(ConfigError):
  """Something about the runs given that the report will not paper over; one line, exit 2."""


@dataclasses.dataclass
class Run:
  """One workdir (or its exported run data), as the report reads it."""

  path: pathlib.Path
  model: str
  seed: int
  config: dict  # the whole config the run was started with ({} if it has no config.json)
  settings: dict  # what defines its model (`pipeline.MODEL_FIELDS`)
  metrics: list[dict]
  provenance: list[dict]

  @property
  def name(self) -> str:
    return self.path.name

  @property
  def label(self) -> str:
    return f"{self.model} seed {self.seed}"


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise ReportError(f"{path} is not valid JSON ({e}); restore it or leave its run out of --workdirs") from None


def load_run(path: pathlib.Path) -> Run:
  """A run's identity from its config.json (the launchers' `<model>_seed<N>` folder name without one)."""
  stored = _read_json(path / "config.json") if (path / "config.json").exists() else {}
  if not isinstance(stored, dict):
    raise ReportError(f"{path / 'config.json'} is not a workdir's config (a JSON object)")
  config = stored.get("config", {})
  model, _, seed = path.name.rpartition("_seed")
  try:
    model = config.get("model", {}).get("name") or model or path.name
    seed = int(config["seed"]) if "seed" in config else int(seed)
  except (ValueError, TypeError, AttributeError):
    raise ReportError(f"{path}: no model seed (no config.json, and the folder is not named <model>_seed<N>)") from None
  try:
    metrics = read_csv(path / "metrics.csv")
  except (UnicodeDecodeError, csv.Error) as e:
    raise ReportError(f"{path / 'metrics.csv'} is not a readable table ({e})") from None
  # A field added to the settings after the run stored them held its default there (pipeline's list).
  settings = stored.get("model_settings", {})
  if not isinstance(settings, dict):
    raise ReportError(f"{path / 'config.json'}: its model_settings are not a JSON object; restore the file")
  settings = {**pipeline.ADDED_MODEL_FIELDS, **settings} if settings else {}
  return Run(path, model, seed, config, settings, metrics, provenance.computed(provenance.read(path)))


def check_runs(runs: list[Run]) -> None:
  """Two runs of one model seed, or runs of one model trained with other settings than the seed, would
  be averaged as if they were seeds of one experiment: one line naming them, nothing written."""
  seen: dict[tuple[str, int], Run] = {}
  for run in runs:
    other = seen.setdefault((run.model, run.seed), run)
    if other is not run:
      raise ReportError(f"{other.path} and {run.path} are both {run.label}; pass each run once")
  by_model: dict[str, Run] = {}
  for run in runs:
    if not run.settings:
      continue
    first = by_model.setdefault(run.model, run)
    differ = sorted(k for k in set(first.settings) | set(run.settings)
                    if k != "seed" and first.settings.get(k) != run.settings.get(k))
    if differ:
      shown = "; ".join(f"{k}: {first.settings.get(k)!r} in {first.name}, {run.settings.get(k)!r} in {run.name}"
                        for k in differ[:4])
      raise ReportError(f"runs of {run.model} were trained with other settings ({shown}); report them separately")


def _pct(mean, std=float("nan"), n=None) -> str:
  if pd.isna(mean):
    return "–"
  text = f"{100 * mean:.1f}" + ("" if pd.isna(std) else f" ({100 * std:.1f})")
  return text + ("" if n is None else f" [{n}]")


def _in_table_order(frame: pd.DataFrame) -> pd.DataFrame:
  """Rows by method (in the order first listed), then target / output in `HUES` order: results
  files list cells in the order they finished, which a resumed or re-timed grid changes."""
  methods = {m: i for i, m in enumerate(dict.fromkeys(frame["method_label"]))}
  hues = {h: i for i, h in enumerate(HUES)}
  key = [methods[m] * (len(HUES) + 1) + hues.get((t, o), len(HUES))
         for m, t, o in zip(frame["method_label"], frame["target"], frame["output"])]
  return frame.iloc[np.argsort(key, kind="stable")]


def _planned_epochs(run: Run, last: dict) -> float:
  """The epochs the run will have trained when it is done: `train.epochs` of its stored config, or
  the epochs it has if it stopped early (`train.STOPS`); NaN (taken as finished) without a config."""
  train = run.config.get("train", {})
  if not train:
    return float("nan")
  if stop_reached(train, last):
    return float(last["epoch"])
  return float(train.get("epochs", last["epoch"]))


def trained_runs(runs: list[Run]) -> tuple[list[Run], list[str]]:
  """The runs whose training is finished, and a line per run left out and why."""
  done, left_out = [], []
  for run in runs:
    if not run.metrics and run.config.get("model", {}).get("torch_weights"):
      done.append(run)  # weights imported, not trained here: its results stand alone
      continue
    if not run.metrics:
      left_out.append(f"{run.label} ({run.name}): no metrics.csv, so not trained (or not by this workdir); its "
                      "results are left out")
      continue
    last = run.metrics[-1]
    planned = _planned_epochs(run, last)
    if int(last["epoch"]) < planned:
      left_out.append(f"{run.label} ({run.name}): still training ({last['epoch']} of {planned:.0f} epochs); its "
                      "results are left out")
      continue
    done.append(run)
  return done, left_out


def training_table(runs: list[Run], left_out: list[str]) -> str:
  """Per model: seeds, epochs, final accuracies (mean (std) over seeds), training time."""
  rows = []
  for run in runs:
    if not run.metrics:
      continue
    last = run.metrics[-1]
    rows.append({"model": run.model, "seed": run.seed, "epochs": int(last["epoch"]),
                 "train accuracy": float(last["train_accuracy"]),
                 **{c: float(last[c]) for c in CONDITIONS if last.get(c) not in (None, "")},
                 "train seconds": sum(float(r["epoch_seconds"]) for r in run.metrics),
                 "images/s": float(np.median([float(r["images_per_sec"]) for r in run.metrics]))})
  lines = ["| model | seeds | epochs | train acc. | " + " | ".join(f"test: {v}" for v in CONDITIONS.values())
           + " | training time |", "|---" * (5 + len(CONDITIONS)) + "|"]
  frame = pd.DataFrame(rows)
  for model, block in (frame.groupby("model", sort=False) if rows else []):
    accs = [_pct(block[c].mean(), block[c].std(ddof=1)) if c in block else "–" for c in ("train accuracy", *CONDITIONS)]
    lines.append(f"| {model} | {' '.join(map(str, block['seed']))} | {' '.join(map(str, block['epochs']))} | "
                 + " | ".join(accs) + f" | {duration(block['train seconds'].mean())} per seed "
                 f"({block['images/s'].median():.0f} img/s) |")
  if rows:
    lines += ["", "Per seed (with / without / conflicting pixel, %): " + "; ".join(
        f"{r['model']} seed {r['seed']}: " + " / ".join(f"{100 * r.get(c, np.nan):.1f}" for c in CONDITIONS)
        for r in rows) + "."]
  if left_out:
    lines += ["", "Left out: " + "; ".join(left_out) + "."]
  return "\n".join(lines)


def read_grids(runs: list[Run]) -> pd.DataFrame | None:
  """Every run's grid rows at its newest checkpoint (with imported weights: of the file the newest row
  was computed from), with `workdir` and `method_label` columns."""
  frames = []
  for run in runs:
    df = _stage_frame(grid_stage.TABLE, run.path / "single_pixel" / "results.csv")
    if df.empty:
      continue
    frames.append(df.assign(workdir=str(run.path), model=run.model, model_seed=run.seed,
                            degenerate_share=df["degenerate"] / df["num_images"]))
  # Across runs too: a method the runs imported and this process does not know counts its newest revision.
  return results.fresh(pd.concat(frames, ignore_index=True), "the runs' grids") if frames else None


def paper_grids(runs: list[Run], grids: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
  """The rows of the paper's tables: per model and test jitter, the methods a grid ran for both targets
  (the leaderboard's other methods have the predicted target only), every target and output. A run's
  grid at a test jitter enters only when it has every such cell that a seed of its model has, and its
  grid has none of them still planned (`base.RUNNING`), so the means never mix seeds that have a cell
  with seeds that do not. Returns those rows and a line per grid left out."""
  where = ["model", "test_position_sd", "test_colour_sd"]
  cells = lambda frame: set(zip(frame["method_label"], frame["target"], frame["output"]))
  kept, left_out = [], []
  for (model, pos, col), block in grids.groupby(where, sort=False):
    paper = set(block.loc[block["target"] == "label", "method_label"])
    block = block[block["method_label"].isin(paper)]
    wanted = cells(block)
    for run in [r for r in runs if r.model == model]:
      mine = block[block["workdir"] == str(run.path)]
      # Still to come: a paper cell its running grid plans (a label cell makes its method a paper one).
      planned = {c for c in _planned_cells(run, pos, col) if c[0] in paper or c[1] == "label"} - cells(mine)
      if wanted - cells(mine) or planned:
        left_out.append(f"{run.label} at test jitter ({pos:g}, {col:g}): {len(cells(mine))} of "
                        f"{len(wanted | planned)} cells" + (", its grid still running" if planned else ""))
        continue
      kept.append(mine)
  return (pd.concat(kept, ignore_index=True) if kept else grids.iloc[:0]), left_out


def _planned_cells(run: Run, position_sd: float, colour_sd: float) -> set[tuple[str, str, str]]:
  """(method, target, output) of every cell a grid still running (`base.RUNNING`) plans at a test
  jitter; empty when none runs."""
  marker = run.path / "single_pixel" / base.RUNNING
  if not marker.exists():
    return set()
  try:
    keys = [dict(zip(grid_stage.CELL_KEY, k)) for k in json.loads(marker.read_text())["keys"]]
    return {(results.method_label(k["method"], k["method_options"]), k["target"], k["output"]) for k in keys
            if float(k["test_position_sd"]) == position_sd and float(k["test_colour_sd"]) == colour_sd}
  except (ValueError, KeyError, TypeError):
    return {("?", "label", "?")}  # a marker that does not parse: still running, plan unknown


def pointing_tables(summary: pd.DataFrame, rows: pd.DataFrame) -> str:
  """Pointing accuracy, mean (std) over seeds, a column per target/output; one table per model x jitter."""
  parts = []
  for (model, pos, col), block in summary.groupby(["model", "test_position_sd", "test_colour_sd"], sort=False):
    mine = rows[(rows["model"] == model) & (rows["test_position_sd"] == pos) & (rows["test_colour_sd"] == col)]
    n_images = ", ".join(sorted({str(int(v)) for v in mine["num_images"]}))
    # The model's own accuracy on these images: where it is low, the pixel is not what it reads here.
    per_seed = mine.groupby("model_seed")[["overall.withpix_model_accuracy", "overall.nopix_model_accuracy"]].first()
    accuracy = (f"; the model's accuracy on them with the pixel {100 * per_seed.iloc[:, 0].mean():.1f}%, without it "
                f"{100 * per_seed.iloc[:, 1].mean():.1f}% (mean over seeds)") if len(per_seed) else ""
    lines = [f"**{model}, test jitter (position sd {pos:g}, colour sd {col:g})**, {n_images} test images per seed, "
             f"seeds {block['model_seeds'].iloc[0]}{accuracy}", "",
             "| method | " + " | ".join(f"{t} / {o}" for t, o in HUES) + " |", "|---" * 5 + "|"]
    for method, sub in block.groupby("method_label", sort=False):
      cells = []
      for t, o in HUES:
        hit = sub[(sub["target"] == t) & (sub["output"] == o)]
        cells.append(_pct(hit[f"{POINTING} mean"].iloc[0], hit[f"{POINTING} std"].iloc[0]) + _degenerate_mark(hit)
                     if len(hit) else "–")
      lines.append(f"| {method} | " + " | ".join(cells) + " |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def _degenerate_mark(cells: pd.DataFrame) -> str:
  """'†' when most maps of the cells are degenerate (constant or not finite): their pointing says nothing."""
  share = cells["degenerate_share mean"].iloc[0] if "degenerate_share mean" in cells and len(cells) else np.nan
  return " †" if share > grid_stage.DEGENERATE_SHARE else ""


def localisation_tables(summary: pd.DataFrame, rows: pd.DataFrame) -> str:
  """The planted pixel's rank in the map and its share of the map's mass, target `predicted`: means
  over seeds (`summary`), but the median rank each seed's (from `rows`, the grid rows) where they
  differ, as in the leaderboard."""
  parts = []
  where = ["model", "test_position_sd", "test_colour_sd", "method_label", "target", "output"]
  medians = {k: rank_text(g.sort_values("model_seed")["localisation.rank_median"])
             for k, g in rows.groupby(where, sort=False)}
  short = {"localisation.rank_mean": "rank mean", "localisation.rank_median": "rank median",
           "localisation.top5": "top 5 %", "localisation.top10": "top 10 %", "localisation.mass_mean": "mass %"}
  for (model, pos, col), block in summary.groupby(["model", "test_position_sd", "test_colour_sd"], sort=False):
    block = _in_table_order(block[block["target"] == "predicted"])
    lines = [f"**{model}, test jitter ({pos:g}, {col:g})**, target predicted, mean over seeds (rank median: "
             "each seed's where they differ)", "",
             "| method | output | " + " | ".join(short.values()) + " |", "|---" * (2 + len(short)) + "|"]
    for _, r in block.iterrows():
      values = [("–" if pd.isna(r[f"{c} mean"]) else
                 f"{r[f'{c} mean']:.1f}" if c.startswith("localisation.rank") else f"{100 * r[f'{c} mean']:.1f}")
                for c in short]
      values[1] = medians.get((model, pos, col, r["method_label"], r["target"], r["output"])) or values[1]
      lines.append(f"| {r['method_label']} | {r['output']} | " + " | ".join(values) + " |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def per_class_rows(run_path: pathlib.Path, rows: pd.DataFrame) -> list[dict]:
  """Per class hit counts of a run's grid cells (target predicted): from its exported summary
  (`PER_CLASS`), else from the grid's per-image files."""
  summary = run_path / PER_CLASS
  if summary.exists():
    try:
      return PER_CLASS_TABLE.read(summary, strict=True)
    except results.DamagedTable as e:
      raise ReportError(str(e)) from None
  found = []
  for _, row in rows[rows["target"] == "predicted"].iterrows():
    key = {k: str(row[k]) for k in grid_stage.CELL_KEY}  # as the CSV holds them: 6, 0.0, ''
    path = grid_stage.per_image_file(run_path, key)
    if not path.exists():
      continue
    try:
      with np.load(path) as z:
        if "label" not in z.files:
          continue  # written before the grid kept labels: no per-class table for this cell
        label, hit = z["label"], z["hit"]
        black = z["versions"][:, BLACK_PIXEL] if "versions" in z.files else None
    except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as e:
      raise ReportError(f"{path} is unreadable ({type(e).__name__}: {e}); rerun the grid of {run_path} (it "
                        "recomputes a damaged cell) or remove the file") from None
    for cls in np.unique(label):
      mine = label == cls
      found.append({**key, "class": int(cls), "images": int(np.sum(mine)), "hits": int(np.sum(hit[mine])),
                    "blackpix_hits": None if black is None else int(np.sum(black[mine] == cls)),
                    "blackpix_predicted": None if black is None else int(np.sum(black == cls)),
                    "needed_hits": None if black is None else int(np.sum(hit[mine] & (black[mine] != cls)))})
  return found


def _class_blocks(found: list[dict]):
  """(model, jitter, rows, classes) of per-class records, one table's worth at a time."""
  if found:
    for (model, jitter), block in pd.DataFrame(found).groupby(["model", "jitter"], sort=False):
      yield model, jitter, block, sorted(block["cls"].unique())


def blackpix_tables(runs: list[Run], rows: pd.DataFrame) -> str:
  """Per class and seed, what the model does with the planted pixel set black (the image the
  importance columns' "sub: pix" scores): the share of each class's images it still gets right, and
  the share of all the images it puts in that class. The model alone decides both, so one grid cell
  per jitter gives them: the one with the most images (then the first in key order)."""
  found = []
  for run in runs:
    mine = rows[(rows["workdir"] == str(run.path)) & (rows["target"] == "predicted")]
    jitters = {(float(p), float(c)) for p, c in zip(mine["test_position_sd"], mine["test_colour_sd"])}
    cells: dict = {}
    for r in per_class_rows(run.path, mine):
      jitter = (float(r["test_position_sd"]), float(r["test_colour_sd"]))
      if r["target"] == "predicted" and jitter in jitters and r.get("blackpix_hits") not in (None, ""):
        cells.setdefault(jitter, {}).setdefault(tuple(str(r[k]) for k in grid_stage.CELL_KEY), []).append(r)
    for jitter, by_cell in cells.items():
      chosen = by_cell[min(by_cell, key=lambda k: (-int(k[grid_stage.CELL_KEY.index("num_images")]), k))]
      found += [dict(model=run.model, seed=run.seed, jitter=jitter, cls=int(r["class"]), images=int(r["images"]),
                     right=int(r["blackpix_hits"]), assigned=int(r["blackpix_predicted"])) for r in chosen]
  parts = []
  for model, jitter, block, classes in _class_blocks(found):
    lines = [f"**{model}, test jitter ({jitter[0]:g}, {jitter[1]:g})**, the planted pixel set black: % of each "
             "class's images still right, and % of all the images put in that class", "",
             "| seed | | " + " | ".join(f"class {k}" for k in classes) + " |", "|---" * (2 + len(classes)) + "|"]
    for seed, mine in sorted(block.groupby("seed"), key=lambda kv: int(kv[0])):
      mine = mine.set_index("cls")
      total = mine["images"].sum()
      for label, values in (("still right", mine["right"] / mine["images"]), ("share of all", mine["assigned"] / total)):
        lines.append(f"| {seed} | {label} | " + " | ".join(
            "–" if k not in values.index else f"{100 * values[k]:.0f}" for k in classes) + " |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def per_class_tables(runs: list[Run], rows: pd.DataFrame, by_seed: bool = False) -> str:
  """Pointing accuracy per class, target `predicted`, of the cells in `rows`: the mean over seeds, or
  with `by_seed` one row per seed (where a mean would blur a class that one seed's maps find and
  another's miss)."""
  found = []
  for run in runs:
    mine = rows[rows["workdir"] == str(run.path)]
    if mine.empty:
      continue
    # A summary exported before rows held a revision holds revision 1's.
    cell_of = lambda r: (str(float(r["test_position_sd"])), str(float(r["test_colour_sd"])), r["method"],  # noqa: E731
                         r["method_options"], r["output"], int(r.get(results.REVISION) or 1))
    cells = {cell_of(r) for _, r in mine[mine["target"] == "predicted"].iterrows()}
    for r in per_class_rows(run.path, mine):
      cell = cell_of(r)
      if r["target"] != "predicted" or cell not in cells:
        continue
      found.append(dict(model=run.model, seed=run.seed, jitter=(float(cell[0]), float(cell[1])),
                        method_label=results.method_label(r["method"], r["method_options"]), target="predicted",
                        output=r["output"], cls=int(r["class"]), hit=int(r["hits"]) / int(r["images"])))
  parts = []
  for model, jitter, block, classes in _class_blocks(found):
    index = ["method_label", "target", "output"] + (["seed"] if by_seed else [])
    table = block.pivot_table(index=index, columns="cls", values="hit", sort=False)
    table = _in_table_order(table.reset_index())
    if by_seed:  # in the order of `rows` (the leaderboard's), each method's seeds in order
      order = {m: i for i, m in enumerate(dict.fromkeys(rows["method_label"]))}
      table = table.assign(_order=table["method_label"].map(order).fillna(len(order))).sort_values(
          ["_order", "seed"], kind="stable").drop(columns="_order")
    seeds = " ".join(str(s) for s in sorted(block["seed"].unique(), key=int))
    head = (f"**{model}, test jitter ({jitter[0]:g}, {jitter[1]:g})**, target predicted, "
            + ("% per seed" if by_seed else f"% mean over seeds {seeds}"))
    second = "seed" if by_seed else "output"
    lines = [head, "", f"| method | {second} | " + " | ".join(f"class {k}" for k in classes) + " |",
             "|---" * (2 + len(classes)) + "|"]
    for _, r in table.iterrows():
      lines.append(f"| {r['method_label']} | {r[second]} | "
                   + " | ".join("–" if pd.isna(r[k]) else f"{100 * r[k]:.0f}" for k in classes) + " |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def importance_tables(rows: pd.DataFrame, by_seed: bool = False) -> str:
  """Additive and subtractive accuracies on each method's misses: mean (std) [seeds averaged], or
  with `by_seed` one row per seed with its number of misses (a mean over seeds hides which seed's
  misses are of which kind)."""
  parts = []
  for (model, pos, col), block in rows.groupby(["model", "test_position_sd", "test_colour_sd"], sort=False):
    second = "seed" if by_seed else "target / output"
    missed = "images missed" if by_seed else "images missed (mean over seeds)"
    cells = ", ".join(f"target {t}, output {o}" for t, o in dict.fromkeys(zip(block["target"], block["output"])))
    lines = [f"**{model}, test jitter ({pos:g}, {col:g})**" + (f", {cells}" if by_seed else ""),
             "", f"| method | {second} | {missed} | " + " | ".join(IMPORTANCE.values()) + " |",
             "|---" * (3 + len(IMPORTANCE)) + "|"]
    for (method, target, output), sub in _in_table_order(block).groupby(["method_label", "target", "output"],
                                                                         sort=False):
      if by_seed:  # a method's rows of another target or output follow, each row saying its seed only
        for _, r in sub.sort_values("model_seed", key=lambda v: v.astype(int)).iterrows():
          cells = ["–" if pd.isna(float(r[c])) else f"{100 * float(r[c]):.1f}" for c in IMPORTANCE]
          lines.append(f"| {method} | {r['model_seed']} | {float(r['overall.attribution_incorrect']):.0f} | "
                       + " | ".join(cells) + " |")
        continue
      cells = []
      for c in IMPORTANCE:
        v = sub[c].astype(float)
        cells.append(_pct(v.mean(), v.std(ddof=1), n=int(v.notna().sum())))
      lines.append(f"| {method} | {target} / {output} | {sub['overall.attribution_incorrect'].astype(float).mean():.1f} | "
                   + " | ".join(cells) + " |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def _stage_frame(table: results.Table, path: pathlib.Path) -> pd.DataFrame:
  """A run's stage table, its rows about the model as it is now (`results.current`); empty without
  the file. A damaged row is an error: left out, it would only make the report's means silently
  smaller (a stage computes it again; the report cannot)."""
  try:
    return results.current(table.frame(path, strict=True), path)
  except results.DamagedTable as e:
    raise ReportError(str(e)) from None


def needed_pointing(runs: list[Run], cells: pd.DataFrame) -> dict:
  """(model, seed, method label, output) -> pointing accuracy on the images whose prediction the
  planted pixel decides (the model gets them wrong with it set black), from the per-class counts of
  the `cells` (target predicted, one jitter). Runs whose counts predate these columns have none."""
  out = {}
  for run in runs:
    mine = cells[cells["workdir"] == str(run.path)]
    if mine.empty:
      continue
    wanted = {tuple(str(r[k]) for k in grid_stage.CELL_KEY): r["method_label"] for _, r in mine.iterrows()}
    sums: dict = {}
    for r in per_class_rows(run.path, mine):
      label = wanted.get(tuple(str(r[k]) for k in grid_stage.CELL_KEY))
      if label is None or r.get("needed_hits") in (None, ""):
        continue
      hits, needed = sums.get((label, r["output"]), (0, 0))
      sums[(label, r["output"])] = (hits + int(r["needed_hits"]), needed + int(r["images"]) - int(r["blackpix_hits"]))
    out.update({(run.model, run.seed, label, output): hits / needed if needed else np.nan
                for (label, output), (hits, needed) in sums.items()})
  return out


def leaderboard(runs: list[Run], grids: pd.DataFrame | None) -> pd.DataFrame:
  """One row per model x method: pointing (mean, std over seeds) for both outputs, the planted pixel's
  median rank and mass, the faithfulness areas, the similarity at full cascading randomisation, and
  the seconds per image; from the grid at `BOARD_JITTER`, target predicted, and seed 0's (the lowest
  seed's) faithfulness and cascading tables."""
  if grids is None:
    return pd.DataFrame()
  cells = grids[(grids["target"] == "predicted") & (grids["test_position_sd"] == BOARD_JITTER[0])
                & (grids["test_colour_sd"] == BOARD_JITTER[1])]
  rows, images, timings = [], {"faithfulness": set(), "cascading": set()}, {}
  needed = needed_pointing(runs, cells)
  for model, block in cells.groupby("model", sort=False):
    mine = [r for r in runs if r.model == model]
    first = min(mine, key=lambda r: r.seed)
    faith = _stage_frame(faithfulness_stage.TABLE, first.path / "faithfulness" / "results.csv")
    cascade = _stage_frame(sanity_stage.TABLE, first.path / "sanity" / "cascading.csv")
    timed, timed_from = _timing(mine)
    images["faithfulness"] |= set(faith["num_images"]) if not faith.empty else set()
    images["cascading"] |= set(cascade["num_images"]) if not cascade.empty else set()
    # Cells a grid still running plans: their methods are listed, their pointing marked as running.
    running = {(m, o) for r in mine for m, t, o in _planned_cells(r, *BOARD_JITTER) if t == "predicted"}
    pending = pd.DataFrame({"method_label": sorted({m for m, _ in running} - set(block["method_label"]))})
    for method, sub in pd.concat([block, pending], ignore_index=True).groupby("method_label", sort=False):
      row = {"model": model, "method": method}
      for output in ("softmax", "logit"):
        out = sub[sub["output"] == output]
        row[f"running {output}"] = (method, output) in running
        row[f"pointing {output}"] = out[POINTING].mean() if len(out) else np.nan
        row[f"std {output}"] = out[POINTING].std(ddof=1) if len(out) > 1 else np.nan
        row[f"seeds {output}"] = len(out)
        if output == "logit" and len(out):
          shares = pd.Series([needed.get((model, int(seed), method, output), np.nan) for seed in out["model_seed"]])
          row["needed logit"], row["needed std"] = shares.mean(), shares.std(ddof=1)
          row["needed seeds"] = int(shares.notna().sum())
          row["rank median"] = out["localisation.rank_median"].mean()
          # Each seed's: a mean of medians that are 1 on one seed and 1024 on another names a rank neither has.
          row["rank medians"] = rank_text(out.sort_values("model_seed")["localisation.rank_median"])
          row["mass"] = out["localisation.mass_mean"].mean()
          if timed is None:
            warm = (out["seconds"] - out["compile_seconds"].fillna(0)) / out["num_images"]
            row["seconds per image"] = warm.median()
          else:
            hit = timed[(timed["model"] == model) & (timed["method_label"] == method)
                        & (timed["output"] == "logit")]["seconds_per_image"]
            row["seconds per image"] = hit.iloc[-1] if len(hit) else np.nan
          row["degenerate"] = out["degenerate_share"].mean()
      f = faith[faith["method_label"] == method] if not faith.empty else faith
      for (curve, order, replacement), name in BOARD_CURVES.items():
        hit = f[(f["curve"] == curve) & (f["order"] == order) & (f["replacement"] == replacement)] if len(f) else f
        row[name] = (hit["accuracy_mean"] if curve == "road" else hit["area_mean"]).iloc[0] if len(hit) else np.nan
      c = cascade[(cascade["method_label"] == method) & (cascade["comparison"] == "randomized")] \
          if not cascade.empty else cascade
      row["cascading |rank corr.|"] = c.sort_values("step")["spearman_abs_mean"].iloc[-1] if len(c) else np.nan
      rows.append(row)
    timings[model] = timed_from
  board = pd.DataFrame(rows)
  if board.empty:
    return board
  board.attrs["timing"] = timings
  order = {m: i for i, m in enumerate(dict.fromkeys(board["model"]))}
  board = board.assign(_model=board["model"].map(order)).sort_values(
      ["_model", "pointing logit", "pointing softmax"], ascending=[True, False, False], kind="stable",
      na_position="last").drop(columns="_model")
  board.attrs["faithfulness images"] = ", ".join(sorted({str(int(n)) for n in images["faithfulness"]})) or "–"
  board.attrs["cascading images"] = ", ".join(sorted({str(int(n)) for n in images["cascading"]})) or "–"
  return board


def leaderboard_cells(board: pd.DataFrame, grids: pd.DataFrame, output: str) -> pd.DataFrame:
  """The grid rows behind the leaderboard's methods at `output`, in the leaderboard's order."""
  cells = grids[(grids["target"] == "predicted") & (grids["output"] == output)
                & (grids["test_position_sd"] == BOARD_JITTER[0]) & (grids["test_colour_sd"] == BOARD_JITTER[1])]
  order = {(m, method): i for i, (m, method) in enumerate(zip(board["model"], board["method"]))}
  key = [order.get((m, method), len(order)) for m, method in zip(cells["model"], cells["method_label"])]
  return cells.iloc[np.argsort(key, kind="stable")]


def _timing(runs: list[Run]) -> tuple[pd.DataFrame | None, str]:
  """A model's idle seconds per method (`timing.FILE` of its lowest-seed run that has one) and what
  they are, for the table's head; (None, how the runs timed themselves) without one."""
  for run in sorted(runs, key=lambda r: r.seed):
    path = run.path / timing.FILE
    if path.exists():
      try:
        df = results.fresh(timing.TABLE.frame(path, strict=True), path)
      except results.DamagedTable as e:
        raise ReportError(str(e)) from None
      df = df[df["model"] == run.model]
      if not df.empty:
        # Rows timed in separate sessions are comparable only if the head says so: every date and setting.
        where = lambda c: ", ".join(dict.fromkeys(str(v) for v in df[c]))  # noqa: E731
        return df, (f"ms / image: the maps alone, timed apart on an idle machine ({where('machine')}; "
                    f"{', '.join(dict.fromkeys(d[:10] for d in df['date']))}; {where('images')} images per call, "
                    f"median of {where('rounds')} calls; benchmarks/method_seconds.py)")
  return None, ("ms / image: as the run timed its cells (maps and scoring, compilation excluded), beside whatever "
                "else the machine ran then")


def rank_text(medians) -> str:
  """The seeds' median ranks: one number where they agree, else each seed's ('1 / 1024')."""
  values = [f"{v:.0f}" for v in medians if pd.notna(v)]
  return "" if not values else values[0] if len(set(values)) == 1 else " / ".join(values)


def leaderboard_markdown(board: pd.DataFrame, runs: list[Run]) -> str:
  parts = []
  for model, block in board.groupby("model", sort=False):
    seeds = sorted({r.seed for r in runs if r.model == model})
    first = min(seeds)
    head = (f"**{model}**, test jitter (0, 0), target predicted; pointing: mean (std) over the seeds that have the "
            f"cell (seeds {' '.join(map(str, seeds))}; `[n]` when fewer); rank, mass and time: output logit, rank "
            "median: each seed's in seed order where they differ, mass: mean over seeds; "
            f"faithfulness and cascading randomisation: seed {first}; "
            + board.attrs.get("timing", {}).get(model, ""))
    columns = ["pointing softmax", "pointing logit", "pointing logit, pixel needed", "rank median", "mass %",
               *BOARD_CURVES.values(), "cascading \\|rank corr.\\|", "ms / image"]
    lines = [head, "", "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for _, r in block.iterrows():
      cells = []
      for output in ("softmax", "logit"):
        n = r[f"seeds {output}"]
        if n == 0:
          cells.append("running" if r[f"running {output}"] else "n/a")
          continue
        cells.append(_pct(r[f"pointing {output}"], r[f"std {output}"], n=None if n == len(seeds) else int(n))
                     + (" †" if output == "logit" and r.get("degenerate", 0) > grid_stage.DEGENERATE_SHARE else ""))
      n = r.get("needed seeds", 0)
      cells.append("–" if pd.isna(n) or not n else _pct(r["needed logit"], r["needed std"],
                                                        n=None if n == len(seeds) else int(n)))
      rank = r.get("rank medians")
      cells.append(rank if isinstance(rank, str) and rank else "–")  # NaN for a method still running
      cells.append("–" if pd.isna(r.get("mass")) else f"{100 * r['mass']:.1f}")
      cells += ["not run" if pd.isna(r[name]) else f"{r[name]:.3f}" for name in BOARD_CURVES.values()]
      cells.append("not run" if pd.isna(r["cascading |rank corr.|"]) else f"{r['cascading |rank corr.|']:.2f}")
      ms = 1000 * r.get("seconds per image", np.nan)
      cells.append("–" if pd.isna(ms) else f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}")
      lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def sanity_tables(runs: list[Run]) -> tuple[str, list[pathlib.Path]]:
  """Spearman |map| per study; returns the markdown and the figures found."""
  parts, found = [], []
  for run in runs:
    for study in sanity_stage.STUDIES:
      path = run.path / "sanity" / f"{study}.csv"
      if not path.exists():
        continue
      df = _stage_frame(sanity_stage.TABLE, path)
      if df.empty:
        continue
      metric = "spearman_abs_mean"
      calib = df[df["comparison"] == "random_map"].set_index("method_label")[metric]
      head = (f"**{run.name}: {study}**, Spearman rank correlation of |map| (mean over {df['num_images'].iloc[0]} "
              "images)")
      if study in ("cascading", "independent"):
        steps = df[df["comparison"] == "randomized"].copy()
        steps["step"] = steps["step"].astype(int)
        layers = ["trained" if l == "none" else l for l in steps.drop_duplicates("step").sort_values("step")["layer"]]
        table = steps.pivot_table(index="method_label", columns="step", values=metric, sort=False)
        lines = [head + "; a column per re-initialised layer" + (" (cumulative, from the logits down)"
                                                                  if study == "cascading" else " (alone)"), "",
                 "| method | " + " | ".join(layers) + " | random map |", "|---" * (len(layers) + 2) + "|"]
        for method, values in table.iterrows():
          lines.append(f"| {method} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {calib.get(method, np.nan):.2f} |")
      else:
        rows = df[~df["comparison"].isin(sanity_stage.CALIBRATION)]
        comparisons = list(dict.fromkeys(rows["comparison"]))
        lines = [head, "", "| method | " + " | ".join(comparisons) + " | random map |",
                 "|---" * (len(comparisons) + 2) + "|"]
        for method, sub in rows.groupby("method_label", sort=False):
          values = sub.set_index("comparison")[metric]
          # '–': the comparison does not apply to the method (a baseline shift for a method without one).
          lines.append(f"| {method} | " + " | ".join(f"{values[c]:.2f}" if c in values.index else "–"
                                                     for c in comparisons) + f" | {calib.get(method, np.nan):.2f} |")
      if any(line.startswith("| ") and "| nan" in line for line in lines):
        lines += ["", "nan: the rank correlation is undefined for the method on every image (a constant map, "
                  "e.g. a CAM that is zero everywhere)."]
      parts.append("\n".join(lines))
      found += sorted((run.path / "sanity").glob(f"{study}_curves.png")) + sorted(
          (run.path / "sanity").glob(f"{study}_strip0.png"))
  return "\n\n".join(parts), found


def faithfulness_tables(runs: list[Run]) -> tuple[str, list[pathlib.Path]]:
  """Mean area (std over images) per method, a table per run and curve, a column per order x
  replacement; returns the markdown and the curve figures found."""
  parts, found = [], []
  for run in runs:
    df = _stage_frame(faithfulness_stage.TABLE, run.path / "faithfulness" / "results.csv")
    if df.empty:
      continue
    df["column"] = df["order"].str.upper() + ", " + df["replacement"]
    for curve, block in df.groupby("curve", sort=False):
      columns = list(dict.fromkeys(block["column"]))
      first = block.iloc[0]
      what = ("mean score over the percentages (ROAD accuracy in brackets)" if curve == "road"
              else "area under the curve")
      lines = [f"**{run.name}: {curve}** ({first['settings']}), {what} of the {first['score']} of the "
               f"{first['target']} class, mean (std) over {first['num_images']} images", "",
               "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
      for method, sub in block.groupby("method_label", sort=False):
        cells = sub.set_index("column")
        lines.append(f"| {method} | " + " | ".join(
            f"{cells.loc[c, 'area_mean']:.3f} ({cells.loc[c, 'area_std']:.3f})"
            + (f" [{cells.loc[c, 'accuracy_mean']:.2f}]" if curve == "road" else "") if c in cells.index else "–"
            for c in columns) + " |")
      parts.append("\n".join(lines))
    found += sorted((run.path / "faithfulness").glob("curves.png"))
  return "\n\n".join(parts), found


def wall_times(runs: list[Run], rows: pd.DataFrame | None) -> str:
  """Minutes per stage, from what each run recorded (its metrics, its tables' seconds; summed over
  resumed runs too)."""
  lines = ["| run | stage | wall time |", "|---|---|---|"]
  for run in runs:
    if run.metrics:
      lines.append(f"| {run.name} | training, {len(run.metrics)} epochs | "
                   f"{sum(float(r['epoch_seconds']) for r in run.metrics) / 60:.1f} min |")
    if rows is not None:
      mine = rows[rows["workdir"] == str(run.path)]
      for (pos, col, n), block in mine.groupby(["test_position_sd", "test_colour_sd", "num_images"], sort=False):
        ig = block[block["method"] == "integrated_gradients"]["seconds"]
        lines.append(f"| {run.name} | grid, jitter ({pos:g}, {col:g}), {n} images, {len(block)} cells | "
                     f"{block['seconds'].sum() / 60:.1f} min (IG cells {ig.sum() / 60:.1f} min) |")
    for path in sorted((run.path / "sanity").glob("*.csv")):
      df = _stage_frame(sanity_stage.TABLE, path)
      seconds = df.drop_duplicates(["method", "method_options"])["seconds"].sum()
      lines.append(f"| {run.name} | sanity: {path.stem} | {seconds / 60:.1f} min |")
    path = run.path / "faithfulness" / "results.csv"
    if path.exists():
      df = _stage_frame(faithfulness_stage.TABLE, path)
      lines.append(f"| {run.name} | faithfulness curves | "
                   f"{df.drop_duplicates(['method', 'method_options'])['seconds'].sum() / 60:.1f} min |")
  return "\n".join(lines)


def commits_line(runs: list[Run]) -> str:
  """The commit each run was started at (`COMMIT`, written by the launcher, else its first provenance
  entry) and the other commits its stages computed at (`provenance.json`)."""
  by_commit: dict[str, list[str]] = {}
  machines = set()
  for run in runs:
    made = (run.path / "COMMIT").read_text().strip() if (run.path / "COMMIT").exists() else ""
    later = [e.get("commit", "") for e in run.provenance]
    made = made or (later[0] if later else "")
    machines |= {f"{e.get('device_kind', '?')} x{e.get('devices', '?')} ({e.get('platform', '?')})"
                 for e in run.provenance}
    others = list(dict.fromkeys(c for c in later if c and c != made))
    by_commit.setdefault(made or "unrecorded", []).append(
        run.name + (f" (stages also at {', '.join(f'`{c}`' for c in others)})" if others else ""))
  if set(by_commit) == {"unrecorded"}:
    return ""
  text = "Runs started at " + "; ".join(f"`{c}`: {', '.join(names)}" for c, names in by_commit.items()) + "."
  return text + (f" Devices: {', '.join(sorted(machines))}." if machines else "")


def config_differences(base: str, variant: str) -> str:
  """The fields `variant` (configs/<variant>.py) sets differently from `base`, read from the repository's
  configs/ beside the package (empty outside a checkout)."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  root = pathlib.Path(__file__).resolve().parents[1]
  if not (root / "configs" / f"{base}.py").exists():
    return ""
  if str(root) not in sys.path:
    sys.path.insert(0, str(root))
  flat = lambda c, p="": {k2: v2 for k, v in c.items() for k2, v2 in (
      flat(v, f"{p}{k}.").items() if isinstance(v, ConfigDict) else {f"{p}{k}": v}.items())}
  a = flat(importlib.import_module(f"configs.{base}").get_config())
  b = flat(importlib.import_module(f"configs.{variant}").get_config())
  rows = [f"| `{k}` | {a.get(k)!r} | {b.get(k)!r} |" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  return "\n".join([f"| field | paper (`configs/{base}.py`) | here (`configs/{variant}.py`) |", "|---|---|---|", *rows])


def _copy_figure(src: pathlib.Path, dst: pathlib.Path, max_bytes: int = 300_000) -> pathlib.Path | None:
  """Copied as is when small enough, else re-encoded at a lower resolution until it is."""
  dst.parent.mkdir(parents=True, exist_ok=True)
  if src.stat().st_size <= max_bytes:
    shutil.copyfile(src, dst)
    return dst
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  image = plt.imread(src)
  for step in (2, 3, 4):
    plt.imsave(dst, image[::step, ::step])
    if dst.stat().st_size <= max_bytes:
      return dst
  logging.warning("%s stays over %d bytes; left out", src, max_bytes)
  dst.unlink()
  return None


def cpu_reproduction(runs: list[Run]) -> bool:
  """Whether the runs are `launch/reproduce_cpu.sh`'s (CIFAR-10 from a folder, resnet18 / vgg16 at
  the CPU configs' 1,000-image grid): the report's text on scale and its commands are about those."""
  return bool(runs) and all(r.config.get("data", {}).get("source") == "folder" and r.model in ("resnet18", "vgg16")
                            and r.config.get("single_pixel", {}).get("max_images") == 1000 for r in runs)


def built_from(path: pathlib.Path) -> set[str] | None:
  """The runs (model seed labels) an existing results.md says it was built from; None for one that
  does not say (an earlier report's, or a hand-written file)."""
  if not path.exists():
    return set()
  match = _BUILT_FROM.search(path.read_text(errors="replace"))
  return set(filter(None, match.group(1).split(", "))) if match else None


def build(workdirs: list[pathlib.Path], out: pathlib.Path, notes: str = "", force: bool = False) -> pathlib.Path:
  """results.md and its figures from `workdirs` into `out`; see the module docstring."""
  runs = [load_run(w) for w in workdirs]
  check_runs(runs)
  done, left_out = trained_runs(runs)
  path = out / "results.md"
  before = built_from(path)
  if before is None and not force:
    raise ReportError(f"{path} does not say which runs it was built from (an earlier report's, or written by hand); "
                      "--force replaces it")
  lost = (before or set()) - {r.label for r in done}
  if lost and not force:
    raise ReportError(f"{path} was built from runs this build lacks ({', '.join(sorted(lost))}); pass them in "
                      "--workdirs, or --force to replace it anyway")
  grids = read_grids(done)
  paper, grid_left_out = paper_grids(done, grids) if grids is not None else (None, [])
  summary = aggregate.summarize(paper) if paper is not None and len(paper) else None
  board = leaderboard(done, grids)
  fig_dir = out / "results"
  reproduction = cpu_reproduction(done)
  md = ["# Results: the single-pixel experiment" + (" on a 2-core CPU" if reproduction else ""), "",
        "Generated by `python -m saliency_jax.report` from the runs' workdirs or their run data; do not edit by hand "
        "(rerun it).", f"<!-- built from: {', '.join(r.label for r in done)} -->", ""]
  if reproduction:
    md += ["**Scale.** Trained and evaluated on a 2-core CPU without a GPU, at the reduced scale of "
           "`configs/resnet_cpu.py` / `configs/vgg16_cpu.py` (table below): a short training schedule, long enough "
           "for the model to take the shortcut, and the single-pixel grid on class-balanced test subsets rather than "
           "all 10,000 images. The data is the JPEG re-encoded CIFAR-10 copy (all 60,000 images). No column comes "
           "from a GPU run.", ""]
  else:
    md += ["**Runs.** " + "; ".join(f"{r.label}: {r.config.get('data', {}).get('source', '?')} data, "
                                    f"{len(r.metrics)} epochs" for r in done) + ".", ""]
  made_at = commits_line(done)
  md += [made_at, ""] if made_at else []
  differences = [config_differences("resnet", "resnet_cpu"), config_differences("vgg16", "vgg16_cpu")]
  if reproduction and all(differences):
    md += ["## What differs from the paper", "", differences[0], "", differences[1], "",
           "`launch/reproduce_cpu.sh` adds a second grid at test jitter (3, 5) on 500 images per seed, the "
           "leaderboard grid of every method (`configs/leaderboard.py`) on every seed, and on seed 0 of each model "
           "the leaderboard's sanity studies (cascading randomisation, class and image sensitivity) and faithfulness "
           "curves, and the paper's sanity checks.", ""]
  md += ["## Models", "", "Test accuracy (%) after the last epoch, mean (std over seeds; sample std). Training "
         "time: the epochs' seconds summed, mean over seeds; img/s: the median over seeds of each seed's median "
         "epoch.", "",
         training_table(done, left_out), ""]
  figures_md = []
  if summary is not None:
    md += ["## Pointing accuracy", "",
           "How often the map's maximum (all tied pixels) includes the planted pixel, % as mean (std) over seeds. "
           "Channel reduction: the signed mean over RGB (for `absolute_gradient` the mean of absolute values). "
           "† marks a cell whose maps are degenerate (constant or not finite) on most images: a constant map ties "
           "every pixel, so it \"points\" at the pixel whatever the method saw, and its number says nothing.", ""]
    if grid_left_out:
      md += ["Grids left out of every table below until complete: " + "; ".join(grid_left_out) + ".", ""]
    md += [pointing_tables(summary, paper), "",
           "## Importance of the pixel a method chose instead (on its misses)", "",
           "On the images where a method missed the planted pixel: the model's accuracy on a black image carrying "
           "only the planted pixel (add: pix) or only the attributed pixel(s) (add: attr), and on the image with "
           "that pixel set black (sub: pix, sub: attr). % as mean (std) [seeds averaged]. **Convention:** a seed "
           "with no misses for a method has no value and is left out of the mean, so `[n]` counts the seeds that "
           "had misses; `–` means no seed had any. The original code wrote 0 for such a seed and averaged it in.",
           "", importance_tables(paper), ""]
    blackpix = blackpix_tables(done, paper)
    if blackpix:
      md += ["Read \"sub: pix\" beside what the model does with the planted pixel set black (below). Where it "
             "puts most images in one or two classes, a miss on those classes' images scores high on \"sub: pix\" "
             "because the model falls back on that class, not because it reads the rest of the image. (Black is "
             "itself a colour the model never saw at the pixel; the Models table gives its accuracy with the pixel "
             "left out, for comparison.)", "",
             blackpix, ""]
    md += ["## Graded localisation", "",
           "Beside the yes/no of pointing: the planted pixel's rank in the (channel-reduced) map, 1 + the pixels "
           "scoring strictly higher (so rank 1 is a hit), and its share of the map's total absolute value (mass; "
           "a pixel is 1/1024 of a 32x32 map, 0.1%). Top 1 equals pointing accuracy.", "",
           localisation_tables(summary, paper), ""]
    by_class = per_class_tables(done, paper)
    if by_class:
      red = ", ".join(f"{k}: {r}" for k, r in enumerate(pixel.colour_code()[:, 0]))
      md += ["## Pointing accuracy per class", "",
             "In the colour variant the class sets the planted pixel's colour, RGB (r, 10, 245), with r for "
             f"CIFAR-10's classes {red}. After normalisation by the dataset's mean and std a red near the mean is "
             "near 0, so a method that multiplies by the input sees little of that channel.", "", by_class, ""]
    for model, block in summary.groupby("model", sort=False):
      fig = fig_dir / f"pointing_accuracy_{model}.png"
      figures.pointing_bars(fig, block, title=f"{model}: pointing accuracy, mean (std) over model seeds")
      figures_md.append(f"![pointing accuracy, {model}](results/{fig.name})")
  else:
    md += ["## Pointing accuracy", "", "No complete single-pixel grid yet"
           + (": " + "; ".join(grid_left_out) if grid_left_out else "") + ".", ""]
  if not board.empty:
    fig = fig_dir / "leaderboard.png"
    figures.leaderboard(fig, board)
    faith_n, cascade_n = board.attrs.get("faithfulness images", "–"), board.attrs.get("cascading images", "–")
    md += ["## Leaderboard", "",
           "Every method of the runs' grids at test jitter (0, 0), target predicted (the CPU reproduction runs every "
           "registered method: `configs/leaderboard.py`), against the pixel each model is known to use, sorted "
           "by pointing accuracy (output logit). Pixel needed: pointing on the images the model gets wrong with the "
           "planted pixel set black, the ones whose prediction the pixel decides (the rest it falls back on "
           "without it: \"the planted pixel set black\" above). Rank median and mass: the planted pixel's place in the map and its "
           f"share of it (0.1% is one pixel's fair share). Faithfulness, {faith_n} images: the area under the deletion "
           "curve (most relevant pixels first onto black; lower is better) and the insertion curve (from a blur; "
           "higher is better), and ROAD's accuracy after imputing the 10-90% most (MoRF, lower is better) or least "
           "(LeRF, higher is better) relevant pixels. Cascading: the rank correlation of |map| with the trained "
           f"model's once every layer is re-initialised, {cascade_n} images (near 0: the map depends on the weights, as it "
           "should; near 1: it does not). ms / image: a method's milliseconds per image at output logit; each "
           "model's head says how they were timed. `running`: the cell's grid is still running; `not run`: that "
           "stage has not run for the method; `n/a`: the method does not apply.", "", leaderboard_markdown(board, done), "", f"![leaderboard](results/{fig.name})", "",
           "**On the misses** of every method (target predicted, output logit, test jitter (0, 0)): the columns of "
           "[the importance table](#importance-of-the-pixel-a-method-chose-instead-on-its-misses), in the "
           "leaderboard's order.", "", importance_tables(leaderboard_cells(board, grids, "logit")), ""]
    logit_cells = leaderboard_cells(board, grids, "logit")
    if len(logit_cells):
      # Collapsed: long, and read only to see which seed's misses are of which kind.
      md += ["<details><summary><b>On the misses, per seed</b> (output logit)</summary>", "",
             importance_tables(logit_cells, by_seed=True), "", "</details>", ""]
    by_seed = per_class_tables(done, logit_cells, by_seed=True)
    if by_seed:
      # Collapsed: long, and read only to see which classes a method's hits come from on each seed.
      md += ["<details><summary><b>Per class and seed</b> (output logit): which classes' pixels each method finds "
             "(the class sets the pixel's colour: <a href=\"#pointing-accuracy-per-class\">above</a>)</summary>", "",
             by_seed, "", "</details>", ""]
  for run in done:
    src = run.path / "single_pixel" / "examples.png"
    if src.exists() and run.seed == min(r.seed for r in done if r.model == run.model):
      dst = _copy_figure(src, fig_dir / f"examples_{run.name}.png")
      if dst:
        figures_md.append(f"![example maps, {run.name}](results/{dst.name})")
  sanity_md, sanity_figs = sanity_tables(done)
  md += ["## Sanity checks", "", sanity_md or "No sanity results yet.", ""]
  faithfulness_md, faithfulness_figs = faithfulness_tables(done)
  if faithfulness_md:
    md += ["## Faithfulness", "",
           "Deletion: pixels removed in the map's order (MoRF: most relevant first; LeRF: least relevant first), "
           "replaced by black, the training set's mean colour or a blur of the image; a faithful map makes the "
           "MoRF deletion area small and the LeRF one large. Insertion: the reverse, from the replacement towards "
           "the image (large MoRF area is good). ROAD: the removed pixels are imputed from their neighbours "
           "(noisy linear imputation) instead, so the curve measures the pixels' information, not the artefact of "
           "a constant patch.", "", faithfulness_md, ""]
  for src in sanity_figs + faithfulness_figs:
    stage = "faithfulness_" if src.parent.name == "faithfulness" else ""  # sanity figures name their study
    dst = _copy_figure(src, fig_dir / f"{src.parent.parent.name}_{stage}{src.name}")
    if dst:
      figures_md.append(f"![{dst.stem}](results/{dst.name})")
  md += ["## Figures", "", *[f + "\n" for f in figures_md], "## Wall time per stage", "",
         "As each run recorded it, summed over resumed runs.", "", wall_times(done, grids), ""]
  if reproduction:
    md += ["## Commands", "", "```bash",
           "launch/reproduce_cpu.sh CIFAR10_FOLDER workdirs/cpu   # everything; a rerun resumes",
           "python -m saliency_jax.report --workdirs='workdirs/cpu/*_seed*' --export=runs/cpu   # the compact run data",
           "python -m saliency_jax.report --workdirs='runs/cpu/*_seed*' --out=docs --notes=docs/results_notes.md",
           "```", ""]
  if notes:
    md += ["## Reading", "", notes.strip(), ""]
  text = "\n".join(md)
  with files.atomic_open(path, "w") as f:
    f.write(text)
  # A figure an earlier build wrote that this one does not link (a run left out, a figure now too
  # large) would sit beside the document and no longer be its; only names the report gives are removed.
  linked = set(re.findall(r"\(results/([^)/]+\.png)\)", text))
  for stale in sorted(fig_dir.glob("*.png")) if fig_dir.is_dir() else []:
    if stale.name not in linked and any(fnmatch.fnmatch(stale.name, p) for p in REPORT_FIGURES):
      stale.unlink()
  return path


def export(workdirs: list[pathlib.Path], out: pathlib.Path) -> list[pathlib.Path]:
  """Each workdir's compact run data (`EXPORT`, and the per-class summary of its per-image files)
  into `out/<workdir name>/`, replacing what an earlier export left there (a stage's running marker
  that is gone, too); returns the folders written. A workdir with no epoch finished yet has nothing
  to keep and is left out (logged)."""
  written = []
  for w in workdirs:
    if not (w / "metrics.csv").exists():
      logging.info("%s: no epoch finished yet, nothing to export", w)
      continue
    run = load_run(w)
    dst, staging = out / w.name, out / f".{w.name}.export"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for pattern in EXPORT:
      for src in sorted(w.glob(pattern)):
        target = staging / src.relative_to(w)
        if src.suffix == ".png":
          _copy_figure(src, target, max_bytes=150_000)
        else:
          target.parent.mkdir(parents=True, exist_ok=True)
          shutil.copyfile(src, target)
    grids = read_grids([run])
    if grids is not None:
      rows = per_class_rows(w, grids)
      if rows:
        (staging / PER_CLASS).parent.mkdir(parents=True, exist_ok=True)
        PER_CLASS_TABLE.write(staging / PER_CLASS, rows)
    shutil.rmtree(dst, ignore_errors=True)
    staging.rename(dst)
    written.append(dst)
  return written


def _workdirs(patterns) -> list[pathlib.Path]:
  found = sorted({pathlib.Path(p) for pattern in patterns for p in (glob.glob(pattern) or [pattern])})
  missing = [str(p) for p in found if not p.is_dir()]
  if missing:
    raise ReportError(f"--workdirs: {', '.join(missing)} is not a folder")
  if not found:
    raise ReportError(f"--workdirs={','.join(patterns)} matched no folder")
  return found


def command(workdirs: list[str], out: str | None = None, export_dir: str | None = None, notes: str = "",
            force: bool = False) -> int:
  """What the command line does: 0, or 2 after one line on stderr naming the setting or the file."""
  try:
    found = _workdirs(workdirs)
    if bool(out) == bool(export_dir):
      raise ReportError("give --out=DIR (where results.md goes) or --export=DIR (where the run data goes), one of them")
    target = pathlib.Path(out or export_dir)
    if target.exists() and not target.is_dir():
      raise ReportError(f"--{'out' if out else 'export'}={str(target)!r} is a file; give a folder")
    if export_dir:
      for folder in export(found, target):
        print(f"run data: {folder}")
      return 0
    text = pathlib.Path(notes).read_text() if notes else ""
    print(f"report: {build(found, target, text, force=force)}")
    return 0
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
  except OSError as e:
    print(f"error: cannot write {e.filename or out or export_dir}: {e.strerror}", file=sys.stderr)
  return 2


def main(argv):
  del argv
  sys.exit(command(_WORKDIRS.value, out=_OUT.value, export_dir=_EXPORT.value, notes=_NOTES.value,
                   force=_FORCE.value))


if __name__ == "__main__":
  _WORKDIRS = flags.DEFINE_list("workdirs", None, "Run folders (workdirs or exported run data) or glob patterns "
                                "(quote them).")
  _OUT = flags.DEFINE_string("out", None, "Where results.md and results/ go (no default: say where).")
  _EXPORT = flags.DEFINE_string("export", None, "Instead of a report: copy each run's compact data into this folder.")
  _NOTES = flags.DEFINE_string("notes", "", "A markdown file with a hand-written reading, added as the last section.")
  _FORCE = flags.DEFINE_bool("force", False, "Replace a results.md built from runs this build lacks.")
  flags.mark_flags_as_required(["workdirs"])
  app.run(main)
