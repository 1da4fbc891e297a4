"""Exact mode: the arguments of a stage's exact metrics, collected over an epoch and gathered over ranks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from fabricmetrics._values import to_numpy
from fabricmetrics.distributed import Collectives
from fabricmetrics.exceptions import OutputsError, warn

__all__ = ["Collector", "Layout", "layout_of"]

Layout = tuple[str, tuple[int, ...], str]
"""``(kind, per-sample shape, dtype)`` of a collected argument: kind is ``"torch"`` or ``"numpy"``."""


def layout_of(value: Any) -> Layout:
    """The layout of one tensor or array.

    Args:
        value: a tensor or a NumPy array with a sample dimension.

    Returns:
        ``(kind, shape without the first dimension, dtype name)``; NumPy strings of any width
        have the dtype ``"U"`` (or ``"S"`` for bytes).

    Example:
        >>> layout_of(torch.zeros(4, 3))
        ('torch', (3,), 'torch.float32')
    """
    if isinstance(value, torch.Tensor):
        return "torch", tuple(value.shape[1:]), str(value.dtype)
    # strings of any width concatenate: their layout is the kind alone ("U" or "S")
    dtype = value.dtype.kind if value.dtype.kind in "US" else str(value.dtype)
    return "numpy", tuple(value.shape[1:]), dtype


class Collector:
    """Chunks of each collected argument (by source index), one per step, on this rank.

    Args:
        compute_on_cpu: copy tensors to the CPU as they are collected (non-blocking).
    """

    def __init__(self, compute_on_cpu: bool) -> None:
        """Start empty."""
        self.compute_on_cpu = compute_on_cpu
        self.chunks: dict[int, list[Any]] = {}
        self.pending_copy = False

    def reset(self) -> None:
        """Forget everything collected."""
        self.chunks = {}
        self.pending_copy = False

    def add(self, index: int, value: Any, label: Callable[[], str], where: str, stage: str) -> None:
        """Append one step's value of source ``index``.

        Args:
            index: the source's index.
            value: a tensor, an array, or a list/tuple of numbers (made an array).
            label: describes the source in messages (called only on error).
            where: the step, for messages.
            stage: the stage name, for messages.

        Raises:
            OutputsError: the value has no sample dimension, or another kind, per-sample shape or
                dtype than on earlier steps.
        """
        if isinstance(value, (list, tuple)):
            value = np.asarray(value)
        if not isinstance(value, (torch.Tensor, np.ndarray)) or value.ndim == 0:
            raise OutputsError(
                f"{label()} received {value!r:.60} ({type(value).__name__}) in exact mode (per_step=False), which "
                "collects arrays or tensors whose first dimension is the sample dimension. HINT: average a per-batch "
                f"scalar such as a loss with schedule={{{stage!r}: Schedule(per_step=True)}} or "
                "torchmetrics.MeanMetric; constants belong in the metric, e.g. "
                "functools.partial(f1_score, average='macro')."
            )
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if self.compute_on_cpu and value.device.type != "cpu":
                value = value.to("cpu", non_blocking=True)
                self.pending_copy = True
        chunks = self.chunks.setdefault(index, [])
        if chunks and layout_of(chunks[0]) != layout_of(value):
            raise OutputsError(
                f"{label()} received {layout_of(value)} on {where} of stage `{stage}` but {layout_of(chunks[0])} "
                "on earlier steps (kind, per-sample shape, dtype); exact mode concatenates them. HINT: return the "
                "same dtype and per-sample shape on every step."
            )
        chunks.append(value)

    def _finish_copies(self) -> None:
        if self.pending_copy and torch.cuda.is_available():
            torch.cuda.synchronize()
        self.pending_copy = False

    def layout(self, index: int) -> Layout | None:
        """The layout of source ``index``, or ``None`` if nothing was collected."""
        chunks = self.chunks.get(index)
        return layout_of(chunks[0]) if chunks else None

    def count(self, index: int) -> int:
        """Number of samples collected for source ``index``."""
        return sum(len(c) for c in self.chunks.get(index, []))

    def gather(self, collectives: Collectives, index: int | None, layout: Layout | None, counts: list[int]) -> Any:
        """This rank's chunks of one source, concatenated, then gathered over ranks in rank order.

        Args:
            collectives: the epoch end's collectives.
            index: the source's index here (``None`` on a rank that never resolved its sources).
            layout: the layout agreed by all ranks.
            counts: every rank's number of samples for this source.

        Returns:
            A tensor or an array of every rank's samples.
        """
        self._finish_copies()
        chunks = self.chunks.get(index, []) if index is not None else []
        if layout is not None and layout[0] == "numpy":
            array = np.concatenate(chunks) if chunks else np.empty((0, *layout[1]), dtype=np.dtype(layout[2]))
            if collectives.world_size == 1:
                return array
            if array.dtype.kind not in "biufc":  # strings, objects: pickled (the layout says so on every rank)
                return np.concatenate(collectives.all_gather_object(array))
            return to_numpy(collectives.all_gather_cat(torch.from_numpy(np.ascontiguousarray(array)), counts))
        if chunks:
            local = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        else:
            dtype = getattr(torch, layout[2].removeprefix("torch.")) if layout else torch.float32
            local = torch.empty((0, *(layout[1] if layout else ())), dtype=dtype)
        return collectives.all_gather_cat(local, counts)

    def state_dict(self) -> dict[str, Any]:
        """The chunks, loadable with ``weights_only``: tensors, NumPy numbers as tensors, text as lists.

        NumPy chunks are marked with their dtype; those of strings (``<U``, ``S``) or objects (e.g.
        string labels for a scikit-learn metric) are kept as nested lists of Python values.
        """
        self._finish_copies()  # compute_on_cpu copies are non-blocking: wait before anything reads them
        numpy = {str(i): str(cs[0].dtype) for i, cs in self.chunks.items() if cs and isinstance(cs[0], np.ndarray)}
        return {"chunks": {str(i): [_to_state(c) for c in cs] for i, cs in self.chunks.items()}, "numpy_dtypes": numpy}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (also that of earlier versions, which list the NumPy sources only)."""
        dtypes = state.get("numpy_dtypes")
        if dtypes is None:
            dtypes = dict.fromkeys(state["numpy"])
        self.chunks = {
            int(i): [_from_state(c, dtypes[i]) if i in dtypes else c for c in cs] for i, cs in state["chunks"].items()
        }


