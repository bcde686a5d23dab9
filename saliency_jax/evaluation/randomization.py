"""Model-parameter randomisation (docs/evaluation.md, "Sanity checks"): which parameters change at
each step.

A layer is a top-level submodule that holds parameters (resnet18: `fc`, `layer4_1`, ...,
`layer1_0`, `bn1`, `conv1`; vgg16: `classifier_6` ... `features_0`), listed logits first by
`layer_order`. Each layer gets its re-initialised values once, from its own key
(`fold_in(key, index in that order)`), so step k of the cascade and the independent
randomisation of layer k use the same numbers. A randomisation schedule is a boolean matrix
`which_SL` (step x layer); step 0 is the trained model:

- cascading: step s re-initialises the first s layers (logits down to layer s);
- independent: step s re-initialises layer s alone.

`mix(params, random_params, which_L)` is a pure function of a row of that matrix, so a study
maps it over the steps inside one compiled program (`lax.map`, a chunk of models at a time
vectorised) instead of building and compiling one model per step in Python. BatchNorm running
statistics are not parameters and are kept; `params` (scale and bias) are re-initialised.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax import models
from saliency_jax.config_checks import require_choice, require_positive

MODES = ("cascading", "independent")
DISTRIBUTIONS = ("truncated_normal", "uniform")


def layer_order(model: nn.Module, variables, input_shape) -> list[str]:
  """The model's parameterised top-level layers, in reverse order of execution (logits first).

  Read from the calls of one abstract forward pass (nothing is computed), because a restored
  checkpoint's dicts come back sorted by name, not in the order the layers run.
  """
  params = variables["params"]
  order: list[str] = []

  def record(next_fun, args, kwargs, context):
    path = context.module.path
    if path and path[0] in params and path[0] not in order:
      order.append(path[0])
    return next_fun(*args, **kwargs)

  def forward(v, x):
    with nn.intercept_methods(record):
      return model.apply(v, x, train=False)

  jax.eval_shape(forward, models.model_variables(variables),
                 jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  return order[::-1]


def random_params(key: jax.Array, params, order: list[str], distribution: str = "truncated_normal",
                  scale: float = 0.01) -> dict[str, Any]:
  """Re-initialised values for every layer of `order`: a truncated normal (std `scale` before
  truncation at 2 std, as TensorFlow's initialiser the paper used) or a uniform with the same std
  (U(-sqrt(3) scale, sqrt(3) scale)). Layer i's key is `fold_in(key, i)`, one draw per leaf."""
  require_choice("sanity.distribution", distribution, DISTRIBUTIONS)
  require_positive("sanity.scale", scale)
  out = {}
  for i, name in enumerate(order):
    leaves, treedef = jax.tree.flatten(params[name])
    keys = jax.random.split(jax.random.fold_in(key, i), len(leaves))
    if distribution == "truncated_normal":
      draw = lambda k, p: scale * jax.random.truncated_normal(k, -2.0, 2.0, p.shape, p.dtype)
    else:
      bound = scale * np.sqrt(3.0)
      draw = lambda k, p: jax.random.uniform(k, p.shape, p.dtype, -bound, bound)
    out[name] = jax.tree.unflatten(treedef, [draw(k, p) for k, p in zip(keys, leaves)])
  return out


def schedule(mode: str, num_layers: int) -> np.ndarray:
  """(num_layers + 1, num_layers) booleans: which layers are re-initialised at each step."""
  require_choice("sanity randomisation mode", mode, MODES)
  steps = np.arange(num_layers + 1)[:, None]
  layers = np.arange(num_layers)[None, :]
  return layers < steps if mode == "cascading" else layers == steps - 1


def mix(params, randomized: dict[str, Any], order: list[str], which_L) -> dict[str, Any]:
  """`params` with layer `order[i]` taken from `randomized` where `which_L[i]`; a select, so
  `which_L` may be traced (one program for every step) and kept layers stay bit-identical."""
  out = dict(params)
  for i, name in enumerate(order):
    out[name] = jax.tree.map(lambda r, p: jnp.where(which_L[i], r, p), randomized[name], params[name])
  return out
