"""Training state and optimiser."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from saliency_jax import models
from saliency_jax.config_checks import require_non_negative, require_positive


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, and so everything a checkpoint holds."""

  step: jax.Array
  params: Any
  batch_stats: Any  # {} for models without BatchNorm
  opt_state: Any

  @property
  def variables(self) -> dict:
    """What `model.apply` takes at inference."""
    return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}


def make_optimizer(train_config) -> optax.GradientTransformation:
  """SGD with PyTorch's semantics.

  optax's trace is `buf = momentum * buf + grad; update = -lr * buf`, which is torch.optim.SGD
  with dampening 0 and nesterov off. torch's weight decay adds `wd * param` to the gradient
  before the momentum buffer, hence `add_decayed_weights` first in the chain.
  """
  require_positive("train.learning_rate", train_config.learning_rate)
  require_non_negative("train.momentum", train_config.momentum)
  require_non_negative("train.weight_decay", train_config.weight_decay)
  sgd = optax.sgd(train_config.learning_rate, momentum=train_config.momentum or None)
  if train_config.weight_decay:
    return optax.chain(optax.add_decayed_weights(train_config.weight_decay), sgd)
  return sgd


def init_state(model, optimizer: optax.GradientTransformation, key: jax.Array,
               input_shape=(1, 32, 32, 3)) -> TrainState:
  """A fresh state. Pure, so `jax.jit(init_state, out_shardings=...)` builds it in place
  on the devices and `jax.eval_shape` gives its shapes for a checkpoint restore."""
  variables = models.init_variables(model, key, input_shape)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=optimizer.init(params))
