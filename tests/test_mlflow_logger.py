"""MLflow logging through the tracker, checked against a real tracking store read back with MLflow's client."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score
from torchmetrics.classification import MulticlassAccuracy

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.exceptions import ConfigurationError
from tests._distributed import run_on_ranks
from tests.conftest import free_port

pytest.importorskip("mlflow", reason="the [mlflow] extra is part of [dev]")
from mlflow import MlflowClient

from fabricmetrics._mlflow import read_mlflow_history
from fabricmetrics.loggers import MLFlowLogger

C, BATCH, STEPS = 4, 8, 4  # classes, batch size, train steps per epoch


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its tables created (MLflow's migrations take seconds: done once)."""
    path = tmp_path_factory.mktemp("mlflow") / "template.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, _empty_store: Path) -> str:
    """A fresh SQLite tracking store in ``tmp_path`` (a copy of the empty template)."""
    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _batches(epoch: int, stage: str, n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1000 * epoch + (stage == "val"))
    return [
        {"preds": torch.randn(BATCH, C, generator=g), "target": torch.randint(0, C, (BATCH,), generator=g)}
        for _ in range(n)
    ]


def _tracker(loggers: list) -> MetricsTracker:
    return MetricsTracker(
        {"acc": MulticlassAccuracy(num_classes=C, average="micro"), "f1": _macro_f1},
        loggers=loggers,
        schedule={"train": Schedule(every_n_steps=2, every_n_epochs=1, per_step=True)},
    )


def _macro_f1(preds: np.ndarray, target: np.ndarray) -> float:
    return f1_score(target, preds.argmax(1), average="macro")


def _run_epochs(tracker: MetricsTracker, epochs: range) -> None:
    for epoch in epochs:
        with tracker.epoch("train"):
            for batch in _batches(epoch, "train", STEPS):
                tracker.step("train", batch)
        with tracker.epoch("val"):
            for batch in _batches(epoch, "val", 2):
                tracker.step("val", batch)


def _points(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)]


