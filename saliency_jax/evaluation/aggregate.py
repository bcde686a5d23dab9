"""Paper-style tables over runs: mean (std) over model seeds of every single-pixel column.

  python -m saliency_jax.evaluation.aggregate --workdirs='workdirs/*' --out=summary

Reads `<workdir>/single_pixel/results.csv` of each run (its newest checkpoint's rows) and writes
`summary.csv` (mean and std columns), `summary.md` (mean (std) in %, one table per model and test
jitter) and `pointing_accuracy.png`. std is the sample standard deviation (ddof=1) over runs.
"""

from __future__ import annotations

import glob
import pathlib
import sys

import pandas as pd
from absl import app, flags, logging

from saliency_jax import files
from saliency_jax.evaluation import figures, results
from saliency_jax.evaluation.single_pixel import LOCALISATION_COLUMNS, METRIC_COLUMNS
from saliency_jax.stages.single_pixel import TABLE

GROUP = ["model", "test_position_sd", "test_colour_sd", "method", "method_options", "reduction", "target", "output"]
# What the paper's tables show, in their order (the rest are in summary.csv).
TABLE_COLUMNS = {
    "overall.withpix_model_accuracy": "withpix", "overall.nopix_model_accuracy": "nopix",
    "overall.truebg_withblackpix_model_accuracy": "blackpix", "overall.attribution_correct_accuracy": "pointing",
    "attribution_incorrect.blackbg_withpix_model_accuracy": "add: pix",
    "attribution_incorrect.blackbg_withattrpix_model_accuracy": "add: attr",
    "attribution_incorrect.truebg_withblackpix_model_accuracy": "sub: pix",
    "attribution_incorrect.truebg_withblackattrpix_model_accuracy": "sub: attr",
}


def read_runs(patterns: list[str]) -> pd.DataFrame:
  """Every run's rows at its newest checkpoint, with a `workdir` column."""
  workdirs = sorted({p for pattern in patterns for p in (glob.glob(pattern) or [pattern])})
  frames = []
  for w in workdirs:
    path = pathlib.Path(w) / "single_pixel" / "results.csv"
    if not path.exists():
      logging.warning("no results in %s; skipped", path)
      continue
    df = results.current(TABLE.frame(path), path).drop(columns=["method_label"])
    frames.append(df.assign(workdir=w, degenerate_share=df["degenerate"] / df["num_images"]))
  if not frames:
    raise ValueError(f"--workdirs={patterns} matched no <workdir>/single_pixel/results.csv")
  # Across runs too: a method the runs imported and this process does not know counts its newest revision.
  return results.fresh(pd.concat(frames, ignore_index=True), "the runs' grids")


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
  """One row per model x test jitter x method x target x output: `<column> mean`, `<column> std`
  for every metric, `runs` and the model seeds it averages over."""
  duplicated = runs.duplicated(GROUP + ["model_seed"], keep=False)
  if duplicated.any():
    dup = runs[duplicated][["workdir", "model_seed"]].drop_duplicates().to_string(index=False)
    raise ValueError(f"several runs share a model seed for the same cells; pass each run once:\n{dup}")
  grouped = runs.groupby(GROUP, sort=False, dropna=False)
  columns = [c for c in (*METRIC_COLUMNS, *LOCALISATION_COLUMNS, "degenerate_share") if c in runs]
  mean = grouped[columns].mean().add_suffix(" mean")
  std = grouped[columns].std(ddof=1).add_suffix(" std")
  seeds = grouped["model_seed"].agg(lambda s: " ".join(str(v) for v in sorted(s))).rename("model_seeds")
  out = pd.concat([grouped.size().rename("runs"), seeds, mean, std], axis=1).reset_index()
  out["method_label"] = results.method_label(out["method"], out["method_options"])
  return out


def markdown(summary: pd.DataFrame) -> str:
  """mean (std) in %, one table per model and test jitter."""
  parts = []
  for (model, pos, col), block in summary.groupby(["model", "test_position_sd", "test_colour_sd"], sort=False):
    cells = {"method": block["method_label"], "target": block["target"], "output": block["output"],
             "runs": block["runs"]}
    for column, short in TABLE_COLUMNS.items():
      m, s = 100 * block[f"{column} mean"], 100 * block[f"{column} std"]
      cells[short] = [f"{a:.1f}" + ("" if pd.isna(b) else f" ({b:.1f})") for a, b in zip(m, s)]
    cells["missed"] = block["overall.attribution_incorrect mean"].round(1)
    parts.append(f"## {model}, test jitter (position_sd {pos:g}, colour_sd {col:g})\n\n"
                 + pd.DataFrame(cells).to_markdown(index=False))
  legend = ("Accuracies in % as mean (std) over model seeds. withpix / nopix / blackpix: the model on test "
            "images with the pixel, without it, with it set black. pointing: the discriminative pixel is among "
            "the attributed pixels. On the images a method missed: add = accuracy on a black image carrying only "
            "the discriminative (pix) or only the attributed (attr) pixel(s); sub = accuracy with that pixel set "
            "black. missed: images per run.")
  return "# Single-pixel evaluation\n\n" + legend + "\n\n" + "\n\n".join(parts) + "\n"


def write_summary(summary: pd.DataFrame, out_dir: str | pathlib.Path) -> dict[str, pathlib.Path]:
  out_dir = pathlib.Path(out_dir)
  paths = {"csv": out_dir / "summary.csv", "markdown": out_dir / "summary.md",
           "figure": out_dir / "pointing_accuracy.png"}
  with files.atomic_open(paths["csv"], "w", newline="") as f:
    summary.drop(columns=["method_label"]).to_csv(f, index=False)
  with files.atomic_open(paths["markdown"], "w") as f:
    f.write(markdown(summary))
  models = ", ".join(dict.fromkeys(summary["model"]))
  for model, block in summary.groupby("model", sort=False):
    path = paths["figure"] if summary["model"].nunique() == 1 else out_dir / f"pointing_accuracy_{model}.png"
    figures.pointing_bars(path, block, title=f"{model}: pointing accuracy, mean (std) over model seeds")
  logging.info("aggregated %s into %s", models, out_dir)
  return paths




def main(argv):
  del argv
  try:
    summary = summarize(read_runs(_WORKDIRS.value))
    paths = write_summary(summary, _OUT.value)
  except (ValueError, OSError) as e:  # no runs, a damaged table, two runs of one seed, a folder not writable
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  print(markdown(summary))
  for kind, path in paths.items():
    print(f"{kind}: {path}")


if __name__ == "__main__":
  # Defined here, not on import: saliency_jax.report imports this module and has flags of these names.
  _WORKDIRS = flags.DEFINE_list("workdirs", None, "Run folders or glob patterns (quote them).")
  _OUT = flags.DEFINE_string("out", None, "Where summary.csv, summary.md and the figure go.")
  flags.mark_flags_as_required(["workdirs", "out"])
  app.run(main)
