"""Logs that survive the process: rows on disk at every epoch end and at exit, atomic rewrites, torn files read."""

from __future__ import annotations

import csv
import errno
import io
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import fsspec
import numpy as np
import pytest
from lightning_fabric.loggers import CSVLogger as FabricCSVLogger
from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from sklearn.metrics import accuracy_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fabricmetrics import History, MetricsTracker
from fabricmetrics import _csvwriter as csvwriter
from fabricmetrics.exceptions import LogDirectoryError
from fabricmetrics.loggers import (
    CSVLogger,
    TensorBoardLogger,
    describe_log_error,
    flush_loggers,
    open_loggers,
    resume_loggers,
)
from tests.conftest import RecordingLogger

REPO = Path(__file__).resolve().parents[1]


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_child(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def tb_points(folder) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# A training loop run in a child process: 100 steps per epoch, a step value every 50 steps, then
# `after` decides how the process ends.
CHILD = """
import os, sys
import numpy as np
from sklearn.metrics import accuracy_score
from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.loggers import CSVLogger, TensorBoardLogger
root, epochs, use_with, order, after = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "with", sys.argv[4], sys.argv[5]
loggers = {"csv": CSVLogger(root, name="run"), "tb": TensorBoardLogger(root, name="run")}
tracker = MetricsTracker(
    {"acc": accuracy_score},
    loggers=[loggers[name] for name in order.split(",")],
    schedule={"train": Schedule(every_n_steps=50, per_step=True)},
)
y = np.array([0, 1, 1, 0])
def train(epoch):
    with tracker.epoch("train"):
        for step in range(100):
            tracker.step("train", {"y_true": y, "y_pred": np.roll(y, (epoch + step) % 3)})
            if epoch == epochs and step == 70 and after == "kill":
                os._exit(3)  # a hard kill: no finally, no atexit, no logger flush
if use_with:
    tracker.__enter__()
for epoch in range(epochs + (after == "kill")):
    train(epoch)
tracker.log({"lr": 0.5})  # logged after the last epoch end: written at exit
"""


def child(root, epochs, *, use_with, order="csv,tb", after="exit"):
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(epochs), "with" if use_with else "plain", order, after],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_hard_kill_keeps_the_rows_of_every_finished_epoch(tmp_path):
    done = child(tmp_path, 3, use_with=True, after="kill")
    assert done.returncode == 3, done.stderr
    folder = tmp_path / "run" / "version_0"
    rows = read_rows(folder / "metrics.csv")
    # 3 epochs of 100 steps: step values at 50, 100, …, 300 and one epoch value per epoch; the rows
    # of the 4th epoch (step 350, logged before the kill) may or may not be there, nothing after
    steps = [(int(r["step"]), [k for k, v in r.items() if v and k != "step"]) for r in rows]
    finished = [(s, keys) for s, keys in steps if s <= 300]
    assert finished == [
        (s, key)
        for epoch in range(3)
        for s, key in [
            (100 * epoch + 50, ["acc/train_step"]),
            (100 * epoch + 100, ["acc/train_step"]),
            (100 * epoch + 100, ["acc/train"]),
        ]
    ]
    assert all(s == 350 for s, _ in steps[len(finished) :])
    events = tb_points(folder)
    assert [s for s, _ in events["acc/train"]] == [100, 200, 300]
    assert [s for s, _ in events["acc/train_step"]][:6] == [50, 100, 150, 200, 250, 300]


@pytest.mark.parametrize("order", ["csv,tb", "tb,csv"])
def test_a_run_without_with_leaves_its_csv_and_one_version_folder(tmp_path, order):
    done = child(tmp_path, 2, use_with=False, order=order)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "run")) == ["version_0"]
    folder = tmp_path / "run" / "version_0"
    history = History.from_csv(folder)
    assert [s for s, _ in history["acc/train"]] == [100, 200]
    assert [s for s, _ in history["acc/train_step"]] == [50, 100, 150, 200]
    assert history["lr"] == [(200, 0.5)]  # logged after the last epoch: flushed at exit
    assert tb_points(folder)["lr"] == [(200, 0.5)]


