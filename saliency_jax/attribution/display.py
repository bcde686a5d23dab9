"""From an input-shaped map to an image: channel reduction and display normalisation.

Kept apart from the methods: which reduction is right depends on the question (the
single-pixel evaluation reduces signed maps by their mean, absolute ones by the mean of
absolute values), and display scaling must never leak into a metric.
"""

from __future__ import annotations

import jax.numpy as jnp

from saliency_jax.checks import require_choice

REDUCTIONS = ("mean", "abs_mean", "max", "abs_max", "sum")
DISPLAY_MODES = ("absolute", "signed")


def reduce_channels(map_BHWC, how: str = "mean"):
  """(B, H, W, C) -> (B, H, W): 'mean' (signed), 'abs_mean', 'max', 'abs_max' or 'sum' over channels."""
  require_choice("reduction", how, REDUCTIONS)
  if how == "mean":
    return map_BHWC.mean(-1)
  if how == "abs_mean":
    return jnp.abs(map_BHWC).mean(-1)
  if how == "max":
    return map_BHWC.max(-1)
  if how == "abs_max":
    return jnp.abs(map_BHWC).max(-1)
  return map_BHWC.sum(-1)


def normalize_for_display(map_BHW, mode: str = "absolute", percentile: float = 99.0):
  """Per image, scale by the `percentile`-th percentile of |map| and clip: 'absolute' gives
  |map| in [0, 1], 'signed' keeps the sign in [-1, 1] (zero stays at the centre of a
  diverging colour map). Clipping at a percentile keeps one hot pixel from washing out the rest."""
  require_choice("mode", mode, DISPLAY_MODES)
  axes = tuple(range(1, map_BHW.ndim))
  scale = jnp.percentile(jnp.abs(map_BHW), percentile, axis=axes, keepdims=True)
  scaled = map_BHW / jnp.where(scale > 0, scale, 1.0)
  return jnp.clip(jnp.abs(scaled), 0.0, 1.0) if mode == "absolute" else jnp.clip(scaled, -1.0, 1.0)
