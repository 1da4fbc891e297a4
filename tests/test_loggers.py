"""Loggers: Fabric's TensorBoard/CSV through the tracker, the resume-safe CSVLogger, faults."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from lightning_fabric import Fabric
from sklearn.metrics import accuracy_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.exceptions import LogDirectoryError
from fabricmetrics.loggers import CSVLogger, TensorBoardLogger, resume_loggers
from tests.conftest import RecordingLogger


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def out(acc_hits: int, n: int = 4):
    y = np.ones(n, dtype=int)
    p = np.concatenate([np.ones(acc_hits, dtype=int), np.zeros(n - acc_hits, dtype=int)])
    return {"y_true": y, "y_pred": p}


def test_tensorboard_and_csv_receive_the_history(tmp_path):
    tb, csv_logger = TensorBoardLogger(tmp_path, name="run"), CSVLogger(tmp_path, name="run")
    tracker = MetricsTracker(
        {"acc": accuracy_score}, loggers=[tb, csv_logger], schedule={"train": Schedule(every_n_steps=2, per_step=True)}
    )
    with tracker:
        for epoch in range(2):
            with tracker.epoch("train"):
                for hits in (1, 2, 3, 4):
                    tracker.step("train", out(hits))
            with tracker.epoch("val"):
                tracker.step("val", out(epoch + 2))
    # both loggers share one version folder
    assert tb.log_dir == csv_logger.log_dir == os.path.join(tmp_path, "run", "version_0")
    rows = read_csv(os.path.join(csv_logger.log_dir, "metrics.csv"))
    from_csv = {(k, int(r["step"]), float(v)) for r in rows for k, v in r.items() if k != "step" and v != ""}
    from_history = {(k, s, v) for k, points in tracker.history.items() for s, v in points}
    assert from_csv == from_history
    acc = EventAccumulator(tb.log_dir)
    acc.Reload()
    for key, points in tracker.history.items():
        events = acc.Scalars(key)
        assert [(e.step, pytest.approx(e.value)) for e in events] == points


def test_fabric_loggers_are_used_by_default(tmp_path):
    logger = CSVLogger(tmp_path)
    fabric = Fabric(accelerator="cpu", devices=1, loggers=[logger])
    tracker = MetricsTracker({"acc": accuracy_score}, fabric=fabric)
    with tracker, tracker.epoch("val"):
        tracker.step("val", out(3))
    assert read_csv(os.path.join(logger.log_dir, "metrics.csv")) == [{"acc/val": "0.75", "step": "0"}]


def test_unwritable_log_directory_fails_at_enter(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    tracker = MetricsTracker({"acc": accuracy_score}, loggers=[CSVLogger(blocker / "logs")])
    with pytest.raises(LogDirectoryError, match=r"CSVLogger cannot write to .*a_file/logs.*HINT: choose a writable"):
        tracker.__enter__()
    assert isinstance(LogDirectoryError("x"), OSError)


def test_finalize_status_success_and_failed():
    ok, failed = RecordingLogger(), RecordingLogger()
    with MetricsTracker({"acc": accuracy_score}, loggers=[ok]):
        pass
    with pytest.raises(KeyboardInterrupt), MetricsTracker({"acc": accuracy_score}, loggers=[failed]):
        raise KeyboardInterrupt
    assert ok.finalized == ["success"] and failed.finalized == ["failed"]


def test_a_failing_logger_warns_once_and_the_others_keep_going():
    broken, good = RecordingLogger(fail_on_log=True), RecordingLogger()
    tracker = MetricsTracker({"acc": accuracy_score}, loggers=[broken, good])
    with pytest.warns(
        RuntimeWarning, match=r"RecordingLogger.log_metrics failed \(OSError: \[Errno 28\] No space"
    ) as w:
        for hits in (1, 2, 3):
            with tracker.epoch("val"):
                tracker.step("val", out(hits))
    assert len([x for x in w if "log_metrics failed" in str(x.message)]) == 1
    assert [v for _, v in tracker.history["acc/val"]] == [0.25, 0.5, 0.75]
    assert len(good.rows) == 3


def test_csv_logger_keeps_earlier_rows_on_resume(tmp_path):
    first = CSVLogger(tmp_path, name="r", version=0)
    for step in range(1, 6):
        first.log_metrics({"a": float(step)}, step=step)
    first.finalize("failed")  # the run died after step 5; its last checkpoint is at step 3
    resumed = CSVLogger(tmp_path, name="r", version=0)
    resumed.resume(3)
    for step in range(4, 7):
        resumed.log_metrics({"a": float(step), "b": 1.0}, step=step)
    resumed.finalize("success")
    rows = read_csv(os.path.join(resumed.log_dir, "metrics.csv"))
    assert [(r["step"], r["a"], r["b"]) for r in rows] == [
        ("1", "1.0", ""),
        ("2", "2.0", ""),
        ("3", "3.0", ""),
        ("4", "4.0", "1.0"),
        ("5", "5.0", "1.0"),
        ("6", "6.0", "1.0"),
    ]


def test_csv_logger_without_resume_replaces_the_file_like_fabric(tmp_path):
    first = CSVLogger(tmp_path, name="r", version=0)
    first.log_metrics({"a": 1.0}, step=1)
    first.finalize("success")
    again = CSVLogger(tmp_path, name="r", version=0)
    with pytest.warns(UserWarning, match="does not resume from a checkpoint, so it is replaced"):
        again.log_metrics({"a": 2.0}, step=1)
        again.finalize("success")
    assert read_csv(os.path.join(again.log_dir, "metrics.csv")) == [{"a": "2.0", "step": "1"}]


def test_resume_truncates_an_open_writer(tmp_path):
    logger = CSVLogger(tmp_path, name="r", version=0)
    for step in (1, 2, 3):
        logger.log_metrics({"a": float(step)}, step=step)
    logger.resume(1)
    logger.log_metrics({"a": 20.0}, step=2)
    logger.finalize("success")
    assert [(r["step"], r["a"]) for r in read_csv(os.path.join(logger.log_dir, "metrics.csv"))] == [
        ("1", "1.0"),
        ("2", "20.0"),
    ]


def test_csv_resume_keeps_only_the_rows_logged_at_the_checkpoint_step_before_it(tmp_path):
    logger = CSVLogger(tmp_path, name="r", version=0)
    for step, a in [(1, 1.0), (2, 2.0), (2, 2.1), (2, 2.2), (3, 3.0)]:  # checkpoint after (2, 2.0)
        logger.log_metrics({"a": a}, step=step)
    logger.finalize("failed")
    resumed = CSVLogger(tmp_path, name="r", version=0)
    resumed.resume(2, rows_at_step=1)
    resumed.log_metrics({"a": 2.5}, step=2)
    resumed.finalize("success")
    assert [(r["step"], r["a"]) for r in read_csv(os.path.join(resumed.log_dir, "metrics.csv"))] == [
        ("1", "1.0"),
        ("2", "2.0"),
        ("2", "2.5"),
    ]


def test_tensorboard_purge_step_is_set_on_resume(tmp_path):
    tb = TensorBoardLogger(tmp_path, name="r", version=0)
    tracker = MetricsTracker({"acc": accuracy_score}, loggers=[tb])
    state = tracker.state_dict()
    state["global_step"] = 41
    tracker.load_state_dict(state)
    assert tb._kwargs["purge_step"] == 42


def test_csv_rows_at_the_checkpoint_step_are_counted_whoever_logs_them(tmp_path):
    def make():
        return MetricsTracker({"m": lambda x: x.mean()}, loggers=[CSVLogger(tmp_path, name="r", version=0)])

    tracker = make()
    csv_logger = tracker.loggers[0]
    with tracker:
        tracker.global_step = 10
        tracker.log({"a": 1.0})  # through the tracker
        csv_logger.log_metrics({"lr": 0.1}, step=10)  # straight to the logger (as fabric.log_dict does)
        tracker.log({"late": 5.0}, step=3)  # an earlier step does not reset the count at step 10
        state = tracker.state_dict()
        tracker.log({"after": 2.0})  # logged after the checkpoint: dropped at the resume
    assert state["logger_rows_at_global_step"] == [2]
    resumed = make()
    with resumed:
        resumed.load_state_dict(state)
        resumed.log({"b": 3.0})
    rows = read_csv(os.path.join(resumed.loggers[0].log_dir, "metrics.csv"))
    assert [(r["step"], [k for k, v in r.items() if v and k != "step"]) for r in rows] == [
        ("10", ["a"]),
        ("10", ["lr"]),
        ("3", ["late"]),
        ("10", ["b"]),
    ]


def test_a_checkpoint_of_an_earlier_version_keeps_every_row_at_its_step(tmp_path):
    def make():
        return MetricsTracker({"m": lambda x: x.mean()}, loggers=[CSVLogger(tmp_path, name="r", version=0)])

    tracker = make()
    with tracker:
        tracker.global_step = 10
        tracker.log({"a": 1.0})
        state = tracker.state_dict()
        tracker.log({"after": 2.0})
    del state["logger_rows_at_global_step"]  # not in checkpoints of earlier versions
    resumed = make()
    with resumed:
        resumed.load_state_dict(state)
    rows = read_csv(os.path.join(resumed.loggers[0].log_dir, "metrics.csv"))
    assert [(r["step"], r["a"], r["after"]) for r in rows] == [("10", "1.0", ""), ("10", "", "2.0")]


def test_tensorboard_already_writing_at_resume_warns(tmp_path):
    tb = TensorBoardLogger(tmp_path, name="r", version=0)
    tb.log_metrics({"a": 1.0}, step=1)
    with pytest.warns(UserWarning, match="already writing when the tracker resumed"):
        resume_loggers([tb], 1)
    tb.finalize("success")
