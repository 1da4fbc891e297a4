"""Loggers: Fabric's ``TensorBoardLogger`` and a durable, resume-safe ``CSVLogger``; what the tracker does with them.

Any :class:`lightning_fabric.loggers.Logger` works with the tracker (the classes of
``lightning.fabric.loggers`` too). This module re-exports Fabric's ``TensorBoardLogger`` and
``Logger`` and gives Fabric's ``CSVLogger`` a writer whose file survives the process:

- every flush puts the rows on disk (the tracker flushes at every epoch end and at exit); a row is
  appended whole or not at all;
- a rewrite (new keys, a resume) writes a sibling temporary file, syncs it and renames it over
  ``metrics.csv``, so a failure (a full disk) leaves the previous file as it was; the rows that
  could not be written stay in memory, the error says which, and the next flush writes them;
- new keys become the last columns, so the one rewrite of a flush that brings new keys pads the
  earlier rows with a single bytes replacement instead of parsing each of them;
- a resumed run keeps the rows logged up to its checkpoint (Fabric's logger deletes the file).

The functions below are what :class:`~fabricmetrics.MetricsTracker` calls: :func:`open_loggers`
(one ``version_N`` for all loggers of a run, an early check of the directories, a flush at exit),
:func:`flush_loggers`, :func:`close_loggers`, :func:`resume_loggers` and :func:`describe_log_error`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import weakref
from argparse import Namespace
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lightning_fabric.loggers import CSVLogger as _FabricCSVLogger
from lightning_fabric.loggers import Logger, TensorBoardLogger
from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from lightning_fabric.loggers.logger import rank_zero_experiment
from lightning_fabric.utilities.rank_zero import rank_zero_only, rank_zero_warn

from fabricmetrics._csvwriter import DurableWriter, describe_os_error
from fabricmetrics.exceptions import LogDirectoryError

__all__ = [
    "CSVLogger",
    "Logger",
    "TensorBoardLogger",
    "check_writable",
    "close_loggers",
    "describe_log_error",
    "flush_loggers",
    "open_loggers",
    "resume_loggers",
]

# Loggers of optional packages, imported on first use: name → (module, the extra that installs its package)
_OPTIONAL = {
    "MLFlowLogger": ("fabricmetrics._mlflow", "mlflow"),
    "read_mlflow_history": ("fabricmetrics._mlflow", "mlflow"),
    "read_mlflow_runs": ("fabricmetrics._mlflow", "mlflow"),
    "WandbLogger": ("fabricmetrics._wandb", "wandb"),
}


def __getattr__(name: str) -> Any:
    if name not in _OPTIONAL:
        raise AttributeError(f"module 'fabricmetrics.loggers' has no attribute {name!r}")
    import importlib

    module, extra = _OPTIONAL[name]
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as err:
        raise ImportError(
            f"fabricmetrics.loggers.{name} needs the `{err.name or extra}` package. "
            f'HINT: pip install "fabricmetrics[{extra}]"'
        ) from err


class CSVLogger(_FabricCSVLogger):
    """Fabric's ``CSVLogger`` with a durable file, and a resume that keeps the earlier rows.

    Same arguments as :class:`lightning_fabric.loggers.CSVLogger`. Differences:

    - :meth:`save` writes the rows atomically (see the module's description) and raises a
      :class:`~fabricmetrics.exceptions.LogDirectoryError` naming the cause, the file and the rows
      kept in memory when it cannot; a periodic save inside :meth:`log_metrics` warns instead.
    - Rows are saved every ``flush_logs_every_n_steps`` rows (Fabric saves when
      ``(step + 1) % flush_logs_every_n_steps == 0``, which steps 50, 100, … never meet), and at
      exit if the process ends normally without :meth:`finalize`.
    - After :meth:`resume` (called by ``MetricsTracker.load_state_dict``), opening an existing
      ``metrics.csv`` keeps its rows up to the checkpoint and drops the later ones, which the
      resumed run logs again. Without a resume it replaces the file, as Fabric's logger does.
    - Columns are ``step`` and then the keys in the order they first appeared.

    Example:
        >>> import csv, tempfile
        >>> root = tempfile.mkdtemp()
        >>> logger = CSVLogger(root, name="run", version=0)
        >>> for step in (1, 2, 3):
        ...     logger.log_metrics({"loss": 1.0 / step}, step=step)
        >>> logger.finalize("success")
        >>> resumed = CSVLogger(root, name="run", version=0)
        >>> resumed.resume(2)  # the checkpoint was taken at step 2
        >>> resumed.log_metrics({"loss": 0.3}, step=3)
        >>> resumed.finalize("success")
        >>> [row["step"] for row in csv.DictReader(open(os.path.join(resumed.log_dir, "metrics.csv")))]
        ['1', '2', '3']
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Same arguments as Fabric's ``CSVLogger``."""
        super().__init__(*args, **kwargs)
        self._resume: tuple[int, int | None] | None = None
        # (largest step logged so far, rows logged at it; None when unknown), for checkpoints
        self._latest: tuple[int, int | None] | None = None
        self._save_at = max(1, int(self._flush_logs_every_n_steps))  # pending rows that trigger a save

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Fabric's ``log_metrics``; rows are saved every ``flush_logs_every_n_steps`` rows."""
        every = max(1, int(self._flush_logs_every_n_steps))
        try:
            super().log_metrics(metrics, step)  # type: ignore[arg-type]
            writer = self.experiment
            if len(writer.metrics) >= self._save_at:
                writer.save()
            if not writer.metrics:
                self._save_at = every
        except LogDirectoryError as err:  # the rows stay in memory; the next flush writes them
            self._save_at = len(self.experiment.metrics) + every  # not again at every row
            rank_zero_warn(str(err))
        if step is None:
            return
        latest = self._latest
        if latest is None or step > latest[0]:
            self._latest = (int(step), 1)
        elif step == latest[0]:
            self._latest = (latest[0], None if latest[1] is None else latest[1] + 1)

    def rows_at_step(self, step: int) -> int | None:
        """How many rows this logger has logged at ``step``, whoever logged them, if it knows.

        Known when ``step`` is the largest step logged so far (or larger: 0 rows); ``None`` when a
        later step was logged already, or when a resume kept an unknown number of rows at ``step``.
        """
        if self._latest is None or step > self._latest[0]:
            return 0
        return self._latest[1] if step == self._latest[0] else None

    def resume(self, step: int, rows_at_step: int | None = None) -> None:
        """Keep the rows logged up to the checkpoint and drop later ones.

        Args:
            step: the global step of the checkpoint the run resumes from.
            rows_at_step: how many rows had been logged *at* ``step`` when the checkpoint was
                taken (:meth:`rows_at_step` at the checkpoint); the later rows at ``step`` are dropped too.
                ``None`` keeps every row at ``step``.
        """
        self._resume = (int(step), None if rows_at_step is None else int(rows_at_step))
        self._latest = self._resume
        if isinstance(self._experiment, DurableWriter):
            self._experiment.save()
            self._experiment.truncate_after(*self._resume)

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        """The writer of ``metrics.csv`` (created on first use, on rank 0 only)."""
        if self._experiment is None:
            self._fs.makedirs(self._root_dir, exist_ok=True)
            writer = DurableWriter(self.log_dir, self._resume)
            self._experiment = writer
            # rows logged after the last flush reach the file when the process exits normally
            weakref.finalize(self, _save_quietly, writer)
        return self._experiment


# --------------------------------------------------------------------------------------------------
# What the tracker does with its loggers


def open_loggers(loggers: Sequence[Logger], *, owner: object | None = None, check: bool = True) -> Any:
    """Prepare a run's loggers before anything is written: one version, writable folders, a flush at exit.

    Fabric's CSV and TensorBoard loggers that share a root directory and a name get the same
    version (the one that some of them have already, else the next free one), so they write into
    one ``version_N`` folder whatever order they start writing in. With ``owner``, the loggers are
    flushed when ``owner`` is garbage-collected or the process exits normally, whichever comes
    first (TensorBoard's writer thread would otherwise drop its last events at exit).

    Args:
        loggers: the run's loggers.
        owner: the object whose lifetime the exit flush follows (the tracker); ``None`` registers none.
        check: create every logger's folder and write a file in it (:func:`check_writable`).

    Returns:
        The ``weakref.finalize`` of the exit flush (``.detach()`` it when the loggers are closed),
        or ``None`` without ``owner``.

    Raises:
        LogDirectoryError: with ``check``, a folder cannot be created or written.
    """
    _pin_versions(loggers)
    if check:
        for logger in loggers:
            check_writable(logger)
    if owner is None:
        return None
    return weakref.finalize(owner, flush_loggers, list(loggers))


def flush_loggers(loggers: Iterable[Logger]) -> None:
    """Write what the loggers buffer: after this, every row logged so far is on disk.

    Loggers that have not started writing are left alone (nothing to flush, and a TensorBoard
    writer must not open before a resume has set its ``purge_step``). Errors are warnings that say
    what could not be written and why: a run is not stopped because a log could not be flushed.

    Args:
        loggers: the tracker's loggers.
    """
    for logger in loggers:
        if getattr(logger, "_experiment", True) is None:
            continue
        try:
            logger.save()
        except Exception as err:
            rank_zero_warn(f"{type(logger).__name__}.save() failed: {describe_log_error(err, logger)}")


def close_loggers(loggers: Iterable[Logger], status: str = "success") -> None:
    """Flush and finalize every logger with ``status``; a logger that fails is a warning, the others still close.

    Args:
        loggers: the tracker's loggers.
        status: ``"success"`` or ``"failed"`` (passed to ``Logger.finalize``).
    """
    for logger in loggers:
        try:
            logger.finalize(status)
        except Exception as err:
            rank_zero_warn(f"{type(logger).__name__}.finalize({status!r}) failed: {describe_log_error(err, logger)}")


def resume_loggers(loggers: list[Logger], step: int, *, rows_at_step: Sequence[int | None] | None = None) -> None:
    """Tell loggers that the run resumes from ``step`` so they drop what was logged after it.

    :class:`CSVLogger` keeps its earlier rows: those of earlier steps and, of the rows at ``step``,
    the number it had logged when the checkpoint was taken (all of them if unknown). A
    ``TensorBoardLogger`` (of ``lightning_fabric`` or ``lightning.fabric``) whose writer is not open
    yet gets ``purge_step=step + 1``, which hides the events logged after ``step`` (TensorBoard
    purges by step: what the interrupted run logged at ``step`` itself after the checkpoint stays,
    and appears twice if logged again). Fabric's own ``CSVLogger`` gets a warning (it deletes the
    file when it reopens the folder). Other loggers are left alone.

    Args:
        loggers: the tracker's loggers.
        step: the global step of the checkpoint.
        rows_at_step: for each logger, in order, the rows it had logged at ``step`` when the
            checkpoint was taken (:meth:`CSVLogger.rows_at_step`), ``None`` where unknown.
    """
    counts = list(rows_at_step) if rows_at_step is not None else []
    for i, logger in enumerate(loggers):
        if isinstance(logger, CSVLogger):
            logger.resume(step, counts[i] if i < len(counts) else None)
        elif _is_fabric(logger, "CSVLogger"):
            rank_zero_warn(
                f"{type(logger).__module__}.CSVLogger deletes the metrics.csv of the version folder it reopens, so "
                "the rows of the interrupted run are lost. HINT: use fabricmetrics.loggers.CSVLogger, which keeps "
                "the rows up to the checkpoint."
            )
        elif _is_fabric(logger, "TensorBoardLogger"):
            kwargs = getattr(logger, "_kwargs", None)
            if getattr(logger, "_experiment", True) is not None or not isinstance(kwargs, dict):
                rank_zero_warn(
                    "The TensorBoardLogger was already writing when the tracker resumed, so the events the "
                    "interrupted run logged after the checkpoint stay in its files. HINT: call "
                    "tracker.load_state_dict before anything is logged."
                )
                continue
            kwargs.setdefault("purge_step", step + 1)


def describe_log_error(err: BaseException, logger: Logger | None = None) -> str:
    """What went wrong when a logger wrote: the operating system's error and its file, not a wrapper's guess.

    Fabric's ``TensorBoardLogger`` turns any write error into ``ValueError: you tried to log 1310.0
    which is currently not supported``; the real cause (``FileNotFoundError``, ``No space left on
    device``) is in the exception's chain, and this returns it, with what the logger kept.

    Args:
        err: what the logger raised.
        logger: the logger, to say what it kept.

    Returns:
        ``"OSError: [Errno 28] No space left on device: '/runs/metrics.csv'"``-like text.

    Example:
        >>> try:
        ...     try:
        ...         raise OSError(28, "No space left on device", "/runs/events.out.tfevents.1")
        ...     except OSError as cause:
        ...         raise ValueError("you tried to log 1310.0 which is currently not supported") from cause
        ... except ValueError as err:
        ...     print(describe_log_error(err))
        OSError: [Errno 28] No space left on device: '/runs/events.out.tfevents.1'
    """
    if isinstance(err, LogDirectoryError):
        return str(err)
    cause: BaseException | None = err
    seen: set[int] = set()
    while cause is not None and not isinstance(cause, OSError) and id(cause) not in seen:
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, OSError):
        return f"{type(err).__name__}: {err}"
    text = describe_os_error(cause)
    if logger is not None and _is_fabric(logger, "TensorBoardLogger"):
        text += (
            "; TensorBoard stops writing this run's events at its first write error: the points logged before it are "
            "in the event file, the later ones only in the history"
        )
    return text


