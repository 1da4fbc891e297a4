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


@pytest.mark.parametrize(
    ("metric", "ys", "ps"),
    [
        (macro_f1, [np.array([0, 1, 2, 2]), np.array([1, 1, 0])], [np.array([0, 2, 2, 2]), np.array([1, 0, 0])]),
        (  # string labels (of another width in the second batch)
            accuracy_score,
            [np.array(["cat", "dog", "dog"]), np.array(["bird", "cat"])],
            [np.array(["cat", "cat", "dog"]), np.array(["bird", "dog"])],
        ),
    ],
    ids=["numbers", "strings"],
)
def test_exact_mode_numpy_chunks_survive_a_checkpoint(tmp_path, metric, ys, ps):
    tracker = MetricsTracker({"m": metric})
    with pytest.raises(KeyboardInterrupt), tracker.epoch("val"):
        tracker.step("val", {"y_true": ys[0], "y_pred": ps[0]})
        torch.save(tracker.state_dict(), tmp_path / "c.pt")
        raise KeyboardInterrupt
    resumed = MetricsTracker({"m": metric})
    resumed.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True))
    with resumed.epoch("val") as epoch:
        resumed.step("val", {"y_true": ys[1], "y_pred": ps[1]})
    assert epoch.results == {"m/val": pytest.approx(metric(np.concatenate(ys), np.concatenate(ps)))}


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
    closed = MetricsTracker({"acc": MulticlassAccuracy(num_classes=4)})
    with closed.epoch("val"):
        closed.step("val", batches[0])
    # same name, another kind: a torchmetric's state into an exact-mode callable
    other_kind = MetricsTracker({"acc": accuracy_score})
    with pytest.raises(
        ConfigurationError, match=r"metrics of another kind \(checkpoint, now\): \{'acc': \('torchmetric', 'exact'\)\}"
    ):
        other_kind.load_state_dict(closed.state_dict())
    assert other_kind.global_step == 0 and dict(other_kind.history) == {}
    # between closed epochs, metrics may be added: the history continues
    added = MetricsTracker({"acc": MulticlassAccuracy(num_classes=4), "f1": MulticlassAccuracy(num_classes=4)})
    added.load_state_dict(closed.state_dict())
    assert added.history["acc/val"] == closed.history["acc/val"]
    # an epoch in progress needs exactly the same metrics
    with pytest.raises(KeyboardInterrupt), closed.epoch("val"):
        closed.step("val", batches[1])
        state = closed.state_dict()
        raise KeyboardInterrupt
    with pytest.raises(
        ConfigurationError, match=r"its open epoch holds the metrics \['acc'\], this tracker has \['acc', 'f1'\]"
    ):
        MetricsTracker(
            {"acc": MulticlassAccuracy(num_classes=4), "f1": MulticlassAccuracy(num_classes=4)}
        ).load_state_dict(state)
    renamed = MetricsTracker({"accuracy": MulticlassAccuracy(num_classes=4)})
    with pytest.raises(
        ConfigurationError, match=r"its open epoch holds the metrics \['acc'\], this tracker has \['accuracy'\]"
    ):
        renamed.load_state_dict(state)


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
