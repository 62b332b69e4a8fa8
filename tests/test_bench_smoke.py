"""The benchmarks still run (tiny budgets; no timing is asserted: speed goals
live in bench/, measured against a baseline in the same run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    ("script", "args", "keys"),
    [
        ("bench_e2e.py", ["--runs", "1"], {"ratio", "bare_wasmtime_ms_median", "steps_ms_median"}),
        ("bench_snp_verify.py", ["--seconds", "0.3"], set()),
        ("bench_dcap.py", ["--seconds", "0.3"], set()),
        (
            "bench_manager.py",
            ["--keeps", "3", "--sequential", "2"],
            {"fork_server", "fresh_processes", "ratio_fork_over_fresh"},
        ),
    ],
)
def test_bench_runs_and_reports_json(script: str, args: list[str], keys: set[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict) and doc
    assert keys <= set(doc)
