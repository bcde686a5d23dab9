"""`evaluate(config, workdir)`: the single-pixel grid of one trained run (SPEC section 4).

Writes `workdir/single_pixel/results.csv` (see `results.py`) and `examples.png`. Each cell
(test jitter x method x target x output) is one compiled program per batch shape: the maps, the
attributed pixels, the five image versions and their forward passes run on device, split over
the local devices; only counts come back.
"""

from __future__ import annotations

import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from saliency_jax import data as data_lib
from saliency_jax.attribution import Explainer, display, registry
from saliency_jax.data import pixel
from saliency_jax.evaluation import grid, results, single_pixel
from saliency_jax.training.parallel import DATA_AXIS


def method_fn(spec: grid.MethodSpec, output: str, normalization, chunk_size: int = 0, key=None):
  """`(forward, x, target, **overrides) -> map` of `spec` with its options, plus what the run
  supplies: the normalization (named IG baselines), the chunk size and a random key, for methods
  taking them."""
  fn = registry.get(spec.name)
  accepted = registry.options_of(spec.name)
  options = dict(spec.options)
  if "normalization" in accepted:
    options.setdefault("normalization", normalization)
  if "chunk_size" in accepted and chunk_size:
    options.setdefault("chunk_size", chunk_size)
  if "key" in accepted and key is not None:
    options.setdefault("key", key)

  def method(forward, x_BHWC, target_B, **overrides):
    return fn(forward, x_BHWC, target_B, output=output, **{**options, **overrides})

  return method


def importance_fn(spec: grid.MethodSpec, output: str, normalization, chunk_size: int = 0):
  """`(forward, x, target) -> (B, H, W)`: the method's map, reduced over channels."""
  method = method_fn(spec, output, normalization, chunk_size)
  return lambda forward, x_BHWC, target_B: display.reduce_channels(method(forward, x_BHWC, target_B),
                                                                   spec.reduction)


def test_sets(data: data_lib.Prepared, data_seed: int, position_sd: float, colour_sd: float, max_images: int = 0):
  """The test images with the pixel and without it, under the test jitter, as numpy arrays.
  The keys are those of training's test sets: jitter draws depend on the data seed alone."""
  data_key = jax.random.key(data_seed)
  split = data.source.test
  sets = {c: data_lib.apply_condition(split.images, split.labels, c, data.spec,
                                      pixel.condition_key(data_key, "test", c), position_sd=position_sd,
                                      colour_sd=colour_sd) for c in ("pixel", "nopix")}
  n = max_images or len(split.labels)
  pix, nopix = sets["pixel"], sets["nopix"]
  return (np.asarray(pix.images_BHWC[:n]), np.asarray(nopix.images_BHWC[:n]), np.asarray(pix.labels_B[:n]),
          np.asarray(pix.location_B2[:n]))


class CellRunner:
  """Compiles one program per (method, target, output) and runs it over a test set in batches."""

  def __init__(self, model, variables, normalization, batch_size: int, chunk_size: int = 0, devices=None):
    # The Explainer's mesh and replicated forward: batches are split as its methods' are.
    explainer = Explainer(model, variables, normalization=normalization, devices=devices)
    self.mesh, self.forward = explainer.mesh, explainer.forward
    self.normalization = normalization
    self.batch_size = math.ceil(batch_size / self.mesh.size) * self.mesh.size
    self.chunk_size = chunk_size
    self._compiled = {}

  def counts(self, spec: grid.MethodSpec, target: str, output: str, pix, nopix, labels, location) -> dict:
    key = (spec, target, output)
    if key not in self._compiled:
      importance = importance_fn(spec, output, self.normalization, self.chunk_size)
      self._compiled[key] = jax.jit(lambda forward, *batch: single_pixel.batch_counts(
          forward, self.normalization, importance, target, *batch))
    fn = self._compiled[key]
    sharding = NamedSharding(self.mesh, P(DATA_AXIS))
    total = None
    for start in range(0, len(labels), self.batch_size):
      batch = [a[start:start + self.batch_size] for a in (pix, nopix, labels, location)]
      n = len(batch[2])
      pad = self.batch_size - n
      valid = np.arange(self.batch_size) < n
      batch = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a for a in batch]
      args = jax.device_put([*batch, valid], sharding)
      counts = fn(self.forward, *args)
      # Summed on device; read once per cell, so batches dispatch back to back.
      total = counts if total is None else jax.tree.map(jnp.add, total, counts)
    return {k: int(v) for k, v in jax.device_get(total).items()}

  def maps(self, spec: grid.MethodSpec, target: str, output: str, pix, labels) -> np.ndarray:
    """(B, H, W) importance maps of a few images, for the example figure."""
    importance = importance_fn(spec, output, self.normalization, self.chunk_size)

    def run(forward, pix, labels):
      x = self.normalization(pix)
      t = jnp.argmax(forward(x), axis=-1) if target == "predicted" else labels
      return importance(forward, x, t.astype(jnp.int32))

    return np.asarray(jax.jit(run)(self.forward, jnp.asarray(pix), jnp.asarray(labels)))


