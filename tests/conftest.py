"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import collections
import os
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from lightning_fabric.loggers import Logger


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """Launchers (Fabric's among them) set MASTER_PORT and friends in os.environ: undo it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def classification_batches(sizes: list[int], num_classes: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Batches of logits and labels with the given sizes (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for n in sizes:
        logits = torch.randn(n, num_classes, generator=g)
        target = torch.randint(0, num_classes, (n,), generator=g)
        batches.append({"preds": logits, "target": target})
    return batches


def free_port() -> int:
    """A free TCP port on localhost for a process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RecordingLogger(Logger):
    """A Fabric logger that keeps what it receives in memory (optionally failing on purpose)."""

    def __init__(self, fail_on_log: bool = False) -> None:
        self.rows: list[tuple[int | None, dict[str, float]]] = []
        self.finalized: list[str] = []
        self.fail_on_log = fail_on_log

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.fail_on_log:
            raise OSError(28, "No space left on device")
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def finalize(self, status: str) -> None:
        self.finalized.append(status)


@pytest.fixture
def recording_logger() -> Iterator[RecordingLogger]:
    yield RecordingLogger()


SYNCING = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


@pytest.fixture
def sync_calls(monkeypatch):
    """Count calls of the Tensor methods that copy data to the host."""
    counts: collections.Counter[str] = collections.Counter()
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, __original=original, __name=name, **kwargs):
            counts[__name] += 1
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return counts
