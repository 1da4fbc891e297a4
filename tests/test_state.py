"""state_dict / load_state_dict: safe loading, Fabric save/load, resuming an epoch in progress."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning_fabric import Fabric
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.exceptions import ConfigurationError
from tests.conftest import classification_batches


def binary_batches(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"preds": torch.rand(n, generator=g), "target": torch.randint(0, 2, (n,), generator=g)} for n in sizes]


def make_tracker():
    return MetricsTracker(
        {
            "auroc": BinaryAUROC(),  # list ("cat") states
            "acc": MulticlassAccuracy(num_classes=2, average="micro"),  # sum states
            "sk_mae": mean_absolute_error,  # exact mode on val, per-step on train
            "mean_pred": lambda preds: preds.mean(),  # per-step on train
        },
        needs={"sk_mae": ["target", "preds"], "acc": [lambda o: (o["preds"] > 0.5).long(), "target"]},
        schedule={"train": Schedule(every_n_steps=2, per_step=True), "val": Schedule(every_n_steps=None)},
    )


def test_state_dict_loads_with_weights_only(tmp_path):
    tracker = make_tracker()
    batches = binary_batches([5, 6, 7])
    with tracker.epoch("train"):
        for b in batches:
            tracker.step("train", b)
    with tracker.epoch("val"):
        tracker.step("val", batches[0])
    path = tmp_path / "tracker.pt"
    torch.save(tracker.state_dict(), path)
    state = torch.load(path, weights_only=True)
    fresh = make_tracker()
    fresh.load_state_dict(state)
    assert fresh.global_step == 3
    assert dict(fresh.history) == dict(tracker.history)


@pytest.mark.parametrize("stage", ["train", "val"])
def test_an_epoch_in_progress_resumes_exactly(tmp_path, stage):
    batches = binary_batches([8, 3, 9, 4, 6], seed=1)
    reference = make_tracker()
    with reference.epoch(stage) as expected:
        for b in batches:
            reference.step(stage, b)

    first = make_tracker()
    with pytest.raises(KeyboardInterrupt), first.epoch(stage):
        for i, b in enumerate(batches):
            first.step(stage, b)
            if i == 2:
                torch.save(first.state_dict(), tmp_path / "ckpt.pt")
                raise KeyboardInterrupt  # the job is killed mid-epoch

    resumed = make_tracker()
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    with resumed.epoch(stage) as got:
        for b in batches[3:]:
            resumed.step(stage, b)
    assert got.results.keys() == expected.results.keys()
    for key, value in expected.results.items():
        assert got.results[key] == pytest.approx(value, abs=1e-7), key
    assert dict(resumed.history) == dict(reference.history)
    assert resumed.global_step == reference.global_step


def test_fabric_save_and_load_carry_the_tracker(tmp_path):
    fabric = Fabric(accelerator="cpu", devices=1)
    tracker = make_tracker()
    with tracker.epoch("train"):
        for b in binary_batches([4, 4, 4, 4]):
            tracker.step("train", b)
    fabric.save(tmp_path / "ckpt", {"tracker": tracker})
    restored = make_tracker()
    fabric.load(tmp_path / "ckpt", {"tracker": restored})
    assert restored.global_step == 4 and dict(restored.history) == dict(tracker.history)


def macro_f1(y_true, y_pred):
    return f1_score(y_true, y_pred, average="macro")


def agreement(y_true, y_pred):  # scikit-learn refuses object arrays of integers
    return float(np.mean(y_true == y_pred))


def as_objects(values):
    """An object array of NumPy scalars, as a pandas ``object`` column gives."""
    out = np.empty(len(values), dtype=object)
    out[:] = [np.str_(v) if isinstance(v, str) else np.int64(v) for v in values]
    return out


@pytest.mark.parametrize(
    ("metric", "ys", "ps"),
    [
        (
            macro_f1,
            [np.array([0, 1, 2, 2]), np.array([1, 1, 0]), np.array([2, 0])],
            [np.array([0, 2, 2, 2]), np.array([1, 0, 0]), np.array([2, 1])],
        ),
        (  # string labels, wider in the second batch than in the first
            accuracy_score,
            [np.array(["cat", "dog"]), np.array(["bird", "bird"]), np.array(["cat"])],
            [np.array(["cat", "dog"]), np.array(["bird", "birch"]), np.array(["cat"])],
        ),
        (
            accuracy_score,
            [as_objects(["cat", "dog"]), as_objects(["bird", "bird"]), as_objects(["cat"])],
            [as_objects(["cat", "dog"]), as_objects(["bird", "birch"]), as_objects(["dog"])],
        ),
        (agreement, [as_objects([1, 2]), as_objects([3])], [as_objects([1, 1]), as_objects([3])]),
    ],
    ids=["numbers", "strings", "object strings", "object integers"],
)
def test_exact_mode_numpy_chunks_survive_a_checkpoint(tmp_path, metric, ys, ps):
    tracker = MetricsTracker({"m": metric})
    with pytest.raises(KeyboardInterrupt), tracker.epoch("val"):
        for y, p in zip(ys[:-1], ps[:-1], strict=True):
            tracker.step("val", {"y_true": y, "y_pred": p})
        torch.save(tracker.state_dict(), tmp_path / "c.pt")
        raise KeyboardInterrupt
    resumed = MetricsTracker({"m": metric})
    resumed.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True))
    with resumed.epoch("val") as epoch:
        resumed.step("val", {"y_true": ys[-1], "y_pred": ps[-1]})
    assert epoch.results == {"m/val": pytest.approx(metric(np.concatenate(ys), np.concatenate(ps)))}


def test_exact_mode_datetimes_survive_a_checkpoint(tmp_path):
    def span_days(t):
        return float((t.max() - t.min()) / np.timedelta64(1, "D"))

    days = [
        np.array(["2026-01-01", "2026-01-05"], dtype="datetime64[s]"),
        np.array(["2026-02-01"], dtype="datetime64[s]"),
    ]
    tracker = MetricsTracker({"span": span_days})
    with pytest.raises(KeyboardInterrupt), tracker.epoch("val"):
        tracker.step("val", {"t": days[0]})
        torch.save(tracker.state_dict(), tmp_path / "c.pt")
        raise KeyboardInterrupt
    resumed = MetricsTracker({"span": span_days})
    resumed.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True))
    with resumed.epoch("val") as epoch:
        resumed.step("val", {"t": days[1]})
    assert epoch.results == {"span/val": 31.0}


def test_unknown_state_format_is_an_error():
    with pytest.raises(ConfigurationError, match="Unknown tracker state format"):
        make_tracker().load_state_dict({"format": 99})


def test_torchmetrics_states_are_restored_onto_the_metric():
    tracker = MetricsTracker({"acc": MulticlassAccuracy(num_classes=4, average="micro")})
    batches = classification_batches([6, 6])
    with pytest.raises(KeyboardInterrupt), tracker.epoch("val"):
        tracker.step("val", batches[0])
        state = tracker.state_dict()
        raise KeyboardInterrupt
    assert state["stages"]["val"]["epoch"]["bounds"]["acc"]["update_count"] == 1


def test_a_state_of_other_metrics_is_refused_and_changes_nothing():
    batches = classification_batches([6, 6])
    tracker = MetricsTracker({"acc": MulticlassAccuracy(num_classes=4)})
    with tracker.epoch("val"):
        tracker.step("val", batches[0])
    # between epochs, metrics may change: added, or of another kind; the history continues
    changed = MetricsTracker({"acc": accuracy_score, "f1": MulticlassAccuracy(num_classes=4)})
    changed.load_state_dict(tracker.state_dict())
    assert changed.history["acc/val"] == tracker.history["acc/val"]
    # an epoch in progress needs exactly the same metrics, of the same kinds
    with pytest.raises(KeyboardInterrupt), tracker.epoch("val"):
        tracker.step("val", batches[1])
        state = tracker.state_dict()
        raise KeyboardInterrupt
    candidates = {
        "other kind": {"acc": accuracy_score},
        "one more": {"acc": MulticlassAccuracy(num_classes=4), "f1": MulticlassAccuracy(num_classes=4)},
        "renamed": {"accuracy": MulticlassAccuracy(num_classes=4)},
    }
    older = {**state, "stages": {"val": {**state["stages"]["val"]}}}  # as saved by an earlier version
    del older["stages"]["val"]["kinds"]
    for name, metrics in candidates.items():
        for checkpoint in (state, older):
            if checkpoint is older and name == "other kind":
                continue  # an earlier version did not record kinds
            refused = MetricsTracker(metrics)
            with pytest.raises(ConfigurationError, match=r"epoch of stage `val` in progress holds the metrics"):
                refused.load_state_dict(checkpoint)
            assert refused.global_step == 0 and dict(refused.history) == {}, name  # nothing changed


def test_an_epoch_in_progress_resumes_only_with_its_num_samples():
    tracker = make_tracker()
    batches = binary_batches([4, 4])
    with pytest.raises(KeyboardInterrupt), tracker.epoch("val", num_samples=8):
        tracker.step("val", batches[0])
        state = tracker.state_dict()
        raise KeyboardInterrupt
    resumed = make_tracker()
    resumed.load_state_dict(state)
    refused = pytest.raises(ConfigurationError, match=r"opened with num_samples=8, and is resumed with num_samples=9")
    with refused, resumed.epoch("val", num_samples=9):
        pass
    with resumed.epoch("val", num_samples=8) as epoch:  # still resumable with the right length
        resumed.step("val", batches[1])
    assert epoch.samples == 8
