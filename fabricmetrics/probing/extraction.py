"""One pass over a loader: the embeddings of an encoder's output and of hooked layers, and the targets.

The encoder runs in ``eval()`` mode under :func:`torch.inference_mode`; every module's own
train/eval flag is restored afterwards, also when the forward raises. A batch is split into
inputs and targets by a *batch function* (``(x, y)`` pairs by default, :func:`default_batch_fn`),
and inputs become embeddings through an *embedding function* (the encoder itself by default, or
e.g. ``encoder.forward_features``). The output of each module named in ``layers`` is captured by a
forward hook in the same pass and flattened per sample. Everything is kept on the CPU as float32
NumPy, ready for scikit-learn.

Across ranks, a :class:`ShardLayout` says where a loader's samples sit in the whole data set: the
``k``-th sample of rank ``r`` under a ``DistributedSampler`` is position ``k·W + r`` of the
sampler's list, and positions ``>= len(dataset)`` are padding that is dropped here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from torch import nn
from torch.utils.data import DistributedSampler, IterableDataset, RandomSampler, SequentialSampler

from fabricmetrics.distributed import length_of, loader_sampler, rank_positions
from fabricmetrics.exceptions import ConfigurationError

__all__ = [
    "BatchFn",
    "EmbedFn",
    "Embeddings",
    "LayoutKind",
    "ShardLayout",
    "default_batch_fn",
    "extract_embeddings",
    "shard_layout",
]

BatchFn = Callable[[Any], tuple[Any, Any]]
"""Splits one batch into ``(inputs, targets)``."""

EmbedFn = Callable[[Any], torch.Tensor]
"""Maps a batch's inputs (already on the encoder's device) to ``(batch, ...)`` embeddings."""

LayoutKind = Literal["whole", "distributed", "custom"]
"""How a loader's samples are spread over ranks (see :class:`ShardLayout`)."""


def default_batch_fn(batch: Any) -> tuple[Any, Any]:
    """Split an ``(x, y)`` batch (a tuple or list of two) into inputs and targets.

    Args:
        batch: what the loader yields.

    Returns:
        ``(x, y)``.

    Raises:
        ConfigurationError: the batch is not a pair.

    Example:
        >>> import torch
        >>> x, y = default_batch_fn([torch.zeros(2, 3), torch.tensor([0, 1])])
        >>> tuple(x.shape), y.tolist()
        ((2, 3), [0, 1])
    """
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        got = f"a mapping with keys {sorted(map(str, batch))}"
    elif isinstance(batch, tuple | list):
        got = f"a {type(batch).__name__} of {len(batch)} items"
    else:
        got = f"a {type(batch).__name__}"
    raise ConfigurationError(
        f"A probing batch must be an `(x, y)` pair, got {got}. "
        "HINT: pass batch_fn=lambda batch: (batch['image'], batch['label']) (or whatever picks inputs and targets)."
    )


@dataclass(frozen=True)
class ShardLayout:
    """Where the samples a loader yields on this rank sit in the whole data set.

    Attributes:
        kind: ``"whole"``: this rank iterates the whole data set (one process, or every rank a full
            copy); ``"distributed"``: a ``DistributedSampler`` (or Fabric's wrapper) shards it;
            ``"custom"``: sharded some other way (e.g. an ``IterableDataset`` split by rank), in an
            unknown order.
        num_samples: the data set's length when known: positions at or past it are padding for
            ``"distributed"``; ``None`` when the length is unknown.
        num_replicas: ``W`` of the ``DistributedSampler`` (1 otherwise).
        rank: ``r`` of the ``DistributedSampler`` (0 otherwise).
    """

    kind: LayoutKind = "whole"
    num_samples: int | None = None
    num_replicas: int = 1
    rank: int = 0

    def positions(self, start: int, count: int) -> np.ndarray:
        """Positions of this rank's samples ``start, …, start + count - 1``.

        Example:
            >>> ShardLayout("distributed", 7, num_replicas=2, rank=1).positions(2, 3).tolist()
            [5, 7, 9]
        """
        if self.kind == "distributed":
            return rank_positions(start, count, self.num_replicas, self.rank)
        return np.arange(start, start + count, dtype=np.int64)


