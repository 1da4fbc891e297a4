"""Cross-rank communication behind one small seam.

Everything the library does across ranks goes through a :class:`Collectives` object: a launched
Lightning ``Fabric`` (:class:`FabricCollectives`), an initialised ``torch.distributed`` process group
(:class:`TorchCollectives`), or nothing at all (:class:`LocalCollectives`). Which one is used is
decided by :func:`resolve_collectives` *at call time*, so a tracker may be built before the process
group exists.

Subclasses implement three same-shape primitives (``_all_gather_same``, ``_all_reduce_sum`` and
``_barrier``); the base class builds on them what metrics need: gathers of tensors whose shapes
differ between ranks (pad, gather, trim), and gathers of small Python objects.
"""

from __future__ import annotations

import math
import pickle
import warnings
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.utils.data

from fabricmetrics.exceptions import DistributedError

if TYPE_CHECKING:
    from lightning_fabric import Fabric

__all__ = [
    "DEFAULT_GATHER_BUDGET_MB",
    "Collectives",
    "FabricCollectives",
    "LocalCollectives",
    "TorchCollectives",
    "length_of",
    "loader_sampler",
    "num_samples_of",
    "rank_positions",
    "resolve_collectives",
    "share_status",
    "valid_sample_count",
]

_MAX_DIMS = 8
#: MiB that one round of :meth:`Collectives.gather_cat_to_main` moves, all ranks together.
DEFAULT_GATHER_BUDGET_MB = 64.0
_DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.complex64,
    torch.complex128,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


