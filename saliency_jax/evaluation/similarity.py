"""How alike two saliency maps are (docs/evaluation.md, "Sanity checks"), per image, as in the
sanity-checks paper.

`compare(a_BHWC, b_BHWC)` gives, for every image, four similarities in [-1, 1]:

- `spearman_abs`: Spearman rank correlation of the absolute maps (|map| summed over channels);
- `spearman`: Spearman rank correlation of the signed maps (summed over channels);
- `ssim`: SSIM (scikit-image) of the absolute maps scaled for display (99th percentile, clipped to [0, 1]);
- `hog`: Pearson correlation of the HOG features (scikit-image) of those scaled absolute maps.

`others_mean` gives each image the mean map of the other images, for a map that would be the same
whatever the image (the image-sensitivity study).

A correlation with a constant map is undefined (NaN, e.g. a GradCAM that randomisation drove to
zero everywhere); `summarize` leaves such images out and counts them. The references that give
the numbers a scale: `random_maps` (i.i.d. Gaussian noise: what chance looks like) and
`edge_maps` (a Sobel edge detector on the image: a map that needs neither model nor data).
Everything here runs on the host on small (B, 32, 32) arrays.
"""

from __future__ import annotations

import jax
import numpy as np
import scipy.stats
import skimage.color
import skimage.feature
import skimage.filters
import skimage.metrics

from saliency_jax.attribution import display

METRICS = ("spearman_abs", "spearman", "ssim", "hog")
# HOG: a 4x4 grid of cells (8x8 pixels on CIFAR's 32x32), 2x2-cell blocks, skimage's defaults otherwise.
HOG_CELLS = 4
HOG_OPTIONS = dict(orientations=9, cells_per_block=(2, 2))


def reduce_maps(map_BHWC) -> tuple[np.ndarray, np.ndarray]:
  """(signed, absolute) (B, H, W) maps: the channel mean of the map and of its absolute value."""
  m = np.asarray(map_BHWC, np.float64)
  if m.ndim == 3:
    return m, np.abs(m)
  return m.mean(-1), np.abs(m).mean(-1)


def _pearson_B(a_BN, b_BN) -> np.ndarray:
  """Per-row Pearson correlation; NaN where either row is constant (no correlation is defined)."""
  out = np.full(len(a_BN), np.nan)
  ok = (np.ptp(a_BN, axis=-1) > 0) & (np.ptp(b_BN, axis=-1) > 0)
  if ok.any():
    out[ok] = scipy.stats.pearsonr(a_BN[ok], b_BN[ok], axis=-1).statistic
  return out


def _spearman_B(a_BN, b_BN) -> np.ndarray:
  """Per-row Spearman correlation: the Pearson correlation of average ranks (ties share a rank),
  which is what `scipy.stats.spearmanr` computes, vectorised over rows."""
  ranks = lambda v: scipy.stats.rankdata(v, axis=-1)
  return _pearson_B(ranks(a_BN), ranks(b_BN))


def _scaled(abs_BHW) -> np.ndarray:
  return np.asarray(display.normalize_for_display(abs_BHW, "absolute"), np.float64)


def _hog_B(scaled_BHW) -> np.ndarray:
  cell = (max(1, scaled_BHW.shape[1] // HOG_CELLS), max(1, scaled_BHW.shape[2] // HOG_CELLS))
  return np.stack([skimage.feature.hog(m, pixels_per_cell=cell, **HOG_OPTIONS) for m in scaled_BHW])


def others_mean(map_BHWC) -> tuple[np.ndarray, np.ndarray]:
  """(signed, absolute) (B, H, W): for each image, the mean of the other images' reduced maps (the
  absolute one averages absolute maps, so signed maps do not cancel in it). A map that hardly
  depends on its image is close to it. Maps that are not finite stay out of every reference (one
  would make all of them NaN); their own similarity is then undefined, as in `compare`."""
  signed, absolute = reduce_maps(map_BHWC)
  ok = np.isfinite(signed).all(axis=(1, 2))
  n = int(ok.sum())
  if n < 2:
    raise ValueError(f"the mean of the other images' maps needs at least 2 images with finite maps, not {n}")

  def loo(m):
    total = m[ok].sum(0, keepdims=True)
    return np.where(ok[:, None, None], (total - np.where(ok[:, None, None], m, 0.0)) / (n - 1), total / n)

  return loo(signed), loo(absolute)


def compare(a, b) -> dict[str, np.ndarray]:
  """Per-image similarities of two batches of maps, (B, H, W, C) or already reduced (B, H, W), or
  with `b` a (signed, absolute) pair of reduced maps (`others_mean`)."""
  a_signed, a_abs = reduce_maps(a)
  b_signed, b_abs = b if isinstance(b, tuple) else reduce_maps(b)
  if a_signed.shape != b_signed.shape:
    raise ValueError(f"maps to compare differ in shape: {a_signed.shape} and {b_signed.shape}")
  B = len(a_signed)
  flat = lambda m: m.reshape(B, -1)
  a_scaled, b_scaled = _scaled(a_abs), _scaled(b_abs)
  ssim = np.array([skimage.metrics.structural_similarity(x, y, data_range=1.0) for x, y in zip(a_scaled, b_scaled)])
  return {
      "spearman_abs": _spearman_B(flat(a_abs), flat(b_abs)),
      "spearman": _spearman_B(flat(a_signed), flat(b_signed)),
      "ssim": ssim,
      "hog": _pearson_B(_hog_B(a_scaled), _hog_B(b_scaled)),
  }


def summarize(values: dict[str, np.ndarray]) -> dict[str, float]:
  """`{metric}_mean`, `{metric}_std` (over images, ddof=1) and `{metric}_undefined` (images left out)."""
  out = {}
  for name in METRICS:
    v = np.asarray(values[name], np.float64)
    ok = v[np.isfinite(v)]
    out[f"{name}_mean"] = float(ok.mean()) if len(ok) else float("nan")
    out[f"{name}_std"] = float(ok.std(ddof=1)) if len(ok) > 1 else float("nan")
    out[f"{name}_undefined"] = int(len(v) - len(ok))
  return out


def random_maps(key: jax.Array, shape) -> np.ndarray:
  """I.i.d. standard normal maps of `shape`: the calibration that says what 'unrelated' scores."""
  return np.asarray(jax.random.normal(key, tuple(shape)))


def edge_maps(images_u8_BHWC) -> np.ndarray:
  """Sobel edge magnitude of each image's luminance, (B, H, W): the model-free baseline map."""
  images = np.asarray(images_u8_BHWC, np.float64) / 255.0
  gray = skimage.color.rgb2gray(images, channel_axis=-1) if images.shape[-1] == 3 else images[..., 0]
  return np.stack([skimage.filters.sobel(g) for g in gray])
