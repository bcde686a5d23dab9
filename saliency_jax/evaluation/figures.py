"""Figures: example maps with the discriminative pixel marked, and pointing-accuracy bars."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from saliency_jax import files  # noqa: E402


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
