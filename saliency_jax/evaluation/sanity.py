"""The sanity checks (SPEC section 5) on a trained workdir: `run(config, workdir)`.

Studies (`config.sanity.studies`, a tuple):

- `cascading`, `independent`: model-parameter randomisation (`randomization.py`); every step's
  model is a pytree, and all steps' maps come from one compiled program (`lax.map` over the
  steps, `sanity.model_chunk` models vectorised at a time), each compared with the trained model's;
- `class_sensitivity`: maps for the highest- and the lowest-scoring class of each image;
- `input_invariance`: maps of f1 at x and of its shifted twin f2 at x + c (`invariance.py`);
  methods with a baseline are also run with the baseline shifted alongside;
- `label_randomization`: this workdir (trained with `data.permute_train_labels`) against
  `sanity.reference_workdir` (the same architecture on true labels).

Each study writes `workdir/sanity/<study>.csv`: per method (and step), the mean, std and number
of undefined values over images of every `similarity.METRICS`, plus calibration rows (the
trained model's maps against random maps and against a Sobel edge map). Rows are rewritten
atomically after every method, and a rerun computes only methods that are missing. Figures:
the randomisation strip of maps and the similarity-versus-layer curves, bars for the others.
The maps are explained for the trained model's target (`sanity.target`), held fixed under
randomisation, so only the parameters change.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from saliency_jax import backend
from saliency_jax import data as data_lib
from saliency_jax import files
from saliency_jax import models
from saliency_jax.attribution import core, registry
from saliency_jax.attribution.batching import BatchRunner
from saliency_jax.config_checks import ConfigError, require_choice, require_non_negative, require_positive
from saliency_jax.evaluation import invariance, randomization, results, similarity
from saliency_jax.evaluation.run import method_fn
from saliency_jax.progress import Progress

STUDIES = ("cascading", "independent", "class_sensitivity", "input_invariance", "label_randomization")
ID_COLUMNS = (*results.RUN_COLUMNS, "study", *results.METHOD_COLUMNS, "output", "target", "num_images", "comparison",
              "step", "layer")
COLUMNS = (*ID_COLUMNS, *(f"{m}_{s}" for m in similarity.METRICS for s in ("mean", "std", "undefined")),
           "max_relative_difference", "seconds")
# <study>.csv: a method's rows are done together (its unit of work).
TABLE = results.Table(columns=COLUMNS, key=("checkpoint_epoch", "study", "method", "method_options", "output", "target",
                                            "num_images"))


def studies_of(sc) -> list[str]:
  """The studies, in order. A command-line `--config.sanity.studies=a,b` arrives as ('a,b',), so
  entries are split at commas too."""
  entries = (sc.studies,) if isinstance(sc.studies, str) else tuple(sc.studies)
  studies = [s.strip() for entry in entries for s in str(entry).split(",") if s.strip()]
  for s in studies:
    require_choice("sanity.studies", s, STUDIES)
  return studies


def check_config(sc) -> list[registry.MethodSpec]:
  """The `sanity` section, checked; returns the parsed methods."""
  studies = studies_of(sc)
  if not sc.methods:
    raise ConfigError("sanity.methods is empty; name at least one attribution method")
  methods = [registry.parse(m, "sanity.methods") for m in sc.methods]
  require_choice("sanity.target", sc.target, core.TARGETS)
  require_choice("sanity.output", sc.output, core.OUTPUTS)
  require_choice("sanity.distribution", sc.distribution, randomization.DISTRIBUTIONS)
  require_positive("sanity.scale", sc.scale)
  for field in ("num_images", "model_chunk"):
    require_positive(f"sanity.{field}", sc[field], integer=True)
  require_non_negative("sanity.batch_size", sc.batch_size)  # 0: sized for the device (backend.py)
  require_non_negative("sanity.strip_images", sc.strip_images)
  if "label_randomization" in studies and not sc.reference_workdir:
    raise ConfigError("sanity.studies includes 'label_randomization', which needs sanity.reference_workdir: "
                      "the workdir of the same model trained on true labels")
  return methods


@dataclasses.dataclass
class Context:
  """What every study needs: the config, the images, the trained model and where rows go."""

  config: object
  model: object
  variables: dict
  epoch: int
  normalization: object
  images_u8: np.ndarray  # (N, H, W, C) test images with the pixel
  labels: np.ndarray
  num_classes: int
  maps: "MapRunner"
  out_dir: pathlib.Path
  reference: object = None  # label_randomization: the variables of the model trained on true labels


class MapRunner:
  """Maps of methods over a set of images, batched and split over the devices (of every process).

  One compiled program per (method, study kind); forwards (the trained model, its twin, a
  reference model) and randomised parameters are traced arguments, not constants.
  """

  def __init__(self, model, variables, normalization, batch_size: int, chunk_size: int, key, devices=None):
    self.runner = BatchRunner(devices, batch_size)
    self.mesh = self.runner.mesh
    self.model, self.normalization, self.chunk_size, self.key = model, normalization, chunk_size, key
    self.forward = self.bind(variables)

  def bind(self, variables, model=None) -> core.ModelForward:
    """Another set of variables (a reference run), or another model (the shifted twin), replicated."""
    return core.ModelForward(model or self.model, self.runner.replicate(models.model_variables(variables)))

  def method(self, spec: registry.MethodSpec, output: str) -> Callable:
    return method_fn(spec, output, self.normalization, self.chunk_size, self.key)

  def run(self, key, fn: Callable, per_image: tuple, *shared, image_axis: int = 0) -> np.ndarray:
    """`fn(*shared, *per_image_batch)` over the images, as one numpy array."""
    return np.asarray(self.runner.run(key, fn, per_image, shared, image_axis=image_axis))

  def targets(self, forward, x, which: str, labels) -> np.ndarray:
    """'predicted', 'label', or 'top' / 'bottom': the highest- and lowest-scoring class."""
    def pick(fwd, x, labels):
      logits = fwd(x)
      if which == "label":
        return labels.astype(jnp.int32)
      return (jnp.argmin if which == "bottom" else jnp.argmax)(logits, axis=-1).astype(jnp.int32)

    return self.run(("targets", which, _structure(forward)), pick, (x, labels), forward)

  def maps(self, spec, output, forward, x, targets, fn: Callable | None = None, tag: str = "") -> np.ndarray:
    fn = fn or self.method(spec, output)
    return self.run((spec, output, "maps", tag, _structure(forward)), fn, (x, targets), forward)

  def randomized_maps(self, spec, output, params, randomized, order, which_SL, batch_stats, x, targets,
                      model_chunk: int) -> np.ndarray:
    """(S, N, H, W, C): the maps of every randomisation step, each step's model built from a row
    of `which_SL` inside the program."""
    method = self.method(spec, output)
    model = self.model

    def all_steps(params, randomized, which_SL, batch_stats, x, t):
      def one(which_L):
        mixed = randomization.mix(params, randomized, order, which_L)
        return method(core.ModelForward(model, {"params": mixed, "batch_stats": batch_stats}), x, t)

      return jax.lax.map(one, which_SL, batch_size=min(model_chunk, len(which_SL)))

    shared = self.runner.replicate((params, randomized, jnp.asarray(which_SL), batch_stats))
    return self.run((spec, output, "randomized", tuple(order), which_SL.shape, model_chunk), all_steps, (x, targets),
                    *shared, image_axis=1)


def _structure(forward):
  return jax.tree.structure(forward)


def _ident(ctx: Context, study: str, spec: registry.MethodSpec, target: str) -> dict:
  c = ctx.config
  return {**results.run_columns(c, ctx.epoch), "study": study, **results.method_columns(spec),
          "output": c.sanity.output, "target": target, "num_images": len(ctx.labels)}


def _row(ident: dict, comparison: str, values: dict, step="", layer="", **extra) -> dict:
  return {**ident, "comparison": comparison, "step": step, "layer": layer, **similarity.summarize(values), **extra}


def _calibration_rows(ctx: Context, ident: dict, maps) -> list[dict]:
  """The trained model's maps against random maps (chance) and a Sobel edge map (no model)."""
  key = jax.random.fold_in(jax.random.key(ctx.config.sanity.seed), 1)
  return [_row(ident, "random_map", similarity.compare(maps, similarity.random_maps(key, maps.shape))),
          _row(ident, "edge_map", similarity.compare(maps, similarity.edge_maps(ctx.images_u8)))]