def flatten_params(params: Mapping[str, Any] | Namespace) -> dict[str, Any]:
    """Hyper-parameters as one flat mapping, nested dicts joined with ``/`` (for MLflow params and W&B config).

    Example:
        >>> flatten_params({"lr": 0.1, "optimizer": {"name": "sgd", "betas": {}}})
        {'lr': 0.1, 'optimizer/name': 'sgd', 'optimizer/betas': {}}
    """
    return _flatten(vars(params) if isinstance(params, Namespace) else dict(params))


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_writable(logger: Logger) -> None:
    """Create the logger's directory and write a file in it, so a bad path fails at once.

    Args:
        logger: any logger; one without a local ``log_dir`` is skipped.

    Raises:
        LogDirectoryError: the directory cannot be created or written.
    """
    try:
        directory = logger.log_dir
    except Exception:
        directory = None
    if not directory or "://" in str(directory):
        return
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise LogDirectoryError(
            f"{type(logger).__name__} cannot write to {directory!r}: {err.strerror or err}. "
            "HINT: choose a writable root directory for the logger."
        ) from err


# --------------------------------------------------------------------------------------------------
# Fabric's private logger attributes (the writer's private API is used in fabricmetrics._csvwriter):
# ._experiment (None until a logger writes), ._version (None until resolved), ._fs and ._root_dir
# (CSV), ._flush_logs_every_n_steps (CSV), ._kwargs (TensorBoard, passed to its SummaryWriter).
# tests/test_log_durability.py checks each of them.


