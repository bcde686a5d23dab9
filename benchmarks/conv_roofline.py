"""What bounds an attribution run on this CPU: each model's convolutions alone, JAX against PyTorch.

  pip install -e '.[bench]'
  python benchmarks/conv_roofline.py                       # user_cnn, resnet18, vgg16 at batch 128

Integrated gradients and SmoothGrad are a forward pass and an input gradient per path point or
sample; almost all of their arithmetic is the model's convolutions. This runs exactly those
convolutions (the shapes are read from the model's own jaxpr at `--batch_size`, the batch one
chunk of `attribution_throughput.py` feeds them: 8 points x 16 images) as separate programs: the
forward and the input gradient of each (the kernel is not differentiated, as in every attribution
map), in the library's CPU forms (`lowering.cpu_lowering`, `compiler_options`) against PyTorch's
`conv2d` and `torch.nn.grad.conv2d_input` (what autograd calls) on the same shapes. Interleaved
rounds (interleave.py); printed: seconds per pass over all the convolutions, GFLOP/s (2 x
multiply-adds, padding included) and PyTorch's seconds / ours. Where that ratio is about 1, no
attribution method built on these convolutions can run much faster than captum's at equal work:
what is left is captum's own overhead outside the convolutions. (The shapes come from the
model's top-level jaxpr and the bodies of jit/remat/custom_vjp, not `cond` branches; an
asymmetrically padded convolution is padded once outside PyTorch's timed call.)
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

import interleave

_MODELS = flags.DEFINE_list("models", ["user_cnn", "resnet18", "vgg16"], "Models whose convolutions to run.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Images per convolution (one chunk of 8 points x 16 images).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed calls per variant, one per round.")
_JSON = flags.DEFINE_string("json", "", "Also write the rows here.")
_WORKER = flags.DEFINE_string("worker", "", "Internal: run one variant as a child (interleave.serve).")


def conv_shapes(model_name: str, batch: int) -> list[dict]:
  """Every 2-D convolution of the model's forward pass at `batch`, in order (repeats kept)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import user_cnn  # pylint: disable=g-import-not-at-top

  model, variables = user_cnn.model_and_variables(model_name)
  jaxpr = jax.make_jaxpr(lambda x: model.apply(variables, x))(jnp.zeros((batch, 32, 32, 3)))
  out = []

  def visit(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        out.append(dict(lhs=list(lhs), rhs=list(rhs), strides=list(eqn.params["window_strides"]),
                        padding=[list(p) for p in eqn.params["padding"]]))
      for v in eqn.params.values():  # the bodies of jit, remat, custom_vjp ...
        if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
          visit(v.jaxpr)
        elif hasattr(v, "eqns"):
          visit(v)

  visit(jaxpr.jaxpr)
  return out


def gflop(shapes: list[dict]) -> float:
  """Forward plus input gradient, 2 x multiply-adds each, padding included."""
  total = 0.0
  for s in shapes:
    (b, h, w, _), (kh, kw, ci, co) = s["lhs"], s["rhs"]
    ho = (h + sum(s["padding"][0]) - kh) // s["strides"][0] + 1
    wo = (w + sum(s["padding"][1]) - kw) // s["strides"][1] + 1
    total += 2 * 2 * b * ho * wo * co * ci * kh * kw
  return total / 1e9


def setup_jax(spec):
  import jax  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  from saliency_jax import lowering  # pylint: disable=g-import-not-at-top

  programs = []
  for i, s in enumerate(spec["shapes"]):
    x = jax.random.normal(jax.random.key(i), s["lhs"])
    k = jax.random.normal(jax.random.key(1000 + i), s["rhs"]) * 0.05

    def conv(x, k, s=s):
      return lax.conv_general_dilated(x, k, tuple(s["strides"]), [tuple(p) for p in s["padding"]],
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))

    fast = lowering.cpu_lowering(conv)
    y = jax.eval_shape(fast, x, k)
    g = jax.random.normal(jax.random.key(2000 + i), y.shape)
    # The forward as a gradient program runs it (a first layer's form differs in a forward pass alone).
    forward = jax.jit(lambda x, k, fast=fast: jax.vjp(lambda x: fast(x, k), x)[0]).lower(x, k).compile(
        lowering.compiler_options())
    input_grad = jax.jit(lambda x, k, g, fast=fast: jax.vjp(lambda x: fast(x, k), x)[1](g)[0]).lower(
        x, k, g).compile(lowering.compiler_options())
    programs.append((forward, input_grad, x, k, g))

  def call():
    for forward, input_grad, x, k, g in programs:
      forward(x, k).block_until_ready()
      input_grad(x, k, g).block_until_ready()

  return call, dict(jax=jax.__version__, convolutions=len(programs))


def setup_torch(spec):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  work = []
  for s in spec["shapes"]:
    b, h, w, ci = s["lhs"]
    kh, kw, _, co = s["rhs"]
    (top, bottom), (left, right) = s["padding"]
    symmetric = top == bottom and left == right
    x = torch.randn(b, ci, h, w)
    k = torch.randn(co, ci, kh, kw) * 0.05
    xp = x if symmetric else F.pad(x, (left, right, top, bottom))
    pad = (top, left) if symmetric else (0, 0)
    with torch.no_grad():
      y = F.conv2d(xp, k, stride=tuple(s["strides"]), padding=pad)
    work.append((xp, k, torch.randn_like(y), tuple(s["strides"]), pad))

  def call():
    with torch.no_grad():
      for xp, k, g, stride, pad in work:
        F.conv2d(xp, k, stride=stride, padding=pad)
        torch.nn.grad.conv2d_input(xp.shape, k, g, stride=stride, padding=pad)

  return call, dict(torch=torch.__version__, threads=torch.get_num_threads(), convolutions=len(work))


def main(_):
  if _WORKER.value:
    interleave.serve_worker(_WORKER.value, dict(jax=setup_jax, torch=setup_torch))
    return
  machine = interleave.describe_machine()
  print(interleave.machine_line(machine, f"{_ROUNDS.value} rounds, batch {_BATCH.value}"))
  print("| model | convolutions | GFLOP (forward + input gradient) | JAX s | JAX GFLOP/s | PyTorch s | "
        "PyTorch GFLOP/s | PyTorch s / JAX s |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  rows = []
  for model in _MODELS.value:
    shapes = conv_shapes(model, _BATCH.value)
    spec = dict(model=model, shapes=shapes)
    results = interleave.run(__file__, [interleave.Variant("jax", dict(spec, framework="jax")),
                                        interleave.Variant("torch", dict(spec, framework="torch"))], _ROUNDS.value)
    jx, th, work = results["jax"], results["torch"], gflop(shapes)
    print(f"| {model} | {len(shapes)} | {work:.1f} | {jx.median:.3f} | {work / jx.median:.0f} | {th.median:.3f} | "
          f"{work / th.median:.0f} | {interleave.fmt(th.median / jx.median)}x |", flush=True)
    rows.append(dict(model=model, batch=_BATCH.value, gflop=work, jax_s=jx.seconds, torch_s=th.seconds,
                     errors=[jx.error, th.error]))
  print(f"\nload average at the end: {interleave.describe_machine()['loadavg']}")
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(dict(machine=machine, rows=rows), indent=1))


if __name__ == "__main__":
  app.run(main)
