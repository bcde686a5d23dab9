"""Training: optax SGD under `jax.jit`, data-parallel over every device, orbax checkpoints."""

from saliency_jax.training.state import TrainState, init_state, make_optimizer
from saliency_jax.training.steps import Steps
from saliency_jax.training.train import TrainingDiverged, TrainResult, train_and_evaluate

__all__ = ["TrainState", "TrainResult", "TrainingDiverged", "Steps", "init_state", "make_optimizer",
           "train_and_evaluate"]
