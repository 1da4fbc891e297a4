"""torchmetrics-style classes for the SSL metrics, thin wrappers over :mod:`.functional`.

Each class keeps the smallest state that makes its value exact across batches and ranks:

- :class:`Alignment`: a sum of per-pair terms and a count (sum-reduced; exactly decomposable).
- :class:`Uniformity` and :class:`ContrastiveAccuracy`: the embeddings themselves (concatenated,
  gathered across ranks), because every pair of samples enters the value; ``compute`` then runs the
  memory-bounded functional on the whole set.
- :class:`EffectiveRank`: the Gram matrix ``ZᵀZ`` (``d x d``, float64, sum-reduced; exactly
  decomposable), whose eigenvalues are the squared singular values of ``Z``.

``update`` accepts torch tensors, or NumPy arrays (moved to the metric's device).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from fabricmetrics import _tm
from fabricmetrics.exceptions import InputError
from fabricmetrics.metrics.functional._backend import (
    ArrayLike,
    check_embeddings,
    check_paired,
    check_positive,
    check_positive_int,
    check_rows_per_block,
    normalize_rows,
    to_torch,
)
from fabricmetrics.metrics.functional._kernels import (
    DEFAULT_MEMORY_BUDGET,
    alignment_terms,
    effective_rank_from_singular_values,
)
from fabricmetrics.metrics.functional.ssl import contrastive_accuracy_score, uniformity_score

__all__ = ["Alignment", "ContrastiveAccuracy", "EffectiveRank", "Uniformity"]


def _embeddings(metric: Metric, names: tuple[str, ...], values: tuple[ArrayLike, ...]) -> list[torch.Tensor]:
    """Validate one batch of embeddings (2-D, paired) and return them as tensors on the metric's device."""
    tensors, from_numpy = to_torch(names, values)
    for name, tensor in zip(names, tensors, strict=True):
        check_embeddings(name, tensor)
    if len(tensors) == 2:
        check_paired(tensors[0], tensors[1])
    return [tensor.to(metric.device) for tensor in tensors] if from_numpy else tensors


def _check_features(metric: Metric, stored: list[torch.Tensor] | torch.Tensor, batch: torch.Tensor) -> None:
    first = stored if isinstance(stored, torch.Tensor) else (stored[0] if stored else None)
    if first is not None and first.ndim == 2 and first.shape[1] != batch.shape[1]:
        raise InputError(
            f"{type(metric).__name__}.update() got {batch.shape[1]} features, but earlier batches had "
            f"{first.shape[1]}. HINT: call reset() between embeddings of different models."
        )


