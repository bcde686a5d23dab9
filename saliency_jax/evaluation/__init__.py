"""Evaluation: the single-pixel experiment, the faithfulness curves and the sanity checks (`sanity`,
`similarity`, `randomization`, `invariance`), and their tables and figures; each defined in
docs/evaluation.md."""

from saliency_jax.evaluation.grid import METRIC_COLUMNS
from saliency_jax.evaluation.single_pixel import batch_counts, metrics_from_counts, pointing_mask

__all__ = ["METRIC_COLUMNS", "batch_counts", "metrics_from_counts", "pointing_mask"]
