"""Layer-wise relevance propagation: LRP-0, LRP-epsilon, LRP-gamma, LRP-alpha1beta0 (z+).

Implemented as a gradient with a rewritten backward pass through every linear layer (Dense,
Conv, eval-mode BatchNorm as a per-channel affine map), so it works on any flax model built
of those, ReLUs and pooling, without touching its code:

    y = z  (forward unchanged),   backward:  g_in = d/da [z_rho(a)] applied to g_out * z / z_rho

where z_rho is the layer recomputed with the rule's weights. Relevance is then input *
gradient: by induction R = a * g at every layer, which is the rule's
R_j = sum_k a_j rho(w_jk) R_k / z_rho_k (Montavon et al. 2019). ReLU, max-pooling and
average pooling keep their ordinary gradients, the usual LRP treatment; a residual sum splits
relevance in proportion to its summands. A layer that normalises by statistics of its own input
(LayerNorm, GroupNorm, RMSNorm, InstanceNorm) or attends has no rule here (captum refuses such
layers too; zennit's composites pass them through with their gradient): its gradient does not carry
relevance (LayerNorm's output does not change when its input is scaled, so input x gradient sums to
0 across it), and such a model is refused with the layer named. (Ali et al. 2022 propagate through
LayerNorm and attention by holding the normalisation and the attention weights constant; that is not
implemented.)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from saliency_jax.attribution.core import (batchnorm_affine, bias_only, input_gradient, module_interceptor,
                                           require_model_forward)
from saliency_jax.attribution.registry import register
from saliency_jax.checks import require_choice, require_non_negative

RULES = ("zero", "epsilon", "gamma", "alpha1beta0")
# Conv, Dense, BatchNorm, and layers whose only parameter is a bias (`core.bias_only`: the input
# invariance twin's extra bias), affine with weight 1; every other module passes through.
_LINEAR = (nn.Module,)


# Modules whose gradient is not a relevance rule (see the module docstring): refused, never passed through.
_NO_RULE = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.InstanceNorm, nn.MultiHeadDotProductAttention)


def _is_linear(module) -> bool:
  return isinstance(module, (nn.Dense, nn.Conv, nn.BatchNorm)) or bias_only(module) is not None


def _apply_linear(module, a, weight, bias):
  """The layer `module` at input `a` with its weight (kernel, or BatchNorm's scale) and bias replaced."""
  if not isinstance(module, (nn.Dense, nn.Conv)):  # BatchNorm and bias-only layers
    return a * weight + bias
  params = {"kernel": weight}
  if getattr(module, "use_bias", False):
    params["bias"] = bias
  return module.clone(parent=None).apply({"params": params}, a)


def _weights(module):
  if bias_only(module) is not None:
    return jnp.ones((), bias_only(module).dtype), bias_only(module)
  if isinstance(module, nn.BatchNorm):
    return batchnorm_affine(module)
  params = module.variables["params"]
  return params["kernel"], params.get("bias", 0.0)


def _pos(v):
  return jax.nn.relu(v)


def _neg(v):
  return -jax.nn.relu(-v)


def _relevance_denominator(rule, module, a, z):
  """z_rho: the layer's output under the rule's weights (its own output for LRP-0 / epsilon)."""
  if rule in ("zero", "epsilon"):
    return z
  # alpha1beta0: only the positive contributions (a_j w_jk)^+, which is a+ w+ + a- w-; no bias,
  # so relevance is conserved exactly.
  w, b = _weights(module)
  zero_b = jnp.zeros_like(b)
  return _apply_linear(module, _pos(a), _pos(w), zero_b) + _apply_linear(module, _neg(a), _neg(w), zero_b)


def _own_sign_parts(module, a):
  """P, the layer's contributions that are positive (a+ w+, a- w-, and b+), recomputed: with the layer's
  output z = P + N, the generalized gamma rule's denominators are z + gamma P and z + gamma N."""
  w, b = _weights(module)
  return _apply_linear(module, _pos(a), _pos(w), _pos(b)) + _apply_linear(module, _neg(a), _neg(w), jnp.zeros_like(b))


def _gamma(z, p, gamma, ratio):
  """The generalized gamma rule (Andeol et al. 2021; zennit's `Gamma`) as h, whose gradient is the
  rule's backward pass: a unit with z > 0 divides its relevance by z_up = z + gamma P, boosting the
  positive contributions P by gamma (z_up >= z > 0); one with z < 0 by z_down = z + gamma N, N = z - P,
  boosting the negative ones. With inputs >= 0, z_up is Montavon et al.'s sum_j a_j (w_jk + gamma
  w_jk+) + b + gamma b+. The rule as first written boosts w+ whatever the input's sign: on signed
  inputs (normalised pixels, a BatchNorm's input) its denominator can pass through 0 while z does
  not, and relevance explodes. gamma=inf is the limit: only the boosted contributions (z_up -> P,
  z_down -> N; the ratio z / z_rho -> 0 is rescaled away). Written over z and P alone, the rule costs
  two recomputed layers, as alpha1beta0 does, not four."""
  n = z - p
  up, down = (p, n) if gamma == float("inf") else (z + gamma * p, z + gamma * n)
  r_up, r_down = ratio(jnp.where(z > 0, z, 0.0), up), ratio(jnp.where(z < 0, z, 0.0), down)
  # up * r_up + down * r_down, grouped by what carries a gradient: z and P.
  if gamma == float("inf"):
    return z * r_down + p * (r_up - r_down)
  return z * (r_up + r_down) + gamma * (p * (r_up - r_down) + z * r_down)


def lrp_forward(forward, rule: str = "epsilon", epsilon: float = 0.01, gamma: float = 0.25):
  """`forward` with every linear layer's backward pass replaced by the LRP `rule`."""
  require_choice("rule", rule, RULES)
  require_non_negative("epsilon", epsilon)
  require_non_negative("gamma", gamma)
  eps = epsilon if rule == "epsilon" else 0.0
  sg = jax.lax.stop_gradient

  def ratio(numerator, denominator):
    # A unit with zero denominator carries no relevance (for z+ it has z <= 0, so none arrives).
    return sg(jnp.where(denominator != 0, numerator / jnp.where(denominator != 0, denominator, 1.0), 0.0))

  def rewrite(module, a, z):
    if isinstance(module, _NO_RULE):
      raise ValueError(f"LRP has no rule for {type(module).__name__} (at {'/'.join(module.path) or 'the top'}): it "
                       "normalises by its own input's statistics, so its gradient does not carry relevance; LRP "
                       "here takes networks of Conv, Dense, eval-mode BatchNorm, ReLU and pooling")
    if not _is_linear(module):
      return z
    if rule == "gamma":
      h = _gamma(z, _own_sign_parts(module, a), gamma, ratio)
    else:
      z_rho = _relevance_denominator(rule, module, a, z)
      h = z_rho * ratio(z, z_rho + eps * jnp.where(z_rho >= 0, 1.0, -1.0))
    return sg(z) + (h - sg(h))

  return forward.intercepted(module_interceptor(_LINEAR, rewrite))


def _lrp(forward, x_BHWC, target_B, *, output: str = "logit", rule: str = "epsilon", epsilon: float = 0.01,
         gamma: float = 0.25):
  """Relevance of every input value. `epsilon`: the stabiliser of LRP-epsilon; `gamma`: LRP-gamma's boost
  of the contributions of each unit's own sign (the generalized rule; 0 is LRP-0, float('inf') the
  limit with only those contributions)."""
  forward = lrp_forward(require_model_forward(forward, f"lrp ({rule})"), rule, epsilon, gamma)
  return x_BHWC * input_gradient(forward, x_BHWC, target_B, output)


lrp = register("lrp", needs=("model",))(_lrp)
lrp_0 = register("lrp_0", needs=("model",), rule="zero")(_lrp)
lrp_epsilon = register("lrp_epsilon", needs=("model",), rule="epsilon")(_lrp)
lrp_gamma = register("lrp_gamma", needs=("model",), rule="gamma")(_lrp)
lrp_alpha1beta0 = register("lrp_alpha1beta0", needs=("model",), rule="alpha1beta0")(_lrp)
