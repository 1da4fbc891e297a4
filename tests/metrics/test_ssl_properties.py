"""Property tests (hypothesis) of the functional SSL metrics: invariances, chunking, bounds."""

from __future__ import annotations

import numpy as np
import pytest
from _metrics_reference import ref_contrastive_accuracy, ref_uniformity, rotation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabricmetrics.metrics import (
    alignment_score,
    contrastive_accuracy_score,
    effective_rank,
    uniformity_score,
)

PROPERTY = settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TOL = {"rel": 1e-9, "abs": 1e-12}


@st.composite
def pairs(draw: st.DrawFn, max_n: int = 24, max_d: int = 6) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """Two continuous views (no exact ties), of random size, plus a generator for transforms."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, d = draw(st.integers(2, max_n)), draw(st.integers(1, max_d))
    noise = draw(st.floats(0.05, 2.0))
    z1 = 0.3 * rng.standard_normal((n, d))
    return z1, z1 + noise * 0.3 * rng.standard_normal((n, d)), rng


def row_scales(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.exp(rng.uniform(np.log(1e-3), np.log(1e3), size=(n, 1)))


@PROPERTY
@given(pairs(), st.sampled_from([1, 2]), st.sampled_from([1, 5]))
def test_normalised_metrics_ignore_per_row_scaling(
    data: tuple[np.ndarray, np.ndarray, np.random.Generator], alpha: int, topk: int
) -> None:
    z1, z2, rng = data
    s1, s2 = z1 * row_scales(len(z1), rng), z2 * row_scales(len(z2), rng)
    assert float(alignment_score(s1, s2, alpha=alpha)) == pytest.approx(
        float(alignment_score(z1, z2, alpha=alpha)), **TOL
    )
    assert float(uniformity_score(s1)) == pytest.approx(float(uniformity_score(z1)), **TOL)
    assert float(contrastive_accuracy_score(s1, s2, topk=topk)) == float(contrastive_accuracy_score(z1, z2, topk=topk))


@PROPERTY
@given(pairs(), st.booleans(), st.sampled_from([1, 5]))
def test_metrics_ignore_a_common_rotation(
    data: tuple[np.ndarray, np.ndarray, np.random.Generator], normalize: bool, topk: int
) -> None:
    z1, z2, rng = data
    q = rotation(z1.shape[1], rng)
    r1, r2 = z1 @ q, z2 @ q
    assert float(alignment_score(r1, r2, normalize)) == pytest.approx(float(alignment_score(z1, z2, normalize)), **TOL)
    assert float(uniformity_score(r1, normalize)) == pytest.approx(float(uniformity_score(z1, normalize)), **TOL)
    assert float(contrastive_accuracy_score(r1, r2, normalize, topk)) == float(
        contrastive_accuracy_score(z1, z2, normalize, topk)
    )
    assert float(effective_rank(r1)) == pytest.approx(float(effective_rank(z1)), rel=1e-7)


@PROPERTY
@given(pairs(max_n=40), st.booleans(), st.data())
def test_chunked_equals_one_shot(
    data: tuple[np.ndarray, np.ndarray, np.random.Generator], normalize: bool, draw: st.DataObject
) -> None:
    z1, z2, _ = data
    n = len(z1)
    chunk = draw.draw(st.integers(1, n), label="chunk_size")
    topk = draw.draw(st.integers(1, n), label="topk")
    assert float(uniformity_score(z1, normalize, chunk_size=chunk)) == pytest.approx(
        ref_uniformity(z1, normalize), **TOL
    )
    assert float(contrastive_accuracy_score(z1, z2, normalize, topk, chunk_size=chunk)) == float(
        contrastive_accuracy_score(z1, z2, normalize, topk, chunk_size=n)
    )
    assert float(contrastive_accuracy_score(z1, z2, normalize, topk, chunk_size=n)) == ref_contrastive_accuracy(
        z1, z2, normalize, topk
    )


@PROPERTY
@given(pairs())
def test_ranges(data: tuple[np.ndarray, np.ndarray, np.random.Generator]) -> None:
    z1, z2, _ = data
    assert -8.0 - 1e-12 <= float(uniformity_score(z1)) <= 1e-12  # t = 2, |z_i - z_j|^2 <= 4
    assert 0.0 <= float(alignment_score(z1, z2)) <= 4.0 + 1e-12
    assert 0.0 <= float(contrastive_accuracy_score(z1, z2)) <= 1.0
    assert 1.0 - 1e-3 <= float(effective_rank(z1)) <= min(z1.shape) * (1 + 1e-5)
