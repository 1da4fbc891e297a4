"""Exceptions raised by fabricmetrics.

Every error the library raises on purpose derives from :class:`FabricMetricsError` and from the
builtin exception that fits the mistake, so ``except ValueError`` keeps working in user code while
``except FabricMetricsError`` catches everything that comes from here. Messages say what was
expected, what was received and, where there is one, the fix after ``HINT:``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

__all__ = [
    "ConfigurationError",
    "DistributedError",
    "FabricMetricsError",
    "HistoryKeyError",
    "InputError",
    "InputTypeError",
    "LogDirectoryError",
    "MetricError",
    "NeedsError",
    "OutputsError",
    "OutputsTypeError",
    "StageError",
    "warn",
]


class FabricMetricsError(Exception):
    """Base class of every error raised by fabricmetrics."""


class ConfigurationError(FabricMetricsError, ValueError):
    """A constructor argument is invalid (metrics, ``needs``, schedules, probes)."""


class NeedsError(FabricMetricsError, KeyError):
    """A metric argument cannot be found in a step's outputs (missing or ambiguous key)."""

    def __str__(self) -> str:
        # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class HistoryKeyError(FabricMetricsError, KeyError):
    """A key (or glob pattern) names nothing that was logged."""

    def __str__(self) -> str:
        # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class OutputsError(FabricMetricsError, ValueError):
    """The values passed to ``step()`` cannot be used (sizes, devices, scalars in exact mode)."""


class OutputsTypeError(OutputsError, TypeError):
    """The outputs passed to ``step()`` are not of a supported type (e.g. not a mapping)."""


class MetricError(FabricMetricsError, RuntimeError):
    """A metric raised while updating or computing, or returned a value that cannot be logged."""


class StageError(FabricMetricsError, RuntimeError):
    """An epoch or step was used out of order (e.g. an epoch of a stage opened twice)."""


class DistributedError(FabricMetricsError, RuntimeError):
    """Another rank failed; raised on every rank instead of waiting forever."""


class LogDirectoryError(FabricMetricsError, OSError):
    """A log directory cannot be created, written or read (or holds no logs to read)."""


class InputError(FabricMetricsError, ValueError):
    """A metric function received values of the wrong shape or an invalid option."""


class InputTypeError(FabricMetricsError, TypeError):
    """A metric function received values of an unsupported type (e.g. torch mixed with NumPy)."""


def warn(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """Warn, pointing at the first frame outside fabricmetrics (and ``contextlib``): the user's line.

    Args:
        message: the warning's text.
        category: the warning class.
    """
    warnings.warn(message, category, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside this package and contextlib."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(2), 2
    while frame is not None and (
        frame.f_code.co_filename.startswith(package) or frame.f_code.co_filename == contextlib.__file__
    ):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level
