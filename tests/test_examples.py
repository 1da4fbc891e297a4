"""Every example runs offline, with tiny settings, as a user would start it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def run(args: list[str], out: Path) -> str:
    env = {**os.environ, "FABRICMETRICS_EXAMPLE_QUICK": "1", "FABRICMETRICS_EXAMPLE_OUT": str(out), "MPLBACKEND": "Agg"}
    try:
        done = subprocess.run(args, cwd=out.parent, env=env, capture_output=True, text=True, timeout=280)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"timed out; output so far: {err.stdout!r} {err.stderr!r}") from err
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_plot_metrics_tracker(tmp_path):
    out = tmp_path / "out"
    printed = run([sys.executable, str(EXAMPLES / "plot_metrics_tracker.py")], out)
    assert "acc1/val" in printed and "contrastive_acc/val" in printed
    assert (out / "supervised.png").stat().st_size > 10_000 and (out / "ssl.png").stat().st_size > 10_000
    assert (out / "supervised" / "version_0" / "metrics.csv").exists()


def test_plain_pytorch(tmp_path):
    out = tmp_path / "out"
    printed = run([sys.executable, str(EXAMPLES / "plain_pytorch.py")], out)
    assert "r2/val" in printed and (out / "last.pt").exists()


@pytest.mark.distributed
def test_fabric_ddp(tmp_path):
    out = tmp_path / "out"
    printed = run([sys.executable, str(EXAMPLES / "fabric_ddp.py"), "--epochs", "1", "--out", str(out)], out)
    assert "scored 180 of the 359 validation samples" in printed
    tracker_line = next(line for line in printed.splitlines() if line.startswith("step "))
    reference_line = next(line for line in printed.splitlines() if line.startswith("one process"))
    acc = tracker_line.split("acc/val=")[1].split(",")[0]
    assert f"acc={acc}" in reference_line  # the tracker's value equals one process scoring the whole set


@pytest.mark.distributed
def test_torchrun_ddp(tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port())]
    printed = run([*args, str(EXAMPLES / "torchrun_ddp.py"), "--epochs", "1", "--out", str(out)], out)
    assert "epoch 0: acc/val=" in printed
    assert (out / "digits" / "version_0" / "metrics.csv").exists()
