"""ProbingScheduler on 2 CPU ranks (gloo): equal to 1 rank, padding removed, failures reach every rank."""

from __future__ import annotations

import math
import os
from unittest.mock import patch

import pytest
import torch
import torch.distributed as dist
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from threadpoolctl import threadpool_limits
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import fabricmetrics.distributed as fm_distributed
from fabricmetrics import MetricsTracker
from fabricmetrics.probing import KNNProbe, LinearProbe
from fabricmetrics.probing.scheduler import ProbingScheduler
from tests._distributed import run_on_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]

N_TRAIN, N_TEST = 201, 101  # odd sizes: the DistributedSampler pads rank 1 with one duplicate


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 24)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(24, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def datasets(targets: str = "label+ink") -> tuple[TensorDataset, TensorDataset]:
    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x[: N_TRAIN + N_TEST] / 16.0, dtype=torch.float32)
    label = torch.as_tensor(y[: N_TRAIN + N_TEST], dtype=torch.float32)
    second = x.mean(1) if targets == "label+ink" else label % 2  # a regression or a classification target
    y2 = torch.stack([label, second], 1)
    return TensorDataset(x[:N_TRAIN], y2[:N_TRAIN]), TensorDataset(x[N_TRAIN:], y2[N_TRAIN:])


def sharded_loader(ds: TensorDataset, rank: int, world: int) -> DataLoader:
    if world == 1:
        return DataLoader(ds, batch_size=32)
    return DataLoader(ds, batch_size=32, sampler=DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False))


def encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder().train()


def scenarios(rank: int, world: int) -> dict[str, dict[str, float]]:
    """The same probings in one process (world 1) and on every rank of a process group."""
    train, test = datasets()
    tr, te = sharded_loader(train, rank, world), sharded_loader(test, rank, world)
    multitask = [LogisticRegression(C=0.1), Ridge()]
    out = {
        "layers": ProbingScheduler(encoder(), tr, te, probe=multitask, layers=["fc1", "fc2"], prefix="p").run(),
        "cv": ProbingScheduler(
            encoder(), tr, None, probe={"digit": LogisticRegression(C=0.1), "ink": Ridge()}, cv=3
        ).run(),
        "max_samples": ProbingScheduler(encoder(), tr, te, probe=multitask, max_samples=120).run(),
        # a plain loader on every rank: each rank sees everything, rank 0's copy is used
        "replicated": ProbingScheduler(
            encoder(), DataLoader(train, batch_size=50, shuffle=True), DataLoader(test), probe=multitask
        ).run(),
    }
    # custom sharding (plain lists of batches), very uneven: rank 1 has nothing
    batches = list(DataLoader(train, batch_size=64)) if rank == 0 else []
    out["uneven"] = ProbingScheduler(encoder(), batches, te, probe=multitask).run()
    train2, test2 = datasets("label+parity")
    probes = {"lin": LinearProbe(C=0.1, sharded=True), "knn": KNNProbe(k=5, sharded=True)}
    out["sharded"] = ProbingScheduler(
        encoder(), sharded_loader(train2, rank, world), sharded_loader(test2, rank, world), probe=probes
    ).run()
    return out


class Failing(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):
        raise ValueError("probe exploded")


def outcome(fn) -> tuple[str, str]:
    try:
        fn()
    except Exception as err:
        return type(err).__name__, str(err)
    return "no error", ""


def worker(rank: int, world: int) -> dict:
    torch.set_num_threads(1)  # two processes on two cores: no competing thread pools
    threadpool_limits(1)
    results = scenarios(rank, world)
    train, test = datasets()
    tr, te = sharded_loader(train, rank, world), sharded_loader(test, rank, world)

    def rank1_fails(batch):
        if rank == 1:
            raise RuntimeError("corrupt batch on rank 1")
        return batch

    results["errors"] = {
        "fit on rank 0": outcome(lambda: ProbingScheduler(encoder(), tr, te, probe=[Failing(), Ridge()]).run()),
        "extraction on rank 1": outcome(
            lambda: ProbingScheduler(encoder(), tr, te, probe=[Ridge(), Ridge()], batch_fn=rank1_fails).run()
        ),
        "wrong target kind": outcome(
            lambda: ProbingScheduler(encoder(), tr, te, probe=[Ridge(), LogisticRegression()]).run()
        ),
    }
    results["small rounds"] = small_rounds(rank, world)
    results["tracked"] = tracked_run(fabric_in_group(rank, world), train, test)
    # the process group still works after the failures: one more probing
    results["after errors"] = ProbingScheduler(encoder(), tr, te, probe=[LogisticRegression(C=0.1), Ridge()]).run()
    return results


def small_rounds(rank: int, world: int) -> tuple[dict[str, float], list[tuple[int, int]]]:
    """The "layers" probing with 1 KiB gather rounds, and the (width, rows) of every float32 block sent."""
    train, test = datasets()
    tr, te = sharded_loader(train, rank, world), sharded_loader(test, rank, world)
    sent: list[tuple[int, int]] = []
    original = dist.all_gather

    def recording(out, tensor, *args, **kwargs):
        if tensor.dtype == torch.float32 and tensor.dim() == 2:
            sent.append((tensor.shape[1], tensor.shape[0]))
        return original(out, tensor, *args, **kwargs)

    multitask = [LogisticRegression(C=0.1), Ridge()]
    small_budget = patch.object(fm_distributed, "DEFAULT_GATHER_BUDGET_MB", 1 / 1024)
    with small_budget, patch.object(dist, "all_gather", recording):
        results = ProbingScheduler(encoder(), tr, te, probe=multitask, layers=["fc1", "fc2"], prefix="p").run()
    return results, sent


