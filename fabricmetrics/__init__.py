"""fabricmetrics: metrics, probing and logging for custom PyTorch and Lightning Fabric loops.

The public names are re-exported here; the ones that need torch are imported on first use, so that
``fabricmetrics plot`` starts without loading torch.

>>> from fabricmetrics import MetricsTracker, ProbingScheduler, Schedule
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fabricmetrics.exceptions import FabricMetricsError
from fabricmetrics.history import History
from fabricmetrics.schedule import Schedule

if TYPE_CHECKING:
    from fabricmetrics.distributed import num_samples_of
    from fabricmetrics.probing import ProbingScheduler
    from fabricmetrics.tracker import EpochRecord, MetricsTracker

__all__ = [
    "EpochRecord",
    "FabricMetricsError",
    "History",
    "MetricsTracker",
    "ProbingScheduler",
    "Schedule",
    "num_samples_of",
]
__version__ = "0.1.0.dev0"

_LAZY = {
    "EpochRecord": "fabricmetrics.tracker",
    "MetricsTracker": "fabricmetrics.tracker",
    "ProbingScheduler": "fabricmetrics.probing",
    "num_samples_of": "fabricmetrics.distributed",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fabricmetrics' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
