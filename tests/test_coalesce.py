"""Coalesced updates leave every state exactly as one update per step would."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torchmetrics import Metric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryHingeLoss,
    MulticlassAccuracy,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassExactMatch,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassMatthewsCorrCoef,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassSpecificity,
    MulticlassStatScores,
    MultilabelAccuracy,
    MultilabelConfusionMatrix,
    MultilabelExactMatch,
    MultilabelF1Score,
)
from torchmetrics.regression import MeanSquaredError

from fabricmetrics import MetricsTracker, Schedule, _tm
from fabricmetrics._coalesce import Coalescer, eligible
from fabricmetrics.exceptions import MetricError
from tests._distributed import run_on_ranks

SIZES = [7, 7, 7, 7, 7, 3, 7, 7, 1, 7, 7, 5]  # uneven, with a short step in the middle (flushes mid-run)
C = 4


def multiclass_logits(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, C, generator=g) * 3, torch.randint(0, C, (n,), generator=g)


def multiclass_labels(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, C, (n,), generator=g), torch.randint(0, C, (n,), generator=g)


def multiclass_multidim(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, C, 3, generator=g), torch.randint(0, C, (n, 3), generator=g)


def with_ignored(make: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> Callable[..., tuple[torch.Tensor, ...]]:
    def inputs(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        preds, target = make(g, n)
        target = torch.where(torch.rand(target.shape, generator=g) < 0.2, torch.full_like(target, -1), target)
        return preds, target

    return inputs


def binary_labels(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)


def multilabel_labels(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, 2, (n, 3), generator=g), torch.randint(0, 2, (n, 3), generator=g)


def multilabel_mixed_floats(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits on some steps, probabilities on others: the per-call sigmoid trap."""
    preds = torch.randn(n, 3, generator=g) * 2
    if torch.rand((), generator=g) < 0.5:
        preds = preds.sigmoid() * 0.6 + 0.2  # within [0, 1]: no sigmoid on this call
    return preds, torch.randint(0, 2, (n, 3), generator=g)


# every kind of coalesced update, with the inputs that reach each of its branches
KINDS: dict[str, tuple[Callable[[], Metric], Callable[..., tuple[torch.Tensor, ...]]]] = {
    "multiclass stat scores, micro, logits": (lambda: MulticlassAccuracy(C, average="micro"), multiclass_logits),
    "multiclass stat scores, macro, logits": (lambda: MulticlassF1Score(C), multiclass_logits),
    "multiclass stat scores, none, labels": (
        lambda: MulticlassStatScores(C, average="none"),
        multiclass_labels,
    ),
    "multiclass stat scores, top-2": (lambda: MulticlassPrecision(C, top_k=2), multiclass_logits),
    "multiclass stat scores, ignore_index": (
        lambda: MulticlassRecall(C, ignore_index=-1),
        with_ignored(multiclass_logits),
    ),
    "multiclass stat scores, extra dims": (lambda: MulticlassSpecificity(C), multiclass_multidim),
    "multiclass confusion matrix": (lambda: MulticlassConfusionMatrix(C), multiclass_logits),
    "multiclass confusion matrix, ignore_index": (
        lambda: MulticlassJaccardIndex(C, ignore_index=-1),
        with_ignored(multiclass_logits),
    ),
    "multiclass Matthews": (lambda: MulticlassMatthewsCorrCoef(C), multiclass_labels),
    "multiclass Cohen's kappa": (lambda: MulticlassCohenKappa(C), multiclass_logits),
    "multiclass exact match": (lambda: MulticlassExactMatch(C), multiclass_multidim),
    "binary stat scores, labels": (lambda: BinaryF1Score(), binary_labels),
    "binary confusion matrix, labels": (lambda: BinaryConfusionMatrix(), binary_labels),
    "multilabel stat scores, labels": (lambda: MultilabelF1Score(3), multilabel_labels),
    "multilabel stat scores, mixed floats": (lambda: MultilabelAccuracy(3), multilabel_mixed_floats),
    "multilabel confusion matrix, labels": (lambda: MultilabelConfusionMatrix(3), multilabel_labels),
    "multilabel exact match, labels": (lambda: MultilabelExactMatch(3), multilabel_labels),
}


