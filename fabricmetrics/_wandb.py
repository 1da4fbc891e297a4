"""Weights & Biases: a Fabric ``Logger`` over ``wandb.init``, resumable from a checkpoint.

W&B's own Fabric logger (``wandb.integration.lightning.fabric``) imports the full ``lightning``
package; :class:`WandbLogger` needs only ``wandb``. Values are logged with W&B's ``step`` set to the
tracker's global step, hyper-parameters go to the run's config once, and a checkpoint carries the
run id: a resumed job *rewinds* the run to the checkpoint's step (W&B's ``resume_from``), so the
points the interrupted job logged after it are dropped, as TensorBoard's ``purge_step`` does.

Install with ``pip install "fabricmetrics[wandb]"``; ``mode="offline"`` (or ``WANDB_MODE=offline``)
keeps everything on the machine until ``wandb sync``.
"""

from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Mapping
from typing import Any, Literal

import wandb  # without it, fabricmetrics.loggers.WandbLogger names the extra to install
from lightning_fabric.loggers import Logger
from lightning_fabric.loggers.logger import rank_zero_experiment
from lightning_fabric.utilities.rank_zero import rank_zero_only

from fabricmetrics.exceptions import ConfigurationError
from fabricmetrics.loggers import flatten_params

__all__ = ["WandbLogger"]


class WandbLogger(Logger):
    """Log to Weights & Biases, with W&B's step equal to the tracker's global step.

    The run starts with the first value logged (on rank 0 only). Resuming: put the logger in the
    checkpoint next to the tracker (``fabric.save(path, {"tracker": tracker, "wandb": logger})``);
    after :meth:`load_state_dict` the run is continued with ``resume_from="<id>?_step=<step>"``,
    which rewinds its history to the checkpoint's step. Offline, the rewind is recorded in the run
    files and applied by the W&B server when they are synced.

    Args:
        project: the W&B project.
        name: the run's display name.
        save_dir: the folder W&B writes its files under (``<save_dir>/wandb/``); W&B's default when ``None``.
        mode: ``"online"``, ``"offline"`` or ``"disabled"``; ``None`` follows ``WANDB_MODE``.
        **init_kwargs: passed to ``wandb.init`` (``id=`` continues an existing run, ``tags=``, ``group=``, ...).

    Example:
        >>> import tempfile
        >>> quiet = wandb.Settings(silent=True, x_disable_stats=True)
        >>> logger = WandbLogger("demo", save_dir=tempfile.mkdtemp(), mode="offline", settings=quiet)
        >>> logger.log_hyperparams({"lr": 0.1, "optimizer": {"name": "sgd"}})
        >>> logger.log_metrics({"acc/val": 0.5}, step=10)
        >>> dict(logger.experiment.config), logger.experiment.step
        ({'lr': 0.1, 'optimizer/name': 'sgd'}, 10)
        >>> logger.finalize("success")
    """

    def __init__(
        self,
        project: str | None = None,
        *,
        name: str | None = None,
        save_dir: str | os.PathLike[str] | None = None,
        mode: Literal["online", "offline", "disabled"] | None = None,
        **init_kwargs: Any,
    ) -> None:
        super().__init__()
        self._project = project
        self._name = name
        self._save_dir = None if save_dir is None else os.fspath(save_dir)
        self._mode = mode
        self._id: str | None = init_kwargs.pop("id", None)
        self._init_kwargs = init_kwargs
        self._run: Any = None
        self._latest_step: int | None = None
        self._resume_step: int | None = None

    @property
    def name(self) -> str | None:
        """The project."""
        return self._project

    @property
    def version(self) -> str | None:
        """The run id, once the run has started or a checkpoint named it (reading it starts nothing)."""
        return self._id

    @property
    def log_dir(self) -> str | None:
        """The folder W&B writes its files under (``None``: W&B's default)."""
        return self._save_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run (started on first use; rank 0 only)."""
        if self._run is None:
            kwargs: dict[str, Any] = {"project": self._project, "name": self._name, "mode": self._mode}
            if self._save_dir is not None:
                os.makedirs(self._save_dir, exist_ok=True)
                kwargs["dir"] = self._save_dir
            if self._id is not None and self._resume_step is not None:
                kwargs["resume_from"] = f"{self._id}?_step={self._resume_step}"
            elif self._id is not None:
                kwargs.update(id=self._id, resume="allow")
            self._run = wandb.init(**kwargs, **self._init_kwargs)
            self._resume_step = None  # rewound once: a run reopened after finalize keeps what this job logged
            self._id = str(self._run.id)
        return self._run

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log ``metrics`` in one row at W&B step ``step`` (rows of one step are merged).

        Args:
            metrics: key → number.
            step: the global step (W&B's own counter when ``None``).
        """
        values = {key: float(value) for key, value in metrics.items()}
        if step is None:
            self.experiment.log(values)
            return
        self.experiment.log(values, step=int(step))
        self._latest_step = int(step) if self._latest_step is None else max(self._latest_step, int(step))

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Write hyper-parameters to the run's config, once (nested dicts flattened with ``/``).

        Args:
            params: a mapping or an ``argparse.Namespace``.
            *args: ignored (Fabric's signature).
            **kwargs: ignored.

        Raises:
            ConfigurationError: the config holds some of these keys with other values (nothing is written).
        """
        flat = flatten_params(params)
        config = self.experiment.config
        changed = [f"`{k}`: {config[k]!r} logged, {v!r} now" for k, v in flat.items() if k in config and config[k] != v]
        if changed:
            raise ConfigurationError(
                f"The W&B run {self._id} already holds config values that differ ({'; '.join(changed)}). "
                "HINT: log values that change as metrics, or start a new run."
            )
        config.update(flat)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Finish the run: exit code 0 for ``"success"``, 1 otherwise (nothing if it never started).

        Args:
            status: Fabric's status, ``"success"`` or ``"failed"``.
        """
        if self._run is not None:
            self._run.finish(exit_code=0 if status == "success" else 1)
            self._run = None

    def state_dict(self) -> dict[str, Any]:
        """The run id and the latest step logged (``None`` on ranks that log nothing).

        Returns:
            ``{"run_id": str | None, "step": int | None}``.
        """
        return {"run_id": self._id, "step": self._latest_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the run of a checkpoint, rewound to the checkpoint's step.

        Args:
            state: what :meth:`state_dict` returned.

        Raises:
            ConfigurationError: this logger already writes to another run, or was made for another ``id``.
        """
        run_id = state.get("run_id")
        if run_id is None:
            return
        if self._id is not None and self._id != run_id:
            started = "already writes to" if self._run is not None else "was made for"
            raise ConfigurationError(
                f"The checkpoint continues W&B run {run_id}, but this WandbLogger {started} run {self._id}. "
                "HINT: load the checkpoint before logging anything, and leave out id= "
                "(the checkpoint says which run to continue)."
            )
        if self._run is not None:
            raise ConfigurationError(
                f"The W&B run {run_id} is already open, so it cannot be rewound to the checkpoint. "
                "HINT: load the checkpoint before logging anything."
            )
        self._id = str(run_id)
        step = state.get("step")
        if step is not None:
            self.resume(int(step))

    def resume(self, step: int, rows_at_step: int | None = None) -> None:
        """Rewind the run to ``step`` when it opens (the points logged after it are dropped).

        Args:
            step: the step of the checkpoint the job resumes from.
            rows_at_step: unused.
        """
        self._resume_step = int(step)
        self._latest_step = int(step)
