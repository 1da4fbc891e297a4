"""Misuse and bad input in one process: each case gets a correct value or a project error with a HINT.

Every value is checked against scikit-learn / NumPy on the same data; every error is a
``fabricmetrics.exceptions`` class whose message names the problem and ends with the fix.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.regression import MeanSquaredError

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.exceptions import ConfigurationError, OutputsError, StageError
from fabricmetrics.progress import ProgressDisplay
from tests.conftest import RecordingLogger, classification_batches


def run_epoch(tracker, stage, batches, **kwargs):
    with tracker.epoch(stage, **kwargs) as epoch:
        for b in batches:
            tracker.step(stage, b)
    return epoch.results


def interrupted_epoch(tracker, stage, batches):
    """Feed ``batches`` to an epoch of ``stage`` and return the state saved inside it (the job then dies)."""
    with pytest.raises(KeyboardInterrupt), tracker.epoch(stage):
        for b in batches:
            tracker.step(stage, b)
        state = tracker.state_dict()
        raise KeyboardInterrupt
    return state


def counters(tracker):
    return (
        tracker.global_step,
        {k: list(v) for k, v in tracker.history.items()},
        {name: (st.steps, st.epochs, st.open, st.samples) for name, st in tracker._stages.items()},
    )


# --------------------------------------------------------------------------------------------------
# more samples than num_samples


def test_more_samples_than_num_samples_in_exact_mode_is_an_error_and_logs_nothing():
    y, p = np.arange(20) % 3, (np.arange(20) * 7) % 3
    tracker = MetricsTracker({"acc": accuracy_score}, loggers=[logger := RecordingLogger()])
    with pytest.raises(
        OutputsError, match=r"received 20 samples in this epoch, more than the 10 .*num_samples=10"
    ) as err:
        run_epoch(
            tracker, "val", [{"y_true": y[:10], "y_pred": p[:10]}, {"y_true": y[10:], "y_pred": p[10:]}], num_samples=10
        )
    assert "HINT: pass num_samples=" in str(err.value)
    assert logger.rows == [] and "acc/val" not in tracker.history
    # exactly num_samples is fine, and the value is that of every sample
    assert run_epoch(tracker, "val", [{"y_true": y, "y_pred": p}], num_samples=20) == {"acc/val": accuracy_score(y, p)}


# --------------------------------------------------------------------------------------------------
# key collisions


def test_a_vector_metric_next_to_a_metric_named_like_its_element_is_refused_at_the_epoch_end():
    tracker = MetricsTracker(
        {"f1": lambda x: torch.stack([x.min(), x.max()]), "f1_0": lambda x: x.mean()},
        loggers=[logger := RecordingLogger()],
    )
    with pytest.raises(ConfigurationError, match=r"\['f1_0'\].*HINT: rename one of the metrics"):
        run_epoch(tracker, "val", [{"x": torch.arange(4.0)}])
    assert "f1_0/val" not in tracker.history and all("f1_0/val" not in row for _, row in logger.rows)


def test_a_dict_metric_next_to_a_metric_named_like_its_entry_is_refused_at_the_epoch_end():
    tracker = MetricsTracker({"m": lambda x: {"x": x.min()}, "m_x": lambda x: x.mean()})
    with pytest.raises(ConfigurationError, match=r"\['m_x'\].*HINT: rename one of the metrics"):
        run_epoch(tracker, "val", [{"x": torch.arange(4.0)}])
    assert "m_x/val" not in tracker.history


def test_colliding_step_values_are_refused_at_the_step():
    tracker = MetricsTracker(
        {"m": lambda x: {"x": x.min()}, "m_x": lambda x: x.mean()}, schedule={"train": Schedule(every_n_steps=1)}
    )
    collision = pytest.raises(ConfigurationError, match=r"step values of stage `train` produce the key\(s\) \['m_x'\]")
    with collision, tracker.epoch("train"):
        tracker.step("train", {"x": torch.arange(4.0)})
    assert dict(tracker.history) == {}


def test_a_stage_named_like_another_stages_step_series_is_refused():
    tracker = MetricsTracker({"m": lambda x: x.mean()})
    run_epoch(tracker, "train", [{"x": torch.ones(2)}])
    with pytest.raises(
        ConfigurationError, match=r"Stage 'train_step' would log its epoch values under the keys .*HINT"
    ):
        tracker.epoch("train_step").__enter__()
    # the other way round, and up front through the schedules
    with pytest.raises(ConfigurationError, match=r"rename stage 'val_step'"):
        MetricsTracker({"m": lambda x: x.mean()}, schedule={"val_step": Schedule(), "val": Schedule()})
    assert list(tracker.history) == ["m/train"]


def test_stage_names_with_a_slash_are_refused():
    # metric `a` in stage `b/c` and metric `a/b` in stage `c` would both log `a/b/c`
    tracker = MetricsTracker({"a": lambda x: x.mean(), "a/b": lambda x: x.sum()})
    with pytest.raises(ConfigurationError, match=r"Stage name 'b/c' contains '/'.*HINT: use another separator"):
        tracker.step("b/c", {"x": torch.ones(2)})
    results = run_epoch(tracker, "c", [{"x": torch.tensor([1.0, 2.0])}])
    assert results == {"a/c": 1.5, "a/b/c": 3.0}


# --------------------------------------------------------------------------------------------------
# Python lists in exact mode


def test_python_lists_in_exact_mode():
    tracker = MetricsTracker({"acc": accuracy_score})
    results = run_epoch(tracker, "val", [{"preds": [0, 1, 2], "target": [0, 1, 1]}, {"preds": [2], "target": [2]}])
    assert results == {"acc/val": accuracy_score([0, 1, 1, 2], [0, 1, 2, 2])}
    assert run_epoch(tracker, "val", [{"preds": [0, 1, 2], "target": [0, 1, 1]}]) == pytest.approx({"acc/val": 2 / 3})


def test_lists_of_strings_in_exact_mode():
    y = ["cat", "dog", "hippopotamus", "ox", "dog"]
    p = ["cat", "cat", "hippopotamus", "dog", "dog"]
    tracker = MetricsTracker({"acc": accuracy_score})
    results = run_epoch(tracker, "val", [{"y_true": y[:2], "y_pred": p[:2]}, {"y_true": y[2:], "y_pred": p[2:]}])
    assert results == {"acc/val": accuracy_score(y, p)}


# --------------------------------------------------------------------------------------------------
# refused checkpoints change nothing


def progressed(metrics, batches):
    """A tracker that has run two train epochs and is inside a validation epoch."""
    tracker = MetricsTracker(metrics, schedule={"train": Schedule(every_n_steps=1, per_step=True)})
    for _ in range(2):
        run_epoch(tracker, "train", batches)
    return tracker, interrupted_epoch(tracker, "val", batches[:2])


def regression_batches(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"preds": torch.randn(n, generator=g), "target": torch.randn(n, generator=g)} for n in sizes]


def test_a_checkpoint_of_another_metric_class_is_refused_and_changes_nothing():
    _, state = progressed({"m": MulticlassAccuracy(4)}, classification_batches([6, 5, 4]))
    other, _ = progressed({"m": MeanSquaredError()}, regression_batches([6, 5, 4]))
    with pytest.raises(KeyboardInterrupt), other.epoch("test"):  # another stage in progress too
        other.step("test", regression_batches([3])[0])
        raise KeyboardInterrupt
    before = counters(other)
    assert (
        before[0] == 6
        and before[1]
        and before[2] == {"train": (6, 2, False, 0), "val": (2, 0, False, 0), "test": (1, 0, False, 0)}
    )
    with pytest.raises(
        ConfigurationError, match=r"Metric `m` has no state .*the checkpoint is of another metric.*HINT"
    ):
        other.load_state_dict(state)
    assert counters(other) == before
    # and it keeps working from where it was
    batch = regression_batches([5], seed=1)[0]
    assert run_epoch(other, "val", [batch]) == pytest.approx(
        {"m/val": float(((batch["preds"] - batch["target"]) ** 2).mean())}
    )


def test_a_checkpoint_of_the_same_class_with_other_settings_is_refused():
    # the states have the same names but other shapes (micro: one count; macro: one per class): loading them
    # would give a wrong value silently
    batches = classification_batches([6, 6], num_classes=4)
    state = interrupted_epoch(MetricsTracker({"acc": MulticlassAccuracy(4, average="micro")}), "val", batches[:1])
    other = MetricsTracker({"acc": MulticlassAccuracy(4, average="macro")})
    with pytest.raises(ConfigurationError, match=r"`acc`.*HINT"):
        other.load_state_dict(state)
    assert counters(other) == (0, {}, {"val": (0, 0, False, 0)})


@pytest.mark.parametrize(
    ("state", "match"),
    [
        (None, r"load_state_dict expects the mapping of tracker.state_dict\(\), got None"),
        ({}, r"Unknown tracker state format None"),
        ([1, 2], r"expects the mapping of tracker.state_dict\(\), got \[1, 2\]"),
        ({"format": 1, "global_step": 3, "history": {}}, r"The tracker state lacks \['stages'\]"),
        ({"format": 1, "stages": {}}, r"The tracker state lacks \['global_step', 'history'\]"),
        ({"format": 1, "global_step": 3, "history": {}, "stages": []}, r"lacks \['stages'\]"),
        ({"format": 1, "global_step": True, "history": {}, "stages": {}}, r"global_step must be an int"),
        (
            {"format": 1, "global_step": 3, "history": {"k": [1]}, "stages": {}},
            r"history is not key → \[\[step, value\]",
        ),
        (
            {"format": 1, "global_step": 3, "history": {}, "stages": {"val": {"steps": 1}}},
            r"state of stage `val` is incomplete",
        ),
    ],
    ids=[
        "None",
        "empty",
        "list",
        "no stages",
        "no counters",
        "stages not a dict",
        "bool step",
        "bad history",
        "bad stage",
    ],
)
def test_incomplete_states_are_configuration_errors_that_change_nothing(state, match):
    tracker, _ = progressed({"m": MulticlassAccuracy(4)}, classification_batches([6, 5, 4]))
    before = counters(tracker)
    with pytest.raises(ConfigurationError, match=match) as err:
        tracker.load_state_dict(state)
    assert "HINT:" in str(err.value)
    assert counters(tracker) == before


# --------------------------------------------------------------------------------------------------
# hooks out of order, steps outside an epoch


def test_epoch_end_hooks_out_of_order_are_stage_errors():
    tracker = MetricsTracker({"acc": accuracy_score})
    with pytest.raises(StageError, match=r"No epoch of stage 'val' is open, so none can end.*HINT: open one first"):
        tracker.on_validation_epoch_end()
    tracker.on_validation_epoch_start()
    tracker.on_validation_batch_end(outputs={"y_true": np.array([1, 0]), "y_pred": np.array([1, 1])})
    tracker.on_validation_epoch_end()
    with pytest.raises(StageError, match=r"No epoch of stage 'val' is open"):
        tracker.on_validation_epoch_end()  # twice
    with pytest.raises(StageError, match=r"No epoch of stage 'test' is open"):
        tracker.on_test_epoch_end()
    assert tracker.history["acc/val"] == [(0, 0.5)]  # the epoch that was opened was logged once
    tracker.on_train_epoch_start()
    with pytest.raises(StageError, match="already open"):
        tracker.on_train_epoch_start()


def test_steps_outside_an_epoch_warn_once_per_stage():
    tracker = MetricsTracker({"acc": accuracy_score})
    out = {"y_true": np.array([1, 0]), "y_pred": np.array([1, 1])}
    with pytest.warns(RuntimeWarning) as record:
        for stage in ("val", "val", "test", "val", "test"):
            tracker.step(stage, out)
    messages = [str(w.message) for w in record if "outside an epoch" in str(w.message)]
    assert len(messages) == 2
    assert "step('val') outside an epoch of stage 'val'" in messages[0] and "step('test')" in messages[1]
    assert "only step-level values are logged" in messages[0] and "HINT: wrap the loop in" in messages[0]
    # with an epoch open, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_epoch(tracker, "val", [out]) == {"acc/val": 0.5}


# --------------------------------------------------------------------------------------------------
# 0-d per-step values (a batch-mean loss) without batch_size


def batch_loss(loss):
    return loss


def loss_batches(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for n in sizes:
        preds, target = torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g)
        loss = torch.nn.functional.cross_entropy(preds, target)  # a 0-d batch mean
        batches.append({"loss": loss, "preds": preds, "target": target})
    return batches


SIZES = [7, 2, 12, 1]


@pytest.mark.parametrize("with_accuracy", [False, True], ids=["loss only", "loss and accuracy"])
def test_a_batch_mean_loss_is_weighted_by_the_steps_batch_size(with_accuracy):
    metrics = {"loss": batch_loss, **({"acc": MulticlassAccuracy(3, average="micro")} if with_accuracy else {})}
    tracker = MetricsTracker(metrics, schedule={"train": Schedule(per_step=True)})
    batches = loss_batches(SIZES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unweighted" warning: the batch size is known
        results = run_epoch(tracker, "train", batches)
    losses = np.array([float(b["loss"]) for b in batches])
    expected = np.sum(losses * np.array(SIZES)) / np.sum(SIZES)
    assert expected != pytest.approx(losses.mean())  # the test tells the weighted mean from the plain one
    assert results["loss/train"] == pytest.approx(expected)
    if with_accuracy:
        preds = torch.cat([b["preds"] for b in batches]).argmax(1)
        target = torch.cat([b["target"] for b in batches])
        assert results["acc/train"] == pytest.approx(accuracy_score(target, preds))


@pytest.mark.parametrize(
    "extra", [{}, {"a": torch.zeros(3), "b": torch.zeros(5)}], ids=["no batched output", "several sizes"]
)
def test_a_batch_mean_loss_without_a_batch_size_warns_once_and_is_unweighted(extra):
    tracker = MetricsTracker({"loss": batch_loss}, schedule={"train": Schedule(per_step=True)})
    losses = [0.5, 2.0, 1.25]
    with pytest.warns(RuntimeWarning) as record:
        results = run_epoch(tracker, "train", [{"loss": torch.tensor(v), **extra} for v in losses])
    messages = [str(w.message) for w in record if "weighs every step equally" in str(w.message)]
    assert len(messages) == 1 and "HINT: pass the batch size" in messages[0]
    assert results == pytest.approx({"loss/train": np.mean(losses)})
    # an explicit batch_size weighs
    with tracker.epoch("train") as epoch:
        for v, n in zip(losses, [1, 3, 4], strict=True):
            tracker.step("train", {"loss": torch.tensor(v), **extra}, batch_size=n)
    assert epoch.results == pytest.approx({"loss/train": np.average(losses, weights=[1, 3, 4])})


# --------------------------------------------------------------------------------------------------
# results, epoch(loader=)


def test_results_hold_the_latest_epoch_values():
    tracker = MetricsTracker({"n": SumMetric()})
    assert tracker.results == {}
    run_epoch(tracker, "val", [{"value": torch.ones(3)}])
    run_epoch(tracker, "train", [{"value": torch.ones(5)}])
    run_epoch(tracker, "val", [{"value": torch.ones(7)}])
    assert tracker.results == {"n/val": 7.0, "n/train": 5.0}
    results = tracker.results
    results["n/val"] = 0.0  # a copy
    assert tracker.results["n/val"] == 7.0


def test_epoch_reads_num_samples_and_total_from_the_loader(monkeypatch):
    seen = []
    original = ProgressDisplay.epoch_started

    def recording(self, stage, epoch, total=None):
        seen.append(total)
        original(self, stage, epoch, total)

    monkeypatch.setattr(ProgressDisplay, "epoch_started", recording)
    data = TensorDataset(torch.arange(10.0))
    subset = [1, 3, 4, 8, 9, 2, 0]
    loader = DataLoader(data, batch_size=3, sampler=SubsetRandomSampler(subset))
    tracker = MetricsTracker({"n": SumMetric()}, progress=True)
    with tracker.epoch("val", loader=loader) as epoch:
        for (x,) in loader:
            tracker.step("val", {"value": x})
    assert epoch.num_samples == 7 and seen == [3]  # len(subset), len(loader)
    assert epoch.results == {"n/val": float(sum(subset))}
    # given values win over the loader's
    with (
        pytest.warns(RuntimeWarning, match="had no samples"),
        tracker.epoch("val", loader=loader, num_samples=10, total=9) as epoch,
    ):
        pass
    assert epoch.num_samples == 10 and seen == [3, 9]
    # the loader's num_samples bounds the epoch
    too_many = pytest.raises(
        OutputsError, match=r"received 8 samples in this epoch, more than the 7 that num_samples=7"
    )
    with too_many, tracker.epoch("val", loader=loader):
        tracker.step("val", {"value": torch.ones(8)})
