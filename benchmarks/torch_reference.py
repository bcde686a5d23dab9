"""The straightforward PyTorch way of computing saliency, timed on CPU: the reference to beat.

  pip install -e '.[bench]'
  python benchmarks/torch_reference.py --model=resnet18 --batch_size=8 --steps=100
  python benchmarks/torch_reference.py --model=vgg16 --batch_size=32 --methods=gradient,train_step

Models: torchvision's `resnet18(num_classes=10)` with the CIFAR stem (3x3 stride-1 conv, no bias,
max-pool kept) and `vgg16(num_classes=10)`, in eval() mode, with torchvision's initialisation; and
`user_cnn`, a researcher's own small CNN (user_cnn.py: five 3x3 convs, three max-pools, two linear
layers; torch's default initialisation), whose Flax twin the JAX side runs. They
are written here in plain torch.nn with torchvision's layout and parameter names, since torchvision's
PyPI wheels link against the CUDA build of torch and fail to import beside the CPU wheel; a working
torchvision is used instead when `--arch_source=torchvision` (or `auto` and it imports).

Methods, for a batch x (NCHW float32, random) and random targets:
  gradient              one forward and backward of the batch; d logit[target] / d x.
  integrated_gradients  baseline 0, alphas i/(steps-1) for i < steps; `chunk` path points per forward
                        (chunk * B images; default: the whole path in one forward), the interpolated batch
                        a leaf with requires_grad, target logits summed, .backward(), input gradients
                        accumulated, averaged over the path and multiplied by (x - baseline).
  train_step            train() mode, cross-entropy, backward, SGD(lr 1e-3, momentum 0.9) step: what
                        benchmarks/train_throughput.py times in JAX.
The captum references that attribution_throughput.py times (`captum_integrated_gradients`,
`captum_smoothgrad`) are functions here too; they need captum (pip install -e '.[bench]').
For the attribution methods the parameters are frozen (requires_grad False), so backward computes only
input gradients, as jax.grad with respect to the input does; `--param_grads` leaves them trainable
(weight gradients are computed and accumulated too: the fully naive way).

images/s counts the B images attributed (or trained on) per call; for integrated gradients
`fwd_bwd_images_per_sec` also counts the B * steps path images that pass forward and backward.

torch is imported inside the functions, so this module imports without it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

MODELS = ("resnet18", "vgg16", "user_cnn")
METHODS = ("gradient", "integrated_gradients", "train_step")
# torchvision's cfgs["D"]: channel counts, "M" for a 2x2/2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _torchvision_models():
  """torchvision.models, or None where torchvision is missing or fails to import (CUDA/CPU mismatch)."""
  try:
    import torchvision
    return torchvision.models
  except Exception:  # ImportError, or RuntimeError "operator torchvision::nms does not exist".
    return None


def _init_like_torchvision(model) -> None:
  from torch import nn
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      if m.bias is not None:
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.ones_(m.weight)
      nn.init.zeros_(m.bias)


def _plain_resnet18(num_classes: int, stem: str = "3x3"):
  """torchvision.models.resnet18 (BasicBlock, [2, 2, 2, 2]) with the CIFAR stem (3x3/1) or, with
  stem='7x7', torchvision's own (7x7/2, padding 3); same module names."""
  import torch
  from torch import nn

  class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.relu = nn.ReLU(inplace=True)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.downsample = None
      if stride != 1 or inplanes != planes:
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
      identity = x if self.downsample is None else self.downsample(x)
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      out += identity
      return self.relu(out)

  class ResNet18(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False) if stem == "7x7" else nn.Conv2d(3, 64, 3, 1, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.relu = nn.ReLU(inplace=True)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      inplanes = 64
      for stage in range(4):
        planes = 64 * 2**stage
        blocks = [BasicBlock(inplanes, planes, 2 if stage > 0 else 1), BasicBlock(planes, planes, 1)]
        setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        inplanes = planes
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(torch.flatten(self.avgpool(x), 1))

  model = ResNet18()
  _init_like_torchvision(model)
  return model


def _plain_vgg16(num_classes: int):
  """torchvision.models.vgg16 (configuration D, no BatchNorm); same module names."""
  import torch
  from torch import nn

  class VGG16(nn.Module):
    def __init__(self):
      super().__init__()
      layers, channels = [], 3
      for item in VGG16_LAYOUT:
        if item == "M":
          layers.append(nn.MaxPool2d(2, 2))
        else:
          layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
          channels = item
      self.features = nn.Sequential(*layers)
      self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
      self.classifier = nn.Sequential(
          nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(0.5),
          nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.5),
          nn.Linear(4096, num_classes))

    def forward(self, x):
      return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

  model = VGG16()
  _init_like_torchvision(model)
  for m in model.modules():
    if isinstance(m, nn.Linear):
      nn.init.normal_(m.weight, 0, 0.01)
      nn.init.zeros_(m.bias)
  return model


