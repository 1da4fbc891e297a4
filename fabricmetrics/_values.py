"""Turning metric values into named Python floats, with as few host-device syncs as possible."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fabricmetrics.exceptions import ConfigurationError, MetricError

__all__ = ["check_unique", "flatten_value", "to_floats", "to_numpy"]


def flatten_value(name: str, value: Any) -> list[tuple[str, Any]]:
    """Split a metric's value into named scalars (not yet converted to ``float``).

    A single number stays ``name``; a 1-D tensor/array of k values becomes ``name_0 … name_{k-1}``;
    a mapping becomes ``name_{key}`` per entry. Nothing here reads a device tensor's data.

    Args:
        name: the metric's name.
        value: what the metric returned.

    Returns:
        ``(key, scalar)`` pairs, where a scalar is a number or a one-element tensor/array.

    Raises:
        MetricError: the value is not a number, a 1-D tensor/array, or a mapping of those.

    Example:
        >>> [k for k, _ in flatten_value("f1", torch.tensor([0.5, 0.7]))]
        ['f1_0', 'f1_1']
    """
    if isinstance(value, (torch.Tensor, np.ndarray)):
        numeric = value.dtype.kind in "biuf" if isinstance(value, np.ndarray) else not value.dtype.is_complex
        if not numeric:
            raise MetricError(
                f"Metric `{name}` returned an array of dtype {value.dtype}; only real numbers can be logged."
            )
        if value.size == 1 if isinstance(value, np.ndarray) else value.numel() == 1:
            return [(name, value)]
        if value.ndim == 1:
            return [(f"{name}_{i}", value[i]) for i in range(value.shape[0])]
        raise MetricError(
            f"Metric `{name}` returned an array of shape {tuple(value.shape)}; only numbers, 1-D arrays (logged as "
            f"`{name}_0`, `{name}_1`, …) and dicts of numbers can be logged. HINT: reduce it inside the metric."
        )
    if isinstance(value, numbers.Number) and not isinstance(value, complex):
        return [(name, value)]
    if isinstance(value, Mapping):
        return [item for key, sub in value.items() for item in flatten_value(f"{name}_{key}", sub)]
    raise MetricError(
        f"Metric `{name}` returned {type(value).__name__} ({value!r:.80}); expected a number, a 0-d or 1-D "
        "tensor/array, or a dict of numbers."
    )


def to_floats(values: list[Any]) -> list[float]:
    """Convert scalars to Python floats with one host-device transfer per device.

    Args:
        values: numbers and one-element tensors/arrays, possibly on several devices.

    Returns:
        The values as ``float``, in order.

    Example:
        >>> to_floats([torch.tensor(0.5), np.float32(2.0), 3])
        [0.5, 2.0, 3.0]
    """
    out: list[float] = [0.0] * len(values)
    by_device: dict[torch.device, list[int]] = {}
    for i, value in enumerate(values):
        if isinstance(value, torch.Tensor):
            by_device.setdefault(value.device, []).append(i)
        else:
            out[i] = float(np.asarray(value).reshape(()))
    for device, indices in by_device.items():
        dtype = torch.float32 if device.type == "mps" else torch.float64
        stacked = torch.stack([values[i].detach().reshape(()).to(dtype) for i in indices])
        for i, f in zip(indices, stacked.tolist(), strict=True):
            out[i] = float(f)
    return out


def to_numpy(value: Any) -> Any:
    """NumPy view of a tensor (copied to the host; bfloat16/half become float32); other values unchanged.

    Args:
        value: a tensor, or anything else.

    Returns:
        A NumPy array for tensors, ``value`` itself otherwise.

    Example:
        >>> to_numpy(torch.tensor([1, 2]))
        array([1, 2])
    """
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.cpu().numpy()
    return value


def check_unique(keys: list[str], where: str) -> None:
    """Flattened value names must be distinct (a vector `f1` gives `f1_0`, which a metric `f1_0` would overwrite).

    Raises:
        ConfigurationError: a key appears twice.
    """
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ConfigurationError(
            f"{where} produce the key(s) {twice} twice: a metric returning several values is logged per element "
            "(`f1` → `f1_0`, `f1_1`; a dict `m` → `m_{key}`), which another metric's name repeats. HINT: rename one "
            "of the metrics."
        )
