"""MLflow: a Fabric ``Logger`` over MLflow's public client, resumable from a checkpoint.

Lightning's own ``MLFlowLogger`` lives in ``lightning.pytorch`` (the Trainer package) and, on a
resumed run, logs again the points the interrupted run wrote after the checkpoint (MLflow keeps
both). :class:`MLFlowLogger` is a thin layer over :class:`mlflow.MlflowClient` that needs only
``mlflow``: metrics go in batches with ``log_batch`` (written before the call returns), params are
written once, and a checkpoint carries the run id, so that a resumed job continues the same run
without duplicated points. :func:`read_mlflow_history` reads a run back into a
:class:`~fabricmetrics.History` (for ``History.plot``).

Install with ``pip install "fabricmetrics[mlflow]"``.
"""

from __future__ import annotations

import math
import os
import re
import time
from argparse import Namespace
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlparse

from lightning_fabric.loggers import Logger
from lightning_fabric.loggers.logger import rank_zero_experiment
from lightning_fabric.utilities.rank_zero import rank_zero_only, rank_zero_warn
from mlflow import MlflowClient  # without it, fabricmetrics.loggers.MLFlowLogger names the extra to install
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from fabricmetrics.exceptions import ConfigurationError
from fabricmetrics.history import History
from fabricmetrics.loggers import flatten_params

__all__ = ["MLFlowLogger", "read_mlflow_history", "read_mlflow_runs"]

_METRICS_PER_BATCH = 1000  # MLflow's limits on one log_batch call
_PARAMS_PER_BATCH = 100
_PARAM_LENGTH = 6000
_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")  # MLflow names: alphanumerics, _ - . space /


