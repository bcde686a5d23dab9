"""`cpu_lowering(f)`: any JAX function with its convolutions and max-pools in fast CPU forms.

XLA:CPU has slow paths for what image classifiers and their gradients are made of: convolutions
on maps smaller than the kernel (a 3x3 conv on a 2x2x512 map runs at ~2 GFLOP/s, 680 ms at batch
80), autodiff's input gradient of strided convolutions (4x4x256 -> 2x2x512: 224 ms, 7 ms as a
matmul), the transposed convolutions autodiff emits inside a `lax.map` loop (left as plain
convolution thunks while the forward ones become fused kernels: 32 of 38 s of a chunked IG run),
and select-and-scatter, the max-pool gradient (115 ms for resnet18's stem pool at batch 80).

The transform traces `f` to a jaxpr and evaluates it again, binding every 2-D NHWC float32
`conv_general_dilated` and `reduce_window_max` through a form whose forward *and* gradient are
fast on CPU; every other equation is bound as it was. It recurses into the bodies of `jit`,
`remat`, `scan`, `while`, `cond`, and the primal bodies of `custom_jvp` / `custom_vjp` (whose
user-written derivative rules are kept, untouched). A form that is not covered (grouped, dilated,
NCHW, another dtype, negative padding) stays native: the transform never fails on what `f` does.
Each form is chosen per platform when the program is lowered (`lax.platform_dependent`), so a GPU
or TPU program is the native one, and on a non-CPU default backend the transform returns `f`.

Programs are compiled with `compiler_options()` (XLA's own convolutions, the library's
reductions and dots; see there). Maps are equal to native ones to float32 rounding
(tests/test_lowering.py).

Where it applies is decided here, once, behind one switch (`enabled`: on for CPU by default;
`SALIENCY_JAX_CPU_LOWERING=0` or a config's `cpu_lowering='off'` turns it off): `bind(f)` is what
the places that run a forward call, the batch runner (`BatchRunner`: the Explainer, the grid, the
sanity studies, the faithfulness curves), the training and evaluation steps, and the boundary of
every registered attribution method (`registry.register`), so a method called directly, or under
a researcher's own `jax.jit`, gets it too. Method code, models and interceptors never mention it.
On import the package also sets XLA's CPU fusion flag process-wide (`set_process_flags`), so a
researcher's own `jax.jit` compiles as the library's programs do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jax_core

_NHWC = ("NHWC", "HWIO", "NHWC")
_MARK = "_cpu_lowered"


# ---------------------------------------------------------------- the fast forms


def _window_slices(x, window, strides):
  """For each offset (i, j) of the window, row-major: the strided slice holding that element of
  every window of the (already padded) `x`, shape (B, H', W', C)."""
  (kh, kw), (sh, sw) = window, strides
  ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  return [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] for i in range(kh) for j in range(kw)]


def _columns(lhs, kernel_hw, window_strides, padding):
  """(B, H', W', kh * kw * C): every output position's receptive field, in the row-major order
  of an HWIO kernel's first three axes."""
  x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  return jnp.concatenate(_window_slices(x, kernel_hw, window_strides), axis=-1)


def _im2col_conv(lhs, rhs, window_strides, padding, precision):
  cols = _columns(lhs, rhs.shape[:2], window_strides, padding)
  return jnp.einsum("bhwk,kc->bhwc", cols, rhs.reshape(-1, rhs.shape[-1]), precision=precision)


def _native_conv(lhs, rhs, padding, precision):
  dimension_numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  return lax.conv_general_dilated(lhs, rhs, (1, 1), padding, dimension_numbers=dimension_numbers,
                                  precision=precision)


