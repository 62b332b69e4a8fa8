"""Shared fixtures.

Every test that starts Keeps uses one sim chip for the whole session
(generating its two RSA-4096 keys takes seconds), in a temporary state
directory, never the user's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stockade.evidence.sim.chip import ensure_chip

    path = tmp_path_factory.mktemp("stockade-state")
    ensure_chip(path)
    return path


@pytest.fixture
def stockade(state_dir: Path):
    """Run the real ``stockade`` CLI in a subprocess; returns CompletedProcess."""

    def run(*args: str, input: bytes | None = None, timeout: float = 120, env: dict[str, str] | None = None):
        full_env = {**os.environ, "STOCKADE_STATE_DIR": str(state_dir), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "stockade", *args],
            input=input,
            capture_output=True,
            timeout=timeout,
            env=full_env,
            check=False,
        )

    return run
