"""Functional metrics: pure functions, the single source of the math of :mod:`fabricmetrics.metrics`."""

from fabricmetrics.metrics.functional.regression import pearson_r, regression_report
from fabricmetrics.metrics.functional.ssl import (
    alignment_score,
    contrastive_accuracy_score,
    effective_rank,
    uniformity_score,
)

__all__ = [
    "alignment_score",
    "contrastive_accuracy_score",
    "effective_rank",
    "pearson_r",
    "regression_report",
    "uniformity_score",
]
