"""The sanity checks (docs/evaluation.md, "Sanity checks") on a trained model: the studies of
`config.sanity.studies`, each a table `sanity/<study>.csv`; a unit is one study's method.

- `cascading`, `independent`: model-parameter randomisation (`evaluation.randomization`); every
  step's model is a pytree, and all steps' maps come from one compiled program (`lax.map` over the
  steps, `sanity.model_chunk` models vectorised at a time), each compared with the trained model's;
- `class_sensitivity`: maps for the highest- and the lowest-scoring class of each image;
- `image_sensitivity`: each image's map against the mean map of the other images (near 1: about the
  same map whatever the image; docs/evaluation.md says how to read it);
- `input_invariance`: maps of f1 at x and of its shifted twin f2 at x + c (`evaluation.invariance`);
  methods with a baseline are also run with the baseline shifted alongside;
- `label_randomization`: this workdir (trained with `data.permute_train_labels`) against
  `sanity.reference_workdir` (the same architecture on true labels).

A method's rows hold the mean, std and number of undefined values over images of every
`similarity.METRICS`, then calibration rows (the trained model's maps against random maps and a
Sobel edge map). Figures: the randomisation strip of maps (kept in `<study>_maps.npz`) and the
similarity-versus-layer curves, bars for the other studies. The maps are explained for the trained
model's target (`sanity.target`), held fixed under randomisation, so only the parameters change; a
method that needs a random key draws image i's from `fold_in(method key, i)` (`binding`), the same
for every randomisation step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from saliency_jax import backend
from saliency_jax import data as data_lib
from saliency_jax.attribution import core, registry
from saliency_jax.checks import require_choice, require_positive, require_non_negative
from saliency_jax.evaluation import invariance, randomization, results, similarity
from saliency_jax.stages import base
from saliency_jax.stages.runner import ModelRunner

STUDIES = ("cascading", "independent", "class_sensitivity", "image_sensitivity", "input_invariance",
           "label_randomization")
ID_COLUMNS = (*results.RUN_COLUMNS, "study", *results.METHOD_COLUMNS, results.REVISION, "output", "target", "num_images", "comparison",
              "step", "layer")
_STATS = tuple(f"{m}_{s}" for m in similarity.METRICS for s in ("mean", "std", "undefined"))
# A study's rows of one method are done together (its unit of work); the calibration rows come last.
TABLE = results.Table(
    columns=(*ID_COLUMNS, *_STATS, "max_relative_difference", "seconds", "compile_seconds"),
    key=("checkpoint_epoch", "weights", "study", "method", "method_options", "output", "target", "num_images",
         results.REVISION),
    kinds={**{c: "count" for c in ("model_seed", "data_seed", "checkpoint_epoch", results.REVISION, "num_images")},
           **{c: ("count" if c.endswith("undefined") else "number") for c in _STATS},
           "step": "count", "max_relative_difference": "number", "seconds": "finite", "compile_seconds": "finite"},
    optional=("weights", "step", "max_relative_difference", "compile_seconds"), former={results.REVISION: "1"})
CALIBRATION = ("random_map", "edge_map")
# This stage's salt in the methods' random keys (`binding.method_key`).
KEY_SALT = 2


def studies_of(sc) -> list[str]:
  """The studies, in order. A command-line `--config.sanity.studies=a,b` arrives as ('a,b',), so
  entries are split at commas too."""
  entries = (sc.studies,) if isinstance(sc.studies, str) else tuple(sc.studies)
  studies = [s.strip() for entry in entries for s in str(entry).split(",") if s.strip()]
  for s in studies:
    require_choice("sanity.studies", s, STUDIES)
  return studies


class Sanity(base.Stage):
  name = "sanity"
  table = TABLE
  noun = "methods"

  @classmethod
  def enabled(cls, config) -> bool:
    return bool(studies_of(config.sanity))

  @classmethod
  def check(cls, config) -> list[registry.MethodSpec]:
    """The `sanity` section; returns its parsed methods."""
    sc = config.sanity
    studies = studies_of(sc)
    methods = registry.parse_all(sc.methods, "sanity.methods")
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):  # the studies compare whole maps: a reduction does not make another method
      raise ValueError(f"sanity.methods names a method twice (reduce= does not apply to the sanity studies): "
                       f"{list(sc.methods)}")
    require_choice("sanity.target", sc.target, core.TARGETS)
    require_choice("sanity.output", sc.output, core.OUTPUTS)
    require_choice("sanity.distribution", sc.distribution, randomization.DISTRIBUTIONS)
    require_positive("sanity.scale", sc.scale)
    for field in ("num_images", "model_chunk"):
      require_positive(f"sanity.{field}", sc[field], integer=True)
    for field in ("batch_size", "chunk_size", "strip_images"):  # sizes 0: for the device (backend.py)
      require_non_negative(f"sanity.{field}", sc[field])
    if "image_sensitivity" in studies and sc.num_images < 2:
      raise ValueError(f"sanity.num_images={sc.num_images} is too few for 'image_sensitivity', which compares each "
                       "image's map with the other images' mean map; give 2 or more")
    if "label_randomization" in studies and not sc.reference_workdir:
      raise ValueError("sanity.studies includes 'label_randomization', which needs sanity.reference_workdir: "
                       "the workdir of the same model trained on true labels")
    return methods

  @classmethod
  def methods(cls, config, plan):
    return [(spec, config.sanity.output) for spec in plan]

  def __init__(self, config, plan, trained, workdir, devices=None, reference=None):
    super().__init__(config, plan, trained, workdir, devices)
    sc = config.sanity
    data = trained.data
    # Test images with the pixel under training's jitter: the images the model was trained on.
    tests = data.test_set("pixel", config.pixel.position_sd, config.pixel.colour_sd)
    self.index = data_lib.balanced_indices(tests.labels_B, sc.num_images, data.seed)
    self.images_u8 = np.asarray(tests.images_BHWC)[self.index]
    self.labels = np.asarray(tests.labels_B)[self.index]
    batch_size, chunk_size = backend.evaluation_sizes(self.name, sc, devices)
    self.runner = ModelRunner(trained.model, trained.variables, data.normalization, batch_size=batch_size,
                              chunk_size=chunk_size, seed=sc.seed, salt=KEY_SALT, devices=devices)
    self.reference = reference  # label_randomization: the model trained on true labels (a `Trained`)
    self._extras, self._strips = {}, {}

  def _ident(self, study, spec, target) -> dict:
    c = self.config
    return {**results.run_columns(c, self.trained), "study": study, **results.method_columns(spec),
            "output": c.sanity.output, "target": target, "num_images": len(self.labels)}

  def units(self) -> list[base.Unit]:
    out = []
    for study in studies_of(self.config.sanity):
      target = "top_vs_bottom" if study == "class_sensitivity" else self.config.sanity.target
      out += [base.Unit((TABLE.key_of(self._ident(study, spec, target)),), f"{study}.csv", f"{study} {spec.label}",
                        (study, spec, target)) for spec in self.plan]
    return out

  def complete(self, unit, rows) -> bool:
    return {r["comparison"] for r in rows} >= set(CALIBRATION)  # written last: a cut table lacks them

  def run(self, unit: base.Unit) -> base.Output:
    study, spec, target = unit.payload
    if study not in self._extras:
      self._extras = {study: self._study_extras(study)}  # one study's inputs at a time
    extras = self._extras[study]
    ident = self._ident(study, spec, target)
    rows, (columns, maps) = _STUDY_FNS[study](self, spec, extras, ident)
    rows += self._calibration_rows(ident, extras["calibrate"](maps))
    strips = self._strip_file(study)
    strips[f"{spec.label}|columns"] = np.asarray(columns)
    strips[f"{spec.label}|maps"] = maps[:, :self.config.sanity.strip_images]
    # The number worth a glance: randomisation's last step (everything re-initialised), else the first row.
    head = rows[-3] if study in randomization.MODES else rows[0]
    note = "  ".join(f"{m} {float(head[f'{m}_mean']):.3f}" for m in similarity.METRICS)
    return base.Output(rows, {f"{study}_maps.npz": strips}, f"{note}  ({len(self.labels)} images)")

  def _strip_file(self, study) -> dict:
    if study not in self._strips:
      path = self.out_dir / f"{study}_maps.npz"
      try:
        with np.load(path) as z:
          self._strips[study] = dict(z)
      except FileNotFoundError:
        self._strips[study] = {}
      except Exception as e:  # pylint: disable=broad-except  # only figures depend on it: start it again
        logging.warning("%s is unreadable (%s); its strips start again", path, e)
        self._strips[study] = {}
    return self._strips[study]

  def _calibration_rows(self, ident: dict, maps) -> list[dict]:
    """The trained model's maps against random maps (chance) and a Sobel edge map (no model)."""
    key = jax.random.fold_in(jax.random.key(self.config.sanity.seed), 1)
    return [_row(ident, "random_map", similarity.compare(maps, similarity.random_maps(key, maps.shape))),
            _row(ident, "edge_map", similarity.compare(maps, similarity.edge_maps(self.images_u8)))]

  def maps(self, spec, x, targets, forward=None, fn=None, tag=""):
    return self.runner.maps(spec, self.config.sanity.output, x, targets, self.index, forward=forward, fn=fn, tag=tag)

  def _study_extras(self, study: str) -> dict:
    """Per-study inputs computed once for all methods: normalised images, targets, the twin."""
    sc = self.config.sanity
    runner = self.runner
    x = np.asarray(runner.normalization(jnp.asarray(self.images_u8)))
    extras = {"x": x, "targets": runner.targets(sc.target, x, self.labels), "calibrate": lambda maps: maps}
    if study in randomization.MODES:
      order = randomization.layer_order(self.trained.model, self.trained.variables, (1, *x.shape[1:]))
      extras.update(order=order, which_SL=randomization.schedule(study, len(order)),
                    randomized=randomization.random_params(jax.random.fold_in(jax.random.key(sc.seed), 0),
                                                           self.trained.variables["params"], order, sc.distribution,
                                                           sc.scale),
                    calibrate=lambda maps_S: maps_S[0])
    if study == "class_sensitivity":
      extras["top"] = runner.targets("predicted", x, self.labels)
      extras["bottom"] = runner.targets("lowest", x, self.labels)
      extras["calibrate"] = lambda maps: maps[0]
    if study in ("image_sensitivity", "input_invariance", "label_randomization"):
      extras["calibrate"] = lambda maps: maps[0]
    if study == "input_invariance":
      shift = invariance.shift_vector(sc.input_shift, x.shape[-1])
      twin_model, twin_variables = invariance.shifted_twin(self.trained.model, self.trained.variables, shift,
                                                           x.shape[1:])
      twin = runner.bind(twin_variables, twin_model)
      logits = lambda f, x: runner.run(("logits", jax.tree.structure(f)), lambda f, x: f(x), (x,), f)
      y1, y2 = np.asarray(logits(runner.forward, x)), np.asarray(logits(twin, x + np.asarray(shift)))
      logging.info("shifted twin (c=%s): outputs differ by at most %.2e of their largest value",
                   np.asarray(shift).tolist(), _relative_difference(y1, y2))
      extras.update(shift=np.asarray(shift), twin=twin)
    if study == "label_randomization":
      if self.reference is None:
        raise ValueError("label_randomization needs the reference model (Sanity(..., reference=...))")
      reference = extras["reference"] = runner.bind(self.reference.variables)
      extras["reference_targets"] = runner.targets(sc.target, x, self.labels, forward=reference)
      extras["calibrate"] = lambda maps: maps[0]
    return extras

  def finish(self, rows: list[dict], computed: int) -> None:
    if jax.process_index() != 0 or not rows:
      return
    from saliency_jax.evaluation import figures  # pylint: disable=g-import-not-at-top
    sc = self.config.sanity
    for study in studies_of(sc):
      mine = [r for r in rows if r["study"] == study]
      figures.sanity(self.out_dir, study, mine, self._strip_file(study), self.images_u8[:sc.strip_images],
                     title=f"{self.config.model.name}, epoch {self.trained.epoch}, {sc.output} of the {sc.target} "
                           "class")
    logging.info("sanity checks:\n%s", summary_text(rows))


