"""Ranks that disagree on what to reduce at an epoch end get one DistributedError each, never a value.

Every scenario runs in one pair of gloo processes (a spawn costs seconds); each scenario first
makes the ranks disagree, records what every rank raised and how long its epoch end took, then
runs a correct epoch and records its values, which the tests compare with NumPy / scikit-learn on
the same data.
"""

from __future__ import annotations

import functools
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from sklearn.metrics import accuracy_score
from torchmetrics import MaxMetric, Metric, MinMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from fabricmetrics import MetricsTracker, Schedule
from tests._distributed import _entry
from tests.conftest import free_port

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(400)]

WORLD = 2
JOIN_TIMEOUT_S = 300.0  # both processes, every scenario, on a loaded 2-core machine
EPOCH_END_LIMIT_S = 20.0  # a refused epoch end takes well under a second; a hung collective runs into 60 s


# --------------------------------------------------------------------------------------------------
# data (the same on every rank's process and in the tests)


def values(rank: int, offset: float = 0.0) -> torch.Tensor:
    """Rank 0 holds 1 … 10, rank 1 holds 11 … 20 (plus ``offset``)."""
    return torch.arange(1, 11, dtype=torch.float64) + 10 * rank + offset


def labels(rank: int, stage: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random labels and predictions of 3 classes; uneven shards (9 and 14 rows) unless ``n``."""
    g = np.random.default_rng({"val": 0, "test": 1}[stage] * 10 + rank)
    n = (9 if rank == 0 else 14) if n is None else n
    return g.integers(0, 3, n), g.integers(0, 3, n)


def all_values(offset: float = 0.0) -> np.ndarray:
    return np.concatenate([values(r, offset).numpy() for r in range(WORLD)])


def all_labels(stage: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [labels(r, stage) for r in range(WORLD)]
    return np.concatenate([y for y, _ in pairs]), np.concatenate([p for _, p in pairs])


def mean_value(value: torch.Tensor) -> torch.Tensor:
    return value.mean()


def square(x: torch.Tensor) -> torch.Tensor:
    return x * x


def mean_of(value: torch.Tensor, fn: Any) -> torch.Tensor:
    return fn(value).mean()


class SumOf(Metric):
    """A torchmetric with a function among its settings."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor) -> None:
        self.total += self.fn(value).sum()

    def compute(self) -> torch.Tensor:
        return self.total


# --------------------------------------------------------------------------------------------------
# the worker (module level: pickled for spawn)


def attempt(tracker: MetricsTracker, stage: str, batches: list[dict[str, Any]], **epoch_kwargs: Any) -> dict[str, Any]:
    """One epoch of ``stage``: its results, or the error it ended in; and how long the epoch end took."""
    try:
        with tracker.epoch(stage, **epoch_kwargs) as epoch:
            for batch in batches:
                tracker.step(stage, batch)
            start = time.perf_counter()
    except Exception as err:
        return {"error": type(err).__name__, "message": str(err), "seconds": time.perf_counter() - start}
    return {"results": epoch.results, "seconds": time.perf_counter() - start}


def value_batches(rank: int, offset: float = 0.0) -> list[dict[str, Any]]:
    x = values(rank, offset)
    return [{"value": x[:4]}, {"value": x[4:]}]


def label_batches(rank: int, stage: str) -> list[dict[str, Any]]:
    y, p = labels(rank, stage)
    return [{"y_true": y[:5], "y_pred": p[:5]}, {"y_true": y[5:], "y_pred": p[5:]}]


def agreement_worker(rank: int, world: int) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def scenario(name: str, fn: Any) -> None:
        try:
            out[name] = fn()
        except Exception as err:  # recorded; the test names it
            out[name] = {"crashed": f"{type(err).__name__}: {err}"}

    # (a) the same metrics, listed in another order
    def order() -> dict[str, Any]:
        metrics = {"mx": MaxMetric(), "mn": MinMetric()}
        refused = MetricsTracker(dict(reversed(metrics.items())) if rank == 1 else metrics)
        failed = attempt(refused, "val", value_batches(rank))
        fixed = MetricsTracker({"mx": MaxMetric(), "mn": MinMetric()})
        return {"failed": [failed], "after": attempt(fixed, "val", value_batches(rank))}

    # (b) one name, another kind of metric
    def kind() -> dict[str, Any]:
        refused = MetricsTracker({"m": MaxMetric() if rank == 0 else MinMetric()})
        failed = attempt(refused, "val", value_batches(rank))
        fixed = MetricsTracker({"m": MaxMetric()})
        return {"failed": [failed], "after": attempt(fixed, "val", value_batches(rank))}

    # (c) the stages in another order, with a torchmetric and with an exact-mode scikit-learn metric
    def stage_order(metric: Any, batches: Any) -> dict[str, Any]:
        tracker = MetricsTracker({"m": metric})
        stages = ["val", "test"] if rank == 0 else ["test", "val"]
        failed = [attempt(tracker, stage, batches(stage)) for stage in stages]
        after = {stage: attempt(tracker, stage, batches(stage)) for stage in ("val", "test")}
        return {"failed": failed, "after": after, "epochs": {s: tracker._stages[s].epochs for s in ("val", "test")}}

    # (d) another Schedule for the same stage: per-step vs exact, and a different every_n_epochs
    def schedules(mine: Schedule, theirs: Schedule) -> dict[str, Any]:
        tracker = MetricsTracker({"m": mean_value}, schedule={"val": mine if rank == 0 else theirs})
        failed = attempt(tracker, "val", value_batches(rank))
        after = attempt(tracker, "train", value_batches(rank, offset=0.5))  # a stage whose schedules agree
        return {"failed": [failed], "after": after}

    # (e) ranks configured alike never disagree: partials holding functions, lambdas, metric settings
    def alike() -> dict[str, Any]:
        tracker = MetricsTracker(
            {
                "sq": functools.partial(mean_of, fn=square),
                "lam": lambda value: value.max(),
                "acc": MulticlassAccuracy(3, average="micro", ignore_index=None),
                "sum": SumMetric(),
                "sum_sq": SumOf(square),
            },
            needs={"acc": {"preds": lambda o: o["y_pred"], "target": lambda o: o["y_true"]}, "sum": ["value"]},
        )
        y, p = (torch.as_tensor(a) for a in labels(rank, "val", n=10))
        x = values(rank)
        batches = [{"value": x[s], "y_true": y[s], "y_pred": p[s]} for s in (slice(0, 4), slice(4, 10))]
        return {"failed": [], "after": attempt(tracker, "val", batches), "batches": batches}

    # (f) another num_samples per rank: each rank would cut a different amount of padding
    def num_samples() -> dict[str, Any]:
        tracker = MetricsTracker({"n": SumMetric()})
        failed = attempt(tracker, "val", value_batches(rank), num_samples=20 if rank == 0 else 19)
        return {"failed": [failed], "after": attempt(tracker, "val", value_batches(rank), num_samples=20)}

    scenario("order", order)
    scenario("kind", kind)
    scenario(
        "stage order, torchmetric",
        lambda: stage_order(SumMetric(), lambda s: value_batches(rank, 0 if s == "val" else 100)),
    )
    scenario("stage order, exact", lambda: stage_order(accuracy_score, lambda s: label_batches(rank, s)))
    scenario("per_step", lambda: schedules(Schedule(per_step=True), Schedule(per_step=False)))
    scenario("every_n_epochs", lambda: schedules(Schedule(every_n_epochs=1), Schedule(every_n_epochs=2)))
    scenario("num_samples", num_samples)
    scenario("alike", alike)
    return out


# --------------------------------------------------------------------------------------------------
# running it once, with a timeout on the join


def spawn_with_timeout(worker: Any, out_dir: Path) -> list[Any]:
    """``worker(rank, 2)`` on 2 gloo processes; fail (and kill them) if they do not finish in time."""
    context = mp.start_processes(
        _entry, args=(worker, str(out_dir), free_port(), WORLD, ()), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish within {JOIN_TIMEOUT_S} s: a collective hangs")
    results = []
    for rank in range(WORLD):
        with open(out_dir / f"rank{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))
    return results


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return spawn_with_timeout(agreement_worker, tmp_path_factory.mktemp("agreement"))


def refusals(outcomes: list[dict[str, Any]], name: str) -> list[list[dict[str, Any]]]:
    """Per rank, the records of the refused epoch ends of scenario ``name`` (checked to be errors in time)."""
    per_rank = []
    for rank, out in enumerate(outcomes):
        assert "crashed" not in out[name], (rank, out[name])
        for record in out[name]["failed"]:
            assert record.get("error") == "DistributedError", (rank, record)
            assert record["seconds"] < EPOCH_END_LIMIT_S, (rank, record)
            assert "Nothing was logged for this epoch on any rank." in record["message"]
            assert "HINT:" in record["message"]
        per_rank.append(out[name]["failed"])
    return per_rank


# --------------------------------------------------------------------------------------------------
# the tests


def test_metrics_in_another_order_are_refused_on_every_rank(outcomes):
    for records in refusals(outcomes, "order"):
        message = records[0]["message"]
        assert "stage `val`" in message and "rank 1" in message
        assert "metrics is 'mx, mn' on rank 0 but 'mn, mx' on rank 1" in message
        assert "build the metrics in the same order on every rank" in message
    x = all_values()
    for out in outcomes:  # a correct epoch afterwards: the global max and min
        assert out["order"]["after"]["results"] == {"mx/val": x.max(), "mn/val": x.min()}


def test_another_metric_kind_under_one_name_is_refused_on_every_rank(outcomes):
    for records in refusals(outcomes, "kind"):
        message = records[0]["message"]
        assert "stage `val`" in message and "rank 1" in message and "metric `m`" in message
        assert "MaxMetric" in message and "MinMetric" in message
    for out in outcomes:
        assert out["kind"]["after"]["results"] == {"m/val": all_values().max()}


@pytest.mark.parametrize("name", ["stage order, torchmetric", "stage order, exact"])
def test_stages_in_another_order_are_refused_and_the_next_epochs_are_exact(outcomes, name):
    for rank, records in enumerate(refusals(outcomes, name)):
        assert len(records) == 2
        rank0 = ["val", "test"]  # what rank 0 ran at each refused epoch end; rank 1 ran the other stage
        for attempt_no, record in enumerate(records):
            mine, other = rank0[attempt_no], rank0[1 - attempt_no]
            assert f"(stage `{mine if rank == 0 else other}` here)" in record["message"]
            assert f"stage is '{mine}' on rank 0 but '{other}' on rank 1" in record["message"]
            assert "run the same stages in the same order on every rank" in record["message"]
    for out in outcomes:
        after = out[name]["after"]
        assert out[name]["epochs"] == {"val": 1, "test": 1}  # the refused epochs did not count
        if name.endswith("torchmetric"):
            assert after["val"]["results"] == {"m/val": all_values().sum()}  # 210: not the other stage's data
            assert after["test"]["results"] == {"m/test": all_values(100).sum()}
        else:
            for stage in ("val", "test"):
                assert after[stage]["results"] == pytest.approx({f"m/{stage}": accuracy_score(*all_labels(stage))})


@pytest.mark.parametrize(
    ("name", "item", "mine", "theirs"),
    [
        ("per_step", "metric `m`", "'per_step tests.test_rank_agreement.mean_value'", "'exact "),
        ("every_n_epochs", "computes this epoch", "'True'", "'False'"),
    ],
)
def test_other_schedules_are_refused_on_every_rank(outcomes, name, item, mine, theirs):
    for records in refusals(outcomes, name):
        message = records[0]["message"]
        assert f"{item} is {mine}" in message and f"but {theirs}" in message and "rank 1" in message
        assert "stage `val`" in message
    x = all_values(0.5)
    for out in outcomes:  # another stage of the same tracker still works: train is per-step, batches of 4 and 6
        assert out[name]["after"]["results"] == pytest.approx({"m/train": x.mean()})


def test_another_num_samples_per_rank_is_refused_on_every_rank(outcomes):
    # num_samples is the length of the data set the sampler shards: one number for every rank; rank 1
    # told 19 instead of 20 would drop one of its real samples as padding, silently
    for records in refusals(outcomes, "num_samples"):
        message = records[0]["message"]
        assert "stage `val`" in message and "num_samples" in message and "rank 1" in message
        assert "'20'" in message and "'19'" in message
    for out in outcomes:
        assert out["num_samples"]["after"]["results"] == {"n/val": all_values().sum()}


def test_ranks_configured_alike_agree(outcomes):
    # functions among a partial's arguments or a torchmetric's settings have a process-specific repr
    # (`<function square at 0x7f…>`): the ranks must still agree
    for rank, out in enumerate(outcomes):
        assert "crashed" not in out["alike"], (rank, out["alike"])
        assert "error" not in out["alike"]["after"], (rank, out["alike"]["after"])
    batches = [b for out in outcomes for b in out["alike"]["batches"]]
    x = np.concatenate([b["value"].numpy() for b in batches])
    y = np.concatenate([b["y_true"].numpy() for b in batches])
    p = np.concatenate([b["y_pred"].numpy() for b in batches])
    expected = {
        "sq/val": pytest.approx(np.mean(x * x)),
        "lam/val": x.max(),
        "acc/val": pytest.approx(accuracy_score(y, p)),
        "sum/val": x.sum(),
        "sum_sq/val": pytest.approx(np.sum(x * x)),
    }
    for out in outcomes:
        assert out["alike"]["after"]["results"] == expected