# Stride 1: the input gradient is the correlation with the flipped, transposed kernel: a forward
# conv again, rather than the transposed conv autodiff emits. The weight gradient is XLA's own
# (a convolution over the batch): compiled with `compiler_options()` it took 17 ms for a 16x16,
# 64-channel layer at batch 128, where the im2col product took 75 ms, most of it building and
# transposing the 9-fold columns (PyTorch: 13.5 ms).
# On an image's few channels (a first layer) XLA's conv runs at ~27 GFLOP/s, and slowest for the
# input gradient, a conv back to 3 channels: there the forward pass is an im2col product and the
# input gradient its transpose (3 -> 64 channels, 32x32, batch 128: 16.0 + 17.4 ms -> 8.8 + 4.7 ms;
# interleaved, user CNN IG chunk 8: 0.381 -> 0.348 s, resnet18's 1.313 -> 1.277 s, training step
# unchanged). The weight gradient stays XLA's (19.8 ms; im2col's 34 ms).
# Only where the layer's input is differentiated (a map; training differentiates the kernel
# alone): a forward pass alone (pixel flipping, evaluation) keeps XLA's conv, which the im2col
# form made 2x slower on small_cnn (3 -> 32 channels; batch 500: 129 vs 62 ms; pixel flipping on
# 1,000 images 26 -> 58 s) and 6% slower on resnet18 (batch 250).
# In IG the im2col forward is worth keeping (resnet18 chunk 8: 1.57 s; XLA's forward with the
# im2col transpose: 1.70 s; XLA's conv both ways: 1.60 s).
_FEW_CHANNELS = 4


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_stride1(lhs, rhs, padding, precision):
  return _native_conv(lhs, rhs, padding, precision)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Differentiated:
  """Whether the kernel is differentiated (training) or not (every attribution map): a residual
  that is static, so the backward pass knows it when traced."""
  kernel: bool


def _conv_stride1_fwd(lhs, rhs, padding, precision):
  if lhs.value.shape[-1] <= _FEW_CHANNELS and lhs.perturbed:  # the input gradient's partner
    out = _im2col_conv(lhs.value, rhs.value, (1, 1), padding, precision)
  else:  # through the primal, so a second derivative gets these rules again
    out = _conv_stride1(lhs.value, rhs.value, padding, precision)
  return out, (lhs.value, rhs.value, _Differentiated(kernel=rhs.perturbed))


def _conv_stride1_bwd(padding, precision, residuals, g):
  lhs, rhs, differentiated = residuals
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return jnp.zeros_like(lhs), jnp.zeros_like(rhs)
  if lhs.shape[-1] <= _FEW_CHANNELS:
    _, input_vjp = jax.vjp(lambda lhs: _im2col_conv(lhs, rhs, (1, 1), padding, precision), lhs)
    d_lhs, = input_vjp(g)
  else:
    kh, kw = rhs.shape[:2]
    (top, bottom), (left, right) = padding
    flipped = jnp.flip(rhs, (0, 1)).swapaxes(2, 3)
    flipped_padding = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
    if g.shape[-1] <= _FEW_CHANNELS:  # a layer out to few channels: XLA's slow case again
      d_lhs = _im2col_conv(g, flipped, (1, 1), flipped_padding, precision)
    else:
      d_lhs = _conv_stride1(g, flipped, flipped_padding, precision)
  if not differentiated.kernel:
    # Not even traced: XLA would drop it unused, but under vmap over both the images and the
    # parameters in a mesh (the sanity studies) jax cannot batch the grouped convolution it becomes.
    return d_lhs, jnp.zeros_like(rhs)
  _, weight_vjp = jax.vjp(lambda rhs: _native_conv(lhs, rhs, padding, precision), rhs)
  return d_lhs, weight_vjp(g)[0]


_conv_stride1.defvjp(_conv_stride1_fwd, _conv_stride1_bwd, symbolic_zeros=True)


