"""The experiment's report, rebuilt from finished (or partly finished) workdirs:

  python -m saliency_jax.report --workdirs='workdirs/cpu/*_seed*' --out=docs

writes `OUT/results.md` and its figures under `OUT/results/`: model accuracies, pointing accuracy
per method x target x output x test jitter, additive and subtractive importance on the misses, the
sanity checks, example maps, and the wall time of every stage, all read from the workdirs
(`metrics.csv`, `single_pixel/results.csv` and `per_image/`, `sanity/*.csv`, `faithfulness/results.csv`;
the launcher's stage logs in `logs/` beside them for the commits), so rerunning it after a change or after
more runs finished regenerates the same document. Whatever a workdir does not have yet is said, not
skipped silently. `--notes=FILE` adds a hand-written reading of the numbers as the last section.
"""

from __future__ import annotations

import glob
import json
import pathlib
import re
import shutil

import numpy as np
import pandas as pd
from absl import app, flags, logging
from ml_collections import ConfigDict

from saliency_jax import files
from saliency_jax.config_checks import ConfigError
from saliency_jax.data import pixel, sources
from saliency_jax.evaluation import aggregate, faithfulness_run, figures, grid, results, sanity
from saliency_jax.evaluation import run as evaluation_run
from saliency_jax.files import read_csv
from saliency_jax.training.train import stop_reached

CONDITIONS = {"test_pixel_accuracy": "with pixel", "test_nopix_accuracy": "without pixel",
              "test_conflict_accuracy": "conflicting pixel"}
HUES = (("predicted", "softmax"), ("predicted", "logit"), ("label", "softmax"), ("label", "logit"))
IMPORTANCE = {"attribution_incorrect.blackbg_withpix_model_accuracy": "add: pix",
              "attribution_incorrect.blackbg_withattrpix_model_accuracy": "add: attr",
              "attribution_incorrect.truebg_withblackpix_model_accuracy": "sub: pix",
              "attribution_incorrect.truebg_withblackattrpix_model_accuracy": "sub: attr"}
POINTING = "overall.attribution_correct_accuracy"


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


def _model_seed(workdir: pathlib.Path) -> tuple[str, int]:
  """'resnet18_seed2' -> ('resnet18', 2): the launchers' naming."""
  model, _, seed = workdir.name.rpartition("_seed")
  return model, int(seed) if seed.isdigit() else -1


def _planned_epochs(workdir: pathlib.Path, last: dict) -> float:
  """The epochs the run will have trained when it is done: `train.epochs` of its stored config, or
  the epochs it has if it stopped early (`train.STOPS`: it fit, or took the shortcut); NaN (taken
  as finished) without a stored config."""
  path = workdir / "config.json"
  if not path.exists():
    return float("nan")
  train = json.loads(path.read_text()).get("config", {}).get("train", {})
  if stop_reached(train, last):
    return float(last["epoch"])
  return float(train.get("epochs", last["epoch"]))


