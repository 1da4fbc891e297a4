"""What the torch probes share: input conversion, label encoding, the sharded handshake, moments.

Rule for devices and types, the same for every probe: the computation runs on the device of the
features given to the call (NumPy, lists and pandas frames run on the CPU); results that leave a
probe — predictions, probabilities, scores, fitted ``coef_`` — are NumPy arrays or Python floats,
which is what scikit-learn's metrics take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from sklearn.utils.multiclass import type_of_target

from fabricmetrics import _values
from fabricmetrics.distributed import Collectives, LocalCollectives, resolve_collectives, share_status
from fabricmetrics.exceptions import DistributedError, InputError, InputTypeError

__all__ = [
    "DTypeName",
    "FitData",
    "accuracy",
    "as_features",
    "centered_covariance",
    "check_n_features",
    "exchange",
    "feature_scaling",
    "pick_collectives",
    "prepare_fit",
    "prepare_queries",
    "r2",
    "to_numpy",
]

DTypeName = Literal["float32", "float64"]
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
_ROWS_PER_CHUNK = 4096  # chunk of rows for passes that need a temporary copy


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy view or copy of a tensor (any device), array or sequence (see :func:`fabricmetrics._values.to_numpy`)."""
    return np.asarray(_values.to_numpy(value))


def pick_collectives(sharded: bool, collectives: Collectives | None) -> Collectives:
    """The collectives a call uses: none unless sharded; then the given ones, else the ambient ones."""
    if not sharded:
        return LocalCollectives()
    return collectives if collectives is not None else resolve_collectives()


def as_features(X: Any, dtype: DTypeName, where: str, *, allow_empty: bool = False) -> torch.Tensor:
    """Features as a 2-D floating tensor on their own device (NumPy and others on the CPU).

    Args:
        X: a tensor, array, list or frame of shape ``(n_samples, n_features)``.
        dtype: computation dtype.
        where: ``"Class.method"`` for error messages.
        allow_empty: accept zero rows (a rank's empty shard).

    Returns:
        A tensor; float32 NumPy input is shared, not copied.

    Raises:
        InputTypeError: the values are not numeric.
        InputError: not 2-D, no samples or no features.
    """
    torch_dtype = _DTYPES[dtype]
    if isinstance(X, torch.Tensor):
        if X.is_complex() or X.dtype == torch.bool:
            raise InputTypeError(f"{where} expects real features, got a tensor of dtype {X.dtype}.")
        tensor = X.detach().to(torch_dtype)
    else:
        array = np.asarray(X)
        if array.dtype.kind not in "biuf":
            raise InputTypeError(
                f"{where} expects numeric features, got an array of dtype {array.dtype}. "
                "HINT: encode categorical columns before probing."
            )
        array = np.require(array, dtype=np.dtype(dtype), requirements=["C", "A", "W"])
        tensor = torch.from_numpy(array)
    if tensor.dim() != 2:
        raise InputError(
            f"{where} expects X of shape (n_samples, n_features), got shape {tuple(tensor.shape)}. "
            "HINT: reshape a single feature with X.reshape(-1, 1) and flatten feature maps first."
        )
    if tensor.shape[1] == 0 or (tensor.shape[0] == 0 and not allow_empty):
        raise InputError(f"{where} needs at least one sample and one feature, got shape {tuple(tensor.shape)}.")
    return tensor


def check_n_features(X: torch.Tensor, n_features: int, where: str) -> None:
    """Raise when ``X`` has another number of columns than the data the probe was fitted on."""
    if X.shape[1] != n_features:
        raise InputError(f"{where}: X has {X.shape[1]} features, but the probe was fitted on {n_features} features.")


@dataclass
class FitData:
    """Validated inputs of a ``fit`` call, agreed on by every rank."""

    X: torch.Tensor
    target: torch.Tensor
    classes: np.ndarray | None
    collectives: Collectives
    shard_sizes: list[int]

    @property
    def n_total(self) -> int:
        """Number of samples over all ranks."""
        return sum(self.shard_sizes)


