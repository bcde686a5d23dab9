"""Evaluation's definitions, as pure functions of a forward, images and maps: the single-pixel
measurements (`single_pixel`), faithfulness curves (`faithfulness`), map similarity, parameter
randomisation and the shifted twin of the sanity studies (`similarity`, `randomization`,
`invariance`); result tables (`results`), figures and the tables over seeds (`aggregate`). The
stages that run them over a workdir are in `saliency_jax.stages`; each is defined in
docs/evaluation.md."""

from saliency_jax.evaluation.single_pixel import METRIC_COLUMNS, batch_counts, metrics_from_counts, pointing_mask

__all__ = ["METRIC_COLUMNS", "batch_counts", "metrics_from_counts", "pointing_mask"]
