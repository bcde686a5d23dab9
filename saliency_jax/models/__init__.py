"""Models: `create_model(name, **options)` returns a flax.linen Module.

Every model is a pure function `model.apply(variables, x_BHWC, train=False) -> logits_BK`.
Options every model takes: `activation` (a callable, or 'relu' / 'gelu' / ...: Guided
Backprop swaps in its own ReLU here without touching model code) and `dtype` (the compute
dtype; parameters stay float32). Model-specific ones: resnet18 `maxpool`, `stem` ('3x3': the
CIFAR stem, the default; '7x7': torchvision's standard 7x7/2 stem); vgg16
`dropout_rate`; mlp `hidden`; small_cnn `channels`.

Named activations ("taps", see `common.tap`) can be read with `read_features` and
differentiated with `feature_gradients`; `feature_names` lists them. The attribution methods name
layers more widely, by any submodule's path too, with no tap needed (`attribution.ModelForward.layers`).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp

from saliency_jax.checks import require_choice
from saliency_jax.models import common
from saliency_jax.models.resnet import STEMS, ResNet
from saliency_jax.models.small import MLP, SmallCNN
from saliency_jax.models.vgg import VGG

# The defaults of ResNet and VGG are ResNet-18 and VGG16.
MODELS: dict[str, type[nn.Module]] = {
    "resnet18": ResNet,
    "vgg16": VGG,
    "small_cnn": SmallCNN,
    "mlp": MLP,
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

Variables = Mapping[str, Any]


def _activation(value):
  if callable(value):
    return value
  if not isinstance(value, str) or not hasattr(nn, value) or not callable(getattr(nn, value)):
    raise ValueError(f"model.activation={value!r} is not allowed; give a callable or the name of a "
                      "flax.linen activation such as 'relu', 'gelu', 'silu', 'softplus'")
  return getattr(nn, value)


def create_model(name: str, num_classes: int = 10, **options) -> nn.Module:
  """The model `name` (one of MODELS) with `num_classes` outputs; options are listed above."""
  require_choice("model.name", name, MODELS)
  cls = MODELS[name]
  allowed = sorted(p for p in inspect.signature(cls).parameters if p not in ("num_classes", "parent", "name"))
  for key in options:
    if key not in allowed:
      raise ValueError(f"model option {key!r} is not known for model.name={name!r}; allowed: {', '.join(allowed)}")
  if "activation" in options:
    options["activation"] = _activation(options["activation"])
  if "stem" in options:
    require_choice("model.stem", options["stem"], STEMS)
  if isinstance(options.get("dtype"), str):
    require_choice("train.dtype", options["dtype"], DTYPES)
    options["dtype"] = DTYPES[options["dtype"]]
  for key in ("hidden", "channels"):  # ml_collections hands tuples over as lists sometimes
    if key in options:
      options[key] = tuple(options[key])
  return cls(num_classes=num_classes, **options)


# Fields of a config's `model` section that are not options of a model class.
_RUN_FIELDS = ("name", "torch_weights", "num_classes")


def from_config(model_config, num_classes: int, dtype="float32") -> nn.Module:
  """The model a config's `model` section names. A field of another model (resnet18's `maxpool`
  under vgg16) is ignored at that model's default, so one default config serves every model, and
  refused when set to anything else: it would not do what it says."""
  require_choice("model.name", model_config.name, MODELS)
  takes = inspect.signature(MODELS[model_config.name]).parameters
  for field, value in model_config.items():
    if field in _RUN_FIELDS or field in takes:
      continue
    owners = [n for n, cls in MODELS.items() if field in inspect.signature(cls).parameters]
    default = inspect.signature(MODELS[owners[0]]).parameters[field].default if owners else inspect.Parameter.empty
    if value != default:
      raise ValueError(f"model.{field}={value!r} does not apply to model.name={model_config.name!r}"
                       + (f" (it is an option of {', '.join(owners)})" if owners else "") + "; remove it")
  options = {k: v for k, v in model_config.items() if k in takes and k not in _RUN_FIELDS}
  wanted = model_config.get("num_classes", 0) or num_classes
  if wanted != num_classes:
    # The stages score predictions against the data's labels: a model of other classes is
    # explained in Python (attribution.Explainer), not evaluated by the pipeline.
    raise ValueError(f"model.num_classes={wanted} but the data has {num_classes} classes; training, the grid, "
                     "the sanity studies and the faithfulness curves compare the model's classes with the data's "
                     "labels, so they need a model of the data's classes (0: as many as the data has). Explain a "
                     "model of other classes with the Python API, attribution.Explainer (docs/extending.md)")
  return create_model(model_config.name, num_classes=num_classes, dtype=dtype, **options)


def model_variables(variables) -> dict:
  """The collections a forward pass reads ('params', 'batch_stats'), without the taps'
  bookkeeping ('intermediates', 'perturbations') or anything else a caller carries."""
  return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


def init_variables(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict:
  """Parameters (and BatchNorm statistics) for inputs of `input_shape` (B, H, W, C).

  Initialised under `jit` so a large model is built directly on the device and the taps'
  bookkeeping collections ('intermediates', 'perturbations') are dropped.
  """

  @jax.jit
  def init(key):
    variables = model.init({"params": key, "dropout": key}, jnp.zeros(input_shape, jnp.float32), train=False)
    return model_variables(variables)

  return init(key)


def count_params(params) -> int:
  """Number of scalars in a parameter tree (works on arrays and on jax.eval_shape output)."""
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def _tap_name(path: tuple[str, ...]) -> str:
  """A tap's public name: its path in the network, where a submodule's `common.OUTPUT` tap is
  named as the submodule."""
  if len(path) > 1 and path[-1] == common.OUTPUT:
    path = path[:-1]
  return "/".join(path)


def _taps(model: nn.Module, variables: Variables, x_BHWC, train: bool = False) -> dict[tuple[str, ...], jax.Array]:
  """Every tap by its path in the network, in the order the network computes them."""
  _, state = model.apply(dict(variables), x_BHWC, train=train, mutable=["intermediates"])
  return {path: value[0] for path, value in traverse_util.flatten_dict(state["intermediates"]).items()}


def read_features(model: nn.Module, variables: Variables, x_BHWC, train: bool = False) -> dict[str, jax.Array]:
  """Every tapped activation of `model` at `x_BHWC`, by name, in the order the network computes them."""
  return {_tap_name(path): value for path, value in _taps(model, variables, x_BHWC, train).items()}


def feature_shapes(model: nn.Module, variables: Variables, x_BHWC) -> dict[str, jax.ShapeDtypeStruct]:
  """Shape and dtype of every tapped activation, in the order the network computes them
  (nothing is run). `jax.eval_shape` hands dicts back with sorted keys, so the order is read
  from the trace, where flax records taps as they are sown."""
  order = []

  def values(v, x):
    feats = read_features(model, v, x)
    order[:] = list(feats)
    return [feats[n] for n in order]

  shapes = jax.eval_shape(values, variables, x_BHWC)
  return dict(zip(order, shapes))


def feature_names(model: nn.Module, input_shape: Sequence[int] = (1, 32, 32, 3)) -> list[str]:
  """Names of the tapped activations, in the order the network computes them (from shapes only)."""
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), input_shape))
  return list(feature_shapes(model, variables, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)))


def feature_gradients(model: nn.Module, variables: Variables, x_BHWC, names: Sequence[str],
                      scalar_fn: Callable[[jax.Array], jax.Array]):
  """Activations `names` and the gradient of `scalar_fn(logits)` with respect to each.

  Returns `(features, gradients)`, two dicts keyed by name. The gradient is taken through
  zero 'perturbations' added at every tap, which leaves the forward pass unchanged.
  """
  taps = _taps(model, variables, x_BHWC)
  paths = {_tap_name(path): path for path in taps}
  unknown = [n for n in names if n not in paths]
  if unknown:
    raise ValueError(f"layer {unknown[0]!r} is not a tapped activation of this model; allowed: {', '.join(paths)}")
  # The perturbations mirror the taps' nesting: a submodule's tap is perturbed in its own scope.
  zeros = traverse_util.unflatten_dict({path: jnp.zeros_like(v) for path, v in taps.items()})

  def scalar(perturbations):
    logits = model.apply({**variables, "perturbations": perturbations}, x_BHWC, train=False)
    return scalar_fn(logits)

  grads = traverse_util.flatten_dict(jax.grad(scalar)(zeros))
  return {n: taps[paths[n]] for n in names}, {n: grads[paths[n]] for n in names}


__all__ = [
    "MODELS", "DTYPES", "create_model", "from_config", "init_variables", "model_variables", "count_params",
    "read_features", "feature_shapes", "feature_names", "feature_gradients", "ResNet", "VGG", "MLP", "SmallCNN",
]
