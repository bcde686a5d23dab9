"""What every method shares: the scalar being explained, its input gradient, target choice, and
the checks of what a caller passes (images, targets), made once at each method's boundary.

A method explains one scalar per image, `output` ('logit' or 'softmax') of class
`target_B[b]`, and returns a map shaped like the input. `forward(x_BHWC) -> logits_BK` is
any JAX function that treats the images of a batch independently (a model in eval mode),
so the gradient of the batch's summed scores is every image's own gradient at once.

Methods that look inside the network (GradCAM, FullGrad, LRP, the modified-ReLU family)
need more than a function: `ModelForward` binds any flax.linen model to its variables, is itself
a `forward`, and is a pytree, so `jax.jit(method)(model_forward, x, target)` traces the
variables as arguments instead of baking 134M VGG weights into the program as constants. Its
layers are its submodules, by path ('conv3', 'layer4_1', 'block/conv1'), plus any activation the
model exposes with `models.common.tap` ('layer4', 'conv5_3'): read and differentiated through
`flax.linen.intercept_methods` and flax's own intermediates, so the model's code needs nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from saliency_jax.checks import require_choice

Forward = Callable[[jax.Array], jax.Array]
OUTPUTS = ("logit", "softmax")
TARGETS = ("predicted", "label")
_INTERMEDIATES = "intermediates"
_CALL = "__call__"  # the key under which flax records a submodule's output


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


# ---------------------------------------------------------------- what a caller passes, checked once


def check_images(x_BHWC) -> None:
  """A float batch of NHWC images, or one ValueError saying what it is instead."""
  shape = tuple(np.shape(x_BHWC)) if not hasattr(x_BHWC, "shape") else tuple(x_BHWC.shape)
  if len(shape) != 4:
    hint = "; one image? add the batch axis: x[None]" if len(shape) == 3 else ""
    raise ValueError(f"x_BHWC has shape {shape}; the methods take a batch of images, (B, H, W, C){hint}")
  _, h, w, c = shape
  if h <= 4 and w > 4 and c > 4:
    raise ValueError(f"x_BHWC has shape {shape}, an NCHW batch (channels second, as torch has it); the methods "
                     "take NHWC images (B, H, W, C): pass x.transpose(0, 2, 3, 1)")
  dtype = x_BHWC.dtype if hasattr(x_BHWC, "dtype") else np.asarray(x_BHWC).dtype
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"x_BHWC has dtype {dtype}; the methods take the model's float inputs (normalise the "
                     "pixels first, e.g. with the data's Normalization)")


def num_classes(forward: Forward, x_BHWC) -> int:
  """How many classes `forward` scores, from its output's shape (nothing is computed)."""
  out = jax.eval_shape(forward, x_BHWC)
  shape = getattr(out, "shape", None)
  if shape is None or len(shape) != 2 or shape[0] != x_BHWC.shape[0]:
    raise ValueError(f"forward(x) returned {jax.tree.map(lambda a: a.shape, out)}; a forward returns logits, "
                     f"one row per image: shape ({x_BHWC.shape[0]}, classes)")
  return int(shape[1])


def check_targets(target, batch: int, classes: int) -> tuple[jax.Array, jax.Array | None]:
  """(target_B, valid_B): `target` as one int32 class index per image, or one ValueError.

  `target` is a Python int (every image's class) or an integer array of shape () or (batch,),
  each 0 <= t < classes. Concrete values are checked here; a traced target's values cannot be
  (inside `jax.jit` they are not known until it runs), so `valid_B` comes back, and the method's
  boundary makes the maps of images whose target is out of range NaN: never another class's map
  (an index out of range is otherwise clipped or wrapped by JAX's gather without a word).
  `valid_B` is None when every value was checked."""
  if isinstance(target, str):
    raise ValueError(f"target={target!r}: the methods take class indices; choose them with "
                     f"select_targets(forward, x, labels, {target!r}), or pass {target!r} to the Explainer")
  if isinstance(target, (bool, np.bool_)) or (not hasattr(target, "dtype") and not isinstance(
      target, (int, np.integer, list, tuple, np.ndarray))):
    raise ValueError(f"target={target!r} is not a class index; give an int or an int array of shape ({batch},)")
  t = target if isinstance(target, jax.Array) else np.asarray(target)
  if not jnp.issubdtype(t.dtype, jnp.integer):
    hint = " (one-hot rows? pass jnp.argmax(target, -1))" if t.ndim == 2 else ""
    raise ValueError(f"target has dtype {t.dtype}; give class indices, an int or ints of shape ({batch},){hint}")
  if t.shape not in ((), (batch,)):
    raise ValueError(f"target has shape {t.shape}; give one class index per image, shape ({batch},), or one int "
                     "for every image")
  if not isinstance(t, jax.core.Tracer):
    values = np.broadcast_to(np.asarray(t), (batch,))
    bad = np.flatnonzero((values < 0) | (values >= classes))
    if len(bad):
      i = int(bad[0])
      raise ValueError(f"target {int(values[i])} (image {i}) is not a class of this forward: its {classes} "
                       f"outputs are classes 0..{classes - 1}")
    return jnp.asarray(values, jnp.int32), None
  t_B = jnp.broadcast_to(t, (batch,)).astype(jnp.int32)
  return t_B, (t_B >= 0) & (t_B < classes)