class Collectives(ABC):
    """Collective operations over the ranks of one job.

    Every rank must make the same calls in the same order; the methods here never branch on the
    local data in a way that changes the sequence of underlying collectives.
    """

    @property
    @abstractmethod
    def world_size(self) -> int:
        """Number of ranks."""

    @property
    @abstractmethod
    def rank(self) -> int:
        """Global rank of this process."""

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the rank that logs."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Device that tensors must be on to be communicated."""
        return torch.device("cpu")

    @abstractmethod
    def _all_gather_same(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Gather one tensor of identical shape and dtype from every rank (on :attr:`device`)."""

    @abstractmethod
    def _all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum one tensor of identical shape and dtype over ranks (on :attr:`device`)."""

    @abstractmethod
    def barrier(self) -> None:
        """Wait until every rank reaches this point."""

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``tensor`` over ranks, returned on the tensor's own device.

        Args:
            tensor: a tensor of the same shape and dtype on every rank.

        Returns:
            The sum, on ``tensor.device``.
        """
        if self.world_size == 1:
            return tensor
        return self._all_reduce_sum(tensor.to(self.device)).to(tensor.device)

    def all_gather_list(self, tensor: torch.Tensor, shapes: list[tuple[int, ...]] | None = None) -> list[torch.Tensor]:
        """Gather a tensor whose shape may differ between ranks.

        The shapes are exchanged first (unless every rank passes the same ``shapes``), every tensor
        is padded to the largest shape, gathered, and trimmed back. An empty tensor whose number of
        dimensions differs from the others (a rank that saw no data) comes back as an empty tensor
        shaped like the others' trailing dimensions, so the results concatenate.

        Args:
            tensor: this rank's tensor (any device, any dtype, at most 8 dimensions).
            shapes: every rank's shape, when all ranks already know them (saves one collective);
                the dtype must then be the same on every rank.

        Returns:
            One tensor per rank, in rank order, on ``tensor.device``.
        """
        if self.world_size == 1:
            return [tensor]
        if shapes is None:
            shapes, dtype = self._exchange_layouts(tensor)
        else:
            dtype = tensor.dtype
        ndim = len(shapes[0])
        local_shape = shapes[self.rank]
        max_shape = [max(s[d] for s in shapes) for d in range(ndim)]
        payload, restore = _to_transport(tensor.reshape(local_shape).to(dtype))
        if tuple(max_shape) == tuple(local_shape):
            padded = payload.to(self.device)
        else:
            padded = torch.zeros(max_shape, dtype=payload.dtype, device=self.device)
            padded[tuple(slice(0, n) for n in local_shape)] = payload.to(self.device)
        gathered = self._all_gather_same(padded)
        return [
            restore(g[tuple(slice(0, n) for n in shape)]).to(tensor.device)
            for g, shape in zip(gathered, shapes, strict=True)
        ]

    def _exchange_layouts(self, tensor: torch.Tensor) -> tuple[list[tuple[int, ...]], torch.dtype]:
        if tensor.dim() > _MAX_DIMS:
            raise ValueError(f"Cannot gather a tensor with {tensor.dim()} dimensions (at most {_MAX_DIMS}).")
        header = torch.zeros(_MAX_DIMS + 2, dtype=torch.int64)
        header[0] = _DTYPES.index(tensor.dtype)
        header[1] = tensor.dim()
        header[2 : 2 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
        headers = [h.tolist() for h in self._all_gather_same(header.to(self.device))]
        return _common_layout([tuple(h[2 : 2 + h[1]]) for h in headers], [_DTYPES[h[0]] for h in headers])

    def all_gather_cat(self, tensor: torch.Tensor, counts: list[int] | None = None) -> torch.Tensor:
        """Concatenate along the first dimension the tensors of every rank, in rank order.

        Args:
            tensor: this rank's samples; sizes along the first dimension may differ between ranks
                and may be zero.
            counts: every rank's size along the first dimension, when all ranks already know them
                (then trailing dimensions and dtype must agree); saves the shape exchange.

        Returns:
            The concatenation, on ``tensor.device``.
        """
        if self.world_size == 1:
            return tensor
        shapes = None if counts is None else [(n, *tensor.shape[1:]) for n in counts]
        return torch.cat(self.all_gather_list(tensor, shapes), dim=0)

    def gather_cat_to_main(
        self,
        tensor: torch.Tensor,
        counts: list[int],
        *,
        index: torch.Tensor | None = None,
        budget_mb: float | None = None,
    ) -> torch.Tensor | None:
        """Give rank 0 the concatenation of every rank's rows, in bounded memory on every rank.

        The rows travel in rounds: in each round every rank sends its next block of rows, at most
        ``budget_mb`` MiB over all ranks together, rank 0 copies the blocks into its result and the
        other ranks drop them. So a rank other than rank 0 never holds more than its own rows plus
        one round, on the host or on the communication device (a GPU under NCCL), whatever the
        size of the whole set; rank 0 holds the result plus one round. Every rank makes the same
        calls: the rounds follow from ``counts`` alone.

        Args:
            tensor: this rank's rows, ``(counts[rank], ...)``; trailing dimensions and dtype are the
                same on every rank.
            counts: every rank's number of rows (the same list on every rank).
            index: optional ``(sum(counts),)`` permutation known on rank 0: row ``j`` of the
                rank-order concatenation is written to row ``index[j]`` of the result (to restore a
                sampler's order without a second copy of the set). Ignored on other ranks.
            budget_mb: most MiB one round moves (all ranks together; at least one row per rank);
                default :data:`DEFAULT_GATHER_BUDGET_MB`.

        Returns:
            On rank 0, the ``(sum(counts), ...)`` result on ``tensor.device``; ``None`` elsewhere.

        Example:
            >>> LocalCollectives().gather_cat_to_main(torch.arange(3), [3]).tolist()
            [0, 1, 2]
        """
        if len(counts) != self.world_size or counts[self.rank] != tensor.shape[0]:
            raise ValueError(
                f"gather_cat_to_main: counts={counts} do not fit world size {self.world_size} and this rank's "
                f"{tensor.shape[0]} rows."
            )
        budget_mb = DEFAULT_GATHER_BUDGET_MB if budget_mb is None else budget_mb
        if not budget_mb > 0:
            raise ValueError(f"gather_cat_to_main: budget_mb must be positive, got {budget_mb!r}.")
        if self.world_size == 1 and index is None:
            return tensor
        trailing = tuple(tensor.shape[1:])
        out = tensor.new_empty((sum(counts), *trailing)) if self.is_main else None
        row_bytes = max(1, math.prod(trailing)) * tensor.element_size()
        rows = max(1, int(budget_mb * 2**20) // (row_bytes * self.world_size))
        offsets = [sum(counts[:r]) for r in range(self.world_size)]
        for start in range(0, max(counts), rows):
            shapes = [(max(0, min(rows, n - start)), *trailing) for n in counts]
            blocks = self.all_gather_list(tensor[start : start + rows], shapes)
            if out is None:
                continue
            for offset, block in zip(offsets, blocks, strict=True):
                where = slice(offset + start, offset + start + block.shape[0])
                if index is None:
                    out[where] = block
                else:
                    out[index[where]] = block
        return out

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Gather a small picklable object from every rank.

        Args:
            obj: this rank's object (statuses, shapes, results: keep it small).

        Returns:
            One object per rank, in rank order.
        """
        if self.world_size == 1:
            return [obj]
        data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        return [pickle.loads(t.numpy().tobytes()) for t in self.all_gather_list(data)]

    def torchmetrics_sync_fn(self, tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
        """A ``dist_sync_fn`` for :meth:`torchmetrics.Metric.sync` that uses this backend.

        Args:
            tensor: one metric state on this rank.
            group: must be ``None``; the whole world takes part.

        Returns:
            The state of every rank, in rank order.
        """
        if group is not None:
            raise ValueError("fabricmetrics synchronises metric states over the whole world; got a process group.")
        return self.all_gather_list(tensor)


class LocalCollectives(Collectives):
    """A single process: every collective is the identity."""

    @property
    def world_size(self) -> int:
        """Always 1."""
        return 1

    @property
    def rank(self) -> int:
        """Always 0."""
        return 0

    def _all_gather_same(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor]

    def _all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        """Nothing to wait for."""


class TorchCollectives(Collectives):
    """An initialised default ``torch.distributed`` process group (e.g. under ``torchrun``)."""

    @property
    def world_size(self) -> int:
        """World size of the default process group."""
        return dist.get_world_size()

    @property
    def rank(self) -> int:
        """Global rank in the default process group."""
        return dist.get_rank()

    @property
    def device(self) -> torch.device:
        """The current CUDA device for NCCL, the CPU otherwise."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _all_gather_same(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(out, tensor.contiguous())
        return out

    def _all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        """``torch.distributed.barrier()``."""
        dist.barrier()


class FabricCollectives(Collectives):
    """The collectives of a launched :class:`lightning_fabric.Fabric`."""

    def __init__(self, fabric: Fabric) -> None:
        """Wrap ``fabric``.

        Args:
            fabric: a launched ``Fabric``; its ``all_gather``, ``all_reduce`` and ``barrier`` are used.
        """
        self.fabric = fabric

    @property
    def world_size(self) -> int:
        """``fabric.world_size``."""
        return int(self.fabric.world_size)

    @property
    def rank(self) -> int:
        """``fabric.global_rank``."""
        return int(self.fabric.global_rank)

    @property
    def device(self) -> torch.device:
        """``fabric.device``."""
        return torch.device(self.fabric.device)

    def _all_gather_same(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        with warnings.catch_warnings():
            # Fabric's all_gather goes through a torch function that recent torch marks as deprecated.
            warnings.filterwarnings("ignore", message=r".*all_gather is deprecated", category=FutureWarning)
            gathered = self.fabric.all_gather(tensor.contiguous())
        assert isinstance(gathered, torch.Tensor)
        return list(gathered.unbind(0))

    def _all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        reduced = self.fabric.all_reduce(tensor.clone(), reduce_op="sum")
        assert isinstance(reduced, torch.Tensor)
        return reduced

    def barrier(self) -> None:
        """``fabric.barrier()``."""
        self.fabric.barrier()


_LOCAL = LocalCollectives()


def resolve_collectives(fabric: Fabric | None = None) -> Collectives:
    """Pick the collectives to use now.

    Args:
        fabric: a ``Fabric`` to communicate through, if any.

    Returns:
        :class:`FabricCollectives` for a ``Fabric`` running more than one process,
        :class:`TorchCollectives` for an initialised ``torch.distributed`` default group of more than
        one process, :class:`LocalCollectives` otherwise.

    Example:
        >>> resolve_collectives().world_size
        1
    """
    if fabric is not None:
        return FabricCollectives(fabric) if fabric.world_size > 1 else _LOCAL
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchCollectives()
    return _LOCAL


def share_status(
    collectives: Collectives,
    payload: Any,
    error: BaseException | None = None,
    *,
    where: str,
    consequence: str = "",
    raise_own: bool = True,
) -> list[Any]:
    """Exchange every rank's ``payload`` and fail on every rank if any rank failed.

    The one way a failure on one rank reaches the others: every rank makes this one call at a
    synchronisation point whatever happened locally, so a rank that failed raises its own error and
    every other rank a :class:`~fabricmetrics.exceptions.DistributedError` naming it, instead of
    waiting forever in a collective that the failed rank never makes.

    Args:
        collectives: the ranks' collectives.
        payload: this rank's small picklable payload (ignored by the others when ``error`` is set).
        error: what failed on this rank, if anything.
        where: what the ranks were doing, for the message (``"inside `with tracker.epoch('val')`"``).
        consequence: a sentence appended to the message (what was not done because of it).
        raise_own: re-raise ``error`` here after the exchange (``False`` when the caller is already
            propagating it).

    Returns:
        Every rank's payload, in rank order.

    Raises:
        DistributedError: another rank failed.

    Example:
        >>> share_status(LocalCollectives(), {"n": 3}, where="counting")
        [{'n': 3}]
    """
    message = None if error is None else f"{type(error).__name__}: {error}"
    statuses = collectives.all_gather_object((message, payload))
    if error is not None:
        if raise_own:
            raise error
        return [p for _, p in statuses]
    failed = [(rank, text) for rank, (text, _) in enumerate(statuses) if text is not None]
    if failed:
        rank, text = failed[0]
        others = f" (and ranks {[r for r, _ in failed[1:]]})" if len(failed) > 1 else ""
        raise DistributedError(f"Rank {rank}{others} failed {where}: {text.rstrip('.')}. {consequence}".rstrip())
    return [p for _, p in statuses]


def rank_positions(start: int, count: int, world_size: int, rank: int) -> np.ndarray:
    """Positions in a ``DistributedSampler``'s list of rank ``rank``'s samples ``start … start + count - 1``.

    The one padding rule of the library: the sampler (``drop_last=False``) pads its list of indices
    to a multiple of ``W`` by repeating indices and gives rank ``r`` the positions ``r, r + W,
    r + 2W, …``, so rank ``r``'s ``j``-th sample sits at position ``j·W + r``; positions at or past
    the data set's length are padding, and they always come last in a rank's sequence.

    Example:
        >>> rank_positions(2, 3, 2, 1).tolist()
        [5, 7, 9]
    """
    return np.arange(start, start + count, dtype=np.int64) * world_size + rank


def valid_sample_count(num_samples: int, world_size: int, rank: int) -> int:
    """Number of real samples a ``DistributedSampler`` (``drop_last=False``) gives ``rank``.

    Rank ``r``'s ``j``-th sample sits at position ``j·W + r`` (:func:`rank_positions`), so its real
    samples are the positions below ``num_samples``.

    Args:
        num_samples: length of the data set the sampler draws from.
        world_size: number of ranks ``W``.
        rank: this rank ``r``.

    Returns:
        How many of this rank's samples are real.

    Example:
        >>> [valid_sample_count(21, 2, r) for r in range(2)]
        [11, 10]
    """
    return max(0, -(-(num_samples - rank) // world_size))


def loader_sampler(loader: Any) -> Any:
    """The sampler that orders a loader's samples (the batch sampler's, else the loader's), or ``None``."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    return inner if inner is not None else getattr(loader, "sampler", None)


def num_samples_of(loader: Any) -> int | None:
    """The number of samples a loader's sampler draws from over all ranks: ``num_samples`` for ``epoch()``.

    With a ``DistributedSampler`` (what ``fabric.setup_dataloaders`` installs, also around a
    ``SubsetRandomSampler``), the length of the data set it shards (for Fabric's wrapper: of the
    wrapped sampler, e.g. the subset); otherwise the length of the loader's sampler in this process.

    Args:
        loader: a ``DataLoader`` (Fabric's wrapper included).

    Returns:
        The count, or ``None`` when the sampler has no length (then leave ``num_samples`` out).

    Example:
        >>> from torch.utils.data import DataLoader, DistributedSampler, SubsetRandomSampler
        >>> data = list(range(10))
        >>> num_samples_of(DataLoader(data, sampler=SubsetRandomSampler(range(7))))
        7
        >>> num_samples_of(DataLoader(data, sampler=DistributedSampler(data, num_replicas=2, rank=0)))
        10
    """
    sampler = loader_sampler(loader)
    if isinstance(sampler, torch.utils.data.DistributedSampler):
        return length_of(sampler.dataset)
    return length_of(sampler if sampler is not None else getattr(loader, "dataset", None))


def length_of(sized: Any) -> int | None:
    """``len(sized)``, or ``None`` for ``None`` and objects without a length (an iterable data set).

    Example:
        >>> length_of([1, 2]), length_of(None), length_of(iter([1]))
        (2, None, None)
    """
    try:
        return len(sized)
    except TypeError:
        return None


def _common_layout(
    shapes: list[tuple[int, ...]], dtypes: list[torch.dtype]
) -> tuple[list[tuple[int, ...]], torch.dtype]:
    """Agree on one dtype and number of dimensions; empty tensors adopt those of the others."""
    filled = [i for i, s in enumerate(shapes) if math.prod(s) > 0]
    reference = filled[0] if filled else max(range(len(shapes)), key=lambda i: len(shapes[i]))
    ref_shape, dtype = shapes[reference], dtypes[reference]
    if any(dtypes[i] != dtype for i in filled):
        raise ValueError(f"Cannot gather tensors of different dtypes across ranks: {[str(d) for d in dtypes]}.")
    aligned = [s if len(s) == len(ref_shape) or math.prod(s) > 0 else (0, *ref_shape[1:]) for s in shapes]
    if len({len(s) for s in aligned}) != 1:
        raise ValueError(f"Cannot gather tensors with different numbers of dimensions across ranks: {shapes}.")
    return aligned, dtype


def _to_transport(tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Bool tensors travel as uint8 (not every backend supports bool)."""
    if tensor.dtype == torch.bool:
        return tensor.to(torch.uint8), lambda t: t.to(torch.bool)
    return tensor, lambda t: t
