"""Sharded probing at scale on 4 CPU ranks (gloo): peak memory per rank, time per probing, equality.

A ``ProbingScheduler`` with ``sharded=True`` probes keeps the training embeddings split over the
ranks: each rank embeds its ``DistributedSampler`` shard and fits on it with collective calls, and
only predictions and targets travel to rank 0. This script measures, for N training rows of width
D (float32) on W ranks:

* the peak resident memory of each rank above its memory just before the phase (``VmHWM`` reset
  through ``/proc/self/clear_refs``, freed heap handed back with ``malloc_trim`` between phases),
  also as a multiple of the shard size ``N/W · D · 4`` bytes;
* the wall time of each phase: ``embed`` (the bare pass over the train and test loaders that every
  probing starts with), ``knn`` (one probing with ``KNNProbe(sharded=True)``), ``linear`` (one
  probing with ``LinearProbe(sharded=True)``); every probing includes its own embedding pass;
  ``floor`` is the kNN arithmetic alone (each rank: every query against its shard, one product and
  one ``topk`` per block of the probe's size, no communication), so ``knn - embed`` over ``floor``
  is what the sharded kNN costs above its floor;
* equality with one process (``--check-n`` rows): the sharded probings' scores against the same
  ``ProbingScheduler`` run in one process with the default (unsharded) probes, the sharded
  ``KNNProbe``'s predictions and probabilities against the single-process probe's, and the sharded
  ``LinearProbe``'s weights against the single-process fit.

No process ever holds the whole set: row ``i`` of the data set is computed from ``i`` on demand
(a class centre plus Gaussian noise drawn from an integer hash of the row and column), so each rank
only materialises the rows its sampler gives it. The encoder is ``nn.Identity``: the "embeddings"
are the rows themselves. Each N runs in a fresh group of W processes, time-boxed by ``--timeout``.

Usage::

    python benchmarks/scale.py                                  # N in {100k, 250k, 1M}, check at 20k
    python benchmarks/scale.py --n 20000 --check-n 0            # a quick smoke run
    python benchmarks/scale.py --n --check-n 20000              # the equality check alone
    python benchmarks/scale.py --n 1000000 --n-test 5000 --timeout 1800
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import pickle
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gather import free_port  # the sibling benchmark (run as `python benchmarks/scale.py`)
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fabricmetrics.distributed import LocalCollectives, TorchCollectives
from fabricmetrics.probing import KNNProbe, LinearProbe, ProbingScheduler
from fabricmetrics.probing.extraction import extract_embeddings, shard_layout

_MASK32 = 0xFFFFFFFF
_TRAIN_SEED, _TEST_SEED = 0x2545F491, 0x9E3779B9


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply), element-wise on int64 values below 2**32."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


class HashedEmbeddings(Dataset):
    """N rows of width D whose row ``i`` is a function of ``i`` alone, computed when asked for.

    Label ``hash(i) % classes``; features ``centres[label] + noise`` with standard Gaussian noise
    (Box-Muller on two hashed uniforms per entry) and class centres of norm about ``separation``.
    Batches come from ``__getitems__`` in one vectorised call (the loader's ``collate_fn`` is the
    identity).
    """

    def __init__(self, n: int, d: int, classes: int, seed: int, separation: float = 3.0) -> None:
        self.n, self.d, self.classes, self.seed = n, d, classes, seed
        generator = torch.Generator().manual_seed(1234)  # the same centres for train and test
        self.centres = torch.randn(classes, d, generator=generator) * (separation / math.sqrt(d))

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        labels = _hash32(_hash32(index) ^ self.seed) % self.classes
        counter = (index[:, None] * self.d + torch.arange(self.d)) * 2
        u1 = (_hash32(_hash32(counter) ^ self.seed) + 1).double() / 2.0**32  # in (0, 1]
        u2 = _hash32(_hash32(counter + 1) ^ self.seed).double() / 2.0**32
        noise = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
        return (noise.float() + self.centres[labels]), labels

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]


def _identity(batch: Any) -> Any:
    return batch


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _settle() -> int:
    """Free what can be freed, reset the peak (``VmHWM``) to the current RSS, return that RSS in KiB."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def _loader(data: HashedEmbeddings, world: int, rank: int, batch_size: int) -> DataLoader:
    sampler: DistributedSampler[int] = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
    return DataLoader(data, batch_size=batch_size, sampler=sampler, collate_fn=_identity)


