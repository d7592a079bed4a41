"""The bench scripts start: each imports what it needs (a script named like a library, bench/limits.py, once
shadowed the `limits` package for every script beside it) and answers --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench"


@pytest.mark.parametrize("script", ["run.py", "limit_ends.py", "soak.py", "gvisor.py", "state.py", "privacy.py"])
def test_a_bench_script_starts(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")
