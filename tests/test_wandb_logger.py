"""W&B logging through the tracker, offline (nothing leaves the machine), read back from the run files."""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

import pytest
import torch

from fabricmetrics.exceptions import ConfigurationError
from tests._distributed import run_on_ranks
from tests.test_mlflow_logger import STEPS, _batches, _run_epochs, _tracker

wandb = pytest.importorskip("wandb", reason="the [wandb] extra is part of [dev]")
from wandb.proto import wandb_internal_pb2  # noqa: E402

from fabricmetrics.loggers import WandbLogger  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")


def _logger(save_dir: Path, **kwargs) -> WandbLogger:
    return WandbLogger("fabricmetrics-test", save_dir=save_dir, settings=wandb.Settings(x_disable_stats=True), **kwargs)


def _records(save_dir: Path) -> list[list]:
    """The records of each offline run segment under ``save_dir``, oldest first, once each has ended.

    W&B's service writes the files after ``finish`` returns: this waits (30 s at most) until each
    segment holds its exit record.
    """
    deadline = time.monotonic() + 30
    while True:
        segments = [_read_segment(p) for p in sorted((save_dir / "wandb").glob("offline-run-*/run-*.wandb"))]
        ended = all(any(r.WhichOneof("record_type") == "exit" for r in records) for records in segments)
        if (segments and ended) or time.monotonic() > deadline:
            return segments
        time.sleep(0.2)


def _read_segment(path: Path) -> list:
    """A ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB-log records in
    32 KiB blocks (4-byte checksum, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last),
    each a ``wandb_internal.Record`` protocol buffer.
    """
    data, pos, pending, records = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break  # a record still being written
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _history(records: list) -> dict[str, list[tuple[int, float]]]:
    points: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for key, value in row.items():
                if not key.startswith("_"):
                    points.setdefault(key, []).append((row["_step"], value))
    return points


