"""Unit tests of each bound kind: update, summary, reduction across ranks, value, release and state.

Across ranks, :class:`MirrorCollectives` plays a job of two ranks in one process where the other
rank holds exactly the same data: every gather returns this rank's tensor twice and every sum is
doubled, so the reduced value must be the metric of the data set repeated twice.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error
from torchmetrics import MaxMetric, Metric, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.regression import MeanSquaredError

from fabricmetrics.bound import ExactBound, PerStepBound, Reduction, TorchmetricBound, first_dim, update_signature
from fabricmetrics.distributed import Collectives, LocalCollectives
from fabricmetrics.exceptions import ConfigurationError, MetricError, OutputsError


class MirrorCollectives(Collectives):
    """Rank 0 of two ranks whose other rank holds the same data (gathers repeat, sums double)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @property
    def world_size(self) -> int:
        return 2

    @property
    def rank(self) -> int:
        return 0

    def _all_gather_same(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        self.calls.append("gather")
        return [tensor.clone(), tensor.clone()]

    def _all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        self.calls.append("sum")
        return tensor * 2

    def barrier(self) -> None:
        self.calls.append("barrier")


def classification(seed: int, sizes: tuple[int, ...] = (5, 7, 4), classes: int = 3) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, classes, (n,), generator=g), torch.randint(0, classes, (n,), generator=g)) for n in sizes]


def no_sources(position: int) -> None:
    raise AssertionError(f"no source should be gathered (asked for {position})")


def end_epoch(bound, collectives, summaries=None, gather_source=no_sources):
    """What a stage does at an epoch end for one bound: reduce, run, value, release."""
    reduction = Reduction(collectives, gather_source, "val")
    bound.reduce(reduction, summaries if summaries is not None else [bound.summary()] * collectives.world_size)
    reduction.run()
    try:
        return dict(bound.value(reduction))
    finally:
        bound.release()


# --------------------------------------------------------------------------------------------------
# TorchmetricBound


def test_torchmetric_bound_clones_the_metric_and_equals_sklearn():
    user = MulticlassAccuracy(3, average="micro")
    bound = TorchmetricBound("acc", user)
    batches = classification(0)
    for i, (p, y) in enumerate(batches):
        batch_value = bound.step([p, y], {}, len(p), log_step=i == 0, accumulate=True)
        if i == 0:  # a logged step returns the batch's value (forward)
            assert float(batch_value) == pytest.approx(accuracy_score(y, p))
        else:
            assert batch_value is None
    assert user.update_count == 0  # the user's metric is never updated
    p, y = (torch.cat(t) for t in zip(*batches, strict=True))
    assert end_epoch(bound, LocalCollectives()) == pytest.approx({"acc": accuracy_score(y, p)})
    assert bound.summary() is None and bound.kind == "torchmetric"


def test_torchmetric_bound_reduces_over_ranks_once_and_restores_the_local_state():
    bound = TorchmetricBound("n", SumMetric())
    bound.step([torch.tensor([1.0, 2.0, 3.5])], {}, 3, log_step=False, accumulate=True)
    collectives = MirrorCollectives()
    assert end_epoch(bound, collectives) == {"n": pytest.approx(13.0)}  # the other rank's 6.5 added once
    assert collectives.calls  # the state was gathered through the stage's collectives
    assert float(bound.metric.metric_state["sum_value"]) == pytest.approx(6.5)  # release() restored the local state
    assert not bound.metric._is_synced
    bound.reset()
    assert bound.metric.update_count == 0


def test_torchmetric_bound_never_syncs_by_itself():
    bound = TorchmetricBound("mse", MeanSquaredError())
    assert bound.metric.distributed_available_fn() is False
    assert bound.metric.sync_on_compute is False


