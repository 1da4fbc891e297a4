"""The math of the SSL metrics, in torch, on validated floating tensors.

Functional metrics and Metric classes both call these kernels, so there is one formula per metric.
Inputs are already checked (2-D, paired, normalised if asked); nothing here synchronises host and
device except Python-level loop bounds, which depend on shapes only.

The pairwise metrics (uniformity, contrastive accuracy) walk over blocks of rows, so only a
``rows x n`` slice of the ``n x n`` matrix exists at any time. The block height comes from a memory
budget (:func:`rows_per_block`); the result does not depend on it beyond floating-point rounding
(uniformity) or of the matrix product (contrastive accuracy compares entries of the similarity
matrix, each computed once, in its block; BLAS may round an entry differently for another block
shape, which matters only for near-ties: on exactly representable data the counts are identical).

Both compute their products on **centred** rows (:func:`centred_rows`, :func:`retrieval_operands`):
embeddings are rarely centred (post-ReLU features have large positive means, and normalised rows of
such features crowd around one direction), and in float32 a product of uncentred rows loses the
digits that distances and rankings need (uniformity -12.8 where float64 gives -17.8 for rows
sharing an offset of 1000). Distances do not change under a shift, rankings of a query's candidates
change by a constant of the query, so centring costs one ``O(n d)`` pass and no accuracy.
"""

from __future__ import annotations

import math

import torch

from fabricmetrics.metrics.functional._backend import normalize_rows

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "RETRIEVAL_BUFFERS",
    "UNIFORMITY_BUFFERS",
    "alignment_terms",
    "centred_rows",
    "effective_rank_from_singular_values",
    "retrieval_hits",
    "retrieval_operands",
    "round_centre",
    "rows_per_block",
    "uniformity_log_mean",
]

DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Default bound, in bytes, on the temporary blocks of the pairwise metrics (256 MiB)."""

UNIFORMITY_BUFFERS = 1
"""Block-sized buffers alive at once in :func:`uniformity_log_mean` (the logits, updated in place)."""

RETRIEVAL_BUFFERS = 2
"""Block-sized buffers alive at once in :func:`retrieval_hits` (similarities, top-k scratch)."""


def rows_per_block(
    n_rows: int, n_cols: int, itemsize: int, buffers: int, chunk_size: int | None, memory_budget_bytes: int
) -> int:
    """Number of rows per block: ``chunk_size`` if given, else as many as the budget allows (>= 1).

    Args:
        n_rows: rows to walk over.
        n_cols: width of one block row.
        itemsize: bytes per element.
        buffers: block-sized buffers alive at once.
        chunk_size: explicit rows per block, or None.
        memory_budget_bytes: budget for the block-sized buffers together.

    Returns:
        Rows per block, between 1 and ``n_rows``.
    """
    if chunk_size is not None:
        return max(1, min(chunk_size, n_rows))
    return max(1, min(n_rows, memory_budget_bytes // (n_cols * itemsize * buffers)))


def round_centre(mean: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """``mean`` rounded to a multiple of ``2**floor(log2(spread))``: a centre with few significant bits.

    Any point near the data centres it as well as its mean (it stays within ``spread / 2`` of it);
    a short one also keeps data that are exactly representable exact once centred (small integers
    minus a multiple of a power of two near their spread), so exact ties stay ties. ``spread = 0``
    returns ``mean``. No host synchronisation; not differentiable (it is a constant shift).
    """
    step = torch.exp2(torch.floor(torch.log2(spread)))
    return torch.where(spread > 0, torch.round(mean / step) * step, mean).detach()


def _centre(wide: torch.Tensor) -> torch.Tensor:
    """:func:`round_centre` of the rows of ``wide`` (float64) and their root-mean-square spread."""
    mean = wide.mean(dim=0)
    return round_centre(mean, (wide - mean).square().mean().sqrt())


def _wide_rows(z: torch.Tensor, normalize: bool) -> torch.Tensor:
    """``z`` in float64, each row divided by its L2 norm if asked (rows of norm 0 stay 0)."""
    return normalize_rows(z.to(torch.float64), normalize)


def centred_rows(z: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The rows of ``z`` (L2-normalised if asked) minus a centre, in the dtype of ``z``.

    The centre is their mean row, rounded by :func:`round_centre`.

    Normalisation and centring run in float64 and the result is rounded once, so each centred row
    keeps the relative precision of ``z``'s dtype even when the rows crowd around a point far from
    the origin (which is where a product of the raw rows cancels). Distances between rows are
    unchanged. Differentiable.
    """
    wide = _wide_rows(z, normalize)
    return (wide - _centre(wide)).to(z.dtype)


