"""fabricmetrics: metrics, probing and logging for custom PyTorch and Lightning Fabric loops."""

from fabricmetrics.exceptions import FabricMetricsError

__all__ = ["FabricMetricsError"]
__version__ = "0.1.0.dev0"
