"""Unit tests of one stage: steps, padding removal and the epoch end, without a tracker."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from lightning_fabric.utilities.distributed import DistributedSamplerWrapper
from sklearn.metrics import accuracy_score
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    SubsetRandomSampler,
    TensorDataset,
)
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from fabricmetrics._stage import EpochOutcome, Stage
from fabricmetrics.bound import ExactBound, PerStepBound, TorchmetricBound, update_signature
from fabricmetrics.distributed import LocalCollectives, num_samples_of, rank_positions, share_status, valid_sample_count
from fabricmetrics.exceptions import DistributedError
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


# --------------------------------------------------------------------------------------------------
# the epoch end across ranks, played in one process


class ScriptedCollectives(LocalCollectives):
    """Rank ``rank`` of ``world_size`` ranks whose other ranks send what ``others(obj, rank)`` returns.

    Gathers of objects (the statuses and results) go through :meth:`all_gather_object`; a stage
    whose ranks disagree raises before any other collective, so nothing else is scripted.
    """

    def __init__(self, others, world_size=2, rank=0):
        self._others, self._world, self._rank = others, world_size, rank
        self.gathered = []

    @property
    def world_size(self):
        return self._world

    @property
    def rank(self):
        return self._rank

    def all_gather_object(self, obj):
        self.gathered.append(obj)
        return [obj if r == self._rank else self._others(obj, r) for r in range(self._world)]


def with_fingerprint(change):
    """The other ranks' (error, status) pair: this rank's status with ``change`` applied to its fingerprint."""

    def other(obj, rank):
        error, status = obj
        return error, dataclasses.replace(status, fingerprint=tuple(change(dict(status.fingerprint), rank).items()))

    return other


def labelled_steps(stage, y, p, size=2):
    for i in range(0, len(y), size):
        ys, ps = y[i : i + size], p[i : i + size]
        stage.step(
            {"y_true": ys, "y_pred": ps, "preds": torch.tensor(ps), "target": torch.tensor(ys)}, None, log_step=False
        )


def test_the_status_fingerprint_names_what_the_rank_is_about_to_reduce():
    stage = make_stage({"acc": accuracy_score, "tm": MulticlassAccuracy(3)}, name="test")
    stage.begin_epoch(None, 1, 0)
    fingerprint = dict(stage._status(1).fingerprint)
    assert next(iter(fingerprint)) == "stage"  # the first difference reported is the most telling one
    assert {"epoch", "computes this epoch", "metrics", "metric `acc`", "metric `tm`"} <= set(fingerprint)
    assert fingerprint["stage"] == "test" and fingerprint["epoch"] == "1"
    assert fingerprint["computes this epoch"] == "True" and fingerprint["metrics"] == "acc, tm"
    assert fingerprint["metric `acc`"] == "exact sklearn.metrics._classification.accuracy_score"
    assert "MulticlassAccuracy" in fingerprint["metric `tm`"]
    # two stages alike but for their name, or for a metric's settings, differ
    other = make_stage({"acc": accuracy_score, "tm": MulticlassAccuracy(4)}, name="test")
    other.begin_epoch(None, 1, 0)
    assert dict(other._status(1).fingerprint)["metric `tm`"] != fingerprint["metric `tm`"]


@pytest.mark.parametrize(
    ("item", "value", "hint"),
    [
        ("stage", "test", "run the same stages in the same order on every rank"),
        ("epoch", "2", "run every epoch of a stage on every rank"),
        ("computes this epoch", "False", "give every rank the same Schedule for this stage"),
        ("metrics", "tm, acc", "build the metrics in the same order on every rank"),
        (
            "metric `acc`",
            "per_step sklearn.metrics._classification.accuracy_score",
            "give every rank the same metric objects",
        ),
    ],
)
def test_a_rank_that_disagrees_fails_the_epoch_end_and_the_next_epoch_works(item, value, hint):
    stage = make_stage({"acc": accuracy_score, "tm": MulticlassAccuracy(2, average="micro")})
    y, p = np.array([1, 0, 1, 1, 0]), np.array([1, 1, 1, 0, 0])
    stage.begin_epoch(None, 2, 0)
    labelled_steps(stage, y, p)
    collectives = ScriptedCollectives(with_fingerprint(lambda fp, rank: {**fp, item: value}))
    pattern = rf"\(stage `val` here\): {item} is '.*' on rank 0 but '{value}' on rank 1 \(ranks that differ"
    with pytest.raises(DistributedError, match=pattern) as failure:
        stage.finish(collectives)
    assert f"HINT: {hint}" in str(failure.value)
    assert len(collectives.gathered) == 1  # the status exchange only: nothing was reduced
    assert not stage.open and stage.epochs == 0 and stage.samples == 0  # discarded, not counted
    stage.begin_epoch(None, 1, 0)  # the next epoch works
    labelled_steps(stage, y, p)
    outcome = stage.finish(LocalCollectives())
    assert outcome.index == 1
    assert outcome.results == pytest.approx({"acc/val": accuracy_score(y, p), "tm/val": accuracy_score(y, p)})


def test_every_rank_that_differs_is_named():
    stage = make_stage({"acc": accuracy_score, "tm": MulticlassAccuracy(2)}, name="test")
    stage.begin_epoch(None, 4, 2)
    labelled_steps(stage, np.array([1]), np.array([1]))
    # rank 2 (this one) and rank 3 ran another stage than ranks 0 and 1
    collectives = ScriptedCollectives(
        with_fingerprint(lambda fp, rank: {**fp, "stage": "val" if rank < 2 else fp["stage"]}), world_size=4, rank=2
    )
    with pytest.raises(
        DistributedError,
        match=r"stage is 'val' on rank 0 but 'test' on rank 2 \(ranks that differ "
        r"from rank 0: \[2, 3\]\)",
    ):
        stage.finish(collectives)


def test_the_epoch_end_over_ranks_reduces_every_kind_once():
    # the other rank holds the same data: exact values are those of the data twice, counts double
    from tests.test_bounds import MirrorCollectives

    stage = make_stage({"acc": accuracy_score, "tm": MulticlassAccuracy(2, average="micro"), "n": SumMetric()})
    y, p = np.array([1, 0, 1, 1, 0]), np.array([1, 1, 1, 0, 0])
    stage.begin_epoch(None, 2, 0)
    for i in range(0, 5, 2):
        s = slice(i, i + 2)
        stage.step(
            {
                "y_true": y[s],
                "y_pred": p[s],
                "preds": torch.tensor(p[s]),
                "target": torch.tensor(y[s]),
                "value": torch.ones(len(y[s])),
            },
            None,
            log_step=False,
        )
    outcome = stage.finish(MirrorCollectives())
    twice_y, twice_p = np.concatenate([y, y]), np.concatenate([p, p])
    assert outcome.samples == 5 and outcome.total_samples == 10
    assert outcome.results == pytest.approx(
        {"acc/val": accuracy_score(twice_y, twice_p), "tm/val": accuracy_score(twice_y, twice_p), "n/val": 10.0}
    )


def test_an_epoch_that_does_not_compute_still_agrees_and_counts():
    stage = make_stage({"acc": accuracy_score}, Schedule(every_n_epochs=2))
    stage.begin_epoch(None, 1, 0)
    labelled_steps(stage, np.array([1, 0]), np.array([1, 1]))
    outcome = stage.finish(LocalCollectives())
    assert not outcome.computed and outcome.results == {} and outcome.total_samples == 0
    assert stage.epochs == 1


# --------------------------------------------------------------------------------------------------
# the distributed helpers a stage relies on: sharing a status, the sampler's padding


def test_share_status_in_one_process():
    assert share_status(LocalCollectives(), {"n": 3}, where="counting") == [{"n": 3}]
    with pytest.raises(KeyError, match="own"):
        share_status(LocalCollectives(), None, KeyError("own"), where="counting")
    assert share_status(LocalCollectives(), 5, KeyError("own"), where="counting", raise_own=False) == [5]


def test_share_status_tells_every_rank_which_rank_failed():
    def failing(obj, rank):
        return ("ValueError: bad batch", None) if rank in (1, 2) else obj

    collectives = ScriptedCollectives(failing, world_size=3, rank=0)
    with pytest.raises(
        DistributedError,
        match=r"^Rank 1 \(and ranks \[2\]\) failed inside the block: ValueError: bad batch\. Nothing was logged\.$",
    ):
        share_status(collectives, {"n": 1}, where="inside the block", consequence="Nothing was logged.")


SHAPES = [(10, 2), (21, 2), (7, 3), (16, 4), (5, 4), (3, 4), (1, 3)]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("n", "world"), SHAPES)
def test_the_padding_rule_matches_distributed_samplers_own_lists(n, world, shuffle):
    data = list(range(n))
    order = list(DistributedSampler(data, num_replicas=1, rank=0, shuffle=shuffle, seed=5))  # the sampler's order
    lists = [list(DistributedSampler(data, num_replicas=world, rank=r, shuffle=shuffle, seed=5)) for r in range(world)]
    kept = []
    for rank, indices in enumerate(lists):
        positions = rank_positions(0, len(indices), world, rank)
        assert indices == [order[p % n] for p in positions]  # the j-th sample sits at position j·W + r
        for start in range(0, len(indices), 2):  # any run of samples, as steps see them
            assert (
                rank_positions(start, 2, world, rank)[: len(indices) - start].tolist()
                == positions[start : start + 2].tolist()
            )
        valid = valid_sample_count(n, world, rank)
        assert valid == int(np.sum(positions < n))
        kept += indices[:valid]  # the padding comes last on every rank
    assert sorted(kept) == data  # every sample kept exactly once over the ranks


def test_num_samples_of_loaders():
    data = TensorDataset(torch.arange(20.0))
    subset = list(range(3, 15))
    assert num_samples_of(DataLoader(data, batch_size=4)) == 20
    assert num_samples_of(DataLoader(data, sampler=SubsetRandomSampler(subset))) == 12
    assert num_samples_of(DataLoader(data, batch_sampler=BatchSampler(SubsetRandomSampler(subset), 5, False))) == 12
    assert num_samples_of(DataLoader(data, sampler=DistributedSampler(data, num_replicas=3, rank=1))) == 20
    wrapped = DistributedSamplerWrapper(SubsetRandomSampler(subset), num_replicas=2, rank=1)
    assert num_samples_of(DataLoader(data, sampler=wrapped)) == 12

    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(3)

    assert num_samples_of(DataLoader(Stream())) is None


@pytest.mark.parametrize("world", [2, 3, 5])
def test_fabrics_sampler_wrapper_pads_like_the_rule(world):
    subset = list(range(3, 14))  # 11 samples
    lists = [
        list(
            DistributedSamplerWrapper(
                SubsetRandomSampler(subset, generator=torch.Generator().manual_seed(0)), num_replicas=world, rank=r
            )
        )
        for r in range(world)
    ]
    kept = [i for r, indices in enumerate(lists) for i in indices[: valid_sample_count(len(subset), world, r)]]
    assert sorted(kept) == subset
