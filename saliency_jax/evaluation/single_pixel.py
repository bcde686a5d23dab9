"""The single-pixel measurements of one batch (docs/evaluation.md, "Single-pixel metrics"), on
device, as counts.

For each image: the importance map's maximal pixels (all of them, when tied) either include the
discriminative pixel (a hit) or not (a miss). Five more versions of the image go through the model
in one stacked forward pass; only a few integers per image leave the device.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.attribution.core import select_targets

# Versions of each test image, named as in the original result files.
VERSIONS = ("nopix", "truebg_withblackpix", "blackbg_withpix", "blackbg_withattrpix", "truebg_withblackattrpix")
# What `batch_outcomes` returns per image.
OUTCOMES = ("predicted", "hit", "versions", "rank", "mass", "degenerate")
# The original's columns (`metrics_from_counts`), in its order.
METRIC_COLUMNS = (
    "overall.withpix_model_accuracy", "overall.attribution_correct_accuracy", "overall.nopix_model_accuracy",
    "overall.truebg_withblackpix_model_accuracy", "overall.attribution_incorrect",
    "attribution_incorrect.nopix_model_accuracy", "attribution_incorrect.withpix_model_accuracy",
    "attribution_incorrect.blackbg_withpix_model_accuracy", "attribution_incorrect.blackbg_withattrpix_model_accuracy",
    "attribution_incorrect.truebg_withblackattrpix_model_accuracy",
    "attribution_incorrect.truebg_withblackpix_model_accuracy",
    "attribution_incorrect.truebg_withblackattrpix_preserved_accuracy",
    "attribution_incorrect.truebg_withblackpix_preserved_accuracy",
)
# Graded localisation (`localisation_metrics`), beside the original's columns.
LOCALISATION_COLUMNS = ("localisation.rank_mean", "localisation.rank_median", "localisation.top1",
                        "localisation.top5", "localisation.top10", "localisation.mass_mean")


def pointing_mask(importance_BHW: jax.Array) -> jax.Array:
  """The attributed pixels: every pixel equal to the image's maximum (ties all count)."""
  return importance_BHW == importance_BHW.max(axis=(1, 2), keepdims=True)


def location_mask(location_B2: jax.Array, hw: tuple[int, int]) -> jax.Array:
  rows = jnp.arange(hw[0])[None, :, None] == location_B2[:, 0, None, None]
  cols = jnp.arange(hw[1])[None, None, :] == location_B2[:, 1, None, None]
  return rows & cols


def image_versions(pix_BHWC, nopix_BHWC, pixel_BHW, attributed_BHW) -> dict[str, jax.Array]:
  """uint8 images: without the pixel; the pixel set black; a black image carrying only the
  discriminative pixel, or only the attributed pixel(s); the attributed pixel(s) set black."""
  black = jnp.zeros_like(pix_BHWC)
  d, a = pixel_BHW[..., None], attributed_BHW[..., None]
  return {
      "nopix": nopix_BHWC,
      "truebg_withblackpix": jnp.where(d, black, pix_BHWC),
      "blackbg_withpix": jnp.where(d, pix_BHWC, black),
      "blackbg_withattrpix": jnp.where(a, pix_BHWC, black),
      "truebg_withblackattrpix": jnp.where(a, black, pix_BHWC),
  }


def batch_outcomes(forward: Callable, normalization: Callable, importance: Callable, target: str, pix_BHWC,
                   nopix_BHWC, labels_B, location_B2) -> dict[str, jax.Array]:
  """What happened to each image of a batch of uint8 images, all on device.

  `importance(forward, x_BHWC, target_B) -> (B, H, W)`: the method's map reduced over channels.
  `target`: 'predicted' (the argmax at the input) or 'label'. Returns per image: `predicted`
  (B,), the model's class at the input; `hit` (B,), whether the planted pixel is among the
  attributed ones; `versions` (B, len(VERSIONS)), the model's class on each image version; `rank`
  (B,), the planted pixel's rank in the map (1 + the pixels scoring strictly higher, so tied
  pixels share the best rank and rank 1 is a hit); `mass` (B,), the planted pixel's share of the
  map's total absolute value (NaN for an all-zero map); `degenerate` (B,), a map that is constant
  (every pixel ties, so the pixel is "attributed" whatever the method saw) or not finite (no pixel is
  attributed; its rank is then the last, H * W, so top 1 still equals pointing).
  """
  x = normalization(pix_BHWC)
  predicted = jnp.argmax(forward(x), axis=-1).astype(jnp.int32)
  target_B = select_targets(forward, x, labels_B, target)
  importance_BHW = importance(forward, x, target_B)
  attributed = pointing_mask(importance_BHW)
  pixel = location_mask(location_B2, pix_BHWC.shape[1:3])
  hit = jnp.any(attributed & pixel, axis=(1, 2))
  finite = jnp.all(jnp.isfinite(importance_BHW), axis=(1, 2))
  constant = jnp.max(importance_BHW, axis=(1, 2)) == jnp.min(importance_BHW, axis=(1, 2))
  at_pixel_B = jnp.max(jnp.where(pixel, importance_BHW, -jnp.inf), axis=(1, 2))
  rank = 1 + jnp.sum(importance_BHW > at_pixel_B[:, None, None], axis=(1, 2), dtype=jnp.int32)
  rank = jnp.where(finite, rank, importance_BHW.shape[1] * importance_BHW.shape[2])
  magnitude = jnp.abs(importance_BHW)
  total = magnitude.sum(axis=(1, 2))
  mass = jnp.where(total > 0, jnp.sum(jnp.where(pixel, magnitude, 0), axis=(1, 2)) / jnp.where(total > 0, total, 1),
                   jnp.nan)
  versions = image_versions(pix_BHWC, nopix_BHWC, pixel, attributed)
  stacked = jnp.concatenate(list(versions.values()))
  predictions = jnp.argmax(forward(normalization(stacked)), axis=-1).reshape(len(VERSIONS), -1)
  return {"predicted": predicted, "hit": hit, "versions": predictions.T.astype(jnp.int32), "rank": rank,
          "mass": mass.astype(jnp.float32), "degenerate": constant | ~finite}