def assert_same_state(coalesced: Metric, reference: Metric) -> None:
    mine, theirs = _tm.state(coalesced), _tm.state(reference)
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert mine[key].dtype == value.dtype, key
        assert torch.equal(mine[key], value), key
    assert coalesced.update_count == reference.update_count


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("max_steps", [3, 64])
def test_coalesced_state_equals_per_step_updates(kind, max_steps):
    make, inputs = KINDS[kind]
    reference, coalesced = make(), make()
    assert eligible(coalesced)
    coalescer = Coalescer([coalesced], max_steps=max_steps)
    g = torch.Generator().manual_seed(1)
    for i, n in enumerate(SIZES):
        preds, target = inputs(g, n)
        reference.update(preds, target)
        if i >= len(SIZES) // 2:  # another argument layout from here on: a flush in between
            coalescer.update([preds], {"target": target})
        else:
            coalescer.update([preds, target], {})
    coalescer.flush()
    assert coalescer.pending == 0
    assert_same_state(coalesced, reference)
    torch.testing.assert_close(coalesced.compute(), reference.compute(), rtol=0, atol=0, equal_nan=True)


def test_several_metrics_share_one_buffer():
    makers = [
        lambda: MulticlassAccuracy(C, average="micro"),
        lambda: MulticlassF1Score(C),
        lambda: MulticlassConfusionMatrix(C),
    ]
    references, coalesced = [m() for m in makers], [m() for m in makers]
    coalescer = Coalescer(coalesced, max_steps=4)
    g = torch.Generator().manual_seed(2)
    for n in SIZES:
        preds, target = multiclass_logits(g, n)
        for ref in references:
            ref.update(preds, target)
        coalescer.update([preds, target], {})
    coalescer.flush()
    for mine, ref in zip(coalesced, references, strict=True):
        assert_same_state(mine, ref)


@pytest.mark.parametrize("make", [BinaryAccuracy, BinaryConfusionMatrix])
def test_binary_logits_and_probabilities_equal_per_step_updates(make):
    # one batch of logits (sigmoid applied by the update) and one of probabilities (used as they are)
    logits = torch.tensor([-2.0, 3.0, 0.3, -0.1, 1.5])
    probabilities = torch.tensor([0.4, 0.45, 0.7, 0.2, 0.55])
    target = torch.tensor([0, 1, 1, 0, 1])
    reference = make()
    reference.update(logits, target)
    reference.update(probabilities, target)
    naive = make()  # what buffering the float batches together would do: one sigmoid for all
    naive.update(torch.cat([logits, probabilities]), torch.cat([target, target]))
    naive_state, reference_state = _tm.state(naive), _tm.state(reference)
    assert not all(torch.equal(naive_state[k], reference_state[k]) for k in reference_state)

    coalesced = make()
    coalescer = Coalescer([coalesced], max_steps=8)
    coalescer.update([logits, target], {})
    coalescer.update([probabilities, target], {})
    assert coalescer.pending == 0  # float preds of a binary update are never buffered
    coalescer.flush()
    assert_same_state(coalesced, reference)


def test_binary_labels_are_buffered():
    coalescer = Coalescer([BinaryAccuracy()], max_steps=8)
    for _ in range(3):
        coalescer.update([torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0])], {})
    assert coalescer.pending == 3


class CountingCalls(Metric):
    """Integer sum states, but not row-additive: counts its update calls."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("calls", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.calls += 1

    def compute(self) -> torch.Tensor:
        return self.calls


class OwnUpdate(MulticlassAccuracy):
    """A known class with its update replaced."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds[:1], target[:1])


