"""Functional SSL metrics against brute-force NumPy formulas, on both backends."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from _metrics_reference import (
    ref_alignment,
    ref_contrastive_accuracy,
    ref_effective_rank,
    ref_normalize,
    ref_uniformity,
)

from fabricmetrics.exceptions import InputError, InputTypeError
from fabricmetrics.metrics import (
    alignment_score,
    contrastive_accuracy_score,
    effective_rank,
    uniformity_score,
)
from fabricmetrics.metrics.functional import _kernels
from fabricmetrics.metrics.functional import ssl as functional_ssl

BACKENDS = ["torch", "numpy"]


def views(n: int = 24, d: int = 6, noise: float = 0.7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two noisy views of the same points: retrieval is neither perfect nor hopeless."""
    rng = np.random.default_rng(seed)
    z1 = rng.standard_normal((n, d)) * rng.uniform(0.2, 3.0, size=(n, 1))
    return z1, z1 + noise * rng.standard_normal((n, d)) * np.abs(z1).mean()


def as_backend(backend: str, *arrays: np.ndarray) -> list[torch.Tensor | np.ndarray]:
    return [torch.from_numpy(a.copy()) if backend == "torch" else a for a in arrays]


def check_result(backend: str, value: object, dtype: torch.dtype = torch.float64) -> float:
    """The result type of the contract: 0-d tensor for torch, NumPy scalar for NumPy."""
    if backend == "torch":
        assert isinstance(value, torch.Tensor)
        assert value.ndim == 0
        assert value.dtype == dtype
    else:
        assert isinstance(value, np.generic)
        assert value.dtype == torch.empty((), dtype=dtype).numpy().dtype
    return float(value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- against references


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("alpha", [1, 2, 0.5])
def test_alignment_matches_reference(backend: str, normalize: bool, alpha: float) -> None:
    z1, z2 = views()
    value = alignment_score(*as_backend(backend, z1, z2), normalize=normalize, alpha=alpha)
    assert check_result(backend, value) == pytest.approx(ref_alignment(z1, z2, normalize, alpha), rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("t", [2, 0.5])
def test_uniformity_matches_reference(backend: str, normalize: bool, t: float) -> None:
    z, _ = views(n=30, d=5)
    z = z * 0.3  # keeps exp(-t d^2) of raw rows well inside float64 when normalize=False
    (zb,) = as_backend(backend, z)
    value = uniformity_score(zb, normalize=normalize, t=t)
    assert check_result(backend, value) == pytest.approx(ref_uniformity(z, normalize, t), rel=1e-12)


def test_numpy_uniformity_without_normalization_uses_the_true_distances() -> None:
    # Seed fault: NumPy uniformity used 2 - 2 z_i.z_j, which only holds for unit rows.
    z = np.array([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    sq = [9 + 1, 4 + 1, 1 + 0]  # |z0 - z1|^2, |z0 - z2|^2, |z1 - z2|^2
    expected = math.log(sum(math.exp(-2 * d) for d in sq) / 3)
    assert float(uniformity_score(z, normalize=False)) == pytest.approx(expected, rel=1e-12)
    assert float(uniformity_score(torch.from_numpy(z), normalize=False)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("topk", [1, 5])
def test_contrastive_accuracy_matches_reference(backend: str, normalize: bool, topk: int) -> None:
    z1, z2 = views(n=40, d=4, noise=1.0)
    expected = ref_contrastive_accuracy(z1, z2, normalize, topk)
    assert 0.0 < expected < 1.0  # the data can tell hits from misses
    value = contrastive_accuracy_score(*as_backend(backend, z1, z2), normalize=normalize, topk=topk)
    assert check_result(backend, value) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_effective_rank_matches_reference(backend: str) -> None:
    rng = np.random.default_rng(3)
    z = rng.standard_normal((50, 8)) @ np.diag([4.0, 2.0, 1.0, 1.0, 0.5, 0.2, 0.1, 0.01])
    (zb,) = as_backend(backend, z)
    assert check_result(backend, effective_rank(zb)) == pytest.approx(ref_effective_rank(z), rel=1e-12)
    assert float(effective_rank(zb, eps=1e-3)) == pytest.approx(ref_effective_rank(z, eps=1e-3), rel=1e-12)


def test_effective_rank_extremes() -> None:
    rng = np.random.default_rng(4)
    one_direction = rng.standard_normal((40, 1)) * rng.standard_normal((1, 6))
    assert float(effective_rank(one_direction)) == pytest.approx(1.0, abs=1e-4)
    orthonormal_columns = np.linalg.qr(rng.standard_normal((40, 6)))[0]
    assert float(effective_rank(orthonormal_columns)) == pytest.approx(6.0, rel=1e-5)
    assert math.isnan(float(effective_rank(np.zeros((5, 3)))))


def test_float64_torch_equals_numpy() -> None:
    z1, z2 = views(n=33, d=7)
    t1, t2 = torch.from_numpy(z1), torch.from_numpy(z2)
    pairs = [
        (alignment_score(t1, t2, alpha=1), alignment_score(z1, z2, alpha=1)),
        (uniformity_score(t1, chunk_size=5), uniformity_score(z1, chunk_size=5)),
        (contrastive_accuracy_score(t1, t2, topk=3), contrastive_accuracy_score(z1, z2, topk=3)),
        (effective_rank(t1), effective_rank(z1)),
    ]
    for from_torch, from_numpy in pairs:
        assert float(from_torch) == pytest.approx(float(from_numpy), rel=1e-10, abs=1e-12)


def test_float32_stays_float32_and_close_to_float64() -> None:
    z1, z2 = views(n=20, d=5)
    t1, t2 = torch.from_numpy(z1).float(), torch.from_numpy(z2).float()
    assert check_result("torch", alignment_score(t1, t2), torch.float32) == pytest.approx(
        ref_alignment(z1, z2), rel=1e-5
    )
    assert check_result("torch", uniformity_score(t1), torch.float32) == pytest.approx(ref_uniformity(z1), rel=1e-5)
    assert check_result("numpy", uniformity_score(z1.astype(np.float32)), torch.float32) == pytest.approx(
        ref_uniformity(z1), rel=1e-5
    )
    assert check_result("torch", effective_rank(t1), torch.float32) == pytest.approx(ref_effective_rank(z1), rel=1e-5)


def test_float32_uniformity_keeps_float32_accuracy() -> None:
    # 8 million pairs: a log-sum of that many terms minus log(count) would lose ~1e-6 in float32.
    z = torch.randn(4000, 32, generator=torch.Generator().manual_seed(1))
    exact = float(uniformity_score(z.double()))
    for chunk_size in (None, 7, 500):
        assert float(uniformity_score(z, chunk_size=chunk_size)) == pytest.approx(exact, abs=1e-6)


def test_dtype_promotion() -> None:
    ints = np.arange(12).reshape(6, 2)
    assert check_result("numpy", uniformity_score(ints)) == pytest.approx(ref_uniformity(ints), rel=1e-12)
    half = torch.from_numpy(views()[0]).half()
    assert check_result("torch", uniformity_score(half), torch.float32) == pytest.approx(
        ref_uniformity(half.double().numpy()), rel=1e-5
    )
    mixed = alignment_score(torch.ones(3, 2), torch.ones(3, 2, dtype=torch.float64))
    assert mixed.dtype == torch.float64
    default = uniformity_score(torch.arange(8).reshape(4, 2))
    assert default.dtype == torch.get_default_dtype()


def test_read_only_numpy_input_is_accepted_without_warning() -> None:
    z, _ = views(n=6, d=3)
    z.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(uniformity_score(z)) == pytest.approx(ref_uniformity(z), rel=1e-12)


def test_gradients_flow_through_alignment_and_chunked_uniformity() -> None:
    z1, z2 = views(n=7, d=3)
    t1 = torch.from_numpy(z1).requires_grad_()
    t2 = torch.from_numpy(z2).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: alignment_score(a, b, alpha=1), (t1, t2))
    assert torch.autograd.gradcheck(lambda a: uniformity_score(a, chunk_size=2), (t1,))
    assert torch.autograd.gradcheck(lambda a: uniformity_score(a, normalize=False, t=0.1), (t1,))


# --------------------------------------------------------------------------- contrastive ties


def test_contrastive_ties_count_in_favour_of_the_positive() -> None:
    # S = [[.5, 1], [0, 0]]: query z1_0 has a strictly better candidate (miss), z1_1 ties (hit).
    # S^T = [[.5, 0], [1, 0]]: query z2_0 wins (hit), z2_1 has a strictly better one (miss).
    z1 = np.array([[1.0, 0.0], [0.0, 1.0]])
    z2 = np.array([[0.5, 0.0], [1.0, 0.0]])
    assert float(contrastive_accuracy_score(z1, z2, normalize=False)) == 0.5
    duplicates = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert float(contrastive_accuracy_score(duplicates, duplicates)) == 1.0


def test_contrastive_topk_at_least_n_is_one() -> None:
    z1, z2 = views(n=5, d=3, noise=5.0)
    assert float(contrastive_accuracy_score(z1, z2, topk=5)) == 1.0
    assert float(contrastive_accuracy_score(z1, z2, topk=50)) == 1.0
    assert float(contrastive_accuracy_score(z1, z2, topk=4)) == ref_contrastive_accuracy(z1, z2, topk=4)


# --------------------------------------------------------------------------- chunked == one-shot


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 29, 30])
@pytest.mark.parametrize("normalize", [True, False])
def test_uniformity_chunked_equals_one_shot(chunk_size: int, normalize: bool) -> None:
    z, _ = views(n=30, d=4)
    one_shot = float(uniformity_score(z, normalize, chunk_size=30))
    assert float(uniformity_score(z, normalize, chunk_size=chunk_size)) == pytest.approx(one_shot, rel=1e-13)
    assert one_shot == pytest.approx(ref_uniformity(z, normalize), rel=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 29, 30])
@pytest.mark.parametrize("topk", [1, 5])
def test_contrastive_chunked_equals_one_shot_exactly_with_ties(chunk_size: int, topk: int) -> None:
    # Small integers: every similarity is exact, and many of them tie.
    rng = np.random.default_rng(5)
    z1 = rng.integers(-1, 2, size=(30, 3)).astype(np.float64)
    z2 = z1.copy()
    z2[::3] = rng.integers(-1, 2, size=(10, 3))
    expected = ref_contrastive_accuracy(z1, z2, normalize=False, topk=topk)
    for backend in BACKENDS:
        t1, t2 = as_backend(backend, z1, z2)
        got = contrastive_accuracy_score(t1, t2, normalize=False, topk=topk, chunk_size=chunk_size)
        assert float(got) == expected


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 40])
def test_contrastive_chunked_equals_one_shot_on_continuous_data(chunk_size: int) -> None:
    z1, z2 = views(n=40, d=4, noise=1.0, seed=9)
    for topk in (1, 5):
        one_shot = float(contrastive_accuracy_score(z1, z2, topk=topk, chunk_size=40))
        assert float(contrastive_accuracy_score(z1, z2, topk=topk, chunk_size=chunk_size)) == one_shot


