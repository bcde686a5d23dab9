"""The GPU figures in one command (launch/gpu_check.sh): the training step's speed, an
integrated-gradients cell, a short run of the paper's config, and from them the time of the
paper's runs. Writes OUT_DIR/gpu_check.json and prints a table (docs/gpu.md).

  launch/gpu_check.sh [full|tiny] [OUT_DIR]     # full: under 10 min on one H100; tiny: the suite's CPU check

Each stage runs in its own process group, one after another, so each finds the GPU's memory free:

  run         configs/resnet.py on CIFAR-sized synthetic data (or DATA=<image folder>), 2 epochs, then the
              single-pixel grid of one integrated-gradients method (100 steps) and one gradient method on
              1,000 test images at two test jitters: a method's first cell compiles, its second is the
              steady state. Its own compilation cache, in OUT_DIR, starts empty.
  train_step  images/s of the training step, resnet18 and vgg16 at batch 128 and 256, one process per
              model (benchmarks/train_throughput.py; PyTorch beside it when torch is installed).
  rerun       the run again in a fresh workdir, 1 epoch: what the compilation cache leaves to compile.

The stages share a time budget (GPU_CHECK_BUDGET_S; 540 s at full size): a stage that would pass
it is cut, and the table says so. Only the standard library here: this process holds no GPU.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

SIZES = {
    "full": dict(models=("resnet18", "vgg16"), batches=(128, 256), steps=20, rounds=3, model="resnet18",
                 train_per_class=5000, test_per_class=1000, train_batch=256, epochs=2, images=1000, ig_steps=100,
                 budget_s=540),
    # The same stages at a size that runs in seconds on CPU (tests/test_gpu_check.py).
    "tiny": dict(models=("small_cnn",), batches=(16,), steps=2, rounds=1, model="small_cnn", train_per_class=20,
                 test_per_class=10, train_batch=32, epochs=2, images=20, ig_steps=4, budget_s=300),
}
# The paper's runs (docs/evaluation.md, "Models and training"): per model and seed, 200 epochs on
# 50,000 images, then the grid on 10,000 test images x 5 jitters: 2 IG methods and 3 gradient methods x 2 outputs x 2
# targets. The second target recomputes only the images the model gets wrong; counted in full
# here, so the grid's estimate is an upper bound. 2 models x 3 seeds.
PAPER = dict(epochs=200, train_images=50_000, test_images=10_000, jitters=5, ig_methods=2, gradient_methods=3,
             outputs=2, targets=2, runs_per_model=3)
MEMORY_FRACTION = {"run": "0.90", "rerun": "0.90", "train_step": "0.45"}  # train_step: JAX beside PyTorch


def _run_stage(name: str, command: list[str], out: pathlib.Path, deadline: float) -> dict:
  """`command` in the repository with its own log, killed with its children at the deadline."""
  left = deadline - time.monotonic()
  if left < 20:
    return dict(status="skipped: no time left in the budget")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
         "XLA_PYTHON_CLIENT_MEM_FRACTION": MEMORY_FRACTION.get(name.split(":")[0], "0.90")}
  log = out / f"{name.replace(':', '_')}.log"
  t0 = time.monotonic()
  print(f"gpu_check: {name} ({left:.0f} s left; log: {log})", file=sys.stderr, flush=True)
  with open(log, "w") as f:
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
      code = process.wait(timeout=left)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)  # the stage's children too (the benchmark's workers)
      process.wait()
      return dict(status=f"cut after {left:.0f} s (the budget)", seconds=round(time.monotonic() - t0, 1), log=str(log))
  status = "ok" if code == 0 else f"failed (exit {code}); see {log}"
  return dict(status=status, seconds=round(time.monotonic() - t0, 1), log=str(log))


def _run_flags(size: dict, workdir: pathlib.Path, cache: pathlib.Path, epochs: int) -> list[str]:
  data = os.environ.get("DATA", "")
  ig = f"integrated_gradients(baseline='black', steps={size['ig_steps']}, rule='original')"
  return [
      sys.executable, "-m", "saliency_jax.main", "--config=configs/resnet.py", f"--workdir={workdir}",
      f"--config.compilation_cache={cache}", f"--config.model.name={size['model']}",
      *(["--config.data.source=folder", f"--config.data.path={data}"] if data else
        ["--config.data.source=synthetic", f"--config.data.synthetic_train_per_class={size['train_per_class']}",
         f"--config.data.synthetic_test_per_class={size['test_per_class']}"]),
      f"--config.train.batch_size={size['train_batch']}", f"--config.train.epochs={epochs}",
      f"--config.train.checkpoint_every_epochs={epochs}", "--config.train.tensorboard=False",
      f"--config.single_pixel.max_images={size['images']}",
      "--config.single_pixel.test_jitter=((0.0, 0.0), (0.0, 5.0))",
      f"--config.single_pixel.methods=({ig!r}, 'absolute_gradient')", "--config.single_pixel.targets=predicted",
      "--config.single_pixel.outputs=logit", "--config.single_pixel.examples=0",
  ]


_LOG_FIGURES = {
    "backend": (r"JAX \S+ on (.+)$", str),
    "compile_train_s": (r"compiled the training (?:epoch|step) in ([\d.]+) s", float),
    "stage_train_s": (r"stage train: ([\d.]+) s", float),
    "stage_single_pixel_s": (r"stage single_pixel: ([\d.]+) s", float),
    "programs_compiled": (r"(\d+) programs compiled, \d+ read from the compilation cache", int),
    "programs_from_cache": (r"\d+ programs compiled, (\d+) read from the compilation cache", int),
    "compile_s": (r"read from the compilation cache \(([\d.]+) s in all\)", float),
    "peak_memory_gib": (r"device memory: peak ([\d.]+) GiB", float),
    "memory_limit_gib": (r"device memory: peak [\d.]+ GiB of ([\d.]+) GiB", float),
    "grid_sizes": (r"single_pixel: (\d+ images per call over \d+ device\(s\), \d+ IG path points per chunk)", str),
}


def _read_run(stage: dict, workdir: pathlib.Path) -> dict:
  """The figures of one run of the binary: its log's lines, metrics.csv, the grid's cells."""
  text = pathlib.Path(stage["log"]).read_text() if stage.get("log") else ""
  for key, (pattern, kind) in _LOG_FIGURES.items():
    match = re.search(pattern, text, re.MULTILINE)
    if match:
      stage[key] = kind(match.group(1))
  if (workdir / "metrics.csv").exists():
    with open(workdir / "metrics.csv", newline="") as f:
      stage["epochs"] = [{k: float(v) for k, v in row.items() if k in ("epoch", "epoch_seconds", "images_per_sec",
                                                                         "train_loss")} for row in csv.DictReader(f)]
  results = workdir / "single_pixel" / "results.csv"
  if results.exists():
    with open(results, newline="") as f:
      stage["cells"] = [dict(method=r["method"], jitter=[float(r["test_position_sd"]), float(r["test_colour_sd"])],
                             images=int(r["num_images"]), seconds=float(r["seconds"])) for r in csv.DictReader(f)]
  return stage


def _read_train_step(stage: dict, path: pathlib.Path) -> dict:
  if path.exists():
    stage["rows"] = [dict(model=r["model"], batch_size=r["batch_size"], variant=r["variant"],
                          images_per_s=round(r["batch_size"] / r["median_s_per_step"], 1)
                          if r.get("median_s_per_step") == r.get("median_s_per_step") and not r.get("error") else None,
                          compile_s=r.get("info", {}).get("compile_s"), error=r.get("error", ""))
                     for r in json.loads(path.read_text())["rows"]]
  return stage


def _cell_seconds(run: dict, method: str) -> tuple[float, float] | None:
  """(steady seconds, compile seconds) of `method`'s cells: its second cell, and the first's excess."""
  cells = [c for c in run.get("cells", []) if c["method"] == method]
  if len(cells) < 2:
    return None
  return cells[1]["seconds"], max(cells[0]["seconds"] - cells[1]["seconds"], 0.0)


def estimate(stages: dict, size: dict) -> dict:
  """Hours of the paper's runs, from the figures measured (see PAPER)."""
  run = stages.get("run", {})
  epochs = run.get("epochs")
  ig, grad = _cell_seconds(run, "integrated_gradients"), _cell_seconds(run, "absolute_gradient")
  if not (epochs and ig and grad):
    return dict(status="not enough figures: the run stage did not finish")
  p = PAPER
  train_images = 10 * size["train_per_class"]
  epoch_s = epochs[-1]["epoch_seconds"] * p["train_images"] / train_images  # the last epoch: no compile in it
  cells = p["jitters"] * p["outputs"] * p["targets"]
  n = run["cells"][0]["images"]
  grid_s = p["test_images"] / n * cells * (p["ig_methods"] * ig[0] + p["gradient_methods"] * grad[0])
  compile_s = p["outputs"] * p["targets"] * (p["ig_methods"] * ig[1] + p["gradient_methods"] * grad[1])
  model = size["model"]
  runs = {model: dict(train_h=p["epochs"] * epoch_s / 3600, grid_h=(grid_s + compile_s) / 3600)}
  # vgg16 is not run end to end: resnet18's figures scaled by the ratio of their training steps at
  # the largest batch (an IG path point is a forward and a backward pass, as a training step).
  speed = {r["model"]: r["images_per_s"] for r in stages.get("train_step", {}).get("rows", [])
           if r["variant"] == "jax" and int(r["batch_size"]) == max(size["batches"]) and r["images_per_s"]}
  if model == "resnet18" and "vgg16" in speed and "resnet18" in speed:
    ratio = speed["resnet18"] / speed["vgg16"]
    runs["vgg16"] = dict(train_h=runs[model]["train_h"] * ratio, grid_h=runs[model]["grid_h"] * ratio)
  hours = {m: r["train_h"] + r["grid_h"] for m, r in runs.items()}
  return dict(epoch_s=round(epoch_s, 2), ig_cell_s_per_1000_images=round(1000 * ig[0] / n, 2),
              gradient_cell_s_per_1000_images=round(1000 * grad[0] / n, 2), ig_compile_s=round(ig[1], 1),
              runs={m: {k: round(v, 3) for k, v in r.items()} for m, r in runs.items()},
              models=sorted(runs), paper_on_one_gpu_h=round(p["runs_per_model"] * sum(hours.values()), 2),
              paper_on_six_gpus_h=round(max(hours.values()), 2))  # one run per GPU, all at once


