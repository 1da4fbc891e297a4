"""MetricsTracker: stages, epochs and steps of a training loop; fans results out to loggers and history."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from torchmetrics import Metric

from fabricmetrics._hooks import CallbackHooks
from fabricmetrics._stage import EpochOutcome, Stage
from fabricmetrics._validate import check_int
from fabricmetrics._values import check_unique, flatten_value, to_floats
from fabricmetrics.bound import update_signature
from fabricmetrics.distributed import Collectives, length_of, num_samples_of, resolve_collectives
from fabricmetrics.exceptions import (
    ConfigurationError,
    OutputsTypeError,
    StageError,
    warn,
)
from fabricmetrics.history import History
from fabricmetrics.loggers import (
    CSVLogger,
    Logger,
    close_loggers,
    describe_log_error,
    flush_loggers,
    open_loggers,
    resume_loggers,
)
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
        num_samples: the ``num_samples`` given to ``epoch()`` (the number of samples the sampler
            draws from over all ranks), if any.
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
        self._owners: dict[str, tuple[str, str]] = {}
        self._results: dict[str, float] = {}
        self._exit_flush: Any = None  # loggers flushed at exit until close() (weakref.finalize)
        self.global_step = 0
        self.history = History()
        for stage in self._schedules:
            self._stage(stage)  # stage names given up front are checked now

    # ----------------------------------------------------------------------------------------------
    @property
    def metric_names(self) -> list[str]:
        """The names metrics are logged under."""
        return list(self._metrics)

    @property
    def results(self) -> dict[str, float]:
        """The latest epoch-level value of every key (metrics and probes), the same on every rank.

        Unlike :attr:`history`, which only rank 0 records (it logs), this is filled on every rank,
        so a learning-rate scheduler can step on it in a multi-process job, also when the tracker is
        driven through the callback hooks: ``scheduler.step(tracker.results["loss/val"])``.
        """
        return dict(self._results)

    @property
    def loggers(self) -> list[Logger]:
        """The loggers that receive values: ``loggers`` if given, else the ``fabric``'s."""
        if self._loggers is not None:
            return self._loggers
        return list(self._fabric.loggers) if self._fabric is not None else []

    def open(self) -> MetricsTracker:
        """Open the loggers, as ``with tracker:`` does, without indenting the training loop.

        On rank 0: loggers that share a root directory and a name get one ``version_N``, every log
        directory is created and written to (a bad path fails now, not hours later), and the
        loggers are flushed when the process exits normally, in case :meth:`close` is never called.

        Returns:
            The tracker.

        Raises:
            LogDirectoryError: a log directory cannot be created or written.

        Example:
            >>> import tempfile
            >>> from fabricmetrics.loggers import CSVLogger
            >>> tracker = MetricsTracker({"m": lambda x: x.mean()}, loggers=[CSVLogger(tempfile.mkdtemp())]).open()
            >>> tracker.log({"lr": 0.1})
            >>> tracker.close()
        """
        if self._collectives().is_main:
            exit_flush = open_loggers(self.loggers, owner=self if self._exit_flush is None else None)
            self._exit_flush = self._exit_flush or exit_flush
        return self

    def close(self, status: Literal["success", "failed"] = "success") -> None:
        """Flush and finalize every logger with ``status``, as leaving ``with tracker:`` does.

        A logger that fails to finalize is a warning; the others are still finalized.

        Args:
            status: ``"success"``, or ``"failed"`` when the run ended with an error.
        """
        if self._display is not None:
            self._display.close()
        if self._exit_flush is not None:
            self._exit_flush.detach()
            self._exit_flush = None
        close_loggers(self.loggers, status)

    def __enter__(self) -> MetricsTracker:
        """:meth:`open`: one version for the loggers, writable directories (rank 0)."""
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """:meth:`close` with status ``"success"`` or ``"failed"``."""
        self.close("success" if exc_type is None else "failed")

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
        if batch_size is not None:
            check_int(batch_size, "batch_size", error=OutputsTypeError, hint="pass the number of samples of the step.")
        st = self._stage(stage)
        if not st.open:
            self._check_epochless_step(st)
        st.steps += 1
        if stage == "train":
            self.global_step += 1
        values = st.step(outputs, batch_size, st.schedule.logs_step(st.steps))
        if not values:
            if self._progress:
                self._show().step(stage, None)
            return {}
        items = [item for name, value in values.items() for item in flatten_value(name, value)]
        check_unique([k for k, _ in items], f"the step values of stage `{stage}`")
        logged = {f"{k}/{stage}_step": v for (k, _), v in zip(items, to_floats([v for _, v in items]), strict=True)}
        self._claim(logged, ("step", stage))
        self._publish(logged)
        if self._progress:
            self._show().step(stage, logged)
        return logged

    @contextlib.contextmanager
    def epoch(
        self, stage: str, *, num_samples: int | None = None, total: int | None = None, loader: Any = None
    ) -> Iterator[EpochRecord]:
        """One epoch of one stage.

        At the end of the block, if the stage's schedule says so, every metric is reduced over
        ranks and computed once, and the values are logged as ``"{metric}/{stage}"`` at
        :attr:`global_step`. An exception inside the block logs nothing for the epoch, resets its
        state and propagates (on every rank, the others get a :class:`DistributedError`).

        Args:
            stage: the stage name.
            num_samples: the number of samples the sampler draws from over all ranks (the data
                set's length; with a ``SubsetRandomSampler``, the subset's length); with it, the
                samples that a ``DistributedSampler`` added as padding are kept out of every metric.
                More samples than that on a rank is an error.
            total: the number of steps the epoch will have (e.g. ``len(loader)``), shown by the
                progress display.
            loader: the epoch's ``DataLoader``: ``num_samples`` is read from its sampler
                (:func:`~fabricmetrics.distributed.num_samples_of`) and ``total`` is its length,
                unless given.

        Yields:
            An :class:`EpochRecord` whose ``results`` are filled after the block.

        Raises:
            StageError: an epoch of this stage is already open.
            MetricError: a metric failed to compute (this rank).
            DistributedError: another rank failed inside the block or while computing.
        """
        if loader is not None:
            num_samples = num_samples_of(loader) if num_samples is None else num_samples
            total = length_of(loader) if total is None else total
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
        check_unique([k for k, _ in items], "tracker.log()")
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
        logger_states: list[Any] | None = None
        if self._collectives().is_main:
            flush_loggers(self.loggers)
            rows = [
                logger.rows_at_step(self.global_step) if isinstance(logger, CSVLogger) else None
                for logger in self.loggers
            ]
            logger_states = [_logger_state(logger) for logger in self.loggers]
        return {
            "format": _STATE_FORMAT,
            "global_step": self.global_step,
            "logger_rows_at_global_step": rows,
            "logger_states": logger_states,
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
        collectives = self._collectives()
        self._check_state(state, collectives)  # everything is checked before anything changes
        self.global_step = int(state["global_step"])
        self.history.load_state_dict(state["history"])
        for name, st_state in state["stages"].items():
            self._stage(name).load_state_dict(st_state)
        for probe, probe_state in zip(self._probes, state.get("probes", []), strict=False):
            if hasattr(probe, "load_state_dict"):
                probe.load_state_dict(probe_state)
        if collectives.is_main:
            for logger, logger_state in zip(self.loggers, state.get("logger_states") or [], strict=False):
                _load_logger_state(logger, logger_state)
            rows = state.get("logger_rows_at_global_step")
            resume_loggers(self.loggers, self.global_step, rows_at_step=rows)

    def _check_state(self, state: Any, collectives: Collectives) -> None:
        """Raise a :class:`ConfigurationError` if :meth:`load_state_dict` cannot restore ``state`` whole."""
        hint = "HINT: pass what tracker.state_dict() returned (e.g. checkpoint['tracker'] after fabric.load)."
        if not isinstance(state, Mapping):
            raise ConfigurationError(
                f"load_state_dict expects the mapping of tracker.state_dict(), got {state!r:.80}. {hint}"
            )
        if state.get("format") != _STATE_FORMAT:
            raise ConfigurationError(
                f"Unknown tracker state format {state.get('format')!r} (expected {_STATE_FORMAT}). {hint}"
            )
        missing = sorted({"global_step", "history", "stages"} - set(state))
        if missing or not isinstance(state["stages"], Mapping):
            raise ConfigurationError(f"The tracker state lacks {missing or ['stages']}. {hint}")
        check_int(state["global_step"], "The state's global_step", hint=hint.removeprefix("HINT: "))
        _check_history_state(state["history"], hint)
        for name, st_state in state["stages"].items():
            self._stage(name).check_state(st_state, collectives.world_size, collectives.rank)

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
            _check_stage_name(name, list(self._stages))
            schedule = self._schedules.get(name) or default_schedule(name)
            st = self._stages[name] = Stage(
                name, self._metrics, self._specs, schedule, self.compute_on_cpu, self._signatures
            )
        return st

    def _begin_epoch(self, stage: str, num_samples: int | None, total: int | None = None) -> EpochRecord:
        if num_samples is not None:
            check_int(num_samples, "num_samples", hint="pass the number of samples the sampler draws from.")
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
        """Close the open epoch of ``stage``: the stage computes it (or, after ``error``, discards it); publish."""
        st, record = self._stages.get(stage), self._open.pop(stage, None)
        if st is None or record is None or not st.open:
            raise StageError(
                f"No epoch of stage {stage!r} is open, so none can end. HINT: open one first: "
                f"`with tracker.epoch({stage!r}):` (or the matching `on_..._epoch_start` hook), once per epoch."
            )
        collectives = self._collectives()
        if error is not None:
            st.fail(collectives, error)
            return
        outcome = st.finish(collectives)
        record.results, record.samples, record.empty_batches = outcome.results, outcome.samples, outcome.empty_batches
        self._publish_epoch(outcome)
        self._run_probes(stage, st.epochs, collectives)
        if collectives.is_main:  # every row logged so far is on disk at every epoch end
            flush_loggers(self.loggers)

    def _publish_epoch(self, outcome: EpochOutcome) -> None:
        """Warn about empty epochs and batches, then record and log the epoch's results."""
        if outcome.computed and outcome.total_samples == 0:
            self._warn_once(
                f"empty:{outcome.stage}",
                f"Epoch {outcome.index} of stage `{outcome.stage}` had no samples on any rank; nothing was computed.",
            )
        if outcome.empty_batches:
            self._warn_once(
                f"emptyb:{outcome.stage}",
                f"Stage `{outcome.stage}` skipped {outcome.empty_batches} empty batches in epoch {outcome.index}.",
            )
        self._claim(outcome.results, ("epoch", outcome.stage))
        self._results.update(outcome.results)
        self._publish(outcome.results)
        if self._progress:
            self._show().epoch_ended(outcome.stage, outcome.results)

    def _check_epochless_step(self, st: Stage) -> None:
        """A step outside its stage's epoch: an error while another stage's epoch is open, else one warning."""
        if self._open:
            raise StageError(
                f"step({st.name!r}) was called while the epoch of {sorted(self._open)} is open but not one of "
                f"{st.name!r}. HINT: wrap the {st.name!r} loop in `with tracker.epoch({st.name!r}):`."
            )
        if st.schedule.every_n_epochs is not None:
            self._warn_once(
                f"epochless:{st.name}",
                f"step({st.name!r}) outside an epoch of stage {st.name!r}: only step-level values are logged there, "
                f"no epoch-level value. HINT: wrap the loop in `with tracker.epoch({st.name!r}):` (or call the "
                "`on_..._epoch_start`/`_end` hooks).",
            )

    def _run_probes(self, stage: str, epoch: int, collectives: Collectives) -> None:
        if stage != "train":
            return
        for i, probe in enumerate(self._probes):
            loggers = self.loggers if collectives.is_main else []
            results = probe.maybe_run(epoch, collectives, step=self.global_step, loggers=loggers)
            if results:
                self._claim(results, ("probe", str(i)))
                self._results.update(results)
                self._publish(results, check_finite=False)
                if self._progress:
                    self._show().results(f"probe after train epoch {epoch}", results)

    def _publish(self, values: dict[str, float], step: int | None = None, *, check_finite: bool = True) -> None:
        """Record ``values`` in the history and send them to every logger (rank 0 only).

        Non-finite values are logged as they are, with one warning naming the keys that are
        non-finite for the first time (probes warn about their own NaN scores: ``check_finite=False``).
        """
        if not values or not self._collectives().is_main:
            return
        if self._exit_flush is None:  # without `with tracker:` / open(): one version_N, rows flushed at exit
            self._exit_flush = open_loggers(self.loggers, owner=self, check=False)
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
                    f"{type(logger).__name__}.log_metrics failed ({describe_log_error(err, logger)}); the history "
                    "and the other loggers keep going. This warning is shown once per logger.",
                )

    def _claim(self, values: Mapping[str, float], origin: tuple[str, str]) -> None:
        """Record which producer logs each key; a key from two producers is a configuration error.

        Producers are the epoch values of a stage, the step values of a stage and a probing
        scheduler; :meth:`log` writes the keys it is given (also a probe's or a metric's, on
        purpose: e.g. a probing before training at step 0). Checked on every rank (the keys are
        the same everywhere), before anything is recorded, so a collision never overwrites a value
        silently.
        """
        for key in values:
            owner = self._owners.setdefault(key, origin)
            if owner != origin:
                raise ConfigurationError(
                    f"Key {key!r} is logged by {_describe_origin(owner)} and by {_describe_origin(origin)}; one would "
                    "overwrite the other in the logs and the history. HINT: rename a metric or a stage (metric and "
                    "stage names joined by '/' must not spell the same key; a stage must not be named like another "
                    "stage's step series, e.g. 'train_step'), or give the probing scheduler a prefix=."
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


def _describe_origin(origin: tuple[str, str]) -> str:
    kind, name = origin
    return {
        "epoch": f"the epoch values of stage `{name}`",
        "step": f"the step values of stage `{name}`",
        "probe": f"probes[{name}]",
    }[kind]


def _check_stage_name(name: Any, stages: list[str]) -> None:
    """A stage name is a non-empty string whose keys cannot spell another stage's keys."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"A stage name must be a non-empty string, got {name!r}.")
    if "/" in name:
        raise ConfigurationError(
            f"Stage name {name!r} contains '/', which separates metric and stage in the logged keys "
            f"(`acc/{name}` could also be metric `acc/{name.split('/')[0]}` in stage {name.rsplit('/', 1)[-1]!r}). "
            "HINT: use another separator, e.g. '-' or '.'."
        )
    for other in stages:
        if name == f"{other}_step" or other == f"{name}_step":
            step_stage, epoch_stage = (other, name) if name == f"{other}_step" else (name, other)
            raise ConfigurationError(
                f"Stage {epoch_stage!r} would log its epoch values under the keys of the step values of stage "
                f"{step_stage!r} (`{{metric}}/{epoch_stage}`). HINT: rename stage {epoch_stage!r}."
            )


def _check_history_state(history: Any, hint: str) -> None:
    """The history part of a state: key → list of ``[step, value]`` pairs."""
    try:
        ok = isinstance(history, Mapping) and all(
            isinstance(k, str) and all(len(p) == 2 and float(p[1]) is not None and int(p[0]) >= 0 for p in points)
            for k, points in history.items()
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigurationError(f"The tracker state's history is not key → [[step, value], …]. {hint}")


def _keeps_state(logger: Any) -> bool:
    return callable(getattr(logger, "state_dict", None)) and callable(getattr(logger, "load_state_dict", None))


def _logger_state(logger: Any) -> Any:
    """A logger's own state (e.g. the MLflow or W&B run id to continue), if it keeps one, else ``None``."""
    return logger.state_dict() if _keeps_state(logger) else None


def _load_logger_state(logger: Any, state: Any) -> None:
    """Restore :func:`_logger_state` into a logger that keeps one (before it resumes)."""
    if state is not None and _keeps_state(logger):
        logger.load_state_dict(state)