def _to_state(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value
    kind = value.dtype.kind
    if kind in "biufc":
        return torch.from_numpy(np.ascontiguousarray(value))
    if kind in "mM":  # datetimes and durations travel as their int64 counts
        return torch.from_numpy(np.ascontiguousarray(value).view(np.int64))
    plain = _plain(value.tolist())  # text and objects: plain Python values
    if kind == "O" and not _loads_safely(plain):
        warn(
            "An exact-mode argument holds Python objects that torch.load(..., weights_only=True) cannot read; "
            "this checkpoint loads only with weights_only=False. HINT: give metrics numbers or strings."
        )
    return plain


def _from_state(value: Any, dtype: str | None) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        array = value.numpy()
        return array.view(np.dtype(dtype)) if dtype is not None and np.dtype(dtype).kind in "mM" else array
    if dtype is not None and np.dtype(dtype).kind in "US":
        dtype = np.dtype(dtype).kind  # the width of each chunk is its own
    return np.asarray(value, dtype=None if dtype is None else np.dtype(dtype))


def _plain(value: Any) -> Any:
    """NumPy scalars inside ``tolist()`` of an object array made Python values."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _loads_safely(value: Any) -> bool:
    if isinstance(value, list):
        return all(_loads_safely(v) for v in value)
    return value is None or isinstance(value, (str, bytes, bool, int, float, complex))
