"""Unit tests of one stage: steps, padding removal and the epoch end, without a tracker."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score
from torchmetrics.classification import MulticlassAccuracy

from fabricmetrics._stage import EpochOutcome, Stage
from fabricmetrics.bound import ExactBound, PerStepBound, TorchmetricBound, update_signature
from fabricmetrics.distributed import LocalCollectives
from fabricmetrics.needs import parse_needs
from fabricmetrics.schedule import Schedule


def make_stage(metrics, schedule=None, name="val"):
    signatures = {n: update_signature(m) for n, m in metrics.items() if isinstance(m, torch.nn.Module)}
    return Stage(name, metrics, parse_needs(None, metrics), schedule or Schedule(), False, signatures)


def test_each_metric_gets_the_bound_of_its_kind():
    stage = make_stage({"tm": MulticlassAccuracy(2), "sk": accuracy_score})
    assert isinstance(stage.bounds["tm"], TorchmetricBound) and isinstance(stage.bounds["sk"], ExactBound)
    stage = make_stage({"sk": accuracy_score}, Schedule(per_step=True))
    assert isinstance(stage.bounds["sk"], PerStepBound)
    assert stage.kinds() == {"sk": "per_step"}


def test_finish_returns_a_typed_outcome_equal_to_the_reference():
    stage = make_stage({"acc": accuracy_score, "tm": MulticlassAccuracy(2, average="micro")})
    y, p = np.array([1, 0, 1, 1, 0]), np.array([1, 1, 1, 0, 0])
    stage.begin_epoch(None, 1, 0)
    for i in range(0, 5, 2):
        stage.step(
            {
                "y_true": y[i : i + 2],
                "y_pred": p[i : i + 2],
                "preds": torch.tensor(p[i : i + 2]),
                "target": torch.tensor(y[i : i + 2]),
            },
            None,
            log_step=False,
        )
    outcome = stage.finish(LocalCollectives())
    assert isinstance(outcome, EpochOutcome)
    assert outcome.computed and outcome.index == 1 and outcome.samples == outcome.total_samples == 5
    assert outcome.results == pytest.approx({"acc/val": accuracy_score(y, p), "tm/val": accuracy_score(y, p)})
    assert stage.epochs == 1 and not stage.open


@pytest.mark.parametrize("rank", [0, 1])
def test_padding_of_a_distributed_sampler_is_dropped_and_not_an_empty_batch(rank):
    # num_samples=7 over 2 ranks: rank 0 holds positions 0, 2, 4, 6; rank 1 holds 1, 3, 5 and one padding sample
    stage = make_stage({"acc": accuracy_score})
    y, p = np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0])
    stage.begin_epoch(7, 2, rank)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(4):
            stage.step({"y_true": y[i : i + 1], "y_pred": p[i : i + 1]}, None, log_step=False)
    real = 4 if rank == 0 else 3
    outcome = stage.finish(LocalCollectives())  # one process: this rank's share alone
    assert outcome.samples == real and outcome.empty_batches == 0
    assert outcome.results == {"acc/val": accuracy_score(y[:real], p[:real])}


def test_padding_is_found_on_a_logging_step_of_an_epoch_that_does_not_compute():
    # every_n_epochs=2: epoch 1 computes nothing, but its step values must still skip the padding
    stage = make_stage({"m": lambda x: x.mean()}, Schedule(every_n_steps=3, every_n_epochs=2, per_step=True))
    x = torch.arange(6.0)
    stage.begin_epoch(11, 2, 1)  # rank 1 of 2 with 11 samples: 5 real, 1 padding
    logged = []
    for i in (0, 2, 4):
        stage.steps += 1
        logged.append(stage.step({"x": x[i : i + 2]}, None, log_step=stage.schedule.logs_step(stage.steps)))
    assert logged[:2] == [{}, {}]
    assert float(logged[2]["m"]) == 4.0  # x[5] is the sampler's padding
    assert not stage.finish(LocalCollectives()).computed


def test_a_failed_epoch_is_discarded_and_not_counted():
    stage = make_stage({"acc": accuracy_score})
    stage.begin_epoch(None, 1, 0)
    stage.step({"y_true": np.array([1]), "y_pred": np.array([1])}, None, log_step=False)
    stage.fail(LocalCollectives(), ValueError("boom"))
    assert stage.epochs == 0 and not stage.open and stage.samples == 0
