"""Regression metrics for probes: weighted Pearson correlation and a one-call regression report.

:func:`pearson_r` runs in torch for tensors and NumPy arrays alike (see ``_backend``).
:func:`regression_report` gathers the seven numbers the probing metric sets log, taking every one
that scikit-learn provides from scikit-learn, and honours ``sample_weight`` in all of them.
"""

from __future__ import annotations

from typing import Literal, get_args, overload

import numpy as np
import torch
from sklearn.metrics import (
    explained_variance_score,
    mean_absolute_error,
    mean_squared_error,
    median_absolute_error,
    r2_score,
    root_mean_squared_error,
)

from fabricmetrics._values import to_numpy as host_array
from fabricmetrics.exceptions import InputError, InputTypeError
from fabricmetrics.metrics.functional._backend import ArrayLike, Result, from_torch, to_torch

__all__ = ["MultiOutput", "pearson_r", "regression_report"]

MultiOutput = Literal["raw_values", "uniform_average"]
"""How :func:`pearson_r` combines several outputs: one value per output, or their plain mean."""


def _check_targets(y_true: torch.Tensor, y_pred: torch.Tensor) -> None:
    if y_true.shape != y_pred.shape:
        raise InputError(
            f"`y_true` and `y_pred` must have the same shape, got {tuple(y_true.shape)} and {tuple(y_pred.shape)}."
        )
    if y_true.ndim not in (1, 2):
        raise InputError(
            f"`y_true` and `y_pred` must be 1-D (n_samples,) or 2-D (n_samples, n_outputs), got "
            f"shape {tuple(y_true.shape)}."
        )
    if y_true.shape[0] < 2:
        raise InputError(f"Regression metrics need at least 2 samples, got {y_true.shape[0]}.")


def _check_weights(sample_weight: torch.Tensor, n_samples: int) -> None:
    if sample_weight.shape != (n_samples,):
        raise InputError(
            f"`sample_weight` must have shape ({n_samples},) (one weight per sample), got {tuple(sample_weight.shape)}."
        )
    if bool((sample_weight < 0).any()):
        raise InputError("`sample_weight` must be non-negative.")


@overload
def pearson_r(
    y_true: torch.Tensor,
    y_pred: torch.Tensor,
    sample_weight: torch.Tensor | None = ...,
    multioutput: MultiOutput = ...,
) -> torch.Tensor: ...
@overload
def pearson_r(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    sample_weight: np.ndarray | None = ...,
    multioutput: MultiOutput = ...,
) -> np.generic | np.ndarray: ...


def pearson_r(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    sample_weight: ArrayLike | None = None,
    multioutput: MultiOutput = "uniform_average",
) -> Result:
    """(Weighted) Pearson correlation coefficient between targets and predictions, per output.

    With weights ``w`` (all 1 when omitted) and weighted means ``m_x = Σ w x / Σ w``:
    ``r = Σ w (x - m_x)(y - m_y) / sqrt(Σ w (x - m_x)² · Σ w (y - m_y)²)``, clipped to ``[-1, 1]``.
    This is ``numpy.cov(x, y, aweights=w)`` normalised to a correlation. A constant output gives NaN.

    Args:
        y_true: ``(n_samples,)`` or ``(n_samples, n_outputs)`` targets.
        y_pred: predictions of the same shape.
        sample_weight: ``(n_samples,)`` non-negative weights, same backend as the targets.
        multioutput: ``"uniform_average"`` (mean over outputs, a scalar) or ``"raw_values"`` (one
            value per output, shape ``(n_outputs,)``; ``(1,)`` for 1-D targets).

    Returns:
        Tensor for tensor inputs, NumPy scalar/array for NumPy inputs.

    Raises:
        InputError: shapes differ or are not 1-D/2-D, fewer than 2 samples, bad weights, or an
            unknown ``multioutput``.
        InputTypeError: inputs are not tensors/arrays, or torch and NumPy are mixed.

    Example:
        >>> import numpy as np
        >>> y_true = np.array([1.0, 2.0, 3.0, 4.0])
        >>> y_pred = np.array([1.1, 1.9, 3.2, 3.9])
        >>> round(float(pearson_r(y_true, y_pred)), 4)
        0.9934
        >>> round(float(pearson_r(y_true, y_pred, sample_weight=np.array([1.0, 1.0, 0.0, 1.0]))), 4)
        0.9986
    """
    if not isinstance(multioutput, str) or multioutput not in get_args(MultiOutput):
        raise InputError(
            f"`multioutput` must be one of {list(get_args(MultiOutput))}, got {multioutput!r}. "
            "HINT: weight outputs yourself from multioutput='raw_values'."
        )
    names, values = ["y_true", "y_pred"], [y_true, y_pred]
    if sample_weight is not None:
        names.append("sample_weight")
        values.append(sample_weight)
    tensors, to_numpy = to_torch(names, values)
    x, y = tensors[0], tensors[1]
    _check_targets(x, y)
    if sample_weight is None:
        weights = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    else:
        weights = tensors[2]
        _check_weights(weights, x.shape[0])
    x2d, y2d, w = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1), weights[:, None]
    dx = x2d - (w * x2d).sum(dim=0) / w.sum()
    dy = y2d - (w * y2d).sum(dim=0) / w.sum()
    std_x = (w * dx * dx).sum(dim=0).sqrt()
    std_y = (w * dy * dy).sum(dim=0).sqrt()
    r = ((w * dx * dy).sum(dim=0) / (std_x * std_y)).clamp(-1.0, 1.0)
    return from_torch(r if multioutput == "raw_values" else r.mean(), to_numpy)


