"""When a stage computes and logs: pure logic, no torch."""

from __future__ import annotations

from dataclasses import dataclass

from fabricmetrics._validate import check_int
from fabricmetrics.exceptions import ConfigurationError

__all__ = ["Schedule", "default_schedule"]


@dataclass(frozen=True)
class Schedule:
    """When one stage computes and logs its metrics.

    Args:
        every_n_steps: log step-level values on the n-th, 2n-th, … step of the stage (steps are
            counted over the whole run, not per epoch); ``None`` never logs step-level values.
        every_n_epochs: compute and log epoch-level values at the end of the n-th, 2n-th, …
            completed epoch of the stage; ``None`` never does. A failed epoch does not count.
        per_step: how plain callables (not ``torchmetrics.Metric``) are aggregated over an epoch.
            ``True``: computed on every batch, then the batch-size-weighted mean over the epoch and
            over ranks. ``False``: the needed arguments are collected and the metric is computed
            once, exactly, on the whole epoch across ranks. ``torchmetrics.Metric`` objects always
            accumulate their own state.

    Raises:
        ConfigurationError: a period is not a positive integer.

    Example:
        >>> s = Schedule(every_n_steps=50, every_n_epochs=2)
        >>> s.logs_step(100), s.logs_step(101), s.logs_epoch(1), s.logs_epoch(2)
        (True, False, False, True)
    """

    every_n_steps: int | None = None
    every_n_epochs: int | None = 1
    per_step: bool = False

    def __post_init__(self) -> None:
        """Reject periods that are not positive integers."""
        for field in ("every_n_steps", "every_n_epochs"):
            value = getattr(self, field)
            if value is not None:
                check_int(value, f"Schedule({field}=...)", minimum=1, hint=f"use {field}=None to turn it off.")
        if not isinstance(self.per_step, bool):
            raise ConfigurationError(f"Schedule(per_step=...) expects a bool, got {self.per_step!r}.")

    def logs_step(self, step: int) -> bool:
        """Whether step number ``step`` (1-based, counted per stage) logs step-level values.

        Args:
            step: the number of steps of this stage so far, this one included.

        Returns:
            ``True`` on multiples of ``every_n_steps``.
        """
        return self.every_n_steps is not None and step % self.every_n_steps == 0

    def logs_epoch(self, epoch: int) -> bool:
        """Whether completed epoch number ``epoch`` (1-based, per stage) computes and logs.

        Args:
            epoch: the number of completed epochs of this stage, this one included.

        Returns:
            ``True`` on multiples of ``every_n_epochs``.
        """
        return self.every_n_epochs is not None and epoch % self.every_n_epochs == 0


def default_schedule(stage: str) -> Schedule:
    """The schedule a stage gets when none is given.

    Args:
        stage: the stage name.

    Returns:
        ``Schedule(every_n_steps=50, every_n_epochs=1, per_step=True)`` for ``"train"``,
        ``Schedule(every_n_steps=None, every_n_epochs=1, per_step=False)`` for any other stage.

    Example:
        >>> default_schedule("val")
        Schedule(every_n_steps=None, every_n_epochs=1, per_step=False)
    """
    if stage == "train":
        return Schedule(every_n_steps=50, every_n_epochs=1, per_step=True)
    return Schedule(every_n_steps=None, every_n_epochs=1, per_step=False)