def _randomization(ctx: Context, spec, study: str, extras: dict) -> list[dict]:
  sc = ctx.config.sanity
  params, batch_stats = ctx.variables["params"], ctx.variables.get("batch_stats", {})
  order, randomized, which_SL = extras["order"], extras["randomized"], extras["which_SL"]
  x, t = extras["x"], extras["targets"]
  maps_S = ctx.maps.randomized_maps(spec, sc.output, params, randomized, order, which_SL, batch_stats, x, t,
                                    sc.model_chunk)
  ident = _ident(ctx, study, spec, sc.target)
  rows = [_row(ident, "randomized", similarity.compare(maps_S[0], maps_S[s]), step=s,
               layer=order[s - 1] if s else "none") for s in range(len(which_SL))]
  extras["strip"] = (["trained"] + order, maps_S[:, :sc.strip_images])
  return rows + _calibration_rows(ctx, ident, maps_S[0])


def _class_sensitivity(ctx: Context, spec, extras: dict) -> list[dict]:
  fwd, x = ctx.maps.forward, extras["x"]
  top = ctx.maps.maps(spec, ctx.config.sanity.output, fwd, x, extras["top"])
  bottom = ctx.maps.maps(spec, ctx.config.sanity.output, fwd, x, extras["bottom"])
  ident = _ident(ctx, "class_sensitivity", spec, "top_vs_bottom")
  extras["strip"] = (["top class", "bottom class"], np.stack([top, bottom])[:, :ctx.config.sanity.strip_images])
  return [_row(ident, "top_vs_bottom", similarity.compare(top, bottom))] + _calibration_rows(ctx, ident, top)