def shard_layout(loader: Iterable[Any], world_size: int, rank: int) -> ShardLayout:
    """The :class:`ShardLayout` of ``loader`` on ``rank`` of ``world_size``.

    A loader whose sampler is a ``DistributedSampler`` (what ``fabric.setup_dataloaders`` installs)
    is ``"distributed"``, with ``num_samples = len(sampler.dataset)``. In one process, and on every
    rank when a plain sequential or random sampler covers the whole map-style data set, it is
    ``"whole"``. Anything else in several processes is ``"custom"``.

    Args:
        loader: a ``DataLoader`` (Fabric's wrapper included) or any iterable of batches.
        world_size: number of ranks.
        rank: this rank.

    Returns:
        The layout.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
        >>> data = TensorDataset(torch.arange(7.0), torch.arange(7))
        >>> shard_layout(DataLoader(data, batch_size=2), 1, 0)
        ShardLayout(kind='whole', num_samples=7, num_replicas=1, rank=0)
        >>> sampler = DistributedSampler(data, num_replicas=2, rank=1, shuffle=False)
        >>> shard_layout(DataLoader(data, batch_size=2, sampler=sampler), 2, 1)
        ShardLayout(kind='distributed', num_samples=7, num_replicas=2, rank=1)
    """
    sampler = loader_sampler(loader)
    if isinstance(sampler, DistributedSampler):
        return ShardLayout("distributed", len(sampler.dataset), int(sampler.num_replicas), int(sampler.rank))  # type: ignore[arg-type]
    dataset = getattr(loader, "dataset", None)
    length = None if isinstance(dataset, IterableDataset) else length_of(dataset)
    covers = isinstance(sampler, SequentialSampler | RandomSampler) and length is not None and len(sampler) == length
    if world_size == 1 or covers:
        return ShardLayout("whole", length)
    return ShardLayout("custom", None)


@dataclass
class Embeddings:
    """What one pass over a loader produced on this rank.

    Attributes:
        features: source → ``(n, d)`` float32 array; the source ``""`` is the encoder's output,
            the others are the names of hooked layers.
        targets: ``(n,)`` or ``(n, k)`` targets, as a CPU tensor of the loader's dtype.
        positions: ``(n,)`` positions of the samples (see :class:`ShardLayout`).
    """

    features: dict[str, np.ndarray] = field(default_factory=dict)
    targets: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    positions: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        """Number of samples."""
        return int(self.positions.shape[0])


def _module_device(module: nn.Module) -> torch.device | None:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return None


def _as_targets(y: Any) -> torch.Tensor:
    try:
        targets = y.detach().cpu() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigurationError(
            f"Probing targets must be numbers (class labels or regression values), got {type(y).__name__} "
            f"that cannot become a tensor ({err}). HINT: encode labels as integers in the dataset or batch_fn."
        ) from err
    if targets.dtype in (torch.float16, torch.bfloat16):
        targets = targets.float()  # NumPy has no bfloat16
    if targets.is_complex() or targets.ndim not in (1, 2):
        raise ConfigurationError(
            "Probing targets must have shape (batch,) or (batch, n_targets) and real values, "
            f"got shape {tuple(targets.shape)} ({targets.dtype}). "
            "HINT: return 1-D labels, or one column per target, from batch_fn."
        )
    return targets


def _flat(value: Any, n: int, source: str) -> torch.Tensor:
    if isinstance(value, tuple | list) and value:
        value = value[0]
    what = "the embedding function's output" if source == "" else f"the output of layer `{source}`"
    if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != n:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ConfigurationError(
            f"Probing needs {what} to be a tensor of shape ({n}, ...) (one row per sample of the batch), "
            f"got {got}. HINT: pass embed_fn=lambda x: ... returning (batch, features), or probe another layer."
        )
    return value.reshape(n, -1)


def _done(kept: int, limit: int | None, keep: np.ndarray | None, positions: np.ndarray) -> bool:
    """Whether no later sample can be kept (positions grow along a rank's sequence)."""
    if limit is not None and kept >= limit:
        return True
    return keep is not None and (keep.size == 0 or (positions.size > 0 and positions[-1] >= keep[-1]))