def _as_numpy(name: str, value: object) -> np.ndarray:
    try:
        array = np.asarray(host_array(value), dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputTypeError(f"`{name}` must be array-like of real numbers, got {type(value).__name__}.") from err
    return array


def regression_report(y_true: object, y_pred: object, sample_weight: object | None = None) -> dict[str, float]:
    """Regression metrics of a probe in one dict: MAE, MedAE, RMSE, MSE, R2, PCC, EVar.

    Every metric honours ``sample_weight``; all but PCC are scikit-learn's (``mean_absolute_error``,
    ``median_absolute_error``, ``root_mean_squared_error``, ``mean_squared_error``, ``r2_score``,
    ``explained_variance_score``), PCC is the weighted :func:`pearson_r`. With several outputs,
    each value is the uniform average over outputs (scikit-learn's default).

    Args:
        y_true: array-like ``(n_samples,)`` or ``(n_samples, n_outputs)`` targets (lists, NumPy
            arrays, tensors on any device).
        y_pred: predictions of the same shape.
        sample_weight: array-like ``(n_samples,)`` non-negative weights, or None.

    Returns:
        ``{"MAE", "MedAE", "RMSE", "MSE", "R2", "PCC", "EVar"}`` → Python float.

    Raises:
        InputError: shapes differ or are not 1-D/2-D, fewer than 2 samples, or bad weights.
        InputTypeError: an input is not array-like of real numbers.

    Example:
        >>> report = regression_report([3.0, -0.5, 2.0, 7.0], [2.5, 0.0, 2.0, 8.0])
        >>> {key: round(value, 3) for key, value in report.items()}
        {'MAE': 0.5, 'MedAE': 0.5, 'RMSE': 0.612, 'MSE': 0.375, 'R2': 0.949, 'PCC': 0.985, 'EVar': 0.957}
    """
    true = _as_numpy("y_true", y_true)
    pred = _as_numpy("y_pred", y_pred)
    weights = None if sample_weight is None else _as_numpy("sample_weight", sample_weight)
    # pearson_r validates shapes and weights with the messages of this module.
    pcc = pearson_r(true, pred, sample_weight=weights)
    kw = {"sample_weight": weights}
    return {
        "MAE": float(mean_absolute_error(true, pred, **kw)),
        "MedAE": float(median_absolute_error(true, pred, **kw)),
        "RMSE": float(root_mean_squared_error(true, pred, **kw)),
        "MSE": float(mean_squared_error(true, pred, **kw)),
        "R2": float(r2_score(true, pred, **kw)),
        "PCC": float(pcc),
        "EVar": float(explained_variance_score(true, pred, **kw)),
    }
