"""Occlusion (Zeiler & Fergus 2014), a method of your own in a file outside the package.

Each `patch` x `patch` square of the image, in turn, is replaced by the baseline (0: the dataset's
mean colour on normalised inputs) and the map there is how much the explained score drops. Only
forward passes, so any forward works: a plain function as well as a `ModelForward`.

    python -m saliency_jax.main --config=configs/quickstart.py --workdir=workdirs/quickstart \
        --config.train.enabled=False --config.imports=docs/examples/occlusion.py \
        --config.single_pixel.methods="('occlusion(patch=8)', 'absolute_gradient')"

(the quickstart's trained workdir: its absolute_gradient cells are read back, not computed again).
"""

import jax
import jax.numpy as jnp

from saliency_jax.attribution import registry, scores


@registry.register("occlusion")  # needs nothing from the run beyond images and targets
def occlusion(forward, x_BHWC, target_B, *, output: str = "logit", patch: int = 8):
  """score(x) - score(x with the square around each pixel set to 0), per pixel and channel."""
  B, H, W, C = x_BHWC.shape
  if patch < 1 or H % patch or W % patch:
    raise ValueError(f"patch={patch} is not allowed; it must divide the image size {H}x{W}")
  full_B = scores(forward, x_BHWC, target_B, output)
  rows, cols = jnp.meshgrid(jnp.arange(H // patch), jnp.arange(W // patch), indexing="ij")

  def drop_at(row, col):  # the score drop with one square occluded, for every image of the batch
    inside_HW = ((jnp.arange(H) // patch == row)[:, None] & (jnp.arange(W) // patch == col)[None, :])
    occluded = jnp.where(inside_HW[None, :, :, None], 0.0, x_BHWC)
    return full_B - scores(forward, occluded, target_B, output)

  drops_PB = jax.lax.map(lambda rc: drop_at(*rc), (rows.ravel(), cols.ravel()))  # one square at a time
  drops_BHW = drops_PB.T.reshape(B, H // patch, W // patch).repeat(patch, 1).repeat(patch, 2)
  return jnp.broadcast_to(drops_BHW[..., None], x_BHWC.shape)
