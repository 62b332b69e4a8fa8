"""Shared fixtures.

Every test that starts Keeps uses one sim chip for the whole session
(generating its two RSA-4096 keys takes seconds), in a temporary state
directory, never the user's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from stockade.testing.amd import FakeAmdPki

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


@pytest.fixture(scope="module")
def wasm(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``wasm("name")`` -> path of tests/data/wasm/name.wat compiled to a .wasm file."""
    import wasmtime

    out = tmp_path_factory.mktemp("wasm")

    def build(name: str) -> Path:
        target = out / f"{name}.wasm"
        if not target.exists():
            target.write_bytes(wasmtime.wat2wasm((DATA / "wasm" / f"{name}.wat").read_text()))
        return target

    return build


@pytest.fixture(scope="module")
def milan() -> FakeAmdPki:
    """A fake AMD PKI for Milan (stockade.testing.amd), one per test module."""
    from stockade.evidence.snp.abi import Product
    from stockade.testing.amd import FakeAmdPki

    return FakeAmdPki(Product.MILAN)


@pytest.fixture(scope="module")
def turin() -> FakeAmdPki:
    """A fake AMD PKI for Turin (stockade.testing.amd), one per test module."""
    from stockade.evidence.snp.abi import Product
    from stockade.testing.amd import FakeAmdPki

    return FakeAmdPki(Product.TURIN)
