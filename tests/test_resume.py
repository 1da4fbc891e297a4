"""End to end: a run killed mid-epoch, resumed from an older checkpoint, logs exactly what an uninterrupted run does."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.classification import MulticlassAccuracy

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.loggers import CSVLogger, TensorBoardLogger

EPOCHS, STEPS = 5, 6


def batch(epoch: int, step: int, stage: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * epoch + 10 * step + (stage == "val"))
    return {"preds": torch.randn(8, 3, generator=g), "target": torch.randint(0, 3, (8,), generator=g)}


def make(root: Path) -> MetricsTracker:
    return MetricsTracker(
        {"acc": MulticlassAccuracy(3, average="micro"), "mean_logit": lambda preds: preds.mean()},
        loggers=[CSVLogger(root, name="run", version=0), TensorBoardLogger(root, name="run", version=0)],
        schedule={"train": Schedule(every_n_steps=2, per_step=True), "val": Schedule(per_step=True)},
    )


def run_epochs(
    tracker: MetricsTracker,
    epochs: range,
    *,
    checkpoint_after: int | None = None,
    path=None,
    kill_in: int | None = None,
) -> None:
    for epoch in epochs:
        with tracker.epoch("train"):
            for step in range(STEPS):
                tracker.step("train", batch(epoch, step, "train"))
                if epoch == kill_in and step == 3:
                    raise KeyboardInterrupt  # the job is killed in the middle of this epoch
        with tracker.epoch("val"):
            for step in range(2):
                tracker.step("val", batch(epoch, step, "val"))
        if epoch == checkpoint_after:
            torch.save(tracker.state_dict(), path)


def csv_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "run" / "version_0" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def tb_scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(root / "run" / "version_0"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_resume_from_an_older_checkpoint_gives_the_rows_of_an_uninterrupted_run(tmp_path):
    reference_root, root = tmp_path / "reference", tmp_path / "interrupted"
    reference = make(reference_root)
    with reference:
        run_epochs(reference, range(EPOCHS))

    ckpt = tmp_path / "tracker.pt"
    first = make(root)
    with pytest.raises(KeyboardInterrupt), first:
        # checkpoint after epoch 1; epoch 2 is logged, then the run dies inside epoch 3
        run_epochs(first, range(EPOCHS), checkpoint_after=1, path=ckpt, kill_in=3)
    assert len(csv_rows(root)) > 0  # the killed run flushed what it had logged
    killed_steps = {int(r["step"]) for r in csv_rows(root)}

    resumed = make(root)
    resumed.load_state_dict(torch.load(ckpt, weights_only=True))
    assert resumed.global_step == 2 * STEPS
    with resumed:
        run_epochs(resumed, range(2, EPOCHS))

    assert csv_rows(root) == csv_rows(reference_root)
    assert dict(resumed.history) == dict(reference.history)
    reference_tb, resumed_tb = tb_scalars(reference_root), tb_scalars(root)
    assert resumed_tb.keys() == reference_tb.keys()
    for tag, points in reference_tb.items():
        assert resumed_tb[tag] == points, tag
    # the interrupted run had logged rows past the checkpoint, which were replaced, not duplicated
    assert max(killed_steps) > 2 * STEPS
