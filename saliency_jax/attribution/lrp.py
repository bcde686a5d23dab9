"""Layer-wise relevance propagation: LRP-0, LRP-epsilon, LRP-gamma, LRP-alpha1beta0 (z+).

Implemented as a gradient with a rewritten backward pass through every linear layer (Dense,
Conv, eval-mode BatchNorm as a per-channel affine map), so it works on any flax model:

    y = z  (forward unchanged),   backward:  g_in = d/da [z_rho(a)] applied to g_out * z / z_rho

where z_rho is the layer recomputed with the rule's weights. Relevance is then input *
gradient: by induction R = a * g at every layer, which is the rule's
R_j = sum_k a_j rho(w_jk) R_k / z_rho_k (Montavon et al. 2019). ReLU, max-pooling and
average pooling keep their ordinary gradients, the usual LRP treatment; a residual sum
splits relevance in proportion to its summands.
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


def _gamma_denominators(module, a, gamma):
  """(z_up, z_down): the layer recomputed by the generalized gamma rule (Andeol et al. 2021; zennit's
  `Gamma`) for the units whose output is positive and for those whose output is negative. z_up
  boosts the positive contributions (a+ w+, a- w-, b+) by gamma, so z_up >= z > 0; z_down the
  negative ones (a+ w-, a- w+, b-), so z_down <= z < 0; with inputs >= 0 z_up is Montavon et al.'s
  sum_j a_j (w_jk + gamma w_jk+) + b + gamma b+. The rule as first written boosts w+ whatever the
  input's sign: on signed inputs (normalised pixels, a BatchNorm's input) its denominator can pass
  through 0 while z does not, and relevance explodes. gamma=inf is the limit: only the boosted
  contributions (the ratio z / z_rho -> 0 is rescaled away)."""
  w, b = _weights(module)

  def boost(v, part):
    return part(v) if gamma == float("inf") else v + gamma * part(v)

  no_b = jnp.zeros_like(b)
  up = (_apply_linear(module, _pos(a), boost(w, _pos), boost(b, _pos))
        + _apply_linear(module, _neg(a), boost(w, _neg), no_b))
  down = (_apply_linear(module, _pos(a), boost(w, _neg), boost(b, _neg))
          + _apply_linear(module, _neg(a), boost(w, _pos), no_b))
  return up, down


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
    if not _is_linear(module):
      return z
    if rule == "gamma":
      up, down = _gamma_denominators(module, a, gamma)
      h = up * ratio(jnp.where(z > 0, z, 0.0), up) + down * ratio(jnp.where(z < 0, z, 0.0), down)
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