def _kind(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def test_metrics_land_at_the_trackers_global_step_and_params_once(tmp_path):
    logger = _logger(tmp_path, name="first")
    tracker = _tracker([logger])
    with tracker:
        logger.log_hyperparams({"lr": 0.1, "model": {"width": 64}})
        logger.log_hyperparams(argparse.Namespace(lr=0.1))  # the same value again: fine
        with pytest.raises(ConfigurationError, match=r"`lr`: 0.1 logged, 0.2 now.*HINT"):
            logger.log_hyperparams({"lr": 0.2, "new": 1})
        _run_epochs(tracker, range(2))
    (records,) = _records(tmp_path)
    assert _history(records) == dict(tracker.history)  # the tracker's steps and values, exactly
    assert [s for s, _ in tracker.history["acc/val"]] == [STEPS, 2 * STEPS]
    config = {}
    for update in _kind(records, "config"):
        config.update({u.key: json.loads(u.value_json) for u in update.update})
    assert {k: v for k, v in config.items() if not k.startswith("_")} == {"lr": 0.1, "model/width": 64}
    assert [e.exit_code for e in _kind(records, "exit")] == [0]
    assert logger.version == _kind(records, "run")[0].run_id


def test_a_failed_run_exits_with_1(tmp_path):
    logger = _logger(tmp_path)
    with pytest.raises(RuntimeError), _tracker([logger]) as tracker:
        assert logger.version is None  # entering the tracker starts no run
        _run_epochs(tracker, range(1))
        raise RuntimeError("boom")
    (records,) = _records(tmp_path)
    assert [e.exit_code for e in _kind(records, "exit")] == [1]


def test_resume_rewinds_the_run_to_the_checkpoint(tmp_path):
    interrupted = _logger(tmp_path)
    tracker = _tracker([interrupted])
    _run_epochs(tracker, range(2))
    checkpoint = {"tracker": tracker.state_dict(), "wandb": interrupted.state_dict()}
    assert checkpoint["wandb"] == {"run_id": interrupted.version, "step": 2 * STEPS}
    _run_epochs(tracker, range(2, 3))  # logged after the checkpoint, then the job dies
    interrupted.finalize("failed")

    resumed = _logger(tmp_path)
    tracker = _tracker([resumed])
    with tracker:
        tracker.load_state_dict(checkpoint["tracker"])
        resumed.load_state_dict(checkpoint["wandb"])
        _run_epochs(tracker, range(2, 4))
    with _tracker([reference := _logger(tmp_path / "reference")]) as uninterrupted:
        _run_epochs(uninterrupted, range(4))
    first, second = _records(tmp_path)
    (run,) = _kind(second, "run")
    assert run.run_id == interrupted.version == resumed.version  # the same run, continued
    assert (run.branch_point.run, run.branch_point.metric, run.branch_point.value) == (
        interrupted.version,
        "_step",
        2 * STEPS,
    )
    # W&B rewinds the run to the branch point: the first segment up to it, then the second one
    kept = {k: [(s, v) for s, v in pts if s <= 2 * STEPS] for k, pts in _history(first).items()}
    for key, points in _history(second).items():
        kept[key] = kept.get(key, []) + points
    expected = dict(uninterrupted.history)
    assert kept == expected
    assert reference.version != resumed.version


def test_refusals(tmp_path):
    logger = _logger(tmp_path)
    logger.log_metrics({"x": 1.0}, step=1)
    with pytest.raises(ConfigurationError, match=r"already writes to run .*HINT: load the checkpoint before logging"):
        logger.load_state_dict({"run_id": "other", "step": 1})
    with pytest.raises(ConfigurationError, match=r"is already open.*HINT"):
        logger.load_state_dict({"run_id": logger.version, "step": 1})
    logger.finalize("success")
    with pytest.raises(ConfigurationError, match="was made for run"):
        _logger(tmp_path, id="abc").load_state_dict({"run_id": "other", "step": 1})


def test_the_import_error_names_the_extra(monkeypatch):
    import fabricmetrics.loggers

    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.delitem(sys.modules, "fabricmetrics._wandb")
    with pytest.raises(ImportError, match=r'HINT: pip install "fabricmetrics\[wandb\]"'):
        fabricmetrics.loggers.WandbLogger  # noqa: B018


def rank_worker(rank: int, world_size: int, save_dir: str) -> dict:
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    rank_zero_only.rank = rank  # as Fabric's launcher sets it
    logger = _logger(Path(save_dir))
    tracker = _tracker([logger])
    with tracker:
        with tracker.epoch("val"):
            for batch in _batches(0, "val", 2)[rank::world_size]:
                tracker.step("val", batch)
        logger.log_metrics({f"direct/rank{rank}": 1.0}, step=0)
    return {"history": dict(tracker.history), "version": logger.version}


@pytest.mark.distributed
@pytest.mark.slow
def test_only_rank_zero_writes(tmp_path, monkeypatch):
    out = run_on_ranks(rank_worker, tmp_path, str(tmp_path / "logs"))
    assert out[1] == {"history": {}, "version": None}
    (records,) = _records(tmp_path / "logs")  # one run
    assert _history(records) == {**out[0]["history"], "direct/rank0": [(0, 1.0)]}


def test_tensor_values_are_logged_as_numbers(tmp_path):
    logger = _logger(tmp_path)
    logger.log_metrics({"x": torch.tensor(0.25)}, step=3)
    logger.finalize("success")
    assert _history(_records(tmp_path)[0]) == {"x": [(3, 0.25)]}


def test_a_run_reopened_after_finalize_is_rewound_only_once(tmp_path, monkeypatch):
    calls: list[dict] = []

    class FakeRun:
        id = "abc"

        def log(self, *args, **kwargs):
            pass

        def finish(self, *args, **kwargs):
            pass

    def fake_init(**kwargs):
        calls.append(kwargs)
        return FakeRun()

    monkeypatch.setattr(wandb, "init", fake_init)
    logger = WandbLogger(project="p", save_dir=str(tmp_path))
    logger.load_state_dict({"run_id": "abc", "step": 10})
    logger.log_metrics({"loss": 1.0}, step=11)
    logger.finalize("success")
    logger.log_metrics({"loss": 0.5}, step=12)  # logging again reopens the run
    assert calls[0]["resume_from"] == "abc?_step=10"
    assert len(calls) == 1 or ("resume_from" not in calls[1] and calls[1]["id"] == "abc")
