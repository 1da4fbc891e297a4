"""One metric bound to one stage: torchmetrics state, per-step mean, or exact collection.

A bound metric owns the stage-local state of one metric. The stage (``fabricmetrics._stage``)
feeds it the arguments of each step and, at the end of an epoch, does the cross-rank work in a fixed
order and asks each bound metric for its value.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from fabricmetrics._values import flatten_value, to_numpy
from fabricmetrics.exceptions import MetricError

__all__ = ["Bound", "ExactBound", "PerStepBound", "TorchmetricBound", "update_signature", "wants_numpy"]


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
    methods = tuple((n, getattr(cls, n)) for n in sorted(dir(cls)) if n == "update" or n.startswith("_update"))
    states = tuple((k, _hashable(d), metric._reductions[k]) for k, d in metric._defaults.items())
    flags = (metric.full_state_update, metric.dist_sync_on_step, metric.compute_on_cpu)
    return (owner, methods, states, tuple(hyper), flags)


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


class Bound:
    """Base of the three kinds of bound metric.

    Attributes:
        name: the metric's name.
        kind: ``"torchmetric"``, ``"per_step"`` or ``"exact"`` (recorded in checkpoints).
    """

    name: str
    kind: str

    def step_value(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """The metric's value on one batch (rank-local), for step-level logging."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the epoch's state."""

    def state_dict(self) -> dict[str, Any]:
        """The epoch's state as tensors and plain containers."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class TorchmetricBound(Bound):
    """A per-stage clone of a ``torchmetrics.Metric`` that accumulates its own state.

    The clone never synchronises by itself (its ``distributed_available_fn`` says no); the stage
    syncs it once per compute through the tracker's collectives. When another metric of the stage
    has the same arguments and an update that provably produces the same state (see
    :func:`update_signature`), that metric is this one's ``leader``: only the leader is updated
    on silent steps, and this one adopts the leader's state before computing.

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
        self.name = name
        self.metric = metric.clone()
        self.metric.reset()
        # The stage syncs the clone explicitly, once, before computing; it must never sync by itself
        # (an implicit sync inside compute or forward would be a second, unordered collective).
        self.metric.distributed_available_fn = _never_distributed
        self.metric.sync_on_compute = False
        self.metric._to_sync = False
        self.leader: TorchmetricBound | None = None

    def update(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Add one batch to the state."""
        self.metric.update(*args, **kwargs)

    def step_value(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Add one batch to the state and return its value on that batch (``forward``)."""
        return self.metric(*args, **kwargs)

    def sync(self, collectives: Any) -> None:
        """Replace the local state by the state of all ranks (one gather per state tensor).

        Args:
            collectives: the :class:`~fabricmetrics.distributed.Collectives` of this epoch end.
        """
        if collectives.world_size > 1:
            self.metric.sync(
                dist_sync_fn=collectives.torchmetrics_sync_fn, should_sync=True, distributed_available=_always
            )

    def unsync(self) -> None:
        """Restore the local state after :meth:`sync`."""
        if self.metric._is_synced:
            self.metric.unsync()

    def adopt_leader_state(self) -> None:
        """Take the (synced) state of :attr:`leader`, whose update served this metric."""
        assert self.leader is not None
        source = self.leader.metric
        for key in self.metric._defaults:
            setattr(self.metric, key, getattr(source, key))
        self.metric._update_count = source._update_count
        self.metric._computed = None

    def compute(self) -> Any:
        """The metric's value on its current state (restores the local state if it was synced)."""
        return self.metric.compute()

    def reset(self) -> None:
        """Reset the torchmetrics state."""
        self.metric.reset()

    def state_dict(self) -> dict[str, Any]:
        """Every state of the metric (also the non-persistent ones) and its update count."""
        states = {key: _detach(getattr(self.metric, key)) for key in self.metric._defaults}
        return {"states": states, "update_count": int(self.metric._update_count)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` onto the metric's device."""
        device = self.metric.device
        for key, value in state["states"].items():
            if key not in self.metric._defaults:
                raise MetricError(f"Metric `{self.name}` has no state `{key}`; the checkpoint is of another metric.")
            setattr(self.metric, key, _to_device(value, device))
        self.metric._update_count = int(state["update_count"])
        self.metric._computed = None


class _CallableBound(Bound):
    """A plain callable (scikit-learn function or any other); scikit-learn ones receive NumPy arrays."""

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        """Bind ``fn``.

        Args:
            name: the metric's name.
            fn: the metric callable.
        """
        self.name = name
        self.fn = fn
        self.numpy_args = wants_numpy(fn)

    def step_value(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Apply the callable to one batch (without autograd)."""
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

    def accumulate(self, value: Any, batch_size: int) -> None:
        """Add ``batch_size * value`` to the weighted sum (on the value's device, no sync)."""
        vector, keys = _as_vector(self.name, value, self.keys)
        self.keys = keys
        weighted = vector * batch_size
        self.total = weighted if self.total is None else self.total + weighted
        self.count += batch_size

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

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        total = state["total"]
        self.total = total.numpy() if total is not None and state["numpy"] else total
        self.count, self.keys = int(state["count"]), state["keys"]


class ExactBound(_CallableBound):
    """A callable computed once on the arguments collected over the whole epoch."""

    kind = "exact"

    def compute(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Apply the callable to the epoch's arguments (gathered over ranks)."""
        return self.step_value(args, kwargs)


def _always() -> bool:
    return True


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
