"""End to end: a run killed mid-epoch, resumed from an older checkpoint, logs exactly what an uninterrupted run does."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
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
    checkpoint_after_train: int | None = None,
    path=None,
    kill_in: int | None = None,
    hard_kill_in: int | None = None,
    skip_train_of: int | None = None,
) -> None:
    for epoch in epochs:
        if epoch != skip_train_of:
            with tracker.epoch("train"):
                for step in range(STEPS):
                    tracker.step("train", batch(epoch, step, "train"))
                    if epoch == kill_in and step == 3:
                        raise KeyboardInterrupt  # the job is killed in the middle of this epoch
                    if epoch == hard_kill_in and step == 3:
                        os._exit(3)  # SIGKILL-like: no finally, no logger flush
        if epoch == checkpoint_after_train:
            torch.save(tracker.state_dict(), path)
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


def assert_same_logs(
    root: Path,
    tracker: MetricsTracker,
    reference_root: Path,
    reference: MetricsTracker,
    *,
    twice_in_tensorboard: tuple[int, set[str]] = (-1, set()),
) -> None:
    """CSV rows, history and TensorBoard scalars of a resumed run equal those of the uninterrupted one.

    ``twice_in_tensorboard``: ``(step, tags)`` whose point at that step TensorBoard holds twice
    (it purges by step, so what was logged at the checkpoint's step after the checkpoint stays).
    """
    assert csv_rows(root) == csv_rows(reference_root)
    assert dict(tracker.history) == dict(reference.history)
    reference_tb, resumed_tb = tb_scalars(reference_root), tb_scalars(root)
    assert resumed_tb.keys() == reference_tb.keys()
    step, tags = twice_in_tensorboard
    for tag, points in reference_tb.items():
        expected = [p for point in points for p in ([point, point] if tag in tags and point[0] == step else [point])]
        assert resumed_tb[tag] == expected, tag


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

    assert_same_logs(root, resumed, reference_root, reference)
    # the interrupted run had logged rows past the checkpoint, which were replaced, not duplicated
    assert max(killed_steps) > 2 * STEPS


def test_a_hard_kill_after_a_checkpoint_between_train_and_val_loses_and_repeats_nothing(tmp_path):
    """The checkpoint is taken at a step where more is logged after it (validation, at the same step)."""
    reference_root, root, ckpt = tmp_path / "reference", tmp_path / "killed", tmp_path / "tracker.pt"
    reference = make(reference_root)
    with reference:
        run_epochs(reference, range(EPOCHS))

    child = (
        "from pathlib import Path\n"
        "from tests.test_resume import EPOCHS, make, run_epochs\n"
        f"tracker = make(Path({str(root)!r}))\n"
        "with tracker:\n"
        f"    run_epochs(tracker, range(EPOCHS), checkpoint_after_train=1, path={str(ckpt)!r}, hard_kill_in=3)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", child], cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr  # killed in epoch 3, after the checkpoint of epoch 1
    # every epoch that ended is on disk: the checkpoint's rows and those of epoch 2 (which the resume drops)
    assert int(csv_rows(root)[-1]["step"]) == 3 * STEPS

    # TensorBoard reads event files in name order, and names carry the time in seconds and the pid:
    # a resume in the same second as the killed process (only in a test) could sort before it
    time.sleep(1.1)
    resumed = make(root)
    resumed.load_state_dict(torch.load(ckpt, weights_only=True))
    with resumed:
        run_epochs(resumed, range(1, EPOCHS), skip_train_of=1)  # the loop resumes with epoch 1's validation

    # the validation values at the checkpoint's step: once in the CSV file, twice in TensorBoard
    val_tags = {"acc/val", "mean_logit/val"}
    assert_same_logs(root, resumed, reference_root, reference, twice_in_tensorboard=(2 * STEPS, val_tags))
