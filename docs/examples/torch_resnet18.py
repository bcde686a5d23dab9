"""A ResNet-18 trained in PyTorch, imported and explained: either stem, 10 or 1000 classes.

    python docs/examples/torch_resnet18.py --weights=resnet18.pt --stem=7x7 --num_classes=1000
    python docs/examples/torch_resnet18.py                        # random weights of both kinds

`--weights`: a state_dict saved by `torch.save(net.state_dict(), path)` of torchvision's
`resnet18` (the standard 7x7/2 stem, `--stem=7x7`) or of its CIFAR variant (conv1 a 3x3/1 conv,
`--stem=3x3`); `--maxpool=False` for a CIFAR ResNet trained without the stem's max-pool, which a
state_dict does not record. Without `--weights`, the example saves random weights of torchvision's
layout first (torchvision's own model where it imports; its PyPI wheels need the CUDA build of
torch, so otherwise benchmarks/torch_reference.py's torch.nn copy, the same module names).
"""

import argparse
import os
import sys
import tempfile

import jax
import numpy as np
import torch

from saliency_jax import attribution as A
from saliency_jax.models import torch_import


def random_weights(path: str, stem: str, num_classes: int) -> None:
  """torchvision's resnet18 layout with random weights, saved as a state_dict at `path`."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  net, _ = torch_reference.build_model("resnet18", num_classes=num_classes, arch_source="auto", stem=stem)
  torch.save(net.state_dict(), path)


def explain(path: str, stem: str, num_classes: int, size: int, maxpool: bool = True):
  """The gradient, integrated gradients and GradCAM on 'layer4' of the imported model, for a batch
  of `size` x `size` images normalised as the model's inputs were (here: random)."""
  model, variables = torch_import.from_torch(path, "resnet18", num_classes=num_classes, stem=stem, maxpool=maxpool,
                                             input_shape=(1, size, size, 3))
  forward = A.ModelForward(model, variables)
  # torch's images are NCHW; the model here takes NHWC: x_nchw.transpose(0, 2, 3, 1).
  x_nchw = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
  x = jax.numpy.asarray(x_nchw.transpose(0, 2, 3, 1))
  target = A.select_targets(forward, x)

  @jax.jit  # one compiled program for the three maps (op by op, each would compile every primitive)
  def all_maps(forward, x, target):
    return {"gradient": A.gradient(forward, x, target),
            "integrated_gradients": A.integrated_gradients(forward, x, target, baseline="zero", steps=16, chunk_size=8),
            "gradcam": A.gradcam(forward, x, target, layer="layer4")}

  maps = all_maps(forward, x, target)
  for name, m in maps.items():
    print(f"stem {stem}, {num_classes} classes, {size}x{size}: {name} {m.shape}")
  return forward, x, target, maps


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--weights", default="", help="a state_dict (.pt/.pth) of torchvision's resnet18 layout")
  parser.add_argument("--stem", default="7x7", choices=("3x3", "7x7"))
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--maxpool", default="True", choices=("True", "False"))
  parser.add_argument("--size", type=int, default=0, help="image size (default: 224 for 7x7, 32 for 3x3)")
  args = parser.parse_args(argv)
  runs = [(args.weights, args.stem, args.num_classes)] if args.weights else [("", "7x7", 1000), ("", "3x3", 10)]
  out = []
  with tempfile.TemporaryDirectory() as tmp:
    for weights, stem, num_classes in runs:
      if not weights:
        weights = os.path.join(tmp, f"resnet18_{stem}_{num_classes}.pt")
        random_weights(weights, stem, num_classes)
      size = args.size or (224 if stem == "7x7" else 32)
      out.append(explain(weights, stem, num_classes, size, maxpool=args.maxpool == "True"))
  return out


if __name__ == "__main__":
  main()