def extract_embeddings(
    encoder: nn.Module,
    loader: Iterable[Any],
    *,
    layers: Sequence[str] = (),
    include_output: bool = True,
    batch_fn: BatchFn = default_batch_fn,
    embed_fn: EmbedFn | None = None,
    layout: ShardLayout | None = None,
    keep: np.ndarray | None = None,
    limit: int | None = None,
) -> Embeddings:
    """Embed every sample of ``loader`` in one pass, with the encoder in eval mode and no autograd.

    Args:
        encoder: the module to probe; its layers are looked up with ``get_submodule``. Inputs are
            moved to the device of its first parameter (Fabric's loaders have moved them already).
        loader: yields batches.
        layers: names of submodules (as in ``encoder.named_modules()``) whose outputs are captured
            by forward hooks; a tuple or list output contributes its first element.
        include_output: keep the embedding function's output (source ``""``).
        batch_fn: splits a batch into ``(inputs, targets)``.
        embed_fn: inputs → embeddings; defaults to ``encoder`` itself.
        layout: where this rank's samples sit (default: one process, whole data set).
        keep: sorted positions to keep (a subsample); ``None`` keeps all.
        limit: keep at most this many samples (the first ones).

    Returns:
        The :class:`Embeddings`; padding added by a ``DistributedSampler`` is left out.

    Raises:
        ConfigurationError: a batch, its targets, the embeddings or a layer's output have an
            unusable type or shape, or a layer is not called exactly once per batch.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))
        >>> loader = DataLoader(TensorDataset(torch.randn(10, 4), torch.arange(10) % 2), batch_size=4)
        >>> emb = extract_embeddings(encoder, loader, layers=["1"])
        >>> {name: array.shape for name, array in emb.features.items()}, emb.targets.tolist()
        ({'': (10, 2), '1': (10, 8)}, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
        >>> encoder.training
        True
    """
    layout = layout or ShardLayout()
    embed = encoder if embed_fn is None else embed_fn
    device = _module_device(encoder)
    sources = ([""] if include_output else []) + list(layers)
    chunks: dict[str, list[torch.Tensor]] = {source: [] for source in sources}
    targets: list[torch.Tensor] = []
    positions: list[np.ndarray] = []
    captured: dict[str, list[Any]] = {name: [] for name in layers}

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            captured[name].append(output)

        return hook

    modes = [(module, module.training) for module in encoder.modules()]
    handles = []
    try:
        for name in layers:
            handles.append(encoder.get_submodule(name).register_forward_hook(hook_for(name)))
        encoder.eval()
        with torch.inference_mode():
            start, kept = 0, 0
            for batch in loader:
                x, y = batch_fn(batch)
                y_local = _as_targets(y)
                n = int(y_local.shape[0])
                for outputs in captured.values():
                    outputs.clear()
                out = embed(move_data_to_device(x, device) if device is not None else x)
                pos = layout.positions(start, n)
                start += n
                mask = np.ones(n, dtype=bool)
                if layout.kind == "distributed" and layout.num_samples is not None:
                    mask &= pos < layout.num_samples
                if keep is not None:
                    mask &= np.isin(pos, keep)
                if limit is not None:
                    mask &= np.cumsum(mask) <= limit - kept
                values = {"": out} if include_output else {}
                for name, outputs in captured.items():
                    if len(outputs) != 1:
                        raise ConfigurationError(
                            f"Layer `{name}` ran {len(outputs)} times in one forward pass; probing needs exactly one "
                            "output per batch. HINT: probe a module that the forward (or embed_fn) calls once."
                        )
                    values[name] = outputs[0]
                rows = torch.from_numpy(np.flatnonzero(mask))
                for source in sources:
                    flat = _flat(values[source], n, source)
                    if not mask.all():
                        flat = flat[rows.to(flat.device)]
                    chunks[source].append(flat.to("cpu", torch.float32))
                targets.append(y_local if mask.all() else y_local[rows])
                positions.append(pos[mask])
                kept += int(mask.sum())
                if _done(kept, limit, keep, pos):
                    break
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.train(training)
    features = {
        source: (torch.cat(parts).numpy() if parts else np.empty((0, 0), dtype=np.float32))
        for source, parts in chunks.items()
    }
    return Embeddings(
        features=features,
        targets=torch.cat(targets) if targets else torch.empty(0),
        positions=np.concatenate(positions) if positions else np.empty(0, dtype=np.int64),
    )
