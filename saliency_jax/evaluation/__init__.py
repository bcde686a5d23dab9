"""Evaluation: the single-pixel experiment (SPEC section 4), the sanity checks (SPEC section 5:
`sanity`, `similarity`, `randomization`, `invariance`) and their tables and figures."""

from saliency_jax.evaluation.grid import METRIC_COLUMNS
from saliency_jax.evaluation.single_pixel import batch_counts, metrics_from_counts, pointing_mask

__all__ = ["METRIC_COLUMNS", "batch_counts", "metrics_from_counts", "pointing_mask"]