class ExtraFloatState(MulticlassAccuracy):
    """A known update with a float state added."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_state("weight", torch.tensor(0.0), dist_reduce_fx="sum")


class ExtraMaxState(MulticlassAccuracy):
    """A known update with an integer state reduced by max."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_state("peak", torch.tensor(0), dist_reduce_fx="max")


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        (MulticlassAccuracy(C), True),
        (MulticlassStatScores(C, multidim_average="samplewise"), False),  # list states
        (MeanSquaredError(), False),  # float sums
        (BinaryHingeLoss(), False),  # a float sum next to an integer one
        (BinaryAUROC(), False),  # concatenated lists
        (CountingCalls(), False),  # integer sums, update not known to be row-additive
        (OwnUpdate(C), False),
        (ExtraFloatState(C), False),
        (ExtraMaxState(C), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Metric) else str(v),
)
def test_eligible(metric, expected):
    assert eligible(metric) is expected


def test_coalescer_refuses_ineligible_metrics():
    with pytest.raises(ValueError, match="eligible"):
        Coalescer([CountingCalls()])


def test_memory_is_bounded():
    metric = MulticlassAccuracy(C)
    row_bytes = C * 4 + 8  # float32 logits and int64 labels
    coalescer = Coalescer([metric], max_steps=100, max_bytes=10 * 16 * row_bytes)
    g = torch.Generator().manual_seed(3)
    reference = MulticlassAccuracy(C)
    for _ in range(25):
        preds, target = multiclass_logits(g, 16)
        reference.update(preds, target)
        coalescer.update([preds, target], {})
        assert coalescer.pending <= 10
        assert sum(b.numel() * b.element_size() for b in coalescer._buffers) <= 10 * 16 * row_bytes
    coalescer.flush()
    assert_same_state(metric, reference)


def test_too_large_steps_go_straight_to_update():
    metric = MulticlassAccuracy(C)
    coalescer = Coalescer([metric], max_steps=8, max_bytes=100)  # not even two rows of 4 logits + a label
    preds, target = multiclass_logits(torch.Generator().manual_seed(4), 6)
    coalescer.update([preds, target], {})
    assert coalescer.pending == 0 and metric.update_count == 1


def test_unbufferable_steps_go_straight_to_update():
    metric, reference = MulticlassAccuracy(C), MulticlassAccuracy(C)
    coalescer = Coalescer([metric], max_steps=8)
    g = torch.Generator().manual_seed(5)
    preds, target = multiclass_logits(g, 5)
    coalescer.update([preds, target], {})
    reference.update(preds, target)
    labels = multiclass_labels(g, 4)  # another layout: the buffered step is flushed first
    coalescer.update(list(labels), {})
    reference.update(*labels)
    empty = (torch.empty(0, C), torch.empty(0, dtype=torch.long))
    with pytest.raises(RuntimeError) as per_step:
        reference.update(*empty)
    with pytest.raises(RuntimeError) as coalesced:  # the same error, on the same step
        coalescer.update(list(empty), {})
    assert str(coalesced.value) == str(per_step.value)
    coalescer.flush()
    assert_same_state(metric, reference)


def test_discard_forgets_buffered_steps():
    metric = MulticlassAccuracy(C)
    coalescer = Coalescer([metric], max_steps=8)
    preds, target = multiclass_logits(torch.Generator().manual_seed(6), 5)
    coalescer.update([preds, target], {})
    metric.reset()
    coalescer.discard()
    coalescer.flush()
    assert metric.update_count == 0 and int(metric.tp.sum()) == 0


def test_buffer_holds_copies_not_the_callers_tensors():
    metric, reference = MulticlassAccuracy(C), MulticlassAccuracy(C)
    coalescer = Coalescer([metric], max_steps=8)
    preds, target = multiclass_logits(torch.Generator().manual_seed(7), 5)
    reference.update(preds, target)
    coalescer.update([preds.requires_grad_()], {"target": target})
    target.fill_(0)  # the caller reuses its tensors
    coalescer.flush()
    assert_same_state(metric, reference)