def test_a_follower_adopts_its_leaders_state():
    leader = TorchmetricBound("acc", MulticlassAccuracy(3, average="macro"))
    follower = TorchmetricBound("f1", MulticlassF1Score(3, average="macro"))
    assert update_signature(leader.metric) == update_signature(follower.metric)
    follower.leader = leader
    batches = classification(1)
    for p, y in batches:
        for bound in (leader, follower):
            bound.step([p, y], {}, len(p), log_step=False, accumulate=True)
    assert follower.metric.update_count == 0  # only the leader updates
    assert follower.summary() == "acc"
    p, y = (torch.cat(t) for t in zip(*batches, strict=True))
    for collectives in (LocalCollectives(), MirrorCollectives()):  # duplicated data: same F1
        reduction = Reduction(collectives, no_sources, "val")
        for bound in (leader, follower):
            bound.reduce(reduction, [bound.summary()] * collectives.world_size)
        reduction.run()
        assert dict(follower.value(reduction)) == pytest.approx({"f1": f1_score(y, p, average="macro")})
        for bound in (leader, follower):
            bound.release()


def test_a_failed_sync_is_a_metric_error_at_value():
    class Broken(MirrorCollectives):
        def _all_gather_same(self, tensor):
            raise RuntimeError("link down")

    bound = TorchmetricBound("n", SumMetric())
    bound.step([torch.ones(2)], {}, 2, log_step=False, accumulate=True)
    reduction = Reduction(Broken(), no_sources, "val")
    bound.reduce(reduction, [None, None])
    with pytest.raises(MetricError, match="synchronising `n` failed"):
        bound.value(reduction)
    bound.release()
    assert float(bound.metric.metric_state["sum_value"]) == 2.0  # the local state is intact


def test_torchmetric_bound_state_round_trip():
    batches = classification(2)
    source = TorchmetricBound("acc", MulticlassAccuracy(3))
    for p, y in batches[:2]:
        source.step([p, y], {}, len(p), log_step=False, accumulate=True)
    state = source.state_dict()
    assert state["update_count"] == 2
    target = TorchmetricBound("acc", MulticlassAccuracy(3))
    target.check_state(state)
    target.load_state_dict(state)
    p, y = batches[2]
    for bound in (source, target):
        bound.step([p, y], {}, len(p), log_step=False, accumulate=True)
    assert end_epoch(target, LocalCollectives()) == end_epoch(source, LocalCollectives())
    other = TorchmetricBound("acc", MaxMetric())
    with pytest.raises(ConfigurationError, match=r"Metric `acc` has no state \[.*\]; the checkpoint is of another"):
        other.check_state(state)
    with pytest.raises(ConfigurationError, match="is not a torchmetrics state"):
        target.check_state({"total": None})


# --------------------------------------------------------------------------------------------------
# PerStepBound


def test_per_step_bound_is_the_batch_size_weighted_mean():
    bound = PerStepBound("mse", mean_squared_error)  # scikit-learn: receives NumPy arrays
    g = np.random.default_rng(3)
    sizes, values = [3, 8, 1, 5], []
    for i, n in enumerate(sizes):
        y, p = g.normal(size=n), g.normal(size=n)
        batch_value = bound.step([torch.tensor(y), torch.tensor(p)], {}, n, log_step=i == 1, accumulate=True)
        values.append(mean_squared_error(y, p))
        assert (batch_value is None) == (i != 1)
    assert bound.summary() == ["mse"]
    expected = np.average(values, weights=sizes)
    assert end_epoch(bound, LocalCollectives()) == pytest.approx({"mse": expected})
    assert end_epoch(bound, MirrorCollectives()) == pytest.approx({"mse": expected})  # same mean over 2 ranks


def test_per_step_bound_with_dict_and_vector_values():
    bound = PerStepBound("m", lambda x: {"lo": x.min(), "hi": x.max()})
    vec = PerStepBound("v", lambda x: torch.stack([x.min(), x.max()]))
    xs = [torch.tensor([1.0, 4.0]), torch.tensor([-2.0, 0.0, 7.0])]
    for x in xs:
        bound.step([x], {}, len(x), log_step=False, accumulate=True)
        vec.step([x], {}, len(x), log_step=False, accumulate=True)
    lo = (2 * 1.0 + 3 * -2.0) / 5
    hi = (2 * 4.0 + 3 * 7.0) / 5
    assert end_epoch(bound, LocalCollectives()) == pytest.approx({"m_lo": lo, "m_hi": hi})
    assert end_epoch(vec, LocalCollectives()) == pytest.approx({"v_0": lo, "v_1": hi})


