"""One metric bound to one stage: torchmetrics state, per-step mean, or exact collection.

Each kind of bound metric is a strategy that owns its update, the summary it tells the other ranks
at an epoch end, its reduction across ranks and its value, so the stage (``fabricmetrics._stage``)
loops over its bounds without asking what they are — as each ``torchmetrics.Metric`` owns its
``update`` and ``compute`` and declares its reductions.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torchmetrics import Metric

from fabricmetrics import _tm
from fabricmetrics._coalesce import Coalescer, eligible
from fabricmetrics._values import flatten_value, to_numpy
from fabricmetrics.distributed import Collectives
from fabricmetrics.exceptions import ConfigurationError, MetricError, OutputsError

__all__ = [
    "Bound",
    "ExactBound",
    "PerStepBound",
    "Reduction",
    "TorchmetricBound",
    "first_dim",
    "update_signature",
    "wants_numpy",
]


def wants_numpy(fn: Any) -> bool:
    """Whether ``fn`` is a scikit-learn function, which receives NumPy arrays.

    Args:
        fn: a metric callable (``functools.partial`` objects are looked through).

    Returns:
        ``True`` for functions defined in ``sklearn``.

    Example:
        >>> from sklearn.metrics import accuracy_score
        >>> wants_numpy(functools.partial(accuracy_score, normalize=True)), wants_numpy(len)
        (True, False)
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    return (getattr(fn, "__module__", None) or "").startswith("sklearn")


def update_signature(metric: Metric) -> tuple[Any, ...] | None:
    """What determines the state a torchmetrics metric accumulates, or ``None`` if unsure.

    Two metrics with equal signatures, fed the same arguments, hold the same state after every
    update: they run the same ``update`` code (the same functions for ``update`` and every
    ``_update*`` method), have the same states and reductions, and the same values for every
    constructor parameter of the class that defines ``update`` (``num_classes``, ``top_k``,
    ``average``, ``ignore_index``, …). ``MulticlassAccuracy``, ``MulticlassF1Score``,
    ``MulticlassPrecision`` and ``MulticlassRecall`` with equal settings share one; ``MaxMetric``
    and ``MinMetric`` do not. Unlike grouping by equal states after a first batch, this never
    merges metrics that merely happen to agree on that batch.

    Args:
        metric: a torchmetrics metric.

    Returns:
        A hashable signature, or ``None`` when a parameter of the update's class is not stored on
        the metric (then it shares with nothing).

    Example:
        >>> from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
        >>> update_signature(MulticlassAccuracy(5)) == update_signature(MulticlassF1Score(5))
        True
        >>> update_signature(MulticlassAccuracy(5)) == update_signature(MulticlassAccuracy(5, top_k=2))
        False
    """
    cls = type(metric)
    owner = next((k for k in cls.__mro__ if "update" in k.__dict__), None)
    if owner is None or owner is Metric:
        return None
    try:
        params = [
            p.name
            for p in inspect.signature(owner).parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
    except (TypeError, ValueError):
        return None
    hyper = []
    for name in params:
        if not hasattr(metric, name):
            return None
        hyper.append((name, _hashable(getattr(metric, name))))
    methods = tuple(
        (n, _describe_callable(getattr(cls, n))) for n in sorted(dir(cls)) if n == "update" or n.startswith("_update")
    )
    reductions = _tm.reductions(metric)
    states = tuple((k, _hashable(d), _describe_reduction(reductions[k])) for k, d in _tm.defaults(metric).items())
    flags = (metric.full_state_update, metric.dist_sync_on_step, metric.compute_on_cpu)
    return (f"{owner.__module__}.{owner.__qualname__}", methods, states, tuple(hyper), flags)


def _describe_reduction(reduction: Any) -> Any:
    return None if reduction is None else _describe_callable(reduction)


def _hashable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype), tuple(value.detach().cpu().flatten().tolist()))
    if isinstance(value, list):
        return ("list", tuple(_hashable(v) for v in value))
    try:
        hash(value)
    except TypeError:
        return ("repr", repr(value))
    return value


