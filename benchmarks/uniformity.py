"""Exact uniformity and contrastive accuracy: chunked (memory-bounded) vs one-shot formulas.

Measures wall time and peak resident memory of

- ``uniformity_score`` (blocks of rows, 256 MiB default budget) against two one-shot formulas: the
  seeds' ``torch.pdist`` one (``n(n-1)/2`` distances at once, written with in-place operations to give
  it its smallest footprint) and the full ``n x n`` matrix with a log-sum-exp;
- ``contrastive_accuracy_score`` (top-1 and top-5) against the one-shot ``n x n`` similarity matrix
  with ``topk`` indices in both directions (the seeds' formula; ``S`` and ``Sᵀ`` one at a time).

Each case runs in fresh subprocesses, so its peak memory (``VmHWM`` of ``/proc/self/status``) is its
own; "above start" is that peak minus the resident memory just before the timed call (after imports
and data). Every case runs ``--rounds`` times (default 2), the cases in alternating order, and the
best time is kept, which damps the noise of a shared machine. A one-shot case is skipped, and
reported as such, when its estimated memory exceeds 60% of ``MemAvailable``. Run from the
repository root::

    python benchmarks/uniformity.py                 # N = 10,000 and 50,000, D = 128
    python benchmarks/uniformity.py --sizes 2000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fabricmetrics.metrics import contrastive_accuracy_score, uniformity_score
from fabricmetrics.metrics.functional._kernels import DEFAULT_MEMORY_BUDGET, UNIFORMITY_BUFFERS, rows_per_block

T = 2.0


def uniformity_chunked(z1: torch.Tensor, z2: torch.Tensor) -> float:
    return float(uniformity_score(z1, t=T))


def uniformity_pdist(z1: torch.Tensor, z2: torch.Tensor) -> float:
    distances = torch.pdist(F.normalize(z1, dim=1))
    return float(distances.square_().mul_(-T).exp_().mean().log())


def uniformity_full(z1: torch.Tensor, z2: torch.Tensor) -> float:
    zn = F.normalize(z1, dim=1)
    sq = (zn * zn).sum(dim=1)
    logits = (zn @ zn.T).mul_(2.0 * T).sub_(T * sq[:, None]).sub_(T * sq[None, :]).clamp_max_(0.0)
    logits.fill_diagonal_(-math.inf)
    n = zn.shape[0]
    return float(torch.logsumexp(logits.flatten(), dim=0) - math.log(n * (n - 1)))


def accuracy_chunked(topk: int) -> Callable[[torch.Tensor, torch.Tensor], float]:
    def run(z1: torch.Tensor, z2: torch.Tensor) -> float:
        return float(contrastive_accuracy_score(z1, z2, topk=topk))

    return run


def accuracy_full(topk: int) -> Callable[[torch.Tensor, torch.Tensor], float]:
    def run(z1: torch.Tensor, z2: torch.Tensor) -> float:
        # One n x n matrix per direction, one at a time (S^T rebuilt rather than copied: half the peak).
        z1n, z2n = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        rows = torch.arange(z1.shape[0])[:, None]
        sim = z1n @ z2n.T
        hits_12 = (sim.topk(topk, dim=1).indices == rows).any(dim=1).float().mean()
        del sim
        sim_t = z2n @ z1n.T
        hits_21 = (sim_t.topk(topk, dim=1).indices == rows).any(dim=1).float().mean()
        return float((hits_12 + hits_21) / 2)

    return run


# name -> (function, estimated bytes of the one-shot formula for n samples, or None when bounded)
CASES: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], float], Callable[[int], float] | None]] = {
    "uniformity, chunked": (uniformity_chunked, None),
    "uniformity, one-shot pdist": (uniformity_pdist, lambda n: 4 * n * (n - 1) / 2 * 1.1),
    "uniformity, one-shot n x n": (uniformity_full, lambda n: 4 * n * n * 3),
    "contrastive top-1, chunked": (accuracy_chunked(1), None),
    "contrastive top-5, chunked": (accuracy_chunked(5), None),
    "contrastive top-5, one-shot n x n": (accuracy_full(5), lambda n: 4 * n * n * 1.1),
}


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _mem_available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not in /proc/meminfo")


def _data(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(n, dim, generator=g)
    return z1, z1 + 4.0 * torch.randn(n, dim, generator=g)  # hard enough that retrieval misses


def child(case: str, n: int, dim: int, repeats: int) -> None:
    """Run one case in this (fresh) process and print one JSON line."""
    function, _ = CASES[case]
    z1, z2 = _data(n, dim)
    function(z1[:256], z2[:256])  # library warm-up on a tiny input
    start_mib = _status_mib("VmRSS")
    times, value = [], math.nan
    for _ in range(repeats):
        tic = time.perf_counter()
        value = function(z1, z2)
        times.append(time.perf_counter() - tic)
    result = {"seconds": min(times), "value": value, "start": start_mib, "peak": _status_mib("VmHWM")}
    print(json.dumps(result))


def _run_child(case: str, n: int, dim: int, repeats: int) -> dict[str, float] | str:
    command = [sys.executable, __file__, "--child", case, str(n), str(dim), str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"failed (exit {done.returncode}): {done.stderr.strip()[-200:]}"
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process (1 above 20k)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per case, in alternating order")
    parser.add_argument("--child", nargs=4, metavar=("CASE", "N", "DIM", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, n, dim, repeats = args.child
        child(case, int(n), int(dim), int(repeats))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, D = {args.dim}")
    print(f"time: best of {args.rounds} processes (cases interleaved) x {args.repeats} calls (1 call above 20k)")
    print("| N | case | time (s) | peak RSS (MiB) | above start (MiB) | value |")
    print("|---|---|---:|---:|---:|---|")
    for n in args.sizes:
        repeats = args.repeats if n <= 20_000 else 1
        results: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
        notes: dict[str, str] = {}
        for round_ in range(args.rounds):
            for case in CASES if round_ % 2 == 0 else reversed(CASES):
                estimate, available = CASES[case][1], _mem_available_bytes()
                if estimate is not None and estimate(n) > 0.6 * available:
                    notes[case] = (
                        f"skipped: needs ~{estimate(n) / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available"
                    )
                    continue
                outcome = _run_child(case, n, args.dim, repeats)
                if isinstance(outcome, str):
                    notes[case] = outcome
                else:
                    results[case].append(outcome)
        chunked_seconds: dict[str, float] = {}
        for case, runs in results.items():
            if not runs:
                print(f"| {n:,} | {case} | {notes.get(case, 'not run')} | | | |")
                continue
            seconds = min(r["seconds"] for r in runs)
            peak = max(r["peak"] for r in runs)
            above = max(r["peak"] - r["start"] for r in runs)
            kind, ratio = case.split(",")[0], ""
            if case.endswith("chunked"):
                chunked_seconds[kind] = seconds
            elif kind in chunked_seconds:
                ratio = f" ({seconds / chunked_seconds[kind]:.1f}x chunked)"
            print(f"| {n:,} | {case} | {seconds:.2f}{ratio} | {peak:.0f} | {above:.0f} | {runs[0]['value']:.6f} |")
        rows = rows_per_block(n - 1, n, 4, UNIFORMITY_BUFFERS, None, DEFAULT_MEMORY_BUDGET)
        print(f"|   | (chunked uniformity: {rows} rows per block at N = {n:,}) | | | | |")


if __name__ == "__main__":
    main()