def test_per_step_bound_refuses_values_named_differently():
    bound = PerStepBound("m", lambda x: x)
    bound.step([torch.tensor([1.0, 2.0])], {}, 1, log_step=False, accumulate=True)
    with pytest.raises(MetricError, match=r"returned values named \['m'\] on this batch but \['m_0', 'm_1'\]"):
        bound.step([torch.tensor(3.0)], {}, 1, log_step=False, accumulate=True)
    reduction = Reduction(MirrorCollectives(), no_sources, "val")
    with pytest.raises(MetricError, match=r"Metric `m` of stage `val` returned values named differently.*HINT:"):
        bound.reduce(reduction, [["m_0", "m_1"], ["m_0"]])


def test_per_step_bound_without_batches():
    bound = PerStepBound("m", lambda x: x.mean())
    assert bound.summary() is None
    assert end_epoch(bound, LocalCollectives()) == {}  # no rank had a batch
    # this rank had no batch, another rank had some: this rank takes part with zeros under their keys
    reduction = Reduction(MirrorCollectives(), no_sources, "val")
    bound.reduce(reduction, [None, ["m"]])
    reduction.run()
    assert reduction.sums(0) == [0.0, 0.0]  # (weighted sum, count), doubled: still zero
    assert math.isnan(dict(bound.value(reduction))["m"])  # no sample anywhere (the mirror has none either)
    bound.release()


def test_per_step_bound_state_round_trip_with_numpy_values():
    def span(x):
        return np.ptp(np.asarray(x))

    bound = PerStepBound("span", span)
    first = [np.array([1.0, 5.0]), np.array([2.0, 2.5, 3.0])]
    for x in first:
        bound.step([x], {}, len(x), log_step=False, accumulate=True)
    state = bound.state_dict()
    restored = PerStepBound("span", span)
    restored.check_state(state)
    restored.load_state_dict(state)
    for b in (bound, restored):
        b.step([np.array([0.0, 10.0])], {}, 2, log_step=False, accumulate=True)
    expected = (2 * 4.0 + 3 * 1.0 + 2 * 10.0) / 7
    assert end_epoch(restored, LocalCollectives()) == pytest.approx({"span": expected})
    assert end_epoch(bound, LocalCollectives()) == pytest.approx({"span": expected})
    with pytest.raises(ConfigurationError, match="is not a per-step mean's state"):
        restored.check_state({"total": None})
    bound.reset()
    assert bound.state_dict()["count"] == 0 and bound.summary() is None


# --------------------------------------------------------------------------------------------------
# ExactBound


def test_exact_bound_computes_once_on_the_gathered_sources():
    bound = ExactBound("f1", functools.partial(f1_score, average="macro"))
    bound.labels = ["'y_true'", "'y_pred'"]
    bound.call = ((1, 0), ())  # positional arguments: source 1, then source 0
    y, p = np.array([0, 1, 2, 2, 1, 0, 1]), np.array([0, 2, 2, 2, 1, 1, 1])
    sources = {0: torch.tensor(p), 1: torch.tensor(y)}
    asked = []

    def gather(position):
        asked.append(position)
        return sources[position]

    assert bound.summary() == ((1, 0), ())
    assert end_epoch(bound, LocalCollectives(), gather_source=gather) == pytest.approx(
        {"f1": f1_score(y, p, average="macro")}
    )
    assert asked == [0, 1]  # each wanted source once, in source order
    # keyword arguments, and a rank that never planned its arguments (summary None) follows the others
    kw = ExactBound("acc", accuracy_score)
    assert kw.summary() is None
    out = end_epoch(
        kw, MirrorCollectives(), summaries=[None, ((), (("y_true", 1), ("y_pred", 0)))], gather_source=gather
    )
    assert out == pytest.approx({"acc": accuracy_score(y, p)})
    assert end_epoch(ExactBound("acc", accuracy_score), LocalCollectives(), summaries=[None]) == {}