def evaluate(config, workdir: str | pathlib.Path, *, model=None, variables=None, epoch: int | None = None,
             data: data_lib.Prepared | None = None, devices=None) -> list[dict]:
  """Run the grid of `config.single_pixel` on the trained model in `workdir` (or the given
  `model`/`variables` after `epoch` epochs). Returns this grid's rows, computed or read back."""
  from saliency_jax.training import train  # pylint: disable=g-import-not-at-top

  sp = config.single_pixel
  methods = grid.check_config(sp)
  workdir = pathlib.Path(workdir)
  data = data or data_lib.prepare(config, conditions=())
  if model is None:
    model, variables, epoch = train.restore_latest(config, workdir, data.num_classes,
                                                   data.source.test.images.shape[1:])
  out_dir = workdir / "single_pixel"
  results_path = out_dir / "results.csv"
  all_rows = results.read_rows(results_path)
  done = {results.cell_key(r): r for r in all_rows}
  runner = CellRunner(model, variables, data.normalization, sp.batch_size, sp.chunk_size, devices)
  write = jax.process_index() == 0

  cells = [(j, m, t, o) for j in sp.test_jitter for m in methods for t in sp.targets for o in sp.outputs]
  rows, computed = [], 0
  sets = {}
  for i, (jitter, spec, target, output) in enumerate(cells):
    position_sd, colour_sd = float(jitter[0]), float(jitter[1])
    if jitter not in sets:
      sets[jitter] = test_sets(data, config.data.seed, position_sd, colour_sd, sp.max_images)
    pix, nopix, labels, location = sets[jitter]
    ident = {
        "model": config.model.name, "model_seed": config.seed, "data_seed": config.data.seed,
        "checkpoint_epoch": epoch, "train_position_sd": float(config.pixel.position_sd),
        "train_colour_sd": float(config.pixel.colour_sd), "test_position_sd": position_sd,
        "test_colour_sd": colour_sd, "method": spec.name, "method_options": spec.options_text,
        "reduction": spec.reduction, "target": target, "output": output, "num_images": len(labels),
    }
    key = results.cell_key(ident)
    if key in done:
      rows.append(done[key])
      continue
    t0 = time.perf_counter()
    metrics = single_pixel.metrics_from_counts(runner.counts(spec, target, output, pix, nopix, labels, location))
    seconds = time.perf_counter() - t0
    row = {**ident, "num_missed": metrics["overall.attribution_incorrect"], **metrics, "seconds": round(seconds, 2)}
    rows.append(row)
    all_rows.append(row)
    done[key] = row
    computed += 1
    if write:
      results.write_rows(results_path, all_rows)
    logging.info("single-pixel cell %d/%d  test jitter (%g, %g)  %s  target=%s output=%s: pointing %.1f%%, "
                 "%d missed  (%.1f s, %.0f img/s)", i + 1, len(cells), position_sd, colour_sd, spec.label, target,
                 output, 100 * metrics["overall.attribution_correct_accuracy"], row["num_missed"], seconds,
                 len(labels) / seconds)
  logging.info("single-pixel grid: %d cells, %d computed, %d read from %s", len(cells), computed,
               len(cells) - computed, results_path)

  if write and sp.examples and (computed or not (out_dir / "examples.png").exists()):
    from saliency_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
    pix, _, labels, location = sets[sp.test_jitter[0]]
    n = min(sp.examples, len(labels))
    maps = {spec.label: runner.maps(spec, sp.targets[0], sp.outputs[0], pix[:n], labels[:n]) for spec in methods}
    figures.examples(out_dir / "examples.png", pix[:n], labels[:n], location[:n], maps,
                     title=f"{config.model.name}, target={sp.targets[0]}, output={sp.outputs[0]}, "
                           f"test jitter {tuple(sp.test_jitter[0])}")
  if write:
    logging.info("single-pixel results (%s):\n%s", results_path, summary_text(rows))
  return rows


def summary_text(rows: list[dict]) -> str:
  """A compact table of a grid's rows: pointing, and additive / subtractive accuracy on the misses."""
  import pandas as pd  # pylint: disable=g-import-not-at-top

  df = pd.DataFrame(rows)
  pct = lambda c: (100 * df[c].astype(float)).round(1)
  table = pd.DataFrame({
      "test jitter": "(" + df["test_position_sd"].astype(str) + ", " + df["test_colour_sd"].astype(str) + ")",
      "method": df["method"] + df["method_options"].map(lambda o: f"({o})" if o else ""),
      "target": df["target"], "output": df["output"],
      "pointing %": pct("overall.attribution_correct_accuracy"),
      "withpix %": pct("overall.withpix_model_accuracy"), "nopix %": pct("overall.nopix_model_accuracy"),
      "missed": df["num_missed"],
      "add pix/attr %": pct("attribution_incorrect.blackbg_withpix_model_accuracy").astype(str) + " / "
                        + pct("attribution_incorrect.blackbg_withattrpix_model_accuracy").astype(str),
      "sub pix/attr %": pct("attribution_incorrect.truebg_withblackpix_model_accuracy").astype(str) + " / "
                        + pct("attribution_incorrect.truebg_withblackattrpix_model_accuracy").astype(str),
  })
  return table.to_string(index=False)