def prepare_fit(
    X: Any,
    y: Any,
    *,
    dtype: DTypeName,
    where: str,
    task: Literal["classification", "regression"],
    sharded: bool,
    collectives: Collectives | None,
) -> FitData:
    """Validate ``X`` and ``y`` and, when sharded, agree with the other ranks on classes and sizes.

    Every rank takes part in the same exchanges whatever its data (see :func:`exchange`).
    Classification targets become integer codes into the sorted union of labels, ``classes``;
    regression targets become a floating tensor on the device of ``X``.
    """
    coll = pick_collectives(sharded, collectives)
    error: Exception | None = None
    features, labels, summary = None, None, None
    try:
        features = as_features(X, dtype, where, allow_empty=coll.world_size > 1)
        labels = _as_targets(y, features.shape[0], where, task)
        kind = np.unique(labels) if task == "classification" else labels.shape[1:]
        summary = (features.shape[0], features.shape[1], kind)
    except (InputError, InputTypeError) as err:
        error = err
    summaries = exchange(coll, error, summary, where)
    assert features is not None and labels is not None
    sizes = [s[0] for s in summaries]
    if len({s[1] for s in summaries}) > 1 or (task == "regression" and len({s[2] for s in summaries}) > 1):
        shapes = [(s[0], s[1], *(s[2] if task == "regression" else ())) for s in summaries]
        raise DistributedError(f"{where}: the shards of the ranks differ in shape: {shapes}.")
    if sum(sizes) == 0:
        raise InputError(f"{where} needs at least one sample; every shard is empty.")
    if task == "regression":
        target = torch.from_numpy(labels.astype(np.dtype(dtype))).to(features.device)
        return FitData(features, target, None, coll, sizes)
    classes = np.unique(np.concatenate([s[2] for s in summaries]))
    codes = torch.from_numpy(np.searchsorted(classes, labels)).to(features.device)
    return FitData(features, codes, classes, coll, sizes)


def prepare_queries(X: Any, dtype: DTypeName, where: str, n_features: int, coll: Collectives) -> torch.Tensor:
    """Validate the features of a collective ``predict`` on every rank at once (see :func:`exchange`)."""
    error: Exception | None = None
    try:
        features = as_features(X, dtype, where, allow_empty=coll.world_size > 1)
        check_n_features(features, n_features, where)
    except (InputError, InputTypeError) as err:
        error = err
    exchange(coll, error, None, where)
    return features


def exchange(coll: Collectives, error: Exception | None, payload: Any, where: str) -> list[Any]:
    """Gather every rank's ``payload`` and raise on every rank if any rank had an ``error``.

    Each rank makes this one call whatever happened locally, so a bad shard raises everywhere (its
    own error on its rank, a :class:`DistributedError` naming it elsewhere) instead of hanging.
    """
    return share_status(coll, payload, error, where=f"in {where}: it could not use its shard")


def _as_targets(y: Any, n_samples: int, where: str, task: str) -> np.ndarray:
    labels = to_numpy(y)
    if labels.shape[:1] != (n_samples,):
        raise InputError(f"{where}: X has {n_samples} samples but y has shape {labels.shape}.")
    if task == "regression":
        if labels.dtype.kind not in "biuf" or labels.ndim > 2:
            raise InputError(
                f"{where} expects numeric targets of shape (n,) or (n, n_targets), got {labels.dtype} "
                f"values of shape {labels.shape}."
            )
        if not np.isfinite(labels).all():
            raise InputError(f"{where}: the targets contain NaN or infinity.")
        return labels
    if labels.ndim != 1:
        raise InputError(f"{where} expects labels of shape (n_samples,), got shape {labels.shape}. HINT: y.ravel().")
    kind = type_of_target(labels) if n_samples else "binary"
    if kind not in ("binary", "multiclass"):
        raise InputError(
            f"{where} expects class labels, got {kind!r} values. HINT: use RidgeProbe for regression targets."
        )
    return labels