def _worker(rank: int, world: int, port: int, cfg: dict[str, Any], out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=cfg["timeout"]))
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # a ConvergenceWarning would only repeat on every rank
    coll = TorchCollectives()
    n, d, classes = cfg["n"], cfg["d"], cfg["classes"]
    train = HashedEmbeddings(n, d, classes, _TRAIN_SEED)
    test = HashedEmbeddings(cfg["n_test"], d, classes, _TEST_SEED)
    train_loader = _loader(train, world, rank, cfg["batch_size"])
    test_loader = _loader(test, world, rank, cfg["batch_size"])
    knn = KNNProbe(k=cfg["k"], sharded=True)
    probes = {"knn": knn, "linear": LinearProbe(sharded=True)}
    scores: dict[str, float]
    result: dict[str, Any] = {"rank": rank}
    for phase in cfg["phases"]:
        inputs = _floor_inputs(rank, world, train, test) if phase == "floor" else None
        before = _settle()
        dist.barrier()
        start = time.perf_counter()
        if inputs is not None:
            _knn_floor(*inputs, k=cfg["k"], budget_mb=knn.memory_budget_mb, world=world)
            scores = {}
        elif phase == "embed":
            kept = [
                extract_embeddings(nn.Identity(), loader, layout=shard_layout(loader, world, rank))
                for loader in (train_loader, test_loader)
            ]
            scores = {"rows": float(len(kept[0]))}
        else:
            scheduler = ProbingScheduler(nn.Identity(), train_loader, test_loader, probe={phase: probes[phase]})
            scores = scheduler.run(coll)
        elapsed = time.perf_counter() - start
        peak = _status_kib("VmHWM")
        kept, inputs = [], None
        result[phase] = {"time": elapsed, "peak_mib": (peak - before) / 1024, "scores": scores}
        dist.barrier()
    if cfg["check"]:
        result["check"] = _direct_fits(rank, world, coll, train, test, cfg)
    dist.barrier()
    dist.destroy_process_group()
    with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(result, f)


