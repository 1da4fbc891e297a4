"""MetricsTracker: stages, epochs and steps of a training loop; fans results out to loggers and history."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from torchmetrics import Metric

from fabricmetrics._hooks import CallbackHooks
from fabricmetrics._stage import Stage
from fabricmetrics._values import flatten_value, to_floats
from fabricmetrics.bound import update_signature
from fabricmetrics.distributed import Collectives, resolve_collectives
from fabricmetrics.exceptions import (
    ConfigurationError,
    DistributedError,
    MetricError,
    OutputsTypeError,
    StageError,
    warn,
)
from fabricmetrics.history import History
from fabricmetrics.loggers import CSVLogger, Logger, check_writable, flush_loggers, resume_loggers
from fabricmetrics.needs import name_metrics, parse_needs
from fabricmetrics.progress import ProgressDisplay
from fabricmetrics.schedule import Schedule, default_schedule

if TYPE_CHECKING:
    from lightning_fabric import Fabric

__all__ = ["EpochRecord", "MetricsTracker"]

_STATE_FORMAT = 1


@dataclass
class EpochRecord:
    """What ``with tracker.epoch(stage) as epoch:`` yields.

    Attributes:
        stage: the stage name.
        index: the number of this epoch of the stage (1 for the first).
        num_samples: the dataset length given to ``epoch()``, if any.
        results: what the epoch computed, ``"{metric}/{stage}"`` → float, filled after the block
            (empty when the schedule skips this epoch).
        samples: samples this rank fed to the metrics (padding removed).
        empty_batches: steps of this rank skipped because they had no samples.
    """

    stage: str
    index: int
    num_samples: int | None = None
    results: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    empty_batches: int = 0


class MetricsTracker(CallbackHooks):
    """Metrics for a custom training loop, correct across steps, epochs and ranks.

    Args:
        metrics: a dict name → metric, a list, or one metric. A metric is a ``torchmetrics.Metric``,
            a scikit-learn metric function, or any callable returning a number, a 0-d or 1-D
            tensor/array, or a dict of numbers. Unnamed metrics are named after ``__name__`` or their
            class; clashes get ``_1``, ``_2``, …. A ``MetricCollection`` is taken as its metrics.
        needs: where each metric's arguments come from (see :mod:`fabricmetrics.needs`): ``None``
            infers them from required parameters, a list gives positional sources, a dict of
            str/callable gives keyword sources, a dict keyed by metric name gives per-metric ones.
        fabric: a launched ``lightning_fabric.Fabric``; its collectives do the cross-rank work and,
            when ``loggers`` is None, its loggers receive the values. Without it an initialised
            ``torch.distributed`` process group is used; without one, everything is local.
        loggers: ``lightning_fabric.loggers.Logger`` objects (TensorBoard, CSV, third-party).
        schedule: dict stage → :class:`~fabricmetrics.schedule.Schedule`; other stages get
            :func:`~fabricmetrics.schedule.default_schedule`.
        compute_on_cpu: collect exact-mode arguments on the CPU (copies made non-blocking).
        probes: :class:`~fabricmetrics.probing.ProbingScheduler` objects run at the end of train
            epochs.
        progress: show a live progress display on rank 0.

    Raises:
        ConfigurationError: a metric, ``needs`` or a schedule is invalid.

    Example:
        >>> import torch
        >>> from sklearn.metrics import accuracy_score
        >>> from torchmetrics.classification import MulticlassAccuracy
        >>> tracker = MetricsTracker({"acc": MulticlassAccuracy(3, average="micro"), "sk_acc": accuracy_score})
        >>> with tracker.epoch("val") as epoch:
        ...     tracker.step("val", {"preds": torch.tensor([0, 1, 2]), "target": torch.tensor([0, 1, 1])})
        ...     tracker.step("val", {"preds": torch.tensor([2]), "target": torch.tensor([2])})
        {}
        {}
        >>> epoch.results
        {'acc/val': 0.75, 'sk_acc/val': 0.75}
        >>> tracker.history["sk_acc/val"]
        [(0, 0.75)]
    """

    def __init__(
        self,
        metrics: Any,
        needs: Any = None,
        *,
        fabric: Fabric | None = None,
        loggers: Sequence[Logger] | None = None,
        schedule: Mapping[str, Schedule] | None = None,
        compute_on_cpu: bool = False,
        probes: Sequence[Any] = (),
        progress: bool = False,
    ) -> None:
        """Check the configuration; nothing touches devices, files or process groups yet."""
        self._metrics = name_metrics(metrics)
        self._specs = parse_needs(needs, self._metrics)
        self._signatures = {n: update_signature(m) for n, m in self._metrics.items() if isinstance(m, Metric)}
        self._schedules = dict(schedule or {})
        for stage, sched in self._schedules.items():
            if not isinstance(sched, Schedule):
                raise ConfigurationError(
                    f"schedule[{stage!r}] must be a Schedule, got {type(sched).__name__}. "
                    f"HINT: schedule={{{stage!r}: Schedule(every_n_epochs=1)}}."
                )
        self._fabric = fabric
        self._loggers = None if loggers is None else list(loggers)
        self.compute_on_cpu = bool(compute_on_cpu)
        self._probes = list(probes)
        _check_probe_keys(self._probes, self._metrics)
        self._progress = bool(progress)
        self._display: ProgressDisplay | None = None
        self._stages: dict[str, Stage] = {}
        self._open: dict[str, EpochRecord] = {}
        self._warned: set[str] = set()
        self.global_step = 0
        self.history = History()

    # ----------------------------------------------------------------------------------------------
    @property
    def metric_names(self) -> list[str]:
        """The names metrics are logged under."""
        return list(self._metrics)

    @property
    def loggers(self) -> list[Logger]:
        """The loggers that receive values: ``loggers`` if given, else the ``fabric``'s."""
        if self._loggers is not None:
            return self._loggers
        return list(self._fabric.loggers) if self._fabric is not None else []

    def __enter__(self) -> MetricsTracker:
        """Check every logger's directory can be written (rank 0), so a bad path fails now."""
        if self._collectives().is_main:
            loggers = self.loggers
            for logger in loggers:
                # Fix every version before any directory exists, so that loggers sharing a root
                # directory and name write into the same version folder.
                with contextlib.suppress(Exception):
                    _ = logger.version
            for logger in loggers:
                check_writable(logger)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Flush and finalize every logger with status ``"success"`` or ``"failed"``."""
        if self._display is not None:
            self._display.close()
        status = "success" if exc_type is None else "failed"
        for logger in self.loggers:
            try:
                logger.finalize(status)
            except Exception as err:
                warn(f"{type(logger).__name__}.finalize({status!r}) failed: {err}")

    # ----------------------------------------------------------------------------------------------
    def step(self, stage: str, outputs: Mapping[str, Any], *, batch_size: int | None = None) -> dict[str, float]:
        """Feed one step's outputs to the stage's metrics.

        No host-device synchronisation happens on a step that logs nothing.

        Args:
            stage: the stage (``"train"``, ``"val"``, …).
            outputs: a mapping of tensors, arrays and numbers (e.g. what a training step returns).
            batch_size: the number of samples; defaults to the first dimension of the first
                needed tensor/array (1 if none has one).

        Returns:
            The step-level values logged at this step, ``"{metric}/{stage}_step"`` → float; empty on
            steps that the schedule does not log.

        Raises:
            OutputsTypeError: ``outputs`` is not a mapping.
            NeedsError: a metric's argument is missing or ambiguous.
            StageError: another stage's epoch is open but not this one's.
            MetricError: a metric failed on this batch.
        """
        if not isinstance(outputs, Mapping):
            raise OutputsTypeError(
                f"step({stage!r}, outputs) expects a mapping of output name → value, got {type(outputs).__name__}. "
                "HINT: return a dict from your step, e.g. {'preds': logits, 'target': y, 'loss': loss}."
            )
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0
        ):
            raise OutputsTypeError(f"batch_size must be a non-negative int, got {batch_size!r}.")
        st = self._stage(stage)
        if not st.open and self._open:
            raise StageError(
                f"step({stage!r}) was called while the epoch of {sorted(self._open)} is open but not one of "
                f"{stage!r}. HINT: wrap the {stage!r} loop in `with tracker.epoch({stage!r}):`."
            )
        st.steps += 1
        if stage == "train":
            self.global_step += 1
        values = st.step(outputs, batch_size, st.schedule.logs_step(st.steps))
        if not values:
            if self._progress:
                self._show().step(stage, None)
            return {}
        items = [item for name, value in values.items() for item in flatten_value(name, value)]
        logged = {f"{k}/{stage}_step": v for (k, _), v in zip(items, to_floats([v for _, v in items]), strict=True)}
        self._publish(logged)
        if self._progress:
            self._show().step(stage, logged)
        return logged

    @contextlib.contextmanager
    def epoch(self, stage: str, *, num_samples: int | None = None, total: int | None = None) -> Iterator[EpochRecord]:
        """One epoch of one stage.

        At the end of the block, if the stage's schedule says so, every metric is reduced over
        ranks and computed once, and the values are logged as ``"{metric}/{stage}"`` at
        :attr:`global_step`. An exception inside the block logs nothing for the epoch, resets its
        state and propagates (on every rank, the others get a :class:`DistributedError`).

        Args:
            stage: the stage name.
            num_samples: the dataset's length; with it, samples that a ``DistributedSampler``
                added as padding are kept out of every metric.
            total: the number of steps the epoch will have (e.g. ``len(loader)``), shown by the
                progress display.

        Yields:
            An :class:`EpochRecord` whose ``results`` are filled after the block.

        Raises:
            StageError: an epoch of this stage is already open.
            MetricError: a metric failed to compute (this rank).
            DistributedError: another rank failed inside the block or while computing.
        """
        record = self._begin_epoch(stage, num_samples, total)
        try:
            yield record
        except BaseException as err:
            self._end_epoch(stage, err)
            raise
        self._end_epoch(stage, None)

    def log(self, values: Mapping[str, float], *, step: int | None = None) -> None:
        """Log extra values (learning rate, timings, …) to the history and every logger (rank 0).

        Args:
            values: key → number.
            step: the step to log at; defaults to :attr:`global_step`.
        """
        items = [item for key, value in values.items() for item in flatten_value(key, value)]
        self._publish(dict(zip([k for k, _ in items], to_floats([v for _, v in items]), strict=True)), step)

    # ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, history, and each stage's state (an open epoch's accumulated state included).

        Holds only tensors, plain containers and numbers: it loads with
        ``torch.load(..., weights_only=True)``, and ``fabric.save`` / ``fabric.load`` carry it.
        On rank 0 it also flushes the loggers, so that every row logged up to the checkpoint is on
        disk even if the job is killed before it ends.
        """
        rows: list[int | None] | None = None
        if self._collectives().is_main:
            flush_loggers(self.loggers)
            rows = [
                logger.rows_at_step(self.global_step) if isinstance(logger, CSVLogger) else None
                for logger in self.loggers
            ]
        return {
            "format": _STATE_FORMAT,
            "global_step": self.global_step,
            "logger_rows_at_global_step": rows,
            "history": self.history.state_dict(),
            "stages": {name: st.state_dict() for name, st in self._stages.items()},
            "probes": [p.state_dict() if hasattr(p, "state_dict") else {} for p in self._probes],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; step numbering continues and loggers drop replayed rows.

        Args:
            state: what :meth:`state_dict` returned.

        Between epochs, metrics may be added, removed or changed (a new metric starts with the next
        epoch). An epoch that was open when the state was saved needs exactly the same metrics, of
        the same kinds (torchmetric, per-step or exact), on the rank that saved it.

        Raises:
            ConfigurationError: the state is of another format, or its metrics do not fit (nothing
                is changed then).
        """
        if state.get("format") != _STATE_FORMAT:
            raise ConfigurationError(
                f"Unknown tracker state format {state.get('format')!r} (expected {_STATE_FORMAT})."
            )
        collectives = self._collectives()
        for name, st_state in state["stages"].items():  # check everything before changing anything
            self._stage(name).check_state(st_state, collectives.world_size, collectives.rank)
        self.global_step = int(state["global_step"])
        self.history.load_state_dict(state["history"])
        for name, st_state in state["stages"].items():
            self._stage(name).load_state_dict(st_state)
        for probe, probe_state in zip(self._probes, state.get("probes", []), strict=False):
            if hasattr(probe, "load_state_dict"):
                probe.load_state_dict(probe_state)
        if collectives.is_main:
            rows = state.get("logger_rows_at_global_step")
            resume_loggers(self.loggers, self.global_step, rows_at_step=rows)

    # ----------------------------------------------------------------------------------------------
    def _show(self) -> ProgressDisplay:
        if self._display is None:  # the rank is known only once the job runs
            self._display = ProgressDisplay(is_main=self._collectives().is_main)
        return self._display

    def _collectives(self) -> Collectives:
        return resolve_collectives(self._fabric)

    def _stage(self, name: str) -> Stage:
        st = self._stages.get(name)
        if st is None:
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"A stage name must be a non-empty string, got {name!r}.")
            schedule = self._schedules.get(name) or default_schedule(name)
            st = self._stages[name] = Stage(
                name, self._metrics, self._specs, schedule, self.compute_on_cpu, self._signatures
            )
        return st

    def _begin_epoch(self, stage: str, num_samples: int | None, total: int | None = None) -> EpochRecord:
        if num_samples is not None and (
            isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0
        ):
            raise ConfigurationError(
                f"num_samples must be a non-negative int (the dataset's length), got {num_samples!r}."
            )
        st = self._stage(stage)
        if st.open:
            raise StageError(f"An epoch of stage {stage!r} is already open; epochs of one stage cannot nest.")
        collectives = self._collectives()
        st.begin_epoch(num_samples, collectives.world_size, collectives.rank)
        record = self._open[stage] = EpochRecord(stage=stage, index=st.epochs + 1, num_samples=num_samples)
        if self._progress:
            self._show().epoch_started(stage, record.index, total)
        return record

    def _end_epoch(self, stage: str, error: BaseException | None) -> None:
        """Close the open epoch of ``stage``: compute and log it, or, after ``error``, discard it.

        An ``Exception`` on one rank is announced to the others (they raise a DistributedError at
        their epoch end); ``KeyboardInterrupt`` and other ``BaseException``s make no collective call.
        """
        st, record = self._stages[stage], self._open[stage]
        collectives = self._collectives()
        try:
            if error is not None:
                if isinstance(error, Exception) and collectives.world_size > 1:
                    collectives.all_gather_object({"error": f"{type(error).__name__}: {error}", "meta": None})
                st.end_epoch(completed=False)
                return
            record.samples, record.empty_batches = st.samples, st.empty_batches
            record.results = self._finish_epoch(st, record, collectives)
            if self._progress:
                self._show().epoch_ended(stage, record.results)
        except BaseException:
            st.end_epoch(completed=False)
            raise
        finally:
            self._open.pop(stage, None)
        self._run_probes(stage, st.epochs, collectives)

    def _finish_epoch(self, st: Stage, record: EpochRecord, collectives: Collectives) -> dict[str, float]:
        """Exchange statuses, reduce, compute, exchange outcomes, log. Same calls on every rank."""
        statuses = collectives.all_gather_object({"error": None, "meta": st.local_meta()})
        failed = [(rank, s["error"]) for rank, s in enumerate(statuses) if s["error"] is not None]
        if failed:
            rank, message = failed[0]
            raise DistributedError(
                f"Rank {rank} failed inside `with tracker.epoch({st.name!r})` (epoch {record.index}): {message}. "
                "Nothing was logged for this epoch on any rank."
            )
        if not st.accumulating:
            st.end_epoch(completed=True)
            return {}
        metas = [s["meta"] for s in statuses]
        flat, errors = st.reduce(collectives, metas)
        floats = to_floats(list(flat.values()))
        outcomes = collectives.all_gather_object(
            {
                "errors": {n: f"{type(e).__name__}: {e}" for n, e in errors.items()},
                "results": dict(zip(flat, floats, strict=True)) if collectives.is_main else None,
            }
        )
        for rank, outcome in enumerate(outcomes):
            for name, message in outcome["errors"].items():
                where = f" on rank {rank}" if collectives.world_size > 1 else ""
                text = (
                    f"Metric `{name}` failed{where} at the end of epoch {record.index} of stage `{st.name}`: {message}"
                )
                if rank == collectives.rank:
                    raise MetricError(text) from errors[name]
                raise DistributedError(text)
        results = {f"{k}/{st.name}": v for k, v in outcomes[0]["results"].items()}
        if sum(m["samples"] for m in metas) == 0:
            self._warn_once(
                f"empty:{st.name}",
                f"Epoch {record.index} of stage `{st.name}` had no samples on any rank; nothing was computed.",
            )
        if record.empty_batches:
            self._warn_once(
                f"emptyb:{st.name}",
                f"Stage `{st.name}` skipped {record.empty_batches} empty batches in epoch {record.index}.",
            )
        st.end_epoch(completed=True)
        self._publish(results)
        return results

    def _run_probes(self, stage: str, epoch: int, collectives: Collectives) -> None:
        if stage != "train":
            return
        for probe in self._probes:
            results = probe.maybe_run(epoch, collectives)
            if results:
                self._publish(results, check_finite=False)

    def _publish(self, values: dict[str, float], step: int | None = None, *, check_finite: bool = True) -> None:
        """Record ``values`` in the history and send them to every logger (rank 0 only).

        Non-finite values are logged as they are, with one warning naming the keys that are
        non-finite for the first time (probes warn about their own NaN scores: ``check_finite=False``).
        """
        if not values or not self._collectives().is_main:
            return
        step = self.global_step if step is None else step
        if check_finite:
            new = [f"`{k}` = {v}" for k, v in values.items() if not math.isfinite(v) and f"nan:{k}" not in self._warned]
            self._warned.update(f"nan:{k}" for k, v in values.items() if not math.isfinite(v))
            if new:
                warn(f"Non-finite values at step {step}, logged as they are: {', '.join(new)}.")
        self.history.record(values, step)
        for logger in self.loggers:
            try:
                logger.log_metrics(values, step=step)
            except Exception as err:
                self._warn_once(
                    f"logger:{id(logger)}",
                    f"{type(logger).__name__}.log_metrics failed ({type(err).__name__}: {err}); the history and the "
                    "other loggers keep going. This warning is shown once per logger.",
                )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message)


def _check_probe_keys(probes: list[Any], metrics: Mapping[str, Any]) -> None:
    """No two schedulers, and no scheduler and metric, may log under the same key."""
    owners: dict[str, int] = {}
    for i, probe in enumerate(probes):
        if not callable(getattr(probe, "maybe_run", None)):
            raise ConfigurationError(
                f"probes[{i}] is a {type(probe).__name__}; probes are ProbingScheduler objects. "
                "HINT: probes=[ProbingScheduler(encoder, train_loader, test_loader, probe=LogisticRegression())]."
            )
        for key in getattr(probe, "keys", ()):
            if key in owners:
                raise ConfigurationError(
                    f"probes[{owners[key]}] and probes[{i}] both log {key!r}. HINT: give one of them a prefix, "
                    "e.g. ProbingScheduler(..., prefix='knn')."
                )
            owners[key] = i
            head, _, rest = key.partition("/")
            if head in metrics and rest and "/" not in rest:
                raise ConfigurationError(
                    f"probes[{i}] logs {key!r}, which is also the key of metric `{head}` in a stage named {rest!r}. "
                    "HINT: give the scheduler a prefix, e.g. ProbingScheduler(..., prefix='probe')."
                )
