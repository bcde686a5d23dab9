"""`evaluate(config, workdir, trained)`: the faithfulness stage (`config.faithfulness`).

For every method of `faithfulness.methods` on a class-balanced subset of test images: its maps
(reduced over channels as in the grid), then deletion and insertion curves (pixel flipping) for
every order x replacement value, and ROAD for every order (`evaluation/faithfulness.py` holds the
definitions). All curves of a batch are one compiled program, the same program for every method
(the maps are its input). Writes `workdir/faithfulness/results.csv`, one row per method x curve x
order x replacement (the mean curve and the mean and std of its area over images), rewritten
atomically after every method, so a rerun computes only the methods missing; and `curves.png`.

Replacement values: 'black' the normalised all-zero image; 'mean' the training set's mean colour
after normalisation (0 under `data.normalization='dataset'`); 'blur' a Gaussian blur of the image
(`blur_sigma` pixels). ROAD imputes instead ('noisy_linear'), with `road_noise` (in [0, 1] pixel
units, as the ROAD code's 0.01) divided by the normalisation's std, from a key per image
(`fold_in(fold_in(key(seed), 5), i)` for test image i), so the noise does not depend on the batch.
The area of a ROAD curve is the mean score over its percentages; its accuracy, ROAD's metric, the
share of imputed images still classified as the target.
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from saliency_jax import backend
from saliency_jax import data as data_lib
from saliency_jax.attribution import core, registry
from saliency_jax.config_checks import (ConfigError, require_choice, require_non_negative, require_positive,
                                        require_subset)
from saliency_jax.evaluation import faithfulness, results
from saliency_jax.evaluation.run import CellRunner

CURVES = ("deletion", "insertion", "road")
ROAD_REPLACEMENT = "noisy_linear"
ID_COLUMNS = (*results.RUN_COLUMNS, "condition", "position_sd", "colour_sd", *results.METHOD_COLUMNS, "reduction",
              "target", "output", "score", "num_images", "curve", "order", "replacement", "settings")
# x: the curve's points (fractions of pixels, or ROAD's percentages / 100), as JSON lists like the curves.
METRIC_COLUMNS = ("area_mean", "area_std", "x", "curve_mean", "accuracy_mean", "accuracy_curve", "seconds")
# A method's rows are its unit of work; a row is one curve of it.
TABLE = results.Table(columns=(*ID_COLUMNS, *METRIC_COLUMNS),
                      key=("checkpoint_epoch", "condition", "position_sd", "colour_sd", *results.METHOD_COLUMNS,
                           "reduction", "target", "output", "score", "num_images", "curve", "order", "replacement",
                           "settings"))


def check_config(fc) -> list[registry.MethodSpec]:
  """The `faithfulness` section, checked; returns the parsed methods."""
  if not fc.methods:
    raise ConfigError("faithfulness.methods is empty; name at least one attribution method")
  methods = [registry.parse(m, "faithfulness.methods") for m in fc.methods]
  labels = [m.label + m.reduction for m in methods]
  if len(set(labels)) != len(labels):
    raise ConfigError(f"faithfulness.methods names the same method twice: {list(fc.methods)}")
  require_choice("faithfulness.target", fc.target, core.TARGETS)
  require_choice("faithfulness.output", fc.output, core.OUTPUTS)
  require_choice("faithfulness.score", fc.score, faithfulness.OUTPUTS)
  require_choice("faithfulness.condition", fc.condition, data_lib.CONDITIONS)
  for field, allowed in (("curves", CURVES), ("orders", faithfulness.ORDERS),
                         ("replacements", faithfulness.REPLACEMENTS)):
    if not fc[field]:
      raise ConfigError(f"faithfulness.{field} is empty; choose from: {', '.join(map(repr, allowed))}")
    require_subset(f"faithfulness.{field}", fc[field], allowed)
  require_positive("faithfulness.steps", fc.steps, integer=True)
  require_non_negative("faithfulness.batch_size", fc.batch_size)  # 0: sized for the device (backend.py)
  require_positive("faithfulness.blur_sigma", fc.blur_sigma)
  for field in ("num_images", "step_chunk", "chunk_size", "road_noise"):
    require_non_negative(f"faithfulness.{field}", fc[field])
  if not fc.road_percentages or any(not 0 <= p < 100 for p in fc.road_percentages):
    raise ConfigError(f"faithfulness.road_percentages={tuple(fc.road_percentages)!r} is not allowed; give "
                      "percentages in [0, 100) (removing every pixel leaves nothing to impute from)")
  return methods


def _curves(fc) -> list[tuple[str, str, str, str]]:
  """(curve, order, replacement, settings) of every curve a method gets, in table order."""
  out = []
  for curve in fc.curves:
    for order in fc.orders:
      if curve == "road":
        percentages = tuple(float(p) for p in fc.road_percentages)
        out.append((curve, order, ROAD_REPLACEMENT, f"percentages={percentages}, noise={float(fc.road_noise)}"))
        continue
      for replacement in fc.replacements:
        blur = f", blur_sigma={float(fc.blur_sigma)}" if replacement == "blur" else ""
        out.append((curve, order, replacement, f"steps={int(fc.steps)}{blur}"))
  return out


def replacement_values(data: data_lib.Prepared, channels: int) -> dict[str, jax.Array]:
  """The normalised fill of 'black' and 'mean', (1, 1, 1, C)."""
  norm = data.normalization
  mean01 = data_lib.channel_stats(np.asarray(data.source.train.images))[0]
  return {"black": norm(jnp.zeros((1, 1, 1, channels), jnp.uint8)),
          "mean": jnp.asarray((mean01 - np.asarray(norm.mean_C)) / np.asarray(norm.std_C), jnp.float32)
                  .reshape(1, 1, 1, channels)}


def road_key(seed: int) -> jax.Array:
  """Test image i's ROAD noise comes from `fold_in(road_key(seed), i)`."""
  return jax.random.fold_in(jax.random.key(seed), 5)