def build_model(name: str, num_classes: int = 10, arch_source: str = "auto", stem: str = "3x3"):
  """(model in eval() mode, 'torchvision' or 'torch.nn'). arch_source: 'auto', 'torchvision' or 'torch.nn'.
  stem (resnet18): '3x3' the CIFAR stem, '7x7' torchvision's standard one, unchanged."""
  from torch import nn
  if name not in MODELS:
    raise ValueError(f"model={name!r} is not allowed; choose one of: {', '.join(map(repr, MODELS))}")
  if arch_source not in ("auto", "torchvision", "torch.nn"):
    raise ValueError(f"arch_source={arch_source!r} is not allowed; choose one of: 'auto', 'torchvision', 'torch.nn'")
  if name == "user_cnn":
    if __package__:  # imported as benchmarks.torch_reference (the tests)
      from . import user_cnn  # pylint: disable=g-import-not-at-top
    else:  # a script's sibling
      import user_cnn  # pylint: disable=g-import-not-at-top
    return user_cnn.torch_model(num_classes).eval(), "torch.nn"
  tv = None if arch_source == "torch.nn" else _torchvision_models()
  if arch_source == "torchvision" and tv is None:
    raise RuntimeError("arch_source='torchvision' but torchvision does not import beside this torch")
  if tv is None:
    model = _plain_resnet18(num_classes, stem) if name == "resnet18" else _plain_vgg16(num_classes)
    source = "torch.nn"
  else:
    model = getattr(tv, name)(num_classes=num_classes)
    if name == "resnet18" and stem != "7x7":
      model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
      nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    source = "torchvision"
  return model.eval(), source


