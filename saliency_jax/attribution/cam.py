"""Class activation maps on a named layer (GradCAM, GradCAM_Pos, GradCAM++, Guided GradCAM) and FullGrad.

All return input-shaped maps: the (h, w) layer map is resized bilinearly to the input and
broadcast over its channels.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict

from saliency_jax.attribution.activations import guided_backprop
from saliency_jax.attribution.core import (batchnorm_affine, bias_only, module_interceptor, require_model_forward,
                                           scores, upsample)
from saliency_jax.attribution.registry import register


def default_layer(forward, x_BHWC) -> str:
  """The last layer the network computes whose map is spatial, (B, h, w, C) with h * w > 1:
  GradCAM's usual choice, the last convolutional block. A 1x1 map (VGG16's last max-pool on
  32x32 inputs) has no spatial information, and its CAM would be constant. On 32x32 inputs:
  resnet18 'layer4', vgg16 'conv5_3', small_cnn 'features2'; a network without taps, its last
  spatial submodule (e.g. its last convolution)."""
  layers = forward.layers(x_BHWC)
  spatial = [name for name, l in layers.items() if len(l.shape.shape) == 4 and l.shape.shape[1] * l.shape.shape[2] > 1]
  if not spatial:
    raise ValueError(f"{type(forward.model).__name__} has no spatial layer for a CAM method")
  return spatial[-1]


def _channel_weights(kind: str, a_BhwK, g_BhwK):
  if kind == "gradcam":
    return g_BhwK.mean(axis=(1, 2))
  if kind == "gradcam_pos":
    return jnp.abs(g_BhwK).mean(axis=(1, 2))
  # GradCAM++ (Chattopadhyay et al., eq. 19, with exp(score) folded in as in pytorch-grad-cam).
  g2, g3 = g_BhwK**2, g_BhwK**3
  denominator = 2 * g2 + a_BhwK.sum(axis=(1, 2), keepdims=True) * g3
  alpha = jnp.where(g_BhwK != 0, g2 / jnp.where(denominator != 0, denominator, 1.0), 0.0)
  return (alpha * jax.nn.relu(g_BhwK)).sum(axis=(1, 2))


def class_activation_map(forward, x_BHWC, target_B, *, output: str = "logit", layer: str | None = None,
                         kind: str = "gradcam"):
  """ReLU(sum_k w_k A_k) on `layer` (default: the last spatial one), w from `kind`'s weighting."""
  forward = require_model_forward(forward, kind)
  layer = layer or default_layer(forward, x_BHWC)
  a_BhwK, g_BhwK = forward.layer_and_gradient(x_BHWC, target_B, layer, output)
  if a_BhwK.ndim != 4:
    raise ValueError(f"layer={layer!r} has shape {a_BhwK.shape}; {kind} needs a spatial (B, h, w, C) layer")
  weights_BK = _channel_weights(kind, a_BhwK, g_BhwK)
  cam_Bhw1 = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", a_BhwK, weights_BK))[..., None]
  return upsample(cam_Bhw1, x_BHWC.shape)


gradcam = register("gradcam", needs=("model", "layer"), kind="gradcam")(class_activation_map)
gradcam_pos = register("gradcam_pos", needs=("model", "layer"), kind="gradcam_pos")(class_activation_map)
gradcam_plusplus = register("gradcam_plusplus", needs=("model", "layer"), kind="gradcam_plusplus")(class_activation_map)


@register("guided_gradcam", needs=("model", "layer", "activations"))
def guided_gradcam(forward, x_BHWC, target_B, *, output: str = "logit", layer: str | None = None):
  """GradCAM times Guided Backprop, elementwise."""
  cam = class_activation_map(forward, x_BHWC, target_B, output=output, layer=layer, kind="gradcam")
  return cam * guided_backprop(forward, x_BHWC, target_B, output=output)


def _bias_of(module):
  if isinstance(module, nn.BatchNorm):
    return batchnorm_affine(module)[1]
  if isinstance(module, (nn.Conv, nn.Dense)):
    return module.variables["params"]["bias"] if module.use_bias else None
  return bias_only(module)


# Every module is looked at; those without a bias (_bias_of: None) are passed through.
_BIASED = (nn.Module,)
_BIASES = "fullgrad_biases"  # where the differentiated pass records each bias it adds a zero to


