"""Probing data across ranks: what each rank embedded, the checks all ranks agree on, the gather to rank 0.

Every function here makes the same collective calls on every rank whatever the local data (empty
shards included), so a probing never leaves a rank waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fabricmetrics.distributed import Collectives
from fabricmetrics.exceptions import ConfigurationError
from fabricmetrics.probing.extraction import Embeddings, ShardLayout

__all__ = ["ProbeData", "gather_to_main", "local_part", "merge_summaries", "subsample_plan", "summarize"]


@dataclass
class ProbeData:
    """One loader's samples as rank 0 fits and scores them.

    Attributes:
        features: source → ``(n, d)`` float32 embeddings (only the sources that were gathered).
        targets: ``(n,)`` or ``(n, k)`` targets.
        order: puts rows gathered in rank order back in the sampler's order (also for predictions).
    """

    features: dict[str, np.ndarray]
    targets: np.ndarray
    order: Any = field(default_factory=lambda: slice(None))


def subsample_plan(
    max_samples: int | None, seed: list[int], layout: ShardLayout, coll: Collectives
) -> tuple[np.ndarray | None, int | None]:
    """What :func:`~fabricmetrics.probing.extraction.extract_embeddings` keeps under ``max_samples``.

    Returns:
        ``(keep, limit)``: sorted positions drawn with ``seed`` when the data set's length is known
        (the same positions on every rank and at every probing), else a quota of first samples on
        this rank (``max_samples`` split over the ranks of a ``"custom"`` layout).
    """
    if max_samples is None:
        return None, None
    if layout.kind != "custom" and layout.num_samples is not None:
        if layout.num_samples <= max_samples:
            return None, None
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(layout.num_samples, max_samples, replace=False)), None
    if layout.kind == "whole":
        return None, max_samples
    share, extra = divmod(max_samples, coll.world_size)
    return None, share + int(coll.rank < extra)


def summarize(emb: Embeddings) -> dict[str, Any]:
    """What the other ranks need to know about this rank's samples (small and picklable)."""
    n = len(emb)
    values = emb.targets.reshape(n, -1).double().numpy() if n else np.empty((0, 0))
    finite = np.isfinite(values)
    fractional = finite & (values != np.round(values))
    return {
        "n": n,
        "dims": {s: int(a.shape[1]) for s, a in emb.features.items()},
        "finite": {s: bool(np.isfinite(a).all()) for s, a in emb.features.items()},
        "target_dtype": str(emb.targets.dtype),
        "target_shape": tuple(emb.targets.shape[1:]),
        "target_finite": finite.all(axis=0).tolist(),
        "target_example": [
            float(values[fractional[:, c], c][0]) if fractional[:, c].any() else None for c in range(values.shape[1])
        ],
    }


def merge_summaries(loader: str, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One loader's summaries of every rank → one, the same on every rank (empty ranks only count).

    Raises:
        ConfigurationError: no rank has a sample, or the ranks' samples differ in shape or dtype.
    """
    full = [s for s in summaries if s["n"] > 0]
    if not full:
        where = " on any rank" if len(summaries) > 1 else ""
        raise ConfigurationError(f"The {loader} loader yielded no samples{where}; there is nothing to probe.")
    first = full[0]
    for key in ("dims", "target_dtype", "target_shape"):
        if any(s[key] != first[key] for s in full):
            raise ConfigurationError(
                f"The {loader} loader's samples differ in {key} between ranks: {[s[key] for s in full]}."
            )
    columns = range(len(first["target_finite"]))
    return {
        "counts": [s["n"] for s in summaries],
        "dims": first["dims"],
        "target_dtype": first["target_dtype"],
        "target_shape": first["target_shape"],
        "finite": {src: all(s["finite"][src] for s in full) for src in first["dims"]},
        "target_finite": [all(s["target_finite"][c] for s in full) for c in columns],
        "target_example": [
            next((s["target_example"][c] for s in full if s["target_example"][c] is not None), None) for c in columns
        ],
    }


def gather_to_main(
    layout: ShardLayout, emb: Embeddings, summary: dict[str, Any], sources: list[str], coll: Collectives
) -> ProbeData | None:
    """Give rank 0 every rank's samples, padding-free and in the sampler's order.

    With one process, or when every rank iterated the whole data set, rank 0 keeps its own samples
    and nothing is communicated. Otherwise positions, targets and the embeddings of ``sources`` go
    to rank 0 in rounds of bounded size (:meth:`~fabricmetrics.distributed.Collectives.gather_cat_to_main`),
    so the other ranks never hold more than their own shard plus one round; rank 0 writes each row
    straight to its place in a ``DistributedSampler``'s order.

    Returns:
        The data on rank 0, ``None`` on the other ranks.
    """
    if coll.world_size == 1 or layout.kind == "whole":
        return ProbeData(emb.features, emb.targets.numpy()) if coll.is_main else None
    counts, n = summary["counts"], len(emb)
    positions = coll.gather_cat_to_main(torch.from_numpy(emb.positions), counts)
    order: Any = slice(None)
    index = None
    if positions is not None and layout.kind == "distributed":
        order = np.argsort(positions.numpy(), kind="stable")
        index = torch.empty(len(order), dtype=torch.int64)
        index[torch.from_numpy(order)] = torch.arange(len(order))
    dtype = getattr(torch, summary["target_dtype"].split(".")[-1])
    targets = coll.gather_cat_to_main(emb.targets.to(dtype).reshape(n, *summary["target_shape"]), counts, index=index)
    features = {
        source: coll.gather_cat_to_main(
            torch.from_numpy(emb.features[source].reshape(n, summary["dims"][source])), counts, index=index
        )
        for source in sources
    }
    if targets is None:
        return None
    return ProbeData({s: f.numpy() for s, f in features.items() if f is not None}, targets.numpy(), order)


def local_part(
    layout: ShardLayout, emb: Embeddings, summary: dict[str, Any], source: str, coll: Collectives
) -> tuple[np.ndarray, np.ndarray]:
    """This rank's shard for a sharded probe (rank 0 holds all of it when every rank saw everything)."""
    n = len(emb) if coll.is_main or layout.kind != "whole" else 0
    X = emb.features[source][:n].reshape(n, summary["dims"][source])
    y = emb.targets.numpy()[:n].reshape(n, *summary["target_shape"])
    return X, y