def _all_points(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = client.get_run(run_id).data.metrics
    return {key: sorted(_points(client, run_id, key)) for key in keys}


# --------------------------------------------------------------------------------------------------
def test_metrics_land_at_the_trackers_global_step(tracking_uri):
    logger = MLFlowLogger("exp", tracking_uri=tracking_uri, run_name="first")
    tracker = _tracker([logger])
    with tracker:
        _run_epochs(tracker, range(2))
    client = MlflowClient(tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert client.get_experiment(run.info.experiment_id).name == "exp"
    # every key holds exactly the tracker's (step, value) points, in order
    assert set(run.data.metrics) == set(tracker.history) == {
        "acc/train", "acc/val", "f1/train", "f1/val", "acc/train_step", "f1/train_step",
    }  # fmt: skip
    for key in tracker.history:
        assert _points(client, logger.run_id, key) == tracker.history[key]
    # the steps are the tracker's global step: val shares the train epoch's last step
    assert [s for s, _ in _points(client, logger.run_id, "acc/val")] == [STEPS, 2 * STEPS]
    assert [s for s, _ in _points(client, logger.run_id, "acc/train_step")] == [2, 4, 6, 8]
    # and the values are the right ones (scikit-learn on the same data)
    for epoch in range(2):
        batches = _batches(epoch, "val", 2)
        preds = torch.cat([b["preds"] for b in batches]).argmax(1).numpy()
        target = torch.cat([b["target"] for b in batches]).numpy()
        assert _points(client, logger.run_id, "acc/val")[epoch][1] == pytest.approx(accuracy_score(target, preds))
        assert _points(client, logger.run_id, "f1/val")[epoch][1] == pytest.approx(
            f1_score(target, preds, average="macro")
        )


def test_a_failed_run_ends_failed_and_nothing_opens_before_the_first_value(tracking_uri):
    logger = MLFlowLogger("exp", tracking_uri=tracking_uri)
    tracker = _tracker([logger])
    with pytest.raises(RuntimeError, match="boom"), tracker:
        assert logger.version is None  # entering the tracker starts no run
        _run_epochs(tracker, range(1))
        raise RuntimeError("boom")
    assert MlflowClient(tracking_uri).get_run(logger.version).info.status == "FAILED"
    unused = MLFlowLogger("exp", tracking_uri=tracking_uri)
    with _tracker([unused]):
        pass
    assert unused.version is None  # a run that logged nothing left nothing in the store
    assert (
        len(MlflowClient(tracking_uri).search_runs([logger.experiment.get_run(logger.version).info.experiment_id])) == 1
    )


def test_params_are_logged_once(tracking_uri):
    logger = MLFlowLogger(tracking_uri=tracking_uri)
    params = {"lr": 0.1, "model": {"width": 64, "act": "relu"}, "seed": None}
    logger.log_hyperparams(params)
    logger.log_hyperparams(params)  # the same values again: nothing new
    logger.log_hyperparams(argparse.Namespace(epochs=3))
    client = MlflowClient(tracking_uri)
    expected = {"lr": "0.1", "model/width": "64", "model/act": "relu", "seed": "None", "epochs": "3"}
    assert client.get_run(logger.run_id).data.params == expected
    with pytest.raises(ConfigurationError, match=r"`lr`: '0.1' logged, '0.2' now.*HINT: log values that change"):
        logger.log_hyperparams({"batch": 32, "lr": 0.2})
    assert client.get_run(logger.run_id).data.params == expected  # the refused call wrote nothing


def _checkpointed_run(uri: str, ckpt: Path, *, crash_after: int, epochs: int) -> str:
    """Train ``epochs`` epochs, checkpointing after each; the job 'crashes' after epoch ``crash_after``."""
    from lightning_fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1)
    logger = MLFlowLogger("exp", tracking_uri=uri)
    tracker = _tracker([logger])
    for epoch in range(epochs):
        _run_epochs(tracker, range(epoch, epoch + 1))
        if epoch < crash_after:
            fabric.save(ckpt, {"tracker": tracker, "mlflow": logger})
    return str(logger.version)  # no finalize: the process died


@pytest.mark.parametrize("logger_in_checkpoint", [True, False])
def test_resume_continues_the_same_run_without_duplicated_points(tracking_uri, tmp_path, logger_in_checkpoint):
    from lightning_fabric import Fabric

    ckpt = tmp_path / "ckpt.pt"
    # the interrupted job checkpoints after epochs 0 and 1, logs epoch 2 and dies
    run_id = _checkpointed_run(tracking_uri, ckpt, crash_after=2, epochs=3)
    resumed_logger = MLFlowLogger("exp", tracking_uri=tracking_uri)
    tracker = _tracker([resumed_logger])
    with tracker:
        # the tracker's state carries the logger's run id; loading the logger as well is harmless
        state = {"tracker": tracker, "mlflow": resumed_logger} if logger_in_checkpoint else {"tracker": tracker}
        Fabric(accelerator="cpu", devices=1).load(ckpt, state, strict=False)
        assert tracker.global_step == 2 * STEPS
        _run_epochs(tracker, range(2, 4))
    # an uninterrupted job in another store, for reference
    reference = MLFlowLogger("exp", tracking_uri=f"sqlite:///{tmp_path / 'ref.db'}")
    with _tracker([reference]) as uninterrupted:
        _run_epochs(uninterrupted, range(4))

    client = MlflowClient(tracking_uri)
    assert resumed_logger.version == run_id
    experiment_id = client.get_run(run_id).info.experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment_id])] == [run_id]  # one run, continued
    assert client.get_run(run_id).info.status == "FINISHED"
    points = {key: _points(client, run_id, key) for key in client.get_run(run_id).data.metrics}
    expected = _all_points(MlflowClient(reference.tracking_uri), reference.run_id)
    assert sorted(points) == sorted(expected)
    for key, pts in points.items():
        steps = [s for s, _ in pts]
        assert len(steps) == len(set(steps)), f"{key} has duplicated steps {steps}"  # no point twice
        assert sorted(pts) == expected[key]
    assert read_mlflow_history(run_id, tracking_uri=tracking_uri)["acc/val"] == dict(uninterrupted.history)["acc/val"]


def test_a_replayed_value_that_differs_keeps_the_stored_point_and_warns(tracking_uri):
    logger = MLFlowLogger(tracking_uri=tracking_uri)
    for step in (1, 2, 3):
        logger.log_metrics({"loss": float(step)}, step=step)
    state = {"run_id": logger.version, "step": 1}  # the checkpoint was taken at step 1
    resumed = MLFlowLogger(tracking_uri=tracking_uri)
    resumed.load_state_dict(state)
    resumed.log_metrics({"loss": 2.0}, step=2)  # same value as stored: skipped quietly
    with pytest.warns(UserWarning, match=r"keeps `loss` = 3.0 at step 3.*computed 3.5"):
        resumed.log_metrics({"loss": 3.5}, step=3)
    resumed.log_metrics({"loss": 4.0}, step=4)
    assert sorted(_points(MlflowClient(tracking_uri), state["run_id"], "loss")) == [(1, 1), (2, 2), (3, 3), (4, 4)]