def test_two_ranks_equal_one_rank_and_failures_reach_every_rank(tmp_path):
    ranks = run_on_ranks(worker, tmp_path)
    single = scenarios(0, 1)
    for name, expected in single.items():
        for rank_results in ranks:
            got = rank_results[name]
            assert list(got) == list(expected), name
            tolerance = 1e-4 if name == "sharded" else 1e-6
            assert got == pytest.approx(expected, rel=tolerance, abs=tolerance), name
        assert ranks[0][name] == ranks[1][name]  # the same dict on every rank
    assert (
        single["layers"]["p/fc2/task0/accuracy"] > 0.2 and single["sharded"]["knn/accuracy"] > 0.2
    )  # chance: 0.1, 0.5
    assert math.isfinite(single["max_samples"]["task1/R2"])

    # embeddings travel to rank 0 in rounds of the budget (1 KiB over 2 ranks: 5 rows of 24 floats,
    # 10 of 12), not as whole shards of about 100 rows, and the scores do not change
    for rank_results in ranks:
        results, sent = rank_results["small rounds"]
        assert results == pytest.approx(single["layers"], rel=1e-6, abs=1e-6)
        embedded = [(width, rows) for width, rows in sent if width in (12, 24)]  # not the (n, 2) targets
        assert all(rows <= 1024 // (2 * 4 * width) for width, rows in embedded), embedded
        # every row travels once; each round is padded to the larger rank's block (101/100 train
        # rows, 51/50 test rows)
        assert sum(rows for width, rows in embedded if width == 12) == 101 + 51
        assert sum(rows for width, rows in embedded if width == 24) == 101 + 51
    errors0, errors1 = ranks[0]["errors"], ranks[1]["errors"]
    # the estimator's own error is a project error naming the probe on rank 0, a DistributedError elsewhere
    assert errors0["fit on rank 0"][0] == "MetricError"
    assert "Probe `task0` (Failing()) failed: ValueError: probe exploded. HINT:" in errors0["fit on rank 0"][1]
    assert errors1["fit on rank 0"][0] == "DistributedError"
    assert errors1["fit on rank 0"][1].startswith("Rank 0 failed while probing (after ")
    assert "Probe `task0`" in errors1["fit on rank 0"][1] and "probe exploded" in errors1["fit on rank 0"][1]
    assert errors1["extraction on rank 1"] == ("RuntimeError", "corrupt batch on rank 1")
    assert errors0["extraction on rank 1"] == (
        "DistributedError",
        "Rank 1 failed while embedding the probing data: RuntimeError: corrupt batch on rank 1.",
    )
    assert errors0["wrong target kind"] == errors1["wrong target kind"]
    assert errors0["wrong target kind"][0] == "ConfigurationError"
    assert "non-integer values" in errors0["wrong target kind"][1]
    # Fabric's setup_dataloaders + the tracker: probing after train epochs 2 and 4, logged on rank 0 only
    (history0, runs0), (history1, runs1) = ranks[0]["tracked"], ranks[1]["tracked"]
    single_history, single_runs = tracked_run(None, *datasets())
    assert runs0 == runs1 == single_runs == 2 and history1 == {}
    probe_keys = [k for k in single_history if k.startswith("task")]
    assert len(probe_keys) == 6 + 7
    for key in probe_keys:
        assert [s for s, _ in history0[key]] == [s for s, _ in single_history[key]] == [6, 12]
        assert [v for _, v in history0[key]] == pytest.approx([v for _, v in single_history[key]], rel=1e-6, abs=1e-6)
    assert ranks[0]["after errors"] == ranks[1]["after errors"]
    assert ranks[0]["after errors"] == pytest.approx(
        ProbingScheduler(
            encoder(),
            *(sharded_loader(ds, 0, 1) for ds in datasets()),
            probe=[LogisticRegression(C=0.1), Ridge()],
        ).run()
    )


# --------------------------------------------------------------------------------------------------
def tracked_run(fabric, train: TensorDataset, test: TensorDataset) -> tuple[dict, int]:
    """A tiny loop with the tracker and a probe every 2 epochs, under Fabric (or alone with fabric=None)."""
    model = encoder()
    tr, te = DataLoader(train, batch_size=32), DataLoader(test, batch_size=32)
    if fabric is not None:
        tr, te = fabric.setup_dataloaders(tr, te)  # installs DistributedSamplers
    scheduler = ProbingScheduler(model, tr, te, probe=[LogisticRegression(C=0.1), Ridge()], every_n_epochs=2)
    tracker = MetricsTracker({"loss": lambda loss: loss.mean()}, fabric=fabric, probes=[scheduler])
    with tracker:
        for _ in range(4):
            with tracker.epoch("train"):
                for _ in range(3):
                    tracker.step("train", {"loss": torch.ones(2)})
    return dict(tracker.history), scheduler.runs


def fabric_in_group(rank: int, world: int):
    """A Fabric that joins the process group run_on_ranks made (as under torchrun: no new processes)."""
    from lightning_fabric import Fabric

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})
    fabric = Fabric(accelerator="cpu", devices=world, strategy="ddp", loggers=[])
    fabric.launch()
    return fabric
