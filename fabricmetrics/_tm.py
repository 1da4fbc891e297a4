"""The one place that reads or writes torchmetrics' private state.

torchmetrics' public API covers what a user of a metric needs (``update``, ``compute``, ``reset``,
``metric_state``, ``update_count``, ``sync``/``unsync``); the tracker also needs what a metric
declares about its states (their defaults and reductions, to share and coalesce updates) and to
move a state from one clone to another. Those are private attributes: every access to them goes
through this module, and ``tests/test_tm_adapter.py`` fails loudly when a torchmetrics release
renames or reshapes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torchmetrics import Metric

__all__ = [
    "defaults",
    "detach_auto_sync",
    "is_synced",
    "reductions",
    "set_state",
    "state",
    "update_count",
]


def defaults(metric: Metric) -> Mapping[str, Any]:
    """Each state's default value (what ``reset`` restores), by state name, in declaration order."""
    return metric._defaults


def reductions(metric: Metric) -> Mapping[str, Callable[..., Any] | str | None]:
    """Each state's declared reduction across processes (``dim_zero_sum``, ``dim_zero_cat``, … or ``None``)."""
    return metric._reductions


def state(metric: Metric) -> dict[str, Any]:
    """The current value of every state, also the non-persistent ones (public ``metric_state``)."""
    return dict(metric.metric_state)


def update_count(metric: Metric) -> int:
    """How many times ``update`` (or ``forward``) ran since the last reset (public ``update_count``)."""
    return int(metric.update_count)


def is_synced(metric: Metric) -> bool:
    """Whether the metric holds the synced state of every rank (``unsync`` restores the local one)."""
    return bool(metric._is_synced)


def set_state(metric: Metric, states: Mapping[str, Any], count: int) -> None:
    """Replace the states and the update count, and drop the cached value of ``compute``.

    Args:
        metric: the metric to change.
        states: a value for every state (unknown names are the caller's to reject first).
        count: the update count to set.
    """
    for key, value in states.items():
        setattr(metric, key, value)
    metric._update_count = int(count)
    metric._computed = None


def detach_auto_sync(metric: Metric, never: Callable[[], bool]) -> None:
    """Make ``metric`` never synchronise by itself (in ``compute`` or ``forward``).

    The tracker syncs its clones once per compute, explicitly, through its own collectives; an
    implicit sync inside ``compute`` would be a second, unordered collective.

    Args:
        metric: the tracker's clone.
        never: a function returning ``False``, used as ``distributed_available_fn``.
    """
    metric.distributed_available_fn = never
    metric.sync_on_compute = False
    metric._to_sync = False