def test_exact_bound_refuses_arguments_planned_differently_on_other_ranks():
    bound = ExactBound("acc", accuracy_score)
    reduction = Reduction(MirrorCollectives(), no_sources, "val")
    with pytest.raises(OutputsError, match=r"Metric `acc` of stage `val` takes its arguments from other outputs"):
        bound.reduce(reduction, [((0, 1), ()), ((1, 0), ())])
    bound.reduce(reduction, [((0, 1), ()), None])  # a rank that never stepped has no plan: the others' is taken
    assert bound._agreed == ((0, 1), ())


def test_exact_bound_step_checks_rows_and_returns_the_batch_value():
    bound = ExactBound("acc", accuracy_score)
    bound.labels = ["'y_true'", "'y_pred'"]
    y, p = np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0])
    assert bound.step([y, p], {}, 4, log_step=True, accumulate=True) == accuracy_score(y, p)
    assert bound.step([y, p], {}, 4, log_step=False, accumulate=True) is None
    with pytest.raises(OutputsError, match=r"Metric `acc` received arguments with different numbers of rows.*HINT"):
        bound.step([y, p[:3]], {}, 4, log_step=False, accumulate=True)
    assert bound.kind == "exact" and bound.describe().startswith("exact sklearn.metrics")


# --------------------------------------------------------------------------------------------------
# Reduction and descriptions


def test_reduction_sums_every_vector_in_one_all_reduce():
    collectives = MirrorCollectives()
    reduction = Reduction(collectives, no_sources, "val")
    a = reduction.add_sum(torch.tensor([1.0, 2.0]))
    b = reduction.add_sum(torch.tensor([[3.0], [4.0], [5.0]]))
    reduction.run()
    assert reduction.sums(a) == [2.0, 4.0] and reduction.sums(b) == [6.0, 8.0, 10.0]
    assert collectives.calls == ["sum"]
    empty = Reduction(collectives, no_sources, "val")
    empty.run()  # nothing registered: no collective
    assert collectives.calls == ["sum"]


def square(x):
    return x * x


def mean_of(x, fn):
    return fn(x).mean()


class SumOf(Metric):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, x):
        self.total += self.fn(x).sum()

    def compute(self):
        return self.total


@pytest.mark.parametrize(
    "bound",
    [
        PerStepBound("m", functools.partial(mean_of, fn=square)),
        ExactBound("m", functools.partial(mean_of, fn=square)),
        TorchmetricBound("m", SumOf(square)),
    ],
    ids=["per-step partial", "exact partial", "torchmetric setting"],
)
def test_descriptions_hold_no_process_specific_address(bound):
    # describe() is compared between ranks (separate processes): a function's repr `<function square at
    # 0x7f…>` differs between them, so ranks configured alike would be told they disagree
    description = bound.describe()
    assert "square" in description
    assert " at 0x" not in description, description


def test_descriptions_tell_kinds_classes_and_settings_apart():
    assert (
        TorchmetricBound("m", MulticlassAccuracy(3)).describe()
        != TorchmetricBound("m", MulticlassAccuracy(4)).describe()
    )
    assert (
        TorchmetricBound("m", MulticlassAccuracy(3)).describe()
        == TorchmetricBound("m", MulticlassAccuracy(3)).describe()
    )
    f1 = functools.partial(f1_score, average="macro")
    assert PerStepBound("m", f1).describe() != ExactBound("m", f1).describe()
    assert ExactBound("m", f1).describe() != ExactBound("m", functools.partial(f1_score, average="micro")).describe()


def test_first_dim():
    assert first_dim(np.zeros((0, 3))) == 0 and first_dim(("a", "b")) == 2
    assert first_dim(np.float64(2.0)) is None and first_dim(3) is None and first_dim("abc") is None
