"""A forward's affine head: f = rest(head(x)) with `head` affine in x, read from f's jaxpr.

Why: the path methods sum gradients at many inputs, sum_s w_s grad f(x_s). With f = rest o head
and head affine (a CNN's first convolution with its bias, an eval-mode batch norm, an input
normalisation), that is head'^T (sum_s w_s grad rest(head(x_s))), head' its linear part: the
head's transpose, a convolution back to the image's 3 channels (on CPU the slowest one of a CNN's
gradient), runs once per image instead of once per point; and on IG's straight path
head(x' + a (x - x')) = head(x') + a (head(x) - head(x')), so the head's forward runs twice per
image instead of once per point. The result is the same sum, to float32 rounding.

The head is the longest run of equations from the input that are affine in it (`_AFFINE`); it
ends at the first equation that is not (a ReLU, a max-pool, anything unknown, a nested `jit`).
A forward whose head has no convolution or product, or whose head output is much larger than
its input (`MAX_GROWTH`), gets no split: `split` returns None.

The split is part of the CPU path (`for_path`): integrated gradients walk it where the forward is
bound with the CPU lowering (`lowering.bind`, on by default for CPU), and the plain path elsewhere
(a GPU or TPU, or the switch off), where the first convolution's transpose is not a slow case and
the path has no reason to differ from the textbook one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

from saliency_jax import lowering

# Head outputs larger than this many times the input are not split off: the running sums of a
# path method are head-output-sized (a CIFAR ResNet's stem: 64 / 3 channels, about 21x).
MAX_GROWTH = 64


def _linear_in(*positions):
  """Affine when only the operands at `positions` depend on the input."""
  return lambda depends: not any(d for i, d in enumerate(depends) if i not in positions)


_any = lambda depends: True
_one_of_two = lambda depends: not all(depends)
# Primitive -> whether it is affine in the input, given which of its operands depend on it.
_AFFINE = {
    **{name: _any for name in ("add", "sub", "add_any", "neg", "reshape", "broadcast_in_dim", "transpose",
                               "squeeze", "expand_dims", "reduce_sum", "copy", "concatenate", "rev", "slice")},
    "mul": _one_of_two, "dot_general": _one_of_two,
    "conv_general_dilated": _linear_in(0), "div": _linear_in(0), "pad": _linear_in(0),
    "dynamic_slice": _linear_in(0), "select_n": lambda depends: not depends[0],
}
_PRODUCTS = ("conv_general_dilated", "dot_general")


def _is_affine(eqn, depends) -> bool:
  name = eqn.primitive.name
  if name == "convert_element_type":  # a cast between float types; to integers it is not affine
    new, old = eqn.params["new_dtype"], eqn.invars[0].aval.dtype
    return jnp.issubdtype(new, jnp.floating) and jnp.promote_types(old, new) == new  # not narrowing
  return name in _AFFINE and _AFFINE[name](depends)


@dataclasses.dataclass(frozen=True)
class Split:
  """`head(x) -> z` (a list of arrays, affine in x) and `rest(z) -> logits`, both bound as the
  forward was (`lowering.bind`); `transpose(x, g_z)` is head'^T g_z, the input gradient for head-output
  gradients g_z."""

  head: Callable
  rest: Callable

  def transpose(self, x_BHWC, g_z):
    return jax.vjp(self.head, x_BHWC)[1](g_z)[0]


def identity(forward: Callable) -> Split:
  """The split with no head: z = [x], rest = forward."""
  return Split(head=lambda x: [x], rest=lambda z: forward(z[0]))


def _jaxpr(constvars, invars, outvars, eqns):
  effects = jax_core.no_effects.union(*(eqn.effects for eqn in eqns))
  return jax_core.Jaxpr(constvars, invars, outvars, eqns, effects)


def for_path(forward: Callable, x_BHWC) -> Split:
  """The split a path method walks: `split` where `forward` is bound with the CPU lowering (the
  CPU path's switch, `lowering.enabled`), else (or with no head worth it) `identity`."""
  return (lowering.is_bound(forward) and split(forward, x_BHWC)) or identity(forward)


def split(forward: Callable, x_BHWC) -> Split | None:
  """`forward` as rest o head, or None when it has no affine head worth splitting off. A bound
  forward is read as written (`lowering.plain`) and its parts are bound again."""
  closed = jax.make_jaxpr(lowering.plain(forward))(x_BHWC)
  jaxpr = closed.jaxpr
  (x_var,) = jaxpr.invars
  depends = {x_var}
  end, products = len(jaxpr.eqns), 0
  for i, eqn in enumerate(jaxpr.eqns):
    flags = [isinstance(v, jax_core.Var) and v in depends for v in eqn.invars]
    if not any(flags):
      continue  # independent of the input: a constant wherever it runs
    if not _is_affine(eqn, flags):
      end = i
      break
    depends.update(eqn.outvars)
    products += eqn.primitive.name in _PRODUCTS
  if not products:
    return None
  head_eqns, rest_eqns = jaxpr.eqns[:end], jaxpr.eqns[end:]
  defined = {x_var, *(v for eqn in head_eqns for v in eqn.outvars)}
  used_later = [v for eqn in rest_eqns for v in eqn.invars] + list(jaxpr.outvars)
  crossing = list(dict.fromkeys(v for v in used_later if isinstance(v, jax_core.Var) and v in defined))
  z_vars = [v for v in crossing if v in depends]
  c_vars = [v for v in crossing if v not in depends]  # input-independent values the rest reads
  if any(v.aval.dtype != x_BHWC.dtype for v in z_vars):  # a narrowed head: rounding, not affine
    return None
  if sum(math.prod(v.aval.shape) for v in z_vars) > MAX_GROWTH * math.prod(x_BHWC.shape):
    return None
  head_jaxpr = _jaxpr(jaxpr.constvars, [x_var], z_vars + c_vars, head_eqns)
  rest_jaxpr = _jaxpr([*jaxpr.constvars, *c_vars], z_vars, jaxpr.outvars, rest_eqns)
  consts = list(closed.consts)
  head_fn = jax_core.jaxpr_as_fun(jax_core.ClosedJaxpr(head_jaxpr, consts))
  # The input-independent values are the same for every input: computed once, at x_BHWC.
  c_values = head_fn(x_BHWC)[len(z_vars):]
  rest_fn = jax_core.jaxpr_as_fun(jax_core.ClosedJaxpr(rest_jaxpr, consts + c_values))

  def head(x):
    return head_fn(x)[:len(z_vars)]

  def rest(z):
    (logits,) = rest_fn(*z)
    return logits

  rebind = lowering.bind if lowering.is_bound(forward) else (lambda f: f)
  return Split(rebind(head), rebind(rest))