def test_checkpoint_state_loads_safely_and_mismatched_runs_are_refused(tracking_uri, tmp_path):
    logger = MLFlowLogger(tracking_uri=tracking_uri)
    logger.log_metrics({"x": 1.0}, step=5)
    torch.save(logger.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert state == {"run_id": logger.run_id, "step": 5}
    other = MLFlowLogger(tracking_uri=tracking_uri)
    other.log_metrics({"x": 2.0}, step=1)
    with pytest.raises(ConfigurationError, match=r"already writes to run .*HINT: load the checkpoint before logging"):
        other.load_state_dict(state)
    with pytest.raises(ConfigurationError, match="was made for run"):
        MLFlowLogger(tracking_uri=tracking_uri, run_id="0" * 32).load_state_dict(state)
    with pytest.raises(ConfigurationError, match=r"cannot be continued.*HINT: use the tracking_uri"):
        MLFlowLogger(tracking_uri=tracking_uri, run_id="0" * 32).log_metrics({"x": 1.0}, step=1)
    with pytest.raises(ConfigurationError, match=r"No MLflow run 'nope'.*HINT"):
        read_mlflow_history("nope", tracking_uri=tracking_uri)
    assert MLFlowLogger().load_state_dict({"run_id": None, "step": None}) is None  # a rank that logged nothing


def test_names_mlflow_refuses_are_renamed_and_clashes_refused(tracking_uri):
    logger = MLFlowLogger(tracking_uri=tracking_uri)
    with pytest.warns(UserWarning, match=r"'kNN\(k=5\)/accuracy'.*logged as 'kNN_k_5_/accuracy'"):
        logger.log_metrics({"kNN(k=5)/accuracy": 0.5}, step=1)
    assert _points(MlflowClient(tracking_uri), logger.run_id, "kNN_k_5_/accuracy") == [(1, 0.5)]
    with pytest.raises(ConfigurationError, match=r"both become 'kNN_k_5_/accuracy'.*HINT: rename"):
        logger.log_metrics({"kNN[k=5]/accuracy": 0.5}, step=2)


def test_history_read_back_plots(tracking_uri, tmp_path):
    logger = MLFlowLogger(tracking_uri=tracking_uri)
    tracker = _tracker([logger])
    with tracker:
        _run_epochs(tracker, range(2))
    history = read_mlflow_history(logger.run_id, tracking_uri=tracking_uri)
    assert dict(history) == dict(tracker.history)
    assert logger.run_id in str(history.source)
    history.plot(["acc/*"], path=tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 1000


def test_the_import_error_names_the_extra(monkeypatch):
    import fabricmetrics.loggers

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow were not installed
    monkeypatch.delitem(sys.modules, "fabricmetrics._mlflow")
    with pytest.raises(ImportError, match=r'HINT: pip install "fabricmetrics\[mlflow\]"'):
        fabricmetrics.loggers.MLFlowLogger  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        fabricmetrics.loggers.Nope  # noqa: B018


# --------------------------------------------------------------------------------------------------
def rank_worker(rank: int, world_size: int, uri: str) -> dict:
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    rank_zero_only.rank = rank  # as Fabric's launcher sets it
    logger = MLFlowLogger("exp", tracking_uri=uri)
    tracker = _tracker([logger])
    with tracker:
        for epoch in range(2):
            with tracker.epoch("val"):
                for batch in _batches(epoch, "val", 2)[rank::world_size]:
                    tracker.step("val", batch)
    logger.log_metrics({f"direct/rank{rank}": 1.0}, step=0)  # the logger itself writes on rank 0 only
    logger.log_hyperparams({"rank": rank})
    return {"history": dict(tracker.history), "version": logger.version}


@pytest.mark.distributed
def test_only_rank_zero_writes(tracking_uri, tmp_path):
    out = run_on_ranks(rank_worker, tmp_path, tracking_uri)
    assert out[1] == {"history": {}, "version": None}  # rank 1 opened nothing
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert [r.info.run_id for r in runs] == [out[0]["version"]]
    run_id = out[0]["version"]
    assert set(client.get_run(run_id).data.metrics) == {"acc/val", "f1/val", "direct/rank0"}
    assert client.get_run(run_id).data.params == {"rank": "0"}
    for key in ("acc/val", "f1/val"):
        assert _points(client, run_id, key) == out[0]["history"][key]
    for epoch in range(2):  # the values of both ranks' batches together
        batches = _batches(epoch, "val", 2)
        preds = torch.cat([b["preds"] for b in batches]).argmax(1).numpy()
        target = torch.cat([b["target"] for b in batches]).numpy()
        assert out[0]["history"]["acc/val"][epoch][1] == pytest.approx(accuracy_score(target, preds))


# --------------------------------------------------------------------------------------------------
@pytest.fixture
def mlflow_server(tmp_path: Path, _empty_store: Path):
    """A real ``mlflow server`` on a free loopback port, over a SQLite store in ``tmp_path``; stopped after."""
    shutil.copy(_empty_store, tmp_path / "server.db")
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--default-artifact-root", str(tmp_path / "art"),
    ]  # fmt: skip
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)  # the server and its uvicorn worker
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        log.close()