class MLFlowLogger(Logger):
    """Log to an MLflow tracking store: a local database, a folder, or a tracking server.

    Nothing is opened until the first value is logged (on rank 0 only); then the experiment is
    created if needed and a run is started, or the run given by ``run_id`` / a checkpoint is
    continued. Each :meth:`log_metrics` call is one ``log_batch`` request, written when it returns.

    Resuming: put the logger in the checkpoint next to the tracker
    (``fabric.save(path, {"tracker": tracker, "mlflow": logger})``, or ``logger.state_dict()``);
    :meth:`load_state_dict` continues that run. MLflow cannot delete metric points, so the points
    the interrupted run logged after the checkpoint stay, and the resumed run does not log a
    ``(key, step)`` the run already holds from the checkpoint's step on: every key has each step at
    most once, as in an uninterrupted run (a replayed value that differs from the stored one is
    reported in a warning).

    Args:
        experiment_name: the MLflow experiment (created if missing).
        tracking_uri: where runs are stored: ``"sqlite:///path/mlflow.db"``, ``"http://host:5000"``,
            a folder; ``None`` uses MLflow's default (``MLFLOW_TRACKING_URI`` if set).
        run_name: the new run's name (MLflow makes one up when ``None``).
        run_id: continue this existing run instead of starting one (points are appended).
        tags: tags of the new run.
        artifact_location: where a new experiment stores artifacts (MLflow's default when ``None``).

    Example:
        >>> import tempfile
        >>> from mlflow import MlflowClient
        >>> uri = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"
        >>> logger = MLFlowLogger("demo", tracking_uri=uri)
        >>> logger.log_hyperparams({"lr": 0.1, "optimizer": {"name": "sgd"}})
        >>> for step in (10, 20):
        ...     logger.log_metrics({"acc/val": step / 100}, step=step)
        >>> logger.finalize("success")
        >>> client = MlflowClient(uri)
        >>> [(m.step, m.value) for m in client.get_metric_history(logger.run_id, "acc/val")]
        [(10, 0.1), (20, 0.2)]
        >>> client.get_run(logger.run_id).data.params
        {'lr': '0.1', 'optimizer/name': 'sgd'}
    """

    def __init__(
        self,
        experiment_name: str = "fabricmetrics",
        *,
        tracking_uri: str | None = None,
        run_name: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        artifact_location: str | None = None,
    ) -> None:
        super().__init__()
        self._experiment_name = experiment_name
        self._tracking_uri = tracking_uri
        self._run_name = run_name
        self._run_id = run_id
        self._tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._artifact_location = artifact_location
        self._client: MlflowClient | None = None
        self._latest_step: int | None = None
        self._resume_step: int | None = None
        # points the run held from the checkpoint's step on: (key, step) → stored values, oldest first
        self._replay: dict[tuple[str, int], list[float]] = {}
        self._names: dict[str, str] = {}  # logged key → MLflow name

    # ----------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The experiment's name."""
        return self._experiment_name

    @property
    def version(self) -> str | None:
        """The run id, once the run has started (``None`` before: reading it opens nothing)."""
        return self._run_id

    @property
    def run_id(self) -> str | None:
        """The run id; starts the run if it has not started (rank 0; ``None`` on other ranks)."""
        _ = self.experiment
        return self._run_id

    @property
    def tracking_uri(self) -> str:
        """Where the runs are stored."""
        return self._tracking_uri if self._tracking_uri is not None else str(MlflowClient().tracking_uri)

    @property
    def log_dir(self) -> str | None:
        """The folder of a local SQLite database or file store (``None`` for a server)."""
        return _local_folder(self._tracking_uri)

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        """The :class:`mlflow.MlflowClient`, with the run started (rank 0 only)."""
        if self._client is None:
            folder = _local_folder(self._tracking_uri)
            if folder is not None:
                os.makedirs(folder, exist_ok=True)  # SQLite does not create the database's folder
            client = MlflowClient(self._tracking_uri)
            self._run_id = self._start_run(client) if self._run_id is None else self._continue_run(client)
            self._client = client
            if self._resume_step is not None:
                self._load_replay()
        return self._client

    # ----------------------------------------------------------------------------------------------
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log ``metrics`` at ``step`` (0 when ``None``) in one ``log_batch`` request.

        Args:
            metrics: key → number (floats, 0-d tensors or arrays).
            step: the global step.
        """
        client = self.experiment
        step = 0 if step is None else int(step)
        now = int(time.time() * 1000)
        points = []
        for key, raw in metrics.items():
            name, value = self._metric_name(key), float(raw)
            if not self._replayed(name, step, value):
                points.append(Metric(key=name, value=value, timestamp=now, step=step))
        for chunk in _chunks(points, _METRICS_PER_BATCH):
            client.log_batch(str(self._run_id), metrics=chunk)
        self._latest_step = step if self._latest_step is None else max(self._latest_step, step)

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Write hyper-parameters as MLflow params, once per run.

        Nested dicts are flattened with ``/`` (``{"opt": {"lr": 0.1}}`` → ``opt/lr``); values are
        written as text, cut to MLflow's 6000 characters (with a warning naming the params cut). A
        param the run already holds with the same value is skipped (so a resumed job may log its
        params again); a different value is refused, as MLflow refuses it.

        Args:
            params: a mapping or an ``argparse.Namespace``.
            *args: ignored (Fabric's signature).
            **kwargs: ignored.

        Raises:
            ConfigurationError: the run already holds some of these params with other values
                (nothing is written then).
        """
        flat = flatten_params(params)
        client = self.experiment
        held = client.get_run(str(self._run_id)).data.params
        new, changed, cut = [], [], []
        for key, raw in flat.items():
            name, text = self._metric_name(key), str(raw)
            value = text[:_PARAM_LENGTH]
            if name not in held:
                new.append(Param(name, value))
                if len(text) > _PARAM_LENGTH:
                    cut.append(f"`{name}` ({len(text)} characters)")
            elif held[name] != value:
                changed.append(f"`{name}`: {held[name]!r} logged, {value!r} now")
        if changed:
            raise ConfigurationError(
                f"MLflow run {self._run_id} already holds params with other values ({'; '.join(changed)}); "
                "MLflow writes a param once per run. HINT: log values that change as metrics, or start a new "
                "run (an MLFlowLogger without run_id and without a checkpoint's state)."
            )
        if cut:
            rank_zero_warn(
                f"MLflow keeps at most {_PARAM_LENGTH} characters of a param value; the values of {', '.join(cut)} "
                "are written cut to that length. HINT: log long values (a whole config) as an artifact instead."
            )
        for chunk in _chunks(new, _PARAMS_PER_BATCH):
            client.log_batch(str(self._run_id), params=chunk)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """End the run: ``"success"`` → ``FINISHED``, ``"failed"`` → ``FAILED`` (nothing if it never started).

        Args:
            status: Fabric's status (``"success"``, ``"failed"``) or an MLflow run status.
        """
        if self._client is None:
            return
        self._client.set_terminated(str(self._run_id), _STATUS.get(status, status.upper()))

    # ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The run id and the latest step logged, for a checkpoint (``None`` on ranks that log nothing).

        Returns:
            ``{"run_id": str | None, "step": int | None}``: plain values, safe for ``weights_only`` loading.
        """
        return {"run_id": self._run_id, "step": self._latest_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the run a checkpoint was taken from, without logging its points again.

        Args:
            state: what :meth:`state_dict` returned.

        Raises:
            ConfigurationError: this logger already writes to another run, or was made for
                another ``run_id``.
        """
        run_id = state.get("run_id")
        if run_id is None:
            return
        if self._run_id is not None and self._run_id != run_id:
            started = "already writes to" if self._client is not None else "was made for"
            raise ConfigurationError(
                f"The checkpoint continues MLflow run {run_id}, but this MLFlowLogger {started} run "
                f"{self._run_id}. HINT: load the checkpoint before logging anything, and leave out run_id= "
                "(the checkpoint says which run to continue)."
            )
        self._run_id = str(run_id)
        step = state.get("step")
        self.resume(-1 if step is None else int(step))

    def resume(self, step: int, rows_at_step: int | None = None) -> None:
        """Do not log again the points the run holds from ``step`` on (the checkpoint's step).

        Args:
            step: the step of the checkpoint the job resumes from.
            rows_at_step: unused (MLflow points are matched by key and step).
        """
        self._resume_step = int(step) if self._resume_step is None else min(self._resume_step, int(step))
        self._latest_step = int(step) if self._latest_step is None else max(self._latest_step, int(step))
        if self._client is not None:
            self._load_replay()

    # ----------------------------------------------------------------------------------------------
    def _start_run(self, client: MlflowClient) -> str:
        experiment = client.get_experiment_by_name(self._experiment_name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            experiment_id = client.create_experiment(self._experiment_name, artifact_location=self._artifact_location)
        run = client.create_run(experiment_id, tags=self._tags, run_name=self._run_name)
        return str(run.info.run_id)

    def _continue_run(self, client: MlflowClient) -> str:
        run_id = str(self._run_id)
        try:
            run = client.get_run(run_id)
        except MlflowException as err:
            raise ConfigurationError(
                f"MLflow run {run_id} cannot be continued: it is not in {self.tracking_uri} ({err.message}). "
                "HINT: use the tracking_uri the run was logged to."
            ) from err
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return run_id

    def _load_replay(self) -> None:
        """Note the points the run holds from the resume step on: the resumed job does not log them again."""
        assert self._client is not None and self._resume_step is not None
        run_id, start = str(self._run_id), self._resume_step
        self._replay = {}
        for key in self._client.get_run(run_id).data.metrics:
            points = sorted(self._client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
            for m in points:
                if m.step >= start:
                    self._replay.setdefault((key, int(m.step)), []).append(float(m.value))

    def _replayed(self, name: str, step: int, value: float) -> bool:
        """Whether the run holds this point already (logged after the checkpoint by the interrupted job)."""
        stored = self._replay.get((name, step))
        if not stored:
            return False
        old = stored.pop(0)
        if not stored:
            del self._replay[(name, step)]
        if old != value and not (math.isnan(old) and math.isnan(value)):
            rank_zero_warn(
                f"MLflow run {self._run_id} keeps `{name}` = {old} at step {step}, logged before the job was "
                f"resumed; the resumed job computed {value}. MLflow cannot delete metric points, so the resumed "
                "job does not log the steps the run already holds. HINT: make the loop deterministic from the "
                "checkpoint (seeded data order) to get the same values."
            )
        return True

    def _metric_name(self, key: str) -> str:
        """The MLflow name of ``key``: characters MLflow refuses become ``_`` (with a warning, once)."""
        name = self._names.get(key)
        if name is None:
            name = _INVALID_CHARS.sub("_", key)
            clash = [k for k, n in self._names.items() if n == name]
            if clash:
                raise ConfigurationError(
                    f"Keys {clash[0]!r} and {key!r} both become {name!r} in MLflow, which allows only letters, "
                    "digits, '_', '-', '.', ' ' and '/' in names. HINT: rename one of them (the metric's or "
                    "probe's name, or a scheduler's prefix=)."
                )
            if name != key:
                rank_zero_warn(f"MLflow does not allow {key!r} as a name; it is logged as {name!r}.")
            self._names[key] = name
        return name


def read_mlflow_history(run_id: str, *, tracking_uri: str | None = None) -> History:
    """Read the metrics of an MLflow run into a :class:`~fabricmetrics.History`.

    Args:
        run_id: the run (``MLFlowLogger.run_id``, or the id shown by ``mlflow ui``).
        tracking_uri: where the run is stored (MLflow's default when ``None``).

    Returns:
        For each key, the ``(step, value)`` points in step order; :attr:`History.source` names the run.

    Raises:
        ConfigurationError: no such run in that store.

    Example:
        >>> import tempfile
        >>> uri = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"
        >>> logger = MLFlowLogger(tracking_uri=uri)
        >>> logger.log_metrics({"loss/train_step": 0.5}, step=1)
        >>> logger.log_metrics({"loss/train_step": 0.25}, step=2)
        >>> read_mlflow_history(logger.run_id, tracking_uri=uri)["loss/train_step"]
        [(1, 0.5), (2, 0.25)]
    """
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ConfigurationError(
            f"No MLflow run {run_id!r} in {client.tracking_uri} ({err.message}). "
            "HINT: pass the tracking_uri the run was logged to, and the id `mlflow ui` shows."
        ) from err
    history = History()
    for key in sorted(run.data.metrics):
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
            history.record({key: m.value}, int(m.step))
    history.source = f"MLflow run {run_id} in {client.tracking_uri}"
    return history


def read_mlflow_runs(tracking_uri: str) -> dict[str, History]:
    """Read every run of an MLflow store, by ``"{experiment}/{run name}"``, oldest first.

    Args:
        tracking_uri: the store, e.g. ``sqlite:///runs/demo/mlflow.db``.

    Returns:
        Run label → :func:`read_mlflow_history` of the run (a run name that repeats gets its id).

    Raises:
        ConfigurationError: the store holds no run.
    """
    client = MlflowClient(tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    runs = client.search_runs(list(experiments), order_by=["attributes.start_time ASC"]) if experiments else []
    if not runs:
        raise ConfigurationError(
            f"The MLflow store {tracking_uri} holds no run. HINT: pass the store the runs were logged to "
            "(fabricmetrics demo --logger mlflow writes OUT/mlflow.db)."
        )
    labels = [f"{experiments[r.info.experiment_id]}/{r.info.run_name or r.info.run_id}" for r in runs]
    return {
        (label if labels.count(label) == 1 else f"{label} ({run.info.run_id[:8]})"): read_mlflow_history(
            run.info.run_id, tracking_uri=tracking_uri
        )
        for label, run in zip(labels, runs, strict=True)
    }


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _local_folder(tracking_uri: str | None) -> str | None:
    """The folder of a ``sqlite:///`` database or ``file:`` store, else ``None``."""
    if not tracking_uri:
        return None
    if tracking_uri.startswith("sqlite:///"):
        path = unquote(tracking_uri[len("sqlite:///") :].split("?")[0])  # sqlite:////abs or sqlite:///rel
        return None if path in ("", ":memory:") else os.path.dirname(os.path.abspath(path))
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "file":
        return os.path.abspath(unquote(parsed.path))
    return None
