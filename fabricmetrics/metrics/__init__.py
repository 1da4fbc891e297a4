"""Metrics for representation learning and probes: SSL geometry, collapse, regression.

Functions (torch tensors in → 0-d tensor out; NumPy arrays in → NumPy scalar out) are the single
source of the math; the classes are torchmetrics ``Metric``s built on them, with states that stay
exact across batches and ranks. See ``docs/metrics.md`` for the formulas.
"""

from fabricmetrics.metrics.functional import (
    alignment_score,
    contrastive_accuracy_score,
    effective_rank,
    pearson_r,
    regression_report,
    uniformity_score,
)
from fabricmetrics.metrics.ssl import Alignment, ContrastiveAccuracy, EffectiveRank, Uniformity

__all__ = [
    "Alignment",
    "ContrastiveAccuracy",
    "EffectiveRank",
    "Uniformity",
    "alignment_score",
    "contrastive_accuracy_score",
    "effective_rank",
    "pearson_r",
    "regression_report",
    "uniformity_score",
]
