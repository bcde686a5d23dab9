"""Attribution speed and memory: JAX against captum, interleaved in one run on the same machine.

  pip install -e '.[bench]'     # torch + captum (CPU wheels: docs/performance.md, "Running the benchmarks")
  python benchmarks/attribution_throughput.py                   # CPU-sized: user_cnn, resnet18, vgg16
  python benchmarks/attribution_throughput.py --models=user_cnn --methods=integrated_gradients \
      --batch_size=32 --steps=64 --plain_jit --rounds=7         # a researcher's own jax.jit (issue 30)
  python benchmarks/attribution_throughput.py --models=resnet18 --methods=integrated_gradients \\
      --batch_size=250 --steps=100 --chunk_sizes=10,5 --nounchunked --notorch --nowarmup --fresh_processes --rounds=2 \\
      --compare_with=../before                                  # the single-pixel IG cell, two commits

For each model and method, the variants are: JAX chunked (each of `--chunk_sizes`: path points
or noise samples per vectorised chunk) and unchunked, captum chunked and unchunked; with
`--plain_jit` also "jax plain jit": what a researcher writes first, `jax.jit(lambda x, t:
attribution.integrated_gradients(forward, x, t, ...))` with the weights closed over and no compiler
options, run outside the library's runner (its speed comes from what the package does on import and
at the method's boundary, nothing the researcher wrote); and with
`--compare_with=DIR,...` the same JAX programs from other checkouts' saliency_jax (an earlier
commit's worktree). Each variant runs in its own process, set up once (compiled, one warm-up
call) and then timed one call per round, round-robin over `--rounds` rounds (interleave.py), so
all of them see the same machine load; the table gives the median seconds per call, the process's
peak RSS, XLA's account of the compiled program (arguments + outputs + temporaries), and the
speed relative to captum with the same chunking (its seconds / ours: above 1, JAX is faster).

Models: `resnet18` and `vgg16` are the library's (`attribution.ModelForward`); `user_cnn` is a
researcher's own Flax network (user_cnn.py: plain `nn.Conv`, `nn.max_pool`, `nn.Dense`) handed
to the methods as a plain function `lambda x: model.apply(variables, x)`: whatever speed it
gets, it gets from the library's transform of the forward, not from model code. The torch
twins are torch_reference.py's. Methods: `integrated_gradients` (baseline 0, the
'original' rule's points i/(steps-1); captum 'riemann_trapezoid', the same points) and
`smoothgrad` (of the signed gradient; captum NoiseTunnel over Saliency(abs=False)).
Weights and inputs are random: speed does not depend on them.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

import interleave
import user_cnn

_MODELS = flags.DEFINE_list("models", ["user_cnn", "resnet18", "vgg16"], "user_cnn, resnet18, vgg16.")
_METHODS = flags.DEFINE_list("methods", ["integrated_gradients", "smoothgrad"],
                             "integrated_gradients, smoothgrad.")
_SMOOTHGRAD_MODELS = flags.DEFINE_list("smoothgrad_models", ["user_cnn"],
                                       "The models that smoothgrad runs on (it costs as much as IG).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per call.")
_STEPS = flags.DEFINE_integer("steps", 32, "IG path points; SmoothGrad noise samples.")
_CHUNKS = flags.DEFINE_list("chunk_sizes", ["8"], "Path points (noise samples) per chunk: one chunked variant each.")
_UNCHUNKED = flags.DEFINE_bool("unchunked", True, "Also the variants with the whole path in one chunk.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed calls per variant, one per round.")
_TORCH = flags.DEFINE_bool("torch", True, "Time captum beside (pip install -e '.[bench]').")
_COMPARE = flags.DEFINE_list("compare_with", [], "Other checkouts whose saliency_jax runs the same JAX variants "
                             "(each named jax@ its last folder).")
_WARMUP = flags.DEFINE_bool("warmup", True, "One untimed call per variant first (skip for calls of minutes).")
_FRESH = flags.DEFINE_bool("fresh_processes", False, "A new process for every call (set up, one call, exit), so one "
                           "variant at a time holds memory: for calls of gigabytes (interleave.run).")
_PLAIN = flags.DEFINE_bool("plain_jit", False, "Also time a researcher's own jax.jit of the method (no compiler "
                           "options, weights closed over, no runner): the 'jax plain jit' variants.")
_JSON = flags.DEFINE_string("json", "", "Also write the rows here.")
_WORKER = flags.DEFINE_string("worker", "", "Internal: run one variant as a child (interleave.serve).")

SIGMA = 0.15  # SmoothGrad's noise: a fraction of each image's range (JAX), captum's absolute stdev


def _program_mib(compiled) -> float:
  m = compiled.memory_analysis()
  if m is None:
    return float("nan")
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes) / 2**20


def setup_jax(spec):
  import os  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import saliency_jax  # pylint: disable=g-import-not-at-top
  from saliency_jax import attribution  # pylint: disable=g-import-not-at-top

  b, chunk = spec["batch_size"], spec["chunk_size"] or None
  model, variables = user_cnn.model_and_variables(spec["model"])
  if spec["model"] == "user_cnn":
    make_forward = lambda v: (lambda x: model.apply(v, x))  # a plain function, as a user passes it
  else:
    make_forward = lambda v: attribution.ModelForward(model, v)
  x = jax.random.normal(jax.random.key(1), (b, 32, 32, 3))
  target = jax.random.randint(jax.random.key(2), (b,), 0, 10)
  method = attribution.get(spec["method"])
  if spec["method"] == "integrated_gradients":
    options = dict(steps=spec["steps"], chunk_size=chunk, baseline="zero")
  else:
    options = dict(samples=spec["steps"], chunk_size=chunk, sigma=SIGMA, key=jax.random.key(3))
  if spec.get("plain"):  # a researcher's program: jax.jit of a lambda, the weights closed over, no options
    t0 = time.perf_counter()
    plain = jax.jit(lambda x, t: method(make_forward(variables), x, t, **options))
    compiled = plain.lower(x, target).compile()
    info = dict(compile_s=round(time.perf_counter() - t0, 1), program_mib=round(_program_mib(compiled), 1),
                saliency_jax=str(pathlib.Path(saliency_jax.__file__).parent.parent), jax=jax.__version__,
                compiler_options=None, xla_flags=os.environ.get("XLA_FLAGS", ""))
    return (lambda: plain(x, target).block_until_ready()), info
  xla_options = user_cnn.library_compiler_options()  # what the library's own runs compile with
  t0 = time.perf_counter()
  compiled = jax.jit(lambda v, x, t: method(make_forward(v), x, t, **options),
                     compiler_options=xla_options).lower(variables, x, target).compile()
  info = dict(compile_s=round(time.perf_counter() - t0, 1), program_mib=round(_program_mib(compiled), 1),
              saliency_jax=str(pathlib.Path(saliency_jax.__file__).parent.parent), jax=jax.__version__,
              compiler_options=xla_options)
  return (lambda: compiled(variables, x, target).block_until_ready()), info


def setup_torch(spec):
  import torch  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model, _ = torch_reference.build_model(spec["model"], arch_source="torch.nn")
  for p in model.parameters():  # input gradients only, as jax.grad with respect to the input
    p.requires_grad_(False)
  generator = torch.Generator().manual_seed(0)
  b = spec["batch_size"]
  x = torch.randn(b, 3, 32, 32, generator=generator)
  target = torch.randint(0, 10, (b,), generator=generator)
  if spec["method"] == "integrated_gradients":
    call = lambda: torch_reference.captum_integrated_gradients(model, x, target, spec["steps"], spec["chunk_size"])
  else:
    call = lambda: torch_reference.captum_smoothgrad(model, x, target, spec["steps"], spec["chunk_size"], SIGMA)
  import captum  # pylint: disable=g-import-not-at-top
  return call, dict(torch=torch.__version__, captum=captum.__version__, threads=torch.get_num_threads())


def variants(model: str, method: str) -> list[interleave.Variant]:
  base = dict(model=model, method=method, batch_size=_BATCH.value, steps=_STEPS.value, warmup=_WARMUP.value)
  chunkings = [(f"chunk {c}", int(c)) for c in _CHUNKS.value] + ([("unchunked", 0)] if _UNCHUNKED.value else [])
  out = []
  for label, chunk in chunkings:
    spec = dict(base, chunk_size=chunk)
    out.append(interleave.Variant(f"jax, {label}", dict(spec, framework="jax")))
    if _PLAIN.value:
      out.append(interleave.Variant(f"jax plain jit, {label}", dict(spec, framework="jax", plain=True)))
    if _TORCH.value:
      out.append(interleave.Variant(f"captum, {label}", dict(spec, framework="torch")))
    for checkout in _COMPARE.value:
      tag = pathlib.Path(checkout).resolve().name
      out.append(interleave.Variant(f"jax@{tag}, {label}", dict(spec, framework="jax"), checkout=checkout))
  return out


def table(model: str, method: str, results: dict[str, interleave.Result]) -> tuple[list[str], list[dict]]:
  lines = [f"\n### {model}, {method}: batch {_BATCH.value}, {_STEPS.value} "
           f"{'path points' if method == 'integrated_gradients' else 'samples'}",
           "| variant | median s/call | min-max s | images/s | peak RSS MiB | program MiB | speed vs captum |",
           "|---|---|---|---|---|---|---|"]
  rows = []
  for name, r in results.items():
    label = name.split(", ")[-1]
    ref = results.get(f"captum, {label}")
    ratio = ref.median / r.median if ref and not name.startswith("captum") else float("nan")
    if r.error:
      lines.append(f"| {name} | failed: {r.error} | | | | | |")
    else:
      lines.append(f"| {name} | {r.median:.3f} | {min(r.seconds):.3f}-{max(r.seconds):.3f} | "
                   f"{_BATCH.value / r.median:.2f} | {r.max_rss_mib:.0f} | "
                   f"{interleave.fmt(r.info.get('program_mib', float('nan')), 0)} | "
                   f"{interleave.fmt(ratio) + 'x' if ratio == ratio else '-'} |")
    rows.append(dict(model=model, method=method, variant=name, batch_size=_BATCH.value, steps=_STEPS.value,
                     chunk_size=int(label.split()[-1]) if label.startswith("chunk ") else 0, seconds=r.seconds,
                     median_s=r.median,
                     max_rss_mib=r.max_rss_mib, vs_captum=ratio, info=r.info, error=r.error))
  return lines, rows


def main(_):
  if _WORKER.value:
    interleave.serve_worker(_WORKER.value, dict(jax=setup_jax, torch=setup_torch))
    return
  machine = interleave.describe_machine()
  print(interleave.machine_line(machine, f"{_ROUNDS.value} rounds"))
  rows = []
  for model in _MODELS.value:
    for method in _METHODS.value:
      if method == "smoothgrad" and model not in _SMOOTHGRAD_MODELS.value:
        continue
      results = interleave.run(__file__, variants(model, method), _ROUNDS.value, fresh=_FRESH.value)
      lines, group = table(model, method, results)
      print("\n".join(lines), flush=True)
      rows += group
  print(f"\nload average at the end: {interleave.describe_machine()['loadavg']}")
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(dict(machine=machine, rows=rows), indent=1))


if __name__ == "__main__":
  app.run(main)
