"""The faithfulness stage (`config.faithfulness`; docs/evaluation.md, "Faithfulness curves").

A unit is one method of `faithfulness.methods` on a class-balanced subset of test images: its maps
(reduced over channels as in the grid), then deletion and insertion curves (pixel flipping) for every
order x replacement value, and ROAD for every order (`evaluation.faithfulness` holds the definitions).
All curves of a batch are one compiled program, the same for every method (the maps are its input).
`faithfulness/results.csv` has one row per method x curve x order x replacement: the mean curve and
the mean and std of its area over images; `curves.png` draws them.

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
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax import backend
from saliency_jax import data as data_lib
from saliency_jax.attribution import core, registry
from saliency_jax.checks import require_choice, require_non_negative, require_positive, require_subset
from saliency_jax.evaluation import faithfulness, results
from saliency_jax.stages import base
from saliency_jax.stages.runner import ModelRunner

CURVES = ("deletion", "insertion", "road")
ROAD_REPLACEMENT = "noisy_linear"
ID_COLUMNS = (*results.RUN_COLUMNS, "condition", "position_sd", "colour_sd", *results.METHOD_COLUMNS, results.REVISION,
              "reduction",
              "target", "output", "score", "num_images", "curve", "order", "replacement", "settings")
# x: the curve's points (fractions of pixels, or ROAD's percentages / 100), as JSON lists like the curves.
METRIC_COLUMNS = ("area_mean", "area_std", "x", "curve_mean", "accuracy_mean", "accuracy_curve", "seconds")
# A method's rows are its unit of work; a row is one curve of it.
TABLE = results.Table(
    columns=(*ID_COLUMNS, *METRIC_COLUMNS, "compile_seconds"),
    key=("checkpoint_epoch", "weights", "condition", "position_sd", "colour_sd", *results.METHOD_COLUMNS, "reduction", "target",
         "output", "score", "num_images", "curve", "order", "replacement", "settings", results.REVISION),
    kinds={**{c: "count" for c in ("model_seed", "data_seed", "checkpoint_epoch", results.REVISION, "num_images")},
           **{c: "finite" for c in ("position_sd", "colour_sd", "area_mean", "area_std", "accuracy_mean", "seconds",
                                    "compile_seconds")},
           **{c: "json" for c in ("x", "curve_mean", "accuracy_curve")}},
    optional=("weights", "accuracy_mean", "accuracy_curve", "compile_seconds"), former={results.REVISION: "1"})
# This stage's salt in the methods' random keys: the grid's, so a method's maps are the grid's maps.
KEY_SALT = 4


class Faithfulness(base.Stage):
  name = "faithfulness"
  table = TABLE
  noun = "methods"

  @classmethod
  def check(cls, config) -> list[registry.MethodSpec]:
    """The `faithfulness` section; returns its parsed methods."""
    fc = config.faithfulness
    methods = registry.parse_all(fc.methods, "faithfulness.methods")
    require_choice("faithfulness.target", fc.target, core.TARGETS)
    require_choice("faithfulness.output", fc.output, core.OUTPUTS)
    require_choice("faithfulness.score", fc.score, faithfulness.OUTPUTS)
    require_choice("faithfulness.condition", fc.condition, data_lib.CONDITIONS)
    for field, allowed in (("curves", CURVES), ("orders", faithfulness.ORDERS),
                           ("replacements", faithfulness.REPLACEMENTS)):
      if not fc[field]:
        raise ValueError(f"faithfulness.{field} is empty; choose from: {', '.join(map(repr, allowed))}")
      require_subset(f"faithfulness.{field}", fc[field], allowed)
      if len(set(fc[field])) != len(fc[field]):
        raise ValueError(f"faithfulness.{field} lists an entry twice: {tuple(fc[field])}")
    require_positive("faithfulness.steps", fc.steps, integer=True)
    require_positive("faithfulness.blur_sigma", fc.blur_sigma)
    for field in ("num_images", "step_chunk", "batch_size", "chunk_size"):  # sizes 0: for the device (backend.py)
      require_non_negative(f"faithfulness.{field}", fc[field])
    if not (isinstance(fc.road_noise, (int, float)) and 0 <= fc.road_noise <= 1):  # NaN fails both
      raise ValueError(f"faithfulness.road_noise={fc.road_noise!r} is not allowed; give a std in [0, 1] pixel units "
                       "(ROAD's paper: 0.01)")
    if not fc.road_percentages or any(not 0 <= p < 100 for p in fc.road_percentages):
      raise ValueError(f"faithfulness.road_percentages={tuple(fc.road_percentages)!r} is not allowed; give "
                       "percentages in [0, 100) (removing every pixel leaves nothing to impute from)")
    return methods

  @classmethod
  def methods(cls, config, plan):
    return [(spec, config.faithfulness.output) for spec in plan]

  def __init__(self, config, plan, trained, workdir, devices=None):
    super().__init__(config, plan, trained, workdir, devices)
    fc = config.faithfulness
    data = trained.data
    self.position_sd, self.colour_sd = float(config.pixel.position_sd), float(config.pixel.colour_sd)
    tests = data.test_set(fc.condition, self.position_sd, self.colour_sd)  # training's jitter: what the model saw
    self.index = data_lib.balanced_indices(tests.labels_B, fc.num_images, data.seed)
    self.images, self.labels = np.asarray(tests.images_BHWC)[self.index], np.asarray(tests.labels_B)[self.index]
    batch_size, chunk_size = backend.evaluation_sizes(self.name, fc, devices)
    self.runner = ModelRunner(trained.model, trained.variables, data.normalization, batch_size=batch_size,
                              chunk_size=chunk_size, seed=config.seed, salt=KEY_SALT, devices=devices)
    self._shared, self._targets = None, None

  def _ident(self, spec) -> dict:
    fc = self.config.faithfulness
    return {**results.run_columns(self.config, self.trained), "condition": fc.condition,
            "position_sd": self.position_sd, "colour_sd": self.colour_sd, **results.method_columns(spec),
            "reduction": spec.reduction, "target": fc.target, "output": fc.output, "score": fc.score,
            "num_images": len(self.labels)}

  def units(self) -> list[base.Unit]:
    curves = _curves(self.config.faithfulness)
    return [base.Unit(tuple(TABLE.key_of({**self._ident(spec), "curve": c, "order": o, "replacement": r,
                                          "settings": s}) for c, o, r, s in curves), "results.csv", spec.label, spec)
            for spec in self.plan]

  def run(self, unit: base.Unit) -> base.Output:
    fc, spec, runner = self.config.faithfulness, unit.payload, self.runner
    data = self.trained.data
    if self._shared is None:  # what every method shares, made once and only if something is computed
      values = replacement_values(data, self.images.shape[-1])
      self._shared = (runner.forward, *runner.runner.replicate((data.normalization, values)))
      self._targets = runner.targets(fc.target, self.images, self.labels)
    maps = runner.maps(spec, fc.output, self.images, self._targets, self.index, reduce=True,
                       progress=f"faithfulness {spec.label}: maps")
    program = curves_program(settings_of(fc))
    out = jax.device_get(runner.run(("curves",), program, (self.images, maps, self._targets, self.index),
                                    *self._shared, progress=f"faithfulness {spec.label}: curves"))
    rows = _rows(fc, self._ident(spec), out, self.images.shape[1] * self.images.shape[2])
    note = "  ".join(f"{r['curve']} {r['order']} {r['replacement']} {r['area_mean']:.3f}" for r in rows)
    return base.Output(rows, note=f"{note}  ({len(self.labels)} images)")

  def finish(self, rows: list[dict], computed: int) -> None:
    path = self.out_dir / "curves.png"
    if jax.process_index() == 0 and rows and (computed or not path.exists()):
      from saliency_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
      fc = self.config.faithfulness
      figures.faithfulness_curves(path, rows, title=f"{self.config.model.name}, epoch {self.trained.epoch}, "
                                                    f"{fc.score} of the {fc.target} class, {len(self.labels)} images")


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


def _rows(fc, ident: dict, out: dict, hw: int) -> list[dict]:
  rows = []
  for curve, order, replacement, settings in _curves(fc):
    name = f"{curve}|{order}|{replacement}"
    scores, x = np.asarray(out[name], np.float64), _x_axis(fc, curve, hw)
    area = scores.mean(1) if curve == "road" else np.trapezoid(scores, x, axis=1)
    row = {**ident, "curve": curve, "order": order, "replacement": replacement, "settings": settings,
           "area_mean": float(area.mean()), "area_std": float(area.std()), "x": json.dumps(x.round(6).tolist()),
           "curve_mean": json.dumps(scores.mean(0).round(6).tolist())}
    if curve == "road":
      correct = np.asarray(out[name + "|correct"], np.float64)
      row.update(accuracy_mean=float(correct.mean()), accuracy_curve=json.dumps(correct.mean(0).round(6).tolist()))
    if not all(math.isfinite(v) for v in (row["area_mean"], row["area_std"])):
      raise base.DegenerateResult(f"faithfulness {ident['method']}: the {curve} curve is not finite (the model's scores are "
                       "NaN or infinite on these images)")
    rows.append(row)
  return rows
