"""Figures: example maps with the discriminative pixel marked, pointing-accuracy bars, and the
sanity checks' strips of maps, similarity-versus-layer curves and similarity bars."""

from __future__ import annotations

import pathlib
import re

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from saliency_jax import files  # noqa: E402
from saliency_jax.evaluation import results  # noqa: E402


def _save(fig, path: str | pathlib.Path) -> None:
  with files.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
  plt.close(fig)


def examples(path, images_BHWC, labels_B, location_B2, maps: dict[str, np.ndarray], title: str = "") -> None:
  """A row of test images, then one row per method: its importance map, the discriminative pixel
  circled (red) and the attributed pixel(s) crossed (cyan)."""
  n = len(labels_B)
  fig, axes = plt.subplots(1 + len(maps), n, figsize=(1.6 * n + 2.5, 1.6 * (1 + len(maps))), squeeze=False)
  rows = [("image", None), *maps.items()]
  for r, (name, m) in enumerate(rows):
    for c in range(n):
      ax = axes[r, c]
      if m is None:
        ax.imshow(images_BHWC[c])
        ax.set_title(f"label {labels_B[c]}", fontsize=8)
      else:
        ax.imshow(m[c], cmap="viridis")
        ys, xs = np.nonzero(m[c] == m[c].max())
        ax.scatter(xs, ys, marker="x", s=25, c="cyan", linewidths=1)
      ax.scatter([location_B2[c, 1]], [location_B2[c, 0]], s=60, facecolors="none", edgecolors="red", linewidths=1.2)
      ax.set_xticks([])
      ax.set_yticks([])
    axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
  fig.suptitle(title, fontsize=9)
  _save(fig, path)


def pointing_bars(path, summary, title: str = "") -> None:
  """Mean pointing accuracy (error bars: std over runs) per method, one bar per target x output,
  one panel per test jitter. `summary`: the aggregate table (pandas), one row per group."""
  jitters = list(dict.fromkeys(zip(summary["test_position_sd"], summary["test_colour_sd"])))
  methods = list(dict.fromkeys(summary["method_label"]))
  hues = list(dict.fromkeys(zip(summary["target"], summary["output"])))
  width = 0.8 / len(hues)
  fig, axes = plt.subplots(1, len(jitters), figsize=(max(4, 1.2 * len(methods)) * len(jitters), 3.8), squeeze=False,
                           sharey=True)
  col = "overall.attribution_correct_accuracy"
  for ax, jitter in zip(axes[0], jitters):
    panel = summary[(summary["test_position_sd"] == jitter[0]) & (summary["test_colour_sd"] == jitter[1])]
    for h, (target, output) in enumerate(hues):
      sub = panel[(panel["target"] == target) & (panel["output"] == output)].set_index("method_label")
      sub = sub.reindex(methods)
      ax.bar(np.arange(len(methods)) + (h - (len(hues) - 1) / 2) * width, 100 * sub[f"{col} mean"],
             width, yerr=100 * sub[f"{col} std"].fillna(0), capsize=2, label=f"{target}/{output}")
    ax.set_xticks(np.arange(len(methods)))
    ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=7)
    ax.set_title(f"test jitter ({jitter[0]:g}, {jitter[1]:g})", fontsize=9)
    ax.set_ylim(0, 100)
  axes[0, 0].set_ylabel("pointing accuracy %")
  axes[0, -1].legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  _save(fig, path)


def _display(maps_NHWC) -> np.ndarray:
  """|map| summed over channels, scaled per map by its 99th percentile (the papers' display)."""
  m = np.abs(np.asarray(maps_NHWC, np.float64))
  m = m.sum(-1) if m.ndim == 4 else m
  scale = np.percentile(m.reshape(len(m), -1), 99, axis=-1)[:, None, None]
  return np.clip(m / np.where(scale > 0, scale, 1.0), 0, 1)


def map_strip(path, image_HWC, methods: list[str], columns: list[list[str]], maps: list[np.ndarray],
              title: str = "") -> None:
  """One image; a row per method of its maps under each condition (the sanity-checks paper's
  cascading-randomisation picture: trained model, then layers re-initialised from the logits)."""
  ncols = 1 + max(len(c) for c in columns)
  fig, axes = plt.subplots(len(methods), ncols, figsize=(1.1 * ncols + 1.5, 1.15 * len(methods) + 0.6),
                           squeeze=False)
  for r, (name, cols, m) in enumerate(zip(methods, columns, maps)):
    axes[r, 0].imshow(image_HWC)
    shown = _display(m)
    for c in range(ncols - 1):
      ax = axes[r, c + 1]
      if c < len(shown):
        ax.imshow(shown[c], cmap="gray", vmin=0, vmax=1)
        if r == 0 or list(columns[r - 1]) != list(cols):
          ax.set_title(str(cols[c]), fontsize=7, rotation=45 if ncols > 6 else 0, ha="left" if ncols > 6 else "center")
      else:
        ax.axis("off")
    axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    for ax in axes[r]:
      ax.set_xticks([])
      ax.set_yticks([])
  fig.suptitle(title, fontsize=9)
  _save(fig, path)


