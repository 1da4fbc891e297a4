"""One stage's metrics: argument plan, per-step work, and the epoch-end reduction across ranks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fabricmetrics._collect import Collector
from fabricmetrics._values import flatten_value
from fabricmetrics.bound import Bound, ExactBound, PerStepBound, TorchmetricBound
from fabricmetrics.distributed import Collectives, valid_sample_count
from fabricmetrics.exceptions import ConfigurationError, FabricMetricsError, MetricError, OutputsError
from fabricmetrics.needs import NeedsSpec, Source, describe_source, missing_key_error, resolve_plan
from fabricmetrics.schedule import Schedule

__all__ = ["Stage"]

_Call = tuple[Bound, tuple[int, ...], tuple[tuple[str, int], ...]]


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
        self.bounds: dict[str, Bound] = {}
        for metric_name, metric in metrics.items():
            if isinstance(metric, torch.nn.Module):
                self.bounds[metric_name] = TorchmetricBound(metric_name, metric)  # type: ignore[arg-type]
            elif schedule.per_step:
                self.bounds[metric_name] = PerStepBound(metric_name, metric)
            else:
                self.bounds[metric_name] = ExactBound(metric_name, metric)
        self.steps = 0
        self.epochs = 0
        self.device: torch.device | None = None
        self._calls: list[_Call] | None = None
        self._sources: list[Source] = []
        self._exact: list[int] = []
        self._users: dict[int, tuple[str, str]] = {}
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

    def end_epoch(self, completed: bool) -> None:
        """Close the epoch (counting it if it completed) and free its state."""
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
        n = batch_size if batch_size is not None else _batch_size(values)
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
        accumulate = self.accumulating
        step_values: dict[str, Any] = {}
        for bound, pos, kws in self._calls:  # type: ignore[union-attr]
            args = [values[i] for i in pos]
            kwargs = {k: values[i] for k, i in kws}
            try:
                if isinstance(bound, TorchmetricBound):
                    if log_step:
                        step_values[bound.name] = bound.step_value(args, kwargs)
                    elif bound.leader is None:
                        bound.update(args, kwargs)
                elif isinstance(bound, PerStepBound):
                    value = bound.step_value(args, kwargs)
                    if accumulate:
                        bound.accumulate(value, n)
                    if log_step:
                        step_values[bound.name] = value
                elif log_step:
                    step_values[bound.name] = bound.step_value(args, kwargs)
            except FabricMetricsError:
                raise
            except Exception as err:
                raise MetricError(
                    f"Metric `{bound.name}` failed on step {self.steps} of stage `{self.name}`: "
                    f"{type(err).__name__}: {err}"
                ) from err
        if accumulate:
            self._collect(values, n)
            self.samples += n
        if not self.open and not self._resumed_open:  # outside an epoch nothing would reset what forward() added
            for bound in self.bounds.values():
                if isinstance(bound, TorchmetricBound):
                    bound.reset()
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
        shared: dict[Any, TorchmetricBound] = {}
        for bound, pos, kws in calls:
            signature = self.signatures.get(bound.name)
            if isinstance(bound, TorchmetricBound) and signature is not None:
                leader = shared.setdefault((pos, kws, signature), bound)
                bound.leader = None if leader is bound else leader
        self._exact = sorted(
            {i for b, pos, kws in calls if isinstance(b, ExactBound) for i in (*pos, *[i for _, i in kws])}
        )
        self._sources, self._users, self._calls = sources, users, calls

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

    def _check_devices(self, values: list[Any]) -> None:
        for i, value in enumerate(values):
            if isinstance(value, torch.Tensor):
                if self.device is None:
                    self._place(value.device)
                elif value.device != self.device:
                    name, label = self._users[i]
                    raise OutputsError(
                        f"Metric `{name}` ({label}, {describe_source(self._sources[i])}) got a tensor on "
                        f"{value.device}, "
                        f"but stage `{self.name}` has run on {self.device}. HINT: keep the outputs of a stage on "
                        "one device (e.g. move them with `.to(fabric.device)`)."
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
        keep = min(max(self.valid - self.seen, 0), n)  # type: ignore[operator]
        self.seen += n
        for i, value in enumerate(values):
            size = _first_dim(value)
            if size is not None and size != n:
                name, label = self._users[i]
                raise OutputsError(
                    f"Metric `{name}` ({label}, {describe_source(self._sources[i])}) has {size} rows but the batch has "
                    f"{n} samples, so the padding of the distributed sampler cannot be removed from it "
                    f"(epoch opened with num_samples={self.num_samples}). HINT: give metrics per-sample arguments "
                    "and combine them inside the metric, or pass batch_size= to step()."
                )
        if keep < n:
            values = [v[:keep] if _first_dim(v) is not None else v for v in values]
        return values, keep

    def _collect(self, values: list[Any], n: int) -> None:
        where = f"step {self.steps}"
        for i in self._exact:
            self._collector.add(i, values[i], lambda i=i: self._label(i), where, self.name)  # type: ignore[misc]
        for bound, pos, kws in self._calls:  # type: ignore[union-attr]
            if isinstance(bound, ExactBound):
                ids = (*pos, *(i for _, i in kws))
                sizes = {self._sources[i]: values[i].shape[0] for i in ids if _first_dim(values[i]) is not None}
                if len(set(sizes.values())) > 1:
                    shown = {describe_source(s): v for s, v in sizes.items()}
                    raise OutputsError(
                        f"Metric `{bound.name}` received arguments with different numbers of rows {shown} on step "
                        f"{self.steps} of stage `{self.name}`; in exact mode they are collected per sample. HINT: "
                        "return per-sample values of the same length."
                    )

    # ----------------------------------------------------------------------------------------------
    # epoch end
    def local_meta(self) -> dict[str, Any]:
        """What the other ranks need to know before the reduction (small and picklable)."""
        exact_calls = None
        layouts: list[Any] = []
        counts: list[int] = []
        if self._calls is not None:
            position = {src: j for j, src in enumerate(self._exact)}
            exact_calls = {
                b.name: ([position[i] for i in pos], [(k, position[i]) for k, i in kws])
                for b, pos, kws in self._calls
                if isinstance(b, ExactBound)
            }
            layouts = [self._collector.layout(i) for i in self._exact]
            counts = [self._collector.count(i) for i in self._exact]
        per_step = {n: b.keys for n, b in self.bounds.items() if isinstance(b, PerStepBound)}
        leaders = None
        if self._calls is not None:
            leaders = {
                n: b.leader.name if b.leader is not None else None
                for n, b in self.bounds.items()
                if isinstance(b, TorchmetricBound)
            }
        return {
            "samples": self.samples,
            "leaders": leaders,
            "exact_calls": exact_calls,
            "layouts": layouts,
            "counts": counts if self._calls is not None else None,
            "per_step": per_step,
        }

    def reduce(
        self, collectives: Collectives, metas: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, BaseException]]:
        """Reduce over ranks and compute every metric of the epoch.

        Every rank makes the same collective calls in the same order: they depend only on ``metas``,
        which every rank holds identically.

        Returns:
            The values by flat key (``acc``, ``f1_0``, ``report_MAE``, … before the stage suffix),
            and the errors raised while computing, by metric name.
        """
        flat: dict[str, Any] = {}
        errors: dict[str, BaseException] = {}
        if sum(m["samples"] for m in metas) == 0:
            return flat, errors
        per_step = self._reduce_per_step(collectives, metas)
        gathered = self._gather_exact(collectives, metas)
        self._agree_on_leaders(metas)
        synced = [b for b in self.bounds.values() if isinstance(b, TorchmetricBound) and b.leader is None]
        for leader in synced:
            try:
                leader.sync(collectives)
            except Exception as err:
                errors[leader.name] = err
        for bound in self.bounds.values():
            if isinstance(bound, TorchmetricBound) and bound.leader is not None:
                bound.adopt_leader_state()
        try:
            for name, bound in self.bounds.items():
                try:
                    if isinstance(bound, PerStepBound):
                        flat.update(per_step.get(name, {}))
                    elif isinstance(bound, TorchmetricBound):
                        source: TorchmetricBound = bound.leader or bound
                        if source.name in errors:
                            raise MetricError(f"synchronising `{source.name}` failed") from errors[source.name]
                        with warnings.catch_warnings():
                            warnings.filterwarnings("ignore", message=r".*was called before the ``update``")
                            flat.update(flatten_value(name, bound.compute()))
                    elif isinstance(bound, ExactBound) and gathered is not None:
                        data, calls = gathered
                        pos, kws = calls[name]
                        value = bound.compute([data[j] for j in pos], {k: data[j] for k, j in kws})
                        flat.update(flatten_value(name, value))
                except Exception as err:
                    errors.setdefault(name, err)
        finally:
            for leader in synced:
                leader.unsync()
        return flat, errors

    def _agree_on_leaders(self, metas: list[dict[str, Any]]) -> None:
        """Take the shared-update leaders of the ranks that stepped, so every rank syncs the same metrics.

        A rank that ran no step of this epoch's stage never planned its arguments, so it has no
        leaders of its own; without this it would sync every torchmetric while the others sync only
        the leaders, and the collectives would fall out of step.
        """
        plans = [(rank, m["leaders"]) for rank, m in enumerate(metas) if m["leaders"] is not None]
        if not plans:
            return
        if any(plan != plans[0][1] for _, plan in plans):  # every rank sees the same metas: all raise alike
            raise OutputsError(
                f"Stage `{self.name}`: the ranks resolved the metrics' arguments differently (shared updates per "
                f"rank: {plans}). HINT: return the same output keys from every rank's step."
            )
        for name, leader in plans[0][1].items():
            bound = self.bounds[name]
            assert isinstance(bound, TorchmetricBound)
            bound.leader = None if leader is None else self.bounds[leader]  # type: ignore[assignment]

    def _reduce_per_step(self, collectives: Collectives, metas: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """One all-reduce of (weighted sums, counts) for every per-step metric; flat values by metric."""
        keys: dict[str, list[str] | None] = {}
        for n, b in self.bounds.items():
            if not isinstance(b, PerStepBound):
                continue
            seen = [(rank, m["per_step"][n]) for rank, m in enumerate(metas) if m["per_step"][n] is not None]
            if len({tuple(k) for _, k in seen}) > 1:  # every rank sees the same metas: all raise alike
                raise MetricError(
                    f"Metric `{n}` of stage `{self.name}` returned values named differently on different ranks "
                    f"(rank, names: {seen}); their means over ranks cannot be taken. HINT: return the same keys on "
                    "every rank, e.g. one value per class of a fixed list of classes, not of the classes present."
                )
            keys[n] = seen[0][1] if seen else None
        live = [(self.bounds[n], k) for n, k in keys.items() if k is not None]
        if not live:
            return {}
        device = collectives.device
        parts = [
            (torch.zeros(len(k)) if b.total is None else torch.as_tensor(b.total)).to(device, torch.float64)  # type: ignore[attr-defined]
            for b, k in live
        ]
        counts = torch.tensor([float(b.count) for b, _ in live], dtype=torch.float64, device=device)  # type: ignore[attr-defined]
        reduced = collectives.all_reduce_sum(torch.cat([*parts, counts])).tolist()
        totals, global_counts = reduced[: -len(live)], reduced[-len(live) :]
        by_metric: dict[str, dict[str, Any]] = {}
        offset = 0
        for (bound, k), count in zip(live, global_counts, strict=True):
            chunk = totals[offset : offset + len(k)]
            by_metric[bound.name] = {key: t / count if count > 0 else math.nan for key, t in zip(k, chunk, strict=True)}
            offset += len(k)
        return by_metric

    def _gather_exact(
        self, collectives: Collectives, metas: list[dict[str, Any]]
    ) -> tuple[list[Any], dict[str, Any]] | None:
        reference = next((m for m in metas if m["exact_calls"] is not None), None)
        if reference is None or not reference["exact_calls"]:
            return None
        layouts = []
        for j in range(len(reference["layouts"])):
            seen = [(rank, m["layouts"][j]) for rank, m in enumerate(metas) if m["layouts"] and m["layouts"][j]]
            if len({layout for _, layout in seen}) > 1:  # every rank sees the same metas: all raise alike
                raise OutputsError(
                    f"Stage `{self.name}`: the ranks collected differently shaped or typed values for the same "
                    f"argument (kind, trailing shape, dtype per rank: {seen}). HINT: return the same dtype and "
                    "per-sample shape from every rank."
                )
            layouts.append(seen[0][1] if seen else None)
        data = []
        for j, layout in enumerate(layouts):
            index = self._exact[j] if self._calls is not None else None
            counts = [m["counts"][j] if m["counts"] is not None else 0 for m in metas]
            data.append(self._collector.gather(collectives, index, layout, counts))
        return data, reference["exact_calls"]

    # ----------------------------------------------------------------------------------------------
    # state
    def kinds(self) -> dict[str, str]:
        """Each metric's kind in this stage: ``"torchmetric"``, ``"per_step"`` or ``"exact"``."""
        return {n: b.kind for n, b in self.bounds.items()}

    def check_state(self, state: Mapping[str, Any], world_size: int, rank: int) -> None:
        """Raise if :meth:`load_state_dict` cannot restore ``state`` into this stage on this rank.

        Only an epoch that was open at the checkpoint carries metric state: it must hold exactly this
        stage's metrics, of the same kinds, and have been saved by this rank of a job of this size
        (the state of an epoch in progress is one rank's part of it). Between epochs, metrics may be
        added, removed or changed (the history continues; a new metric starts with the next epoch).

        Raises:
            ConfigurationError: the checkpoint's metrics or ranks do not fit (the message says how).
        """
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
        """Restore :meth:`state_dict`; an epoch that was open continues at the next ``epoch()``."""
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


def _first_dim(value: Any) -> int | None:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return int(value.shape[0]) if value.ndim > 0 else None
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def _batch_size(values: list[Any]) -> int:
    for value in values:
        size = _first_dim(value)
        if size is not None:
            return size
    return 1