def _row(ident: dict, comparison: str, values: dict, step="", layer="", **extra) -> dict:
  return {**ident, "comparison": comparison, "step": step, "layer": layer, **similarity.summarize(values), **extra}


def randomized_maps(runner: ModelRunner, spec, output: str, variables, randomized, order, which_SL, x, targets,
                    index, model_chunk: int = 1) -> np.ndarray:
  """(S, N, H, W, C): the maps of every randomisation step, each step's model built from a row of
  `which_SL` (`randomization.schedule`) inside one program, `model_chunk` models vectorised at a time."""
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  method, model = runner.method(spec, output), runner.model

  def all_steps(params, randomized, which_SL, batch_stats, x, t, index_B):
    def one(which_L):
      mixed = randomization.mix(params, randomized, order, which_L)
      return method(core.ModelForward(model, {"params": mixed, "batch_stats": batch_stats}), x, t, index_B)

    return jax.lax.map(one, which_SL, batch_size=min(model_chunk, len(which_SL)))

  shared = runner.runner.replicate((params, randomized, jnp.asarray(which_SL), batch_stats))
  return np.asarray(runner.run((spec, output, "randomized", tuple(order), which_SL.shape, model_chunk), all_steps,
                               (x, np.asarray(targets, np.int32), np.asarray(index)), *shared, image_axis=1))