def p_runs(e: dict) -> str:
  return f"{len(e['models']) * PAPER['runs_per_model']} runs of {', '.join(e['models'])}"


def table(report: dict) -> str:
  s, e = report["stages"], report["estimate"]
  run, rerun = s.get("run", {}), s.get("rerun", {})
  rows = [("device", run.get("backend", "-")), ("size", report["size"])]
  for name, stage in s.items():
    if stage.get("status") != "ok":
      rows.append((f"stage {name}", stage.get("status")))
  for r in s.get("train_step", {}).get("rows", []):
    rows.append((f"training step, {r['model']}, batch {r['batch_size']}, {r['variant']}",
                 f"{r['images_per_s']} images/s (compile {r['compile_s']} s)" if r["images_per_s"] else r["error"]))
  if run.get("epochs"):
    last = run["epochs"][-1]
    rows.append((f"{SIZES[report['size']]['model']} epoch (train + 3 test sets), steady",
                 f"{last['epoch_seconds']:.1f} s, {last['images_per_sec']:.0f} images/s"))
  for method in ("integrated_gradients", "absolute_gradient"):
    cell = _cell_seconds(run, method)
    if cell:
      rows.append((f"grid cell {method}, {run['cells'][0]['images']} images",
                   f"{cell[0]:.1f} s (compile {cell[1]:.1f} s)"))
  for label, stage in (("first run", run), ("rerun, cache warm", rerun)):
    if "programs_compiled" in stage:
      rows.append((f"compilation, {label}", f"{stage['programs_compiled']} programs compiled, "
                                           f"{stage['programs_from_cache']} from the cache, {stage['compile_s']} s"))
  if "peak_memory_gib" in run:
    rows.append(("peak device memory (run)", f"{run['peak_memory_gib']} of {run['memory_limit_gib']} GiB; "
                                             f"grid: {run.get('grid_sizes', '-')}"))
  for m, r in e.get("runs", {}).items():
    rows.append((f"estimated {m} run: train / grid", f"{r['train_h']:.2f} h / {r['grid_h']:.2f} h (grid: upper bound)"))
  if "paper_on_one_gpu_h" in e:
    rows.append((f"estimated paper ({p_runs(e)}): one GPU / one run per GPU",
                 f"{e['paper_on_one_gpu_h']} h / {e['paper_on_six_gpus_h']} h"))
  elif e.get("status"):
    rows.append(("estimate", e["status"]))
  width = max(len(k) for k, _ in rows)
  return "\n".join([f"| {'figure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
                   + [f"| {k.ljust(width)} | {v} |" for k, v in rows])


def main(argv: list[str]) -> int:
  size_name = argv[0] if argv else "full"
  if size_name not in SIZES:
    print(f"usage: launch/gpu_check.sh [full|tiny] [OUT_DIR]; not {size_name!r}", file=sys.stderr)
    return 2
  size = SIZES[size_name]
  out = pathlib.Path(argv[1] if len(argv) > 1 else "workdirs/gpu_check").resolve()
  if out.exists():
    shutil.rmtree(out)  # every figure from this check: no resumed run, no warm cache
  out.mkdir(parents=True)
  t0 = time.monotonic()
  deadline = t0 + float(os.environ.get("GPU_CHECK_BUDGET_S", size["budget_s"]))
  cache = out / "jax_cache"
  stages = {}
  stages["run"] = _read_run(_run_stage("run", _run_flags(size, out / "run", cache, size["epochs"]), out, deadline),
                            out / "run")
  torch = importlib.util.find_spec("torch") is not None
  rows = []
  for model in size["models"]:
    path = out / f"train_step_{model}.json"
    stage = _run_stage(f"train_step:{model}", [
        sys.executable, "benchmarks/train_throughput.py", f"--models={model}",
        f"--batch_sizes={','.join(map(str, size['batches']))}", f"--steps={size['steps']}",
        f"--rounds={size['rounds']}",
        f"--json={path}", "--torch" if torch and model in ("resnet18", "vgg16") else "--notorch"], out, deadline)
    rows += _read_train_step(stage, path).get("rows", [])
    stages[f"train_step:{model}"] = stage
  stages["train_step"] = dict(status="ok" if rows else "no figures", rows=rows)
  stages["rerun"] = _read_run(_run_stage("rerun", _run_flags(size, out / "rerun", cache, 1), out, deadline),
                              out / "rerun")
  nvidia = shutil.which("nvidia-smi")
  report = dict(size=size_name, seconds=round(time.monotonic() - t0, 1), stages=stages,
                nvidia_smi=subprocess.run([nvidia, "-L"], capture_output=True, text=True, check=False).stdout
                if nvidia else "", estimate=estimate(stages, size), paper=PAPER)
  (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
  print(table(report))
  print(f"\n{out / 'gpu_check.json'} ({report['seconds']:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