def test_memory_budget_sets_the_block_height(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def spy(z: torch.Tensor, t: float, rows: int) -> torch.Tensor:
        seen.append(rows)
        return _kernels.uniformity_log_mean(z, t, rows)

    monkeypatch.setattr(functional_ssl, "uniformity_log_mean", spy)
    z = torch.randn(401, 8, generator=torch.Generator().manual_seed(0))  # float32: 4 bytes
    row_bytes = 401 * 4 * _kernels.UNIFORMITY_BUFFERS
    reference = float(uniformity_score(z, chunk_size=400))
    assert float(uniformity_score(z, memory_budget_bytes=10 * row_bytes)) == pytest.approx(reference, rel=1e-5)
    assert float(uniformity_score(z, memory_budget_bytes=1)) == pytest.approx(reference, rel=1e-5)
    uniformity_score(z)  # default budget: 256 MiB holds every row at once
    assert seen == [400, 10, 1, 400]


def test_rows_per_block() -> None:
    assert _kernels.rows_per_block(1000, 1000, 4, 2, None, 80_000) == 10
    assert _kernels.rows_per_block(1000, 1000, 4, 2, None, 1) == 1  # at least one row
    assert _kernels.rows_per_block(5, 1000, 4, 2, None, 10**9) == 5  # at most every row
    assert _kernels.rows_per_block(1000, 1000, 4, 2, 64, 1) == 64  # chunk_size wins


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("metric", [alignment_score, contrastive_accuracy_score])
def test_paired_metrics_reject_mismatched_shapes(metric: object) -> None:
    with pytest.raises(InputError, match=r"`z1` and `z2` must have the same shape .* got \(4, 3\) and \(5, 3\)"):
        metric(np.ones((4, 3)), np.ones((5, 3)))  # type: ignore[operator]
    with pytest.raises(InputError, match="same shape"):
        metric(torch.ones(4, 3), torch.ones(4, 2))  # type: ignore[operator]


def test_one_dimensional_input_is_rejected() -> None:
    with pytest.raises(InputError, match=r"`z` must be 2-D \(n_samples, n_features\), got shape \(5,\)"):
        uniformity_score(np.ones(5))
    with pytest.raises(InputError, match=r"`z1` must be 2-D .*HINT"):
        alignment_score(torch.ones(5), torch.ones(5))
    with pytest.raises(InputError, match="`z` must be 2-D"):
        effective_rank(torch.ones(2, 3, 4))


def test_mixed_backends_are_rejected() -> None:
    with pytest.raises(InputTypeError, match=r"all torch tensors or all NumPy arrays.*`z2`: numpy\.ndarray"):
        alignment_score(torch.ones(3, 2), np.ones((3, 2)))
    with pytest.raises(InputTypeError, match="all torch tensors or all NumPy arrays"):
        contrastive_accuracy_score(np.ones((3, 2)), torch.ones(3, 2))


def test_unsupported_types_are_rejected() -> None:
    with pytest.raises(InputTypeError, match=r"`z` must be a torch.Tensor or a numpy.ndarray, got builtins.list"):
        uniformity_score([[0.0, 1.0], [1.0, 0.0]])  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="`z` must hold real numbers, got a NumPy array of dtype complex128"):
        uniformity_score(np.ones((3, 2), dtype=complex))
    with pytest.raises(InputTypeError, match="`z` must hold real numbers, got a NumPy array of dtype object"):
        uniformity_score(np.array([[1, "a"], [2, "b"]], dtype=object))
    with pytest.raises(InputTypeError, match=r"`z1` must hold real numbers, got a tensor of dtype torch\.complex64"):
        alignment_score(torch.ones(3, 2, dtype=torch.complex64), torch.ones(3, 2, dtype=torch.complex64))


