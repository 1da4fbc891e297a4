"""fabricmetrics: metrics, probing and logging for custom PyTorch and Lightning Fabric loops.

>>> from fabricmetrics import MetricsTracker, Schedule
"""

from fabricmetrics.exceptions import FabricMetricsError
from fabricmetrics.history import History
from fabricmetrics.schedule import Schedule
from fabricmetrics.tracker import EpochRecord, MetricsTracker

__all__ = ["EpochRecord", "FabricMetricsError", "History", "MetricsTracker", "Schedule"]
__version__ = "0.1.0.dev0"
