"""`evaluate(config, workdir)`: the single-pixel grid of one trained run (SPEC section 4).

Writes `workdir/single_pixel/results.csv` (see `results.py`) and `examples.png`. Each cell
(test jitter x method x target x output) is one compiled program per batch shape: the maps, the
attributed pixels, the five image versions and their forward passes run on device, split over
the devices of every process; only counts come back.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from saliency_jax import backend
from saliency_jax import data as data_lib
from saliency_jax import files
from saliency_jax import models
from saliency_jax.attribution import core, display, registry
from saliency_jax.attribution.batching import BatchRunner
from saliency_jax.evaluation import grid, results, single_pixel
from saliency_jax.progress import Progress
from saliency_jax.training import parallel


def method_fn(spec: registry.MethodSpec, output: str, normalization, chunk_size: int = 0, key=None):
  """`(forward, x, target, **overrides) -> map` of `spec` with its options, plus what the run
  supplies where the method declared it needs it (`registry.supply`)."""
  fn = registry.get(spec.name)
  options = registry.supply(spec.name, dict(spec.options), normalization=normalization, key=key,
                            chunk_size=chunk_size or None)

  def method(forward, x_BHWC, target_B, **overrides):
    return fn(forward, x_BHWC, target_B, output=output, **{**options, **overrides})

  return method


def importance_fn(spec: registry.MethodSpec, output: str, normalization, chunk_size: int = 0):
  """`(forward, x, target, **overrides) -> (B, H, W)`: the method's map, reduced over channels."""
  method = method_fn(spec, output, normalization, chunk_size)
  return lambda forward, x_BHWC, target_B, **overrides: display.reduce_channels(
      method(forward, x_BHWC, target_B, **overrides), spec.reduction)


def needs_key(spec: registry.MethodSpec) -> bool:
  return "key" in registry.needs(spec.name) and "key" not in dict(spec.options)


def cell_key(seed: int, spec: registry.MethodSpec, output: str) -> jax.Array:
  """The random key of a method's cells (SmoothGrad, VarGrad, a uniform IG baseline): drawn from
  the model seed and the method and output, not the target, so the two targets see the same noise;
  image i of the test split gets `fold_in(this key, i)`, so its map does not depend on the batch it
  came in, and a rerun gives the same numbers."""
  label = f"{spec.label}|{spec.reduction}|{output}"
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 4), zlib.crc32(label.encode()))


def test_indices(data: data_lib.Prepared, max_images: int = 0) -> np.ndarray:
  """Which test images a grid evaluates: all, or a class-balanced subset of `max_images` drawn
  from the data seed (`data.balanced_indices`), the same for every jitter and model seed."""
  return data_lib.balanced_indices(data.source.test.labels, max_images, data.seed)


def test_sets(data: data_lib.Prepared, position_sd: float, colour_sd: float, max_images: int = 0):
  """The test images with the pixel and without it, under the test jitter, as numpy arrays: the
  subset `test_indices` picks (`Prepared.test_set` makes them; an image's draw does not depend
  on the subset)."""
  keep = test_indices(data, max_images)
  pix, nopix = (data.test_set(c, position_sd, colour_sd) for c in ("pixel", "nopix"))
  return (np.asarray(pix.images_BHWC)[keep], np.asarray(nopix.images_BHWC)[keep], np.asarray(pix.labels_B)[keep],
          np.asarray(pix.location_B2)[keep])


