"""MetricsTracker in one process: values against scikit-learn/NumPy, schedules, stages, keys, errors."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.exceptions import (
    ConfigurationError,
    MetricError,
    NeedsError,
    OutputsError,
    OutputsTypeError,
    StageError,
)
from tests.conftest import RecordingLogger, classification_batches

SIZES = [7, 16, 3, 16, 9]


def concat(batches, key):
    return torch.cat([b[key] for b in batches]).numpy()


def run_epoch(tracker, stage, batches, **kwargs):
    with tracker.epoch(stage, **kwargs) as epoch:
        for b in batches:
            tracker.step(stage, b)
    return epoch.results


def macro_f1(y_true, y_pred):
    return f1_score(y_true, y_pred, average="macro")


# --------------------------------------------------------------------------------------------------
# values against references


def test_torchmetrics_epoch_value_equals_sklearn_on_the_epoch():
    batches = classification_batches(SIZES)
    tracker = MetricsTracker({"acc": MulticlassAccuracy(num_classes=4, average="micro"), "f1": MulticlassF1Score(4)})
    results = run_epoch(tracker, "val", batches)
    y, p = concat(batches, "target"), concat(batches, "preds").argmax(1)
    assert results["acc/val"] == pytest.approx(accuracy_score(y, p), abs=1e-6)
    assert results["f1/val"] == pytest.approx(f1_score(y, p, average="macro"), abs=1e-6)


def test_exact_mode_computes_once_on_the_whole_epoch():
    batches = classification_batches(SIZES)
    outputs = [{"y_true": b["target"], "y_pred": b["preds"].argmax(1)} for b in batches]
    tracker = MetricsTracker({"f1": functools.partial(f1_score, average="macro")})
    results = run_epoch(tracker, "val", outputs)
    y, p = concat(outputs, "y_true"), concat(outputs, "y_pred")
    assert results == {"f1/val": pytest.approx(f1_score(y, p, average="macro"), abs=1e-12)}


def test_per_step_mode_is_the_batch_size_weighted_mean():
    batches = classification_batches(SIZES)
    outputs = [{"y_true": b["target"], "y_pred": b["preds"].argmax(1)} for b in batches]
    tracker = MetricsTracker({"acc": accuracy_score}, schedule={"train": Schedule(every_n_steps=None, per_step=True)})
    results = run_epoch(tracker, "train", outputs)
    per_batch = [accuracy_score(o["y_true"].numpy(), o["y_pred"].numpy()) for o in outputs]
    expected = np.average(per_batch, weights=SIZES)
    assert results["acc/train"] == pytest.approx(expected, abs=1e-12)
    # ... which differs from the unweighted mean of batch values (so the weighting is really tested).
    assert abs(expected - np.mean(per_batch)) > 1e-3


def test_explicit_batch_size_sets_the_weights():
    values = [1.0, 2.0, 4.0]
    weights = [1, 3, 6]
    tracker = MetricsTracker({"loss": lambda loss: loss}, schedule={"train": Schedule(per_step=True)})
    with tracker.epoch("train") as epoch:
        for v, w in zip(values, weights, strict=True):
            tracker.step("train", {"loss": torch.tensor(v)}, batch_size=w)
    assert epoch.results == {"loss/train": pytest.approx(np.average(values, weights=weights))}


def test_scalar_outputs_without_batch_size_weigh_one_each():
    tracker = MetricsTracker({"loss": lambda loss: loss}, schedule={"train": Schedule(per_step=True)})
    results = run_epoch(tracker, "train", [{"loss": torch.tensor(v)} for v in (1.0, 2.0, 6.0)])
    assert results == {"loss/train": pytest.approx(3.0)}


def test_multi_valued_metrics_are_logged_per_element_and_per_key():
    def per_class_recall(y_true, y_pred):
        return np.array([np.mean(y_pred[y_true == c] == c) for c in range(3)])

    def report(y_true, y_pred):
        return {"acc": float(np.mean(y_true == y_pred)), "n": float(len(y_true))}

    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    tracker = MetricsTracker([per_class_recall, report])
    results = run_epoch(tracker, "val", [{"y_true": y[:4], "y_pred": p[:4]}, {"y_true": y[4:], "y_pred": p[4:]}])
    assert results == {
        "per_class_recall_0/val": 0.5,
        "per_class_recall_1/val": 1.0,
        "per_class_recall_2/val": 0.5,
        "report_acc/val": pytest.approx(4 / 6),
        "report_n/val": 6.0,
    }


def test_per_step_multi_valued_metric_is_weighted_per_element():
    def stats(x):
        return torch.stack([x.mean(), x.max()])

    xs = [torch.tensor([1.0, 3.0]), torch.tensor([5.0, 6.0, 7.0, 10.0])]
    tracker = MetricsTracker({"s": stats}, schedule={"train": Schedule(per_step=True)})
    results = run_epoch(tracker, "train", [{"x": x} for x in xs])
    assert results == {
        "s_0/train": pytest.approx((2 * 2 + 4 * 7) / 6),
        "s_1/train": pytest.approx((2 * 3 + 4 * 10) / 6),
    }


def test_stages_have_their_own_state():
    train = classification_batches([10, 10], seed=1)
    val = classification_batches([5, 8], seed=2)
    metric = MulticlassAccuracy(num_classes=4, average="micro")
    tracker = MetricsTracker(
        {"acc": metric, "sk": accuracy_score}, needs={"sk": ["target", lambda o: o["preds"].argmax(1)]}
    )
    with tracker.epoch("train") as tr_epoch:
        for b in train:
            tracker.step("train", b)
        with tracker.epoch("val") as val_epoch:  # nested: validation inside the train epoch
            for b in val:
                tracker.step("val", b)
    for batches, results, stage in ((train, tr_epoch.results, "train"), (val, val_epoch.results, "val")):
        expected = accuracy_score(concat(batches, "target"), concat(batches, "preds").argmax(1))
        assert results[f"acc/{stage}"] == pytest.approx(expected, abs=1e-6)
    # the user's metric object is never updated itself
    assert metric._update_count == 0


def test_epochs_do_not_leak_into_each_other():
    b1, b2 = classification_batches([12], seed=3), classification_batches([12], seed=4)
    tracker = MetricsTracker({"acc": MulticlassAccuracy(num_classes=4, average="micro")})
    run_epoch(tracker, "val", b1)
    second = run_epoch(tracker, "val", b2)
    expected = accuracy_score(concat(b2, "target"), concat(b2, "preds").argmax(1))
    assert second["acc/val"] == pytest.approx(expected, abs=1e-6)


def test_compute_on_cpu_gives_the_same_values():
    batches = classification_batches(SIZES)
    outputs = [{"y_true": b["target"], "y_pred": b["preds"].argmax(1)} for b in batches]
    a = run_epoch(MetricsTracker({"f1": macro_f1}), "val", outputs)
    b = run_epoch(MetricsTracker({"f1": macro_f1}, compute_on_cpu=True), "val", outputs)
    assert a == b


def test_sklearn_functions_receive_numpy_and_other_callables_receive_tensors():
    seen = {}

    def sk_like(y_true, y_pred):
        seen["sk"] = (type(y_true), type(y_pred))
        return 0.0

    def plain(y_true, y_pred):
        seen["plain"] = (type(y_true), type(y_pred))
        return 0.0

    sk_like.__module__ = "sklearn.metrics.fake"
    out = {"y_true": torch.tensor([0, 1]), "y_pred": torch.tensor([0, 0])}
    run_epoch(MetricsTracker({"sk": sk_like, "plain": plain}), "val", [out])
    assert seen == {"sk": (np.ndarray, np.ndarray), "plain": (torch.Tensor, torch.Tensor)}


def test_shared_sources_are_collected_once():
    calls = []

    def pred_fn(out):
        calls.append(1)
        return out["preds"].argmax(1)

    batches = classification_batches([4, 4])
    tracker = MetricsTracker(
        {"acc": accuracy_score, "f1": macro_f1},
        needs={"y_true": "target", "y_pred": pred_fn},
    )
    results = run_epoch(tracker, "val", batches)
    assert len(calls) == 2  # once per step, shared by both metrics
    y, p = concat(batches, "target"), concat(batches, "preds").argmax(1)
    assert results == {"acc/val": pytest.approx(accuracy_score(y, p)), "f1/val": pytest.approx(macro_f1(y, p))}


# --------------------------------------------------------------------------------------------------
# naming


def test_names_from_functions_classes_and_clashes():
    tracker = MetricsTracker(
        [accuracy_score, accuracy_score, functools.partial(accuracy_score), MeanMetric(), lambda x: x]
    )
    assert tracker.metric_names == ["accuracy_score", "accuracy_score_1", "accuracy_score_2", "MeanMetric", "lambda"]
    assert MetricsTracker(accuracy_score).metric_names == ["accuracy_score"]


def test_bad_metrics_are_configuration_errors():
    with pytest.raises(ConfigurationError, match=r"neither a torchmetrics\.Metric nor a callable"):
        MetricsTracker({"acc": 3})
    with pytest.raises(ConfigurationError, match="at least one metric"):
        MetricsTracker({})
    with pytest.raises(ConfigurationError, match="non-empty strings"):
        MetricsTracker({"": accuracy_score})
    with pytest.raises(ConfigurationError, match=r"schedule\['val'\] must be a Schedule"):
        MetricsTracker(accuracy_score, schedule={"val": {"every_n_epochs": 1}})
    with pytest.raises(ConfigurationError, match=r"is the class MulticlassAccuracy, not a metric object"):
        MetricsTracker({"acc": MulticlassAccuracy})


def test_a_first_step_that_fails_to_resolve_leaves_no_partial_plan():
    tracker = MetricsTracker({"acc": MulticlassAccuracy(num_classes=3, average="micro"), "f1": macro_f1})
    y = torch.tensor([0, 1, 2, 2])
    with pytest.raises(NeedsError, match="several keys it could mean"):  # `f1`'s y_true: target or labels?
        tracker.step("val", {"logits": torch.randn(4, 3), "target": y, "labels": y})
    pred = torch.tensor([0, 1, 1, 2])
    results = run_epoch(tracker, "val", [{"preds": pred, "target": y}])  # corrected outputs
    assert results == pytest.approx({"acc/val": accuracy_score(y, pred), "f1/val": macro_f1(y, pred)})


# --------------------------------------------------------------------------------------------------
# schedules, keys, steps


def test_keys_steps_and_global_step():
    batches = classification_batches([4] * 6)
    logger = RecordingLogger()
    tracker = MetricsTracker(
        {"acc": MulticlassAccuracy(num_classes=4, average="micro")},
        loggers=[logger],
        schedule={"train": Schedule(every_n_steps=2, every_n_epochs=1)},
    )
    with tracker.epoch("train"):
        returned = [tracker.step("train", b) for b in batches]
    with tracker.epoch("val"):
        tracker.step("val", batches[0])
    assert tracker.global_step == 6
    assert [bool(r) for r in returned] == [False, True, False, True, False, True]
    expected_step_value = accuracy_score(batches[1]["target"], batches[1]["preds"].argmax(1))
    assert returned[1] == {"acc/train_step": pytest.approx(expected_step_value)}
    assert [s for s, _ in tracker.history["acc/train_step"]] == [2, 4, 6]
    assert [s for s, _ in tracker.history["acc/train"]] == [6]
    assert [s for s, _ in tracker.history["acc/val"]] == [6]  # val logged at the train step count
    assert [step for step, _ in logger.rows] == [2, 4, 6, 6, 6]


def test_every_n_epochs_and_failed_epochs_do_not_count():
    tracker = MetricsTracker({"acc": accuracy_score}, schedule={"val": Schedule(every_n_epochs=2)})
    out = {"y_true": np.array([1, 0]), "y_pred": np.array([1, 1])}
    assert run_epoch(tracker, "val", [out]) == {}
    with pytest.raises(RuntimeError, match="boom"), tracker.epoch("val"):
        tracker.step("val", out)
        raise RuntimeError("boom")
    assert tracker.history == {}
    assert run_epoch(tracker, "val", [out]) == {"acc/val": 0.5}  # the 2nd *completed* epoch


def test_exception_inside_an_epoch_logs_nothing_resets_and_the_next_epoch_works():
    logger = RecordingLogger()
    tracker = MetricsTracker({"acc": MulticlassAccuracy(num_classes=4, average="micro")}, loggers=[logger])
    b1, b2 = classification_batches([8], seed=5), classification_batches([8], seed=6)
    with pytest.raises(ValueError, match="data error"), tracker.epoch("val"):
        tracker.step("val", b1[0])
        raise ValueError("data error")
    assert logger.rows == [] and len(tracker.history) == 0
    results = run_epoch(tracker, "val", b2)
    assert results["acc/val"] == pytest.approx(accuracy_score(b2[0]["target"], b2[0]["preds"].argmax(1)))


def test_step_outside_an_epoch_gives_step_values_only():
    batches = classification_batches([5, 5, 5])
    tracker = MetricsTracker(
        {"acc": MulticlassAccuracy(num_classes=4, average="micro")},
        schedule={"train": Schedule(every_n_steps=1)},
    )
    values = [tracker.step("train", b) for b in batches]
    assert [list(v) for v in values] == [["acc/train_step"]] * 3
    assert "acc/train" not in tracker.history
    # nothing accumulates outside an epoch (a cat-state metric would grow with every step)
    assert tracker._stages["train"].bounds["acc"].metric._update_count == 0
    # a later epoch only counts its own batches
    fresh = classification_batches([6], seed=9)
    results = run_epoch(tracker, "train", fresh)
    assert results["acc/train"] == pytest.approx(accuracy_score(fresh[0]["target"], fresh[0]["preds"].argmax(1)))


def test_exact_mode_step_values_are_the_batch_values():
    batches = [{"y_true": np.array([0, 1, 1, 0]), "y_pred": np.array([0, 1, 0, 0])}] * 2
    tracker = MetricsTracker({"acc": accuracy_score}, schedule={"val": Schedule(every_n_steps=1)})
    with tracker.epoch("val"):
        assert tracker.step("val", batches[0]) == {"acc/val_step": 0.75}


def test_stage_errors():
    tracker = MetricsTracker({"acc": accuracy_score})
    out = {"y_true": np.array([1]), "y_pred": np.array([1])}
    with tracker.epoch("train"):
        with pytest.raises(StageError, match=r"step\('val'\) was called while the epoch of \['train'\] is open"):
            tracker.step("val", out)
        with pytest.raises(StageError, match="already open"), tracker.epoch("train"):
            pass
    with pytest.raises(ConfigurationError, match="non-empty string"):
        tracker.step("", out)


def test_outputs_must_be_a_mapping():
    tracker = MetricsTracker({"acc": accuracy_score})
    with pytest.raises(OutputsTypeError, match=r"expects a mapping of output name → value, got tuple"):
        tracker.step("train", (torch.zeros(2), torch.zeros(2)))
    with pytest.raises(OutputsTypeError, match="batch_size must be an int of at least 0"):
        tracker.step("train", {"y_true": [1], "y_pred": [1]}, batch_size=-1)


def test_exact_mode_rejects_scalars_with_a_hint():
    tracker = MetricsTracker({"m": lambda preds, average: 0.0})
    with pytest.raises(OutputsError, match=r"received 'macro' \(str\) in exact mode.*HINT: .*functools.partial"):
        run_epoch(tracker, "val", [{"preds": torch.zeros(3), "average": "macro"}])


def test_exact_mode_rejects_arguments_of_different_lengths():
    tracker = MetricsTracker({"acc": accuracy_score})
    with pytest.raises(OutputsError, match=r"Metric `acc` received arguments with different numbers of rows"):
        run_epoch(tracker, "val", [{"y_true": np.zeros(3), "y_pred": np.zeros(4)}])


def test_metric_failures_name_the_metric():
    def broken(preds):
        raise IndexError("index 5 is out of bounds")

    tracker = MetricsTracker({"broken": broken}, schedule={"train": Schedule(per_step=True)})
    with pytest.raises(MetricError, match=r"Metric `broken` failed on step 1 of stage `train`: IndexError: index 5"):
        run_epoch(tracker, "train", [{"preds": torch.zeros(2)}])
    exact = MetricsTracker({"broken": broken})
    with pytest.raises(MetricError, match=r"Metric `broken` failed at the end of epoch 1 of stage `val`: IndexError"):
        run_epoch(exact, "val", [{"preds": torch.zeros(2)}])
    assert exact.history == {}


def test_non_scalar_results_are_errors():
    tracker = MetricsTracker({"m": lambda x: x.reshape(2, 2)})
    with pytest.raises(MetricError, match=r"Metric `m` returned an array of shape \(2, 2\)"):
        run_epoch(tracker, "val", [{"x": torch.zeros(4)}])


def test_non_finite_values_are_logged_with_one_warning():
    tracker = MetricsTracker({"m": lambda x: x.mean()}, schedule={"val": Schedule(every_n_steps=1)})
    with (
        pytest.warns(
            RuntimeWarning, match=r"Non-finite values at step 0, logged as they are: `m/val_step` = nan"
        ) as record,
        tracker.epoch("val"),
    ):
        for _ in range(3):
            tracker.step("val", {"x": torch.tensor([math.nan])})
    assert sum("m/val_step" in str(w.message) for w in record) == 1
    assert all(math.isnan(v) for _, v in tracker.history["m/val_step"])


def test_empty_batches_are_skipped_and_counted():
    tracker = MetricsTracker({"acc": accuracy_score})
    batches = [
        {"y_true": np.array([1, 0]), "y_pred": np.array([1, 1])},
        {"y_true": np.zeros(0, dtype=int), "y_pred": np.zeros(0, dtype=int)},
    ]
    with pytest.warns(RuntimeWarning, match="skipped 1 empty batches"), tracker.epoch("val") as epoch:
        for b in batches:
            tracker.step("val", b)
    assert epoch.results == {"acc/val": 0.5} and epoch.empty_batches == 1 and epoch.samples == 2


def test_mixing_devices_is_an_error():
    tracker = MetricsTracker({"m": lambda x: x.sum()}, schedule={"train": Schedule(every_n_steps=None, per_step=True)})
    with tracker.epoch("train"):
        tracker.step("train", {"x": torch.zeros(2)})
        with pytest.raises(OutputsError, match=r"got a tensor on meta, but stage `train` has run on cpu"):
            tracker.step("train", {"x": torch.zeros(2, device="meta")})


def test_more_samples_than_num_samples_is_an_error_naming_both_counts():
    tracker = MetricsTracker({"n": SumMetric()})
    with (
        pytest.raises(OutputsError, match=r"received 20 samples in this epoch, more than the 10 that num_samples=10"),
        tracker.epoch("val", num_samples=10),
    ):
        for _ in range(2):
            tracker.step("val", {"value": torch.ones(10)})
    with tracker.epoch("val", num_samples=20) as epoch:  # the next epoch works, with the right count
        for _ in range(2):
            tracker.step("val", {"value": torch.ones(10)})
    assert epoch.results == {"n/val": 20.0}


def test_logs_nothing_on_epochs_with_no_samples():
    tracker = MetricsTracker({"acc": accuracy_score})
    with pytest.warns(RuntimeWarning, match="had no samples on any rank"), tracker.epoch("val") as epoch:
        pass
    assert epoch.results == {} and tracker.history == {}


def test_extra_values_can_be_logged():
    logger = RecordingLogger()
    tracker = MetricsTracker({"acc": accuracy_score}, loggers=[logger])
    tracker.log({"lr": 0.1})
    tracker.log({"lr": torch.tensor(0.05)}, step=7)
    assert tracker.history["lr"] == [(0, 0.1), (7, pytest.approx(0.05))]
    assert logger.rows[0] == (0, {"lr": 0.1})


def test_no_warning_in_a_plain_run():
    batches = classification_batches(SIZES)
    tracker = MetricsTracker(
        {"acc": MulticlassAccuracy(num_classes=4), "mse": mean_squared_error},
        needs={"mse": [lambda o: o["target"].float(), lambda o: o["preds"].argmax(1).float()]},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_epoch(tracker, "train", batches)
        run_epoch(tracker, "val", batches)


# --------------------------------------------------------------------------------------------------
# shared updates


def test_metrics_with_the_same_update_share_it_and_stay_exact():
    from sklearn.metrics import precision_score, recall_score
    from torchmetrics.classification import MulticlassPrecision, MulticlassRecall

    batches = classification_batches(SIZES, num_classes=5)
    tracker = MetricsTracker(
        {
            "acc": MulticlassAccuracy(5, average="micro"),
            "f1": MulticlassF1Score(5),
            "prec": MulticlassPrecision(5),
            "rec": MulticlassRecall(5),
        }
    )
    results = run_epoch(tracker, "val", batches)
    stage = tracker._stages["val"]
    leaders = {name: b.leader.name if b.leader else None for name, b in stage.bounds.items()}
    # `acc` (micro) keeps other states than the macro ones, which share one update
    assert leaders == {"acc": None, "f1": None, "prec": "f1", "rec": "f1"}
    y, p = concat(batches, "target"), concat(batches, "preds").argmax(1)
    assert results["acc/val"] == pytest.approx(accuracy_score(y, p), abs=1e-6)
    assert results["f1/val"] == pytest.approx(f1_score(y, p, average="macro"), abs=1e-6)
    assert results["prec/val"] == pytest.approx(precision_score(y, p, average="macro", zero_division=0), abs=1e-6)
    assert results["rec/val"] == pytest.approx(recall_score(y, p, average="macro", zero_division=0), abs=1e-6)


def test_metrics_that_agree_on_a_first_batch_are_not_merged():
    from torchmetrics import MaxMetric, MinMetric

    # On a one-sample first batch, min and max states are equal (torchmetrics' own grouping would merge them).
    values = [torch.tensor([3.0]), torch.tensor([1.0, 7.0])]
    tracker = MetricsTracker({"max": MaxMetric(), "min": MinMetric()}, needs=["x"])
    assert run_epoch(tracker, "val", [{"x": v} for v in values]) == {"max/val": 7.0, "min/val": 1.0}

    # ignore_index changes the update: no label 0 in the first batch must not merge them either.
    first = {"preds": torch.tensor([1, 2, 2]), "target": torch.tensor([1, 2, 1])}
    second = {"preds": torch.tensor([0, 1, 0]), "target": torch.tensor([0, 1, 2])}
    tracker = MetricsTracker(
        {"all": MulticlassAccuracy(3, average="micro"), "no0": MulticlassAccuracy(3, average="micro", ignore_index=0)}
    )
    results = run_epoch(tracker, "val", [first, second])
    assert results == {"all/val": pytest.approx(4 / 6), "no0/val": pytest.approx(3 / 5)}


def test_exact_mode_rejects_values_that_change_shape_or_dtype():
    tracker = MetricsTracker({"m": lambda z: z.sum()})
    with pytest.raises(
        OutputsError, match=r"Metric `m` \(argument `z`, 'z'\) received \('torch', \(3,\), 'torch.float64'\)"
    ):
        run_epoch(tracker, "val", [{"z": torch.zeros(2, 3)}, {"z": torch.zeros(2, 3, dtype=torch.float64)}])


@pytest.mark.parametrize("value", [np.array(["a"]), torch.tensor([1 + 2j]), "0.5", None])
def test_values_that_are_not_real_numbers_are_errors(value):
    tracker = MetricsTracker({"m": lambda x: value})
    with pytest.raises(MetricError, match=r"Metric `m` returned"):
        run_epoch(tracker, "val", [{"x": torch.zeros(2)}])


class _FakeProbe:
    def __init__(self, keys):
        self.keys = keys
        self.calls = []

    def maybe_run(self, epoch, collectives, **kwargs):
        self.calls.append(epoch)
        return {k: float(epoch) for k in self.keys}


def test_probe_results_are_logged_at_the_end_of_train_epochs():
    probe = _FakeProbe(["Ridge/R2"])
    tracker = MetricsTracker({"acc": accuracy_score}, probes=[probe])
    out = {"y_true": np.array([1]), "y_pred": np.array([1])}
    for _ in range(2):
        run_epoch(tracker, "train", [out, out])
        run_epoch(tracker, "val", [out])
    assert probe.calls == [1, 2]
    assert tracker.history["Ridge/R2"] == [(2, 1.0), (4, 2.0)]


def test_probe_key_collisions_are_errors_when_the_tracker_is_built():
    with pytest.raises(ConfigurationError, match=r"probes\[0\] and probes\[1\] both log 'Ridge/R2'.*prefix"):
        MetricsTracker({"acc": accuracy_score}, probes=[_FakeProbe(["Ridge/R2"]), _FakeProbe(["Ridge/R2"])])
    with pytest.raises(ConfigurationError, match=r"also the key of metric `acc` in a stage named 'val'"):
        MetricsTracker({"acc": accuracy_score}, probes=[_FakeProbe(["acc/val"])])
    with pytest.raises(ConfigurationError, match=r"probes\[0\] is a str; probes are ProbingScheduler objects"):
        MetricsTracker({"acc": accuracy_score}, probes=["knn"])
