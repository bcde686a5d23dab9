"""What every method shares: the scalar being explained, its input gradient, target choice.

A method explains one scalar per image, `output` ('logit' or 'softmax') of class
`target_B[b]`, and returns a map shaped like the input. `forward(x_BHWC) -> logits_BK` is
any JAX function that treats the images of a batch independently (a model in eval mode),
so the gradient of the batch's summed scores is every image's own gradient at once.

Methods that look inside the network (GradCAM, FullGrad, LRP, the modified-ReLU family)
need more than a function: `ModelForward` binds a flax model to its variables, is itself a
`forward`, and is a pytree, so `jax.jit(method)(model_forward, x, target)` traces the
variables as arguments instead of baking 134M VGG weights into the program as constants.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from saliency_jax import models
from saliency_jax.checks import require_choice
from saliency_jax.lowering import cpu_lowering

Forward = Callable[[jax.Array], jax.Array]
OUTPUTS = ("logit", "softmax")
TARGETS = ("predicted", "label")


def scores(forward: Forward, x_BHWC, target_B, output: str = "logit") -> jax.Array:
  """The explained scalar of every image: `output` of class `target_B`, shape (B,)."""
  require_choice("output", output, OUTPUTS)
  logits_BK = forward(x_BHWC)
  values_BK = jax.nn.softmax(logits_BK, axis=-1) if output == "softmax" else logits_BK
  return jnp.take_along_axis(values_BK, jnp.asarray(target_B)[:, None], axis=-1)[:, 0]


def input_gradient(forward: Forward, x_BHWC, target_B, output: str = "logit") -> jax.Array:
  """d scores / d x, every image's own gradient (the images do not interact)."""
  return jax.grad(lambda x: scores(forward, x, target_B, output).sum())(x_BHWC)


def select_targets(forward: Forward, x_BHWC, labels_B=None, which: str = "predicted") -> jax.Array:
  """The class each image is explained for: the argmax at the input ('predicted'), the true label
  ('label'), or the lowest-scoring class ('lowest', the class-sensitivity study's other end).

  The predicted class is taken once at the input and held fixed along any path (IG) and
  over any noise (SmoothGrad): docs/methods.md, "What a method explains".
  """
  require_choice("target", which, (*TARGETS, "lowest"))
  if which == "label":
    if labels_B is None:
      raise ValueError("target='label' needs the labels; pass labels_B")
    return jnp.asarray(labels_B, jnp.int32)
  logits_BK = forward(x_BHWC)
  return (jnp.argmin if which == "lowest" else jnp.argmax)(logits_BK, axis=-1).astype(jnp.int32)


def upsample(map_BhwC, shape_BHWC) -> jax.Array:
  """Bilinear resize of a (B, h, w, C') map to the input's height and width, broadcast to its
  channels, so every method returns an input-shaped map and Guided GradCAM is a product."""
  B, H, W, C = shape_BHWC
  resized = jax.image.resize(map_BhwC, (B, H, W, map_BhwC.shape[-1]), method="bilinear")
  return jnp.broadcast_to(resized, (B, H, W, C)) if resized.shape[-1] == 1 else resized