def _relative_difference(a, b) -> float:
  scale = np.abs(a).reshape(len(a), -1).max(-1)
  diff = np.abs(a - b).reshape(len(a), -1).max(-1)
  return float(np.max(diff / np.where(scale > 0, scale, 1.0)))


def _input_invariance(ctx: Context, spec, extras: dict) -> list[dict]:
  sc = ctx.config.sanity
  x, t, shift = extras["x"], extras["targets"], extras["shift"]
  original = ctx.maps.maps(spec, sc.output, ctx.maps.forward, x, t)
  x2 = x + np.asarray(shift)
  twin_maps = {"twin": ctx.maps.maps(spec, sc.output, extras["twin"], x2, t)}
  if invariance.takes_baseline(spec.name):
    baseline = dict(spec.options).get("baseline", "black")
    if isinstance(baseline, str) and baseline != "uniform":  # a random baseline cannot be shifted alongside
      fn = invariance.shifted_baseline(ctx.maps.method(spec, sc.output), shift, ctx.normalization, baseline)
      twin_maps["twin_shifted_baseline"] = ctx.maps.maps(spec, sc.output, extras["twin"], x2, t, fn=fn,
                                                         tag="shifted_baseline")
  ident = _ident(ctx, "input_invariance", spec, sc.target)
  extras["strip"] = (["f1(x)", *(f"f2(x+c) {k[5:]}".strip() for k in twin_maps)],
                     np.stack([original, *twin_maps.values()])[:, :sc.strip_images])
  rows = [_row(ident, comparison, similarity.compare(original, maps),
               max_relative_difference=_relative_difference(original, maps))
          for comparison, maps in twin_maps.items()]
  return rows + _calibration_rows(ctx, ident, original)


def _label_randomization(ctx: Context, spec, extras: dict) -> list[dict]:
  sc = ctx.config.sanity
  x = extras["x"]
  mine = ctx.maps.maps(spec, sc.output, ctx.maps.forward, x, extras["targets"])
  reference = ctx.maps.maps(spec, sc.output, extras["reference"], x, extras["reference_targets"])
  ident = _ident(ctx, "label_randomization", spec, sc.target)
  extras["strip"] = (["true labels", "random labels"], np.stack([reference, mine])[:, :sc.strip_images])
  return [_row(ident, "random_vs_true_labels", similarity.compare(reference, mine))] + \
      _calibration_rows(ctx, ident, reference)


