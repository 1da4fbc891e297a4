"""An estimator that fails inside scikit-learn is a project error naming the probe."""

from __future__ import annotations

import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabricmetrics.exceptions import MetricError
from fabricmetrics.probing import ProbingScheduler


def _loader(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)), 16)


def test_a_probe_failing_inside_scikit_learn_is_a_metric_error_naming_it():
    scheduler = ProbingScheduler(
        nn.Linear(4, 3), _loader(40, 0), _loader(20, 1), probe={"knn": KNeighborsClassifier(500)}
    )
    with pytest.raises(
        MetricError, match=r"Probe `knn` \(KNeighborsClassifier\(n_neighbors=500\)\) failed: ValueError: "
    ) as info:
        scheduler.run()
    assert "n_neighbors" in str(info.value) and "HINT:" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    # the scheduler is still usable with a probe that fits
    scheduler = ProbingScheduler(
        nn.Linear(4, 3), _loader(40, 0), _loader(20, 1), probe={"knn": KNeighborsClassifier(5)}
    )
    assert set(scheduler.run()) >= {"knn/accuracy"}
