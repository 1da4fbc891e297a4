"""What a probe is scored with: the default metric sets, a ``scoring=`` override, and cross-validation.

A probe is scored by a :class:`ProbeScorer`, a callable ``(estimator, X, y) -> dict[str, float]``
in scikit-learn's multi-metric convention, so one object serves a held-out set
(:func:`holdout_scores`) and :func:`~sklearn.model_selection.cross_validate` (:func:`cv_scores`).
Classifiers get :data:`CLASSIFICATION_METRICS` (from :func:`classification_scores`, i.e.
scikit-learn's ``classification_report`` and ``balanced_accuracy_score``), regressors get
:data:`REGRESSION_METRICS` (from :func:`fabricmetrics.metrics.regression_report`); ``scoring=``
replaces both with scikit-learn scorers named as in ``cross_validate(scoring=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score, check_scoring, classification_report
from sklearn.model_selection import cross_validate

from fabricmetrics.exceptions import ConfigurationError
from fabricmetrics.metrics import regression_report

__all__ = [
    "CLASSIFICATION_METRICS",
    "REGRESSION_METRICS",
    "ProbeKind",
    "ProbeScorer",
    "Scoring",
    "classification_scores",
    "cv_metric_names",
    "cv_scores",
    "holdout_scores",
]

ProbeKind = Literal["classification", "regression"]
"""Which default metric set a probe gets, decided by :func:`sklearn.base.is_classifier`."""

Scoring = str | Sequence[str] | Mapping[str, str | Callable[..., float]]
"""A ``scoring=`` override: a scorer name, a list of names, or a dict name → name or scorer callable."""

CLASSIFICATION_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "f1_weighted",
    "f1_macro",
    "precision_macro",
    "recall_macro",
)
"""The metrics of a classifier probe, in logging order."""

REGRESSION_METRICS: tuple[str, ...] = ("MAE", "MedAE", "RMSE", "MSE", "R2", "PCC", "EVar")
"""The metrics of a regressor probe, in logging order (those of :func:`~fabricmetrics.metrics.regression_report`)."""


def classification_scores(y_true: Any, y_pred: Any, sample_weight: Any = None) -> dict[str, float]:
    """The six classification metrics of a probe, computed by scikit-learn.

    ``accuracy``, ``f1_weighted``, ``f1_macro``, ``precision_macro`` and ``recall_macro`` come from
    one :func:`sklearn.metrics.classification_report` (``zero_division=0``: a class never predicted
    counts as precision 0, scikit-learn's default value, without its warning);
    ``balanced_accuracy`` from :func:`sklearn.metrics.balanced_accuracy_score`.

    Args:
        y_true: ``(n_samples,)`` class labels.
        y_pred: ``(n_samples,)`` predicted labels.
        sample_weight: ``(n_samples,)`` weights, or None.

    Returns:
        Metric name → Python float, in the order of :data:`CLASSIFICATION_METRICS`.

    Example:
        >>> scores = classification_scores([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0])
        >>> {name: round(value, 3) for name, value in scores.items()}  # doctest: +NORMALIZE_WHITESPACE
        {'accuracy': 0.667, 'balanced_accuracy': 0.667, 'f1_weighted': 0.656, 'f1_macro': 0.656,
         'precision_macro': 0.722, 'recall_macro': 0.667}
    """
    report = classification_report(y_true, y_pred, sample_weight=sample_weight, output_dict=True, zero_division=0.0)
    macro, weighted = report["macro avg"], report["weighted avg"]
    return {
        "accuracy": float(report["accuracy"]),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred, sample_weight=sample_weight)),
        "f1_weighted": float(weighted["f1-score"]),
        "f1_macro": float(macro["f1-score"]),
        "precision_macro": float(macro["precision"]),
        "recall_macro": float(macro["recall"]),
    }


class ProbeScorer:
    """Scores a fitted probe: ``scorer(estimator, X, y) -> {metric: float}``.

    Without ``scoring``, the metric set follows ``kind``: :data:`CLASSIFICATION_METRICS` or
    :data:`REGRESSION_METRICS`, from one ``predict`` call. With ``scoring``, the scorers are
    scikit-learn's (:func:`sklearn.metrics.check_scoring`), named as given; their values keep
    scikit-learn's signs (``neg_mean_squared_error`` is negative).

    Args:
        kind: the default metric set to use.
        scoring: a scorer name (``"roc_auc_ovr"``), a list of names, or a dict name → scorer name
            or scorer callable ``(estimator, X, y) -> float`` (e.g. from
            :func:`~sklearn.metrics.make_scorer`).

    Raises:
        ConfigurationError: ``scoring`` is not one of the forms above or names an unknown scorer.

    Example:
        >>> import numpy as np
        >>> from sklearn.linear_model import LogisticRegression
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.normal(size=(40, 3)), np.repeat([0, 1], 20)
        >>> X[y == 1] += 2.0
        >>> probe = LogisticRegression().fit(X, y)
        >>> ProbeScorer("classification").names
        ('accuracy', 'balanced_accuracy', 'f1_weighted', 'f1_macro', 'precision_macro', 'recall_macro')
        >>> scorer = ProbeScorer("classification", scoring=["accuracy", "roc_auc"])
        >>> {name: round(value, 3) for name, value in scorer(probe, X, y).items()}
        {'accuracy': 0.975, 'roc_auc': 1.0}
    """

    def __init__(self, kind: ProbeKind, scoring: Scoring | None = None) -> None:
        if kind not in ("classification", "regression"):
            raise ConfigurationError(f"kind must be 'classification' or 'regression', got {kind!r}.")
        self.kind: ProbeKind = kind
        self.scoring = scoring
        self._scorer: Callable[..., dict[str, float]] | None = None
        self.names: tuple[str, ...]
        if scoring is None:
            self.names = CLASSIFICATION_METRICS if kind == "classification" else REGRESSION_METRICS
            return
        spec = [scoring] if isinstance(scoring, str) else scoring
        if not isinstance(spec, Mapping | Sequence):
            raise ConfigurationError(
                f"scoring must be a scorer name, a list of names, or a dict name → scorer; got {scoring!r}. "
                "HINT: scoring={'acc': 'accuracy', 'auc': make_scorer(roc_auc_score, response_method='predict_proba')}."
            )
        names = list(spec)
        if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ConfigurationError(f"scoring needs distinct, non-empty metric names; got {names!r}.")
        try:
            self._scorer = check_scoring(None, scoring=dict(spec) if isinstance(spec, Mapping) else list(spec))
        except (ValueError, TypeError) as err:
            raise ConfigurationError(
                f"Invalid scoring {scoring!r}: {err} HINT: sklearn.metrics.get_scorer_names() lists the names."
            ) from err
        self.names = tuple(names)

    def __call__(self, estimator: Any, X: Any, y: Any) -> dict[str, float]:
        """Score the fitted ``estimator`` on ``(X, y)``; keys are :attr:`names`, in order."""
        if self._scorer is not None:
            scores = self._scorer(estimator, X, y)
            return {name: float(scores[name]) for name in self.names}
        return self.from_predictions(y, estimator.predict(X))

    def from_predictions(self, y_true: Any, y_pred: Any) -> dict[str, float]:
        """The default metric set from predictions (what a probe fitted across ranks is scored with).

        Raises:
            ConfigurationError: a ``scoring`` override is set (scorers need the estimator).
        """
        if self._scorer is not None:
            raise ConfigurationError("A scoring= override needs the estimator; it cannot score bare predictions.")
        if self.kind == "classification":
            return classification_scores(y_true, y_pred)
        return regression_report(y_true, y_pred)

    def nan_scores(self) -> dict[str, float]:
        """Every metric as NaN (what a probe on non-finite embeddings reports)."""
        return dict.fromkeys(self.names, math.nan)


def cv_metric_names(names: Sequence[str]) -> list[str]:
    """The keys that cross-validation logs for ``names``: each mean, then its ``_std``.

    Example:
        >>> cv_metric_names(["MAE", "R2"])
        ['MAE', 'MAE_std', 'R2', 'R2_std']
    """
    return [key for name in names for key in (name, f"{name}_std")]


def holdout_scores(
    estimator: Any, scorer: ProbeScorer, X_train: Any, y_train: Any, X_test: Any, y_test: Any
) -> dict[str, float]:
    """Fit a fresh clone of ``estimator`` on the train set and score it on the test set.

    Args:
        estimator: an unfitted scikit-learn estimator (left untouched: a clone is fitted).
        scorer: what to score with.
        X_train: train features.
        y_train: train targets.
        X_test: test features.
        y_test: test targets.

    Returns:
        Metric name → float, in the order of ``scorer.names``.

    Example:
        >>> import numpy as np
        >>> from sklearn.linear_model import Ridge
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(30, 2))
        >>> y = X @ np.array([1.0, -2.0]) + 0.1 * rng.normal(size=30)
        >>> scores = holdout_scores(Ridge(), ProbeScorer("regression"), X[:20], y[:20], X[20:], y[20:])
        >>> list(scores), round(scores["R2"], 3)
        (['MAE', 'MedAE', 'RMSE', 'MSE', 'R2', 'PCC', 'EVar'], 0.964)
    """
    fitted = clone(estimator).fit(X_train, y_train)
    return scorer(fitted, X_test, y_test)


def cv_scores(estimator: Any, scorer: ProbeScorer, X: Any, y: Any, cv: Any) -> dict[str, float]:
    """Cross-validate a clone of ``estimator`` on ``(X, y)``: the mean and ``_std`` of every metric.

    Runs :func:`sklearn.model_selection.cross_validate` (``error_score="raise"``); ``_std`` is the
    population standard deviation over folds (``numpy.std``, ``ddof=0``).

    Args:
        estimator: an unfitted scikit-learn estimator.
        scorer: what each fold is scored with.
        X: features.
        y: targets.
        cv: anything ``cross_validate`` takes as ``cv`` (number of folds, splitter, list of splits).

    Returns:
        ``{metric: mean, metric_std: std, ...}`` in the order of :func:`cv_metric_names`.

    Example:
        >>> import numpy as np
        >>> from sklearn.linear_model import Ridge
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(30, 2))
        >>> y = X @ np.array([1.0, -2.0]) + 0.1 * rng.normal(size=30)
        >>> scores = cv_scores(Ridge(), ProbeScorer("regression", scoring=["r2"]), X, y, cv=3)
        >>> list(scores), round(scores["r2"], 3)
        (['r2', 'r2_std'], 0.976)
    """
    folds = cross_validate(clone(estimator), X, y, cv=cv, scoring=scorer, error_score="raise")
    out: dict[str, float] = {}
    for name in scorer.names:
        values = np.asarray(folds[f"test_{name}"], dtype=np.float64)
        out[name], out[f"{name}_std"] = float(values.mean()), float(values.std())
    return out