def _study_extras(ctx: Context, study: str) -> dict:
  """Per-study inputs computed once for all methods: normalised images, targets, the twin."""
  sc = ctx.config.sanity
  x = np.asarray(ctx.normalization(jnp.asarray(ctx.images_u8)))
  fwd = ctx.maps.forward
  extras = {"x": x, "targets": ctx.maps.targets(fwd, x, sc.target, ctx.labels)}
  if study in randomization.MODES:
    order = randomization.layer_order(ctx.model, ctx.variables, (1, *x.shape[1:]))
    extras.update(order=order, which_SL=randomization.schedule(study, len(order)),
                  randomized=randomization.random_params(jax.random.fold_in(jax.random.key(sc.seed), 0),
                                                         ctx.variables["params"], order, sc.distribution, sc.scale))
  if study == "class_sensitivity":
    extras["top"] = ctx.maps.targets(fwd, x, "top", ctx.labels)
    extras["bottom"] = ctx.maps.targets(fwd, x, "bottom", ctx.labels)
  if study == "input_invariance":
    shift = invariance.shift_vector(sc.input_shift, x.shape[-1])
    twin_model, twin_variables = invariance.shifted_twin(ctx.model, ctx.variables, shift, x.shape[1:])
    twin = ctx.maps.bind(twin_variables, twin_model)
    y1 = ctx.maps.run(("logits", _structure(fwd)), lambda f, x: f(x), (x,), fwd)
    y2 = ctx.maps.run(("logits", _structure(twin)), lambda f, x: f(x), (x + np.asarray(shift),), twin)
    logging.info("shifted twin (c=%s): outputs differ by at most %.2e of their largest value",
                 np.asarray(shift).tolist(), _relative_difference(y1, y2))
    extras.update(shift=np.asarray(shift), twin=twin)
  if study == "label_randomization":
    if ctx.reference is None:
      raise ValueError("label_randomization needs the reference model (sanity.run(..., reference=...))")
    reference = extras["reference"] = ctx.maps.bind(ctx.reference)
    extras["reference_targets"] = ctx.maps.targets(reference, x, sc.target, ctx.labels)
  return extras


_STUDY_FNS = {
    "cascading": lambda ctx, spec, extras: _randomization(ctx, spec, "cascading", extras),
    "independent": lambda ctx, spec, extras: _randomization(ctx, spec, "independent", extras),
    "class_sensitivity": _class_sensitivity,
    "input_invariance": _input_invariance,
    "label_randomization": _label_randomization,
}


def run_study(ctx: Context, study: str, methods: list[registry.MethodSpec]) -> list[dict]:
  """One study over every method; returns its rows (read back where already computed)."""
  path = ctx.out_dir / f"{study}.csv"
  strips_path = ctx.out_dir / f"{study}_maps.npz"
  all_rows = TABLE.read(path)
  strips = dict(np.load(strips_path)) if strips_path.exists() else {}
  write = jax.process_index() == 0
  extras = None
  rows, computed = [], 0
  progress = Progress(f"sanity {study}", len(methods), "methods")
  for i, spec in enumerate(methods):
    target = "top_vs_bottom" if study == "class_sensitivity" else ctx.config.sanity.target
    key = TABLE.key_of(_ident(ctx, study, spec, target))
    done = [r for r in all_rows if TABLE.key_of(r) == key]
    if done:
      rows += done
      progress.total -= 1  # the time left is for the methods still to compute
      continue
    extras = extras or _study_extras(ctx, study)
    t0 = time.perf_counter()
    new = _STUDY_FNS[study](ctx, spec, extras)
    seconds = time.perf_counter() - t0
    for r in new:
      r["seconds"] = round(seconds, 2)
    rows += new
    all_rows += new
    columns, maps = extras.pop("strip")
    strips[f"{spec.label}|columns"] = np.asarray(columns)
    strips[f"{spec.label}|maps"] = maps
    if write:
      TABLE.write(path, all_rows)
      with files.atomic_open(strips_path, "wb") as f:
        np.savez(f, **strips)
    # The number worth a glance: randomisation's last step (everything re-initialised), else the first row.
    head = ([r for r in new if r["comparison"] == "randomized"] or new)[-1 if study in ("cascading", "independent")
                                                                       else 0]
    computed += 1
    logging.info("sanity %s %d/%d %s: %s  (%.1f s for %d images)%s", study, i + 1, len(methods), spec.label,
                 "  ".join(f"{m} {float(head[f'{m}_mean']):.3f}" for m in similarity.METRICS), seconds,
                 len(ctx.labels), f"; {progress.left(computed)} in this study" if computed < progress.total else "")
  if write:
    from saliency_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
    figures.sanity(ctx.out_dir, study, rows, strips, ctx.images_u8[:ctx.config.sanity.strip_images],
                   title=f"{ctx.config.model.name}, epoch {ctx.epoch}, {ctx.config.sanity.output} of the "
                         f"{ctx.config.sanity.target} class")
  return rows