def training_table(workdirs: list[pathlib.Path]) -> tuple[pd.DataFrame, str]:
  """Per run: epochs, final test accuracies, training time; and the markdown with means over seeds."""
  rows = []
  for w in workdirs:
    metrics = read_csv(w / "metrics.csv")
    model, seed = _model_seed(w)
    if not metrics:
      rows.append({"model": model, "seed": seed, "epochs": 0})
      continue
    last = metrics[-1]
    rows.append({"model": model, "seed": seed, "epochs": int(last["epoch"]), "planned": _planned_epochs(w, last),
                 "train accuracy": float(last["train_accuracy"]),
                 **{c: float(last[c]) for c in CONDITIONS if c in last},
                 "train seconds": sum(float(r["epoch_seconds"]) for r in metrics),
                 "images/s": float(np.median([float(r["images_per_sec"]) for r in metrics]))})
  runs = pd.DataFrame(rows)
  lines = ["| model | seeds | epochs | train acc. | " + " | ".join(f"test: {v}" for v in CONDITIONS.values())
           + " | training time |", "|---" * (5 + len(CONDITIONS)) + "|"]
  # A run still training (or killed mid-schedule) would pull the means towards an undertrained
  # model: only finished runs enter them; the others are listed below the table.
  finished = runs["epochs"] >= runs["planned"].fillna(0) if "planned" in runs else runs["epochs"] > 0
  for model, block in runs.groupby("model", sort=False):
    block = block[(block["epochs"] > 0) & finished[block.index]]
    if block.empty:
      lines.append(f"| {model} | – | not trained yet |" + " |" * (2 + len(CONDITIONS)))
      continue
    accs = [_pct(block[c].mean(), block[c].std(ddof=1)) if c in block else "–"
            for c in ("train accuracy", *CONDITIONS)]
    lines.append(f"| {model} | {' '.join(map(str, block['seed']))} | {' '.join(map(str, block['epochs']))} | "
                 + " | ".join(accs) + f" | {block['train seconds'].mean() / 60:.0f} min per seed "
                 f"({block['images/s'].median():.0f} img/s) |")
  per_seed = ["", "Per seed (with / without / conflicting pixel, %): " + "; ".join(
      f"{r.model} seed {r.seed}: " + " / ".join(f"{100 * getattr(r, c.replace(' ', '_'), np.nan):.1f}"
                                                for c in CONDITIONS)
      for r in runs[(runs["epochs"] > 0) & finished].rename(columns=lambda c: c.replace(" ", "_")).itertuples()) + "."]
  training = runs[(runs["epochs"] > 0) & ~finished]
  if len(training):
    per_seed.append("Still training, left out of the table (epochs done of those planned; with / without / "
                    "conflicting pixel, %): " + "; ".join(
                        f"{r.model} seed {r.seed}: {r.epochs} of {r.planned:.0f}, " + " / ".join(
                            f"{100 * getattr(r, c.replace(' ', '_'), np.nan):.1f}" for c in CONDITIONS)
                        for r in training.rename(columns=lambda c: c.replace(" ", "_")).itertuples()) + ".")
  waiting = runs[runs["epochs"] == 0]
  if len(waiting):
    per_seed.append("Runs not trained yet: " + ", ".join(f"{r.model} seed {r.seed}" for r in waiting.itertuples())
                    + ".")
  return runs, "\n".join(lines + per_seed)