def randomize_batchnorm(net, biases: bool = False) -> None:
  """BatchNorm scales, biases and running statistics drawn at random (and with `biases` every other
  layer's bias), so every tensor an import maps matters to the outputs."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.1)
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 2.0)
      elif biases and getattr(module, "bias", None) is not None:
        module.bias.normal_(0, 0.1)


def gradient(model, x, target):
  """d logits[b, target[b]] / d x[b]: one forward and backward of the batch."""
  x = x.detach().clone().requires_grad_(True)
  logits = model(x)
  logits.gather(1, target[:, None]).sum().backward()
  return x.grad


def integrated_gradients(model, x, target, steps: int, chunk: int = 0, baseline=None):
  """(x - baseline) * mean over alphas i/(steps-1) of the gradient at baseline + alpha (x - baseline).

  chunk: path points per forward (chunk * B images); 0 or >= steps: the whole path in one forward.
  """
  import torch
  if steps < 2:
    raise ValueError(f"steps={steps} must be at least 2")
  chunk = steps if chunk <= 0 else min(chunk, steps)
  baseline = torch.zeros_like(x) if baseline is None else baseline
  b, image_shape = x.shape[0], x.shape[1:]
  diff = (x - baseline).detach()
  alphas = torch.arange(steps, dtype=x.dtype) / (steps - 1)
  total = torch.zeros_like(x)
  for start in range(0, steps, chunk):
    a = alphas[start:start + chunk]
    c = a.shape[0]
    # Alpha-major: path point k of image j is row k * B + j.
    inputs = (baseline[None] + a.view(c, 1, 1, 1, 1) * diff[None]).reshape(c * b, *image_shape)
    inputs.requires_grad_(True)
    logits = model(inputs)
    logits.gather(1, target.repeat(c)[:, None]).sum().backward()
    total += inputs.grad.view(c, b, *image_shape).sum(0)
  return total / steps * diff


def captum_integrated_gradients(model, x, target, steps: int, chunk: int = 0):
  """captum's IntegratedGradients, baseline 0, alphas i/(steps-1) ('riemann_trapezoid': the path
  points of the 'original' rule); `chunk` path points per forward (captum's internal_batch_size
  counts images: chunk * B), 0: the whole path in one forward."""
  from captum.attr import IntegratedGradients
  return IntegratedGradients(model).attribute(x, baselines=0.0, target=target, n_steps=steps,
                                              method="riemann_trapezoid",
                                              internal_batch_size=chunk * x.shape[0] if chunk > 0 else None)


def captum_smoothgrad(model, x, target, samples: int, chunk: int = 0, stdev: float = 0.15):
  """captum's NoiseTunnel over Saliency (the signed gradient, abs=False): the mean gradient over
  `samples` noisy copies, `chunk` samples per forward (nt_samples_batch_size), 0: all at once."""
  from captum.attr import NoiseTunnel, Saliency
  return NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=samples,
                                                nt_samples_batch_size=chunk if chunk > 0 else None,
                                                stdevs=stdev, target=target, abs=False)


def _time_calls(fn, repeats: int) -> list[float]:
  fn()  # warm-up: allocator, oneDNN primitive caches
  seconds = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    seconds.append(time.perf_counter() - t0)
  return seconds


def measure(model_name: str, batch_size: int, steps: int = 50, chunk: int = 0, repeats: int = 3,
            methods=("gradient", "integrated_gradients"), param_grads: bool = False, threads: int = 0,
            arch_source: str = "auto", seed: int = 0) -> dict:
  """Images/s of each method (one warm-up call, then `repeats` timed calls) plus the setup.

  Returns dict(model, batch_size, steps, chunk, repeats, param_grads, torch_version, num_threads,
  arch_source, num_params, max_rss_mib, <method>=dict(images_per_sec, seconds_per_call, ...)).
  """
  import torch
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f"methods {unknown} are not allowed; choose from: {', '.join(map(repr, METHODS))}")
  if threads > 0:
    torch.set_num_threads(threads)
  torch.manual_seed(seed)
  model, source = build_model(model_name, arch_source=arch_source)
  generator = torch.Generator().manual_seed(seed)
  x = torch.randn(batch_size, 3, 32, 32, generator=generator)
  target = torch.randint(0, 10, (batch_size,), generator=generator)
  chunk = steps if chunk <= 0 else min(chunk, steps)
  result = dict(model=model_name, batch_size=batch_size, steps=steps, chunk=chunk, repeats=repeats,
                param_grads=param_grads, torch_version=torch.__version__, num_threads=torch.get_num_threads(),
                arch_source=source, num_params=sum(p.numel() for p in model.parameters()))

  def attribution(fn):
    def call():
      model.zero_grad(set_to_none=True)
      return fn()
    return call

  for method in methods:
    if method == "train_step":
      continue  # last: it changes the weights and the mode
    for p in model.parameters():
      p.requires_grad_(param_grads)
    model.eval()
    if method == "gradient":
      seconds = _time_calls(attribution(lambda: gradient(model, x, target)), repeats)
      path_images = batch_size
    else:
      seconds = _time_calls(attribution(lambda: integrated_gradients(model, x, target, steps, chunk)), repeats)
      path_images = batch_size * steps
    total = sum(seconds)
    result[method] = dict(images_per_sec=round(batch_size * repeats / total, 3),
                          fwd_bwd_images_per_sec=round(path_images * repeats / total, 1),
                          seconds_per_call=round(statistics.median(seconds), 4), seconds=[round(s, 4) for s in seconds])
  if "train_step" in methods:
    for p in model.parameters():
      p.requires_grad_(True)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
      optimizer.zero_grad(set_to_none=True)
      loss = torch.nn.functional.cross_entropy(model(x), target)
      loss.backward()
      optimizer.step()
      return loss

    seconds = _time_calls(train_step, repeats)
    total = sum(seconds)
    result["train_step"] = dict(images_per_sec=round(batch_size * repeats / total, 1),
                                fwd_bwd_images_per_sec=round(batch_size * repeats / total, 1),
                                seconds_per_call=round(statistics.median(seconds), 4),
                                seconds=[round(s, 4) for s in seconds])
    model.eval()
  result["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  return result


def format_table(result: dict) -> str:
  lines = [f"torch {result['torch_version']}, {result['num_threads']} threads, {result['model']} "
           f"({result['arch_source']}, {result['num_params']:,} parameters), batch {result['batch_size']}, "
           f"param_grads={result['param_grads']}",
           "| method | steps | chunk | s/call | images/s | fwd+bwd images/s |",
           "|---|---|---|---|---|---|"]
  for method in METHODS:
    if method in result:
      r = result[method]
      ig = method == "integrated_gradients"
      lines.append(f"| {method} | {result['steps'] if ig else '-'} | {result['chunk'] if ig else '-'} | "
                   f"{r['seconds_per_call']:.3f} | {r['images_per_sec']:.2f} | {r['fwd_bwd_images_per_sec']:.1f} |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="resnet18", choices=MODELS)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--steps", type=int, default=50, help="Integrated-gradients path points (>= 2).")
  parser.add_argument("--chunk", type=int, default=0, help="Path points per forward; 0: the whole path at once.")
  parser.add_argument("--repeats", type=int, default=3, help="Timed calls per method, after one warm-up call.")
  parser.add_argument("--methods", default="gradient,integrated_gradients",
                      help=f"Comma-separated, from: {','.join(METHODS)}.")
  parser.add_argument("--param_grads", action="store_true",
                      help="Keep parameters trainable during attribution (weight gradients computed too).")
  parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0: torch's default.")
  parser.add_argument("--arch_source", default="auto", choices=("auto", "torchvision", "torch.nn"))
  parser.add_argument("--json", default="", help="Also write the result here.")
  args = parser.parse_args(argv)
  methods = tuple(m for m in args.methods.split(",") if m)
  result = measure(args.model, args.batch_size, args.steps, args.chunk, args.repeats, methods,
                   param_grads=args.param_grads, threads=args.threads, arch_source=args.arch_source)
  print(format_table(result))
  print(json.dumps(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
