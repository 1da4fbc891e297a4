"""``step()`` does no host-device synchronisation on steps that log nothing (semantic 6)."""

from __future__ import annotations

import pytest
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fabricmetrics import MetricsTracker, Schedule
from tests.conftest import classification_batches


def alignment(z1, z2):
    return (z1 - z2).norm(dim=1).pow(2).mean()


def make_tracker(compute_on_cpu: bool) -> MetricsTracker:
    return MetricsTracker(
        {
            "acc": MulticlassAccuracy(num_classes=4, validate_args=False),
            "f1": MulticlassF1Score(num_classes=4, validate_args=False),
            "align": alignment,
            "stats": lambda preds: {"mean": preds.mean(), "classes": 4},  # a tensor and a number
        },
        needs={"align": [lambda o: o["preds"], lambda o: o["preds"] * 0.5], "stats": ["preds"]},
        compute_on_cpu=compute_on_cpu,
        schedule={"train": Schedule(every_n_steps=5, per_step=True), "val": Schedule(every_n_steps=None)},
    )


@pytest.mark.parametrize("compute_on_cpu", [False, True])
def test_silent_steps_make_no_host_copies(sync_calls, compute_on_cpu):
    batches = classification_batches([8] * 9)
    tracker = make_tracker(compute_on_cpu)
    for stage in ("train", "val"):
        with tracker.epoch(stage):
            for i, batch in enumerate(batches, start=1):
                before = sum(sync_calls.values())
                logged = tracker.step(stage, batch)
                made = sum(sync_calls.values()) - before
                if logged:
                    assert stage == "train" and i % 5 == 0
                else:
                    assert made == 0, f"{stage} step {i} made host copies: {dict(sync_calls)}"
            sync_calls.clear()
    assert "acc/val" in tracker.history and "align/train" in tracker.history


def test_logged_step_values_are_converted_in_one_batch(sync_calls):
    tracker = make_tracker(False)
    batches = classification_batches([8] * 5)
    with tracker.epoch("train"):
        for batch in batches[:4]:
            tracker.step("train", batch)
        sync_calls.clear()
        logged = tracker.step("train", batches[4])
        calls = dict(sync_calls)
    assert set(logged) == {
        "acc/train_step", "f1/train_step", "align/train_step", "stats_mean/train_step", "stats_classes/train_step"
    }  # fmt: skip
    # one `.tolist()` for all the tensor values, no `.item()` per value
    assert calls == {"tolist": 1}