def _randomization(stage: Sanity, spec, extras: dict, ident: dict):
  sc = stage.config.sanity
  maps_S = randomized_maps(stage.runner, spec, sc.output, stage.trained.variables, extras["randomized"],
                           extras["order"], extras["which_SL"], extras["x"], extras["targets"], stage.index,
                           sc.model_chunk)
  order = extras["order"]
  rows = [_row(ident, "randomized", similarity.compare(maps_S[0], maps_S[s]), step=s, layer=order[s - 1] if s else
               "none") for s in range(len(extras["which_SL"]))]
  return rows, (["trained"] + order, maps_S)


def _class_sensitivity(stage: Sanity, spec, extras: dict, ident: dict):
  top = stage.maps(spec, extras["x"], extras["top"])
  bottom = stage.maps(spec, extras["x"], extras["bottom"])
  return [_row(ident, "top_vs_bottom", similarity.compare(top, bottom))], (["top class", "bottom class"],
                                                                           np.stack([top, bottom]))


def _image_sensitivity(stage: Sanity, spec, extras: dict, ident: dict):
  maps = stage.maps(spec, extras["x"], extras["targets"])
  others = similarity.others_mean(maps)
  return [_row(ident, "vs_other_images", similarity.compare(maps, others))], (
      ["this image", "the others' mean |map|"],
      np.stack([maps, (others[1] if maps.ndim == 3 else np.broadcast_to(others[1][..., None], maps.shape))
                .astype(maps.dtype)]))