def feature_scaling(
    X: torch.Tensor, n_total: int, coll: Collectives, standardize: bool, where: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of every column over all ranks (ones when not ``standardize``).

    Two passes: the second sums squared deviations from the global mean chunk by chunk, so the
    variance is exact even where the mean is large, and no copy of ``X`` is made. Constant
    columns get a scale of 1, as in ``StandardScaler``.

    Raises:
        InputError: the features hold NaN or infinity (on any rank: every rank raises).
    """
    mean = coll.all_reduce_sum(X.sum(dim=0)) / n_total
    if not bool(torch.isfinite(mean).all()):
        raise InputError(f"{where}: the features contain NaN or infinity.")
    if not standardize:
        return mean, torch.ones_like(mean)
    sq = torch.zeros_like(mean)
    for start in range(0, X.shape[0], _ROWS_PER_CHUNK):
        sq += (X[start : start + _ROWS_PER_CHUNK] - mean).square_().sum(dim=0)  # a column-wise norm is 10x slower
    std = (coll.all_reduce_sum(sq) / n_total).sqrt()
    return mean, torch.where(std < 10 * torch.finfo(std.dtype).eps, torch.ones_like(std), std)


def accuracy(y_true: Any, y_pred: np.ndarray, sample_weight: Any, coll: Collectives) -> float:
    """(Weighted) fraction of correct predictions over every rank's samples."""
    labels = to_numpy(y_true)
    if labels.shape != y_pred.shape:
        raise InputError(f"score: y has shape {labels.shape}, but there are {len(y_pred)} predictions.")
    correct = labels == y_pred
    weight = np.ones(len(y_pred)) if sample_weight is None else to_numpy(sample_weight).astype(np.float64)
    sums = coll.all_reduce_sum(torch.tensor([np.dot(weight, correct), weight.sum()], dtype=torch.float64))
    return float(sums[0] / sums[1])


def r2(y_true: Any, y_pred: np.ndarray, sample_weight: Any, coll: Collectives) -> float:
    """R² over every rank's samples, averaged over targets (scikit-learn's ``r2_score``).

    ``y_pred`` is ``(n_samples, n_targets)``; ``y_true`` has the same number of values.
    """
    target = to_numpy(y_true).astype(np.float64)
    if target.size != y_pred.size:
        raise InputError(f"score: y has shape {target.shape}, but the predictions have shape {y_pred.shape}.")
    target = target.reshape(y_pred.shape)
    residual = target - y_pred
    weight = (np.ones(len(y_pred)) if sample_weight is None else to_numpy(sample_weight))[:, None]
    sums = coll.all_reduce_sum(torch.from_numpy(np.concatenate([weight.sum(0), (weight * target).sum(0)])))
    centred = target - (sums[1:] / sums[0]).numpy()
    parts = np.stack([(weight * residual**2).sum(0), (weight * centred**2).sum(0)])
    sse, sst = coll.all_reduce_sum(torch.from_numpy(parts)).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = np.where(sst > 0, 1.0 - sse / sst, np.where(sse == 0, 1.0, 0.0))
    return float(scores.mean())


def centered_covariance(
    X: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, n_total: int, max_rows: int, coll: Collectives
) -> torch.Tensor:
    """Covariance of ``(X - mean) / scale`` (float64), from every ``stride``-th row of each shard.

    ``stride = ceil(n_total / max_rows)`` bounds the cost at about ``max_rows * D**2``; a strided
    subsample covers data sorted by class as well as shuffled data.
    """
    stride = -(-n_total // max_rows)
    sub = X[::stride]
    cov = torch.zeros(X.shape[1], X.shape[1], dtype=X.dtype, device=X.device)
    for start in range(0, sub.shape[0], _ROWS_PER_CHUNK):
        block = (sub[start : start + _ROWS_PER_CHUNK] - mean) / scale
        cov.addmm_(block.t(), block)
    count = coll.all_reduce_sum(torch.tensor([sub.shape[0]], dtype=torch.float64))
    return coll.all_reduce_sum(cov.double()) / count.to(cov.device)