def counts_from_outcomes(outcomes: dict, labels_B, valid_B=None) -> dict:
  """The counts the original's columns are made of (docs/evaluation.md, "Single-pixel metrics"),
  over the images `valid_B` selects (all when None). Works on device arrays inside a program and
  on numpy arrays alike."""
  labels_B = jnp.asarray(labels_B)
  predicted, hit = outcomes["predicted"], outcomes["hit"]
  valid_B = jnp.ones(hit.shape, bool) if valid_B is None else valid_B
  missed = valid_B & ~hit
  count = lambda mask: jnp.sum(mask, dtype=jnp.int32)
  counts = {"images": count(valid_B), "attribution_correct": count(valid_B & hit), "missed": count(missed),
            "withpix_correct": count(valid_B & (predicted == labels_B)),
            "missed_withpix_correct": count(missed & (predicted == labels_B))}
  for i, name in enumerate(VERSIONS):
    p = outcomes["versions"][:, i]
    counts[f"{name}_correct"] = count(valid_B & (p == labels_B))
    counts[f"missed_{name}_correct"] = count(missed & (p == labels_B))
    counts[f"missed_{name}_preserved"] = count(missed & (p == predicted))
  return counts


def localisation_metrics(outcomes: dict) -> dict[str, float]:
  """Graded localisation of a cell, beside pointing accuracy: the planted pixel's rank in the map
  (mean, median; the share of images where it is in the top 1, 5, 10) and its share of the map's
  absolute mass (mean over images with a non-zero map). The map is reduced over channels as for
  pointing; top 1 equals pointing accuracy."""
  rank = np.asarray(outcomes["rank"], np.float64)
  mass = np.asarray(outcomes["mass"], np.float64)
  return {"localisation.rank_mean": float(rank.mean()), "localisation.rank_median": float(np.median(rank)),
          **{f"localisation.top{k}": float(np.mean(rank <= k)) for k in (1, 5, 10)},
          "localisation.mass_mean": float(np.nanmean(mass)) if np.isfinite(mass).any() else float("nan")}


def batch_counts(forward: Callable, normalization: Callable, importance: Callable, target: str, pix_BHWC,
                 nopix_BHWC, labels_B, location_B2, valid_B) -> dict[str, jax.Array]:
  """`batch_outcomes` summed over the images `valid_B` selects (it masks padding)."""
  outcomes = batch_outcomes(forward, normalization, importance, target, pix_BHWC, nopix_BHWC, labels_B, location_B2)
  return counts_from_outcomes(outcomes, labels_B, valid_B)


def metrics_from_counts(counts: dict) -> dict[str, float]:
  """The original's columns (docs/evaluation.md, "Single-pixel metrics"). Accuracies over the
  missed images are NaN when the method missed none."""
  n, missed = int(counts["images"]), int(counts["missed"])
  over = lambda k: int(counts[k]) / n
  over_missed = lambda k: int(counts[k]) / missed if missed else float("nan")
  row = {
      "overall.withpix_model_accuracy": over("withpix_correct"),
      "overall.attribution_correct_accuracy": over("attribution_correct"),
      "overall.nopix_model_accuracy": over("nopix_correct"),
      "overall.truebg_withblackpix_model_accuracy": over("truebg_withblackpix_correct"),
      "overall.attribution_incorrect": missed,
      "attribution_incorrect.nopix_model_accuracy": over_missed("missed_nopix_correct"),
      "attribution_incorrect.withpix_model_accuracy": over_missed("missed_withpix_correct"),
  }
  for name in ("blackbg_withpix", "blackbg_withattrpix", "truebg_withblackattrpix", "truebg_withblackpix"):
    row[f"attribution_incorrect.{name}_model_accuracy"] = over_missed(f"missed_{name}_correct")
  for name in ("truebg_withblackattrpix", "truebg_withblackpix"):
    row[f"attribution_incorrect.{name}_preserved_accuracy"] = over_missed(f"missed_{name}_preserved")
  return row
