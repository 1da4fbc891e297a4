"""Weighted Pearson correlation and the regression report, against NumPy and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    explained_variance_score,
    mean_absolute_error,
    mean_squared_error,
    median_absolute_error,
    r2_score,
    root_mean_squared_error,
)

from fabricmetrics.exceptions import InputError, InputTypeError
from fabricmetrics.metrics import pearson_r, regression_report

PROPERTY = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def targets(n: int = 30, k: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (n,) if k is None else (n, k)
    y_true = rng.standard_normal(shape) * 3 + 1
    y_pred = 0.8 * y_true + rng.standard_normal(shape)
    return y_true, y_pred, rng.uniform(0.0, 2.0, size=n)


def columns(y: np.ndarray) -> np.ndarray:
    return y.reshape(len(y), -1).T


def ref_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
    cov = np.cov(x, y, aweights=w)
    return float(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]))


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 40),
    k=st.integers(1, 4),
    weighted=st.booleans(),
    backend=st.sampled_from(["torch", "numpy"]),
)
def test_weighted_pearson_matches_numpy_cov(seed: int, n: int, k: int, weighted: bool, backend: str) -> None:
    y_true, y_pred, weights = targets(n, k, seed)
    w = weights if weighted else None
    expected = np.array([ref_pearson(y_true[:, j], y_pred[:, j], w) for j in range(k)])
    args = [y_true, y_pred] + ([w] if weighted else [])
    if backend == "torch":
        args = [torch.from_numpy(a) for a in args]
    sample_weight = args[2] if weighted else None
    raw = pearson_r(args[0], args[1], sample_weight=sample_weight, multioutput="raw_values")
    average = pearson_r(args[0], args[1], sample_weight=sample_weight)
    assert isinstance(raw, torch.Tensor if backend == "torch" else np.ndarray)
    np.testing.assert_allclose(np.asarray(raw), expected, rtol=1e-9, atol=1e-12)
    assert float(average) == pytest.approx(float(expected.mean()), rel=1e-9, abs=1e-12)


def test_pearson_honours_sample_weight() -> None:
    # Seed fault: the weights were accepted and ignored.
    y_true, y_pred, weights = targets()
    weighted = float(pearson_r(y_true, y_pred, sample_weight=weights))
    assert weighted != pytest.approx(float(pearson_r(y_true, y_pred)), rel=1e-6)
    assert weighted == pytest.approx(ref_pearson(y_true, y_pred, weights), rel=1e-12)
    # Integer weights mean repetitions; zero weights drop samples.
    counts = np.resize([0, 1, 2, 3], len(y_true))
    repeated = float(pearson_r(np.repeat(y_true, counts), np.repeat(y_pred, counts)))
    assert float(pearson_r(y_true, y_pred, sample_weight=counts.astype(float))) == pytest.approx(repeated, rel=1e-12)


def test_pearson_shapes_and_types() -> None:
    y_true, y_pred, _ = targets(k=None)
    raw = pearson_r(y_true, y_pred, multioutput="raw_values")
    assert isinstance(raw, np.ndarray)
    assert raw.shape == (1,)
    scalar = pearson_r(y_true, y_pred)
    assert isinstance(scalar, np.generic)
    tensor = pearson_r(torch.from_numpy(y_true).float(), torch.from_numpy(y_pred).float())
    assert isinstance(tensor, torch.Tensor)
    assert tensor.ndim == 0
    assert tensor.dtype == torch.float32
    assert float(tensor) == pytest.approx(float(scalar), rel=1e-5)
    assert float(pearson_r(y_true, -y_true)) == -1.0
    assert np.isnan(float(pearson_r(np.ones(4), np.arange(4.0))))  # constant output: undefined


@pytest.mark.parametrize("multioutput", ["variance_weighted", "mean", None, np.array([0.5, 0.5])])
def test_pearson_rejects_unknown_multioutput(multioutput: object) -> None:
    # Seed fault: "variance_weighted" was accepted by the signature, then rejected deep inside.
    y_true, y_pred, _ = targets(k=2)
    with pytest.raises(InputError, match=r"`multioutput` must be one of \['raw_values', 'uniform_average'\]"):
        pearson_r(y_true, y_pred, multioutput=multioutput)  # type: ignore[arg-type]


def test_pearson_validation() -> None:
    y_true, y_pred, weights = targets()
    with pytest.raises(InputError, match=r"`y_true` and `y_pred` must have the same shape, got \(30,\) and \(29,\)"):
        pearson_r(y_true, y_pred[:-1])
    with pytest.raises(InputError, match=r"must be 1-D \(n_samples,\) or 2-D \(n_samples, n_outputs\), got shape"):
        pearson_r(np.ones((4, 2, 2)), np.ones((4, 2, 2)))
    with pytest.raises(InputError, match="need at least 2 samples, got 1"):
        pearson_r(np.ones(1), np.ones(1))
    with pytest.raises(InputError, match=r"`sample_weight` must have shape \(30,\) \(one weight per sample\)"):
        pearson_r(y_true, y_pred, sample_weight=weights[:-1])
    with pytest.raises(InputError, match="`sample_weight` must be non-negative"):
        pearson_r(y_true, y_pred, sample_weight=-weights)
    with pytest.raises(InputTypeError, match="all torch tensors or all NumPy arrays"):
        pearson_r(torch.from_numpy(y_true), torch.from_numpy(y_pred), sample_weight=weights)  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [None, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_regression_report_matches_scikit_learn(k: int | None, weighted: bool) -> None:
    y_true, y_pred, weights = targets(k=k)
    w = weights if weighted else None
    report = regression_report(y_true, y_pred, sample_weight=w)
    assert list(report) == ["MAE", "MedAE", "RMSE", "MSE", "R2", "PCC", "EVar"]
    assert all(type(value) is float for value in report.values())
    expected = {
        "MAE": mean_absolute_error(y_true, y_pred, sample_weight=w),
        "MedAE": median_absolute_error(y_true, y_pred, sample_weight=w),
        "RMSE": root_mean_squared_error(y_true, y_pred, sample_weight=w),
        "MSE": mean_squared_error(y_true, y_pred, sample_weight=w),
        "R2": r2_score(y_true, y_pred, sample_weight=w),
        "PCC": np.mean([ref_pearson(t, p, w) for t, p in zip(columns(y_true), columns(y_pred), strict=True)]),
        "EVar": explained_variance_score(y_true, y_pred, sample_weight=w),
    }
    for key, value in expected.items():
        assert report[key] == pytest.approx(float(value), rel=1e-12), key


def test_regression_report_weights_change_every_metric() -> None:
    y_true, y_pred, weights = targets(seed=1)
    plain, weighted = regression_report(y_true, y_pred), regression_report(y_true, y_pred, weights)
    for key in plain:
        assert weighted[key] != pytest.approx(plain[key], rel=1e-9), key


def test_regression_report_accepts_lists_and_tensors() -> None:
    y_true, y_pred, weights = targets(n=10)
    expected = regression_report(y_true, y_pred, weights)
    from_lists = regression_report(y_true.tolist(), y_pred.tolist(), weights.tolist())
    from_tensors = regression_report(torch.from_numpy(y_true), torch.from_numpy(y_pred), torch.from_numpy(weights))
    assert from_lists == expected
    assert from_tensors == expected


def test_regression_report_validation() -> None:
    with pytest.raises(InputError, match="`y_true` and `y_pred` must have the same shape"):
        regression_report([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(InputError, match=r"`sample_weight` must have shape \(3,\)"):
        regression_report([1.0, 2.0, 3.0], [1.0, 2.0, 2.5], sample_weight=[1.0, 1.0])
    with pytest.raises(InputTypeError, match="`y_pred` must be array-like of real numbers, got list"):
        regression_report([1.0, 2.0], ["a", "b"])