class Settings(NamedTuple):
  """What the curves program depends on, hashable: equal settings share one compiled program."""

  curves: tuple[tuple[str, str, str, str], ...]  # (curve, order, replacement, settings text)
  steps: int
  percentages: tuple[float, ...]
  road_noise: float
  blur_sigma: float
  score: str
  step_chunk: int
  seed: int


def settings_of(fc) -> Settings:
  return Settings(tuple(_curves(fc)), int(fc.steps), tuple(float(p) for p in fc.road_percentages),
                  float(fc.road_noise), float(fc.blur_sigma), fc.score, int(fc.step_chunk), int(fc.seed))


@functools.lru_cache(maxsize=None)
def curves_program(s: Settings):
  """`(forward, normalization, values, images_u8, maps, target, index) -> {name: (B, points)}`:
  every curve of a batch. `values`: `replacement_values`; `index`: the images' indices in the test
  split (their ROAD noise keys). Cached, so a rerun in the same process compiles nothing new."""

  def program(forward, normalization, values, images_u8, maps_BHW, target_B, index_B):
    x = normalization(images_u8)
    keys_B = jax.vmap(lambda i: jax.random.fold_in(road_key(s.seed), i))(index_B)
    out = {}
    for curve, order, replacement, _ in s.curves:
      name = f"{curve}|{order}|{replacement}"
      if curve == "road":
        noisy = dict(noise=s.road_noise / normalization.std_C, key=keys_B) if s.road_noise else {}
        road = faithfulness.road(forward, x, maps_BHW, target_B, percentages=s.percentages, order=order, **noisy,
                                 output=s.score, step_chunk=s.step_chunk or None)
        out[name], out[name + "|correct"] = road.scores, road.correct
      else:
        fn = faithfulness.deletion_curve if curve == "deletion" else faithfulness.insertion_curve
        out[name] = fn(forward, x, maps_BHW, target_B, steps=s.steps, order=order, replacement=replacement,
                       value=values.get(replacement), blur_sigma=s.blur_sigma, output=s.score,
                       step_chunk=s.step_chunk or None).scores
    return out

  return program


