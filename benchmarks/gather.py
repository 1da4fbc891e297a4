"""Cost of the epoch end in exact mode on 2 CPU ranks (gloo), measured side by side in one run.

Each rank feeds 10k x 128 float32 embeddings in total per epoch (5k per rank, or 5.1k / 4.9k for the
uneven case) to an exact-mode metric, in steps of 125 rows. Timed per epoch end (the ``with
tracker.epoch`` exit: status exchange, uneven gather, compute, outcome exchange):

* tracker, exact metric, even and uneven shards;
* tracker with a per-step metric only (the fixed cost of an epoch end: two small object exchanges
  and one all-reduce), and with 8 per-step metrics (a longer status: every metric is in the
  fingerprint that the ranks compare);
* the floor: a bare ``torch.distributed.all_gather`` of the same 5k x 128 shards plus ``torch.cat``;
* the metric's compute alone on the 10k x 128 set.

For each tracker variant it also counts the collectives of one epoch end (``all_gather`` and
``all_reduce`` calls of the process group) and the size of the pickled status that opens it (the
first object exchange), so a run of another version of the library (``PYTHONPATH=<checkout>
python benchmarks/gather.py`` from outside the repository) shows what a change adds to both.

Usage: ``python benchmarks/gather.py [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fabricmetrics
from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.distributed import Collectives, TorchCollectives

D, TOTAL, STEP = 128, 10_000, 125


def mean_norm(z: torch.Tensor) -> torch.Tensor:
    return z.norm(dim=1).mean()


def max_norm(z: torch.Tensor) -> torch.Tensor:
    return z.norm(dim=1).max()


def first_mean(z: torch.Tensor) -> torch.Tensor:
    return z[:, 0].mean()


class CallCounter:
    """Counts the process group's collectives and records the pickled size of each object exchange."""

    def __init__(self) -> None:
        self.collectives = 0
        self.objects: list[int] = []
        gather_same, reduce_sum, gather_object = (
            TorchCollectives._all_gather_same,
            TorchCollectives._all_reduce_sum,
            Collectives.all_gather_object,
        )

        def counted_gather(collectives: TorchCollectives, tensor: torch.Tensor) -> list[torch.Tensor]:
            self.collectives += 1
            return gather_same(collectives, tensor)

        def counted_reduce(collectives: TorchCollectives, tensor: torch.Tensor) -> torch.Tensor:
            self.collectives += 1
            return reduce_sum(collectives, tensor)

        def recorded_object(collectives: Collectives, obj: object) -> list[object]:
            self.objects.append(len(pickle.dumps(obj)))
            return gather_object(collectives, obj)

        TorchCollectives._all_gather_same = counted_gather  # type: ignore[method-assign]
        TorchCollectives._all_reduce_sum = counted_reduce  # type: ignore[method-assign]
        Collectives.all_gather_object = recorded_object  # type: ignore[method-assign]

    def reset(self) -> None:
        """Start counting one epoch end."""
        self.collectives, self.objects = 0, []


def epoch_end_time(tracker: MetricsTracker, stage: str, shard: torch.Tensor, counter: CallCounter) -> float:
    with tracker.epoch(stage):
        for start in range(0, len(shard), STEP):
            tracker.step(stage, {"z": shard[start : start + STEP]})
        dist.barrier()
        counter.reset()
        start_time = time.perf_counter()
    return time.perf_counter() - start_time


def worker(rank: int, world: int, port: int, repeats: int, queue: mp.Queue) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(rank)
    even = torch.randn(TOTAL // world, D, generator=g)
    uneven = torch.randn(TOTAL // world + (100 if rank == 0 else -100), D, generator=g)
    exact = MetricsTracker({"mean_norm": mean_norm}, schedule={"val": Schedule()})
    per_step = MetricsTracker({"mean_norm": mean_norm}, schedule={"val": Schedule(per_step=True)})
    eight = {f"{f.__name__}_{i}": f for f in (mean_norm, max_norm, first_mean, torch.mean) for i in range(2)}
    per_step_8 = MetricsTracker(eight, needs={key: ["z"] for key in eight}, schedule={"val": Schedule(per_step=True)})
    trackers = {
        "exact, even": (exact, even),
        "exact, uneven": (exact, uneven),
        "per-step only": (per_step, even),
        "per-step, 8 metrics": (per_step_8, even),
    }
    names = (*trackers, "floor", "compute")
    times: dict[str, list[float]] = {k: [] for k in names}
    calls: dict[str, tuple[int, int]] = {}
    whole = torch.randn(TOTAL, D, generator=g)
    counter = CallCounter()
    for i in range(repeats + 1):
        t = {}
        for name, (tracker, shard) in trackers.items():
            t[name] = epoch_end_time(tracker, "val", shard, counter)
            calls[name] = (counter.collectives, counter.objects[0] if counter.objects else 0)
        dist.barrier()
        start = time.perf_counter()
        out = [torch.empty_like(even) for _ in range(world)]
        dist.all_gather(out, even)
        torch.cat(out)
        t["floor"] = time.perf_counter() - start
        start = time.perf_counter()
        mean_norm(whole)
        t["compute"] = time.perf_counter() - start
        if i > 0:  # the first round warms up
            for k, v in t.items():
                times[k].append(v)
    if rank == 0:
        queue.put(({k: statistics.median(v) for k, v in times.items()}, calls))
    dist.destroy_process_group()


def status_cost(repeats: int = 2000) -> dict[str, tuple[float, int]]:
    """In one process: microseconds to build and pickle the epoch-end status of a stage, and its bytes.

    Uses the stage's private ``_status`` (the typed status with the fingerprint); an older version of
    the library without it gives an empty dict.
    """
    eight = {f"{f.__name__}_{i}": f for f in (mean_norm, max_norm, first_mean, torch.mean) for i in range(2)}
    variants = {
        "1 per-step metric": MetricsTracker({"mean_norm": mean_norm}, schedule={"val": Schedule(per_step=True)}),
        "8 per-step metrics": MetricsTracker(
            eight, needs={key: ["z"] for key in eight}, schedule={"val": Schedule(per_step=True)}
        ),
    }
    out = {}
    for name, tracker in variants.items():
        stage = tracker._stage("val")
        if not hasattr(stage, "_status"):
            return {}
        stage.begin_epoch(None, 1, 0)
        start = time.perf_counter()
        for _ in range(repeats):
            payload = pickle.dumps((None, stage._status(1)))
        out[name] = ((time.perf_counter() - start) / repeats * 1e6, len(payload))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.spawn(worker, args=(2, free_port(), args.repeats, queue), nprocs=2, join=True)
    medians, calls = queue.get()
    print(f"fabricmetrics from {os.path.dirname(fabricmetrics.__file__)}")
    print(f"Epoch end on 2 ranks (gloo, CPU), {TOTAL} x {D} float32 per epoch, median of {args.repeats}")
    print(f"{'variant':<22} {'median':>10} {'vs floor':>10} {'collectives':>12} {'status bytes':>13}")
    for name, value in medians.items():
        count, status = calls.get(name, ("", ""))
        print(f"{name:<22} {value * 1e3:>8.2f}ms {value / medians['floor']:>10.2f} {count:>12} {status:>13}")
    for name, (micros, size) in status_cost().items():
        print(f"status with its fingerprint, {name}: built and pickled in {micros:.1f} us, {size} bytes")


if __name__ == "__main__":
    main()