def test_buffering_and_flushing_make_no_host_copies(sync_calls):
    metrics = [MulticlassAccuracy(C, average="micro", validate_args=False), MulticlassF1Score(C, validate_args=False)]
    coalescer = Coalescer(metrics, max_steps=3)
    g = torch.Generator().manual_seed(8)
    batches = [multiclass_logits(g, n) for n in SIZES]
    sync_calls.clear()
    for preds, target in batches:
        coalescer.update([preds, target], {})
    coalescer.flush()
    assert sum(sync_calls.values()) == 0, dict(sync_calls)


# --------------------------------------------------------------------------------------------------
# in the tracker

ML = 3


def tracker_metrics() -> dict[str, Metric]:
    return {
        "acc": MulticlassAccuracy(C, average="micro"),
        "f1": MulticlassF1Score(C),
        "precision": MulticlassPrecision(C),  # shares the update of `f1`
        "jaccard": MulticlassJaccardIndex(C),  # a confusion-matrix update
        "ml": MultilabelF1Score(ML),
        "mse": MeanSquaredError(),  # not coalesced: float sums
    }


NEEDS = {"ml": {"preds": "ml_preds", "target": "ml_target"}, "mse": ["mse_preds", "mse_target"]}


def tracker_batches(steps: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(steps):
        n = 4 if i == steps - 1 else 6
        preds, target = multiclass_logits(g, n)
        ml_preds, ml_target = multilabel_labels(g, n)
        batches.append(
            {
                "preds": preds,
                "target": target,
                "ml_preds": ml_preds,
                "ml_target": ml_target,
                "mse_preds": torch.randn(n, generator=g),
                "mse_target": torch.randn(n, generator=g),
            }
        )
    return batches


def reference_args(name: str, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "ml":
        return batch["ml_preds"], batch["ml_target"]
    if name == "mse":
        return batch["mse_preds"], batch["mse_target"]
    return batch["preds"], batch["target"]


class Reference:
    """The tracker's metrics updated one step at a time, ``forward`` on the logged steps."""

    def __init__(self) -> None:
        self.metrics = tracker_metrics()
        self.step_values: dict[str, list[float]] = {name: [] for name in self.metrics}

    def step(self, batch: dict[str, torch.Tensor], logged: bool) -> None:
        for name, metric in self.metrics.items():
            args = reference_args(name, batch)
            if logged:
                self.step_values[name].append(metric(*args).flatten().tolist())
            else:
                metric.update(*args)

    def values(self) -> dict[str, list[float]]:
        return {name: m.compute().flatten().tolist() for name, m in self.metrics.items()}


def epoch_values(results: dict[str, float]) -> dict[str, list[float]]:
    return {key.rsplit("/", 1)[0]: [value] for key, value in results.items()}


def leader_states(state: dict) -> dict[str, dict]:
    return {n: b for n, b in state["stages"]["train"]["epoch"]["bounds"].items() if n != "precision"}


def states_equal(saved: dict[str, dict], reference: Reference) -> bool:
    """Whether the checkpoint's states equal the reference's, bit for bit, with the same update counts."""
    for name, bound_state in saved.items():
        expected = reference.metrics[name]
        if bound_state["update_count"] != expected.update_count:
            return False
        for key, value in _tm.state(expected).items():
            mine = bound_state["states"][key]
            if mine.dtype != value.dtype or not torch.equal(mine, value):
                return False
    return True


def test_tracker_values_and_checkpoint_equal_per_step_updates():
    schedule = {"train": Schedule(every_n_steps=5)}
    batches = tracker_batches(23, seed=9)
    reference = Reference()
    tracker = MetricsTracker(tracker_metrics(), NEEDS, schedule=schedule)
    with tracker.epoch("train"):
        for i, batch in enumerate(batches[:12], start=1):
            tracker.step("train", batch)
            reference.step(batch, logged=i % 5 == 0)
        bounds = tracker._stages["train"].bounds
        assert bounds["acc"]._coalescer.pending > 0 and bounds["mse"]._coalescer is None  # steps are buffered
        state = tracker.state_dict()  # between two flushes
        assert states_equal(leader_states(state), reference)
        resumed = MetricsTracker(tracker_metrics(), NEEDS, schedule=schedule)
        resumed.load_state_dict(state)
        for batch in batches[12:]:
            tracker.step("train", batch)
    with resumed.epoch("train") as epoch:
        for i, batch in enumerate(batches[12:], start=13):
            resumed.step("train", batch)
            reference.step(batch, logged=i % 5 == 0)
    expected = reference.values()
    assert epoch_values(epoch.results) == expected
    for name in reference.metrics:
        logged = [v for _, v in tracker.history[f"{name}/train_step"]]
        assert logged == [v for values in reference.step_values[name] for v in values], name
        assert [v for _, v in resumed.history[f"{name}/train_step"]] == logged, name
    assert tracker.history["acc/train"][-1][1] == expected["acc"][0]


def two_rank_worker(rank: int, world: int) -> tuple[dict[str, float], bool, int, bool]:
    batches = tracker_batches(17, seed=11)[rank::world]
    tracker = MetricsTracker(tracker_metrics(), NEEDS, schedule={"train": Schedule(every_n_steps=3)})
    local = Reference()
    logged: dict[str, list[float]] = {name: [] for name in local.metrics}
    with tracker.epoch("train") as epoch:
        for i, batch in enumerate(batches, start=1):
            for key, value in tracker.step("train", batch).items():
                logged[key.split("/")[0]].append(float(value))
            local.step(batch, logged=i % 3 == 0)
            if i == 4:
                pending = tracker._stages["train"].bounds["acc"]._coalescer.pending
                checkpoint_ok = states_equal(leader_states(tracker.state_dict()), local)
    steps_ok = all(logged[name] == [v for vs in local.step_values[name] for v in vs] for name in local.metrics)
    return epoch.results, checkpoint_ok, pending, steps_ok


@pytest.mark.distributed
def test_two_ranks_equal_per_step_updates_of_all_batches(tmp_path):
    out = run_on_ranks(two_rank_worker, tmp_path)
    reference = Reference()
    for batch in tracker_batches(17, seed=11):
        reference.step(batch, logged=False)
    expected = reference.values()
    for results, checkpoint_ok, pending, steps_ok in out:
        assert pending > 0 and checkpoint_ok and steps_ok
        values, exact = epoch_values(results), dict(expected)
        torch.testing.assert_close(values.pop("mse"), exact.pop("mse"))  # a float sum: order matters
        assert values == exact  # integer states: exact across ranks (`precision` follows `f1`'s update)


def test_an_invalid_buffered_step_fails_the_epoch_with_the_metrics_error():
    tracker = MetricsTracker({"acc": MulticlassAccuracy(C, average="micro"), "f1": MulticlassF1Score(C)})
    bounds = tracker._stage("train").bounds
    g = torch.Generator().manual_seed(12)
    refused = r"`acc`.*buffered step.*preds.shape\[1\].*HINT: its updates are coalesced"
    with pytest.raises(MetricError, match=refused), tracker.epoch("train"):
        for classes in (C, C, C + 1):  # the last step has one class too many: refused at the epoch end
            preds, target = torch.randn(6, classes, generator=g), torch.randint(0, C, (6,), generator=g)
            tracker.step("train", {"preds": preds, "target": target})
            assert bounds["acc"]._coalescer is bounds["f1"]._coalescer  # one buffer for both updates
    assert "acc/train" not in tracker.history and "f1/train" not in tracker.history


def test_an_invalid_buffered_step_is_reported_at_its_flush():
    metric = MulticlassAccuracy(C)
    coalescer = Coalescer([metric], max_steps=2, name="acc")
    g = torch.Generator().manual_seed(13)
    coalescer.update([torch.randn(6, C, generator=g), torch.randint(0, C, (6,), generator=g)], {})
    coalescer.update([torch.randn(6, C, generator=g), torch.full((6,), 7)], {})  # a label out of range
    with pytest.raises(MetricError, match=r"Metric `acc`: the one update of its 2 buffered step\(s\) raised"):
        coalescer.update([torch.randn(6, C, generator=g), torch.randint(0, C, (6,), generator=g)], {})
