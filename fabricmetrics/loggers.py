"""Loggers: Fabric's ``TensorBoardLogger`` and a resume-safe ``CSVLogger``.

Any :class:`lightning_fabric.loggers.Logger` works with the tracker. This module re-exports Fabric's
``TensorBoardLogger`` and ``Logger`` and adds one fix to Fabric's ``CSVLogger``: Fabric deletes
``metrics.csv`` when a version folder is reused, which loses every row of a run that is resumed
from a checkpoint. :class:`CSVLogger` keeps the earlier rows and drops only those logged after the
step the run resumes from (the tracker tells it that step in ``load_state_dict``), so the file
ends up with exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import csv
import os
import tempfile
from typing import Any

from lightning_fabric.loggers import CSVLogger as _FabricCSVLogger
from lightning_fabric.loggers import Logger, TensorBoardLogger
from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from lightning_fabric.loggers.logger import rank_zero_experiment
from lightning_fabric.utilities.rank_zero import rank_zero_warn

from fabricmetrics.exceptions import LogDirectoryError

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger", "check_writable", "resume_loggers"]


class CSVLogger(_FabricCSVLogger):
    """Fabric's ``CSVLogger``, except that resuming keeps the earlier rows.

    Same arguments as :class:`lightning_fabric.loggers.CSVLogger`. After :meth:`resume` (called by
    ``MetricsTracker.load_state_dict``), opening an existing ``metrics.csv`` keeps its rows up to the
    resumed step and drops the later ones, which the resumed run will log again. Without a resume
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
        self._resume_step: int | None = None

    def resume(self, step: int) -> None:
        """Keep the rows logged at steps ``<= step`` and drop later ones.

        Args:
            step: the global step of the checkpoint the run resumes from.
        """
        self._resume_step = int(step)
        if isinstance(self._experiment, _ResumableWriter):
            self._experiment.save()
            self._experiment.truncate_after(self._resume_step)

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        """The writer of ``metrics.csv`` (created on first use, on rank 0 only)."""
        if self._experiment is None:
            os.makedirs(self._root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(self.log_dir, self._resume_step)
        return self._experiment


class _ResumableWriter(_ExperimentWriter):
    """Fabric's CSV writer that, when resuming, keeps the rows up to the resumed step."""

    def __init__(self, log_dir: str, keep_until: int | None) -> None:
        self._keep_until = keep_until
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return  # other files (e.g. TensorBoard events sharing the folder) are left alone
        if self._keep_until is None:
            rank_zero_warn(
                f"{self.metrics_file_path} exists and this run does not resume from a checkpoint, so it is "
                "replaced (as Fabric's CSVLogger does). HINT: load the tracker's state_dict to keep its rows."
            )
            os.remove(self.metrics_file_path)
        else:
            self.truncate_after(self._keep_until)

    def truncate_after(self, step: int) -> None:
        """Rewrite ``metrics.csv`` without the rows logged after ``step``."""
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            fieldnames = list(reader.fieldnames or [])
            rows = [row for row in reader if _row_step(row) <= step]
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


def resume_loggers(loggers: list[Logger], step: int) -> None:
    """Tell loggers that the run resumes from ``step`` so they drop what was logged after it.

    :class:`CSVLogger` keeps its earlier rows; a ``TensorBoardLogger`` whose writer is not open yet
    gets ``purge_step=step + 1``, which hides the events logged after ``step`` by the interrupted
    run. Other loggers are left alone.

    Args:
        loggers: the tracker's loggers.
        step: the global step of the checkpoint.
    """
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            logger.resume(step)
        elif isinstance(logger, TensorBoardLogger) and getattr(logger, "_experiment", True) is None:
            kwargs = getattr(logger, "_kwargs", None)
            if isinstance(kwargs, dict):
                kwargs.setdefault("purge_step", step + 1)


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