def _x_axis(fc, curve: str, hw: int) -> np.ndarray:
  if curve == "road":
    return np.asarray(fc.road_percentages, float) / 100
  return (np.arange(fc.steps + 1) * hw // fc.steps) / hw  # `deletion_curve`'s fractions


def _rows(fc, ident: dict, out: dict, hw: int, seconds: float) -> list[dict]:
  rows = []
  for curve, order, replacement, settings in _curves(fc):
    name = f"{curve}|{order}|{replacement}"
    scores, x = np.asarray(out[name], np.float64), _x_axis(fc, curve, hw)
    area = scores.mean(1) if curve == "road" else np.trapezoid(scores, x, axis=1)
    row = {**ident, "curve": curve, "order": order, "replacement": replacement, "settings": settings,
           "area_mean": float(area.mean()), "area_std": float(area.std()), "x": json.dumps(x.round(6).tolist()),
           "curve_mean": json.dumps(scores.mean(0).round(6).tolist()), "seconds": round(seconds, 2)}
    if curve == "road":
      correct = np.asarray(out[name + "|correct"], np.float64)
      row.update(accuracy_mean=float(correct.mean()), accuracy_curve=json.dumps(correct.mean(0).round(6).tolist()))
    rows.append(row)
  return rows


def evaluate(config, workdir: str | pathlib.Path, trained, devices=None) -> list[dict]:
  """The faithfulness stage on `trained` (a `training.train.Trained`), writing into `workdir`, split
  over `devices` (default: the local ones). Returns its rows, computed or read back."""
  fc = config.faithfulness
  methods = check_config(fc)
  out_dir = pathlib.Path(workdir) / "faithfulness"
  path = out_dir / "results.csv"
  data = trained.data
  position_sd, colour_sd = float(config.pixel.position_sd), float(config.pixel.colour_sd)
  tests = data.test_set(fc.condition, position_sd, colour_sd)  # training's jitter: what the model saw
  index = data_lib.balanced_indices(tests.labels_B, fc.num_images, data.seed)
  images, labels = np.asarray(tests.images_BHWC)[index], np.asarray(tests.labels_B)[index]
  hw = images.shape[1] * images.shape[2]
  batch_size, chunk_size = backend.evaluation_sizes("faithfulness", fc, devices)
  cells = CellRunner(trained.model, trained.variables, data.normalization, batch_size, chunk_size, devices,
                     seed=config.seed)
  runner, forward = cells.runner, cells.forward
  all_rows = TABLE.read(path)
  done = {TABLE.key_of(r) for r in all_rows}
  write = jax.process_index() == 0
  program, targets = None, None
  rows = []
  for i, spec in enumerate(methods):
    ident = {**results.run_columns(config, trained.epoch), "condition": fc.condition, "position_sd": position_sd,
             "colour_sd": colour_sd, **results.method_columns(spec), "reduction": spec.reduction,
             "target": fc.target, "output": fc.output, "score": fc.score, "num_images": len(labels)}
    wanted = [TABLE.key_of({**ident, "curve": c, "order": o, "replacement": r, "settings": s})
              for c, o, r, s in _curves(fc)]
    if all(k in done for k in wanted):
      rows += [r for r in all_rows if TABLE.key_of(r) in wanted]
      continue
    if program is None:  # what every method shares, made once and only if something is computed
      program = curves_program(settings_of(fc))
      shared = (forward, *runner.replicate((data.normalization, replacement_values(data, images.shape[-1]))))
      targets = np.asarray(runner.run(("targets", fc.target), lambda f, u8, y: (
          jnp.argmax(f(data.normalization(u8)), -1) if fc.target == "predicted" else y).astype(jnp.int32),
          (images, labels), (forward,)))
    t0 = time.perf_counter()
    maps = cells.maps(spec, fc.target, fc.output, images, labels, index,
                      progress=f"faithfulness {i + 1}/{len(methods)} {spec.label}: maps")
    out = jax.device_get(runner.run(("curves",), program, (images, maps, targets, index), shared,
                                    progress=f"faithfulness {i + 1}/{len(methods)} {spec.label}: curves"))
    new = _rows(fc, ident, out, hw, time.perf_counter() - t0)
    all_rows = [r for r in all_rows if TABLE.key_of(r) not in wanted] + new
    done |= set(wanted)
    rows += new
    if write:
      TABLE.write(path, all_rows)
    logging.info("faithfulness %d/%d %s: %s  (%.1f s for %d images)", i + 1, len(methods), spec.label,
                 "  ".join(f"{r['curve']} {r['order']} {r['replacement']} {r['area_mean']:.3f}" for r in new),
                 new[0]["seconds"], len(labels))
  if write and rows and (program is not None or not (out_dir / "curves.png").exists()):
    from saliency_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
    figures.faithfulness_curves(out_dir / "curves.png", rows,
                                title=f"{config.model.name}, epoch {trained.epoch}, {fc.score} of the {fc.target} "
                                      f"class, {len(labels)} images")
  return rows