def run(config, workdir, trained, *, reference=None, devices=None) -> dict[str, list[dict]]:
  """Every study of `config.sanity.studies` on `trained` (a `training.train.Trained`), writing into
  `workdir`; `reference`: the same model trained on true labels, for `label_randomization`."""
  sc = config.sanity
  methods = check_config(sc)
  workdir = pathlib.Path(workdir)
  model, variables, epoch, data = trained.model, trained.variables, trained.epoch, trained.data
  # Test images with the pixel under training's jitter: the images the model was trained on.
  tests = data.test_set("pixel", config.pixel.position_sd, config.pixel.colour_sd)
  keep = data_lib.balanced_indices(tests.labels_B, sc.num_images, data.seed)
  batch_size, chunk_size = backend.evaluation_sizes("sanity", sc, devices)
  runner = MapRunner(model, variables, data.normalization, batch_size, chunk_size,
                     jax.random.fold_in(jax.random.key(sc.seed), 2), devices)
  ctx = Context(config, model, variables, epoch, data.normalization, np.asarray(tests.images_BHWC)[keep],
                np.asarray(tests.labels_B)[keep], data.num_classes, runner, workdir / "sanity",
                reference.variables if reference is not None else None)
  out = {}
  for study in studies_of(sc):
    t0 = time.perf_counter()
    out[study] = run_study(ctx, study, methods)
    logging.info("sanity study %s: %.1f s -> %s", study, time.perf_counter() - t0, ctx.out_dir / f"{study}.csv")
  if jax.process_index() == 0 and out:
    logging.info("sanity checks:\n%s", summary_text([r for rows in out.values() for r in rows]))
  return out


def _numbers(column):
  """Floats from a column that mixes this run's floats with strings read back from a CSV: 'nan'
  (an undefined similarity) and '' (a metric the row does not have); pandas' `to_numeric` rejects
  'nan', and `errors='coerce'` would hide a real parse error."""
  return column.map(lambda v: float("nan") if v is None or v == "" else float(v))


def summary_text(rows: list[dict]) -> str:
  """Mean similarities per study, method and comparison (randomisation: the last step)."""
  import pandas as pd  # pylint: disable=g-import-not-at-top

  df = pd.DataFrame(rows)
  if df.empty:
    return "(no rows)"
  df["step"] = pd.to_numeric(df["step"], errors="coerce")
  last = df[df["comparison"] == "randomized"].groupby(["study", "method", "method_options"])["step"].transform("max")
  keep = (df["comparison"] != "randomized") | (df["step"] == last.reindex(df.index))
  table = df[keep & (df["comparison"] != "edge_map")].copy()
  table["method"] = results.method_label(table["method"], table["method_options"])
  cols = ["study", "method", "comparison", "layer"] + [f"{m}_mean" for m in similarity.METRICS]
  for c in cols[4:]:
    table[c] = _numbers(table[c]).round(3)
  if "max_relative_difference" in table and table["max_relative_difference"].notna().any():
    cols.append("max_relative_difference")
    table["max_relative_difference"] = _numbers(table["max_relative_difference"]).map(
        lambda v: "" if pd.isna(v) else f"{v:.1e}")
  return table[cols].to_string(index=False)