def _taps(in_hw, out_hw, kernel_hw, window_strides, padding):
  """(H*W, H'*W') kernel-tap index (row-major) linking input to output position; kh*kw where none does."""
  (h, w), (ho, wo), (kh, kw) = in_hw, out_hw, kernel_hw
  (sh, sw), ((top, _), (left, _)) = window_strides, padding
  di = np.arange(h)[:, None] - sh * np.arange(ho)[None, :] + top  # (H, H') kernel row
  dj = np.arange(w)[:, None] - sw * np.arange(wo)[None, :] + left
  valid = ((di >= 0) & (di < kh))[:, None, :, None] & ((dj >= 0) & (dj < kw))[None, :, None, :]
  taps = np.where(valid, di[:, None, :, None] * kw + dj[None, :, None, :], kh * kw)
  return taps.reshape(h * w, ho * wo)


def _tap_conv(lhs, rhs, window_strides, padding, precision):
  """The conv as one product per kernel tap, over the input positions that tap links to an
  output position, summed per output position. For maps smaller than the window (resnet18's and
  VGG16's 2x2 maps): 16 (B, C) x (C, O) products on 2x2 with a 3x3 kernel where im2col makes 36,
  most of them on padding, and nothing built from the weights (the (H*W*C, H'*W'*O) Toeplitz
  matrix used before cost a 16 MB gather and transpose per layer and step: 137 -> 79 ms for a
  resnet18 step at batch 8, 0.42 -> 0.35 s at 64)."""
  b, h, w, c = lhs.shape
  kh, kw, _, co = rhs.shape
  ho, wo = (h + sum(padding[0]) - kh) // window_strides[0] + 1, (w + sum(padding[1]) - kw) // window_strides[1] + 1
  taps = _taps((h, w), (ho, wo), (kh, kw), window_strides, padding)
  x_pbc = lhs.reshape(b, h * w, c).transpose(1, 0, 2)
  parts = [[] for _ in range(ho * wo)]
  for t in range(kh * kw):
    p_index, q_index = np.nonzero(taps == t)
    if len(p_index):
      y_pbo = jnp.einsum("pbc,co->pbo", x_pbc[p_index], rhs[t // kw, t % kw], precision=precision)
      for k, q in enumerate(q_index):
        parts[q].append(y_pbo[k])
  # An output position whose window holds only padding; built from x to keep its batch sharding.
  zero_bo = jnp.zeros_like(x_pbc[0, :, :1]) * jnp.zeros(co, lhs.dtype)
  out = [functools.reduce(jnp.add, p) if p else zero_bo for p in parts]
  return jnp.stack(out, axis=1).reshape(b, ho, wo, co)


def _conv_form(lhs, rhs, window_strides, padding, precision) -> Callable:
  """The fast form for this 2-D NHWC/HWIO convolution with non-negative explicit padding."""
  if lhs.shape[1] * lhs.shape[2] < rhs.shape[0] * rhs.shape[1]:
    return functools.partial(_tap_conv, window_strides=window_strides, padding=padding, precision=precision)
  if window_strides == (1, 1) and all(p < k for pair, k in zip(padding, rhs.shape[:2]) for p in pair):
    return functools.partial(_conv_stride1, padding=padding, precision=precision)
  return functools.partial(_im2col_conv, window_strides=window_strides, padding=padding, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                           ((0, 0), *padding, (0, 0)))


def _max_pool_fwd(x, window, strides, padding):
  y = _max_pool(x, window, strides, padding)
  return y, (x, y)


def _tiled_max_pool_bwd(x, y, g, window):
  """The gradient where the windows tile the map (window == strides, no padding: the usual 2x2
  pool). Offset (i, j) of every window is `x_tiles[:, :, i, :, j]`, and each offset's share is
  written into the same tiled view, one pass over x. Against a form placing each offset's share
  with an interior-padded `lax.pad` (which XLA evaluates for every offset at every element):
  interleaved (7 rounds), the user CNN's IG 0.460 -> 0.404 s at chunk 8, 0.570 -> 0.561 s
  unchunked; vgg16's unchanged within noise (+-2%). Against the general phase form below (one
  process, both programs compiled side by side, maps identical): the user CNN unchunked 3-4%
  faster (IG 0.334 vs 0.343 s, SmoothGrad 0.414 vs 0.431 s); at chunk 8, and vgg16's IG, within 1%."""
  (kh, kw), (b, ho, wo, c) = window, y.shape
  # One axis split or merged per reshape: under an explicit batch sharding (the training step)
  # jax infers the output's sharding only for those.
  x_tiles = x.reshape(b, ho, kh, x.shape[2], c).reshape(b, ho, kh, wo, kw, c)
  taken = jnp.zeros(y.shape, bool)
  parts = []
  for i in range(kh):
    for j in range(kw):
      first = (x_tiles[:, :, i, :, j] == y) & ~taken
      taken = taken | first
      parts.append(jnp.where(first, g, 0).astype(g.dtype))
  dx = jnp.stack(parts, axis=3).reshape(b, ho, wo, kh, kw, c).transpose(0, 1, 3, 2, 4, 5)
  return dx.reshape(b, ho * kh, wo, kw, c).reshape(x.shape)


def _max_pool_bwd(window, strides, padding, residuals, g):
  # Each window's gradient goes to its first maximum in row-major order, as select-and-scatter
  # sends it (ties included); window offset (i, j) is one strided slice of x.
  x, y = residuals
  (_, kw), (sh, sw), ((top, bottom), (left, right)) = window, strides, padding
  if tuple(window) == tuple(strides) and top == bottom == left == right == 0 and x.shape[1:3] == (
      y.shape[1] * sh, y.shape[2] * sw):
    return (_tiled_max_pool_bwd(x, y, g, window),)
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
  ho, wo = y.shape[1:3]
  # The offset of each window's first maximum, as one reduction: XLA materialises it. A chain of
  # per-offset selects was fused into every element of every placement (9 x 9 compares per element
  # for a 3x3 pool), and with one interior-padded `lax.pad` per offset, resnet18's chunked IG past
  # the affine head spent a quarter of its time in its stem pool's gradient.
  first = jnp.argmax(jnp.stack([v == y for v in _window_slices(xp, window, strides)]), axis=0)
  # Placed phase by phase: rows s*r + p of x get the offsets i = p (mod s) of windows r - i // s, so
  # each phase is a sum of shifted shares and every element is written once, not once per offset.
  (kh, _), (b, _, _, c) = window, y.shape
  eh, ew = (kh - 1) // sh, (kw - 1) // sw
  phase_rows = []
  for pi in range(sh):
    phases = []
    for pj in range(sw):
      acc = jnp.zeros((b, ho + eh, wo + ew, c), g.dtype)
      for i in range(pi, kh, sh):
        for j in range(pj, kw, sw):
          share = jnp.where(first == i * kw + j, g, 0).astype(g.dtype)
          acc = acc + jnp.pad(share, ((0, 0), (i // sh, eh - i // sh), (j // sw, ew - j // sw), (0, 0)))
      phases.append(acc)
    phase_rows.append(jnp.stack(phases, axis=3))
  tiled = jnp.stack(phase_rows, axis=2)  # (b, ho + eh, sh, wo + ew, sw, c)
  dxp = tiled.reshape(b, (ho + eh) * sh, wo + ew, sw, c).reshape(b, (ho + eh) * sh, (wo + ew) * sw, c)
  hp, wp = xp.shape[1:3]
  dxp = jnp.pad(dxp[:, :hp, :wp], ((0, 0), (0, max(0, hp - dxp.shape[1])), (0, max(0, wp - dxp.shape[2])), (0, 0)))
  return (dxp[:, top:hp - bottom, left:wp - right, :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# ---------------------------------------------------------------- rules: one equation -> its CPU form


def _conv_rule(eqn, lhs, rhs):
  p = eqn.params
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC) if lhs.ndim == 4 and rhs.ndim == 4 else None
  padding = tuple(tuple(int(v) for v in pair) for pair in p["padding"])
  covered = (dn is not None and p["dimension_numbers"] == dn and lhs.dtype == rhs.dtype == jnp.float32
             and p["feature_group_count"] == 1 and p["batch_group_count"] == 1
             and all(d == 1 for d in (*p["lhs_dilation"], *p["rhs_dilation"]))
             and p["preferred_element_type"] in (None, jnp.float32) and p["out_sharding"] is None
             and all(v >= 0 for pair in padding for v in pair))
  native = lambda lhs, rhs: _bind(eqn, lhs, rhs)
  if not covered:
    return native(lhs, rhs)
  cpu = _conv_form(lhs, rhs, tuple(p["window_strides"]), padding, p["precision"])
  return lax.platform_dependent(lhs, rhs, cpu=cpu, default=native)


def _max_pool_rule(eqn, x):
  p = eqn.params
  window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
  covered = (x.ndim == 4 and x.dtype == jnp.float32 and window[0] == window[3] == 1
             and strides[0] == strides[3] == 1 and tuple(padding[0]) == tuple(padding[3]) == (0, 0)
             and all(d == 1 for d in (*p["base_dilation"], *p["window_dilation"]))
             and all(v >= 0 for pair in padding for v in pair))
  native = lambda x: _bind(eqn, x)
  if not covered:
    return native(x)
  pads = tuple(tuple(int(v) for v in pair) for pair in padding[1:3])
  cpu = lambda x: _max_pool(x, tuple(window[1:3]), tuple(strides[1:3]), pads)
  return lax.platform_dependent(x, cpu=cpu, default=native)


_RULES = {"conv_general_dilated": _conv_rule, "reduce_window_max": _max_pool_rule}


# ---------------------------------------------------------------- the interpreter


def _bind(eqn, *args, **params):
  """The equation as it was (with `params` replaced), as `jax.core.eval_jaxpr` binds it."""
  with eqn.ctx.manager:
    return eqn.primitive.bind(*args, **eqn.primitive.get_bind_params({**eqn.params, **params}))


def _closed_fn(closed) -> Callable:
  """A Python function evaluating `closed` (a ClosedJaxpr) with the rules applied."""
  return lambda *args: _eval(closed.jaxpr, closed.consts, *args)


def _relowered(closed):
  """`closed` retraced with the rules applied, same signature (for the bodies a primitive keeps
  as a jaxpr parameter: the primal of custom_jvp / custom_vjp)."""
  avals = [jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type) for a in closed.in_avals]
  return jax.make_jaxpr(_closed_fn(closed))(*avals)


def _scan(eqn, *args):
  p = eqn.params
  consts, carry, xs = args[:p["num_consts"]], args[p["num_consts"]:p["num_consts"] + p["num_carry"]], \
      args[p["num_consts"] + p["num_carry"]:]
  body = _closed_fn(p["jaxpr"])

  def step(c, x):
    out = body(*consts, *c, *x)
    return out[:p["num_carry"]], out[p["num_carry"]:]

  carry, ys = lax.scan(step, list(carry), list(xs), length=p["length"], reverse=p["reverse"], unroll=p["unroll"])
  return [*carry, *ys]


def _while(eqn, *args):
  p = eqn.params
  cond_consts, body_consts = args[:p["cond_nconsts"]], args[p["cond_nconsts"]:p["cond_nconsts"] + p["body_nconsts"]]
  init = args[p["cond_nconsts"] + p["body_nconsts"]:]
  cond_fn, body_fn = _closed_fn(p["cond_jaxpr"]), _closed_fn(p["body_jaxpr"])
  return lax.while_loop(lambda c: cond_fn(*cond_consts, *c)[0], lambda c: body_fn(*body_consts, *c), list(init))


def _cond(eqn, index, *operands):
  branches = [_closed_fn(b) for b in eqn.params["branches"]]
  return lax.switch(index, branches, *operands)


def _remat(eqn, *args):
  p = eqn.params
  body = lambda *a: _eval(p["jaxpr"], (), *a)
  return jax.checkpoint(body, prevent_cse=p["prevent_cse"], policy=p["policy"])(*args)


def _inline(eqn, *args):
  return _closed_fn(eqn.params["jaxpr"])(*args)


def _custom_call(eqn, *args):
  # The primal body gets the fast forms; the user's derivative rule is kept as written.
  return _bind(eqn, *args, call_jaxpr=_relowered(eqn.params["call_jaxpr"]))


# Higher-order equations, rebuilt through the public API so their bodies are interpreted too. A
# `jit` inside the traced function is inlined: the caller's own jit compiles the whole program.
_BODIES = {"jit": _inline, "pjit": _inline, "closed_call": _inline, "core_call": _inline, "scan": _scan,
           "while": _while, "cond": _cond, "remat2": _remat, "checkpoint": _remat,
           "custom_jvp_call": _custom_call, "custom_vjp_call": _custom_call}


def _bodies(eqn) -> list:
  """The jaxprs an equation keeps as parameters (a jit's, a scan's, a cond's branches...)."""
  found = []
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      inner = getattr(item, "jaxpr", item)
      if hasattr(inner, "eqns"):
        found.append(inner)
  return found


def _touches(jaxpr) -> bool:
  """Whether `jaxpr`, or a body inside it, has an equation a rule rewrites."""
  return any(eqn.primitive.name in _RULES or any(_touches(b) for b in _bodies(eqn)) for eqn in jaxpr.eqns)


def _eval(jaxpr, consts, *args):
  env = {}

  def read(v):
    return v.val if isinstance(v, jax_core.Literal) else env[v]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name in _RULES:
      out = _RULES[name](eqn, *invals)
    elif name in _BODIES and any(_touches(b) for b in _bodies(eqn)):
      out = _BODIES[name](eqn, *invals)
    else:  # as it was, bodies included: nothing in them to rewrite, or a primitive not known here
      out = _bind(eqn, *invals)
    env.update(zip(eqn.outvars, out if eqn.primitive.multiple_results else [out]))
  return [read(v) for v in jaxpr.outvars]


def _is_array(leaf) -> bool:
  return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


def cpu_lowering(f: Callable) -> Callable:
  """`f` with its 2-D convolutions and max-pools in fast CPU forms, equal to the native ones to
  float32 rounding; `f` itself on a non-CPU default backend, and when `f` is already lowered.

  Array arguments (anywhere in the pytrees of `*args, **kwargs`) are traced; every other leaf
  (flags, names, Python numbers) is passed through as it is, like a static argument.
  """
  if getattr(f, _MARK, False) or jax.default_backend() != "cpu":
    return f

  @functools.wraps(f)
  def lowered(*args, **kwargs):
    leaves, tree = jax.tree.flatten((args, kwargs))
    traced = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]

    def flat(*values):
      full = list(leaves)
      for i, v in zip(traced, values):
        full[i] = v
      a, k = jax.tree.unflatten(tree, full)
      return f(*a, **k)

    values = [leaves[i] for i in traced]
    closed, out_shape = jax.make_jaxpr(flat, return_shape=True)(*values)
    out = _eval(closed.jaxpr, closed.consts, *values)
    return jax.tree.unflatten(jax.tree.structure(out_shape), out)

  setattr(lowered, _MARK, True)
  return lowered


def is_lowered(f) -> bool:
  return bool(getattr(f, _MARK, False))


# ---------------------------------------------------------------- the switch, and binding


ENV_VAR = "SALIENCY_JAX_CPU_LOWERING"
SETTINGS = ("auto", "on", "off")  # a config's `cpu_lowering`; auto: as ENV_VAR says, on by default
_ENV_VALUES = {"1": True, "on": True, "true": True, "0": False, "off": False, "false": False}
_setting = ["auto"]


def _env_on() -> bool:
  value = os.environ.get(ENV_VAR, "").strip().lower()
  if value and value not in _ENV_VALUES:
    raise ValueError(f"{ENV_VAR}={value!r} is not allowed; choose one of: 1, 0 (or on, off, true, false)")
  return _ENV_VALUES.get(value, True)


def check_env() -> None:
  """The switch's environment variable, checked (ValueError naming it)."""
  _env_on()


def enabled() -> bool:
  """Whether programs bound now get the CPU path (the lowering, its XLA options, IG's affine head):
  on a CPU default backend unless the switch says off (`configured`, else `SALIENCY_JAX_CPU_LOWERING`).
  Read when a program is traced: a program already compiled keeps what it was traced with."""
  setting = _setting[0]
  wanted = setting == "on" or (setting == "auto" and _env_on())
  return wanted and jax.default_backend() == "cpu"


@contextlib.contextmanager
def configured(setting: str):
  """The switch set to `setting` ('auto', 'on', 'off': a config's `cpu_lowering`) for what runs inside."""
  if setting not in SETTINGS:
    raise ValueError(f"cpu_lowering={setting!r} is not allowed; choose one of: {', '.join(map(repr, SETTINGS))}")
  previous = _setting[0]
  _setting[0] = setting
  try:
    yield
  finally:
    _setting[0] = previous


def _binds_its_apply(f) -> bool:
  """A model bound to its variables (`attribution.ModelForward`): it runs `transform(model.apply)`."""
  return hasattr(f, "transform") and hasattr(f, "with_transform")


def is_bound(f) -> bool:
  """Whether `f` (a function or a model forward) runs with the lowering already."""
  return f.transform is cpu_lowering if _binds_its_apply(f) else is_lowered(f)


def bind(f):
  """`f` as it runs here: with the CPU lowering where `enabled()`, else `f` itself. `f` is any JAX
  function, or a model forward (`attribution.ModelForward`), which then applies the lowering to its
  model's `apply` and stays a model forward (its layers can still be read and differentiated).
  Binding twice is binding once. The one place that decides; the runners, the training steps and
  the methods' boundary call it."""
  if is_bound(f) or not enabled():
    return f
  if _binds_its_apply(f):
    return f.with_transform(cpu_lowering)
  return cpu_lowering(f)


def bind_arguments(fn: Callable) -> Callable:
  """`fn` with every model forward among its arguments bound (`bind`) when it runs: how a runner
  binds the forwards it is handed for a compiled program."""

  @functools.wraps(fn)
  def bound(*args):
    return fn(*jax.tree.map(lambda a: bind(a) if _binds_its_apply(a) else a, args, is_leaf=_binds_its_apply))

  return bound


def plain(f):
  """The function `bind` made `f` from (`f` itself if it is not bound): what a transform that reads
  the jaxpr's own primitives traces (the lowered forms hide them in `cond`s)."""
  if _binds_its_apply(f):
    return f.with_transform(None) if is_bound(f) else f
  return f.__wrapped__ if is_lowered(f) else f


# XLA:CPU (jaxlib 0.10) hands convolutions, dots, elementwise ops and reductions to YNNPACK
# library fusions. Its convolutions run on one thread (a 32x32, 64-channel layer at batch 128:
# 100 ms, where XLA's own takes 48 ms on two), and a weight gradient through them (16x16, 64
# channels) takes 77 ms (XLA's own: 17 ms); its reductions are the fast ones (batch-norm
# statistics: without them the resnet18 step spends 370 ms in reduce-windows). Measured on 2 idle
# cores at batch 128:
# resnet18 training step 0.99 s -> 0.71 s, forward pass at batch 250 400 -> 276 ms, IG chunk 8
# 1.73 -> 1.52 s against no library fusions at all; a small CNN's forward pass unchanged.
# Its dots are faster than XLA's on these shapes (a 4096x1152 by 1152x128 product: 4.2 vs 5.3
# ms), and the im2col, per-tap and dense layers are made of them. Where a dot also takes in its
# neighbours (DOT) the training step gains most, a gradient program can lose: so each alone
# (INDIVIDUAL_DOT) for the maps, forward passes and evaluation, DOT for the training step.
# Interleaved, medians (docs/performance.md): IG with chunks of 8 on vgg16 3.25 -> 2.64 s,
# resnet18 1.25 -> 1.19 s, the user CNN unchanged (resnet18's unchunked IG with DOT: 1.28 ->
# 1.46 s); the resnet18 training step at batch 64 / 128 / 256 (one run): 0.98x / 0.99x / 1.09x
# PyTorch's with INDIVIDUAL_DOT, 1.04x / 1.12x / 1.13x with DOT.
_REDUCE = "LIBRARY_FUSION_TYPE_REDUCE"
_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": f"{_REDUCE},LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
_TRAINING_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": f"{_REDUCE},LIBRARY_FUSION_TYPE_DOT"}
_REDUCE_ONLY = {"xla_cpu_experimental_ynn_fusion_type": _REDUCE}


@functools.cache
def _compiles(options: tuple) -> bool:
  """Whether this XLA compiles with `options` (items): one that does not know an option or one
  of its values rejects it at compile time."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
  except Exception:  # pylint: disable=broad-except
    return False
  return True


def compiler_options(training: bool = False) -> dict | None:
  """XLA options for compiling any program of this library on CPU (attribution maps, forward
  passes, evaluation; `training=True`: a training step): `jax.jit(fn,
  compiler_options=compiler_options())`; None elsewhere and with the switch off (`enabled`). They
  change how a program runs, never what it computes (beyond float32 rounding)."""
  if not enabled():
    return None
  # An older XLA may know the library reductions but not its dots: keep the reductions then.
  for options in (_TRAINING_OPTIONS if training else _OPTIONS, _REDUCE_ONLY):
    if _compiles(tuple(options.items())):
      return dict(options)
  return None


# The first jaxlib the options are measured on: an older XLA that does not know a flag aborts the
# process at start-up when it reads it from XLA_FLAGS (per-program options are checked instead).
_FLAGS_SINCE = (0, 10)


def set_process_flags() -> bool:
  """XLA's CPU fusion option of `compiler_options()` set process-wide (XLA_FLAGS), so a researcher's
  own `jax.jit` of a method, a forward or a training step compiles as the library's programs do:
  on 2 idle EPYC cores a user CNN's IG (batch 32, 64 points) ran 0.70x captum's speed with XLA's
  defaults, 1.67x with these. Against XLA's defaults (which add YNNPACK's single-threaded
  convolutions), on the same 2 cores under load (rough): that IG 3.03 -> 2.88 s, the user CNN's own
  optax training step 0.498 -> 0.506 s, its forward pass at batch 500 unchanged (0.32 s); a program
  compiled with options of its own (the library's, the training step's) keeps them.
  Called when the package is imported; does nothing when XLA_FLAGS already
  sets the option, when the switch is off (SALIENCY_JAX_CPU_LOWERING=0), or on a jaxlib older than
  the one measured. XLA reads XLA_FLAGS once, when JAX starts its first backend: a package imported
  after that cannot set it (returns False, with a warning on CPU); then compile with
  `compiler_options()` yourself."""
  import jaxlib  # pylint: disable=g-import-not-at-top

  name = next(iter(_OPTIONS))
  flags = os.environ.get("XLA_FLAGS", "")
  version = tuple(int(p) for p in jaxlib.__version__.split(".")[:2] if p.isdigit())
  try:
    on = _env_on()
  except ValueError:  # named by the run's checks (`check_env`), not a traceback on import
    return False
  if f"--{name}" in flags or not on or version < _FLAGS_SINCE:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    started = xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # a JAX without it: set the flag; at worst it is not read
    started = False
  if started:
    if jax.default_backend() == "cpu":
      warnings.warn("saliency_jax was imported after JAX started its CPU backend, so it could not set XLA's "
                    f"CPU fusion option ({name}) for your own jax.jit programs: import saliency_jax before "
                    "running anything in JAX, or compile with compiler_options=saliency_jax.lowering."
                    "compiler_options()", stacklevel=3)
    return False
  os.environ["XLA_FLAGS"] = f"{flags} --{name}={_OPTIONS[name]}".strip()
  return True
