"""The checks of integer options that every part of the library shares (``True`` is not a count)."""

from __future__ import annotations

from numbers import Integral
from typing import Any

from fabricmetrics.exceptions import ConfigurationError

__all__ = ["check_int"]


def check_int(
    value: Any,
    what: str,
    *,
    minimum: int = 0,
    error: type[Exception] = ConfigurationError,
    hint: str = "",
) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) of at least ``minimum``, else raise ``error``.

    Args:
        value: the value to check.
        what: how the message names it (``"batch_size"``, ``"Schedule(every_n_steps=...)"``).
        minimum: the smallest value allowed.
        error: the exception class to raise (a :mod:`fabricmetrics.exceptions` class).
        hint: the fix, appended after ``HINT:``.

    Returns:
        ``value`` as an ``int`` (NumPy integers included).

    Example:
        >>> check_int(3, "k", minimum=1)
        3
        >>> check_int(True, "k")
        Traceback (most recent call last):
        ...
        fabricmetrics.exceptions.ConfigurationError: k must be an int of at least 0, got True.
    """
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int of at least {minimum}"
        raise error(f"{what} must be {expected}, got {value!r}." + (f" HINT: {hint}" if hint else ""))
    return int(value)
