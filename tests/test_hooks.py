"""The tracker as a Fabric callback: the Lightning hook names drive stages, steps and epochs."""

from __future__ import annotations

import pytest
from lightning_fabric import Fabric
from torchmetrics.classification import MulticlassAccuracy

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.exceptions import OutputsTypeError
from tests.conftest import classification_batches


def make() -> MetricsTracker:
    return MetricsTracker(
        {"acc": MulticlassAccuracy(4, average="micro")}, schedule={"train": Schedule(every_n_steps=2)}
    )


def test_hooks_give_the_same_history_as_the_context_managers():
    batches = classification_batches([5, 6, 7, 8])
    by_hooks = make()
    fabric = Fabric(accelerator="cpu", devices=1, callbacks=[by_hooks])
    for _ in range(2):
        fabric.call("on_train_epoch_start")
        for i, b in enumerate(batches):
            fabric.call("on_train_batch_end", outputs=b, batch=None, batch_idx=i)
        fabric.call("on_train_epoch_end")
        fabric.call("on_validation_epoch_start", num_samples=11)
        for b in batches[:2]:
            fabric.call("on_validation_batch_end", b, None, 0)  # outputs positionally, Lightning-style
        fabric.call("on_validation_epoch_end")
    fabric.call("on_test_epoch_start")
    fabric.call("on_test_batch_end", outputs=batches[0])
    fabric.call("on_test_epoch_end")

    by_blocks = make()
    for _ in range(2):
        with by_blocks.epoch("train"):
            for b in batches:
                by_blocks.step("train", b)
        with by_blocks.epoch("val", num_samples=11):
            for b in batches[:2]:
                by_blocks.step("val", b)
    with by_blocks.epoch("test"):
        by_blocks.step("test", batches[0])

    assert dict(by_hooks.history) == dict(by_blocks.history)
    assert {"acc/train", "acc/val", "acc/test", "acc/train_step"} == set(by_hooks.history)


def test_batch_hooks_need_outputs():
    tracker = make()
    with pytest.raises(OutputsTypeError, match=r"on_train_batch_end needs the step's outputs"):
        tracker.on_train_batch_end(None, batch_idx=0)
