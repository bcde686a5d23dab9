"""Training speed: the library's compiled step against PyTorch's, interleaved in one run.

  pip install -e '.[bench]'     # torch (CPU wheels: docs/performance.md, "Running the benchmarks")
  python benchmarks/train_throughput.py                          # resnet18 at batch 64, 128, 256
  python benchmarks/train_throughput.py --models=vgg16 --batch_sizes=128 --notorch

For each model and batch size the variants are the JAX step and the PyTorch step (and with
`--compare_with=DIR,...` the JAX step of other checkouts' saliency_jax). Each runs in its own
process, set up once (compiled, one warm-up call), then timed one call of `--steps` steps per
round, round-robin over `--rounds` rounds (interleave.py), so both see the same machine load.
Printed: the median seconds per step, images/s, the process's peak RSS, and the JAX speed
relative to PyTorch's (its seconds / ours: above 1, JAX is faster).

JAX: the step `train_and_evaluate` runs (`Steps.train_epoch`, data resident on the devices as
uint8, each batch gathered and normalised there; on CPU one dispatch per step, `--loop`),
SGD lr 1e-3, momentum 0.9. PyTorch: torch_reference.py's train step (train() mode, cross-entropy,
backward, SGD lr 1e-3, momentum 0.9) on a resident float32 batch.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

import interleave

_MODELS = flags.DEFINE_list("models", ["resnet18"], "resnet18, vgg16 (both libraries); small_cnn, mlp: --notorch.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["64", "128", "256"], "Global batch sizes.")
_STEPS = flags.DEFINE_integer("steps", 2, "Training steps per timed call.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed calls per variant, one per round.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "JAX compute dtype.")
_LOOP = flags.DEFINE_enum("loop", "auto", ["auto", "scan", "python"], "JAX epoch loop (see train.epoch_loop).")
_TORCH = flags.DEFINE_bool("torch", True, "Time PyTorch beside (pip install -e '.[bench]').")
_COMPARE = flags.DEFINE_list("compare_with", [], "Other checkouts whose saliency_jax runs the same JAX step "
                             "(each named jax@ its last folder).")
_JSON = flags.DEFINE_string("json", "", "Also write the rows here.")
_WORKER = flags.DEFINE_string("worker", "", "Internal: run one variant as a child (interleave.serve).")


def setup_jax(spec):
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import saliency_jax  # pylint: disable=g-import-not-at-top
  from saliency_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from saliency_jax import models  # pylint: disable=g-import-not-at-top
  from saliency_jax.training import init_state, make_optimizer, parallel  # pylint: disable=g-import-not-at-top
  from saliency_jax.training.steps import Steps  # pylint: disable=g-import-not-at-top
  from saliency_jax.training.train import epoch_loop  # pylint: disable=g-import-not-at-top

  b = spec["batch_size"]
  mesh = parallel.make_mesh()
  loop = epoch_loop(spec["loop"])
  model = models.create_model(spec["model"], dtype=spec["dtype"])
  optimizer = make_optimizer(ml_collections.ConfigDict(dict(learning_rate=1e-3, momentum=0.9, weight_decay=0.0)))
  normalization = data_lib.Normalization(jnp.full(3, 0.5), jnp.full(3, 0.25))
  steps = Steps(model, optimizer, normalization, b, b)
  n = b * spec["steps"]  # one epoch of exactly `steps` steps per call
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  with jax.set_mesh(mesh):
    state = jax.jit(lambda key: init_state(model, optimizer, key), out_shardings=parallel.replicated(mesh))(
        jax.random.key(0))
    x, y = parallel.put_replicated((images, labels), mesh)
    t0 = time.perf_counter()
    steps.compile_train_epoch(state, x, y, 0, loop)
    compile_s = time.perf_counter() - t0
  box = dict(state=state, epoch=0)

  def call():
    with jax.set_mesh(mesh):
      box["state"], metrics = steps.train_epoch(box["state"], x, y, 0, box["epoch"], loop)
      jax.block_until_ready(metrics)
    box["epoch"] += 1

  info = dict(compile_s=round(compile_s, 1), loop=loop, devices=mesh.size, jax=jax.__version__,
              saliency_jax=str(pathlib.Path(saliency_jax.__file__).parent.parent))
  return call, info


def setup_torch(spec):
  import torch  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  # On a GPU when there is one (launch/gpu_check.sh), with cuDNN's autotuner, as a PyTorch user runs.
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.backends.cudnn.benchmark = True
  model, _ = torch_reference.build_model(spec["model"], arch_source="torch.nn")
  model.train().to(device)
  optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
  generator = torch.Generator().manual_seed(0)
  b = spec["batch_size"]
  x = torch.randn(b, 3, 32, 32, generator=generator).to(device)
  target = torch.randint(0, 10, (b,), generator=generator).to(device)

  def call():
    for _ in range(spec["steps"]):
      optimizer.zero_grad(set_to_none=True)
      torch.nn.functional.cross_entropy(model(x), target).backward()
      optimizer.step()
    if device == "cuda":
      torch.cuda.synchronize()

  return call, dict(torch=torch.__version__, threads=torch.get_num_threads(), device=device)


def variants(model: str, batch: int) -> list[interleave.Variant]:
  spec = dict(model=model, batch_size=batch, steps=_STEPS.value, dtype=_DTYPE.value, loop=_LOOP.value)
  out = [interleave.Variant("jax", dict(spec, framework="jax"))]
  if _TORCH.value:
    out.append(interleave.Variant("torch", dict(spec, framework="torch")))
  for checkout in _COMPARE.value:
    out.append(interleave.Variant(f"jax@{pathlib.Path(checkout).resolve().name}", dict(spec, framework="jax"),
                                  checkout=checkout))
  return out


def main(_):
  if _WORKER.value:
    interleave.serve_worker(_WORKER.value, dict(jax=setup_jax, torch=setup_torch))
    return
  machine = interleave.describe_machine()
  print(interleave.machine_line(machine, f"{_ROUNDS.value} rounds of {_STEPS.value} steps"))
  print("| model | batch | variant | median s/step | min-max s/step | images/s | peak RSS MiB | speed vs torch |")
  print("|---|---|---|---|---|---|---|---|")
  rows = []
  for model in _MODELS.value:
    for batch in map(int, _BATCHES.value):
      results = interleave.run(__file__, variants(model, batch), _ROUNDS.value)
      ref = results.get("torch")
      for name, r in results.items():
        per_step = [s / _STEPS.value for s in r.seconds]
        median = r.median / _STEPS.value
        ratio = ref.median / r.median if ref and name != "torch" else float("nan")
        if r.error:
          print(f"| {model} | {batch} | {name} | failed: {r.error} | | | | |", flush=True)
        else:
          print(f"| {model} | {batch} | {name} | {median:.3f} | {min(per_step):.3f}-{max(per_step):.3f} | "
                f"{batch / median:.1f} | {r.max_rss_mib:.0f} | {interleave.fmt(ratio) + 'x' if ratio == ratio else '-'} |",
                flush=True)
        rows.append(dict(model=model, batch_size=batch, variant=name, steps=_STEPS.value, seconds_per_step=per_step,
                         median_s_per_step=median, max_rss_mib=r.max_rss_mib, vs_torch=ratio, info=r.info,
                         error=r.error))
  print(f"\nload average at the end: {interleave.describe_machine()['loadavg']}")
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(dict(machine=machine, rows=rows), indent=1))


if __name__ == "__main__":
  app.run(main)
