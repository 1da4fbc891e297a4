"""Cost of the epoch end in exact mode on 2 CPU ranks (gloo), measured side by side in one run.

Each rank feeds 10k x 128 float32 embeddings in total per epoch (5k per rank, or 5.1k / 4.9k for the
uneven case) to an exact-mode metric, in steps of 125 rows. Timed per epoch end (the ``with
tracker.epoch`` exit: status exchange, uneven gather, compute, outcome exchange):

* tracker, exact metric, even and uneven shards;
* tracker with a per-step metric only (the fixed cost of an epoch end: two small object exchanges
  and one all-reduce);
* the floor: a bare ``torch.distributed.all_gather`` of the same 5k x 128 shards plus ``torch.cat``;
* the metric's compute alone on the 10k x 128 set.

Usage: ``python benchmarks/gather.py [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fabricmetrics import MetricsTracker, Schedule

D, TOTAL, STEP = 128, 10_000, 125


def mean_norm(z: torch.Tensor) -> torch.Tensor:
    return z.norm(dim=1).mean()


def epoch_end_time(tracker: MetricsTracker, stage: str, shard: torch.Tensor) -> float:
    with tracker.epoch(stage):
        for start in range(0, len(shard), STEP):
            tracker.step(stage, {"z": shard[start : start + STEP]})
        dist.barrier()
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
    names = ("exact, even", "exact, uneven", "per-step only", "floor", "compute")
    times: dict[str, list[float]] = {k: [] for k in names}
    whole = torch.randn(TOTAL, D, generator=g)
    for i in range(repeats + 1):
        t = {
            "exact, even": epoch_end_time(exact, "val", even),
            "exact, uneven": epoch_end_time(exact, "val", uneven),
            "per-step only": epoch_end_time(per_step, "val", even),
        }
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
        queue.put({k: statistics.median(v) for k, v in times.items()})
    dist.destroy_process_group()


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
    medians = queue.get()
    print(f"Epoch end on 2 ranks (gloo, CPU), {TOTAL} x {D} float32 per epoch, median of {args.repeats}")
    print(f"{'variant':<20} {'median':>10} {'vs floor':>10}")
    for name, value in medians.items():
        print(f"{name:<20} {value * 1e3:>8.2f}ms {value / medians['floor']:>10.2f}")


if __name__ == "__main__":
    main()
