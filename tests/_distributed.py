"""Running a test function on several CPU processes (gloo) and collecting what each rank returns."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import free_port


def run_on_ranks(worker: Callable[..., Any], tmp_path: Path, *args: Any, world_size: int = 2) -> list[Any]:
    """Run ``worker(rank, world_size, *args)`` on ``world_size`` processes in a gloo process group.

    ``worker`` must be a module-level function (it is pickled for ``spawn``). Returns what each
    rank returned, in rank order. The process group is destroyed before each process exits.
    """
    port = free_port()
    mp.spawn(_entry, args=(worker, str(tmp_path), port, world_size, args), nprocs=world_size, join=True)
    results = []
    for rank in range(world_size):
        with open(Path(tmp_path) / f"rank{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))
    return results


def _entry(rank: int, worker: Callable[..., Any], out_dir: str, port: int, world_size: int, args: tuple) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        result = worker(rank, world_size, *args)
        dist.barrier()  # leave together: no rank tears the group down under another
    finally:
        dist.destroy_process_group()
    with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(result, f)


def save_rank_result(out_dir: str | Path, rank: int, result: Any) -> None:
    """For workers launched another way (Fabric): store this rank's result where the test finds it."""
    with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(result, f)


def load_rank_results(out_dir: str | Path, world_size: int) -> list[Any]:
    """Read what :func:`save_rank_result` stored."""
    results = []
    for rank in range(world_size):
        with open(Path(out_dir) / f"rank{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))
    return results