def _relative_difference(a, b) -> float:
  scale = np.abs(a).reshape(len(a), -1).max(-1)
  diff = np.abs(a - b).reshape(len(a), -1).max(-1)
  return float(np.max(diff / np.where(scale > 0, scale, 1.0)))


def _input_invariance(stage: Sanity, spec, extras: dict, ident: dict):
  sc = stage.config.sanity
  x, t, shift = extras["x"], extras["targets"], extras["shift"]
  original = stage.maps(spec, x, t)
  x2 = x + np.asarray(shift)
  twin_maps = {"twin": stage.maps(spec, x2, t, forward=extras["twin"])}
  if invariance.takes_baseline(spec.name):
    baseline = dict(spec.options).get("baseline", "black")
    if isinstance(baseline, str) and baseline != "uniform":  # a random baseline cannot be shifted alongside
      fn = invariance.shifted_baseline(stage.runner.method(spec, sc.output), shift, stage.runner.normalization,
                                       baseline)
      twin_maps["twin_shifted_baseline"] = stage.maps(spec, x2, t, forward=extras["twin"], fn=fn,
                                                      tag="shifted_baseline")
  rows = [_row(ident, comparison, similarity.compare(original, maps),
               max_relative_difference=_relative_difference(original, maps))
          for comparison, maps in twin_maps.items()]
  return rows, (["f1(x)", *(f"f2(x+c) {k[5:]}".strip() for k in twin_maps)], np.stack([original, *twin_maps.values()]))


def _label_randomization(stage: Sanity, spec, extras: dict, ident: dict):
  x = extras["x"]
  mine = stage.maps(spec, x, extras["targets"])
  reference = stage.maps(spec, x, extras["reference_targets"], forward=extras["reference"])
  return [_row(ident, "random_vs_true_labels", similarity.compare(reference, mine))], (
      ["true labels", "random labels"], np.stack([reference, mine]))


_STUDY_FNS = {
    "cascading": _randomization,
    "independent": _randomization,
    "class_sensitivity": _class_sensitivity,
    "image_sensitivity": _image_sensitivity,
    "input_invariance": _input_invariance,
    "label_randomization": _label_randomization,
}


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