# ---------------------------------------------------------------- a flax model bound to its variables


# The spellings of eval mode a model's `__call__` may take, every one it takes being set: flax's
# examples' `train`, `training` and `is_training` (Keras's and Haiku's), flax's `deterministic` (Dropout)
# and `use_running_average` (BatchNorm).
EVAL_MODES = (("train", False), ("training", False), ("is_training", False), ("deterministic", True),
              ("use_running_average", True))


@functools.cache
def _eval_mode(model_type: type) -> tuple[tuple[str, bool], ...]:
  """The keywords that put a model of this type in eval mode, those of `EVAL_MODES` its `__call__`
  takes; none for a module without modes. A required argument beyond the input is an error: a
  forward takes the images alone."""
  params = list(inspect.signature(model_type.__call__).parameters.values())[1:]  # after self
  names = {p.name for p in params}
  mode = tuple(m for m in EVAL_MODES if m[0] in names)
  positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
  required = [p.name for p in params[1:] if p.default is p.empty and p.name not in dict(mode)
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
  if not positional or required:
    raise ValueError(f"{model_type.__name__}.__call__{inspect.signature(model_type.__call__)} does not take the "
                     f"images alone: a forward is model(x), plus any of {', '.join(m for m, _ in EVAL_MODES)}, "
                     f"which are set to eval mode; give {', '.join(map(repr, required)) or 'the other arguments'} a "
                     "default. (A plain function, lambda x: model.apply(variables, x, ...), serves the gradient "
                     "family, IG and SmoothGrad, not the methods that look inside the network.)")
  return mode


@dataclasses.dataclass(frozen=True)
class Layer:
  """A named layer of a model: a submodule's output (`kind='module'`, named by its path) or a tapped
  activation (`kind='tap'`, see `models.common.tap`); `key`: where flax records it."""

  name: str
  kind: str
  key: tuple[str, ...]
  shape: jax.ShapeDtypeStruct
  calls: int  # how often one forward pass computes it (a module applied twice: 2)


def _layers_of(state) -> list[tuple[str, str, tuple[str, ...], tuple]]:
  """(name, kind, key, values) of every recorded layer, in the order the network computes them (flax
  records in that order; a tap inside a submodule under the submodule's name, `models._tap_name`)."""
  from saliency_jax import models  # pylint: disable=g-import-not-at-top

  found = {}
  for key, values in traverse_util.flatten_dict(dict(state.get(_INTERMEDIATES, {}))).items():
    if key[-1] == _CALL:
      name, kind = "/".join(key[:-1]), "module"
    else:
      name, kind = models._tap_name(key), "tap"  # pylint: disable=protected-access
    if name and name not in found:  # '': the model's own output; a block's output tap is its output
      found[name] = (name, kind, key, values)
  return list(found.values())


@flax.struct.dataclass
class ModelForward:
  """Any flax.linen model bound to its variables: `forward(x) -> logits` in eval mode (train=False,
  deterministic=True and the other spellings of `EVAL_MODES` its `__call__` takes), plus the views
  into the network that layer-based methods need: `layers`, `layer_and_gradient`, `intercepted`,
  `with_activation`.

  `transform`: what whoever binds this forward for running applies to `model.apply` (the CPU
  lowering, `lowering.bind`); it changes how the model runs, never what it computes. None: the
  model's own `apply`."""

  model: nn.Module = flax.struct.field(pytree_node=False)
  variables: Any
  transform: Callable | None = flax.struct.field(pytree_node=False, default=None)

  def __post_init__(self):
    if not isinstance(self.model, nn.Module):
      kind = type(self.model).__module__ + "." + type(self.model).__name__
      nnx = " (an NNX module: pass the function nnx.merge(graphdef, state)(x) instead)" if ".nnx" in kind else ""
      raise ValueError(f"ModelForward takes a flax.linen Module, not {kind}{nnx}; a plain function forward "
                       "works for the gradient family, IG and SmoothGrad")
    _eval_mode(type(self.model))

  def apply(self, x_BHWC, variables=None, **kwargs):
    """`model.apply(variables, x, **kwargs)` in eval mode, through `transform`."""
    run = self.transform(self.model.apply) if self.transform else self.model.apply
    variables = self.variables if variables is None else variables
    return run(variables, x_BHWC, **dict(_eval_mode(type(self.model))), **kwargs)

  def __call__(self, x_BHWC):
    return self.apply(x_BHWC)

  def with_transform(self, transform: Callable | None) -> "ModelForward":
    return self.replace(transform=transform)

  def with_activation(self, activation: Callable) -> "ModelForward":
    """The same network with every activation replaced (Guided Backprop, Deconvnet, RectGrad): its
    `activation` field, which must be a ReLU, or the rebuilt network would compute other logits."""
    if not hasattr(self.model, "activation"):
      raise ValueError(f"{type(self.model).__name__} has no 'activation' option to replace; Guided Backprop, "
                       "Deconvnet and RectGrad rebuild the model with their own ReLU: give the module an "
                       "`activation` field and call it where it applies its ReLUs")
    if not _is_relu(self.model.activation):
      name = getattr(self.model.activation, "__name__", self.model.activation)
      raise ValueError(f"{type(self.model).__name__}.activation is {name!r}, not a ReLU: Guided Backprop, "
                       "Deconvnet and RectGrad are defined on ReLU networks (they change how the gradient crosses "
                       "each ReLU), and swapping in their ReLU would explain another network; use a method of the "
                       "gradient family, IG or SmoothGrad")
    return self.replace(model=self.model.clone(activation=activation))

  def layers(self, x_BHWC) -> dict[str, Layer]:
    """Every named layer at inputs like `x_BHWC`, in the order the network computes them: each
    submodule's output by its path ('conv1', 'layer4_1', 'layer4_1/conv2') and each tap ('layer4');
    where a tap and a submodule share a name (a ResNet block's output) they are the same value.
    Shapes only: nothing is run."""
    table = []

    def values(variables, x):
      _, state = self.model.apply(variables, x, **dict(_eval_mode(type(self.model))),
                                  capture_intermediates=True, mutable=[_INTERMEDIATES])
      table[:] = [(name, kind, key, len(v)) for name, kind, key, v in _layers_of(state)]
      return [v[0] for *_, v in _layers_of(state)]

    shapes = jax.eval_shape(values, self.variables, x_BHWC)
    return {name: Layer(name, kind, key, shape, calls) for (name, kind, key, calls), shape in zip(table, shapes)}

  def layer_names(self, x_BHWC) -> list[str]:
    return list(self.layers(x_BHWC))

  def _layer(self, x_BHWC, layer: str) -> tuple[Layer, dict[str, Layer]]:
    layers = self.layers(x_BHWC)
    if layer not in layers:
      raise ValueError(f"layer={layer!r} is not a layer of {type(self.model).__name__}; choose one of: "
                       f"{', '.join(map(repr, layers))}")
    if layers[layer].calls != 1:
      raise ValueError(f"layer={layer!r} is computed {layers[layer].calls} times in one forward pass (a module "
                       "applied more than once); expose the one you mean with models.common.tap")
    return layers[layer], layers

  def _run_at(self, x_BHWC, layer: Layer, layers: dict[str, Layer], delta):
    """(logits, the layer's value) with `delta` added to the layer's value."""
    variables, intercepting, capture = self.variables, contextlib.nullcontext(), False
    if layer.kind == "tap":  # a tap adds its 'perturbations' entry (models.common.tap); all must be there
      taps = {l.key: jnp.zeros(l.shape.shape, l.shape.dtype) for l in layers.values() if l.kind == "tap"}
      variables = {**variables, "perturbations": traverse_util.unflatten_dict({**taps, layer.key: delta})}
    else:
      path = layer.key[:-1]
      capture = lambda module, method_name: method_name == _CALL and module.path == path

      def interceptor(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        return y + delta if context.method_name == _CALL and context.module.path == path else y

      intercepting = nn.intercept_methods(interceptor)
    with intercepting:
      logits, state = self.apply(x_BHWC, variables, capture_intermediates=capture, mutable=[_INTERMEDIATES])
    return logits, traverse_util.flatten_dict(dict(state[_INTERMEDIATES]))[layer.key][0]

  def layer_value(self, x_BHWC, layer: str) -> jax.Array:
    """The activation `layer` (a name of `layers`) at `x_BHWC`."""
    found, layers = self._layer(x_BHWC, layer)
    return self._run_at(x_BHWC, found, layers, jnp.zeros(found.shape.shape, found.shape.dtype))[1]

  def layer_and_gradient(self, x_BHWC, target_B, layer: str, output: str = "logit"):
    """The activation `layer` (a name of `layers`) and the gradient of the scores with respect to
    it: the gradient of a zero added to it, which leaves the forward pass unchanged."""
    found, layers = self._layer(x_BHWC, layer)

    def score_sum(delta):
      logits, value = self._run_at(x_BHWC, found, layers, delta)
      return scores(lambda _: logits, x_BHWC, target_B, output).sum(), value

    zeros = jnp.zeros(found.shape.shape, found.shape.dtype)
    (_, value), grad = jax.value_and_grad(score_sum, has_aux=True)(zeros)
    return value, grad

  def intercepted(self, interceptor) -> Forward:
    """A forward whose flax submodule calls pass through `interceptor` (see
    `flax.linen.intercept_methods`): how FullGrad reads every bias and LRP rewrites every
    linear layer's backward pass, for any flax model, without touching model code.

    An interceptor's return value replaces the module's output. Values it sees belong to this
    forward pass: to take one out, sow it (`context.module.sow(collection, name, value)`) and run
    `forward.apply(x, mutable=[collection])` under `flax.linen.intercept_methods(interceptor)`,
    as FullGrad does, rather than keeping it in a Python variable (a JAX transform of the forward,
    `jax.checkpoint` or the CPU lowering alike, would let it escape as a tracer)."""

    def forward(x_BHWC):
      with nn.intercept_methods(interceptor):
        return self.apply(x_BHWC)

    return forward


_RELU_PROBE = np.array([-1e6, -2.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 2.0, 7.0, 1e3, 1e6], np.float32)  # large: ReLU6


def _is_relu(activation) -> bool:
  """Whether `activation` computes max(x, 0): tried on a few values (so `jax.nn.relu`, a lambda of
  it and the methods' own modified ReLUs pass; GELU, SiLU, tanh, leaky ReLU, ReLU6 do not)."""
  if activation is jax.nn.relu:
    return True
  try:
    with jax.ensure_compile_time_eval():  # evaluated now, also while a caller's jax.jit traces
      y = np.asarray(activation(jnp.asarray(_RELU_PROBE)))
  except Exception:  # pylint: disable=broad-except
    return False
  return y.shape == _RELU_PROBE.shape and bool(np.array_equal(y, np.maximum(_RELU_PROBE, 0)))


def check_key(key, batch: int, who: str) -> jax.Array:
  """`key` as a typed key of shape () (one for the batch) or (batch,) (one per image), or one ValueError.
  Raw uint32 keys (`jax.random.PRNGKey`'s, last axis 2) are taken as the keys they hold."""
  if key is None:
    raise ValueError(f"{who} needs an explicit random key; pass key=jax.random.key(0) (one for the batch, or "
                     "one per image)")
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    raise ValueError(f"key={key!r} is a seed, not a random key; pass key=jax.random.key({key})")
  dtype = getattr(key, "dtype", None)
  if dtype is not None and not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if dtype == jnp.uint32 and key.ndim in (1, 2) and key.shape[-1] == 2:
      key = jax.random.wrap_key_data(key)
  if getattr(key, "dtype", None) is None or not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    raise ValueError(f"key={key!r} is not a random key; pass key=jax.random.key(0)")
  if key.shape not in ((), (batch,)):
    raise ValueError(f"{who}: key has shape {key.shape}; give one key (shape ()) or one per image, shape ({batch},)")
  return key


def require_model_forward(forward, method: str) -> ModelForward:
  if not isinstance(forward, ModelForward):
    raise ValueError(f"{method} looks inside the network, so it needs "
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