class CellRunner:
  """Compiles one program per (method, target, output) and runs it over a test set in batches."""

  def __init__(self, model, variables, normalization, batch_size: int, chunk_size: int = 0, devices=None,
               seed: int = 0):
    self.runner = BatchRunner(devices, batch_size)
    self.mesh = self.runner.mesh
    self.forward = core.ModelForward(model, self.runner.replicate(models.model_variables(variables)))
    self.normalization = normalization
    self.chunk_size = chunk_size
    self.seed = seed

  def _importance(self, spec: registry.MethodSpec, output: str):
    """`(forward, x, target, index_B) -> (B, H, W)`; methods that need a random key get image i's
    `fold_in(cell_key(...), i)`."""
    importance = importance_fn(spec, output, self.normalization, self.chunk_size)
    if not needs_key(spec):
      return lambda f, x, t, index_B: importance(f, x, t)
    base = cell_key(self.seed, spec, output)
    return lambda f, x, t, index_B: importance(f, x, t, key=jax.vmap(lambda i: jax.random.fold_in(base, i))(index_B))

  def outcomes(self, spec: registry.MethodSpec, target: str, output: str, pix, nopix, labels, location,
               index=None, progress: str | None = None) -> dict[str, np.ndarray]:
    """Per image (see `single_pixel.batch_outcomes`), as numpy arrays. `index`: each image's
    index in the test split (its random key's; default 0..N-1). `progress`: the cell's name in
    progress lines (`BatchRunner.run`)."""
    importance = self._importance(spec, output)

    def program(forward, pix, nopix, labels, location, index_B):
      return single_pixel.batch_outcomes(forward, self.normalization, lambda f, x, t: importance(f, x, t, index_B),
                                         target, pix, nopix, labels, location)

    index = np.arange(len(labels)) if index is None else np.asarray(index)
    out = self.runner.run(("outcomes", spec, target, output), program, (pix, nopix, labels, location, index),
                          (self.forward,), progress=progress)
    return {k: np.asarray(v) for k, v in jax.device_get(out).items()}

  def counts(self, spec: registry.MethodSpec, target: str, output: str, pix, nopix, labels, location) -> dict:
    outcomes = self.outcomes(spec, target, output, pix, nopix, labels, location)
    return {k: int(v) for k, v in single_pixel.counts_from_outcomes(outcomes, labels).items()}

  def maps(self, spec: registry.MethodSpec, target: str, output: str, pix, labels, index=None,
           progress: str | None = None) -> np.ndarray:
    """(B, H, W) importance maps (the example figure's, the faithfulness stage's)."""
    importance = self._importance(spec, output)

    def program(forward, pix, labels, index_B):
      x = self.normalization(pix)
      t = jnp.argmax(forward(x), axis=-1) if target == "predicted" else labels
      return importance(forward, x, t.astype(jnp.int32), index_B)

    index = np.arange(len(labels)) if index is None else np.asarray(index)
    return np.asarray(self.runner.run(("maps", spec, target, output), program, (pix, labels, index), (self.forward,),
                                      progress=progress))


# In `single_pixel/`: the test jitters and the cells per jitter of a grid that has started and not
# finished (written first, removed after the last cell), so a report knows a partial grid as such.
RUNNING = "running.json"


def _per_image_path(out_dir: pathlib.Path, key: tuple[str, ...]) -> pathlib.Path:
  return out_dir / "per_image" / (hashlib.sha1("|".join(key).encode()).hexdigest()[:16] + ".npz")


def per_image_file(workdir: str | pathlib.Path, row: dict) -> pathlib.Path:
  """Where the grid keeps the per-image outcomes of one of its results rows (`index`, `label`,
  `hit`, `rank`, `mass`, `predicted`, ...; `label` since the report's per-class table)."""
  return _per_image_path(pathlib.Path(workdir) / "single_pixel", grid.TABLE.key_of(row))


def _save_outcomes(path: pathlib.Path, outcomes: dict, index: np.ndarray, labels: np.ndarray) -> None:
  """The test images' indices and labels (read by the report's per-class table) beside the outcomes."""
  with files.atomic_open(path, "wb") as f:
    np.savez(f, index=index, label=labels, **outcomes)


def _load_outcomes(path: pathlib.Path, index: np.ndarray) -> dict | None:
  """A finished cell's per-image outcomes, if saved for these very images; else None (a missing or
  unreadable file only costs a recomputation)."""
  try:
    with np.load(path) as z:
      if not np.array_equal(z["index"], index) or not {"rank", "mass"} <= set(z.files):
        return None
      return {k: z[k] for k in z.files if k not in ("index", "label")}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
    return None


