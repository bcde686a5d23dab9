"""The evaluation stages a trained model goes through, by name, in the order `pipeline` runs them.

Each is one file declaring a `base.Stage` (its config section, table, checks, units of work);
`base.run_stage` is the one loop that runs any of them (resume, validation of what is read back,
atomic writes, the running marker, progress, provenance). A new stage is a file here, an entry
below, a config section of the same name, and its test.
"""

from saliency_jax.stages.base import Output, Stage, Unit, run_stage
from saliency_jax.stages.faithfulness import Faithfulness
from saliency_jax.stages.sanity import Sanity
from saliency_jax.stages.single_pixel import SinglePixel

STAGES: dict[str, type[Stage]] = {stage.name: stage for stage in (SinglePixel, Sanity, Faithfulness)}

__all__ = ["STAGES", "Stage", "Unit", "Output", "run_stage", "SinglePixel", "Sanity", "Faithfulness"]
