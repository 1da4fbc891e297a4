"""The SSL metrics inside a MetricsTracker loop, as docs/metrics.md shows them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fabricmetrics import MetricsTracker
from fabricmetrics.metrics import (
    Alignment,
    ContrastiveAccuracy,
    EffectiveRank,
    alignment_score,
    contrastive_accuracy_score,
    effective_rank,
    uniformity_score,
)


def both_views(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([out["z1"], out["z2"]])


def test_epoch_values_are_exact_on_the_whole_epoch() -> None:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(50, 8, generator=g, dtype=torch.float64)
    z2 = z1 + 0.7 * torch.randn(50, 8, generator=g, dtype=torch.float64)
    tracker = MetricsTracker(
        {
            "uniformity": uniformity_score,
            "accuracy": contrastive_accuracy_score,
            "alignment": Alignment(),
            "accuracy5": ContrastiveAccuracy(topk=5),
            "rank": EffectiveRank(),
        },
        needs={"uniformity": {"z": both_views}, "rank": {"z": both_views}},
    )
    with tracker, tracker.epoch("val") as epoch:  # "val": per_step=False, computed once on the epoch
        for b1, b2 in zip(z1.split(16), z2.split(16), strict=True):
            tracker.step("val", {"z1": b1, "z2": b2})
    both = torch.cat([z1, z2])
    expected = {
        "uniformity/val": float(uniformity_score(both)),
        "accuracy/val": float(contrastive_accuracy_score(z1, z2)),
        "alignment/val": float(alignment_score(z1, z2)),
        "accuracy5/val": float(contrastive_accuracy_score(z1, z2, topk=5)),
        "rank/val": float(effective_rank(both)),
    }
    assert epoch.results == pytest.approx(expected, rel=1e-10)
    per_batch = np.mean(
        [float(uniformity_score(torch.cat([a, b]))) for a, b in zip(z1.split(16), z2.split(16), strict=True)]
    )
    assert epoch.results["uniformity/val"] != pytest.approx(per_batch, rel=1e-3)
