"""The leaderboard's timing (evaluation/timing.py): every method timed the way the stages run it."""

import jax
import numpy as np
import pytest

from saliency_jax import models
from saliency_jax.attribution import registry
from saliency_jax.evaluation import timing
from saliency_jax.stages.runner import ModelRunner


def test_each_method_is_timed_per_image_and_its_rows_read_back(tmp_path):
  model = models.create_model("small_cnn")
  variables = models.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
  runner = ModelRunner(model, variables, lambda x: x.astype(np.float32) / 255, batch_size=8,
                       devices=jax.devices()[:1])
  specs = [registry.parse("gradient"), registry.parse("integrated_gradients(steps=64)")]
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  rows = timing.time_methods(runner, specs, "logit", images, "small_cnn", rounds=2)
  timing.TABLE.write(tmp_path / timing.FILE, rows)
  back = timing.TABLE.frame(tmp_path / timing.FILE)
  assert len(back) == 2 and list(back["method_label"]) == ["gradient", "integrated_gradients(steps=64)"]
  assert (back["seconds_min"] <= back["seconds_per_image"]).all()
  assert (back["seconds_per_image"] <= back["seconds_max"]).all()
  # 64 path points are 64 forward and backward passes against one: on any machine, and under load
  # (measured here: 0.4 against 17 ms per image), the second is slower by far more than the noise.
  gradient, ig = back["seconds_per_image"]
  assert ig > 4 * gradient
  assert set(back["images"]) == {8} and set(back["rounds"]) == {2} and back["machine"].iloc[0]


def test_no_rounds_is_refused():
  with pytest.raises(ValueError, match="rounds=0"):
    timing.time_methods(None, [], "logit", np.zeros((1, 32, 32, 3), np.uint8), "m", rounds=0)
