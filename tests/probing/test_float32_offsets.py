"""float32 probes on embeddings far from the origin agree with float64 scikit-learn on the same data.

Real embeddings are not centred (post-ReLU features have large positive means). Each case runs the
probe in float32 on ``offset + data`` for offsets 0, 100 and 1000 and compares it with
scikit-learn in float64 on the same float32 values; the tolerances hold at every offset, where
products on the uncentred features would lose the digits they need.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from fabricmetrics.probing import KNNProbe, LinearProbe, RidgeProbe

OFFSETS = [0.0, 100.0, 1000.0]


def _shifted(offset: float, n: int, d: int, seed: int) -> np.ndarray:
    return (offset + np.random.default_rng(seed).normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("standardize", [True, False])
def test_ridge_matches_scikit_learn_far_from_the_origin(offset: float, standardize: bool) -> None:
    X = _shifted(offset, 2000, 32, seed=0)
    # Targets that share the offset too: y is about 32 * offset.
    y = X.astype(np.float64).sum(axis=1) + np.random.default_rng(1).normal(size=2000)
    X64 = X.astype(np.float64)
    scaled = StandardScaler(with_std=standardize).fit(X64)
    ref = Ridge(alpha=1.0).fit(scaled.transform(X64), y)
    probe = RidgeProbe(alpha=1.0, standardize=standardize).fit(X, y.astype(np.float32))
    expected = ref.predict(scaled.transform(X64))
    # Residuals have a standard deviation of about 1: predictions agree to float32 accuracy of y.
    np.testing.assert_allclose(probe.predict(X), expected, rtol=0, atol=2e-2)
    assert probe.score(X, y) == pytest.approx(ref.score(scaled.transform(X64), y), abs=2e-5)
    scale = scaled.scale_ if standardize else 1.0
    np.testing.assert_allclose(probe.coef_, ref.coef_ / scale, rtol=2e-4, atol=2e-4)


def _digits(offset: float) -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return (digits.data + offset).astype(np.float32), digits.target


def _objective(coef: np.ndarray, intercept: np.ndarray, X: np.ndarray, y: np.ndarray, C: float) -> float:
    """scikit-learn's multinomial objective divided by n, in float64."""
    logits = X @ coef.T + intercept
    n = len(y)
    return float((logsumexp(logits, axis=1) - logits[np.arange(n), y]).mean() + 0.5 / (C * n) * (coef**2).sum())


@pytest.mark.parametrize("offset", OFFSETS)
def test_linear_probe_on_digits_far_from_the_origin(offset: float) -> None:
    X, y = _digits(offset)
    scaler = StandardScaler().fit(X.astype(np.float64))
    Xs = scaler.transform(X.astype(np.float64))
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(Xs, y)
    probe = LinearProbe(C=1.0, tol=1e-5, max_iter=300).fit(X, y)
    # The probe's weights in the standardised coordinates of the reference.
    coef = probe.coef_.astype(np.float64) * scaler.scale_
    intercept = probe.intercept_.astype(np.float64) + probe.coef_.astype(np.float64) @ scaler.mean_
    gap = _objective(coef, intercept, Xs, y, 1.0) - _objective(ref.coef_, ref.intercept_, Xs, y, 1.0)
    assert 0 <= gap < 2e-5
    np.testing.assert_array_equal(probe.predict(X), ref.predict(Xs))
    np.testing.assert_allclose(probe.predict_proba(X), ref.predict_proba(Xs), atol=5e-3)


@pytest.mark.parametrize("offset", OFFSETS)
def test_linear_probe_on_raw_features_far_from_the_origin(offset: float) -> None:
    # standardize=False: the products still run on centred features, the weights fold back to raw ones.
    rng = np.random.default_rng(7)
    Z = rng.normal(size=(2000, 16))
    y = (Z @ rng.normal(size=(16, 3)) + rng.normal(size=(2000, 3))).argmax(axis=1)
    X = (offset + Z).astype(np.float32)
    X64 = X.astype(np.float64)
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000, solver="newton-cholesky").fit(X64, y)
    probe = LinearProbe(C=1.0, standardize=False, tol=1e-5, max_iter=300).fit(X, y)
    coef, intercept = probe.coef_.astype(np.float64), probe.intercept_.astype(np.float64)
    gap = _objective(coef, intercept, X64, y, 1.0) - _objective(ref.coef_, ref.intercept_, X64, y, 1.0)
    assert 0 <= gap < 2e-5
    np.testing.assert_array_equal(probe.predict(X), ref.predict(X64))
    np.testing.assert_allclose(probe.predict_proba(X), ref.predict_proba(X64), atol=1e-2)