def fullgrad_terms(forward, x_BHWC, target_B, output: str = "logit"):
  """(input_gradient * x, [(layer, bias_gradient * bias)]): FullGrad's terms, each bias term
  named by its top-level layer (resnet18: 'bn1', 'layer1_0', ..., 'fc')."""
  forward = require_model_forward(forward, "fullgrad")

  # Which layers have a bias, in the order they run, and their output shapes: a pass of shapes
  # only (nothing is computed), keeping static values alone.
  def note(module, _, y):
    if _bias_of(module) is not None:
      calls.append((module.path, jax.ShapeDtypeStruct(y.shape, y.dtype)))
    return y

  calls = []
  jax.eval_shape(forward.with_transform(None).intercepted(module_interceptor(_BIASED, note)), x_BHWC)

  def score_sum(x, deltas):
    seen = [0]

    def add_delta(module, _, y):
      if _bias_of(module) is None:
        return y
      seen[0] += 1
      module.sow(_BIASES, "bias", _bias_of(module))  # an output of the pass (a value must not escape it)
      return y + deltas[seen[0] - 1]

    with nn.intercept_methods(module_interceptor(_BIASED, add_delta)):
      logits, state = forward.apply(x, mutable=[_BIASES])
    return scores(lambda _: logits, x, target_B, output).sum(), flatten_dict(dict(state.get(_BIASES, {})))

  deltas = [jnp.zeros(s.shape, s.dtype) for _, s in calls]
  (grad_x, grad_deltas), recorded = jax.grad(score_sum, argnums=(0, 1), has_aux=True)(x_BHWC, deltas)
  # A module applied twice recorded two biases under its path, in the order of its calls.
  occurrence, biases = {}, []
  for path, _ in calls:
    k = occurrence[path] = occurrence.get(path, -1) + 1
    biases.append(recorded[(*path, "bias")][k])
  layers = [path[0] if path else type(forward.model).__name__ for path, _ in calls]
  return grad_x * x_BHWC, [(layer, g * b) for layer, g, b in zip(layers, grad_deltas, biases)]


def fullgrad_decomposition(forward, x_BHWC, target_B, output: str = "logit"):
  """FullGrad's exact split of the score: (input_gradient * x, [bias_gradient * bias per layer]).

  A bias-gradient is the gradient with respect to the layer's output; a layer's bias is its
  own (conv, dense) or eval-mode BatchNorm's effective one, beta - gamma * mean / std. For
  piecewise-linear networks the terms sum exactly to the logit (the completeness test).
  """
  input_term, named = fullgrad_terms(forward, x_BHWC, target_B, output)
  return input_term, [term for _, term in named]


def _normalize_per_image(t):
  axes = tuple(range(1, t.ndim))
  t = jnp.abs(t)
  t = t - t.min(axis=axes, keepdims=True)
  peak = t.max(axis=axes, keepdims=True)
  return t / jnp.where(peak > 0, peak, 1.0)


@register("fullgrad", needs=("model",))
def fullgrad(forward, x_BHWC, target_B, *, output: str = "logit", blocks=None, with_input: bool = True):
  """FullGrad (Srinivas & Fleuret 2019): each term's absolute value, min-max normalised per image,
  summed over channels, resized to the input and added. Non-spatial (dense) bias terms are
  left out of the map, as in the reference implementation.

  `blocks` (layer names, see `fullgrad_terms`) keeps only those layers' bias terms and
  `with_input=False` drops the input term: FullGrad per block (`blocks=('layer3_1',),
  with_input=False`) and accumulated over blocks (`blocks=('layer4_0', 'layer4_1')`)."""
  input_term, named = fullgrad_terms(forward, x_BHWC, target_B, output)
  if blocks is not None:
    blocks = (blocks,) if isinstance(blocks, str) else tuple(blocks)
    known = list(dict.fromkeys(layer for layer, _ in named))
    for block in blocks:
      if block not in known:
        raise ValueError(f"fullgrad blocks entry {block!r} is not a layer with a bias; choose from: "
                          f"{', '.join(map(repr, known))}")
    named = [(layer, term) for layer, term in named if layer in blocks]
  total_BHW1 = jnp.zeros((*x_BHWC.shape[:3], 1), x_BHWC.dtype)
  if with_input:
    total_BHW1 = total_BHW1 + _normalize_per_image(input_term).sum(-1, keepdims=True)
  for _, term in named:
    if term.ndim == 4:
      total_BHW1 = total_BHW1 + upsample(_normalize_per_image(term).sum(-1, keepdims=True), total_BHW1.shape)
  return jnp.broadcast_to(total_BHW1, x_BHWC.shape)