def _is_fabric(logger: Logger, name: str) -> bool:
    """Whether ``logger`` is (a subclass of) Fabric's ``name`` logger (``lightning_fabric`` or ``lightning.fabric``)."""
    return any(
        cls.__name__ == name and cls.__module__.startswith(("lightning_fabric.loggers", "lightning.fabric.loggers"))
        for cls in type(logger).__mro__
    )


def _pin_versions(loggers: Sequence[Logger]) -> None:
    """Give Fabric's loggers that share a root directory and a name one version, before any folder exists."""
    groups: dict[tuple[str, str], list[Logger]] = {}
    for logger in loggers:
        if not (_is_fabric(logger, "CSVLogger") or _is_fabric(logger, "TensorBoardLogger")):
            with contextlib.suppress(Exception):
                _ = logger.version  # other loggers: fixed now, as with Fabric
            continue
        key = (os.path.normpath(os.fspath(logger.root_dir or "")), str(logger.name or ""))
        groups.setdefault(key, []).append(logger)
    for members in groups.values():
        known = {getattr(logger, "_version", None) for logger in members} - {None}
        pending = [logger for logger in members if getattr(logger, "_version", None) is None]
        if pending:  # the one version the others have, else the next free one
            version = next(iter(known)) if len(known) == 1 else pending[0].version
            for logger in pending:
                setattr(logger, "_version", version)  # noqa: B010 (Fabric's private attribute)


def _save_quietly(writer: _ExperimentWriter) -> None:
    """Save a writer's last rows at exit or when its logger is garbage-collected (a failure is a warning)."""
    if not writer.metrics:
        return
    try:
        writer.save()
    except Exception as err:
        rank_zero_warn(f"CSVLogger could not save its last rows before closing: {describe_log_error(err)}")