def _concatenated(metric: Metric, state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(state, list) and not state:
        raise InputError(f"{type(metric).__name__}.compute() has no samples: update() was never called.")
    return dim_zero_cat(state)


class Alignment(Metric):
    """Alignment ``mean_i ‖ẑ1_i - ẑ2_i‖^alpha`` accumulated over batches (lower is better).

    State: the sum of the per-pair terms (float64) and the number of pairs, both sum-reduced, so
    the value over several batches and ranks equals :func:`~fabricmetrics.metrics.alignment_score`
    on their concatenation. The result is a float64 0-d tensor.

    Args:
        normalize: divide each row by its L2 norm first.
        alpha: exponent of the distance, ``> 0``.
        **kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``, ...).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z1 = torch.randn(8, 4, generator=g)
        >>> z2 = z1 + 0.1 * torch.randn(8, 4, generator=g)
        >>> metric = Alignment()
        >>> metric.update(z1[:5], z2[:5])
        >>> metric.update(z1[5:], z2[5:])
        >>> round(float(metric.compute()), 4)
        0.0243
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False
    sum_terms: torch.Tensor
    num_pairs: torch.Tensor

    def __init__(self, normalize: bool = True, alpha: float = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive("alpha", alpha)
        self.normalize = normalize
        self.alpha = alpha
        self.add_state("sum_terms", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_pairs", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, z1: ArrayLike, z2: ArrayLike) -> None:
        """Add the pairs of one batch (``z1[i]`` pairs with ``z2[i]``)."""
        t1, t2 = _embeddings(self, ("z1", "z2"), (z1, z2))
        terms = alignment_terms(normalize_rows(t1, self.normalize), normalize_rows(t2, self.normalize), self.alpha)
        self.sum_terms = self.sum_terms + terms.to(torch.float64).sum()
        self.num_pairs = self.num_pairs + terms.shape[0]

    def compute(self) -> torch.Tensor:
        """Mean term over every pair seen (NaN before any update)."""
        return self.sum_terms / self.num_pairs


class Uniformity(Metric):
    """Uniformity ``log mean_{i≠j} exp(-t ‖ẑ_i - ẑ_j‖²)`` over all samples seen (lower is better).

    Every pair enters the value, so the state is the concatenated embeddings (gathered across ranks,
    uneven shard sizes included) and ``compute`` runs the memory-bounded
    :func:`~fabricmetrics.metrics.uniformity_score` on the whole set: exact, not a mean of batch
    values. State memory is ``n x d`` floats.

    Args:
        normalize: divide each row by its L2 norm first.
        t: scale of the Gaussian kernel, ``> 0``.
        chunk_size: rows per block at compute; None chooses it from ``memory_budget_bytes``.
        memory_budget_bytes: bound on the temporary block buffers of ``compute`` (default 256 MiB).
        **kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(16, 4, generator=g)
        >>> metric = Uniformity()
        >>> for batch in z.split(5):
        ...     metric.update(batch)
        >>> round(float(metric.compute()), 4)
        -2.6345
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False
    z: list[torch.Tensor]

    def __init__(
        self,
        normalize: bool = True,
        t: float = 2,
        *,
        chunk_size: int | None = None,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive("t", t)
        check_rows_per_block(chunk_size, memory_budget_bytes)
        self.normalize = normalize
        self.t = t
        self.chunk_size = chunk_size
        self.memory_budget_bytes = memory_budget_bytes
        self.add_state("z", default=[], dist_reduce_fx="cat")

    def update(self, z: ArrayLike) -> None:
        """Add the embeddings of one batch."""
        (tz,) = _embeddings(self, ("z",), (z,))
        _check_features(self, self.z, tz)
        self.z.append(tz.detach())

    def compute(self) -> torch.Tensor:
        """Uniformity of every sample seen (needs at least 2)."""
        z = _concatenated(self, self.z)
        return uniformity_score(
            z, self.normalize, self.t, chunk_size=self.chunk_size, memory_budget_bytes=self.memory_budget_bytes
        )


class ContrastiveAccuracy(Metric):
    """Top-k contrastive accuracy over all pairs seen, both directions averaged (higher is better).

    Every sample of one view is a candidate for every query of the other, so the state is the
    concatenated embeddings of both views and ``compute`` runs the memory-bounded
    :func:`~fabricmetrics.metrics.contrastive_accuracy_score` on the whole set. Ties count in the
    positive's favour (fewer than ``topk`` candidates strictly more similar).

    Args:
        normalize: divide each row by its L2 norm first (cosine similarity).
        topk: how many top-ranked candidates count as retrieved, ``>= 1``.
        chunk_size: rows per block at compute; None chooses it from ``memory_budget_bytes``.
        memory_budget_bytes: bound on the temporary block buffers of ``compute`` (default 256 MiB).
        **kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z1 = torch.randn(32, 8, generator=g)
        >>> z2 = z1 + 0.8 * torch.randn(32, 8, generator=g)
        >>> metric = ContrastiveAccuracy(topk=5)
        >>> for b1, b2 in zip(z1.split(10), z2.split(10)):
        ...     metric.update(b1, b2)
        >>> metric.compute()
        tensor(0.9531)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    z1: list[torch.Tensor]
    z2: list[torch.Tensor]

    def __init__(
        self,
        normalize: bool = True,
        topk: int = 1,
        *,
        chunk_size: int | None = None,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("topk", topk)
        check_rows_per_block(chunk_size, memory_budget_bytes)
        self.normalize = normalize
        self.topk = topk
        self.chunk_size = chunk_size
        self.memory_budget_bytes = memory_budget_bytes
        self.add_state("z1", default=[], dist_reduce_fx="cat")
        self.add_state("z2", default=[], dist_reduce_fx="cat")

    def update(self, z1: ArrayLike, z2: ArrayLike) -> None:
        """Add the pairs of one batch (``z1[i]`` pairs with ``z2[i]``)."""
        t1, t2 = _embeddings(self, ("z1", "z2"), (z1, z2))
        _check_features(self, self.z1, t1)
        self.z1.append(t1.detach())
        self.z2.append(t2.detach())

    def compute(self) -> torch.Tensor:
        """Contrastive accuracy of every pair seen, each sample a candidate for every query."""
        z1, z2 = _concatenated(self, self.z1), _concatenated(self, self.z2)
        return contrastive_accuracy_score(
            z1,
            z2,
            self.normalize,
            self.topk,
            chunk_size=self.chunk_size,
            memory_budget_bytes=self.memory_budget_bytes,
        )


class EffectiveRank(Metric):
    """Effective rank (RankMe) of all embeddings seen, from their Gram matrix (higher: less collapse).

    State: ``ZᵀZ`` (``d x d``, float64) and the number of rows, both sum-reduced, so the value is
    exact over batches and ranks with ``O(d²)`` memory. ``compute`` takes the singular values of
    ``Z`` as the square roots of the ``min(n, d)`` largest eigenvalues of ``ZᵀZ``; singular values
    below about ``1e-8 · s_max`` are resolved only to that precision (squaring), which moves the
    result by about ``1e-7`` per such direction compared with the SVD of
    :func:`~fabricmetrics.metrics.effective_rank`. The result is a float64 0-d tensor.

    Args:
        eps: added to each normalised singular value (RankMe's 1e-7); ``> 0``.
        num_features: ``d``, if known. Without it the state is a 0-d placeholder until the first
            batch, and a synchronisation first exchanges every rank's ``d`` (one small collective),
            so that a rank which saw no sample still takes part with a ``d x d`` zero state.
        **kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(64, 8, generator=g, dtype=torch.float64)
        >>> metric = EffectiveRank()
        >>> for batch in z.split(20):
        ...     metric.update(batch)
        >>> round(float(metric.compute()), 3)
        7.883
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    gram: torch.Tensor
    num_samples: torch.Tensor

    def __init__(self, *, eps: float = 1e-7, num_features: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive("eps", eps)
        if num_features is not None:
            check_positive_int("num_features", num_features)
        self.eps = eps
        self.num_features = num_features
        # Without num_features: a 0-d zero until the first batch fixes d (it broadcasts into the
        # first d x d product).
        shape = () if num_features is None else (num_features, num_features)
        self.add_state("gram", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, z: ArrayLike) -> None:
        """Add ``zᵀz`` of one batch."""
        (tz,) = _embeddings(self, ("z",), (z,))
        if self.gram.ndim == 2 and self.gram.shape[0] != tz.shape[1]:
            raise InputError(
                f"EffectiveRank.update() got {tz.shape[1]} features, but earlier batches had "
                f"{self.gram.shape[0]}. HINT: call reset() between embeddings of different models."
            )
        z64 = tz.detach().to(torch.float64)
        self.gram = self.gram + z64.T @ z64
        self.num_samples = self.num_samples + tz.shape[0]

    def sync(
        self,
        dist_sync_fn: Callable[..., Any] | None = None,
        process_group: Any = None,
        should_sync: bool = True,
        distributed_available: Callable[[], bool] | None = None,
    ) -> None:
        """:meth:`torchmetrics.Metric.sync`, after agreeing on ``d`` when ``num_features`` is unset.

        Every rank sends its ``d`` (0 before its first batch); a rank still holding the 0-d
        placeholder takes a ``d x d`` zero state, so every rank synchronises states of one shape.

        Raises:
            InputError: ranks saw different numbers of features (the same error on every rank).
        """
        available = self.distributed_available_fn if distributed_available is None else distributed_available
        agree = self.num_features is None and should_sync and not _tm.is_synced(self)
        if agree and callable(available) and available():
            gather = gather_all_tensors if dist_sync_fn is None else dist_sync_fn
            local = torch.tensor(self.gram.shape[0] if self.gram.ndim == 2 else 0, device=self.gram.device)
            dims = sorted({int(d) for d in gather(local, group=process_group)} - {0})
            if len(dims) > 1:
                raise InputError(
                    f"EffectiveRank: the ranks saw embeddings of different widths {dims}. HINT: every rank "
                    "must embed with the same model; call reset() between embeddings of different models."
                )
            if dims and self.gram.ndim != 2:
                self.gram = self.gram.new_zeros(dims[0], dims[0])
        super().sync(dist_sync_fn, process_group, should_sync, distributed_available)

    def compute(self) -> torch.Tensor:
        """Effective rank of every sample seen."""
        if self.gram.ndim != 2:
            raise InputError("EffectiveRank.compute() has no samples: update() was never called.")
        eigenvalues = torch.linalg.eigvalsh(self.gram).flip(0)  # descending
        n_values = min(int(self.num_samples), self.gram.shape[0])
        singular_values = eigenvalues[:n_values].clamp_min(0.0).sqrt()
        return effective_rank_from_singular_values(singular_values, self.eps)
