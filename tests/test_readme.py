"""The README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^(pip install .*)$", readme, flags=re.MULTILINE)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in ci.splitlines()
    assert any("fabricmetrics demo" in c for c in commands)