@pytest.mark.parametrize("offset", [0.0, 100.0, 300.0, 1000.0])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_probe_finds_scikit_learns_neighbours_far_from_the_origin(offset: float, metric: str) -> None:
    X = _shifted(offset, 3000, 32, seed=2)
    # 50 random classes: the vote shares tell the neighbours apart, not just the majority.
    y = np.random.default_rng(3).integers(0, 50, 3000)
    probe = KNNProbe(k=10, temperature=None, metric=metric).fit(X[:2000], y[:2000])  # type: ignore[arg-type]
    ref = KNeighborsClassifier(10, metric=metric, algorithm="brute").fit(X[:2000].astype(np.float64), y[:2000])
    queries = X[2000:].astype(np.float64)
    np.testing.assert_allclose(probe.predict_proba(X[2000:]), ref.predict_proba(queries), atol=1e-6)
    np.testing.assert_array_equal(probe.predict(X[2000:]), ref.predict(queries))


@pytest.mark.parametrize("offset", OFFSETS)
def test_knn_probe_temperature_weights_far_from_the_origin(offset: float) -> None:
    X = _shifted(offset, 1500, 16, seed=4)
    y = np.random.default_rng(5).integers(0, 5, 1500)
    bank, queries = X[:1000].astype(np.float64), X[1000:].astype(np.float64)
    probe = KNNProbe(k=7, temperature=4.0, metric="euclidean").fit(X[:1000], y[:1000])
    distances = ((queries[:, None, :] - bank[None, :, :]) ** 2).sum(axis=2)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :7]
    d2 = np.take_along_axis(distances, nearest, axis=1)
    weights = np.exp(-(d2 - d2[:, :1]) / 4.0)
    votes = np.zeros((len(queries), 5))
    np.add.at(votes, (np.arange(len(queries))[:, None], y[:1000][nearest]), weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proba = probe.predict_proba(X[1000:])
    np.testing.assert_allclose(proba, votes / votes.sum(axis=1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("offset", OFFSETS)
def test_knn_probe_cosine_temperature_weights_far_from_the_origin(offset: float) -> None:
    X = _shifted(offset, 1500, 16, seed=4)
    y = np.random.default_rng(5).integers(0, 5, 1500)
    unit = X.astype(np.float64) / np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True)
    sims = unit[1000:] @ unit[:1000].T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :8]
    top = np.take_along_axis(sims, order, axis=1)
    # Rows sharing an offset have cosines within ~1e-7 of each other at 1000: a temperature of the
    # order of the gaps between a query's neighbours, so that every one of the 7 weighs.
    temperature = float(np.median(top[:, 0] - top[:, 6]))
    probe = KNNProbe(k=7, temperature=temperature).fit(X[:1000], y[:1000])
    weights = np.exp((top[:, :7] - top[:, :1]) / temperature)
    votes = np.zeros((500, 5))
    np.add.at(votes, (np.arange(500)[:, None], y[:1000][order[:, :7]]), weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proba = probe.predict_proba(X[1000:])
    # Where the 7th and 8th neighbours are tied to float32's resolution of the centred bank, either may be taken.
    untied = top[:, 6] - top[:, 7] > 1e-3 * temperature
    assert untied.sum() >= 490
    np.testing.assert_allclose(proba[untied], (votes / votes.sum(axis=1, keepdims=True))[untied], atol=1e-4)


def test_knn_probe_integer_features_are_the_same_at_every_offset() -> None:
    # Small integers + 1000 are exact in float32, and so are the bank rows once centred (the centre
    # is rounded to a short number): equal distances stay ties, broken the same way at every offset.
    rng = np.random.default_rng(6)
    X = rng.integers(0, 4, size=(400, 6)).astype(np.float32)
    y = rng.integers(0, 3, 400)
    base = KNNProbe(k=15, temperature=None, metric="euclidean").fit(X[:300], y[:300])
    shifted = KNNProbe(k=15, temperature=None, metric="euclidean").fit(X[:300] + 1000, y[:300])
    np.testing.assert_array_equal(shifted.predict_proba(X[300:] + 1000), base.predict_proba(X[300:]))
    # Where the k-th and (k+1)-th neighbours are not tied, the neighbours are scikit-learn's.
    ref = KNeighborsClassifier(15, algorithm="brute").fit(X[:300], y[:300])
    distances, _ = ref.kneighbors(X[300:], n_neighbors=16)
    untied = distances[:, 14] < distances[:, 15]
    assert untied.sum() > 10
    np.testing.assert_allclose(base.predict_proba(X[300:])[untied], ref.predict_proba(X[300:])[untied], atol=1e-6)