@pytest.mark.slow
def test_a_real_mlflow_server(mlflow_server, tmp_path):
    logger = MLFlowLogger("served", tracking_uri=mlflow_server)
    tracker = _tracker([logger])
    with tracker:
        logger.log_hyperparams({"lr": 0.01})
        _run_epochs(tracker, range(2))
    client = MlflowClient(mlflow_server)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.01"}
    for key in tracker.history:
        assert _points(client, logger.run_id, key) == tracker.history[key]
    # a checkpoint's state continues the run through the server too, without duplicated points
    state = {"run_id": logger.run_id, "step": STEPS}
    resumed = MLFlowLogger("served", tracking_uri=mlflow_server)
    resumed.load_state_dict(state)
    for step, value in tracker.history["acc/val"]:
        resumed.log_metrics({"acc/val": value}, step=step)  # both points are held already
    resumed.log_metrics({"acc/val": 0.5}, step=3 * STEPS)
    resumed.finalize("success")
    assert _points(client, logger.run_id, "acc/val") == [*tracker.history["acc/val"], (3 * STEPS, 0.5)]


@pytest.mark.slow
def test_the_demo_logs_to_an_mlflow_database(tmp_path, _empty_store, capsys):
    from fabricmetrics.cli import main
    from fabricmetrics.history import History

    out = tmp_path / "demo"
    out.mkdir()
    shutil.copy(_empty_store, out / "mlflow.db")  # an empty store, to spare MLflow's table creation
    assert main(["demo", "--logger", "mlflow", "csv", "--epochs", "1", "--out", str(out)]) == 0
    uri = f"sqlite:///{out / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {uri}" in capsys.readouterr().out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fabricmetrics-demo").experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert sorted(by_name) == ["ssl", "supervised"]
    for name, key in (("supervised", "acc/val"), ("ssl", "LogisticRegression/accuracy")):
        run_id = by_name[name].info.run_id
        assert by_name[name].info.status == "FINISHED"
        # the same points as the CSV logger wrote next to it: the tracker's steps and values
        csv_history = History.from_run(out / name / "version_0")
        assert _points(client, run_id, key) == csv_history[key] and len(csv_history[key]) == 1
        assert read_mlflow_history(run_id, tracking_uri=uri).keys() == csv_history.keys()


def test_fabricmetrics_plot_draws_every_run_of_a_store(tracking_uri, tmp_path):
    from fabricmetrics.cli import main
    from fabricmetrics.loggers import read_mlflow_runs

    for name, scale in (("small", 0.5), ("large", 2.0)):
        logger = MLFlowLogger("exp", run_name=name, tracking_uri=tracking_uri)
        for step in (1, 2, 3):
            logger.log_metrics({"loss/train": scale * step}, step=step)
        logger.finalize("success")
    runs = read_mlflow_runs(tracking_uri)
    assert list(runs) == ["exp/small", "exp/large"]  # oldest first
    assert runs["exp/large"]["loss/train"] == [(1, 2.0), (2, 4.0), (3, 6.0)]
    out = tmp_path / "runs.png"
    assert main(["plot", str(tmp_path / "mlflow.db"), "-o", str(out)]) == 0
    assert out.stat().st_size > 0
    with pytest.raises(ConfigurationError, match="holds no run"):
        read_mlflow_runs(f"sqlite:///{tmp_path / 'empty.db'}")
