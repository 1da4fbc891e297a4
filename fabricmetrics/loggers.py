"""Loggers: Fabric's ``TensorBoardLogger`` and a resume-safe ``CSVLogger``.

Any :class:`lightning_fabric.loggers.Logger` works with the tracker. This module re-exports Fabric's
``TensorBoardLogger`` and ``Logger`` and adds one fix to Fabric's ``CSVLogger``: Fabric deletes
``metrics.csv`` when a version folder is reused, which loses every row of a run that is resumed
from a checkpoint. :class:`CSVLogger` keeps the earlier rows and drops only those logged after the
checkpoint (the tracker tells it the step, and how many rows it had logged at that step, in
``load_state_dict``), so the file ends up with exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_fabric.loggers import CSVLogger as _FabricCSVLogger
from lightning_fabric.loggers import Logger, TensorBoardLogger
from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from lightning_fabric.loggers.logger import rank_zero_experiment
from lightning_fabric.utilities.rank_zero import rank_zero_warn

from fabricmetrics.exceptions import LogDirectoryError

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger", "check_writable", "flush_loggers", "resume_loggers"]


class CSVLogger(_FabricCSVLogger):
    """Fabric's ``CSVLogger``, except that resuming keeps the earlier rows.

    Same arguments as :class:`lightning_fabric.loggers.CSVLogger`. After :meth:`resume` (called by
    ``MetricsTracker.load_state_dict``), opening an existing ``metrics.csv`` keeps its rows up to the
    checkpoint and drops the later ones, which the resumed run will log again. Without a resume
    it behaves like Fabric's logger.

    Example:
        >>> import tempfile
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

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Fabric's ``log_metrics``, counting the rows of the latest step (see :meth:`rows_at_step`)."""
        super().log_metrics(metrics, step)  # type: ignore[arg-type]
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
        if isinstance(self._experiment, _ResumableWriter):
            self._experiment.save()
            self._experiment.truncate_after(*self._resume)

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        """The writer of ``metrics.csv`` (created on first use, on rank 0 only)."""
        if self._experiment is None:
            os.makedirs(self._root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(self.log_dir, self._resume)
        return self._experiment


class _ResumableWriter(_ExperimentWriter):
    """Fabric's CSV writer that, when resuming, keeps the rows up to the checkpoint."""

    def __init__(self, log_dir: str, resume: tuple[int, int | None] | None) -> None:
        self._resume = resume
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return  # other files (e.g. TensorBoard events sharing the folder) are left alone
        if self._resume is None:
            rank_zero_warn(
                f"{self.metrics_file_path} exists and this run does not resume from a checkpoint, so it is "
                "replaced (as Fabric's CSVLogger does). HINT: load the tracker's state_dict to keep its rows."
            )
            os.remove(self.metrics_file_path)
        else:
            self.truncate_after(*self._resume)

    def truncate_after(self, step: int, rows_at_step: int | None = None) -> None:
        """Rewrite ``metrics.csv`` without the rows logged after the checkpoint.

        Keeps the rows of steps before ``step`` and the first ``rows_at_step`` rows of ``step``
        (all of them when ``None``), in file order, which is the order they were logged in.
        """
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            fieldnames = list(reader.fieldnames or [])
            rows, at_step = [], 0
            for row in reader:
                row_step = _row_step(row)
                if row_step == step:
                    at_step += 1
                    if rows_at_step is not None and at_step > rows_at_step:
                        continue
                if row_step <= step:
                    rows.append(row)
        tmp = self.metrics_file_path + ".tmp"
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_file_path)
        self.metrics_keys = fieldnames


def _row_step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


def resume_loggers(loggers: list[Logger], step: int, *, rows_at_step: Sequence[int | None] | None = None) -> None:
    """Tell loggers that the run resumes from ``step`` so they drop what was logged after it.

    :class:`CSVLogger` keeps its earlier rows: those of earlier steps and, of the rows at ``step``,
    the number it had logged when the checkpoint was taken (all of them if unknown). A
    ``TensorBoardLogger`` whose writer is not open yet gets ``purge_step=step + 1``, which hides the
    events logged after ``step`` (TensorBoard purges by step: what the interrupted run logged at
    ``step`` itself after the checkpoint stays, and appears twice if logged again). Other loggers
    are left alone.

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
        elif isinstance(logger, TensorBoardLogger):
            kwargs = getattr(logger, "_kwargs", None)
            if getattr(logger, "_experiment", True) is not None or not isinstance(kwargs, dict):
                rank_zero_warn(
                    "The TensorBoardLogger was already writing when the tracker resumed, so the events the "
                    "interrupted run logged after the checkpoint stay in its files. HINT: call "
                    "tracker.load_state_dict before anything is logged."
                )
                continue
            kwargs.setdefault("purge_step", step + 1)


def flush_loggers(loggers: list[Logger]) -> None:
    """Write what the loggers buffer (Fabric's ``CSVLogger`` keeps up to 100 rows in memory).

    Loggers that have not started writing are left alone (nothing to flush, and a TensorBoard
    writer must not open before a resume has set its ``purge_step``). Errors are warnings: a
    checkpoint is not lost because a log could not be flushed.

    Args:
        loggers: the tracker's loggers.
    """
    for logger in loggers:
        if getattr(logger, "_experiment", True) is None:
            continue
        try:
            logger.save()
        except Exception as err:
            rank_zero_warn(f"{type(logger).__name__}.save() failed while flushing for a checkpoint: {err}")


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
    if not directory:
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
