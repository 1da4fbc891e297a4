"""Memory of the gather of probing embeddings on 2 CPU ranks (gloo), the two ways side by side.

Before the probes are fitted on rank 0, every rank's embeddings must reach rank 0. Compared, each
run in a fresh pair of processes (so that the peak resident memory, ``VmHWM``, belongs to that
variant alone), on N x D float32 embeddings split evenly over the 2 ranks:

* ``all_gather_cat``: every rank receives every shard and concatenates them (what probing did
  before ``gather_cat_to_main`` existed);
* ``gather_cat_to_main``: the rows travel in rounds of ``DEFAULT_GATHER_BUDGET_MB``; rank 0 writes
  each round into its result, here through a permutation (as when a ``DistributedSampler``'s order
  is restored), and rank 1 drops it.

Reported per rank: the peak resident memory above the memory just before the call (the shard is
already allocated then), and the wall time of the call (best of ``--repeats`` fresh runs).

Usage: ``python benchmarks/probe_gather.py [--n 200000] [--d 512] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gather import free_port  # the sibling benchmark (run as `python benchmarks/probe_gather.py`)

from fabricmetrics.distributed import DEFAULT_GATHER_BUDGET_MB, TorchCollectives


def memory_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(rank: int, world: int, port: int, variant: str, n: int, d: int, queue: mp.Queue) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    torch.set_num_threads(1)
    coll = TorchCollectives()
    counts = [len(range(r, n, world)) for r in range(world)]
    shard = torch.randn(counts[rank], d, generator=torch.Generator().manual_seed(rank))
    index = torch.randperm(n, generator=torch.Generator().manual_seed(7)) if rank == 0 else None
    dist.barrier()
    before = memory_kib("VmRSS")
    start = time.perf_counter()
    if variant == "all_gather_cat":
        result = coll.all_gather_cat(shard, counts)
    else:
        result = coll.gather_cat_to_main(shard, counts, index=index)
    elapsed = time.perf_counter() - start
    peak = memory_kib("VmHWM")
    rows = None if result is None else int(result.shape[0])
    del result
    dist.barrier()
    dist.destroy_process_group()
    queue.put((rank, elapsed, (peak - before) / 1024, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="rows over both ranks")
    parser.add_argument("--d", type=int, default=512, help="embedding width")
    parser.add_argument("--repeats", type=int, default=3, help="fresh runs per variant; the best time counts")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    variants = ("all_gather_cat", "gather_cat_to_main")
    best: dict[tuple[str, int], tuple[float, float, int | None]] = {}
    for _ in range(args.repeats):
        for variant in variants:  # interleaved: a disturbance does not hit one variant alone
            queue = ctx.Queue()
            mp.spawn(worker, args=(2, free_port(), variant, args.n, args.d, queue), nprocs=2, join=True)
            for _ in range(2):
                rank, elapsed, peak_mib, rows = queue.get()
                old = best.get((variant, rank), (float("inf"), 0.0, rows))
                best[(variant, rank)] = (min(old[0], elapsed), max(old[1], peak_mib), rows)
    set_mib = args.n * args.d * 4 / 2**20
    print(
        f"# {args.n} x {args.d} float32 ({set_mib:.0f} MiB) over 2 ranks, gloo, round budget "
        f"{DEFAULT_GATHER_BUDGET_MB:g} MiB, best time / largest peak of {args.repeats} fresh runs"
    )
    print("| variant | rank | rows received | time (s) | peak above start (MiB) | peak / whole set |")
    print("|---|---|---:|---:|---:|---:|")
    for variant in variants:
        for rank in range(2):
            elapsed, peak_mib, rows = best[(variant, rank)]
            print(
                f"| `{variant}` | {rank} | {'-' if rows is None else rows} | {elapsed:.2f} | {peak_mib:.0f} | "
                f"{peak_mib / set_mib:.2f} |"
            )


if __name__ == "__main__":
    main()
