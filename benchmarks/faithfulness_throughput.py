"""Faithfulness throughput: the JAX metrics against Quantus's, same CPU, one run, equal numbers.

  pip install -e '.[compare]'
  python benchmarks/faithfulness_throughput.py --images=1000                 # both metrics, small_cnn
  python benchmarks/faithfulness_throughput.py --images=200 --metrics=road

One model per metric, the same weights on both sides: a torch.nn net with its default (seeded)
initialisation, imported into Flax by `models.torch_import.from_torch`. Maps for 5 "methods" per
image: gradient, |gradient|, gradient x input, |gradient| x |input| (JAX, logit of the target, mean
over channels) and a random map; targets: the model's predictions.

- pixel_flipping (RGB images): the deletion curve of the target's softmax probability, removed
  values replaced by 0.0 (the dataset mean after normalisation), most relevant first.
  Quantus: `PixelFlipping(features_in_step=C*H*W/48 = 64, perturb_baseline=0.0, normalise=False,
  abs=False)`. Quantus counts features per channel value (the (B,1,H,W) map is broadcast to
  (B,C,H,W)) but requires features_in_step to divide H*W, so on RGB 32x32 images no step is a whole
  number of pixels: 48 steps of 21 1/3 pixels. JAX: `deletion_curve(steps=48)`, the same number of
  forward passes (49 with point 0); at every third point (k = 3j) exactly 64 j whole pixels are gone
  in both, and those 16 points are compared.
- road (one-channel 32x32 images, a one-channel small_cnn): ROAD's accuracy after removing
  10, 20, ..., 90% of the pixels most relevant first and imputing them by noisy linear imputation,
  noise 0 (so both sides are deterministic). Quantus: `ROAD(noise=0.0, normalise=False, abs=False)`
  (a sparse LU solve per image and percentage); JAX: `road(...)` (one batched CG solve). Quantus 0.6's
  ROAD indexes the channel-broadcast map's C*H*W order as pixels and fails on RGB images, hence one
  channel. Compared: the accuracy per percentage (Quantus returns the batch mean).

Printed per metric: images/s of each (one image = its 5 maps' curves), the ratio, the ratio per
method (the two sides run interleaved, method by method, the first side alternating) and its median,
and the largest difference on the compared numbers; then both metrics together. JAX is timed after
compilation (the compile time is printed apart), Quantus after a warm-up batch. Threads: both
libraries use the machine's cores unless --threads is set (torch.set_num_threads and XLA's flags).
Run it on an otherwise idle machine: under oversubscription torch's thread pool slows far more than
XLA's (measured here: a small_cnn forward 3.5x slower under load 4 on 2 cores, XLA's 1.3x), which
inflates the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

METHODS = ("gradient", "absolute_gradient", "gradient_x_input", "abs_gradient_x_abs_input", "random")


def torch_small_cnn(channels=(32, 64), num_classes: int = 10, image_hw=(32, 32), in_channels: int = 3):
  """The torch.nn twin of `models.small.SmallCNN`: conv1, conv2 (3x3, padding 1, bias) each with ReLU
  and a 2x2/2 max-pool, then `out` = Linear on torch.flatten of the NCHW map (the layout that
  `torch_import.from_torch(..., 'small_cnn')` reads)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class SmallCNN(nn.Module):

    def __init__(self):
      super().__init__()
      c_in = in_channels
      for i, c in enumerate(channels, start=1):
        setattr(self, f"conv{i}", nn.Conv2d(c_in, c, 3, padding=1))
        c_in = c
      scale = 2 ** len(channels)
      self.out = nn.Linear(c_in * (image_hw[0] // scale) * (image_hw[1] // scale), num_classes)

    def forward(self, x):
      for i in range(1, len(channels) + 1):
        x = torch.nn.functional.max_pool2d(torch.relu(getattr(self, f"conv{i}")(x)), 2)
      return self.out(torch.flatten(x, 1))

  return SmallCNN()


def shared_model(name: str = "small_cnn", seed: int = 0, in_channels: int = 3):
  """(torch net in eval mode, flax model, variables) with the same weights."""
  import torch  # pylint: disable=g-import-not-at-top

  from saliency_jax.models import torch_import  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  if name == "small_cnn":
    net = torch_small_cnn(in_channels=in_channels)
  else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_reference  # pylint: disable=g-import-not-at-top
    net, _ = torch_reference.build_model(name, arch_source="torch.nn")
  model, variables = torch_import.from_torch(net.state_dict(), name, input_shape=(1, 32, 32, in_channels))
  return net.eval(), model, variables


def method_maps(forward, x_BHWC, target_B, seed: int = 0) -> dict[str, np.ndarray]:
  """(B, H, W) maps per method: the gradient family of the logit, mean over channels; and random."""
  import jax  # pylint: disable=g-import-not-at-top

  from saliency_jax import attribution  # pylint: disable=g-import-not-at-top
  maps = {}
  for name in METHODS[:-1]:
    fn = jax.jit(attribution.get(name))
    maps[name] = np.asarray(fn(forward, x_BHWC, target_B).mean(-1))
  maps["random"] = np.random.default_rng(seed).standard_normal(x_BHWC.shape[:3]).astype(np.float32)
  return maps


def quantus_pixel_flipping(net, x_BCHW, target_B, maps_BHW, steps: int, batch_size: int) -> np.ndarray:
  """Quantus's curves (B, steps): softmax probability after each step, baseline 0.0."""
  import quantus  # pylint: disable=g-import-not-at-top
  features = x_BCHW[0].size  # Quantus counts channel values
  metric = quantus.PixelFlipping(features_in_step=features // steps, perturb_baseline=0.0, normalise=False, abs=False,
                                 disable_warnings=True, display_progressbar=False)
  scores = metric(model=net, x_batch=x_BCHW, y_batch=target_B, a_batch=maps_BHW[:, None], channel_first=True,
                  softmax=True, device="cpu", batch_size=batch_size)
  return np.asarray(scores, np.float64)


def quantus_road(net, x_BCHW, target_B, maps_BHW, percentages, batch_size: int) -> np.ndarray:
  """Quantus's ROAD accuracy (P,): the mean correctness per percentage over all images, noise 0.

  One Quantus call per batch: Quantus 0.6's ROAD computes every batch of a call but reports the
  first batch's accuracy only (`custom_postprocess` reads `evaluation_scores[0]`, one entry per
  batch), so a single call on 1,000 images at batch 100 returns the accuracy of images 0-99.
  """
  import quantus  # pylint: disable=g-import-not-at-top
  metric = quantus.ROAD(percentages=list(percentages), noise=0.0, normalise=False, abs=False, disable_warnings=True,
                        display_progressbar=False)
  correct = np.zeros(len(percentages))
  for i in range(0, len(x_BCHW), batch_size):
    part = slice(i, i + batch_size)
    scores = metric(model=net, x_batch=x_BCHW[part], y_batch=target_B[part], a_batch=maps_BHW[part, None],
                    channel_first=True, device="cpu", batch_size=batch_size)
    correct += np.asarray([scores[p] for p in percentages], np.float64) * len(x_BCHW[part])
  return correct / len(x_BCHW)


def _metric_sides(metric: str, args):
  """(maps per method, run_jax(map) -> numbers, run_quantus(map) -> numbers, compare(j, q) -> max |diff|,
  compile seconds) for one metric."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from saliency_jax import attribution, lowering  # pylint: disable=g-import-not-at-top
  from saliency_jax.evaluation import faithfulness  # pylint: disable=g-import-not-at-top
  channels = 3 if metric == "pixel_flipping" else 1
  net, model, variables = shared_model(args.model, in_channels=channels)
  forward = attribution.ModelForward(model, variables)
  rng = np.random.default_rng(0)
  x_BCHW = rng.standard_normal((args.images, channels, 32, 32)).astype(np.float32)
  x_BHWC = jnp.asarray(x_BCHW.transpose(0, 2, 3, 1))
  with torch.no_grad():
    target = net(torch.from_numpy(x_BCHW)).argmax(-1).numpy()
  maps = method_maps(forward, x_BHWC, jnp.asarray(target))
  bs = args.batch_size
  options = lowering.compiler_options()  # as the library's faithfulness stage compiles (BatchRunner)
  if metric == "pixel_flipping":
    call = jax.jit(lambda f, x, m, t: faithfulness.deletion_curve(f, x, m, t, steps=args.steps,
                                                                   replacement="mean").scores,
                   compiler_options=options)
    quantus_call = lambda m: quantus_pixel_flipping(net, x_BCHW, target, m, args.steps, bs)
    shared = np.arange(3, args.steps + 1, 3)  # JAX point k = 3j <-> Quantus step index 3j - 1
    finish = lambda parts: np.concatenate(parts)
    compare = lambda j, q: float(np.abs(j[:, shared] - q[:, shared - 1]).max())
  else:
    percentages = tuple(range(10, 100, 10))
    call = jax.jit(lambda f, x, m, t: faithfulness.road(f, x, m, t, percentages=percentages).correct,
                   compiler_options=options)
    quantus_call = lambda m: quantus_road(net, x_BCHW, target, m, percentages, bs)
    finish = lambda parts: np.concatenate(parts).mean(0)
    compare = lambda j, q: float(np.abs(j - q).max())

  t0 = time.perf_counter()
  jax.block_until_ready(call(forward, x_BHWC[:bs], jnp.asarray(maps["random"][:bs]), jnp.asarray(target[:bs])))
  compile_s = time.perf_counter() - t0
  if metric == "pixel_flipping":  # Quantus's warm-up
    quantus_pixel_flipping(net, x_BCHW[:bs], target[:bs], maps["random"][:bs], args.steps, bs)
  else:
    quantus_road(net, x_BCHW[:bs], target[:bs], maps["random"][:bs], (10,), bs)

  def run_jax(m):
    # Every batch dispatched back to back, read once after the last: no host round trip per batch.
    parts = [call(forward, x_BHWC[i:i + bs], jnp.asarray(m[i:i + bs]), jnp.asarray(target[i:i + bs]))
             for i in range(0, args.images, bs)]
    return finish([np.asarray(p) for p in parts])

  return maps, run_jax, quantus_call, compare, compile_s


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=100, help="Images per JAX call and per Quantus batch.")
  parser.add_argument("--model", default="small_cnn", choices=("small_cnn", "resnet18", "vgg16"),
                      help="pixel_flipping's model; road runs the one-channel small_cnn.")
  parser.add_argument("--metrics", default="pixel_flipping,road", help="Comma-separated: pixel_flipping, road.")
  parser.add_argument("--steps", type=int, default=48, help="Curve steps, 3 x a divisor of 1024; JAX runs the same.")
  parser.add_argument("--threads", type=int, default=0, help="Threads for both libraries; 0: their defaults.")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  metrics = [m for m in args.metrics.split(",") if m]
  if not metrics or set(metrics) - {"pixel_flipping", "road"}:
    raise SystemExit(f"--metrics={args.metrics}: choose from pixel_flipping, road (comma-separated)")
  if args.steps % 3 or 1024 % (args.steps // 3):
    raise SystemExit(f"--steps={args.steps} must be 3 x a divisor of 1024: Quantus's features_in_step = 3072 / steps "
                     "must divide 1024, and every third point must be whole pixels")
  if args.threads:  # before jax starts
    eigen = "false" if args.threads == 1 else "true"
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen={eigen} "
                               f"intra_op_parallelism_threads={args.threads}").strip()
  import torch  # pylint: disable=g-import-not-at-top
  if args.threads:
    torch.set_num_threads(args.threads)

  result = dict(images=args.images, batch_size=args.batch_size, threads=args.threads or "default", metrics={})
  for metric in metrics:
    maps, run_jax, run_quantus, compare, compile_s = _metric_sides(metric, args)
    # Interleaved per method, the first side alternating, so a change in the machine's load falls on
    # both sides alike; per-method ratios and their median are printed too.
    outputs, seconds = {}, {}
    for i, (name, m) in enumerate(maps.items()):
      sides = [("jax", run_jax), ("quantus", run_quantus)]
      for side, fn in (sides if i % 2 == 0 else sides[::-1]):
        t0 = time.perf_counter()
        outputs[(name, side)] = fn(m)
        seconds[(name, side)] = time.perf_counter() - t0
    jax_s = sum(seconds[(n, "jax")] for n in maps)
    quantus_s = sum(seconds[(n, "quantus")] for n in maps)
    per_method = {n: round(seconds[(n, "quantus")] / seconds[(n, "jax")], 2) for n in maps}
    diffs = {n: compare(outputs[(n, "jax")], outputs[(n, "quantus")]) for n in maps}
    ties = {n: int(sum(len(np.unique(m[i])) < m[i].size for i in range(len(m)))) for n, m in maps.items()}
    r = dict(model=args.model if metric == "pixel_flipping" else "small_cnn (1 channel)", methods=list(maps),
             steps=args.steps if metric == "pixel_flipping" else None, jax_compile_s=round(compile_s, 2),
             jax_s=round(jax_s, 2), quantus_s=round(quantus_s, 2), jax_images_per_s=round(args.images / jax_s, 1),
             quantus_images_per_s=round(args.images / quantus_s, 1), speedup=round(quantus_s / jax_s, 1),
             speedup_per_method=per_method, speedup_median=round(float(np.median(list(per_method.values()))), 2),
             seconds_per_method={f"{n} {side}": round(v, 2) for (n, side), v in seconds.items()},
             max_abs_diff=diffs, maps_with_tied_values=ties)
    result["metrics"][metric] = r
    print(f"{metric}: {r['model']}, {args.images} images x {len(maps)} maps, batch {args.batch_size}: "
          f"JAX {r['jax_images_per_s']} images/s (compile {r['jax_compile_s']} s), "
          f"Quantus {r['quantus_images_per_s']} images/s, Quantus/JAX = {r['speedup']}x "
          f"(per method, median {r['speedup_median']}x: {per_method}); max |diff|: {max(diffs.values()):.2e}",
          flush=True)
  jax_s = sum(r["jax_s"] for r in result["metrics"].values())
  quantus_s = sum(r["quantus_s"] for r in result["metrics"].values())
  result.update(jax_s=round(jax_s, 2), quantus_s=round(quantus_s, 2), speedup=round(quantus_s / jax_s, 1))
  print(f"all metrics: JAX {result['jax_s']} s, Quantus {result['quantus_s']} s, Quantus/JAX = {result['speedup']}x")
  print(json.dumps(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
