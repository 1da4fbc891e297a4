"""The probing gallery example runs offline with tiny settings and writes its logs and figures."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plot_model_probing.py"


@pytest.mark.timeout(120)
def test_example_runs_quickly_and_writes_logs_and_figures(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "FABRICMETRICS_EXAMPLE_QUICK": "1", "FABRICMETRICS_EXAMPLE_OUT": str(out), "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "probe accuracy:" in proc.stdout and "untrained" in proc.stdout
    for name in ("digits_probe.png", "diabetes_probe.png"):
        assert (out / name).stat().st_size > 10_000
    with open(out / "digits" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    probe_rows = [r for r in rows if r.get("LogisticRegression/accuracy")]
    assert [int(r["step"]) for r in probe_rows[:1]] == [0] and len(probe_rows) == 3  # baseline + 2 quick epochs
    assert list((out / "digits" / "version_0").glob("events.out.tfevents.*"))  # TensorBoard too
    with open(out / "diabetes" / "version_0" / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert {"age/R2", "age/PCC", "age/EVar", "sex/accuracy", "sex/f1_macro"} <= set(header)  # probes named by task