@flax.struct.dataclass
class ModelForward:
  """A flax model bound to its variables: `forward(x) -> logits` in eval mode, plus the
  views into the network that layer-based methods need."""

  model: nn.Module = flax.struct.field(pytree_node=False)
  variables: Any
  # Its calls and layer gradients go through `cpu_lowering` already (see `registry.register`).
  _cpu_lowered = True

  def __call__(self, x_BHWC):
    return cpu_lowering(self.model.apply)(self.variables, x_BHWC, train=False)

  def unlowered(self) -> Forward:
    """The forward without `cpu_lowering` (see `lowering.unlowered`)."""
    return lambda x_BHWC: self.model.apply(self.variables, x_BHWC, train=False)

  def with_activation(self, activation: Callable) -> "ModelForward":
    """The same network with every activation replaced (Guided Backprop, Deconvnet, RectGrad)."""
    if not hasattr(self.model, "activation"):
      raise TypeError(f"{type(self.model).__name__} has no 'activation' option to replace")
    return self.replace(model=self.model.clone(activation=activation))

  def layer_names(self, x_BHWC) -> list[str]:
    return list(self.tap_shapes(x_BHWC))

  def tap_shapes(self, x_BHWC):
    """Shape and dtype of every tapped activation at inputs like `x_BHWC`, in computation order
    (nothing is run)."""
    return models.feature_shapes(self.model, self.variables, x_BHWC)

  def layer_and_gradient(self, x_BHWC, target_B, layer: str, output: str = "logit"):
    """The activation `layer` (a tap name, see `models.feature_names`) and the gradient of the
    scores with respect to it."""
    shapes = self.tap_shapes(x_BHWC)
    if layer not in shapes:
      raise ValueError(f"layer={layer!r} is not a layer of {type(self.model).__name__}; "
                        f"choose one of: {', '.join(map(repr, shapes))}")
    picked = lambda logits_BK: scores(lambda _: logits_BK, x_BHWC, target_B, output).sum()
    features, grads = models.feature_gradients(self.model, self.variables, x_BHWC, [layer], picked)
    return features[layer], grads[layer]

  def intercepted(self, interceptor, lower: bool = True) -> Forward:
    """A forward whose flax submodule calls pass through `interceptor` (see
    `flax.linen.intercept_methods`): how FullGrad reads every bias and LRP rewrites
    every linear layer's backward pass, for any flax model, without touching model code.

    `lower=False` skips `cpu_lowering`, for an interceptor that keeps values it sees: under
    the transform they would belong to its inner trace and leak."""

    def forward(x_BHWC):
      with nn.intercept_methods(interceptor):
        return self(x_BHWC) if lower else self.model.apply(self.variables, x_BHWC, train=False)

    return forward


def require_model_forward(forward, method: str) -> ModelForward:
  if not isinstance(forward, ModelForward):
    raise TypeError(f"{method} looks inside the network, so it needs "
                      "saliency_jax.attribution.ModelForward(model, variables) rather than a plain function")
  return forward


@contextlib.contextmanager
def _no_reentry(flag: list):
  flag[0] = True
  try:
    yield
  finally:
    flag[0] = False


def module_interceptor(types: tuple[type, ...], rewrite: Callable) -> Callable:
  """An interceptor calling `rewrite(module, inputs, outputs)` after every `__call__` of a
  module of `types`; what `rewrite` returns replaces the output.

  `rewrite` may itself apply flax modules (LRP applies the layer with modified weights);
  those inner calls are not intercepted again.
  """
  busy = [False]

  def interceptor(next_fun, args, kwargs, context):
    if busy[0] or context.method_name != "__call__" or not isinstance(context.module, types):
      return next_fun(*args, **kwargs)
    outputs = next_fun(*args, **kwargs)
    with _no_reentry(busy):
      return rewrite(context.module, args[0], outputs)

  return interceptor


def bias_only(module) -> jax.Array | None:
  """The bias of a layer whose only parameter is a bias (y = x + b, e.g. the input-invariance
  twin's extra first-layer bias), else None: an affine layer with weight 1 to FullGrad and LRP."""
  params = module.variables.get("params", {})
  if isinstance(module, (nn.Conv, nn.Dense, nn.BatchNorm)) or set(params) != {"bias"}:
    return None
  return params["bias"]


def batchnorm_affine(module: nn.BatchNorm):
  """Eval-mode BatchNorm as the per-channel affine map y = scale * x + bias."""
  params = module.variables.get("params", {})
  stats = module.variables["batch_stats"]
  inv = jax.lax.rsqrt(stats["var"] + module.epsilon)
  scale = params["scale"] * inv if module.use_scale else inv
  bias = params["bias"] if module.use_bias else 0.0
  return scale, bias - scale * stats["mean"]
