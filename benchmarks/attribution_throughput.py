"""Attribution throughput (images/s) and memory, per model and method, on whatever device JAX sees.

  python benchmarks/attribution_throughput.py                      # resnet18, vgg16 at batch 256
  python benchmarks/attribution_throughput.py --batch_size=8 --torch   # CPU-sized, with PyTorch IG side by side

Each method runs as the library runs it: `jax.jit(method)(ModelForward(model, variables), x, target)`,
timed after compilation over `--repeats` calls. Memory is XLA's own account of the compiled
program (arguments + outputs + temporaries), which is what bounds the batch on a GPU; on GPU
the device's peak bytes in use are printed too. `--torch` times the straightforward PyTorch
integrated gradients (a batch of interpolated inputs, one backward pass; see
torch_reference.py) on the same machine, in a separate process, and prints JAX / PyTorch.
Weights are random: speed does not depend on them.
"""

import json
import pathlib
import subprocess
import sys
import time

import jax
from absl import app, flags

from saliency_jax import attribution, models

_MODELS = flags.DEFINE_list("models", ["resnet18", "vgg16"], "Models.")
_METHODS = flags.DEFINE_list("methods", ["gradient", "integrated_gradients", "guided_backprop"],
                             "Registered attribution methods.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per call.")
_STEPS = flags.DEFINE_integer("ig_steps", 100, "Integrated-gradients path points.")
_CHUNK = flags.DEFINE_integer("chunk_size", 0, "IG path points per vectorised chunk (0: the whole path at once).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed calls per method.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Model compute dtype.")
_TORCH = flags.DEFINE_bool("torch", False, "Also time PyTorch integrated gradients on this CPU (pip install '.[bench]').")
_JSON = flags.DEFINE_string("json", "", "Also write the rows here.")


def _options(method):
  if method == "integrated_gradients":
    return dict(steps=_STEPS.value, chunk_size=_CHUNK.value or None, baseline="zero")
  return {}


def _memory_mib(compiled) -> float:
  m = compiled.memory_analysis()
  if m is None:
    return float("nan")
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  return total / 2**20


def bench_jax(model_name, method):
  model = models.create_model(model_name, dtype=_DTYPE.value)
  variables = models.init_variables(model, jax.random.key(0), (1, 32, 32, 3))
  forward = attribution.ModelForward(model, variables)
  x = jax.random.normal(jax.random.key(1), (_BATCH.value, 32, 32, 3))
  target = jax.random.randint(jax.random.key(2), (_BATCH.value,), 0, 10)
  fn = attribution.get(method)
  options = _options(method)
  t0 = time.perf_counter()
  compiled = jax.jit(lambda f, x, t: fn(f, x, t, **options)).lower(forward, x, target).compile()
  compile_s = time.perf_counter() - t0
  compiled(forward, x, target).block_until_ready()  # first dispatch
  t0 = time.perf_counter()
  for _ in range(_REPEATS.value):
    out = compiled(forward, x, target)
  out.block_until_ready()
  seconds = (time.perf_counter() - t0) / _REPEATS.value
  row = dict(framework="jax", model=model_name, method=method, batch_size=_BATCH.value,
             steps=options.get("steps"), chunk_size=options.get("chunk_size"), dtype=_DTYPE.value,
             device=jax.devices()[0].device_kind, compile_s=round(compile_s, 1), seconds=round(seconds, 3),
             images_per_sec=round(_BATCH.value / seconds, 2), program_mib=round(_memory_mib(compiled), 1))
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    row["device_peak_mib"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
  return row


def bench_torch(model_name):
  script = pathlib.Path(__file__).with_name("torch_reference.py")
  out = subprocess.run([sys.executable, str(script), f"--model={model_name}", f"--batch_size={_BATCH.value}",
                        f"--steps={_STEPS.value}", f"--repeats={_REPEATS.value}"], check=True, capture_output=True,
                       text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(_):
  rows = []
  header = f"{'framework':9s} {'model':9s} {'method':22s} {'batch':>5s} {'images/s':>10s} {'s/call':>8s} {'MiB':>8s}"
  print(header)
  for model_name in _MODELS.value:
    for method in _METHODS.value:
      row = bench_jax(model_name, method)
      rows.append(row)
      print(f"jax       {model_name:9s} {method:22s} {row['batch_size']:5d} {row['images_per_sec']:10.2f} "
            f"{row['seconds']:8.3f} {row['program_mib']:8.1f}", flush=True)
    if _TORCH.value:
      ref = bench_torch(model_name)
      for method in ("gradient", "integrated_gradients"):
        speed = ref[method]["images_per_sec"]
        row = dict(framework="torch", model=model_name, method=method, batch_size=_BATCH.value,
                   steps=ref["steps"] if method == "integrated_gradients" else None, images_per_sec=speed,
                   seconds=ref[method]["seconds_per_call"], torch=ref["torch_version"], threads=ref["num_threads"],
                   max_rss_mib=ref["max_rss_mib"])
        rows.append(row)
        print(f"torch     {model_name:9s} {method:22s} {_BATCH.value:5d} {speed:10.2f} {row['seconds']:8.3f}",
              flush=True)
        ours = [r for r in rows if r["framework"] == "jax" and r["model"] == model_name and r["method"] == method]
        if ours:
          print(f"  jax / torch, {model_name} {method}: {ours[0]['images_per_sec'] / speed:.2f}x", flush=True)
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  app.run(main)