def _never_distributed() -> bool:
    """``distributed_available_fn`` of the tracker's clones: the tracker syncs them itself."""
    return False


class Reduction:
    """The cross-rank work of one epoch end, shared by the bounds of a stage.

    In :meth:`Bound.reduce` each bound registers what it needs (a vector to sum over ranks, the
    exact-mode sources to gather) or makes its own collectives (a torchmetric's state sync). Every
    rank calls the bounds in the same order with the same summaries, so the registrations, and the
    collectives of :meth:`run`, are the same on every rank: one all-reduce of every registered sum,
    then one gather per wanted source, in source order.

    Args:
        collectives: the epoch end's collectives.
        gather_source: gathers the exact-mode source at a position over ranks.
        stage: the stage's name, for messages.
    """

    def __init__(self, collectives: Collectives, gather_source: Callable[[int], Any], stage: str = "") -> None:
        """Start with nothing registered."""
        self.collectives = collectives
        self.stage = stage
        self._gather_source = gather_source
        self._vectors: list[torch.Tensor] = []
        self._sums: list[list[float]] = []
        self._wanted: set[int] = set()
        self._sources: dict[int, Any] = {}

    def add_sum(self, vector: torch.Tensor) -> int:
        """Register a 1-D vector to sum over ranks; returns the handle for :meth:`sums`."""
        self._vectors.append(vector.reshape(-1))
        return len(self._vectors) - 1

    def want_sources(self, positions: Sequence[int]) -> None:
        """Register exact-mode sources (positions in the stage's list of collected sources) to gather."""
        self._wanted.update(positions)

    def run(self) -> None:
        """Make the registered collectives: one all-reduce of the sums, one gather per source."""
        if self._vectors:
            device = self.collectives.device
            dtype = _float_dtype(device)
            flat = torch.cat([v.to(device, dtype) for v in self._vectors])
            reduced = self.collectives.all_reduce_sum(flat).tolist()
            offset = 0
            for vector in self._vectors:
                self._sums.append(reduced[offset : offset + vector.numel()])
                offset += vector.numel()
        for position in sorted(self._wanted):
            self._sources[position] = self._gather_source(position)

    def sums(self, handle: int) -> list[float]:
        """The sum over ranks of the vector registered as ``handle``."""
        return self._sums[handle]

    def source(self, position: int) -> Any:
        """Every rank's samples of the exact-mode source at ``position``."""
        return self._sources[position]


