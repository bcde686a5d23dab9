"""A researcher's own CIFAR CNN, written once in plain Flax and once in plain torch.nn.

The benchmarks hand the Flax one to the attribution methods as a plain function,
`lambda x: model.apply(variables, x)` (not `ModelForward`): whatever speed it gets comes from the
library's transform of the forward, not from model code. Five 3x3 convolutions with ReLU, three
2x2 max-pools, two dense layers; each framework's default initialisation.
"""

from __future__ import annotations

HIDDEN = 256


def flax_model(num_classes: int = 10):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class UserCNN(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(32, (3, 3))(x))
      x = nn.relu(nn.Conv(32, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = nn.relu(nn.Conv(64, (3, 3))(x))
      x = nn.relu(nn.Conv(64, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = nn.relu(nn.Conv(128, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = nn.relu(nn.Dense(HIDDEN)(x.reshape(x.shape[0], -1)))
      return nn.Dense(num_classes)(x)

  return UserCNN()


def model_and_variables(name: str):
  """`user_cnn` (the Flax model above) or one of the library's models by name, with its initial
  variables for 32x32x3 images (key 0): what every benchmark explains or times."""
  import jax  # pylint: disable=g-import-not-at-top
  from saliency_jax import models  # pylint: disable=g-import-not-at-top

  if name == "user_cnn":
    model = flax_model()
    return model, model.init(jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3)))
  model = models.create_model(name)
  return model, models.init_variables(model, jax.random.key(0), (1, 32, 32, 3))


def library_compiler_options() -> dict | None:
  """The XLA options this checkout's library compiles its maps with, so a benchmark times and
  compares what the library runs (checkouts before `compiler_options`: the gradient-only options,
  or none)."""
  try:
    from saliency_jax import lowering  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if hasattr(lowering, "compiler_options"):
    return lowering.compiler_options()
  return getattr(lowering, "gradient_compiler_options", dict)() or None


def torch_model(num_classes: int = 10):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class UserCNN(nn.Module):

    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
          nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
      self.classifier = nn.Sequential(nn.Linear(128 * 4 * 4, HIDDEN), nn.ReLU(inplace=True),
                                      nn.Linear(HIDDEN, num_classes))

    def forward(self, x):
      return self.classifier(torch.flatten(self.features(x), 1))

  return UserCNN()
