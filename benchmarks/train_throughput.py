"""Training throughput (images/s) of one model on whatever devices JAX sees.

  python benchmarks/train_throughput.py --model=resnet18 --batch_size=256 --steps=10

Measures the same compiled step `train_and_evaluate` uses (data resident on the devices,
batches gathered there), after compilation, and prints a table row and a JSON line
(`--json=FILE` also writes it).
"""

import functools
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from saliency_jax import data as data_lib
from saliency_jax import models
from saliency_jax.training import init_state, make_optimizer, parallel
from saliency_jax.training.steps import Steps
from saliency_jax.training.train import epoch_loop

_MODEL = flags.DEFINE_string("model", "resnet18", "Model name.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (one epoch of this many steps).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_LOOP = flags.DEFINE_enum("loop", "auto", ["auto", "scan", "python"], "Epoch loop (see train.epoch_loop).")
_JSON = flags.DEFINE_string("json", "", "Also write the result here.")


def main(_):
  mesh = parallel.make_mesh()
  loop = epoch_loop(_LOOP.value)
  model = models.create_model(_MODEL.value, dtype=_DTYPE.value)
  optimizer = make_optimizer(ml_collections.ConfigDict(dict(learning_rate=1e-3, momentum=0.9, weight_decay=0.0)))
  normalization = data_lib.Normalization(jnp.full(3, 0.5), jnp.full(3, 0.25))
  steps = Steps(model, optimizer, normalization, _BATCH.value, _BATCH.value)
  n = _BATCH.value * _STEPS.value
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  with jax.set_mesh(mesh):
    state = jax.jit(functools.partial(init_state, model, optimizer), out_shardings=parallel.replicated(mesh))(
        jax.random.key(0))
    x, y = parallel.put_replicated((images, labels), mesh)
    t0 = time.perf_counter()
    steps.compile_train_epoch(state, x, y, 0, loop)
    compile_s = time.perf_counter() - t0
    state, metrics = steps.train_epoch(state, x, y, 0, 0, loop)  # warm-up (first dispatch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    state, metrics = steps.train_epoch(state, x, y, 0, 1, loop)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - t0
  result = dict(model=_MODEL.value, batch_size=_BATCH.value, dtype=_DTYPE.value, loop=loop, steps=_STEPS.value,
                devices=mesh.size, device=jax.devices()[0].device_kind, compile_s=round(compile_s, 2),
                seconds=round(seconds, 3), images_per_sec=round(n / seconds, 1))
  print(f"| {result['model']} | {result['device']} x{result['devices']} | {result['dtype']} | "
        f"{result['batch_size']} | {result['loop']} | {result['images_per_sec']:.1f} img/s | "
        f"compile {result['compile_s']} s |")
  print(json.dumps(result))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
