"""The keep manager passes its compile cache directory to its Keeps (fork
server and fresh processes): a second deploy of a module through the same
manager loads it from the sealed cache under STATE_DIR/compile-cache, one
subdirectory per sealing key (ADR 0023); ``--no-compile-cache`` turns it off."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from manager_support import deploy, running_server

HELLO = (Path(__file__).resolve().parent.parent / "examples" / "hello" / "hello.wasm").read_bytes()


def _unique_module(tmp_path: Path) -> Path:
    body = b"\x02cc" + os.urandom(8)  # a custom section: a digest no other test has
    path = tmp_path / "hello.wasm"
    path.write_bytes(HELLO + b"\x00" + bytes([len(body)]) + body)
    return path


def _deploy_json(server: Any, wasm: Path) -> dict[str, Any]:
    proc = deploy(server, "--allow-sim", "--json", str(wasm), "--", "Alice")
    assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


@pytest.mark.parametrize("serve_args", [(), ("--no-fork-server",)], ids=["fork-server", "fresh-processes"])
def test_second_deploy_through_the_manager_hits_the_cache(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, serve_args: tuple[str, ...]
) -> None:
    wasm = _unique_module(tmp_path)
    with running_server(state_dir, tmp_path_factory, serve_args=serve_args) as server:
        first = _deploy_json(server, wasm)
        # The first Keep seals and writes its entry after its session: wait for it.
        deadline = time.monotonic() + 30
        while not list((server.state / "compile-cache").glob("*/*.sealed")) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = _deploy_json(server, wasm)
        entries = list((server.state / "compile-cache").glob("*/*.sealed"))
    assert first["timing_ms"]["keep_compile_cached"] is False
    assert second["timing_ms"]["keep_compile_cached"] is True
    assert second["stdout"] == first["stdout"] and "Alice" in first["stdout"]
    assert len(entries) == 1  # one key (this runtime), one module


def test_manager_without_compile_cache(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    wasm = _unique_module(tmp_path)
    with running_server(state_dir, tmp_path_factory, serve_args=("--no-compile-cache",)) as server:
        doc = _deploy_json(server, wasm)
        assert not (server.state / "compile-cache").exists()
    assert "keep_compile_cached" not in doc["timing_ms"]