class Bound(ABC):
    """One metric bound to one stage; each kind owns its update, summary, reduction and value.

    The stage calls, for every step, :meth:`step`; at an epoch end, on every rank and in the same
    order: :meth:`summary` (travels in the epoch-end status), :meth:`reduce` (with every rank's
    summary), then :meth:`value` and finally :meth:`release`.

    Attributes:
        name: the metric's name.
        kind: ``"torchmetric"``, ``"per_step"`` or ``"exact"`` (recorded in checkpoints).
    """

    kind: ClassVar[str]

    def __init__(self, name: str) -> None:
        """Name the bound."""
        self.name = name

    @abstractmethod
    def describe(self) -> str:
        """What this bound computes, as a string that is equal on ranks configured alike."""

    @abstractmethod
    def step(self, args: list[Any], kwargs: dict[str, Any], n: int, *, log_step: bool, accumulate: bool) -> Any:
        """Feed one batch of ``n`` samples; return its (rank-local) value when ``log_step``, else ``None``."""

    def summary(self) -> Any:
        """What the other ranks need to know of this rank's epoch (small and picklable)."""
        return None

    @abstractmethod
    def reduce(self, reduction: Reduction, summaries: list[Any]) -> None:
        """Register, or make, this bound's cross-rank work.

        Args:
            reduction: the epoch end's shared reduction.
            summaries: every rank's :meth:`summary`, in rank order (the same list on every rank).

        Raises:
            FabricMetricsError: only for a problem every rank sees alike in ``summaries``.
        """

    @abstractmethod
    def value(self, reduction: Reduction) -> list[tuple[str, Any]]:
        """The epoch's value over every rank, as flat ``(key, scalar)`` pairs (after ``reduction.run()``)."""

    def release(self) -> None:
        """Undo what :meth:`reduce` changed in the local state (always called after an epoch end)."""
        return

    def reset(self) -> None:
        """Forget the epoch's state."""
        return

    def state_dict(self) -> dict[str, Any]:
        """The epoch's state as tensors and plain containers."""
        return {}

    def check_state(self, state: Any) -> None:
        """Raise a :class:`ConfigurationError` if :meth:`load_state_dict` cannot restore ``state``."""
        return

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (after :meth:`check_state`)."""
        return


class TorchmetricBound(Bound):
    """A per-stage clone of a ``torchmetrics.Metric`` that accumulates its own state.

    The clone never synchronises by itself; :meth:`reduce` syncs it once through the tracker's
    collectives. When another metric of the stage has the same arguments and an update that
    provably produces the same state (see :func:`update_signature`), that metric is this one's
    ``leader``: only the leader is updated on silent steps, and this one adopts the leader's state
    before computing.

    Attributes:
        leader: the metric whose state this one shares, or ``None``.
    """

    kind = "torchmetric"

    def __init__(self, name: str, metric: Metric) -> None:
        """Clone ``metric`` for one stage.

        Args:
            name: the metric's name.
            metric: the user's metric; it is cloned, never updated itself.
        """
        super().__init__(name)
        self.metric = metric.clone()
        self.metric.reset()
        _tm.detach_auto_sync(self.metric, _never_distributed)
        self.leader: TorchmetricBound | None = None
        self._sync_error: BaseException | None = None
        # A metric whose updates add up exactly (see fabricmetrics._coalesce) buffers its steps and runs one
        # update per flush; its logged batch values come from a scratch clone, updated once per step for a
        # leader and its followers.
        self._coalescer = Coalescer([self.metric], name=name) if eligible(self.metric) else None
        self._buffers_steps = True  # False when another leader's buffer holds this one's steps
        self._sharers: list[TorchmetricBound] = []  # the leaders whose steps this one's buffer holds
        self._flush_error: BaseException | None = None
        self._batch: Metric | None = None
        self._batch_inputs: tuple[Any, ...] = ()
        # the synced state and update count, kept for the followers: compute() unsyncs the metric itself
        self._reduced: tuple[dict[str, Any], int] | None = None
        self._description: str | None = None

    def describe(self) -> str:
        """The metric's class, its settings and a digest of what determines its update (:func:`update_signature`).

        Computed once: the settings of a metric do not change, and the digest keeps the string short
        however large the metric's default states are.
        """
        if self._description is None:
            cls = type(self.metric)
            signature = update_signature(self.metric)
            settings = "" if signature is None else _without_addresses(repr(signature[3]))
            digest = hashlib.sha1(_without_addresses(repr(signature)).encode()).hexdigest()[:12]
            self._description = f"torchmetric {cls.__module__}.{cls.__qualname__} {settings[:200]} (update {digest})"
        return self._description

    def step(self, args: list[Any], kwargs: dict[str, Any], n: int, *, log_step: bool, accumulate: bool) -> Any:
        """Update the state: ``forward`` on a logged step (its batch value), else ``update`` (leaders only).

        A coalesced leader buffers the step instead (logged or not, when the epoch accumulates), and a
        coalesced metric's logged value is its value on the batch alone, as ``forward`` returns it.
        """
        if self._coalescer is None:
            if log_step:
                return self.metric(*args, **kwargs)
            if self.leader is None:
                self.metric.update(*args, **kwargs)
            return None
        if self.leader is None and accumulate and self._buffers_steps:
            self._coalescer.update(args, kwargs)
        return self._batch_value(args, kwargs) if log_step else None

    def _batch_value(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """The metric's value on this batch alone, computed on a scratch clone.

        A follower takes the batch state that its leader computed on this same step (the same
        argument objects) instead of updating again.
        """
        if self._batch is None:
            self._batch = self.metric.clone()
            _tm.detach_auto_sync(self._batch, _never_distributed)
        inputs = (*args, *kwargs.values())
        leader = self.leader
        if (
            leader is not None
            and leader._batch is not None
            and len(leader._batch_inputs) == len(inputs)
            and all(a is b for a, b in zip(leader._batch_inputs, inputs, strict=True))
        ):
            _tm.set_state(self._batch, _tm.state(leader._batch), 1)
        else:
            self._batch.reset()
            self._batch.update(*args, **kwargs)
            self._batch_inputs = inputs  # kept until the next logged step: no other tensor can take their ids
        return self._batch.compute()

    def flush(self) -> None:
        """Run the buffered updates, so that the state holds every step (see :mod:`fabricmetrics._coalesce`)."""
        if self._coalescer is not None:
            self._coalescer.flush()

    @property
    def coalesced(self) -> bool:
        """Whether this metric's updates are coalesced (see :mod:`fabricmetrics._coalesce`)."""
        return self._coalescer is not None

    def share_buffer(self, owner: TorchmetricBound) -> None:
        """Let ``owner``, a leader fed the same arguments, buffer this leader's steps: one copy for both."""
        if owner is self or self._coalescer is None or owner._coalescer is None or not owner._buffers_steps:
            return
        if self._coalescer is not owner._coalescer:
            owner._coalescer.join(self.metric, self.name)
            self._coalescer = owner._coalescer
            owner._sharers.append(self)
        self._buffers_steps = False

    def summary(self) -> Any:
        """The name of the leader whose update serves this metric, or ``None`` (buffered updates run first)."""
        try:
            self.flush()
        except Exception as err:  # raised by value() on every rank, after the same collectives as the others'
            for bound in (self, *self._sharers):
                bound._flush_error = err
        return None if self.leader is None else self.leader.name

    def reduce(self, reduction: Reduction, summaries: list[Any]) -> None:
        """Replace the local state by every rank's (one gather per state); a leader's follower waits."""
        if self.leader is not None or reduction.collectives.world_size == 1:
            return
        try:
            self.metric.sync(
                dist_sync_fn=reduction.collectives.torchmetrics_sync_fn, should_sync=True, distributed_available=_always
            )
            self._reduced = (_tm.state(self.metric), _tm.update_count(self.metric))
        except Exception as err:
            self._sync_error = err

    def value(self, reduction: Reduction) -> list[tuple[str, Any]]:
        """``compute()`` on the synced state (a follower first adopts its leader's)."""
        source = self.leader or self
        if source._flush_error is not None:
            raise source._flush_error
        if source._sync_error is not None:
            raise MetricError(f"synchronising `{source.name}` failed") from source._sync_error
        if self.leader is not None:  # (the leader's buffered steps ran in summary(), before any sync)
            reduced = self.leader._reduced or (_tm.state(self.leader.metric), _tm.update_count(self.leader.metric))
            _tm.set_state(self.metric, *reduced)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*was called before the ``update``")
            return flatten_value(self.name, self.metric.compute())

    def release(self) -> None:
        """Restore the local state after a sync."""
        self._sync_error = self._flush_error = None
        self._reduced = None
        if _tm.is_synced(self.metric):
            self.metric.unsync()

    def reset(self) -> None:
        """Reset the torchmetrics state (and forget the buffered steps)."""
        if self._coalescer is not None:
            self._coalescer.discard()
        self._batch_inputs = ()
        self._flush_error = None
        self.metric.reset()

    def state_dict(self) -> dict[str, Any]:
        """Every state of the metric (also the non-persistent ones) and its update count (buffered steps included)."""
        self.flush()
        states = {key: _detach(value) for key, value in _tm.state(self.metric).items()}
        return {"states": states, "update_count": _tm.update_count(self.metric), "describe": self.describe()}

    def check_state(self, state: Any) -> None:
        """The state must hold exactly this metric's states."""
        if not isinstance(state, Mapping) or not isinstance(state.get("states"), Mapping):
            raise ConfigurationError(f"The checkpoint's state of metric `{self.name}` is not a torchmetrics state.")
        unknown = sorted(set(state["states"]) - set(_tm.defaults(self.metric)))
        if unknown:
            raise ConfigurationError(
                f"Metric `{self.name}` has no state {unknown}; the checkpoint is of another metric. HINT: resume with "
                "the metrics of the run that saved the checkpoint, or checkpoint between epochs."
            )
        saved = state.get("describe")  # absent in older checkpoints
        if saved is not None and saved != self.describe():
            raise ConfigurationError(
                f"The checkpoint's state of metric `{self.name}` is of {saved}, and this metric is {self.describe()}. "
                "HINT: resume with the metrics of the run that saved the checkpoint, or checkpoint between epochs."
            )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` onto the metric's device."""
        device = self.metric.device
        states = {key: _to_device(value, device) for key, value in state["states"].items()}
        if self._coalescer is not None:
            self._coalescer.discard()
        _tm.set_state(self.metric, states, int(state["update_count"]))


class _CallableBound(Bound):
    """A plain callable (scikit-learn function or any other); scikit-learn ones receive NumPy arrays."""

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        """Bind ``fn``.

        Args:
            name: the metric's name.
            fn: the metric callable.
        """
        super().__init__(name)
        self.fn = fn
        self.numpy_args = wants_numpy(fn)

    def describe(self) -> str:
        """The kind and the callable's qualified name (and a partial's bound arguments)."""
        return f"{self.kind} {_without_addresses(_describe_callable(self.fn))}"

    def apply(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Apply the callable (without autograd)."""
        if self.numpy_args:
            args = [to_numpy(a) for a in args]
            kwargs = {k: to_numpy(v) for k, v in kwargs.items()}
        with torch.no_grad():
            return self.fn(*args, **kwargs)


class PerStepBound(_CallableBound):
    """A callable computed on every batch; the epoch value is the batch-size-weighted mean."""

    kind = "per_step"

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        """Bind ``fn`` with an empty weighted sum."""
        super().__init__(name, fn)
        self.keys: list[str] | None = None
        self.total: Any = None
        self.count = 0
        self._handle: tuple[int, list[str]] | None = None

    def step(self, args: list[Any], kwargs: dict[str, Any], n: int, *, log_step: bool, accumulate: bool) -> Any:
        """Apply the callable to the batch; add ``n × value`` to the weighted sum when accumulating."""
        value = self.apply(args, kwargs)
        if accumulate:
            self.accumulate(value, n)
        return value if log_step else None

    def accumulate(self, value: Any, batch_size: int) -> None:
        """Add ``batch_size * value`` to the weighted sum (on the value's device, no sync)."""
        vector, keys = _as_vector(self.name, value, self.keys)
        self.keys = keys
        weighted = vector * batch_size
        self.total = weighted if self.total is None else self.total + weighted
        self.count += batch_size

    def summary(self) -> Any:
        """The names of the values (``None`` before the first accumulated batch)."""
        return self.keys

    def reduce(self, reduction: Reduction, summaries: list[Any]) -> None:
        """Register ``(weighted sums, count)`` for the stage's one all-reduce.

        Raises:
            MetricError: the ranks' values are named differently (every rank raises alike).
        """
        seen = [(rank, keys) for rank, keys in enumerate(summaries) if keys is not None]
        if len({tuple(keys) for _, keys in seen}) > 1:
            raise MetricError(
                f"Metric `{self.name}` of stage `{reduction.stage}` returned values named differently on different "
                f"ranks (rank, names: {seen}); "
                "their means over ranks cannot be taken. HINT: return the same keys on every rank, e.g. one value "
                "per class of a fixed list of classes, not of the classes present."
            )
        if not seen:
            self._handle = None
            return
        keys = seen[0][1]
        total = torch.zeros(len(keys), dtype=torch.float64) if self.total is None else torch.as_tensor(self.total)
        vector = torch.cat(
            [total.reshape(-1).to(torch.float64), torch.tensor([float(self.count)], dtype=torch.float64)]
        )
        self._handle = (reduction.add_sum(vector), keys)

    def value(self, reduction: Reduction) -> list[tuple[str, Any]]:
        """The weighted means over every rank's batches (NaN without samples)."""
        if self._handle is None:
            return []
        handle, keys = self._handle
        *totals, count = reduction.sums(handle)
        return [(key, total / count if count > 0 else math.nan) for key, total in zip(keys, totals, strict=True)]

    def release(self) -> None:
        """Forget the registration."""
        self._handle = None

    def reset(self) -> None:
        """Forget the weighted sum and the value names (each epoch starts afresh)."""
        self.total, self.count, self.keys = None, 0, None

    def state_dict(self) -> dict[str, Any]:
        """Weighted sum (as a float64 tensor), count and value keys."""
        total = None if self.total is None else torch.as_tensor(self.total).detach()
        return {
            "total": total,
            "count": self.count,
            "keys": self.keys,
            "numpy": isinstance(self.total, np.ndarray),
        }

    def check_state(self, state: Any) -> None:
        """The state must hold a weighted sum, a count and the value names."""
        if not isinstance(state, Mapping) or not {"total", "count", "keys", "numpy"} <= set(state):
            raise ConfigurationError(f"The checkpoint's state of metric `{self.name}` is not a per-step mean's state.")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        total = state["total"]
        self.total = total.numpy() if total is not None and state["numpy"] else total
        self.count, self.keys = int(state["count"]), state["keys"]


class ExactBound(_CallableBound):
    """A callable computed once on the arguments collected over the whole epoch.

    The stage collects the arguments (sources shared by several exact metrics are kept once);
    :attr:`call` says where this metric's arguments sit among them.

    Attributes:
        call: positions of the positional and keyword arguments among the stage's collected
            sources, ``None`` until the stage has planned its arguments.
        labels: a description of each argument, for messages.
    """

    kind = "exact"

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        """Bind ``fn``; the stage sets :attr:`call` on its first step."""
        super().__init__(name, fn)
        self.call: tuple[tuple[int, ...], tuple[tuple[str, int], ...]] | None = None
        self.labels: list[str] = []
        self._agreed: tuple[tuple[int, ...], tuple[tuple[str, int], ...]] | None = None

    def step(self, args: list[Any], kwargs: dict[str, Any], n: int, *, log_step: bool, accumulate: bool) -> Any:
        """Check that the arguments share the sample dimension; return the batch value when ``log_step``.

        Raises:
            OutputsError: the arguments have different numbers of rows.
        """
        if accumulate:
            sizes = [first_dim(v) for v in (*args, *kwargs.values())]
            known = {(label, size) for label, size in zip(self.labels, sizes, strict=False) if size is not None}
            if len({size for _, size in known}) > 1:
                raise OutputsError(
                    f"Metric `{self.name}` received arguments with different numbers of rows {dict(sorted(known))}; in "
                    "exact mode they are collected per sample. HINT: return per-sample values of the same length."
                )
        return self.apply(args, kwargs) if log_step else None

    def summary(self) -> Any:
        """Where the arguments sit among the collected sources (``None`` on a rank that never stepped)."""
        return self.call

    def reduce(self, reduction: Reduction, summaries: list[Any]) -> None:
        """Ask for the gather of the sources this metric needs."""
        plans = [(rank, plan) for rank, plan in enumerate(summaries) if plan is not None]
        if len({plan for _, plan in plans}) > 1:  # every rank sees the same summaries: all raise alike
            raise OutputsError(
                f"Metric `{self.name}` of stage `{reduction.stage}` takes its arguments from other outputs on "
                f"different ranks (positions among the collected arguments per rank: {plans}), so its samples "
                "cannot be gathered. HINT: give every rank the same needs= and return the same output keys."
            )
        self._agreed = plans[0][1] if plans else None
        if self._agreed is not None:
            positional, keywords = self._agreed
            reduction.want_sources([*positional, *(j for _, j in keywords)])

    def value(self, reduction: Reduction) -> list[tuple[str, Any]]:
        """The callable applied once to every rank's samples."""
        if self._agreed is None:
            return []
        positional, keywords = self._agreed
        args = [reduction.source(j) for j in positional]
        kwargs = {k: reduction.source(j) for k, j in keywords}
        return flatten_value(self.name, self.apply(args, kwargs))

    def release(self) -> None:
        """Forget the agreed plan."""
        self._agreed = None


def _always() -> bool:
    return True


def first_dim(value: Any) -> int | None:
    """The sample dimension of a tensor, array, list or tuple; ``None`` for scalars and other values.

    Example:
        >>> first_dim(torch.zeros(4, 2)), first_dim([1, 2, 3]), first_dim(torch.tensor(1.0))
        (4, 3, None)
    """
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return int(value.shape[0]) if value.ndim > 0 else None
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def _without_addresses(text: str) -> str:
    """A repr without the memory addresses of default object reprs (they differ between processes)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def _describe_callable(fn: Any) -> str:
    """A process-independent description of a callable (a partial's arguments included)."""
    if isinstance(fn, functools.partial):
        bound = [repr(a) for a in fn.args] + [f"{k}={v!r}" for k, v in sorted(fn.keywords.items())]
        return f"partial({_describe_callable(fn.func)}, {', '.join(bound)})"
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(fn).__name__)}"


def _as_vector(name: str, value: Any, keys: list[str] | None) -> tuple[Any, list[str]]:
    """A flat float64 vector of a per-step value, and its keys (checked against earlier steps)."""
    vector: Any
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        vector, new_keys = value.detach().reshape(1), [name]
    else:
        items = flatten_value(name, value)
        new_keys = [k for k, _ in items]
        scalars = [v for _, v in items]
        tensors = [v for v in scalars if isinstance(v, torch.Tensor)]
        if tensors and len({t.device for t in tensors}) == 1:  # numbers join the tensors on their device
            # (a fill, not a copy): no host sync
            device = tensors[0].device
            dtype = _float_dtype(device)
            vector = torch.stack(
                [
                    v.detach().reshape(()).to(dtype)
                    if isinstance(v, torch.Tensor)
                    else torch.full((), float(np.asarray(v)), dtype=dtype, device=device)
                    for v in scalars
                ]
            )
        else:
            vector = np.asarray([float(np.asarray(to_numpy(v))) for v in scalars], dtype=np.float64)
    if isinstance(vector, torch.Tensor):
        vector = vector.to(_float_dtype(vector.device))
    if keys is not None and keys != new_keys:
        raise MetricError(
            f"Metric `{name}` returned values named {new_keys} on this batch but {keys} on earlier batches; a "
            "per-step metric must return the same kind of value on every batch."
        )
    return vector, new_keys


def _float_dtype(device: torch.device) -> torch.dtype:
    """The dtype of per-step sums: float64, or float32 where the device has no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, list):
        return [_detach(v) for v in value]
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value