def evaluate(config, workdir: str | pathlib.Path, trained) -> list[dict]:
  """Run the grid of `config.single_pixel` on `trained` (a `training.train.Trained`), writing into
  `workdir`. Returns this grid's rows, computed or read back.

  No map is computed twice: where the model's prediction equals the label, the two targets
  explain the same class, so the second target's cell reuses the first one's per-image outcomes
  (kept in `single_pixel/per_image/`) and computes only the images where they differ.
  """
  sp = config.single_pixel
  methods = grid.check_config(sp)
  workdir = pathlib.Path(workdir)
  model, variables, epoch, data = trained.model, trained.variables, trained.epoch, trained.data
  out_dir = workdir / "single_pixel"
  results_path = out_dir / "results.csv"
  # A row written before the localisation columns existed is computed again (its per-image
  # outcomes lack the ranks).
  all_rows = [r for r in grid.TABLE.read(results_path) if r.get(grid.LOCALISATION_COLUMNS[0]) not in (None, "")]
  done = {grid.TABLE.key_of(r): r for r in all_rows}
  batch_size, chunk_size = backend.evaluation_sizes("single_pixel", sp)
  runner = CellRunner(model, variables, data.normalization, batch_size, chunk_size, seed=config.seed)
  write = jax.process_index() == 0
  index = test_indices(data, sp.max_images)

  cells = [(j, m, t, o) for j in sp.test_jitter for m in methods for t in sp.targets for o in sp.outputs]
  running_path = out_dir / RUNNING
  if write:  # until the last cell is done (a killed run leaves it): the report leaves this grid out
    out_dir.mkdir(parents=True, exist_ok=True)
    with files.atomic_open(running_path, "w") as f:
      json.dump({"test_jitter": [[float(p), float(c)] for p, c in sp.test_jitter],
                 "cells_per_jitter": len(methods) * len(sp.targets) * len(sp.outputs)}, f)
  rows, computed, reused, memory, maps = [], 0, 0, {}, {}
  progress = Progress("single-pixel grid", len(cells), "cells")
  sets = {}
  for i, (jitter, spec, target, output) in enumerate(cells):
    position_sd, colour_sd = float(jitter[0]), float(jitter[1])
    if jitter not in sets:
      sets[jitter] = test_sets(data, position_sd, colour_sd, sp.max_images)
    pix, nopix, labels, location = sets[jitter]
    ident = {
        **results.run_columns(config, epoch), "train_position_sd": float(config.pixel.position_sd),
        "train_colour_sd": float(config.pixel.colour_sd), "test_position_sd": position_sd,
        "test_colour_sd": colour_sd, **results.method_columns(spec), "reduction": spec.reduction, "target": target,
        "output": output, "num_images": len(labels),
    }
    key = grid.TABLE.key_of(ident)
    if key in done:
      rows.append(done[key])
      progress.total -= 1  # the time left is for the cells still to compute
      continue
    t0 = time.perf_counter()
    # The other target's outcomes of this (jitter, method, output), if that cell is done.
    other = next((t for t in sp.targets if t != target), None)
    other_key = grid.TABLE.key_of({**ident, "target": other})
    prior = other and (memory.get(other_key) or (jax.process_count() == 1 and _load_outcomes(
        _per_image_path(out_dir, other_key), index)))
    name = f"single-pixel cell {i + 1}/{len(cells)} {spec.label} target={target} output={output}"
    if prior:
      outcomes = {k: v.copy() for k, v in prior.items()}
      differ = np.flatnonzero(prior["predicted"] != labels)
      if differ.size:
        sub = runner.outcomes(spec, target, output, pix[differ], nopix[differ], labels[differ], location[differ],
                              index[differ], progress=name)
        for k, v in sub.items():
          outcomes[k][differ] = v
      reused += len(labels) - differ.size
    else:
      outcomes = runner.outcomes(spec, target, output, pix, nopix, labels, location, index, progress=name)
    counts = {k: int(v) for k, v in single_pixel.counts_from_outcomes(outcomes, labels).items()}
    metrics = single_pixel.metrics_from_counts(counts)
    seconds = time.perf_counter() - t0
    row = {**ident, "num_missed": metrics["overall.attribution_incorrect"], **metrics, "seconds": round(seconds, 2),
           **single_pixel.localisation_metrics(outcomes)}
    rows.append(row)
    all_rows.append(row)
    done[key] = row
    computed += 1
    memory = {key: outcomes}  # every process holds it: the next cell may be this one's other target
    if write:
      _save_outcomes(_per_image_path(out_dir, key), outcomes, index, labels)
      grid.TABLE.write(results_path, all_rows)
    logging.info("single-pixel cell %d/%d  test jitter (%g, %g)  %s  target=%s output=%s: pointing %.1f%%, "
                 "%d missed  (%.1f s, %.0f img/s%s)%s", i + 1, len(cells), position_sd, colour_sd, spec.label, target,
                 output, 100 * metrics["overall.attribution_correct_accuracy"], row["num_missed"], seconds,
                 len(labels) / seconds, f"; {len(labels) - differ.size} maps reused from target={other}" if prior
                 else "", f"; {progress.left(computed)} in the grid" if computed < progress.total else "")
  logging.info("single-pixel grid: %d cells, %d computed (%d image maps reused across targets), %d read from %s",
               len(cells), computed, reused, len(cells) - computed, results_path)
  if write:
    running_path.unlink(missing_ok=True)

  # Every process computes the maps (one program over all of them); process 0 decides and draws.
  if sp.examples and parallel.agree(bool(computed or not (out_dir / "examples.png").exists())):
    pix, _, labels, location = sets[sp.test_jitter[0]]
    n = min(sp.examples, len(labels))
    maps = {spec.label: runner.maps(spec, sp.targets[0], sp.outputs[0], pix[:n], labels[:n], index[:n])
            for spec in methods}
  if write and maps:
    from saliency_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
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
      "method": results.method_label(df["method"], df["method_options"]),
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
