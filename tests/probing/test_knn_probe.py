"""KNNProbe against a brute-force NumPy implementation of the same vote, and its estimator API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import KNeighborsClassifier

from fabricmetrics.exceptions import ConfigurationError, InputError
from fabricmetrics.probing import KNNProbe


def _embeddings(n: int = 600, d: int = 16, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = rng.normal(size=(k, d))
    return (centers[y] + 0.9 * rng.normal(size=(n, d))).astype(np.float32), y


def _reference_votes(
    bank: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int, t: float | None, metric: str = "cosine"
) -> np.ndarray:
    """Brute force in float64: all similarities, full sort, weights exp((s - s_max) / t) per class."""
    bank, queries = bank.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        similarities = queries @ bank.T
    else:  # minus the squared distance
        similarities = -((queries[:, None, :] - bank[None, :, :]) ** 2).sum(axis=2)
    votes = np.zeros((len(queries), labels.max() + 1))
    for i, sims in enumerate(similarities):
        nearest = np.argsort(-sims, kind="stable")[:k]
        weights = np.ones(k) if t is None else np.exp((sims[nearest] - sims[nearest[0]]) / t)
        np.add.at(votes[i], labels[nearest], weights)
    return votes / votes.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (20, 0.07), (7, 0.5)])
def test_matches_brute_force_reference(k: int, temperature: float) -> None:
    X, y = _embeddings()
    probe = KNNProbe(k=k, temperature=temperature).fit(X[:450], y[:450])
    expected = _reference_votes(X[:450], y[:450], X[450:], k, temperature)
    np.testing.assert_allclose(probe.predict_proba(X[450:]), expected, atol=1e-5)
    np.testing.assert_array_equal(probe.predict(X[450:]), expected.argmax(axis=1))
    assert probe.score(X[450:], y[450:]) == pytest.approx(np.mean(expected.argmax(axis=1) == y[450:]))


@pytest.mark.parametrize("temperature", [2.0, None])
def test_euclidean_matches_brute_force_reference(temperature: float | None) -> None:
    X, y = _embeddings()
    probe = KNNProbe(k=9, temperature=temperature, metric="euclidean").fit(X[:450], y[:450])
    expected = _reference_votes(X[:450], y[:450], X[450:], 9, temperature, metric="euclidean")
    np.testing.assert_allclose(probe.predict_proba(X[450:]), expected, atol=1e-4)
    np.testing.assert_array_equal(probe.predict(X[450:]), expected.argmax(axis=1))


def test_euclidean_equal_votes_is_kneighbors_classifier() -> None:
    X, y = _embeddings(n=1500, seed=2)
    ours = KNNProbe(k=20, temperature=None, metric="euclidean", dtype="float64").fit(X[:1200], y[:1200])
    ref = KNeighborsClassifier(n_neighbors=20).fit(X[:1200], y[:1200])
    np.testing.assert_allclose(ours.predict_proba(X[1200:]), ref.predict_proba(X[1200:]))
    np.testing.assert_array_equal(ours.predict(X[1200:]), ref.predict(X[1200:]))


def test_chunked_equals_unchunked() -> None:
    X, y = _embeddings()
    whole = KNNProbe(k=10).fit(X[:450], y[:450])
    # 450 bank rows * 4 bytes = 1800 bytes per query row: a 0.004 MiB budget gives chunks of 2 queries.
    chunked = KNNProbe(k=10, memory_budget_mb=0.004).fit(X[:450], y[:450])
    # Same neighbours; BLAS may round a dot product differently for another block shape (1 ulp).
    np.testing.assert_array_equal(chunked.predict(X[450:]), whole.predict(X[450:]))
    np.testing.assert_allclose(chunked.predict_proba(X[450:]), whole.predict_proba(X[450:]), atol=1e-6)


def test_accuracy_comparable_to_kneighbors_classifier() -> None:
    X, y = _embeddings(n=3000, seed=1)
    ours = KNNProbe(k=20).fit(X[:2400], y[:2400]).score(X[2400:], y[2400:])
    ref = KNeighborsClassifier(n_neighbors=20, metric="cosine").fit(X[:2400], y[:2400]).score(X[2400:], y[2400:])
    assert ours >= ref - 0.02


@pytest.mark.parametrize("temperature", [1e6, None])
def test_flat_votes_are_a_plain_majority_vote(temperature: float | None) -> None:
    X, y = _embeddings()
    ours = KNNProbe(k=15, temperature=temperature).fit(X[:450], y[:450]).predict(X[450:])
    ref = KNeighborsClassifier(n_neighbors=15, metric="cosine", algorithm="brute").fit(X[:450], y[:450])
    assert np.mean(ours == ref.predict(X[450:])) >= 0.97  # only near-ties may be broken differently


def test_tensor_input_string_labels_and_float64() -> None:
    X, y = _embeddings()
    letters = np.array(["a", "b", "c", "d", "e"])
    names = letters[y]
    probe = KNNProbe(k=5, dtype="float64").fit(torch.from_numpy(X), names)
    predicted = probe.predict(torch.from_numpy(X[:50]))
    assert isinstance(predicted, np.ndarray) and predicted.dtype.kind == "U"
    np.testing.assert_array_equal(predicted, letters[KNNProbe(k=5).fit(X, y).predict(X[:50])])
    assert probe.predict_proba(X[:3]).shape == (3, 5)


def test_estimator_api() -> None:
    probe = KNNProbe(k=3, temperature=0.1, memory_budget_mb=8.0)
    assert is_classifier(probe)
    twin = clone(probe)
    assert twin.get_params() == probe.get_params() and twin.set_params(k=9).k == 9 and probe.k == 3
    for method in ("predict", "predict_proba"):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            getattr(probe, method)(np.zeros((2, 4)))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"k": 0}, "positive integer k.*k=0"),
        ({"temperature": 0.0}, "temperature > 0 or None.*temperature=0.0"),
        ({"metric": "manhattan"}, "metric 'cosine' or 'euclidean'.*metric='manhattan'"),
    ],
)
def test_bad_params(params: dict[str, float], match: str) -> None:
    X, y = _embeddings()
    with pytest.raises(ConfigurationError, match=match):
        KNNProbe(**params).fit(X, y)


def test_bad_inputs() -> None:
    X, y = _embeddings(n=30)
    with pytest.raises(InputError, match=r"got 30 samples, fewer than k=40 neighbours\. HINT: lower k"):
        KNNProbe(k=40).fit(X, y)
    bad = X.copy()
    bad[3, 2] = np.inf
    with pytest.raises(InputError, match="1 rows of the features contain NaN or infinity"):
        KNNProbe(k=5).fit(bad, y)
    probe = KNNProbe(k=5).fit(X, y)
    with pytest.raises(InputError, match="NaN or infinity"):
        probe.predict(bad)
    with pytest.raises(InputError, match="X has 3 features, but the probe was fitted on 16 features"):
        probe.predict(X[:, :3])