def _floor_inputs(
    rank: int, world: int, train: HashedEmbeddings, test: HashedEmbeddings
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's bank shard and every rank's queries, L2-normalised (made outside the timed part)."""
    bank, _ = train.__getitems__(list(range(rank, train.n, world)))
    queries, _ = test.__getitems__(list(range(test.n)))
    return torch.nn.functional.normalize(bank, dim=1), torch.nn.functional.normalize(queries, dim=1)


def _knn_floor(bank: torch.Tensor, queries: torch.Tensor, *, k: int, budget_mb: float, world: int) -> None:
    """The arithmetic a rank of the sharded kNN cannot avoid: every query against its shard, top-k per row.

    Query blocks of the probe's own size (``W`` chunks of ``budget / (shard rows * 4 bytes) / W`` rows),
    one product into a reused buffer and one ``topk`` per block; no communication, no vote.
    """
    rows = max(1, int(budget_mb * 2**20) // (bank.shape[0] * bank.element_size()) // world) * world
    block = queries.new_empty(rows, bank.shape[0])
    for start in range(0, queries.shape[0], rows):
        part = queries[start : start + rows]
        torch.mm(part, bank.t(), out=block[: part.shape[0]]).topk(k, dim=1)


def _direct_fits(
    rank: int, world: int, coll: TorchCollectives, train: HashedEmbeddings, test: HashedEmbeddings, cfg: dict[str, Any]
) -> dict[str, Any] | None:
    """Sharded probes fitted on ``range(rank, n, world)`` directly; rank 0 gets every prediction in order."""
    X, y = train.__getitems__(list(range(rank, train.n, world)))
    X_test, _ = test.__getitems__(list(range(rank, test.n, world)))
    knn = KNNProbe(k=cfg["k"], sharded=True).fit(X.numpy(), y.numpy(), collectives=coll)
    proba = knn.predict_proba(X_test.numpy(), collectives=coll)
    pred = knn.predict(X_test.numpy(), collectives=coll)
    linear = LinearProbe(sharded=True).fit(X.numpy(), y.numpy(), collectives=coll)
    tight = LinearProbe(tol=1e-9, max_iter=500, dtype="float64", sharded=True).fit(X, y, collectives=coll)
    parts = coll.all_gather_list(torch.from_numpy(np.concatenate([pred[:, None], proba], axis=1)))
    if rank != 0:
        return None
    full = np.empty((test.n, parts[0].shape[1]))
    for r, part in enumerate(parts):
        full[r::world] = part.numpy()
    return {
        "pred": full[:, 0].astype(np.int64),
        "proba": full[:, 1:],
        "coef": linear.coef_,
        "iters": linear.n_iter_,
        "tight": tight.coef_,
    }


def _spawn(world: int, cfg: dict[str, Any], timeout: float) -> list[dict[str, Any]] | None:
    """Run the W ranks; ``None`` when they did not finish within ``timeout`` seconds (then they are ended)."""
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.start_processes(
            _worker, args=(world, free_port(), cfg, out_dir), nprocs=world, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + timeout
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.terminate()
                for process in context.processes:
                    process.join()
                return None
        results = []
        for rank in range(world):
            with open(Path(out_dir) / f"rank{rank}.pkl", "rb") as f:
                results.append(pickle.load(f))
        return results


def _single_process_reference(cfg: dict[str, Any]) -> dict[str, Any]:
    """The same probings in this process with unsharded probes, and direct fits on the whole set."""
    torch.set_num_threads(1)
    train = HashedEmbeddings(cfg["n"], cfg["d"], cfg["classes"], _TRAIN_SEED)
    test = HashedEmbeddings(cfg["n_test"], cfg["d"], cfg["classes"], _TEST_SEED)
    scores = {}
    for name, probe in (("knn", KNNProbe(k=cfg["k"])), ("linear", LinearProbe())):
        loaders = [DataLoader(data, batch_size=cfg["batch_size"], collate_fn=_identity) for data in (train, test)]
        scores[name] = ProbingScheduler(nn.Identity(), *loaders, probe={name: probe}).run(LocalCollectives())
    X, y = train.__getitems__(list(range(train.n)))
    X_test, _ = test.__getitems__(list(range(test.n)))
    knn = KNNProbe(k=cfg["k"]).fit(X.numpy(), y.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        linear = LinearProbe().fit(X.numpy(), y.numpy())
        tight = LinearProbe(tol=1e-9, max_iter=500, dtype="float64").fit(X, y)
    return {
        "scores": scores,
        "pred": knn.predict(X_test.numpy()),
        "proba": knn.predict_proba(X_test.numpy()),
        "coef": linear.coef_,
        "iters": linear.n_iter_,
        "tight": tight.coef_,
    }


def _check(args: argparse.Namespace) -> None:
    cfg = _config(args, args.check_n, ["knn", "linear"], check=True)
    ranks = _spawn(args.world, cfg, args.timeout)
    if ranks is None:
        print(f"# equality check at N={args.check_n}: did not finish within {args.timeout:.0f} s")
        return
    ref = _single_process_reference(cfg)
    print(f"\n# Equality at N={args.check_n} x {args.d}, {args.n_test} queries: {args.world} ranks vs one process")
    print("| probing | metric | sharded | one process | abs. difference |")
    print("|---|---|---:|---:|---:|")
    for phase in ("knn", "linear"):
        sharded = ranks[0][phase]["scores"]
        same_on_ranks = all(r[phase]["scores"] == sharded for r in ranks)
        for metric, value in ref["scores"][phase].items():
            print(
                f"| {phase} | `{metric}` | {sharded[metric]:.6f} | {value:.6f} | {abs(sharded[metric] - value):.1e} |"
            )
        print(f"| {phase} | identical on every rank | {same_on_ranks} | | |")
    direct = ranks[0]["check"]
    mismatched = int((direct["pred"] != ref["pred"]).sum())
    coef_scale = float(np.abs(ref["coef"]).max())
    print(f"\nKNNProbe predictions differing from one process: {mismatched} of {len(ref['pred'])}")
    print(f"KNNProbe probabilities, largest abs. difference: {np.abs(direct['proba'] - ref['proba']).max():.1e}")
    print(
        f"LinearProbe coef_, largest abs. difference: {np.abs(direct['coef'] - ref['coef']).max():.1e} "
        f"(largest |coef_| {coef_scale:.2f}; L-BFGS iterations {direct['iters']} sharded, {ref['iters']} one process)"
    )
    print(
        "LinearProbe(tol=1e-9, dtype='float64') coef_, largest abs. difference: "
        f"{np.abs(direct['tight'] - ref['tight']).max():.1e}"
    )


def _config(args: argparse.Namespace, n: int, phases: list[str], *, check: bool) -> dict[str, Any]:
    return {
        "n": n,
        "d": args.d,
        "n_test": args.n_test,
        "classes": args.classes,
        "k": args.k,
        "batch_size": args.batch_size,
        "phases": phases,
        "check": check,
        "timeout": args.timeout,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="*", default=[100_000, 250_000, 1_000_000], help="training rows")
    parser.add_argument("--d", type=int, default=128, help="embedding width")
    parser.add_argument("--n-test", type=int, default=5000, help="test rows (the kNN queries)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--k", type=int, default=20, help="neighbours of the kNN probe")
    parser.add_argument("--world", type=int, default=4, help="ranks")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument(
        "--phases", nargs="+", default=["embed", "floor", "knn", "linear"], choices=["embed", "floor", "knn", "linear"]
    )
    parser.add_argument("--check-n", type=int, default=20_000, help="rows of the equality check (0: skip it)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds allowed for each N")
    args = parser.parse_args()
    if args.n:
        _scale(args)
    if args.check_n:
        _check(args)


def _scale(args: argparse.Namespace) -> None:
    print(
        f"# {args.world} ranks (gloo, 1 thread each), D={args.d}, {args.n_test} test rows, {args.classes} classes, "
        f"k={args.k}; peak = VmHWM above the RSS just before the phase; shard = N/W * D * 4 bytes"
    )
    print("| N | shard (MiB) | phase | time (s), slowest rank | peak above start per rank (MiB) | peak / shard |")
    print("|---:|---:|---|---:|---|---|")
    for n in args.n:
        ranks = _spawn(args.world, _config(args, n, args.phases, check=False), args.timeout)
        shard_mib = n / args.world * args.d * 4 / 2**20
        if ranks is None:
            print(f"| {n:,} | {shard_mib:.0f} | all | did not finish within {args.timeout:.0f} s | | |", flush=True)
            continue
        for phase in args.phases:
            peaks = [r[phase]["peak_mib"] for r in ranks]
            slowest = max(r[phase]["time"] for r in ranks)
            print(
                f"| {n:,} | {shard_mib:.0f} | {phase} | {slowest:.1f} | {' / '.join(f'{p:.0f}' for p in peaks)} | "
                f"{' / '.join(f'{p / shard_mib:.2f}' for p in peaks)} |",
                flush=True,
            )
        scores = {p: ranks[0][p]["scores"].get(f"{p}/accuracy") for p in args.phases if p in ("knn", "linear")}
        print(f"|  |  | accuracy | {scores} | | |", flush=True)


if __name__ == "__main__":
    main()