def retrieval_operands(z1: torch.Tensor, z2: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Operands whose product ranks every row and every column of ``ẑ1 ẑ2ᵀ`` as it does, stably.

    With ``c1``, ``c2`` centres of ``ẑ1``, ``ẑ2`` (their mean rows, rounded by :func:`round_centre`,
    so that exact data stay exact and their ties stay ties) and ``A = (ẑ1 - c1)(ẑ2 - c2)ᵀ``,
    ``ẑ1_i·ẑ2_j = A_ij + u_j + v_i + c1·c2`` where ``u_j = c1·(ẑ2_j - c2)`` and
    ``v_i = (ẑ1_i - c1)·c2``. Within row ``i`` the terms ``v_i + c1·c2`` are constant, within column
    ``j`` the terms ``u_j + c1·c2``: so ``T = A + u + v`` orders every row and every column like
    ``ẑ1 ẑ2ᵀ`` and is one product, ``[ẑ1 - c1, v, 1] [ẑ2 - c2, 1, u]ᵀ``, of centred rows. The
    operands are built in float64 and rounded once to the dtype of ``z1``.

    Returns:
        ``(n, d + 2)`` operands for :func:`retrieval_hits`.
    """
    w1, w2 = _wide_rows(z1, normalize), _wide_rows(z2, normalize)
    c1, c2 = _centre(w1), _centre(w2)
    w1, w2 = w1 - c1, w2 - c2
    u, v = w2 @ c1, w1 @ c2
    ones = torch.ones_like(u)
    left = torch.cat([w1, v[:, None], ones[:, None]], dim=1).to(z1.dtype)
    right = torch.cat([w2, ones[:, None], u[:, None]], dim=1).to(z1.dtype)
    return left, right


def alignment_terms(z1: torch.Tensor, z2: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-pair terms ``‖z1_i - z2_i‖^alpha`` of the alignment (shape ``(n,)``)."""
    diff = z1 - z2
    if alpha == 2:
        return (diff * diff).sum(dim=1)  # exact square, and a finite gradient at diff = 0
    return torch.linalg.vector_norm(diff, dim=1).pow(alpha)


def uniformity_log_mean(z: torch.Tensor, t: float, rows: int) -> torch.Tensor:
    """``log mean_{i≠j} exp(-t ‖z_i - z_j‖²)``, exactly, one block of rows at a time.

    The kernel is symmetric, so each block of rows ``[a, b)`` is compared with the columns
    ``a..n-1`` only (half the work): the pairs inside the diagonal block ``[a, b) x [a, b)`` appear
    in both orders already (its diagonal ``i = j`` is left out), and the pairs with a later column
    are counted twice. Squared distances come from ``‖z_i‖² + ‖z_j‖² - 2 z_i·z_j`` clamped at 0.
    Each block is reduced to its largest exponent ``m_b`` and the mean of ``exp(x - m_b)`` over its
    ordered pairs (a number in ``(0, 1]``); the blocks are combined as
    ``M + log Σ_b w_b mean_b exp(m_b - M)`` with ``M = max_b m_b`` and ``w_b`` the block's share of
    the ordered pairs, in float64 from the row sums of each block. Nothing overflows or underflows,
    and no large log-count is subtracted at the
    end, so float32 inputs keep float32 accuracy. ``z`` should be centred (:func:`centred_rows`):
    the distances are exact for any ``z``, their float32 rounding is not.

    Args:
        z: ``(n, d)`` embeddings, ``n >= 2``.
        t: kernel scale, ``> 0``.
        rows: rows per block.

    Returns:
        0-d tensor in the dtype of ``z``.
    """
    n = z.shape[0]
    sq_norms = torch.linalg.vecdot(z, z)
    shifts, means, shares = [], [], []
    for start in range(0, n - 1, rows):  # the last row's pairs all lie in earlier blocks
        stop = min(start + rows, n - 1)  # so column n - 1 is always after the diagonal block
        height = stop - start
        # -t ‖z_i - z_j‖² = -t ‖z_j‖² + 2t z_i·z_j - t ‖z_i‖², at most 0
        logits = torch.addmm(sq_norms[None, start:], z[start:stop], z[start:].T, beta=-t, alpha=2.0 * t)
        logits = logits.sub_(t * sq_norms[start:stop, None]).clamp_max_(0.0)
        logits.diagonal().fill_(-math.inf)  # i = j
        shift = logits.detach().amax()
        kernel = logits.sub_(shift).exp_()
        block_pairs = height * (height - 1) + 2 * height * (n - stop)  # ordered pairs
        # Row sums in the block's dtype (accurate along contiguous rows), their total in float64: a
        # float32 total of ~1e6 terms near 1 is off by ~1e-6 relative, all of a tiny uniformity.
        total = kernel[:, :height].sum(dim=1).double().sum() + 2.0 * kernel[:, height:].sum(dim=1).double().sum()
        means.append(total / block_pairs)
        shifts.append(shift.double())
        shares.append(block_pairs / (n * (n - 1)))
        del logits, kernel  # free this block before the next one is allocated
    shift_all = torch.stack(shifts)
    top = shift_all.max()
    weights = torch.tensor(shares, dtype=torch.float64, device=z.device)
    return (top + torch.log((weights * torch.stack(means) * torch.exp(shift_all - top)).sum())).to(z.dtype)


def retrieval_hits(z1: torch.Tensor, z2: torch.Tensor, k: int, rows: int) -> torch.Tensor:
    """Number of queries, over both directions, whose positive is in the top-k of its row.

    With ``S = z1 z2ᵀ``, query ``i`` of ``z1`` ranks row ``i`` of ``S`` and query ``j`` of ``z2``
    ranks row ``j`` of ``Sᵀ`` (column ``j`` of ``S``); the positive is the diagonal entry. It is in
    the top-k when fewer than ``k`` entries of its row are strictly greater (ties count in its
    favour), that is, when it is at least the k-th largest entry of the row (the positive itself
    included).

    ``S`` is computed one block of rows ``S[a:b, :]`` at a time. The ``z1`` queries of a block are
    settled at once; each column keeps the ``k`` largest entries seen so far, and the ``z2`` queries
    are settled after the last block. Both directions compare the same computed entries of ``S``.

    Args:
        z1: ``(n, d)`` queries of one view.
        z2: ``(n, d)`` queries of the other view.
        k: top-k, ``1 <= k <= n``.
        rows: rows of ``S`` per block.

    Returns:
        0-d int64 tensor, between 0 and ``2 n``.
    """
    n = z1.shape[0]
    hits = torch.zeros((), dtype=torch.int64, device=z1.device)
    column_top: torch.Tensor | None = None  # (<= k, n): largest entries so far of each column of S
    positives = []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block = z1[start:stop] @ z2.T  # S[start:stop, :]
        positive = block.diagonal(offset=start).clone()  # S[i, i] for i in [start, stop)
        hits += (positive >= block.topk(k, dim=1, sorted=False).values.amin(dim=1)).sum()
        top = block.topk(min(k, stop - start), dim=0, sorted=False).values
        column_top = top if column_top is None else torch.cat([column_top, top])
        if column_top.shape[0] > k:
            column_top = column_top.topk(k, dim=0, sorted=False).values
        positives.append(positive)
        del block  # free this block before the next one is allocated
    if column_top is None:  # n == 0: validated away by the callers
        return hits
    return hits + (torch.cat(positives) >= column_top.amin(dim=0)).sum()


def effective_rank_from_singular_values(singular_values: torch.Tensor, eps: float) -> torch.Tensor:
    """RankMe: ``exp(-Σ p_k log p_k)`` with ``p_k = s_k / Σ s + eps`` (NaN when every s is 0)."""
    p = singular_values / singular_values.sum() + eps
    return torch.exp(-(p * torch.log(p)).sum())
