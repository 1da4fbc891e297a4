"""Functional self-supervised-learning metrics: alignment, uniformity, contrastive accuracy, rank.

Each function accepts torch tensors (any device; the result is a 0-d tensor on that device) or NumPy
arrays (the result is a NumPy scalar) and runs the same torch code for both. ``ẑ`` below is a row
divided by its L2 norm when ``normalize=True`` (rows of norm 0 stay 0) and the raw row otherwise.

Uniformity and contrastive accuracy compare every pair of samples, yet never hold the ``n x n``
matrix: they walk over blocks of rows whose size is set by ``memory_budget_bytes`` (default 256 MiB)
or directly by ``chunk_size``. The result is the one-shot formula's whatever the block size, up to
floating-point rounding.

References:
    T. Wang and P. Isola, "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere", ICML 2020.
    Q. Garrido, R. Balestriero, L. Najman and Y. LeCun, "RankMe: Assessing the Downstream Performance
    of Pretrained Self-Supervised Representations by Their Rank", ICML 2023.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch

from fabricmetrics.metrics.functional._backend import (
    ArrayLike,
    Result,
    check_embeddings,
    check_paired,
    check_positive,
    check_positive_int,
    check_rows_per_block,
    from_torch,
    normalize_rows,
    to_torch,
)
from fabricmetrics.metrics.functional._kernels import (
    DEFAULT_MEMORY_BUDGET,
    RETRIEVAL_BUFFERS,
    UNIFORMITY_BUFFERS,
    alignment_terms,
    centred_rows,
    effective_rank_from_singular_values,
    retrieval_hits,
    retrieval_operands,
    rows_per_block,
    uniformity_log_mean,
)

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "alignment_score",
    "contrastive_accuracy_score",
    "effective_rank",
    "uniformity_score",
]


@overload
def alignment_score(z1: torch.Tensor, z2: torch.Tensor, normalize: bool = ..., alpha: float = ...) -> torch.Tensor: ...
@overload
def alignment_score(z1: np.ndarray, z2: np.ndarray, normalize: bool = ..., alpha: float = ...) -> np.generic: ...


def alignment_score(z1: ArrayLike, z2: ArrayLike, normalize: bool = True, alpha: float = 2) -> Result:
    """Alignment of paired embeddings: ``mean_i ‖ẑ1_i - ẑ2_i‖^alpha`` (lower is better).

    Args:
        z1: ``(n_samples, n_features)`` embeddings of the first view.
        z2: embeddings of the second view, same shape; row ``i`` pairs with row ``i`` of ``z1``.
        normalize: divide each row by its L2 norm first (the unit hypersphere of contrastive learning).
        alpha: exponent of the distance, ``> 0``; 2 is Wang & Isola's choice, 1 the mean distance.

    Returns:
        0-d tensor (tensor inputs) or NumPy scalar (NumPy inputs).

    Raises:
        InputError: shapes differ, an input is not 2-D or is empty, or ``alpha <= 0``.
        InputTypeError: inputs are not tensors/arrays, or torch and NumPy are mixed.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z1 = torch.randn(8, 4, generator=g)
        >>> z2 = z1 + 0.1 * torch.randn(8, 4, generator=g)
        >>> round(float(alignment_score(z1, z2)), 4)
        0.0243
        >>> round(float(alignment_score(z1.numpy(), z2.numpy(), alpha=1)), 4)
        0.1068
    """
    (t1, t2), to_numpy = to_torch(("z1", "z2"), (z1, z2))
    check_embeddings("z1", t1)
    check_embeddings("z2", t2)
    check_paired(t1, t2)
    check_positive("alpha", alpha)
    terms = alignment_terms(normalize_rows(t1, normalize), normalize_rows(t2, normalize), alpha)
    return from_torch(terms.mean(), to_numpy)


@overload
def uniformity_score(
    z: torch.Tensor,
    normalize: bool = ...,
    t: float = ...,
    *,
    chunk_size: int | None = ...,
    memory_budget_bytes: int = ...,
) -> torch.Tensor: ...
@overload
def uniformity_score(
    z: np.ndarray,
    normalize: bool = ...,
    t: float = ...,
    *,
    chunk_size: int | None = ...,
    memory_budget_bytes: int = ...,
) -> np.generic: ...


def uniformity_score(
    z: ArrayLike,
    normalize: bool = True,
    t: float = 2,
    *,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
) -> Result:
    """Uniformity: ``log mean_{i≠j} exp(-t ‖ẑ_i - ẑ_j‖²)`` over ordered pairs (lower is better).

    Computed exactly and stably without the ``n x n`` matrix: blocks of rows against the later rows
    (the kernel is symmetric), squared distances ``‖z_i‖² + ‖z_j‖² - 2 z_i·z_j`` of the rows minus
    their mean (normalised and centred in float64, then rounded once, so float32 keeps its accuracy
    on embeddings far from the origin) clamped at 0, and a log-sum-exp per block combined by a final
    log-sum-exp. Memory is ``O(rows x n)``.

    Args:
        z: ``(n_samples, n_features)`` embeddings, at least 2 samples.
        normalize: divide each row by its L2 norm first.
        t: scale of the Gaussian kernel, ``> 0`` (2 in Wang & Isola).
        chunk_size: rows per block; None chooses it from ``memory_budget_bytes``.
        memory_budget_bytes: bound on the temporary block buffers (default 256 MiB; at least one
            row is always processed, so a tiny budget means one row per block).

    Returns:
        0-d tensor (tensor inputs) or NumPy scalar (NumPy inputs). For normalised embeddings
        ``-4 t ≤ value ≤ 0`` (squared distances on the sphere are at most 4); 0 means that all
        points coincide.

    Raises:
        InputError: ``z`` is not 2-D, has fewer than 2 samples, or an option is out of range.
        InputTypeError: ``z`` is not a tensor/array.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(16, 4, generator=g)
        >>> round(float(uniformity_score(z)), 4)
        -2.6345
        >>> round(float(uniformity_score(z, chunk_size=3)), 4)  # same value, 3 rows at a time
        -2.6345
        >>> square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
        >>> round(float(uniformity_score(square.numpy())), 4)  # log((2 e^-4 + e^-8) / 3)
        -4.3963
    """
    (tz,), to_numpy = to_torch(("z",), (z,))
    check_embeddings("z", tz, min_samples=2)
    check_positive("t", t)
    check_rows_per_block(chunk_size, memory_budget_bytes)
    n = tz.shape[0]
    rows = rows_per_block(n - 1, n, tz.element_size(), UNIFORMITY_BUFFERS, chunk_size, memory_budget_bytes)
    return from_torch(uniformity_log_mean(centred_rows(tz, normalize), float(t), rows), to_numpy)


@overload
def contrastive_accuracy_score(
    z1: torch.Tensor,
    z2: torch.Tensor,
    normalize: bool = ...,
    topk: int = ...,
    *,
    chunk_size: int | None = ...,
    memory_budget_bytes: int = ...,
) -> torch.Tensor: ...
@overload
def contrastive_accuracy_score(
    z1: np.ndarray,
    z2: np.ndarray,
    normalize: bool = ...,
    topk: int = ...,
    *,
    chunk_size: int | None = ...,
    memory_budget_bytes: int = ...,
) -> np.generic: ...


def contrastive_accuracy_score(
    z1: ArrayLike,
    z2: ArrayLike,
    normalize: bool = True,
    topk: int = 1,
    *,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
) -> Result:
    """Top-k contrastive accuracy, averaged over both retrieval directions (higher is better).

    With ``S = ẑ1 ẑ2ᵀ``, each row ``i`` of ``S`` (query ``z1_i`` against all of ``z2``) and each row
    of ``Sᵀ`` (query ``z2_j`` against all of ``z1``) scores a hit when its positive (the diagonal
    entry) is in the top-k: **fewer than k entries of the row are strictly greater than the
    positive**. Ties thus count in the positive's favour, and the result depends neither on the order
    of the samples nor on the block size (short of near-ties that the matrix product rounds
    differently for another block shape). The product runs on centred rows with two correction
    columns (:func:`~fabricmetrics.metrics.functional._kernels.retrieval_operands`), which order every
    row and column as ``S`` does, so float32 ranks embeddings far from the origin correctly. The
    score is ``hits / (2 n)``. A collapsed
    embedding (all similarities equal) scores 1: watch :func:`effective_rank` or uniformity for
    collapse.

    Args:
        z1: ``(n_samples, n_features)`` embeddings of the first view.
        z2: embeddings of the second view, same shape; row ``i`` pairs with row ``i`` of ``z1``.
        normalize: divide each row by its L2 norm first (cosine similarity); False uses raw dot
            products.
        topk: how many top-ranked candidates count as retrieved, ``>= 1``; ``topk >= n`` gives 1.
        chunk_size: rows per block; None chooses it from ``memory_budget_bytes``.
        memory_budget_bytes: bound on the temporary block buffers (default 256 MiB).

    Returns:
        0-d tensor (tensor inputs) or NumPy scalar (NumPy inputs), in ``[0, 1]``; NaN when an input
        holds NaN or infinity.

    Raises:
        InputError: shapes differ, an input is not 2-D or is empty, or an option is out of range.
        InputTypeError: inputs are not tensors/arrays, or torch and NumPy are mixed.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z1 = torch.randn(32, 8, generator=g)
        >>> z2 = z1 + 0.8 * torch.randn(32, 8, generator=g)
        >>> contrastive_accuracy_score(z1, z2)
        tensor(0.6250)
        >>> contrastive_accuracy_score(z1.numpy(), z2.numpy(), topk=5, chunk_size=4)
        np.float32(0.953125)
    """
    (t1, t2), to_numpy = to_torch(("z1", "z2"), (z1, z2))
    check_embeddings("z1", t1)
    check_embeddings("z2", t2)
    check_paired(t1, t2)
    check_positive_int("topk", topk)
    check_rows_per_block(chunk_size, memory_budget_bytes)
    n = t1.shape[0]
    if topk >= n:  # every positive is among the n candidates of its row
        score = torch.ones((), dtype=t1.dtype, device=t1.device)
    else:
        rows = rows_per_block(n, n, t1.element_size(), RETRIEVAL_BUFFERS, chunk_size, memory_budget_bytes)
        hits = retrieval_hits(*retrieval_operands(t1, t2, normalize), int(topk), rows)
        score = hits.to(t1.dtype) / (2 * n)
    # A NaN or infinite entry spreads through the centring to every rank: NaN, not a plausible score.
    finite = torch.isfinite(t1).all() & torch.isfinite(t2).all()
    return from_torch(torch.where(finite, score, torch.nan), to_numpy)


@overload
def effective_rank(z: torch.Tensor, *, eps: float = ...) -> torch.Tensor: ...
@overload
def effective_rank(z: np.ndarray, *, eps: float = ...) -> np.generic: ...


def effective_rank(z: ArrayLike, *, eps: float = 1e-7) -> Result:
    """Effective rank of an embedding matrix (RankMe): ``exp(-Σ_k p_k log p_k)``.

    ``p_k = s_k / Σ_l s_l + eps`` over the singular values ``s`` of ``z`` (not centred), as in
    Garrido et al. (2023). It ranges from about 1 (collapse onto one direction) to
    ``min(n_samples, n_features)`` (all directions used equally).

    Args:
        z: ``(n_samples, n_features)`` embeddings, at least 1 sample.
        eps: added to each ``p_k`` so that ``log`` stays finite (RankMe's 1e-7); ``> 0``.

    Returns:
        0-d tensor (tensor inputs) or NumPy scalar (NumPy inputs); NaN if ``z`` is all zeros.

    Raises:
        InputError: ``z`` is not 2-D or is empty, or ``eps <= 0``.
        InputTypeError: ``z`` is not a tensor/array.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(64, 8, generator=g, dtype=torch.float64)
        >>> round(float(effective_rank(z)), 3)
        7.883
        >>> collapsed = z[:, :1] * torch.ones(1, 8, dtype=torch.float64)  # rank 1
        >>> round(float(effective_rank(collapsed.numpy())), 3)
        1.0
    """
    (tz,), to_numpy = to_torch(("z",), (z,))
    check_embeddings("z", tz)
    check_positive("eps", eps)
    singular_values = torch.linalg.svdvals(tz)
    return from_torch(effective_rank_from_singular_values(singular_values, eps), to_numpy)
