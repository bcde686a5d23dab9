"""The grid of a single-pixel evaluation: which methods, targets, outputs and test jitters.

A method is named in the config as a string, `name` or `name(option=value, ...)`, e.g.
"integrated_gradients(baseline='black', steps=100)", parsed by `attribution.registry.parse` (the
one grammar of config, command line and sanity studies); any registered method works. `reduce=`
picks the channel reduction of its map (default 'mean': the signed mean, which for
`absolute_gradient` is the mean of absolute values).
"""

from __future__ import annotations

from saliency_jax.attribution import core, registry
from saliency_jax.evaluation import results
from saliency_jax.config_checks import ConfigError, require_choice, require_non_negative, require_positive

# What SPEC section 4 calls the original's columns, in its order.
METRIC_COLUMNS = (
    "overall.withpix_model_accuracy", "overall.attribution_correct_accuracy", "overall.nopix_model_accuracy",
    "overall.truebg_withblackpix_model_accuracy", "overall.attribution_incorrect",
    "attribution_incorrect.nopix_model_accuracy", "attribution_incorrect.withpix_model_accuracy",
    "attribution_incorrect.blackbg_withpix_model_accuracy", "attribution_incorrect.blackbg_withattrpix_model_accuracy",
    "attribution_incorrect.truebg_withblackattrpix_model_accuracy",
    "attribution_incorrect.truebg_withblackpix_model_accuracy",
    "attribution_incorrect.truebg_withblackattrpix_preserved_accuracy",
    "attribution_incorrect.truebg_withblackpix_preserved_accuracy",
)
# Which run and which cell a row is.
ID_COLUMNS = (*results.RUN_COLUMNS, "train_position_sd", "train_colour_sd", "test_position_sd", "test_colour_sd",
              *results.METHOD_COLUMNS, "reduction", "target", "output", "num_images", "num_missed")
# A cell is done when a row with these values exists (the rest are its results).
CELL_KEY = ("checkpoint_epoch", "test_position_sd", "test_colour_sd", "method", "method_options", "reduction",
            "target", "output", "num_images")
# Graded localisation (`single_pixel.localisation_metrics`), after the original's columns.
LOCALISATION_COLUMNS = ("localisation.rank_mean", "localisation.rank_median", "localisation.top1",
                        "localisation.top5", "localisation.top10", "localisation.mass_mean")
# results.csv: one row per cell.
TABLE = results.Table(columns=(*ID_COLUMNS, *METRIC_COLUMNS, "seconds", *LOCALISATION_COLUMNS), key=CELL_KEY)
def check_config(sp) -> list[registry.MethodSpec]:
  """The `single_pixel` section, checked; returns the parsed methods."""
  if not sp.methods:
    raise ConfigError("single_pixel.methods is empty; name at least one attribution method")
  methods = [registry.parse(m, "single_pixel.methods") for m in sp.methods]
  labels = [m.label + m.reduction for m in methods]
  if len(set(labels)) != len(labels):
    raise ConfigError(f"single_pixel.methods names the same method twice: {list(sp.methods)}")
  for t in sp.targets:
    require_choice("single_pixel.targets", t, core.TARGETS)
  for o in sp.outputs:
    require_choice("single_pixel.outputs", o, core.OUTPUTS)
  if not sp.targets or not sp.outputs or not sp.test_jitter:
    raise ConfigError("single_pixel.targets, single_pixel.outputs and single_pixel.test_jitter must not be empty")
  for pair in sp.test_jitter:
    if len(pair) != 2:
      raise ConfigError(f"single_pixel.test_jitter entry {pair!r} is not (position_sd, colour_sd)")
    require_non_negative("single_pixel.test_jitter position_sd", pair[0])
    require_non_negative("single_pixel.test_jitter colour_sd", pair[1])
  require_non_negative("single_pixel.batch_size", sp.batch_size)  # 0: sized for the device (backend.py)
  require_non_negative("single_pixel.max_images", sp.max_images)
  require_non_negative("single_pixel.examples", sp.examples)
  if sp.chunk_size:
    require_positive("single_pixel.chunk_size", sp.chunk_size, integer=True)
  return methods
