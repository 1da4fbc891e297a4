"""One stage's metrics: argument plan, per-step work, and the epoch end across ranks.

A :class:`Stage` owns the whole epoch end (:meth:`Stage.finish`): it exchanges one
:class:`EpochStatus` per rank (which also tells every rank about a failure), checks that the ranks
are about to reduce the same thing, lets each bound metric reduce itself, shares the results and
returns one :class:`EpochOutcome`. The tracker only publishes the outcome.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fabricmetrics._collect import Collector, Layout
from fabricmetrics._values import check_unique, to_floats
from fabricmetrics.bound import Bound, ExactBound, PerStepBound, Reduction, TorchmetricBound, first_dim
from fabricmetrics.distributed import Collectives, share_status, valid_sample_count
from fabricmetrics.exceptions import (
    ConfigurationError,
    DistributedError,
    FabricMetricsError,
    MetricError,
    OutputsError,
    warn,
)
from fabricmetrics.needs import NeedsSpec, Source, describe_source, missing_key_error, resolve_plan
from fabricmetrics.schedule import Schedule

__all__ = ["EpochOutcome", "EpochStatus", "Stage"]

_Call = tuple[Bound, tuple[int, ...], tuple[tuple[str, int], ...]]
_Fingerprint = tuple[tuple[str, str], ...]

_AGREEMENT_HINTS = {
    "stage": "run the same stages in the same order on every rank (every rank opens and closes each epoch)",
    "epoch": "run every epoch of a stage on every rank (resume every rank from the same checkpoint)",
    "computes this epoch": "give every rank the same Schedule for this stage",
    "num_samples": "pass every rank the same num_samples= (the length of the data set the sampler shards, e.g. "
    "fabricmetrics.num_samples_of(loader))",
    "metrics": "build the metrics in the same order on every rank (a dict literal or sorted names, not a set)",
}
_METRIC_HINT = "give every rank the same metric objects under each name (kind, class and settings)"


@dataclass(frozen=True)
class EpochStatus:
    """What one rank tells the others at an epoch end, before any reduction.

    Attributes:
        fingerprint: what this rank is about to reduce, as ordered ``(item, value)`` pairs: the
            stage, its epoch index, the schedule's decision, the ordered metric names and, per
            metric, its kind and what determines its update.
        samples: samples this rank fed to the metrics.
        planned: whether this rank resolved the metrics' arguments (it ran a step of the stage).
        bounds: each bound's :meth:`~fabricmetrics.bound.Bound.summary`, in bound order.
        sources: each collected exact-mode source's layout and number of samples.
    """

    fingerprint: _Fingerprint
    samples: int = 0
    planned: bool = False
    bounds: tuple[Any, ...] = ()
    sources: tuple[tuple[Layout | None, int], ...] = ()


@dataclass
class EpochOutcome:
    """What an epoch end produced, the same on every rank (but for the rank-local counts).

    Attributes:
        stage: the stage name.
        index: the epoch's number (1 for the first).
        computed: whether the schedule computed this epoch.
        results: ``"{metric}/{stage}"`` → float (empty when nothing was computed).
        samples: samples this rank fed to the metrics (padding removed).
        total_samples: samples over every rank (0 when nothing was computed).
        empty_batches: steps of this rank skipped because they had no samples.
    """

    stage: str
    index: int
    computed: bool
    results: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    total_samples: int = 0
    empty_batches: int = 0


class Stage:
    """The metrics of one stage (``"train"``, ``"val"``, …) and their epoch state."""

    def __init__(
        self,
        name: str,
        metrics: Mapping[str, Any],
        specs: Mapping[str, NeedsSpec],
        schedule: Schedule,
        compute_on_cpu: bool,
        signatures: Mapping[str, Any],
    ) -> None:
        """Bind every metric to this stage (torchmetrics are cloned).

        ``signatures`` holds each torchmetric's :func:`~fabricmetrics.bound.update_signature`;
        metrics with equal arguments and signatures share one update.
        """
        self.name = name
        self.signatures = signatures
        self.schedule = schedule
        self.specs = specs
        self._collector = Collector(compute_on_cpu)
        self.bounds: dict[str, Bound] = {name: _bind(name, m, schedule.per_step) for name, m in metrics.items()}
        self.steps = 0
        self.epochs = 0
        self.device: torch.device | None = None
        self._calls: list[_Call] | None = None
        self._sources: list[Source] = []
        self._exact: list[int] = []
        self._users: dict[int, tuple[str, str]] = {}
        self._warned: set[str] = set()
        self.open = False
        self.accumulating = False
        self._resumed_open = False
        self._ranks = (1, 0)  # (world size, rank) of the open epoch
        self._reset_epoch(num_samples=None, world_size=1, rank=0)

    # ----------------------------------------------------------------------------------------------
    # epochs
    def begin_epoch(self, num_samples: int | None, world_size: int, rank: int) -> None:
        """Open an epoch; keep a resumed epoch's state, else start from zero.

        Raises:
            ConfigurationError: a resumed epoch is reopened with another ``num_samples``.
        """
        if self._resumed_open and num_samples != self.num_samples:
            raise ConfigurationError(
                f"The epoch of stage `{self.name}` in progress at the checkpoint was opened with "
                f"num_samples={self.num_samples}, and is resumed with num_samples={num_samples}. HINT: resume it "
                "with the same data set."
            )
        if not self._resumed_open:
            self._reset_epoch(num_samples, world_size, rank)
        self._ranks = (world_size, rank)
        self._resumed_open = False
        self.open = True
        self.accumulating = self.schedule.logs_epoch(self.epochs + 1)

    def finish(self, collectives: Collectives) -> EpochOutcome:
        """Close the open epoch on every rank: agree, reduce, compute, share the results.

        Every rank makes the same collective calls in the same order: the first exchange (the
        statuses) tells every rank about a failure elsewhere and about any difference in what the
        ranks are about to reduce; everything after depends only on what every rank received.

        Returns:
            The outcome, the same on every rank but for the rank-local counts.

        Raises:
            DistributedError: another rank failed, or the ranks disagree on what to reduce.
            MetricError: a metric failed to compute on this rank.
        """
        index = self.epochs + 1
        outcome = EpochOutcome(self.name, index, self.accumulating, samples=self.samples)
        outcome.empty_batches = self.empty_batches
        try:
            statuses = share_status(
                collectives,
                self._status(index),
                where=f"inside `with tracker.epoch({self.name!r})` (epoch {index})",
                consequence="Nothing was logged for this epoch on any rank.",
            )
            self._check_agreement(statuses)
            if self.accumulating:
                outcome.total_samples = sum(s.samples for s in statuses)
                if outcome.total_samples:
                    outcome.results = self._compute(collectives, statuses, index)
        except BaseException:
            self._close(completed=False)
            raise
        self._close(completed=True)
        return outcome

    def fail(self, collectives: Collectives, error: BaseException) -> None:
        """Close the open epoch after ``error`` in the user's block, telling the other ranks.

        An ``Exception`` is announced to the other ranks (they raise a :class:`DistributedError`
        at their epoch end); ``KeyboardInterrupt`` and other ``BaseException``s make no collective
        call. Nothing is computed or logged; the epoch does not count.
        """
        try:
            if isinstance(error, Exception) and collectives.world_size > 1:
                share_status(collectives, None, error, where="", raise_own=False)
        finally:
            self._close(completed=False)

    def _close(self, completed: bool) -> None:
        if completed:
            self.epochs += 1
        self.open = False
        self.accumulating = False
        self._reset_epoch(None, 1, 0)

    def _reset_epoch(self, num_samples: int | None, world_size: int, rank: int) -> None:
        for bound in self.bounds.values():
            bound.reset()
        self.num_samples = num_samples
        self.valid = None if num_samples is None else valid_sample_count(num_samples, world_size, rank)
        self.seen = 0
        self.samples = 0
        self.empty_batches = 0
        self._collector.reset()

    # ----------------------------------------------------------------------------------------------
    # steps
    def step(self, outputs: Mapping[str, Any], batch_size: int | None, log_step: bool) -> dict[str, Any]:
        """Feed one step's outputs to every metric; return the step-level values if ``log_step``."""
        if self._calls is None:
            self._resolve(outputs)
        padded = self.valid is not None and self.open
        if not (log_step or self.accumulating or padded):
            return {}
        values = self._extract(outputs)
        n = batch_size if batch_size is not None else self._batch_size(values, outputs)
        self._check_devices(values)
        rows = n
        if padded:  # count every step's samples, so that the padding is found on any later step
            values, n = self._drop_padding(values, n)
            if not (log_step or self.accumulating):
                return {}
        if n == 0:
            if rows == 0:  # a batch of the sampler's padding alone is not an empty batch
                self.empty_batches += 1
            return {}
        step_values = self._run_bounds(values, n, log_step)
        if self.accumulating:
            self._collect(values)
            self.samples += n
        if not self.open and not self._resumed_open:  # outside an epoch nothing would reset what forward() added
            for bound in self.bounds.values():
                bound.reset()
        return step_values

    def _run_bounds(self, values: list[Any], n: int, log_step: bool) -> dict[str, Any]:
        step_values: dict[str, Any] = {}
        for bound, pos, kws in self._calls or []:
            args = [values[i] for i in pos]
            kwargs = {k: values[i] for k, i in kws}
            try:
                value = bound.step(args, kwargs, n, log_step=log_step, accumulate=self.accumulating)
            except FabricMetricsError:
                raise
            except Exception as err:
                raise MetricError(
                    f"Metric `{bound.name}` failed on step {self.steps} of stage `{self.name}`: "
                    f"{type(err).__name__}: {err}"
                ) from err
            if log_step:
                step_values[bound.name] = value
        return step_values

    def _resolve(self, outputs: Mapping[str, Any]) -> None:
        """Plan every metric's arguments from the first step's keys (all or nothing: an error keeps no plan)."""
        index: dict[Any, int] = {}
        calls: list[_Call] = []
        sources: list[Source] = []
        users: dict[int, tuple[str, str]] = {}
        for name, bound in self.bounds.items():
            plan = resolve_plan(name, self.specs[name], list(outputs.keys()))
            labelled = [(f"argument {i}", s) for i, s in enumerate(plan.positional)]
            labelled += [(f"argument `{k}`", s) for k, s in plan.keywords]
            ids = []
            for label, source in labelled:
                if source not in index:
                    index[source] = len(sources)
                    sources.append(source)
                    users[index[source]] = (name, label)
                ids.append(index[source])
            n_pos = len(plan.positional)
            kws = tuple((k, ids[n_pos + j]) for j, (k, _) in enumerate(plan.keywords))
            calls.append((bound, tuple(ids[:n_pos]), kws))
        exact = sorted({i for b, pos, kws in calls if isinstance(b, ExactBound) for i in (*pos, *(i for _, i in kws))})
        self._plan_shared_updates(calls)
        position = {source: j for j, source in enumerate(exact)}
        for bound, pos, kws in calls:
            if isinstance(bound, ExactBound):
                bound.call = (tuple(position[i] for i in pos), tuple((k, position[i]) for k, i in kws))
                bound.labels = [describe_source(sources[i]) for i in (*pos, *(i for _, i in kws))]
        self._exact, self._sources, self._users, self._calls = exact, sources, users, calls

    def _plan_shared_updates(self, calls: list[_Call]) -> None:
        """Torchmetrics with the same arguments and update signature share one update (the first leads)."""
        shared: dict[Any, TorchmetricBound] = {}
        for bound, pos, kws in calls:
            signature = self.signatures.get(bound.name)
            if isinstance(bound, TorchmetricBound) and signature is not None:
                leader = shared.setdefault((pos, kws, signature), bound)
                bound.leader = None if leader is bound else leader
        buffers: dict[Any, TorchmetricBound] = {}  # leaders fed the same arguments buffer them once
        for bound, pos, kws in calls:
            if isinstance(bound, TorchmetricBound) and bound.leader is None and bound.coalesced:
                bound.share_buffer(buffers.setdefault((pos, kws), bound))

    def _extract(self, outputs: Mapping[str, Any]) -> list[Any]:
        values = []
        for i, source in enumerate(self._sources):
            if isinstance(source, str):
                try:
                    values.append(outputs[source])
                except KeyError:
                    raise missing_key_error(self._users[i][0], source, list(outputs)) from None
            else:
                try:
                    values.append(source(outputs))
                except Exception as err:
                    name, label = self._users[i]
                    raise MetricError(
                        f"The needs callable {describe_source(source)} for metric `{name}` ({label}) raised "
                        f"{type(err).__name__}: {err}"
                    ) from err
        return values

    def _batch_size(self, values: list[Any], outputs: Mapping[str, Any]) -> int:
        """The first dimension of the first batched argument, else of the step's other batched outputs.

        A per-step mean of 0-d values (a batch-mean loss) is weighted by the batch size: when no needed
        argument has a sample dimension, the step's other tensors and arrays tell it; when they
        do not (none, or several sizes), each step weighs 1, with one warning.
        """
        for value in values:
            size = first_dim(value)
            if size is not None:
                return size
        batched = [v for v in outputs.values() if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim > 0]
        sizes = sorted({int(v.shape[0]) for v in batched})
        if len(sizes) == 1:
            return sizes[0]
        if any(isinstance(b, PerStepBound) for b in self.bounds.values()) and "unweighted" not in self._warned:
            self._warned.add("unweighted")
            seen = f"the outputs have several sizes {sizes}" if sizes else "no output has a sample dimension"
            warn(
                f"Stage `{self.name}`: the per-step metrics' arguments have no sample dimension and {seen}, so the "
                "epoch's mean weighs every step equally instead of by batch size. HINT: pass the batch size, "
                f"tracker.step({self.name!r}, outputs, batch_size=len(x))."
            )
        return 1

    def _check_devices(self, values: list[Any]) -> None:
        for i, value in enumerate(values):
            if isinstance(value, torch.Tensor):
                if self.device is None:
                    self._place(value.device)
                elif value.device != self.device:
                    raise OutputsError(
                        f"{self._label(i)} got a tensor on {value.device}, but stage `{self.name}` has run on "
                        f"{self.device}. HINT: keep the outputs of a stage on one device (e.g. move them with "
                        "`.to(fabric.device)`)."
                    )
        if self.device is None:
            self._place(torch.device("cpu"))

    def _label(self, i: int) -> str:
        name, label = self._users[i]
        return f"Metric `{name}` ({label}, {describe_source(self._sources[i])})"

    def _place(self, device: torch.device) -> None:
        self.device = device
        for bound in self.bounds.values():
            if isinstance(bound, TorchmetricBound):
                bound.metric.to(device)

    def _drop_padding(self, values: list[Any], n: int) -> tuple[list[Any], int]:
        """Keep the samples of this rank's share of ``num_samples``; the rest is the sampler's padding.

        Raises:
            OutputsError: more samples than the sampler can give this rank, or an argument whose rows
                do not match the batch.
        """
        world_size = self._ranks[0]
        valid = self.valid or 0
        limit = -(-(self.num_samples or 0) // world_size)  # a DistributedSampler's share, padding included
        if self.seen + n > limit:
            ranks = f" on each of {world_size} ranks" if world_size > 1 else ""
            raise OutputsError(
                f"Stage `{self.name}` received {self.seen + n} samples in this epoch, more than the {limit}{ranks} "
                f"that num_samples={self.num_samples} allows; the samples past it would be dropped as padding. HINT: "
                "pass num_samples= the number of samples the sampler draws from over all ranks (e.g. "
                "fabricmetrics.num_samples_of(loader), len(subset) with a SubsetRandomSampler), or leave it out."
            )
        keep = min(max(valid - self.seen, 0), n)
        self.seen += n
        for i, value in enumerate(values):
            size = first_dim(value)
            if size is not None and size != n:
                raise OutputsError(
                    f"{self._label(i)} has {size} rows but the batch has {n} samples, so the padding of the "
                    f"distributed sampler cannot be removed from it (epoch opened with num_samples={self.num_samples})."
                    " HINT: give metrics per-sample arguments and combine them inside the metric, or pass batch_size= "
                    "to step()."
                )
        if keep < n:
            values = [v[:keep] if first_dim(v) is not None else v for v in values]
        return values, keep

    def _collect(self, values: list[Any]) -> None:
        where = f"step {self.steps}"
        for i in self._exact:
            self._collector.add(i, values[i], functools.partial(self._label, i), where, self.name)

    # ----------------------------------------------------------------------------------------------
    # epoch end
    def _status(self, index: int) -> EpochStatus:
        """This rank's status: what it is about to reduce, and what the others need to know."""
        fingerprint = [
            ("stage", self.name),
            ("epoch", str(index)),
            ("computes this epoch", str(self.accumulating)),
            ("num_samples", str(self.num_samples)),
            ("metrics", ", ".join(self.bounds)),
        ]
        fingerprint += [(f"metric `{name}`", bound.describe()) for name, bound in self.bounds.items()]
        planned = self._calls is not None
        return EpochStatus(
            fingerprint=tuple(fingerprint),
            samples=self.samples,
            planned=planned,
            bounds=tuple(bound.summary() for bound in self.bounds.values()) if planned else (),
            sources=tuple((self._collector.layout(i), self._collector.count(i)) for i in self._exact),
        )

    def _check_agreement(self, statuses: list[EpochStatus]) -> None:
        """Raise the same :class:`DistributedError` on every rank if the ranks' fingerprints differ."""
        reference = statuses[0].fingerprint
        differing = [rank for rank, status in enumerate(statuses) if status.fingerprint != reference]
        if not differing:
            return
        other = statuses[differing[0]].fingerprint
        label, mine, theirs = next(
            ((a[0], a[1], b[1]) for a, b in zip(reference, other, strict=False) if a != b),
            ("metrics", str(len(reference)), str(len(other))),
        )
        hint = _AGREEMENT_HINTS.get(label, _METRIC_HINT)
        raise DistributedError(
            f"The ranks are not reducing the same thing at this epoch end (stage `{self.name}` here): {label} is "
            f"{_short(mine)} on rank 0 but {_short(theirs)} on rank {differing[0]} (ranks that differ from rank 0: "
            f"{differing}). Nothing was logged for this epoch on any rank. HINT: {hint}."
        )

    def _compute(self, collectives: Collectives, statuses: list[EpochStatus], index: int) -> dict[str, float]:
        """Reduce every bound over ranks, compute, and share the results (rank 0's floats) with every rank."""
        self._adopt_leaders(statuses)
        reduction = Reduction(collectives, lambda j: self._gather_source(collectives, statuses, j), self.name)
        flat: list[tuple[str, Any]] = []
        errors: dict[str, BaseException] = {}
        bounds = list(self.bounds.values())
        try:
            for i, bound in enumerate(bounds):
                bound.reduce(reduction, [s.bounds[i] if s.planned else None for s in statuses])
            reduction.run()
            for bound in bounds:
                try:
                    flat.extend(bound.value(reduction))
                except Exception as err:
                    errors[bound.name] = err
        finally:
            for bound in bounds:
                bound.release()
        return self._share_results(collectives, flat, errors, index)

    def _share_results(
        self, collectives: Collectives, flat: list[tuple[str, Any]], errors: dict[str, BaseException], index: int
    ) -> dict[str, float]:
        """Exchange errors and rank 0's values; raise on every rank if any metric failed anywhere."""
        floats = to_floats([v for _, v in flat])
        outcomes = collectives.all_gather_object(
            (
                {name: f"{type(err).__name__}: {err}" for name, err in errors.items()},
                [(k, f) for (k, _), f in zip(flat, floats, strict=True)] if collectives.is_main else None,
            )
        )
        for rank, (failed, _) in enumerate(outcomes):
            for name, message in failed.items():
                where = f" on rank {rank}" if collectives.world_size > 1 else ""
                text = f"Metric `{name}` failed{where} at the end of epoch {index} of stage `{self.name}`: {message}"
                if rank == collectives.rank:
                    raise MetricError(text) from errors[name]
                raise DistributedError(text)
        pairs = outcomes[0][1]  # rank 0's list, the same on every rank: every rank raises alike
        check_unique([key for key, _ in pairs], f"the epoch values of stage `{self.name}`")
        return {f"{key}/{self.name}": value for key, value in pairs}

    def _adopt_leaders(self, statuses: list[EpochStatus]) -> None:
        """Take the shared-update leaders of the ranks that stepped, so every rank syncs the same metrics.

        A rank that ran no step of this epoch's stage never planned its arguments, so it has no
        leaders of its own; without this it would sync every torchmetric while the others sync only
        the leaders, and the collectives would fall out of step.
        """
        names = list(self.bounds)
        plans = [
            (rank, {n: s.bounds[i] for i, n in enumerate(names) if isinstance(self.bounds[n], TorchmetricBound)})
            for rank, s in enumerate(statuses)
            if s.planned
        ]
        if not plans:
            return
        if any(plan != plans[0][1] for _, plan in plans):  # every rank sees the same statuses: all raise alike
            raise OutputsError(
                f"Stage `{self.name}`: the ranks resolved the metrics' arguments differently (shared updates per "
                f"rank: {plans}). HINT: return the same output keys from every rank's step."
            )
        for name, leader in plans[0][1].items():
            bound = self.bounds[name]
            if isinstance(bound, TorchmetricBound):
                chosen = None if leader is None else self.bounds[leader]
                bound.leader = chosen if isinstance(chosen, TorchmetricBound) else None

    def _gather_source(self, collectives: Collectives, statuses: list[EpochStatus], position: int) -> Any:
        """Every rank's samples of one collected exact-mode source (layouts checked to agree)."""
        entries = [(rank, s.sources[position]) for rank, s in enumerate(statuses) if position < len(s.sources)]
        seen = [(rank, layout) for rank, (layout, _) in entries if layout]
        if len({layout for _, layout in seen}) > 1:  # every rank sees the same statuses: all raise alike
            raise OutputsError(
                f"Stage `{self.name}`: the ranks collected differently shaped or typed values for the same "
                f"argument (kind, trailing shape, dtype per rank: {seen}). HINT: return the same dtype and "
                "per-sample shape from every rank."
            )
        counts = [s.sources[position][1] if position < len(s.sources) else 0 for s in statuses]
        index = self._exact[position] if self._calls is not None else None
        return self._collector.gather(collectives, index, seen[0][1] if seen else None, counts)

    # ----------------------------------------------------------------------------------------------
    # state
    def kinds(self) -> dict[str, str]:
        """Each metric's kind in this stage: ``"torchmetric"``, ``"per_step"`` or ``"exact"``."""
        return {n: b.kind for n, b in self.bounds.items()}

    def check_state(self, state: Any, world_size: int, rank: int) -> None:
        """Raise if :meth:`load_state_dict` cannot restore ``state`` into this stage on this rank.

        Only an epoch that was open at the checkpoint carries metric state: it must hold exactly this
        stage's metrics, of the same kinds, and have been saved by this rank of a job of this size
        (the state of an epoch in progress is one rank's part of it). Between epochs, metrics may be
        added, removed or changed (the history continues; a new metric starts with the next epoch).

        Raises:
            ConfigurationError: the state is not a stage's, or its metrics or ranks do not fit.
        """
        if not isinstance(state, Mapping) or not {"steps", "epochs", "open"} <= set(state):
            raise ConfigurationError(
                f"The checkpoint's state of stage `{self.name}` is incomplete (keys "
                f"{sorted(state) if isinstance(state, Mapping) else type(state).__name__}). HINT: pass what "
                "tracker.state_dict() returned."
            )
        epoch = state.get("epoch")
        if not state.get("open") or not epoch:
            return
        saved_ranks = tuple(epoch["ranks"]) if "ranks" in epoch else None
        if saved_ranks is not None and saved_ranks != (world_size, rank):
            raise ConfigurationError(
                f"The checkpoint holds the part of an epoch of stage `{self.name}` in progress that rank "
                f"{saved_ranks[1]} of {saved_ranks[0]} saw, and this is rank {rank} of {world_size}, so that epoch "
                "cannot be resumed exactly here. HINT: checkpoint between epochs, or save and load each rank's own "
                "tracker.state_dict() (e.g. one file per rank) with the same number of ranks."
            )
        mine = self.kinds()
        saved = state.get("kinds") or {n: mine.get(n, "unknown") for n in epoch["bounds"]}  # older checkpoints
        if saved != mine:
            raise ConfigurationError(
                f"The checkpoint's epoch of stage `{self.name}` in progress holds the metrics {saved}, and this "
                f"tracker has {mine}. HINT: resume with the metrics and schedules of the run that saved the "
                "checkpoint, or checkpoint between epochs."
            )
        for name, bound_state in epoch["bounds"].items():
            self.bounds[name].check_state(bound_state)

    def state_dict(self) -> dict[str, Any]:
        """Counters, each metric's kind and, for an open epoch, everything accumulated so far."""
        state: dict[str, Any] = {"steps": self.steps, "epochs": self.epochs, "open": self.open, "kinds": self.kinds()}
        if self.open:
            state["epoch"] = {
                "num_samples": self.num_samples,
                "valid": self.valid,
                "seen": self.seen,
                "samples": self.samples,
                "empty_batches": self.empty_batches,
                "ranks": list(self._ranks),
                "bounds": {n: b.state_dict() for n, b in self.bounds.items()},
                "collected": self._collector.state_dict(),
            }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (after :meth:`check_state`); an open epoch continues at the next ``epoch()``."""
        self.steps, self.epochs = int(state["steps"]), int(state["epochs"])
        epoch = state.get("epoch")
        self._reset_epoch(None, 1, 0)
        self._resumed_open = bool(state["open"]) and epoch is not None
        if epoch is None or not self._resumed_open:
            return
        self.num_samples, self.valid = epoch["num_samples"], epoch["valid"]
        self.seen, self.samples, self.empty_batches = epoch["seen"], epoch["samples"], epoch["empty_batches"]
        for n, bound_state in epoch["bounds"].items():
            self.bounds[n].load_state_dict(bound_state)
        self._collector.load_state_dict(epoch["collected"])


def _bind(name: str, metric: Any, per_step: bool) -> Bound:
    """The bound kind of one metric: torchmetrics accumulate their own state; callables by the schedule."""
    from torchmetrics import Metric

    if isinstance(metric, Metric):
        return TorchmetricBound(name, metric)
    return PerStepBound(name, metric) if per_step else ExactBound(name, metric)


def _short(text: str, limit: int = 160) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 1] + "…")