def pointing_tables(summary: pd.DataFrame, runs: pd.DataFrame) -> str:
  """Pointing accuracy, mean (std) over seeds, a column per target/output; one table per model x jitter."""
  parts = []
  for (model, pos, col), block in summary.groupby(["model", "test_position_sd", "test_colour_sd"], sort=False):
    mine = runs[(runs["model"] == model) & (runs["test_position_sd"] == pos) & (runs["test_colour_sd"] == col)]
    n_images = ", ".join(sorted({str(int(v)) for v in mine["num_images"]}))
    lines = [f"**{model}, test jitter (position sd {pos:g}, colour sd {col:g})**, {n_images} test images per seed, "
             f"seeds {block['model_seeds'].iloc[0]}", "",
             "| method | " + " | ".join(f"{t} / {o}" for t, o in HUES) + " |", "|---" * 5 + "|"]
    for method, sub in block.groupby("method_label", sort=False):
      cells = []
      for t, o in HUES:
        hit = sub[(sub["target"] == t) & (sub["output"] == o)]
        cells.append(_pct(hit[f"{POINTING} mean"].iloc[0], hit[f"{POINTING} std"].iloc[0]) if len(hit) else "–")
      lines.append(f"| {method} | " + " | ".join(cells) + " |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def localisation_tables(summary: pd.DataFrame) -> str:
  """The planted pixel's rank in the map and its share of the map's mass, target `predicted`."""
  if f"{grid.LOCALISATION_COLUMNS[0]} mean" not in summary:
    return "No graded localisation columns in these results (computed since they were written)."
  parts = []
  short = {"localisation.rank_mean": "rank mean", "localisation.rank_median": "rank median",
           "localisation.top5": "top 5 %", "localisation.top10": "top 10 %", "localisation.mass_mean": "mass %"}
  for (model, pos, col), block in summary.groupby(["model", "test_position_sd", "test_colour_sd"], sort=False):
    block = _in_table_order(block[block["target"] == "predicted"])
    lines = [f"**{model}, test jitter ({pos:g}, {col:g})**, target predicted, mean over seeds", "",
             "| method | output | " + " | ".join(short.values()) + " |", "|---" * (2 + len(short)) + "|"]
    for _, r in block.iterrows():
      values = [("–" if pd.isna(r[f"{c} mean"]) else
                 f"{r[f'{c} mean']:.1f}" if c.startswith("localisation.rank") else f"{100 * r[f'{c} mean']:.1f}")
                for c in short]
      lines.append(f"| {r['method_label']} | {r['output']} | " + " | ".join(values) + " |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def _test_labels(workdir: pathlib.Path, cache: dict) -> np.ndarray | None:
  """The test labels of a run's data (from its stored config; the folder source reads its decode
  cache), for per-image files written before they held the labels; None if unavailable. `cache`
  holds them per data config: the seeds of a model share one."""
  try:
    data = json.loads((workdir / "config.json").read_text())["config"]["data"]
    key = json.dumps(data, sort_keys=True)
    if key not in cache:
      cache[key] = np.asarray(sources.load(ConfigDict(data)).test.labels)
    return cache[key]
  except (OSError, KeyError, ValueError, AttributeError, ConfigError) as e:
    logging.warning("%s: no test labels for the per-class table; left out of it (%s)", workdir, e)
    return None


def per_class_tables(workdirs: list[pathlib.Path], runs: pd.DataFrame) -> str:
  """Pointing accuracy per class, target `predicted`, mean over seeds, from the grid's per-image
  outcomes of the cells in `runs` (`aggregate.read_runs`: each run's newest checkpoint; grids still
  running already left out)."""
  where = lambda w, pos, col, epoch: (str(w), float(pos), float(col), int(epoch))
  kept = set(map(where, runs["workdir"], runs["test_position_sd"], runs["test_colour_sd"], runs["checkpoint_epoch"]))
  found, cache = [], {}
  for w in workdirs:
    labels = None
    for row in grid.TABLE.read(w / "single_pixel" / "results.csv"):
      path = evaluation_run.per_image_file(w, row)
      if (row["target"] != "predicted" or not path.exists() or where(
          w, row["test_position_sd"], row["test_colour_sd"], row["checkpoint_epoch"]) not in kept):
        continue
      with np.load(path) as z:
        if "label" in z.files:
          label = z["label"]
        else:
          labels = _test_labels(w, cache) if labels is None else labels
          if labels is None:
            break
          label = labels[z["index"]]
        hit = pd.Series(z["hit"]).groupby(label).mean()
      found += [dict(model=row["model"], seed=row["model_seed"], jitter=(float(row["test_position_sd"]),
                                                                         float(row["test_colour_sd"])),
                     method_label=results.method_label(row["method"], row["method_options"]), target="predicted",
                     output=row["output"], cls=int(k), hit=v) for k, v in hit.items()]
  if not found:
    return ""
  frame = pd.DataFrame(found)
  parts = []
  for (model, jitter), block in frame.groupby(["model", "jitter"], sort=False):
    classes = sorted(block["cls"].unique())
    table = block.pivot_table(index=["method_label", "target", "output"], columns="cls", values="hit", sort=False)
    table = _in_table_order(table.reset_index())
    seeds = " ".join(str(s) for s in sorted(block["seed"].unique(), key=int))
    lines = [f"**{model}, test jitter ({jitter[0]:g}, {jitter[1]:g})**, target predicted, % mean over seeds {seeds}",
             "", "| method | output | " + " | ".join(f"class {k}" for k in classes) + " |",
             "|---" * (2 + len(classes)) + "|"]
    for _, r in table.iterrows():
      lines.append(f"| {r['method_label']} | {r['output']} | "
                   + " | ".join("–" if pd.isna(r[k]) else f"{100 * r[k]:.0f}" for k in classes) + " |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def importance_tables(runs: pd.DataFrame) -> str:
  """Additive and subtractive accuracies on each method's misses: mean (std) [seeds averaged]."""
  parts = []
  group = ["model", "test_position_sd", "test_colour_sd"]
  for (model, pos, col), block in runs.groupby(group, sort=False):
    lines = [f"**{model}, test jitter ({pos:g}, {col:g})**", "",
             "| method | target / output | missed (mean) | " + " | ".join(IMPORTANCE.values()) + " |",
             "|---" * (3 + len(IMPORTANCE)) + "|"]
    for (method, target, output), sub in _in_table_order(block).groupby(["method_label", "target", "output"],
                                                                         sort=False):
      cells = []
      for c in IMPORTANCE:
        v = sub[c].astype(float)
        cells.append(_pct(v.mean(), v.std(ddof=1), n=int(v.notna().sum())))
      lines.append(f"| {method} | {target} / {output} | {sub['overall.attribution_incorrect'].astype(float).mean():.1f} | "
                   + " | ".join(cells) + " |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def sanity_tables(workdirs: list[pathlib.Path]) -> tuple[str, list[pathlib.Path]]:
  """Spearman |map| per study; returns the markdown and the figures found."""
  parts, found = [], []
  for w in workdirs:
    for study in ("cascading", "independent", "class_sensitivity", "input_invariance"):
      path = w / "sanity" / f"{study}.csv"
      if not path.exists():
        continue
      df = sanity.TABLE.frame(path)
      metric = "spearman_abs_mean"
      calib = df[df["comparison"] == "random_map"].set_index("method_label")[metric]
      head = f"**{w.name}: {study}**, Spearman rank correlation of |map| (mean over {df['num_images'].iloc[0]} images)"
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
        rows = df[~df["comparison"].isin(("random_map", "edge_map"))]
        comparisons = list(dict.fromkeys(rows["comparison"]))
        lines = [head, "", "| method | " + " | ".join(comparisons) + " | random map |", "|---" * (len(comparisons) + 2) + "|"]
        for method, sub in rows.groupby("method_label", sort=False):
          values = sub.set_index("comparison")[metric]
          # '–': the comparison does not apply to the method (a baseline shift for a method without one).
          lines.append(f"| {method} | " + " | ".join(f"{values[c]:.2f}" if c in values.index else "–"
                                                     for c in comparisons) + f" | {calib.get(method, np.nan):.2f} |")
      if any(line.startswith("| ") and "| nan" in line for line in lines):
        lines += ["", "nan: the rank correlation is undefined for the method on every image (a constant map, "
                  "e.g. a CAM that is zero everywhere)."]
      parts.append("\n".join(lines))
      found += sorted((w / "sanity").glob(f"{study}_curves.png")) + sorted((w / "sanity").glob(f"{study}_strip0.png"))
  return "\n\n".join(parts), found


def faithfulness_tables(workdirs: list[pathlib.Path]) -> tuple[str, list[pathlib.Path]]:
  """Mean area (std over images) per method, a table per workdir and curve, a column per order x
  replacement; returns the markdown and the curve figures found."""
  parts, found = [], []
  for w in workdirs:
    path = w / "faithfulness" / "results.csv"
    if not path.exists():
      continue
    df = faithfulness_run.TABLE.frame(path)
    df["column"] = df["order"].str.upper() + ", " + df["replacement"]
    for curve, block in df.groupby("curve", sort=False):
      columns = list(dict.fromkeys(block["column"]))
      first = block.iloc[0]
      what = ("mean score over the percentages (ROAD accuracy in brackets)" if curve == "road"
              else "area under the curve")
      lines = [f"**{w.name}: {curve}** ({first['settings']}), {what} of the {first['score']} of the {first['target']} "
               f"class, mean (std) over {first['num_images']} images", "",
               "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
      for method, sub in block.groupby("method_label", sort=False):
        cells = sub.set_index("column")
        lines.append(f"| {method} | " + " | ".join(
            f"{cells.loc[c, 'area_mean']:.3f} ({cells.loc[c, 'area_std']:.3f})"
            + (f" [{cells.loc[c, 'accuracy_mean']:.2f}]" if curve == "road" else "") if c in cells.index else "–"
            for c in columns) + " |")
      parts.append("\n".join(lines))
    found += sorted((w / "faithfulness").glob("curves.png"))
  return "\n\n".join(parts), found


def wall_times(workdirs: list[pathlib.Path], runs: pd.DataFrame | None) -> str:
  """Seconds per stage, from what each workdir recorded (sums over resumed runs too)."""
  lines = ["| run | stage | wall time |", "|---|---|---|"]
  for w in workdirs:
    metrics = read_csv(w / "metrics.csv")
    if metrics:
      lines.append(f"| {w.name} | training, {len(metrics)} epochs | "
                   f"{sum(float(r['epoch_seconds']) for r in metrics) / 60:.1f} min |")
    if runs is not None:
      mine = runs[runs["workdir"] == str(w)]
      for (pos, col, n), block in mine.groupby(["test_position_sd", "test_colour_sd", "num_images"], sort=False):
        ig = block[block["method"] == "integrated_gradients"]["seconds"].astype(float)
        lines.append(f"| {w.name} | grid, jitter ({pos:g}, {col:g}), {n} images, {len(block)} cells | "
                     f"{block['seconds'].astype(float).sum() / 60:.1f} min (IG cells {ig.sum() / 60:.1f} min) |")
    for path in sorted((w / "sanity").glob("*.csv")):
      seconds = pd.read_csv(path).drop_duplicates(["method", "method_options"])["seconds"].astype(float).sum()
      lines.append(f"| {w.name} | sanity: {path.stem} | {seconds / 60:.1f} min |")
    path = w / "faithfulness" / "results.csv"
    if path.exists():
      seconds = pd.read_csv(path).drop_duplicates(["method", "method_options"])["seconds"].astype(float).sum()
      lines.append(f"| {w.name} | faithfulness curves | {seconds / 60:.1f} min |")
  return "\n".join(lines)


def config_differences(base: str, variant: str) -> str:
  """The fields `variant` (configs/<variant>.py) sets differently from `base`: derived, not written."""
  import importlib  # pylint: disable=g-import-not-at-top

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


# A stage log's lines that show work done (not what a relaunch finds finished): an epoch trained, a
# grid cell computed or in progress, a sanity or faithfulness method computed.
_WORK_LINE = re.compile(r"\] (epoch \d+/\d+ |single-pixel cell \d+/\d+ |sanity \S+ \d+/\d+ |faithfulness \d+/\d+ )")


def _resumed_at(workdir: pathlib.Path) -> list[str]:
  """The commits a run's stages did work at, in order: from the `=== <time> at <commit>: ...`
  line launch/reproduce_cpu.sh writes into `<out>/logs/<run>_<stage>.log` at each start, for the
  starts whose section of the log shows work (a relaunch that found a stage finished is not news)."""
  found = []
  for log in sorted((workdir.parent / "logs").glob(f"{workdir.name}_*.log")):
    head = None
    for line in log.read_text(errors="replace").splitlines():
      start = re.match(r"=== (\S+) at (\S+?):", line)
      if start:
        head = start.groups()
      elif head and _WORK_LINE.search(line):
        found.append(head)
        head = None
  return list(dict.fromkeys(c for _, c in sorted(found) if c != "?"))


def commits_line(workdirs: list[pathlib.Path], commit: str = "") -> str:
  """The commit each run was made at: `<workdir>/COMMIT` (written by launch/reproduce_cpu.sh when
  the run starts), else `commit` (the launcher's last commit for the whole folder); and the
  commits it was resumed at, from its stage logs."""
  made = {w.name: (w / "COMMIT").read_text().strip() if (w / "COMMIT").exists() else commit for w in workdirs}
  resumed = {w.name: [c for c in _resumed_at(w) if c != made[w.name]] for w in workdirs}
  by_commit: dict[str, list[str]] = {}
  for name, c in made.items():
    later = f" (resumed at {', '.join(f'`{r}`' for r in resumed[name])})" if resumed[name] else ""
    by_commit.setdefault(c or "unrecorded", []).append(name + later)
  if set(by_commit) == {"unrecorded"}:
    return ""
  if len(by_commit) == 1:
    c, names = next(iter(by_commit.items()))
    return f"Runs started at commit `{c}`" + ("" if names == list(made) else f": {', '.join(names)}") + "."
  return "Runs started at more than one commit: " + "; ".join(
      f"`{c}`: {', '.join(names)}" for c, names in by_commit.items()) + "."


def grids_running(workdir: pathlib.Path) -> dict[tuple[float, float], int]:
  """The test jitters of a grid the run started and has not finished (`evaluation.run.RUNNING`),
  each with the cells it will have; {} if none."""
  try:
    plan = json.loads((workdir / "single_pixel" / evaluation_run.RUNNING).read_text())
    return {(float(p), float(c)): int(plan["cells_per_jitter"]) for p, c in plan["test_jitter"]}
  except (OSError, KeyError, ValueError, TypeError):
    return {}


def complete_grids(runs: pd.DataFrame, running: dict[str, dict] | None = None) -> tuple[pd.DataFrame, list[str]]:
  """A run's grid at one test jitter is still running when the run says so (`running[workdir]`, from
  `grids_running`) or when it has fewer cells than the fullest of its model there: in the means it
  would enter some rows and not others. Those rows are left out; returned with a line per such grid
  ('resnet18 seed 2 at test jitter (0, 0): 4 of 20 cells')."""
  where = ["model", "test_position_sd", "test_colour_sd"]
  cells = runs.groupby(where + ["workdir", "model_seed"], sort=False).size().rename("cells").reset_index()
  cells["full"] = cells.groupby(where)["cells"].transform("max")
  planned = [(running or {}).get(str(r.workdir), {}).get((float(r.test_position_sd), float(r.test_colour_sd)))
             for r in cells.itertuples()]
  cells["full"] = [f if p is None else max(f, p) for f, p in zip(cells["full"], planned)]
  partial = cells[(cells["cells"] < cells["full"]).to_numpy() | np.array([p is not None for p in planned], bool)]
  if partial.empty:
    return runs, []
  keys = runs[where + ["workdir"]].apply(tuple, axis=1)
  left_out = set(partial[where + ["workdir"]].apply(tuple, axis=1))
  lines = [f"{r.model} seed {r.model_seed} at test jitter ({r.test_position_sd:g}, {r.test_colour_sd:g}): "
           f"{r.cells} of {r.full} cells" for r in partial.itertuples()]
  return runs[~keys.isin(left_out)].reset_index(drop=True), lines


def build(workdirs: list[pathlib.Path], out: pathlib.Path, notes: str = "", commit: str = "") -> pathlib.Path:
  fig_dir = out / "results"
  fig_dir.mkdir(parents=True, exist_ok=True)
  runs_table, training_md = training_table(workdirs)
  running = []
  try:
    runs, running = complete_grids(aggregate.read_runs([str(w) for w in workdirs]),
                                   {str(w): grids_running(w) for w in workdirs})
    summary = aggregate.summarize(runs)
  except ConfigError:
    runs = summary = None
  runs_lookup = runs.assign(method_label=results.method_label(runs["method"], runs["method_options"])) \
      if runs is not None else None

  md = ["# Results: the single-pixel experiment on a 2-core CPU", "",
        "Generated by `python -m saliency_jax.report` from the workdirs; do not edit by hand (rerun it).", "",
        "**Scale.** Trained and evaluated on a 2-core CPU without a GPU, at the reduced scale of "
        "`configs/resnet_cpu.py` / `configs/vgg16_cpu.py` (table below): a short training schedule, long enough for the model "
        "to take the shortcut, and the single-pixel grid on class-balanced test subsets rather than all 10,000 "
        "images. The data is the JPEG re-encoded CIFAR-10 copy (all 60,000 images). No column comes from a GPU run.",
        ""]
  made_at = commits_line(workdirs, commit)
  md += [made_at, ""] if made_at else []
  md += ["## What differs from the paper", "", config_differences("resnet", "resnet_cpu"), "",
         config_differences("vgg16", "vgg16_cpu"), "",
         "`launch/reproduce_cpu.sh` adds a second grid at test jitter (3, 5) on 500 images per seed, and runs "
         "the sanity checks on seed 0 of each model.", "",
         "## Models", "", "Test accuracy (%) after the last epoch, mean (std over seeds; sample std).", "",
         training_md, ""]
  figures_md = []
  if summary is not None:
    md += ["## Pointing accuracy", "",
           "How often the map's maximum (all tied pixels) includes the planted pixel, % as mean (std) over seeds. "
           "Channel reduction: the signed mean over RGB (for `absolute_gradient` the mean of absolute values).", ""]
    if running:
      md += ["Grids still running, left out of every table below until complete: " + "; ".join(running) + ".", ""]
    md += [pointing_tables(summary, runs), "",
           "## Importance of the pixel a method chose instead (on its misses)", "",
           "On the images where a method missed the planted pixel: the model's accuracy on a black image carrying "
           "only the planted pixel (add: pix) or only the attributed pixel(s) (add: attr), and on the image with "
           "that pixel set black (sub: pix, sub: attr). % as mean (std) [seeds averaged]. **Convention:** a seed "
           "with no misses for a method has no value and is left out of the mean, so `[n]` counts the seeds that "
           "had misses; `–` means no seed had any. The original code wrote 0 for such a seed and averaged it in.",
           "", importance_tables(runs_lookup), "",
           "## Graded localisation", "",
           "Beside the yes/no of pointing: the planted pixel's rank in the (channel-reduced) map, 1 + the pixels "
           "scoring strictly higher (so rank 1 is a hit), and its share of the map's total absolute value (mass; "
           "a pixel is 1/1024 of a 32x32 map, 0.1%). Top 1 equals pointing accuracy.", "",
           localisation_tables(summary), ""]
    by_class = per_class_tables(workdirs, runs)
    if by_class:
      red = ", ".join(f"{k}: {r}" for k, r in enumerate(pixel.colour_code()[:, 0]))
      md += ["## Pointing accuracy per class", "",
             "In the colour variant the class sets the planted pixel's colour, RGB (r, 10, 245), with r for "
             f"CIFAR-10's classes {red}. After normalisation by the dataset's mean and std a red near the mean is "
             "near 0, so a method that multiplies by the input sees little of that channel.", "", by_class, ""]
    for model, block in summary.groupby("model", sort=False):
      path = fig_dir / f"pointing_accuracy_{model}.png"
      figures.pointing_bars(path, block, title=f"{model}: pointing accuracy, mean (std) over model seeds")
      figures_md.append(f"![pointing accuracy, {model}](results/{path.name})")
  else:
    md += ["## Pointing accuracy", "", "No single-pixel results yet.", ""]
  for w in workdirs:
    src = w / "single_pixel" / "examples.png"
    if src.exists() and _model_seed(w)[1] == min(s for m, s in map(_model_seed, workdirs) if m == _model_seed(w)[0]):
      dst = _copy_figure(src, fig_dir / f"examples_{w.name}.png")
      if dst:
        figures_md.append(f"![example maps, {w.name}](results/{dst.name})")
  sanity_md, sanity_figs = sanity_tables(workdirs)
  md += ["## Sanity checks", "", sanity_md or "No sanity results yet.", ""]
  faithfulness_md, faithfulness_figs = faithfulness_tables(workdirs)
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
         "On this machine (2 CPU cores), summed over resumed runs.", "", wall_times(workdirs, runs), "",
         "## Commands", "", "```bash",
         "launch/reproduce_cpu.sh CIFAR10_FOLDER workdirs/cpu   # everything; a rerun resumes",
         "python -m saliency_jax.report --workdirs='workdirs/cpu/*_seed*' --out=docs --notes=docs/results_notes.md",
         "```", ""]
  if notes:
    md += ["## Reading", "", notes.strip(), ""]
  path = out / "results.md"
  with files.atomic_open(path, "w") as f:
    f.write("\n".join(md))
  return path




def main(argv):
  del argv
  workdirs = sorted({pathlib.Path(p) for pattern in _WORKDIRS.value for p in (glob.glob(pattern) or [pattern])})
  workdirs = [w for w in workdirs if w.is_dir()]
  if not workdirs:
    raise app.UsageError(f"--workdirs={_WORKDIRS.value} matched no folder")
  notes = pathlib.Path(_NOTES.value).read_text() if _NOTES.value else ""
  commit_file = workdirs[0].parent / "COMMIT"
  commit = commit_file.read_text().strip() if commit_file.exists() else ""
  path = build(workdirs, pathlib.Path(_OUT.value), notes, commit)
  print(f"report: {path}")


if __name__ == "__main__":
  _WORKDIRS = flags.DEFINE_list("workdirs", None, "Run folders or glob patterns (quote them).")
  _OUT = flags.DEFINE_string("out", "docs", "Where results.md and results/ go.")
  _NOTES = flags.DEFINE_string("notes", "", "A markdown file with a hand-written reading, added as the last section.")
  flags.mark_flags_as_required(["workdirs"])
  app.run(main)