def _metric_panels(n):
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
  return fig, axes[0]


def similarity_curves(path, table, metrics, title: str = "") -> None:
  """Similarity to the trained model's map (mean, band: std over images) against the randomisation
  step, one panel per metric and a line per method; dotted: each method's random-map calibration.
  `table` (pandas): the study's rows."""
  steps = table[table["comparison"] == "randomized"]
  layers = ["trained" if l == "none" else l for l in dict.fromkeys(steps.sort_values("step")["layer"])]
  colours = plt.get_cmap("tab20").colors
  fig, axes = _metric_panels(len(metrics))
  for ax, metric in zip(axes, metrics):
    for i, (method, sub) in enumerate(steps.groupby("method_label", sort=False)):
      sub = sub.sort_values("step")
      mean, std = sub[f"{metric}_mean"].to_numpy(float), sub[f"{metric}_std"].fillna(0).to_numpy(float)
      line, = ax.plot(sub["step"], mean, marker="o", ms=3, label=method, color=colours[i % len(colours)])
      ax.fill_between(sub["step"].to_numpy(float), mean - std, mean + std, color=line.get_color(), alpha=0.12)
      calib = table[(table["method_label"] == method) & (table["comparison"] == "random_map")]
      if len(calib):
        ax.axhline(float(calib[f"{metric}_mean"].iloc[0]), color=line.get_color(), ls=":", lw=0.8)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=6)
    ax.set_title(metric, fontsize=9)
    ax.set_ylim(-0.5, 1.05)
  axes[0].set_ylabel("similarity to the trained model's map")
  axes[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.suptitle(title, fontsize=9)
  _save(fig, path)


def similarity_bars(path, table, metrics, title: str = "") -> None:
  """Mean similarity (error bars: std over images) per method and comparison, a panel per metric."""
  comparisons = list(dict.fromkeys(table["comparison"]))
  methods = list(dict.fromkeys(table["method_label"]))
  width = 0.8 / len(comparisons)
  fig, axes = _metric_panels(len(metrics))
  for ax, metric in zip(axes, metrics):
    for h, comparison in enumerate(comparisons):
      sub = table[table["comparison"] == comparison].drop_duplicates("method_label").set_index("method_label")
      sub = sub.reindex(methods)
      ax.bar(np.arange(len(methods)) + (h - (len(comparisons) - 1) / 2) * width, sub[f"{metric}_mean"].astype(float),
             width, yerr=sub[f"{metric}_std"].astype(float).fillna(0), capsize=1.5, label=comparison)
    ax.set_xticks(np.arange(len(methods)))
    ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=6)
    ax.set_title(metric, fontsize=9)
    ax.set_ylim(-0.5, 1.05)
  axes[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.suptitle(title, fontsize=9)
  _save(fig, path)


def sanity(out_dir, study: str, rows: list[dict], strips: dict, images_NHWC, title: str = "") -> None:
  """Every figure of one sanity study: `<study>_strip<i>.png` per strip image and
  `<study>_curves.png` (randomisation) or `<study>_bars.png` (the others)."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from saliency_jax.evaluation import similarity  # pylint: disable=g-import-not-at-top

  out_dir = pathlib.Path(out_dir)
  table = pd.DataFrame(rows)
  if table.empty:
    return
  table["step"] = pd.to_numeric(table["step"], errors="coerce")
  for c in table.columns:
    if c.endswith(("_mean", "_std")):
      table[c] = pd.to_numeric(table[c], errors="coerce")
  table["method_label"] = results.method_label(table["method"], table["method_options"])
  labels = [m for m in dict.fromkeys(table["method_label"]) if f"{m}|maps" in strips]
  for i in range(len(images_NHWC)):
    maps = [strips[f"{m}|maps"][:, i] for m in labels if strips[f"{m}|maps"].shape[1] > i]
    if maps:
      map_strip(out_dir / f"{study}_strip{i}.png", images_NHWC[i], labels,
                [list(strips[f"{m}|columns"]) for m in labels], maps, title=f"{study}: {title}")
  if study in ("cascading", "independent"):
    similarity_curves(out_dir / f"{study}_curves.png", table, similarity.METRICS, title=f"{study}: {title}")
  else:
    similarity_bars(out_dir / f"{study}_bars.png", table, similarity.METRICS, title=f"{study}: {title}")


def faithfulness_curves(path, rows: list[dict], title: str = "") -> None:
  """The mean curve of every method, a panel per curve x replacement value: most relevant first
  solid, least relevant first dashed. `rows`: the faithfulness table's (values may be text)."""
  import json  # pylint: disable=g-import-not-at-top

  panels = list(dict.fromkeys((r["curve"], r["replacement"]) for r in rows))
  methods = list(dict.fromkeys(results.method_label(r["method"], r["method_options"]) for r in rows))
  colours = plt.get_cmap("tab10").colors
  fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels) + 1.5, 2.8), squeeze=False)
  for ax, (curve, replacement) in zip(axes[0], panels):
    for r in rows:
      if (r["curve"], r["replacement"]) != (curve, replacement):
        continue
      i = methods.index(results.method_label(r["method"], r["method_options"]))
      ax.plot(json.loads(r["x"]), json.loads(r["curve_mean"]), color=colours[i % len(colours)],
              ls="-" if r["order"] == "morf" else "--", lw=1.2, label=f"{methods[i]} {r['order']}")
    ax.set_title(f"{curve}, {replacement}", fontsize=8)
    ax.set_xlabel("fraction of pixels" if curve != "road" else "fraction of pixels imputed", fontsize=7)
    ax.tick_params(labelsize=6)
  axes[0, 0].set_ylabel(f"score ({rows[0]['score']})", fontsize=7)
  axes[0, -1].legend(fontsize=5, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.suptitle(title, fontsize=8)
  with files.atomic_open(path, "wb") as f:  # small: a documentation figure, not a poster
    fig.savefig(f, format="png", dpi=80, bbox_inches="tight")
  plt.close(fig)


def _short_labels(labels) -> list[str]:
  """'name(k=v, ...)' with only the options that tell a name's entries apart, by value:
  integrated_gradients(baseline='black', rule='original', steps=100) -> integrated_gradients(black)."""
  parsed = []
  for label in labels:
    name, _, options = label.partition("(")
    parsed.append((name, dict(re.findall(r"(\w+)=('[^']*'|[^,]+)", options.rstrip(")")))))
  out = []
  for name, options in parsed:
    others = [o for n, o in parsed if n == name]
    varying = [k for k in options if len({o.get(k) for o in others}) > 1]
    values = [options[k].strip("'") for k in varying]
    out.append(f"{name}({', '.join(values)})" if values else name)
  return out


def leaderboard(path, board) -> None:
  """A panel per model: every method's pointing accuracy (mean over seeds, std as error bars), the
  logit output's bar over the softmax one's, sorted as the leaderboard table; the planted pixel's
  median rank beside each method's name. `board`: `report.leaderboard`'s frame."""
  models = list(dict.fromkeys(board["model"]))
  height = max(len(board[board["model"] == m]) for m in models)
  fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 0.28 * height + 1.2), squeeze=False)
  for ax, model in zip(axes[0], models):
    block = board[board["model"] == model].iloc[::-1]  # best at the top
    y = np.arange(len(block))
    for offset, output, colour in ((-0.2, "softmax", "#9ecae1"), (0.2, "logit", "#3182bd")):
      ax.barh(y + offset, 100 * block[f"pointing {output}"].fillna(0), 0.4,
              xerr=100 * block[f"std {output}"].fillna(0), color=colour, capsize=1.5, label=output,
              error_kw={"lw": 0.6})
    ax.set_yticks(y)
    ranks = block["rank medians"] if "rank medians" in block else block["rank median"].map(
        lambda r: f"{r:.0f}" if np.isfinite(r) else "")
    ax.set_yticklabels([f"{m}  (rank {r})" if isinstance(r, str) and r else m
                        for m, r in zip(_short_labels(block["method"]), ranks)], fontsize=6)
    ax.set_xlim(0, 100)
    ax.set_xlabel("pointing accuracy %", fontsize=7)
    ax.set_title(model, fontsize=9)
    ax.tick_params(axis="x", labelsize=6)
  axes[0, -1].legend(fontsize=6, loc="lower right")
  fig.suptitle("Does the map's maximum fall on the pixel the model uses? (test jitter (0, 0), target predicted)",
               fontsize=8)
  _save(fig, path)
