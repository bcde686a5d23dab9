"""Faithfulness curves, batched on device: deletion / insertion (pixel flipping) and ROAD.

Does removing what a map calls relevant remove the model's evidence? Each function takes any
`forward(x_BHWC) -> logits_BK` (a `ModelForward` too), the images, their maps and the explained
classes, and runs every perturbation step of the whole batch as one program: the steps are
`lax.map`-ped (a scan) in chunks of `step_chunk` steps, each chunk one forward pass of
chunk x B images. Everything jits; wrap a call in `jax.jit` with the string and integer options
static (see `tests/test_faithfulness.py`).

Conventions, shared by all functions:
- Maps are (B, H, W): one relevance per pixel, already reduced over channels
  (`attribution.reduce_channels`). A pixel is removed (or inserted) over all its channels at once.
- Order: 'morf' (most relevant first) is a stable argsort of the row-major flattened map by
  descending value, 'lerf' (least relevant first) by ascending value. Ties keep row-major index
  order in both, so LeRF is not MoRF reversed where values tie; -0.0 equals 0.0. Maps must be finite.
  (The ROAD code breaks ties with 1e-4 noise on a min-max normalised map, Quantus with NumPy's
  unstable argsort; here ties are deterministic.)
- Score: `output='softmax'` (the default; the probability of class `target_B`) or 'logit'.
- Deletion / insertion: point k = 0..steps has n_k = floor(k * H * W / steps) pixels removed
  (deletion: those pixels take the replacement value, the rest keep the image) or inserted
  (insertion: those pixels show the image, the rest the replacement). The x axis is the fraction
  n_k / (H * W), from 0 to 1 (k / steps when steps divides H * W). `area` is the trapezoid rule over
  that axis, so it is the mean height of the curve on [0, 1] (in [0, 1] for probabilities).
  Point 0 is the unperturbed image (deletion) or the replacement alone (insertion).
- Replacement values: 'black' (`value` = the normalised black image, required: e.g.
  `normalization(zeros)`, broadcastable to x), 'mean' (`value`, default 0.0: the dataset mean after
  the project's normalisation), 'blur' (`attribution.integrated.gaussian_blur(x, blur_sigma)`).
  Replacement is per position and fixed, so removing n pixels at once equals removing them one
  step at a time. Quantus's PixelFlipping perturbs cumulatively and has no point 0; it counts
  `features_in_step` in channel values of the channel-broadcast map and requires it to divide H*W,
  so on RGB 32x32 its steps are never whole pixels; with `perturb_baseline=<constant>` and
  features_in_step=64 (48 steps), every third point equals ours at steps=48 (its 'black' and 'mean'
  are the current image's min and mean, which 'mean' recomputes after every step).
- ROAD (Rong et al. 2022): at each percentage p, n = int(H * W * p / 100) pixels are removed, the
  p% most relevant (MoRF) or the p% least relevant (LeRF; the original code's `remove=False` at
  th_p=q removes the (1-q) least relevant instead, i.e. its q is our 100 - p). Removed pixels are
  imputed by `noisy_linear_imputation`; returned are the score and whether the argmax is still
  `target_B` (the paper's accuracy), per image and percentage. (Quantus 0.6's ROAD agrees on
  one-channel images; on RGB it fails, indexing the channel-broadcast map's C*H*W order as pixels.)
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.sparse import linalg as sparse_linalg

from saliency_jax.attribution.integrated import gaussian_blur

Forward = Callable[[jax.Array], jax.Array]
ORDERS = ("morf", "lerf")
OUTPUTS = ("softmax", "logit")
REPLACEMENTS = ("black", "mean", "blur")

# The ROAD code's neighbour weights (offset (row, col), weight): 1/6 for the 4 direct neighbours,
# 1/12 for the 4 diagonal ones (they sum to 1).
ROAD_NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
                   ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


class Curve(NamedTuple):
  fractions: jax.Array  # (steps + 1,) fraction of pixels removed / inserted: the x axis
  scores: jax.Array  # (B, steps + 1) the target's probability or logit at each point
  area: jax.Array  # (B,) trapezoid area under scores over fractions in [0, 1]


class RoadResult(NamedTuple):
  percentages: jax.Array  # (P,)
  scores: jax.Array  # (B, P) the target's probability or logit on the imputed image
  correct: jax.Array  # (B, P) bool: argmax of the imputed image's logits == target


def _check(name, value, allowed):
  if value not in allowed:
    raise ValueError(f"{name}={value!r} is not allowed; choose one of: {', '.join(map(repr, allowed))}")


def removal_ranks(maps_BHW, order: str = "morf") -> jax.Array:
  """(B, H*W) int32: the position of each pixel (row-major) in the removal order (0 = first)."""
  _check("order", order, ORDERS)
  flat = maps_BHW.reshape(maps_BHW.shape[0], -1)
  key = -flat if order == "morf" else flat
  order_BN = jnp.argsort(key, axis=-1, stable=True)
  return jnp.argsort(order_BN, axis=-1, stable=True).astype(jnp.int32)  # the inverse permutation


def _target_scores(logits_BK, target_B, output):
  values = jax.nn.softmax(logits_BK, axis=-1) if output == "softmax" else logits_BK
  return jnp.take_along_axis(values, target_B[:, None], axis=-1)[:, 0]


def _map_steps(fn, items, step_chunk: int | None):
  """`fn` over the leading axis of `items` (an array or a tuple of arrays) as one scan over chunks
  of `step_chunk` items: `fn` receives a chunk (c, ...) and returns outputs (c, ...). The last
  chunk is padded with its last item, whose results are dropped."""
  n = jax.tree.leaves(items)[0].shape[0]
  chunk = n if not step_chunk else min(int(step_chunk), n)
  num_chunks = math.ceil(n / chunk)
  pad = lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], num_chunks * chunk - n, axis=0)])
  stacked = jax.tree.map(lambda a: pad(a).reshape(num_chunks, chunk, *a.shape[1:]), items)
  outs = jax.lax.map(fn, stacked)
  return jax.tree.map(lambda o: o.reshape(num_chunks * chunk, *o.shape[2:])[:n], outs)


def _forward_many(forward, images_cBHWC, target_B, output):
  """Scores (c, B) and logits (c, B, K) of c versions of a batch, in one forward pass."""
  c, b = images_cBHWC.shape[:2]
  logits = forward(images_cBHWC.reshape(c * b, *images_cBHWC.shape[2:]))
  logits = logits.reshape(c, b, -1)
  scores = jax.vmap(lambda lg: _target_scores(lg, target_B, output))(logits)
  return scores, logits


def replacement_image(x_BHWC, replacement: str = "mean", value=None, blur_sigma: float = 5.0) -> jax.Array:
  """The values removed pixels take, shaped like `x_BHWC` (see the module's conventions)."""
  _check("replacement", replacement, REPLACEMENTS)
  if replacement == "blur":
    return gaussian_blur(x_BHWC, blur_sigma)
  if value is None:
    if replacement == "black":
      raise ValueError("replacement='black' needs value=<the normalised black image>, e.g. normalization(zeros)")
    value = 0.0
  return jnp.broadcast_to(jnp.asarray(value, x_BHWC.dtype), x_BHWC.shape)


def _pixel_flipping(forward, x_BHWC, maps_BHW, target_B, *, insertion, steps, order, replacement, value, blur_sigma,
                    output, step_chunk) -> Curve:
  _check("output", output, OUTPUTS)
  if int(steps) < 1:
    raise ValueError(f"steps={steps} must be at least 1")
  B, H, W, _ = x_BHWC.shape
  if maps_BHW.shape != (B, H, W):
    raise ValueError(f"maps_BHW has shape {maps_BHW.shape}; expected {(B, H, W)} (reduce the channels first)")
  target_B = jnp.asarray(target_B, jnp.int32)
  ranks_BHW1 = removal_ranks(maps_BHW, order).reshape(B, H, W, 1)
  fill = replacement_image(x_BHWC, replacement, value, blur_sigma)
  counts = np.arange(steps + 1) * (H * W) // steps  # exact integers, computed once here

  def chunk(counts_c):
    changed = ranks_BHW1[None] < counts_c[:, None, None, None, None]  # (c, B, H, W, 1)
    shown = jnp.where(changed, x_BHWC[None], fill[None]) if insertion else jnp.where(changed, fill[None], x_BHWC[None])
    return _forward_many(forward, shown, target_B, output)[0]

  scores = _map_steps(chunk, jnp.asarray(counts, jnp.int32), step_chunk).T  # (B, steps + 1)
  fractions = jnp.asarray(counts / (H * W), scores.dtype)
  return Curve(fractions, scores, jnp.trapezoid(scores, fractions, axis=-1))


def deletion_curve(forward: Forward, x_BHWC, maps_BHW, target_B, *, steps: int = 16, order: str = "morf",
                   replacement: str = "mean", value=None, blur_sigma: float = 5.0, output: str = "softmax",
                   step_chunk: int | None = None) -> Curve:
  """Pixel flipping: remove pixels in `order`, `steps` equal fractions at a time; the target's score
  after each. `step_chunk`: steps per forward pass (default: all steps + 1 at once; lower it to bound
  memory: every chunk runs chunk x B images)."""
  return _pixel_flipping(forward, x_BHWC, maps_BHW, target_B, insertion=False, steps=steps, order=order,
                         replacement=replacement, value=value, blur_sigma=blur_sigma, output=output,
                         step_chunk=step_chunk)


def insertion_curve(forward: Forward, x_BHWC, maps_BHW, target_B, *, steps: int = 16, order: str = "morf",
                    replacement: str = "blur", value=None, blur_sigma: float = 5.0, output: str = "softmax",
                    step_chunk: int | None = None) -> Curve:
  """Start from the replacement image and restore the image's pixels in `order`, `steps` equal
  fractions at a time; the target's score after each (point 0: the replacement alone)."""
  return _pixel_flipping(forward, x_BHWC, maps_BHW, target_B, insertion=True, steps=steps, order=order,
                         replacement=replacement, value=value, blur_sigma=blur_sigma, output=output,
                         step_chunk=step_chunk)


def _neighbour_sum(v_HWC):
  """sum_j w_ij v_j over the in-image neighbours j of every pixel i (zero outside the image)."""
  H, W, _ = v_HWC.shape
  padded = jnp.pad(v_HWC, ((1, 1), (1, 1), (0, 0)))
  return sum(w * padded[1 + dr:1 + dr + H, 1 + dc:1 + dc + W] for (dr, dc), w in ROAD_NEIGHBOURS)


def noisy_linear_imputation(x_HWC, removed_HW, *, noise=0.0, key=None, tol: float = 1e-6,
                            maxiter: int | None = None) -> jax.Array:
  """ROAD's noisy linear imputation of one image: every removed pixel becomes the weighted mean
  (weights 1/6 direct, 1/12 diagonal, over its neighbours inside the image, renormalised at the
  border) of its neighbours, removed ones included, jointly for all removed pixels and per channel;
  then, if a `key` is given, `noise` * N(0, 1) is added to each removed value (`noise` broadcastable
  to (C,), in the model's input space: the ROAD code's 0.01 is in [0, 1] pixel space, i.e. 0.01 / std
  after normalisation; without a key no noise is added).

  The linear system is the ROAD code's (there a sparse LU solve per image): for removed i,
  d_i u_i - sum_{j removed} w_ij u_j = sum_{j kept} w_ij x_j, with d_i = sum of i's in-image
  weights. Kept pixels get the identity row, so the operator is symmetric and, as long as some
  pixel is kept, positive definite; it is solved matrix-free by `jax.scipy.sparse.linalg.cg` with
  a Jacobi preconditioner, to relative residual `tol` (`maxiter` default: H * W iterations).
  If nothing is removed the image is returned unchanged; with every pixel removed the system is
  singular (nothing to average from) and the result is meaningless.
  """
  H, W, C = x_HWC.shape
  removed = removed_HW.astype(bool)[:, :, None]
  weight_sum = _neighbour_sum(jnp.ones((H, W, 1), x_HWC.dtype))  # d_i
  known = jnp.where(removed, 0, x_HWC)
  rhs = jnp.where(removed, _neighbour_sum(known), 0)

  def matvec(u):
    return jnp.where(removed, weight_sum * u - _neighbour_sum(jnp.where(removed, u, 0)), u)

  def jacobi(v):
    return jnp.where(removed, v / weight_sum, v)

  u, _ = sparse_linalg.cg(matvec, rhs, x0=jnp.where(removed, jnp.mean(x_HWC, axis=(0, 1)), 0), tol=tol, atol=0.0,
                          maxiter=maxiter or H * W, M=jacobi)
  noise = jnp.asarray(noise, x_HWC.dtype)
  if key is not None:
    u = u + noise * jax.random.normal(key, x_HWC.shape, x_HWC.dtype)
  return jnp.where(removed, u, x_HWC)


def road(forward: Forward, x_BHWC, maps_BHW, target_B, *, percentages: Sequence[float] = (10, 20, 30, 40, 50, 60,
         70, 80, 90), order: str = "morf", noise=0.0, key=None, output: str = "softmax", tol: float = 1e-6,
         maxiter: int | None = None, step_chunk: int | None = None) -> RoadResult:
  """ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution Methods"):
  remove `percentages` (each in [0, 100)) of the pixels in `order`, impute them by
  `noisy_linear_imputation` and score the imputed images. Noise needs `key` (one draw per image and
  percentage; the ROAD code and Quantus use 0.01); `noise=0` is the noise-free imputation. `key`: one
  for the batch, or one per image (shape (B,)), so an image's noise does not depend on its batch.
  Percentages are `step_chunk` at a time per forward pass (default: all at once)."""
  _check("output", output, OUTPUTS)
  percentages = tuple(float(p) for p in percentages)
  if not percentages or any(not 0 <= p < 100 for p in percentages):
    raise ValueError(f"percentages={percentages} must be in [0, 100): removing every pixel leaves nothing to "
                     "impute from")
  if key is None and np.any(np.asarray(noise) != 0):
    raise ValueError(f"noise={noise} needs a key=jax.random.key(...); pass noise=0.0 for the noise-free imputation")
  B, H, W, _ = x_BHWC.shape
  if maps_BHW.shape != (B, H, W):
    raise ValueError(f"maps_BHW has shape {maps_BHW.shape}; expected {(B, H, W)} (reduce the channels first)")
  target_B = jnp.asarray(target_B, jnp.int32)
  ranks_BHW = removal_ranks(maps_BHW, order).reshape(B, H, W)
  counts = np.asarray([int(H * W * p / 100) for p in percentages], np.int32)  # the ROAD code's and Quantus's int()
  counts = jnp.asarray(counts)
  if key is None:
    items = counts
  elif jnp.shape(key) == (B,):  # per image: image i's draws come from its own key alone
    items = (counts, jax.vmap(lambda k: jax.random.split(k, len(percentages)), out_axes=1)(key))
  else:
    items = (counts, jax.random.split(key, (len(percentages), B)))

  def chunk(items_c):
    if key is None:
      impute = lambda n: jax.vmap(lambda x, r: noisy_linear_imputation(x, r, tol=tol, maxiter=maxiter))(
          x_BHWC, ranks_BHW < n)
      images = jax.vmap(impute)(items_c)
    else:
      impute = lambda n, k_B: jax.vmap(lambda x, r, k: noisy_linear_imputation(
          x, r, noise=noise, key=k, tol=tol, maxiter=maxiter))(x_BHWC, ranks_BHW < n, k_B)
      images = jax.vmap(impute)(*items_c)  # (c, B, H, W, C)
    scores, logits = _forward_many(forward, images, target_B, output)
    return scores, jnp.argmax(logits, axis=-1) == target_B[None]

  scores, correct = _map_steps(chunk, items, step_chunk)
  return RoadResult(jnp.asarray(percentages, jnp.float32), scores.T, correct.T)


__all__ = ["Curve", "RoadResult", "ORDERS", "OUTPUTS", "REPLACEMENTS", "ROAD_NEIGHBOURS", "removal_ranks",
           "replacement_image", "deletion_curve", "insertion_curve", "noisy_linear_imputation", "road"]
