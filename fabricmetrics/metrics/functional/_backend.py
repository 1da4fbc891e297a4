"""Torch/NumPy dispatch and input validation shared by the functional metrics.

Every metric has **one** implementation, written in torch. NumPy inputs are viewed as CPU tensors
(no copy) and the result is handed back as a NumPy scalar or array, so the two backends compute the
same formula by construction (the seeds kept two code paths, and they drifted apart).

Dtypes: floating inputs keep their precision (float32 stays float32, float64 stays float64);
float16/bfloat16 are promoted to float32 (their accumulations are too coarse); integer and boolean
inputs become float64 for NumPy and the default torch dtype for tensors. Several inputs are promoted
to one common dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import TypeAlias, cast

import numpy as np
import torch

from fabricmetrics._validate import check_int
from fabricmetrics.exceptions import InputError, InputTypeError

__all__ = [
    "ArrayLike",
    "Result",
    "check_embeddings",
    "check_paired",
    "check_positive",
    "check_positive_int",
    "check_rows_per_block",
    "from_torch",
    "normalize_rows",
    "to_torch",
]

ArrayLike: TypeAlias = torch.Tensor | np.ndarray
"""An input of a functional metric: a torch tensor (any device) or a NumPy array."""

Result: TypeAlias = torch.Tensor | np.generic | np.ndarray
"""What a functional metric returns: a tensor for tensor inputs, NumPy scalar/array for NumPy inputs."""

_NORM_EPS = 1e-12
_NUMPY_KINDS = "biuf"  # bool, signed and unsigned integers, floating point


def _dtype_name(value: object) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _numpy_to_tensor(name: str, value: np.ndarray) -> torch.Tensor:
    if value.dtype.kind not in _NUMPY_KINDS:
        raise InputTypeError(
            f"`{name}` must hold real numbers, got a NumPy array of dtype {value.dtype}. "
            f"HINT: convert it with {name}.astype(numpy.float64)."
        )
    if not value.dtype.isnative or not value.flags.writeable:
        value = value.astype(value.dtype.newbyteorder("="), copy=True)
    return torch.from_numpy(value)


def _compute_dtype(dtypes: Sequence[torch.dtype], from_numpy: bool) -> torch.dtype:
    common = dtypes[0]
    for dtype in dtypes[1:]:
        common = torch.promote_types(common, dtype)
    if common in (torch.float16, torch.bfloat16):
        return torch.float32
    if not common.is_floating_point:
        return torch.float64 if from_numpy else torch.get_default_dtype()
    return common


def to_torch(names: Sequence[str], values: Sequence[object]) -> tuple[list[torch.Tensor], bool]:
    """Check that the inputs share one backend and convert them to floating tensors of one dtype.

    Args:
        names: argument names, for error messages.
        values: the arguments (tensors or NumPy arrays; ``None`` entries are not allowed here).

    Returns:
        The tensors (NumPy arrays are viewed, not copied) and whether the inputs were NumPy arrays.

    Raises:
        InputTypeError: an input is neither a tensor nor an array, holds non-real numbers, or torch
            and NumPy inputs are mixed.
        InputError: tensors live on different devices.
    """
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, torch.Tensor | np.ndarray):
            raise InputTypeError(
                f"`{name}` must be a torch.Tensor or a numpy.ndarray, got {_dtype_name(value)}. "
                f"HINT: convert it with numpy.asarray({name}) or torch.as_tensor({name})."
            )
    from_numpy = isinstance(values[0], np.ndarray)
    if any(isinstance(value, np.ndarray) != from_numpy for value in values):
        kinds = ", ".join(f"`{name}`: {_dtype_name(value)}" for name, value in zip(names, values, strict=True))
        raise InputTypeError(
            f"Inputs must be all torch tensors or all NumPy arrays, got {kinds}. "
            "HINT: convert the arrays with torch.from_numpy(...) or the tensors with .cpu().numpy()."
        )
    tensors: list[torch.Tensor] = [
        _numpy_to_tensor(name, value) if isinstance(value, np.ndarray) else cast(torch.Tensor, value)
        for name, value in zip(names, values, strict=True)
    ]
    for name, tensor in zip(names, tensors, strict=True):
        if tensor.is_complex():
            raise InputTypeError(f"`{name}` must hold real numbers, got a tensor of dtype {tensor.dtype}.")
    devices = {tensor.device for tensor in tensors}
    if len(devices) > 1:
        where = ", ".join(f"`{name}` on {t.device}" for name, t in zip(names, tensors, strict=True))
        raise InputError(f"Inputs must be on one device, got {where}. HINT: move them with .to(device).")
    dtype = _compute_dtype([tensor.dtype for tensor in tensors], from_numpy)
    return [tensor.to(dtype) for tensor in tensors], from_numpy


def from_torch(result: torch.Tensor, to_numpy: bool) -> Result:
    """Return ``result`` unchanged, or as a NumPy scalar (0-d) / array when the inputs were NumPy."""
    if not to_numpy:
        return result
    array: np.ndarray = result.detach().cpu().numpy()
    return array[()] if array.ndim == 0 else array


def check_embeddings(name: str, z: torch.Tensor, min_samples: int = 1) -> None:
    """Check that ``z`` is a 2-D ``(n_samples, n_features)`` matrix with enough rows.

    Raises:
        InputError: ``z`` is not 2-D or has fewer than ``min_samples`` rows.
    """
    if z.ndim != 2:
        raise InputError(
            f"`{name}` must be 2-D (n_samples, n_features), got shape {tuple(z.shape)}. "
            f"HINT: a batch of scalars is {name}.reshape(-1, 1); flatten extra dimensions with "
            f"{name}.flatten(1)."
        )
    if z.shape[0] < min_samples:
        raise InputError(f"`{name}` needs at least {min_samples} sample(s), got {z.shape[0]} (shape {tuple(z.shape)}).")


def check_paired(z1: torch.Tensor, z2: torch.Tensor) -> None:
    """Check that two views are paired row by row: same number of samples and of features.

    Raises:
        InputError: the shapes differ.
    """
    if z1.shape != z2.shape:
        raise InputError(
            f"`z1` and `z2` must have the same shape (row i of z1 pairs with row i of z2), got "
            f"{tuple(z1.shape)} and {tuple(z2.shape)}."
        )


def check_positive(name: str, value: float) -> None:
    """Check that an option is a finite real number greater than 0.

    Raises:
        InputError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < float(value) < float("inf"):
        raise InputError(f"`{name}` must be a finite number > 0, got {value!r}.")


def check_positive_int(name: str, value: int) -> None:
    """Check that an option is an integer >= 1.

    Raises:
        InputError: it is not.
    """
    check_int(value, f"`{name}`", minimum=1, error=InputError)


def check_rows_per_block(chunk_size: int | None, memory_budget_bytes: int) -> None:
    """Check the two options that bound the memory of the chunked pairwise metrics.

    Raises:
        InputError: ``chunk_size`` is neither None nor an integer >= 1, or the budget is not >= 1.
    """
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
    check_positive_int("memory_budget_bytes", memory_budget_bytes)


def normalize_rows(z: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Divide each row by its L2 norm (rows of norm 0 stay 0), or return ``z`` unchanged."""
    if not normalize:
        return z
    norms = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    return z / norms.clamp_min(_NORM_EPS)