def test_inputs_on_different_devices_are_rejected() -> None:
    with pytest.raises(InputError, match="Inputs must be on one device, got `z1` on cpu, `z2` on meta"):
        alignment_score(torch.ones(3, 2), torch.ones(3, 2, device="meta"))


def test_sample_counts() -> None:
    with pytest.raises(InputError, match=r"`z` needs at least 2 sample\(s\), got 1"):
        uniformity_score(np.ones((1, 3)))
    with pytest.raises(InputError, match=r"`z1` needs at least 1 sample\(s\), got 0"):
        alignment_score(torch.ones(0, 3), torch.ones(0, 3))
    with pytest.raises(InputError, match=r"`z` needs at least 1 sample\(s\), got 0"):
        effective_rank(np.ones((0, 3)))


@pytest.mark.parametrize("topk", [0, -1, 1.5, True, "1"])
def test_topk_must_be_a_positive_integer(topk: object) -> None:
    with pytest.raises(InputError, match="`topk` must be a positive int, got"):
        contrastive_accuracy_score(np.ones((3, 2)), np.ones((3, 2)), topk=topk)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, True, "2"])
def test_scales_must_be_positive(value: object) -> None:
    with pytest.raises(InputError, match="`alpha` must be a finite number > 0, got"):
        alignment_score(np.ones((3, 2)), np.ones((3, 2)), alpha=value)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="`t` must be a finite number > 0, got"):
        uniformity_score(np.ones((3, 2)), t=value)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="`eps` must be a finite number > 0, got"):
        effective_rank(np.ones((3, 2)), eps=value)  # type: ignore[arg-type]


