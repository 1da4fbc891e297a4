"""Every example runs offline, with tiny settings, as a user would start it; so does the README's quickstart."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

example = pytest.mark.timeout(300)


def run(args: list[str], out: Path) -> str:
    env = {**os.environ, "FABRICMETRICS_EXAMPLE_QUICK": "1", "FABRICMETRICS_EXAMPLE_OUT": str(out), "MPLBACKEND": "Agg"}
    try:
        done = subprocess.run(args, cwd=out.parent, env=env, capture_output=True, text=True, timeout=280)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"timed out; output so far: {err.stdout!r} {err.stderr!r}") from err
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def first_python_block(path: Path, heading: str) -> str:
    """The first Python block under ``heading`` in a Markdown file, as written."""
    text = path.read_text()
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[0]


def run_script(code: str, where: Path) -> str:
    (where / "script.py").write_text(code)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "script.py"], cwd=where, env=env, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.timeout(300)
def test_the_readme_quickstart_runs_as_written(tmp_path):
    printed = run_script(first_python_block(ROOT / "README.md", "## Quickstart"), tmp_path)
    lines = printed.splitlines()
    assert [line.split(":")[0] for line in lines[:5]] == [f"epoch {e}" for e in range(1, 6)]
    final = float(re.search(r"'acc/val': ([0-9.]+)", lines[4]).group(1))
    assert final > 0.9  # the script learns, and the value it prints is an accuracy
    assert (tmp_path / "runs" / "quickstart.png").stat().st_size > 10_000
    assert (tmp_path / "runs" / "quickstart" / "version_0" / "metrics.csv").is_file()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "runs/quickstart/version_0"))


@pytest.mark.timeout(300)
def test_the_docs_quickstart_loop_runs_as_written(tmp_path):
    printed = run_script(first_python_block(ROOT / "docs" / "quickstart.md", "## The loop"), tmp_path)
    results = [line for line in printed.splitlines() if line.startswith("{'acc/val'")]
    assert len(results) == 3 and all("'bacc/val'" in line and "'loss/val'" in line for line in results)
    assert "train epoch 3 done  23/23" in printed  # the progress display, off a terminal: plain lines


@pytest.mark.slow
@example
def test_plot_metrics_tracker(tmp_path):
    out = tmp_path / "out"
    printed = run([sys.executable, str(EXAMPLES / "plot_metrics_tracker.py")], out)
    assert "epoch 1: acc1/val" in printed and "contrastive_acc/val" in printed and f"figures in {out}" in printed
    assert (out / "supervised.png").stat().st_size > 10_000 and (out / "ssl.png").stat().st_size > 10_000
    assert (out / "supervised" / "version_0" / "metrics.csv").exists()


@pytest.mark.slow
@example
def test_plain_pytorch(tmp_path):
    out = tmp_path / "out"
    printed = run([sys.executable, str(EXAMPLES / "plain_pytorch.py")], out)
    assert "epoch 1: mse/val=" in printed and "r2/val" in printed and (out / "last.pt").exists()
    assert f"logs in {out / 'diabetes' / 'version_0'}" in printed


@pytest.mark.slow
@pytest.mark.distributed
@example
def test_fabric_ddp(tmp_path):
    out = tmp_path / "out"
    printed = run([sys.executable, str(EXAMPLES / "fabric_ddp.py"), "--epochs", "1", "--out", str(out)], out)
    assert "scored 180 of the 359 validation samples" in printed
    tracker_line = next(line for line in printed.splitlines() if line.startswith("epoch 1: "))
    reference_line = next(line for line in printed.splitlines() if line.startswith("one process"))
    acc = tracker_line.split("acc/val=")[1].split(",")[0]
    assert f"acc={acc}" in reference_line  # the tracker's value equals one process scoring the whole set
    assert f"logs in {out / 'digits' / 'version_0'}" in printed


@pytest.mark.slow
@pytest.mark.distributed
@example
def test_torchrun_ddp(tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port())]
    printed = run([*args, str(EXAMPLES / "torchrun_ddp.py"), "--epochs", "1", "--out", str(out)], out)
    assert "epoch 1: acc/val=" in printed and f"logs in {out / 'digits' / 'version_0'}" in printed
    assert (out / "digits" / "version_0" / "metrics.csv").exists()