def test_a_csv_logger_alone_saves_its_rows_at_exit(tmp_path):
    code = (
        "import sys\nfrom fabricmetrics.loggers import CSVLogger\n"
        "logger = CSVLogger(sys.argv[1], name='r', version=0)\n"
        "for step in range(5):\n    logger.log_metrics({'a': step / 2}, step=step)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = read_rows(tmp_path / "r" / "version_0" / "metrics.csv")
    assert [(r["step"], r["a"]) for r in rows] == [(str(s), str(s / 2)) for s in range(5)]


def test_rows_are_saved_every_n_rows_whatever_their_steps(tmp_path):
    logger = CSVLogger(tmp_path, name="r", version=0, flush_logs_every_n_steps=100)
    for step in range(50, 50 * 251, 50):  # Fabric's own condition, (step + 1) % 100 == 0, never holds
        logger.log_metrics({"loss": 1.0}, step=step)
    assert len(read_rows(os.path.join(logger.log_dir, "metrics.csv"))) == 200
    assert len(logger.experiment.metrics) == 50


def test_open_and_close_without_with(tmp_path):
    recording = RecordingLogger()
    csv_logger = CSVLogger(tmp_path, name="r")
    tb = TensorBoardLogger(tmp_path, name="r")
    tracker = MetricsTracker({"acc": accuracy_score}, loggers=[tb, csv_logger, recording]).open()
    assert tb.version == csv_logger.version == 0 and os.path.isdir(csv_logger.log_dir)
    with tracker.epoch("val"):
        tracker.step("val", {"y_true": np.array([1, 0]), "y_pred": np.array([1, 1])})
    tracker.close("failed")
    assert recording.finalized == ["failed"]
    assert read_rows(os.path.join(csv_logger.log_dir, "metrics.csv")) == [{"step": "0", "acc/val": "0.5"}]
    assert tracker._exit_flush is None  # closed: nothing left to do at exit


def test_loggers_sharing_a_folder_get_the_version_one_of_them_already_has(tmp_path):
    (tmp_path / "r" / "version_0").mkdir(parents=True)
    tb = TensorBoardLogger(tmp_path, name="r")
    tb.log_metrics({"a": 1.0}, step=1)  # TensorBoard started first: version_1
    csv_logger = CSVLogger(tmp_path, name="r")
    open_loggers([tb, csv_logger])
    assert csv_logger.version == tb.version == 1
    other = CSVLogger(tmp_path, name="other")
    open_loggers([other, CSVLogger(tmp_path, name="r", version=7)])
    assert other.version == 0
    tb.finalize("success")


# --------------------------------------------------------------------------------------------------
# A full disk


class FullDisk:
    """``open`` for the CSV writer that writes at most ``budget`` bytes, then fails like a full disk."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.calls = 0

    def __call__(self, path, mode="r", *args, **kwargs):
        if "r" in mode:
            return open(path, mode, *args, **kwargs)
        self.calls += 1
        return _FullFile(path, mode.replace("b", ""), self)


class _FullFile(io.FileIO):
    def __init__(self, path, mode: str, disk: FullDisk) -> None:
        super().__init__(path, mode)
        self.disk = disk

    def write(self, data) -> int:
        allowed = max(0, min(len(data), self.disk.budget))
        super().write(bytes(data[:allowed]))
        self.disk.budget -= allowed
        if allowed < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(data)


def test_a_full_disk_leaves_the_file_intact_and_says_which_rows_are_only_in_memory(tmp_path, monkeypatch):
    logger = CSVLogger(tmp_path, name="r", version=0)
    for step in (1, 2, 3):
        logger.log_metrics({"a": float(step)}, step=step)
    logger.save()
    path = Path(logger.log_dir) / "metrics.csv"
    before = path.read_bytes()

    disk = FullDisk(budget=20)
    monkeypatch.setattr(csvwriter, "open", disk, raising=False)
    logger.log_metrics({"a": 4.0, "b": 1.0}, step=4)  # a new key: a rewrite
    with pytest.raises(LogDirectoryError) as raised:
        logger.save()
    message = str(raised.value)
    assert "No space left on device" in message and str(path) in message
    assert "keeps the 3 rows written before; the 1 row(s) logged since (steps 4–4) are only in memory" in message
    assert isinstance(raised.value.__cause__, OSError) and raised.value.__cause__.errno == errno.ENOSPC
    assert path.read_bytes() == before and os.listdir(logger.log_dir) == ["metrics.csv"]  # no temporary file left

    logger.log_metrics({"a": 5.0, "b": 2.0}, step=5)  # the next flush fails too
    with pytest.warns(UserWarning, match=r"could not write .*No space left on device"):
        flush_loggers([logger])
    assert path.read_bytes() == before
    assert disk.calls == 2

    monkeypatch.undo()  # space is free again: the next flush writes every row, in order
    logger.log_metrics({"a": 6.0}, step=6)
    logger.save()
    assert [(r["step"], r["a"], r["b"]) for r in read_rows(path)] == [
        ("1", "1.0", ""),
        ("2", "2.0", ""),
        ("3", "3.0", ""),
        ("4", "4.0", "1.0"),
        ("5", "5.0", "2.0"),
        ("6", "6.0", ""),
    ]


def test_a_failed_append_is_cut_off(tmp_path, monkeypatch):
    logger = CSVLogger(tmp_path, name="r", version=0)
    logger.log_metrics({"a": 1.0}, step=1)
    logger.save()
    path = Path(logger.log_dir) / "metrics.csv"
    before = path.read_bytes()
    monkeypatch.setattr(csvwriter, "open", FullDisk(budget=4), raising=False)
    for step in range(2, 40):
        logger.log_metrics({"a": float(step)}, step=step)
    with pytest.raises(LogDirectoryError, match=r"the 38 row\(s\) logged since \(steps 2–39\) are only in memory"):
        logger.save()
    assert path.read_bytes() == before  # the 4 bytes written were cut off: no torn row
    monkeypatch.undo()
    logger.finalize("success")
    assert len(read_rows(path)) == 39


def test_a_periodic_save_that_fails_warns_and_keeps_logging(tmp_path, monkeypatch):
    logger = CSVLogger(tmp_path, name="r", version=0, flush_logs_every_n_steps=2)
    monkeypatch.setattr(csvwriter, "open", FullDisk(budget=0), raising=False)
    logger.log_metrics({"a": 1.0}, step=0)
    with pytest.warns(UserWarning, match=r"was not created; the 2 row\(s\) logged since \(steps 0–2\) are only in"):
        logger.log_metrics({"a": 2.0}, step=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger.log_metrics({"a": 3.0}, step=4)  # not tried again at every row: after 2 more rows
    assert not caught
    with pytest.warns(UserWarning, match=r"the 4 row\(s\) logged since \(steps 0–6\)"):
        logger.log_metrics({"a": 4.0}, step=6)
    assert len(logger.experiment.metrics) == 4
    monkeypatch.undo()
    logger.finalize("success")
    assert [r["step"] for r in read_rows(os.path.join(logger.log_dir, "metrics.csv"))] == ["0", "2", "4", "6"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # TensorBoard's writer thread
def test_tensorboard_write_errors_name_the_cause_not_the_value(tmp_path):
    tb = TensorBoardLogger(tmp_path, name="r")
    tb.log_metrics({"a": 1.0}, step=1)
    tb.save()
    shutil.rmtree(tmp_path / "r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the writer thread reports its own error on stderr
        raised = None
        for step in range(2, 3000):
            try:
                tb.log_metrics({"a": float(step)}, step=step)
            except ValueError as err:
                raised = err
                break
    assert raised is not None and "you tried to log" in str(raised)  # Fabric's wrapper hides the cause
    text = describe_log_error(raised, tb)
    assert text.startswith("FileNotFoundError: [Errno 2] No such file or directory: ")
    assert "events.out.tfevents" in text and "you tried to log" not in text
    assert "points logged before it are in the event file" in text
    with pytest.warns(UserWarning, match=r"TensorBoardLogger.save\(\) failed: FileNotFoundError"):
        flush_loggers([tb])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_tracker_warns_with_the_cause_of_a_tensorboard_error(tmp_path):
    tb = TensorBoardLogger(tmp_path, name="r")
    tracker = MetricsTracker({"m": lambda x: x.mean()}, loggers=[tb])
    tracker.log({"a": 1.0})
    tb.save()
    shutil.rmtree(tmp_path / "r")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2, 3000):
            tracker.log({"a": 1.0}, step=step)
            if any("log_metrics failed" in str(w.message) for w in caught):
                break
        tracker.close()  # TensorBoard cannot flush either: a warning
    (message,) = [str(w.message) for w in caught if "log_metrics failed" in str(w.message)]
    assert "FileNotFoundError: [Errno 2] No such file or directory" in message
    assert "you tried to log" not in message


# --------------------------------------------------------------------------------------------------
# Torn files


def torn_run(tmp_path) -> Path:
    logger = CSVLogger(tmp_path, name="run", version=0)
    for step in range(1, 8):
        logger.log_metrics({"loss": 1.0 / step, "acc": step / 10}, step=step)
    logger.finalize("success")
    path = Path(logger.log_dir) / "metrics.csv"
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(b"\r\n", 0, len(data) - 2) + 6])  # the last row cut after 4 bytes
    return path


def test_a_torn_last_row_keeps_the_complete_ones(tmp_path):
    path = torn_run(tmp_path)
    with pytest.warns(RuntimeWarning, match=r"is torn: read its 6 complete row\(s\), skipped its incomplete last line"):
        history = History.from_csv(path)
    assert history["loss"] == [(step, 1.0 / step) for step in range(1, 7)]
    with pytest.warns(RuntimeWarning, match="is torn"):
        assert History.from_run(tmp_path)["acc"] == [(step, step / 10) for step in range(1, 7)]


def test_fabricmetrics_plot_draws_a_torn_file(tmp_path, capsys):
    from fabricmetrics.cli import main

    path = torn_run(tmp_path)
    with pytest.warns(RuntimeWarning, match="is torn"):
        assert main(["plot", str(path.parent)]) == 0
    assert (path.parent / "metrics.png").is_file()


def test_a_torn_row_continued_by_a_later_write_is_skipped(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"step,a\r\n1,0.5\r\n2,0.2" + b"3,0.25,\r\n" + b"4,0.125\r\n")  # Fabric's writer, torn at 2
    with pytest.warns(
        RuntimeWarning, match=r"read its 2 complete row\(s\), skipped 1 damaged row\(s\).*\(lines \[3\]\)"
    ):
        history = History.from_csv(path)
    assert history["a"] == [(1, 0.5), (4, 0.125)]


def test_a_resume_drops_a_torn_last_row_and_keeps_rows_without_a_numeric_step(tmp_path):
    folder = tmp_path / "r" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_bytes(
        b"a,step\r\n1.0,1\r\nuser note,epoch-end\r\n2.0,2\r\n3.0,3\r\n4.0,4\r\n5.0,"  # torn while writing step 5
    )
    logger = CSVLogger(tmp_path, name="r", version=0)
    logger.resume(3)
    with pytest.warns(UserWarning) as caught:
        logger.log_metrics({"a": 40.0}, step=4)
        logger.finalize("success")
    messages = " | ".join(str(w.message) for w in caught)
    assert "1 row(s) have no numeric step (lines [3]); the resume keeps them" in messages
    assert "ended with an incomplete row, which was dropped: '5.0,'" in messages
    assert [(r["a"], r["step"]) for r in read_rows(folder / "metrics.csv")] == [
        ("1.0", "1"),
        ("user note", "epoch-end"),
        ("2.0", "2"),
        ("3.0", "3"),
        ("40.0", "4"),
    ]


# --------------------------------------------------------------------------------------------------
# New keys


def test_3000_keys_one_per_step_cost_one_rewrite_per_flush_and_no_parsing(tmp_path, monkeypatch):
    def no_parsing(data):
        raise AssertionError("the earlier rows were parsed")

    monkeypatch.setattr(csvwriter, "_parse", no_parsing)
    logger = CSVLogger(tmp_path, name="r", version=0)  # saves every 100 rows
    keys = 3000
    for step in range(keys):
        logger.log_metrics({f"layer{step}/acc": step / keys}, step=step)
    writer = logger.experiment
    logger.finalize("success")
    assert writer.rewrites == keys // 100 - 1  # the first save creates the file; each later one rewrites once
    rows = read_rows(os.path.join(logger.log_dir, "metrics.csv"))
    assert len(rows) == keys and list(rows[0])[:3] == ["step", "layer0/acc", "layer1/acc"]
    for step in (0, 99, 100, 1234, keys - 1):
        row = rows[step]
        assert row["step"] == str(step) and row[f"layer{step}/acc"] == str(step / keys)
        assert [k for k, v in row.items() if v] == ["step", f"layer{step}/acc"]


def test_a_file_written_by_fabric_keeps_its_columns_and_gains_new_ones(tmp_path):
    fabric_logger = FabricCSVLogger(tmp_path, name="r", version=0)
    fabric_logger.log_metrics({"b": 1.0, "a": 2.0}, step=1)
    fabric_logger.finalize("success")
    logger = CSVLogger(tmp_path, name="r", version=0)
    logger.resume(1)
    logger.log_metrics({"c": 3.0}, step=2)
    logger.finalize("success")
    assert read_rows(os.path.join(logger.log_dir, "metrics.csv")) == [
        {"a": "2.0", "b": "1.0", "step": "1", "c": ""},
        {"a": "", "b": "", "step": "2", "c": "3.0"},
    ]


# --------------------------------------------------------------------------------------------------
# Fabric's private API and both Fabric packages


def test_fabric_private_api_this_package_relies_on():
    """If this fails, a new lightning-fabric changed what fabricmetrics._csvwriter and loggers rely on."""
    calls = []

    class Probe(_ExperimentWriter):
        def _check_log_dir_exists(self):
            calls.append(("check", os.path.isdir(self.log_dir), list(self.metrics), self.metrics_file_path))

    import tempfile

    folder = os.path.join(tempfile.mkdtemp(), "v")
    writer = Probe(folder)
    assert calls == [("check", False, [], os.path.join(folder, "metrics.csv"))]  # the hook runs before makedirs
    assert os.path.isdir(folder) and writer.log_dir == folder and writer.metrics_keys == []
    assert hasattr(writer._fs, "open") and hasattr(writer._fs, "isfile") and hasattr(writer._fs, "mv")
    writer.log_metrics({"a": 1.0}, step=3)
    assert writer.metrics == [{"a": 1.0, "step": 3}]

    csv_logger = FabricCSVLogger(folder, name="n", flush_logs_every_n_steps=7)
    assert csv_logger._experiment is None and csv_logger._version is None
    assert csv_logger._root_dir == folder and csv_logger._flush_logs_every_n_steps == 7
    assert hasattr(csv_logger._fs, "makedirs")
    tb = TensorBoardLogger(folder, name="n", flush_secs=5)
    assert tb._experiment is None and tb._version is None and tb._kwargs == {"flush_secs": 5}


def test_lightning_fabric_and_lightning_dot_fabric_loggers_are_handled_alike(tmp_path):
    loggers_module = pytest.importorskip("lightning.fabric.loggers")
    tb = loggers_module.TensorBoardLogger(tmp_path, name="r", version=0)
    resume_loggers([tb], 41)
    assert tb._kwargs["purge_step"] == 42

    fabric_csv = loggers_module.CSVLogger(tmp_path, name="r", version=0)
    with pytest.warns(UserWarning, match=r"lightning.fabric.loggers.csv_logs.CSVLogger deletes the metrics.csv"):
        resume_loggers([fabric_csv], 41)

    tb2 = loggers_module.TensorBoardLogger(tmp_path, name="s")
    ours = CSVLogger(tmp_path, name="s")
    tb2.log_metrics({"a": 1.0}, step=1)
    open_loggers([ours, tb2])
    assert ours.version == tb2.version == 0
    tb2.finalize("success")


def test_a_remote_folder_goes_through_fsspec(tmp_path):
    root = f"memory://fabricmetrics-{os.getpid()}-{tmp_path.name}"
    logger = CSVLogger(root, name="r", version=0)
    logger.log_metrics({"a": 1.0}, step=1)
    logger.save()
    logger.log_metrics({"a": 2.0, "b": 3.0}, step=2)  # a new key: a rewrite through fsspec
    logger.finalize("success")
    fs = fsspec.filesystem("memory")
    path = f"{root}/r/version_0/metrics.csv"
    assert fs.cat(path) == b"step,a,b\r\n1,1.0,\r\n2,2.0,3.0\r\n"
    resumed = CSVLogger(root, name="r", version=0)
    resumed.resume(1)
    resumed.log_metrics({"a": 20.0}, step=2)
    resumed.finalize("success")
    assert fs.cat(path) == b"step,a,b\r\n1,1.0,\r\n2,20.0,\r\n"
    assert not [p for p in fs.ls(f"{root}/r/version_0", detail=False) if p.endswith(".tmp")]
    fs.rm(root, recursive=True)