def test_block_options_are_checked() -> None:
    with pytest.raises(InputError, match="`chunk_size` must be a positive int, got 0"):
        uniformity_score(np.ones((3, 2)), chunk_size=0)
    with pytest.raises(InputError, match="`memory_budget_bytes` must be a positive int, got 0"):
        contrastive_accuracy_score(np.ones((3, 2)), np.ones((3, 2)), memory_budget_bytes=0)


# --------------------------------------------------------------------------- float32 far from the origin

OFFSETS = [0.0, 100.0, 1000.0]


def shifted_views(offset: float, n: int = 500, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 views whose rows share an offset: embeddings are rarely centred."""
    rng = np.random.default_rng(seed)
    z1 = offset + rng.standard_normal((n, d))
    return z1.astype(np.float32), (z1 + 0.5 * rng.standard_normal((n, d))).astype(np.float32)


def pdist_uniformity(z: np.ndarray, normalize: bool, t: float = 2.0) -> float:
    """scipy's float64 pairwise distances of the same float32 values."""
    from scipy.spatial.distance import pdist

    return float(np.log(np.mean(np.exp(-t * pdist(ref_normalize(z, normalize), "sqeuclidean")))))


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("chunk_size", [None, 64])
def test_float32_uniformity_far_from_the_origin(offset: float, chunk_size: int | None) -> None:
    z, _ = shifted_views(offset)
    raw = float(uniformity_score(torch.from_numpy(z), normalize=False, chunk_size=chunk_size))
    assert raw == pytest.approx(pdist_uniformity(z, normalize=False), rel=1e-6)
    # Normalised rows of shifted data crowd around one direction: a uniformity of about -4e-6 at
    # offset 1000, right to float32's absolute accuracy of values near 0.
    unit = float(uniformity_score(torch.from_numpy(z), normalize=True, chunk_size=chunk_size))
    assert unit == pytest.approx(pdist_uniformity(z, normalize=True), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("normalize", [True, False])
def test_float32_contrastive_accuracy_far_from_the_origin(offset: float, normalize: bool) -> None:
    z1, z2 = shifted_views(offset, seed=1)
    for topk in (1, 5):
        expected = ref_contrastive_accuracy(z1, z2, normalize=normalize, topk=topk)
        for chunk_size in (None, 37):
            got = contrastive_accuracy_score(z1, z2, normalize=normalize, topk=topk, chunk_size=chunk_size)
            assert round(float(got) * 2 * len(z1)) == round(expected * 2 * len(z1))  # the same hits


@pytest.mark.parametrize("offset", OFFSETS)
def test_float32_effective_rank_far_from_the_origin(offset: float) -> None:
    # The SVD of the raw rows is backward stable: no centring needed (and RankMe is defined uncentred).
    z, _ = shifted_views(offset)
    assert float(effective_rank(z)) == pytest.approx(ref_effective_rank(z), rel=1e-5)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("topk", [1, 5])
def test_contrastive_accuracy_of_non_finite_embeddings_is_nan(bad: float, topk: int) -> None:
    z1, z2 = shifted_views(0.0, n=5, d=3)
    z2[2, 1] = bad  # centring spreads it to every row: NaN, not a plausible score
    assert math.isnan(float(contrastive_accuracy_score(z1, z2, topk=topk)))
    assert math.isnan(float(contrastive_accuracy_score(torch.from_numpy(z2), torch.from_numpy(z1), topk=topk)))
