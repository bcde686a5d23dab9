"""Do two checkouts of saliency_jax give the same maps? Same weights, same inputs, a few methods.

  python benchmarks/map_agreement.py --compare_with=../before     # this checkout against ../before

Each checkout runs in its own process (its saliency_jax first on the path) and writes its maps to
an .npz; this checkout draws the weights (random, BatchNorm statistics perturbed so that they
matter) and the other loads them, so a change in parameter initialisation cannot hide or fake a
difference. Models: resnet18 through `ModelForward`, and the user_cnn of user_cnn.py
as a plain function (where an earlier checkout ran XLA's native convolutions). Printed per map:
the largest absolute difference and that difference relative to the largest |value| of the
reference map; float32 rounding through a deep network is ~1e-6 relative, a real change O(1).
Each map is compiled with its checkout's `lowering.compiler_options()`, as the library's own runs are.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags, logging

_COMPARE = flags.DEFINE_string("compare_with", "", "The other checkout (a directory holding saliency_jax/).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images.")
_TOL = flags.DEFINE_float("rtol", 1e-4, "Largest difference relative to the map's scale that counts as equal.")
_WORKER = flags.DEFINE_string("worker", "", "Internal: compute the maps in this process: JSON {weights, out, draw}.")

# (model, method, options); options name a key by "key" (a fixed jax.random.key(5)).
CASES = (
    ("resnet18", "gradient", {}),
    ("resnet18", "gradient_x_input", {}),
    ("resnet18", "integrated_gradients", dict(steps=16, baseline="zero")),
    ("resnet18", "integrated_gradients", dict(steps=16, baseline="zero", chunk_size=4)),
    ("resnet18", "smoothgrad", dict(samples=8, chunk_size=4, key="key")),
    ("resnet18", "vargrad", dict(samples=8, key="key")),
    ("resnet18", "guided_backprop", {}),
    ("resnet18", "gradcam", {}),
    ("resnet18", "lrp_epsilon", {}),
    ("user_cnn", "gradient", {}),
    ("user_cnn", "integrated_gradients", dict(steps=16, baseline="zero", chunk_size=4)),
    ("user_cnn", "smoothgrad", dict(samples=8, chunk_size=4, key="key")),
)


def _case_name(i, model, method, options) -> str:
  opts = ",".join(f"{k}={v}" for k, v in options.items() if k != "key")
  return f"{i:02d} {model} {method}" + (f"({opts})" if opts else "")


def compute(spec: dict) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from saliency_jax import attribution, models  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import user_cnn  # pylint: disable=g-import-not-at-top

  x = jax.random.normal(jax.random.key(1), (_BATCH.value, 32, 32, 3))
  target = jax.random.randint(jax.random.key(2), (_BATCH.value,), 0, 10)
  nets = {"resnet18": models.create_model("resnet18"), "user_cnn": user_cnn.flax_model()}
  fresh = {"resnet18": models.init_variables(nets["resnet18"], jax.random.key(0), (1, 32, 32, 3)),
           "user_cnn": nets["user_cnn"].init(jax.random.key(0), x[:1])}
  weights = {}
  if spec["draw"]:  # perturb BatchNorm statistics: at init they are 0 and 1, which hides a wrong one
    for name, v in fresh.items():
      flat = traverse_util.flatten_dict(jax.device_get(v), sep="/")
      rng = np.random.default_rng(0)
      for k, a in flat.items():
        if k.startswith("batch_stats/") and k.endswith("/mean"):
          flat[k] = rng.normal(0, 0.1, a.shape).astype(a.dtype)
        elif k.startswith("batch_stats/") and k.endswith("/var"):
          flat[k] = rng.uniform(0.5, 1.5, a.shape).astype(a.dtype)
        weights[f"{name}|{k}"] = np.asarray(flat[k])
    np.savez(spec["weights"], **weights)
  with np.load(spec["weights"]) as z:
    loaded = {k: z[k] for k in z.files}
  variables = {}
  for name, v in fresh.items():
    mine = traverse_util.flatten_dict(jax.device_get(v), sep="/")
    theirs = {k.split("|", 1)[1]: a for k, a in loaded.items() if k.startswith(name + "|")}
    if {k: a.shape for k, a in mine.items()} != {k: a.shape for k, a in theirs.items()}:
      raise SystemExit(f"{name}: the two checkouts' parameter trees differ; cannot compare their maps")
    variables[name] = traverse_util.unflatten_dict({k: jnp.asarray(a) for k, a in theirs.items()}, sep="/")
  forwards = {"resnet18": attribution.ModelForward(nets["resnet18"], variables["resnet18"]),
              "user_cnn": lambda x: nets["user_cnn"].apply(variables["user_cnn"], x)}
  xla_options = user_cnn.library_compiler_options()  # compiled as the library's runs are
  maps = {}
  for i, (model, method, options) in enumerate(CASES):
    options = {k: (jax.random.key(5) if v == "key" else v) for k, v in options.items()}
    fn = attribution.get(method)
    forward = forwards[model]
    maps[_case_name(i, model, method, options)] = np.asarray(jax.jit(
        lambda x, t: fn(forward, x, t, **options), compiler_options=xla_options)(x, target))
  np.savez(spec["out"], **maps)


def _run(checkout: str, spec: dict) -> None:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(checkout), os.environ.get("PYTHONPATH", "")]))
  subprocess.run([sys.executable, __file__, f"--worker={json.dumps(spec)}", f"--batch_size={_BATCH.value}"],
                 check=True, env=env)


def main(_):
  logging.set_verbosity(logging.WARNING)
  if _WORKER.value:
    compute(json.loads(_WORKER.value))
    return
  if not _COMPARE.value:
    raise app.UsageError("--compare_with=DIR: the other checkout to compare this one with")
  here = str(pathlib.Path(__file__).resolve().parent.parent)
  with tempfile.TemporaryDirectory() as tmp:
    weights, ours, theirs = (os.path.join(tmp, f) for f in ("weights.npz", "ours.npz", "theirs.npz"))
    _run(here, dict(weights=weights, out=ours, draw=True))
    _run(_COMPARE.value, dict(weights=weights, out=theirs, draw=False))
    with np.load(ours) as a, np.load(theirs) as b:
      print(f"this checkout ({here}) against {os.path.abspath(_COMPARE.value)}, batch {_BATCH.value}")
      print("| map | max abs difference | relative to max abs value | equal |")
      print("|---|---|---|---|")
      worst = 0.0
      for name in a.files:
        diff = float(np.max(np.abs(a[name] - b[name])))
        rel = diff / max(float(np.max(np.abs(b[name]))), 1e-30)
        worst = max(worst, rel)
        print(f"| {name} | {diff:.3g} | {rel:.3g} | {'yes' if rel <= _TOL.value else 'NO'} |")
  print(f"largest relative difference: {worst:.3g} ({'all equal' if worst <= _TOL.value else 'NOT equal'} "
        f"at rtol {_TOL.value})")


if __name__ == "__main__":
  app.run(main)
