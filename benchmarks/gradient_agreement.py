"""Input gradients of an imported ResNet-18 against torch's, in float32 and float64 (docs/extending.md).

  pip install -e '.[bench]'
  python benchmarks/gradient_agreement.py                    # 64x64 and 224x224, seeds 1-3: a few minutes
  python benchmarks/gradient_agreement.py --blocks=8         # images of flat 8x8 blocks: exact max-pool ties

torchvision's layout (the standard 7x7/2 stem, 1000 classes; benchmarks/torch_reference.py's torch.nn
copy where torchvision does not import) with random weights and non-trivial BatchNorm statistics,
imported with `models.torch_import`; two random images per seed. For each size and seed: the largest
difference, relative to the largest float64 gradient, (and how many entries differ by more than
1e-3 of it) between torch's float32 gradient and JAX's (plain `jax.grad` of `model.apply`), and of
each, and of the library's `attribution.gradient` (the CPU path), against the float64 gradient
(torch's), and JAX's float64 gradient against it (the conventions: equal to ~2e-15 if they agree). Float32 decisions at near-ties (a ReLU input or a
max-pool window's top two values within rounding) are what moves a float32 gradient away from it.
"""

from __future__ import annotations

import argparse

import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="64,224")
  parser.add_argument("--seeds", default="1,2,3")
  parser.add_argument("--blocks", type=int, default=0, help="> 0: images of flat blocks this many pixels wide, "
                      "so max-pool windows hold exact ties (as flat regions of real images do)")
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_x64", True)  # float64 where asked for; float32 programs stay float32
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  import torch_reference  # pylint: disable=g-import-not-at-top
  from saliency_jax import attribution  # pylint: disable=g-import-not-at-top
  from saliency_jax.models import torch_import  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  net, source = torch_reference.build_model("resnet18", num_classes=1000, arch_source="auto", stem="7x7")
  torch_reference.randomize_batchnorm(net)
  net.eval()
  state = {k: v.clone() for k, v in net.state_dict().items()}
  target = np.array([3, 7])

  def torch_grad(x, dtype):
    model = net.to(dtype)
    xt = torch.from_numpy(x).to(dtype).requires_grad_(True)
    model(xt).gather(1, torch.from_numpy(target)[:, None]).sum().backward()
    return xt.grad.double().numpy()

  def jax_grad(x, size, dtype):
    model, variables = torch_import.from_torch(state, "resnet18", num_classes=1000, stem="7x7",
                                               input_shape=(1, size, size, 3), dtype=dtype)
    variables = jax.tree.map(lambda a: a.astype(dtype), variables)
    score = lambda x: jnp.take_along_axis(model.apply(variables, x, train=False), jnp.asarray(target)[:, None], 1).sum()
    return np.asarray(jax.jit(jax.grad(score))(jnp.asarray(x.transpose(0, 2, 3, 1), dtype)), np.float64).transpose(0, 3, 1, 2)

  def library_grad(x, size):
    model, variables = torch_import.from_torch(state, "resnet18", num_classes=1000, stem="7x7",
                                               input_shape=(1, size, size, 3))
    g = jax.jit(lambda f, x: attribution.gradient(f, x, jnp.asarray(target)))(
        attribution.ModelForward(model, variables), jnp.asarray(x.transpose(0, 2, 3, 1)))
    return np.asarray(g, np.float64).transpose(0, 3, 1, 2)

  print(f"torch model: {source}; torch {torch.__version__}, jax {jax.__version__}")
  print("| size | seed | torch f32 vs JAX f32 | torch f32 vs f64 | JAX f32 (jax.grad) vs f64 | library gradient vs f64 "
        "| JAX f64 vs torch f64 |")
  print("|---|---|---|---|---|---|---|")
  for size in map(int, args.sizes.split(",")):
    for seed in map(int, args.seeds.split(",")):
      rng = np.random.default_rng(seed)
      if args.blocks:
        b = args.blocks
        x = rng.standard_normal((2, 3, size // b, size // b)).astype(np.float32).repeat(b, 2).repeat(b, 3)
      else:
        x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
      t32, t64 = torch_grad(x, torch.float32), torch_grad(x, torch.float64)
      j32, j64, lib = jax_grad(x, size, jnp.float32), jax_grad(x, size, jnp.float64), library_grad(x, size)
      scale = np.abs(t64).max()
      cell = lambda a, b: f"{np.abs(a - b).max() / scale:.1e} ({int((np.abs(a - b) > 1e-3 * scale).sum())})"
      print(f"| {size} | {seed} | {cell(t32, j32)} | {cell(t32, t64)} | {cell(j32, t64)} | {cell(lib, t64)} "
            f"| {cell(j64, t64)} |", flush=True)


if __name__ == "__main__":
  main()
