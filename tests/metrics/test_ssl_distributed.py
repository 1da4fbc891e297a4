"""Metric classes synced over 2 gloo ranks with uneven shards equal the single-process value."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fabricmetrics.exceptions import InputError
from fabricmetrics.metrics import Alignment, ContrastiveAccuracy, EffectiveRank, Uniformity, effective_rank

N_SAMPLES = 37
SHARDS = [(0, 13), (13, 37)]  # rank 0 gets 13 samples, rank 1 gets 24


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    z1 = torch.randn(N_SAMPLES, 5, generator=g, dtype=torch.float64)
    return z1, z1 + 0.8 * torch.randn(N_SAMPLES, 5, generator=g, dtype=torch.float64)


def _metrics() -> dict[str, torch.nn.Module]:
    return {
        "alignment": Alignment(alpha=1),
        "uniformity": Uniformity(chunk_size=4),
        "accuracy_top1": ContrastiveAccuracy(topk=1),
        "accuracy_top5": ContrastiveAccuracy(topk=5, memory_budget_bytes=1),
        "rank": EffectiveRank(),
    }


def _feed(metrics: dict[str, torch.nn.Module], z1: torch.Tensor, z2: torch.Tensor) -> dict[str, float]:
    for b1, b2 in zip(z1.split(5), z2.split(5), strict=True):  # several batches per rank
        for name, metric in metrics.items():
            if name in ("uniformity", "rank"):
                metric.update(torch.cat([b1, b2]))  # type: ignore[operator]
            else:
                metric.update(b1, b2)  # type: ignore[operator]
    return {name: float(metric.compute()) for name, metric in metrics.items()}  # type: ignore[operator]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        z1, z2 = _data()
        start, stop = SHARDS[rank]
        values = _feed(_metrics(), z1[start:stop], z2[start:stop])
        # EffectiveRank without num_features: rank 0 sees nothing, then the ranks disagree on d
        lazy = EffectiveRank()
        if rank == 1:
            lazy.update(z1)
        values["rank, rank 0 empty"] = float(lazy.compute())
        mismatched = EffectiveRank()
        mismatched.update(z1[:, : 5 - rank])
        try:
            mismatched.compute()
        except InputError as err:
            values["mismatch"] = str(err)
        torch.save(values, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # leave together: no rank tears the group down under another
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_synced_metrics_equal_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    z1, z2 = _data()
    # One process, every sample (batch boundaries differ from the ranks'; no metric depends on order).
    expected = _feed(_metrics(), z1, z2)
    expected["rank, rank 0 empty"] = float(effective_rank(z1))
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got.pop("mismatch") == (
            "EffectiveRank: the ranks saw embeddings of different widths [4, 5]. HINT: every rank must embed "
            "with the same model; call reset() between embeddings of different models."
        )
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-12), (rank, name)
    assert 0.0 < expected["accuracy_top1"] < expected["accuracy_top5"] < 1.0
    assert not dist.is_initialized()
