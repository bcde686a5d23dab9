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


def _relevance_denominator(rule, module, a, z, gamma):
  """z_rho: the layer's output under the rule's weights (its own output for LRP-0 / epsilon)."""
  if rule in ("zero", "epsilon"):
    return z
  w, b = _weights(module)
  pos = jax.nn.relu
  if rule == "gamma":
    if gamma == float("inf"):  # the limit: only the positive weights (z / z_rho -> 0 is rescaled away)
      return _apply_linear(module, a, pos(w), pos(b))
    return _apply_linear(module, a, w + gamma * pos(w), b + gamma * pos(b))
  # alpha1beta0: only the positive contributions (a_j w_jk)^+, which is a+ w+ + a- w-; no bias,
  # so relevance is conserved exactly.
  zero_b = jnp.zeros_like(b)
  return (_apply_linear(module, pos(a), pos(w), zero_b) + _apply_linear(module, -pos(-a), -pos(-w), zero_b))


def lrp_forward(forward, rule: str = "epsilon", epsilon: float = 0.01, gamma: float = 0.25):
  """`forward` with every linear layer's backward pass replaced by the LRP `rule`."""
  require_choice("rule", rule, RULES)
  require_non_negative("epsilon", epsilon)
  require_non_negative("gamma", gamma)
  eps = epsilon if rule == "epsilon" else 0.0
  sg = jax.lax.stop_gradient

  def rewrite(module, a, z):
    if not _is_linear(module):
      return z
    z_rho = _relevance_denominator(rule, module, a, z, gamma)
    denominator = z_rho + eps * jnp.where(z_rho >= 0, 1.0, -1.0)
    # A unit with zero denominator carries no relevance (for z+ it has z <= 0, so none arrives).
    ratio = sg(jnp.where(denominator != 0, z / jnp.where(denominator != 0, denominator, 1.0), 0.0))
    h = z_rho * ratio
    return sg(z) + (h - sg(h))

  return forward.intercepted(module_interceptor(_LINEAR, rewrite))


def _lrp(forward, x_BHWC, target_B, *, output: str = "logit", rule: str = "epsilon", epsilon: float = 0.01,
         gamma: float = 0.25):
  """Relevance of every input value. `epsilon`: the stabiliser of LRP-epsilon; `gamma`: the
  positive-weight boost of LRP-gamma (0 is LRP-0, float('inf') the positive-weights-only limit)."""
  forward = lrp_forward(require_model_forward(forward, f"lrp ({rule})"), rule, epsilon, gamma)
  return x_BHWC * input_gradient(forward, x_BHWC, target_B, output)


lrp = register("lrp", needs=("model",))(_lrp)
lrp_0 = register("lrp_0", needs=("model",), rule="zero")(_lrp)
lrp_epsilon = register("lrp_epsilon", needs=("model",), rule="epsilon")(_lrp)
lrp_gamma = register("lrp_gamma", needs=("model",), rule="gamma")(_lrp)
lrp_alpha1beta0 = register("lrp_alpha1beta0", needs=("model",), rule="alpha1beta0")(_lrp)
