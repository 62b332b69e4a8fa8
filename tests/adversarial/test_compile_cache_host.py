"""The host owns the compile cache's storage (ADR 0023): whatever it plants,
nothing it did not get sealed by a Keep of the same runtime reaches
``Module.deserialize`` (a spy on wasmtime's deserialize proves it), and what
it can do (delete, replace, roll back entries) costs a recompile only."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from adversarial.canary import Canaries
from stockade.keep.compilecache import (
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    SUFFIX,
    CompileCache,
    EntryKey,
    host_fingerprint,
)
from stockade.keep.loading import runtime_name
from stockade.keep.runner import Runner, engine_fingerprint, make_engine
from stockade.keep.sandbox import Sandbox

KEY = bytes(range(32))
HELLO = (Path(__file__).resolve().parents[2] / "examples" / "hello" / "hello.wasm").read_bytes()


@pytest.fixture
def deserialized(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    calls: list[bytes] = []
    real = wasmtime.Module.deserialize

    def spy(engine: Any, data: bytes, _real: Callable[..., Any] = real) -> Any:
        calls.append(bytes(data))
        return _real(engine, data)

    monkeypatch.setattr(wasmtime.Module, "deserialize", staticmethod(spy))
    return calls


def _key() -> EntryKey:
    return EntryKey(
        hashlib.sha256(HELLO).digest(),
        "module",
        runtime_name(),
        engine_fingerprint(False),
        host_fingerprint(),
    )


def _compile(cache: CompileCache) -> dict[str, int]:
    timing: dict[str, int] = {}
    runner = Runner(make_engine(), lambda fd, data: None, Sandbox(Path("/nonexistent"), private=False), cache)
    runner._compile(HELLO, hashlib.sha256(HELLO).digest(), False, timing)
    runner.store_compiled()  # what the Keep does after its session
    return timing


def _plant(cache: CompileCache, data: bytes) -> None:
    cache.dir.mkdir(parents=True, exist_ok=True)
    cache.path_for(_key()).write_bytes(data)


def _serialized() -> bytes:
    return bytes(wasmtime.Module(make_engine(), HELLO).serialize())


def test_plain_serialized_module_planted_is_never_deserialized(
    tmp_path: Path, deserialized: list[bytes]
) -> None:
    cache = CompileCache(tmp_path, KEY)
    _plant(cache, _serialized())  # what a cache without authentication would load
    assert _compile(cache)["compile_cached"] == 0
    assert deserialized == []


def test_valid_looking_entry_with_a_forged_tag_is_never_deserialized(
    tmp_path: Path, deserialized: list[bytes]
) -> None:
    cache = CompileCache(tmp_path, KEY)
    # The right header and layout, the code in clear, a made-up tag.
    _plant(cache, HEADER.pack(MAGIC, FORMAT_VERSION, os.urandom(12)) + _serialized() + os.urandom(16))
    assert _compile(cache)["compile_cached"] == 0
    assert deserialized == []
    assert cache.stats.discarded == {"authentication failed": 1}


def test_entry_sealed_under_a_key_the_host_chose_is_never_deserialized(
    tmp_path: Path, deserialized: list[bytes]
) -> None:
    ours = CompileCache(tmp_path, KEY)
    hosts = CompileCache(tmp_path, bytes(32))  # the host knows this key; the tuple is right
    _plant(ours, hosts.seal(_key(), _serialized()))
    assert _compile(ours)["compile_cached"] == 0
    assert deserialized == []


def test_rolled_back_entry_of_the_same_module_is_the_same_code(
    tmp_path: Path, deserialized: list[bytes]
) -> None:
    # A roll back to an older genuine entry of the same tuple: same module,
    # same runtime, same engine, same host, so the same compiled code.
    cache = CompileCache(tmp_path, KEY)
    _compile(cache)
    old = cache.path_for(_key()).read_bytes()
    _compile(cache)
    cache.path_for(_key()).write_bytes(old)
    assert _compile(cache)["compile_cached"] == 1
    assert deserialized and all(d == _serialized() for d in deserialized)


def test_deleted_entries_only_cost_a_recompile(tmp_path: Path, deserialized: list[bytes]) -> None:
    cache = CompileCache(tmp_path, KEY)
    _compile(cache)
    for path in tmp_path.rglob(f"*{SUFFIX}"):
        path.unlink()
    assert _compile(cache)["compile_cached"] == 0
    assert deserialized == []


def test_hostile_entry_through_a_real_keep(
    stockade: Any, state_dir: Path, tmp_path: Path, canaries: Canaries
) -> None:
    """A real sim Keep: the host replaces the entry the Keep wrote with the
    module's serialized code in a valid-looking envelope; the Keep compiles
    again (and says so in its log), and the result is right. The secret
    and stdin of the runs appear in no cache file (canary sweep)."""
    secret_file, _secret = canaries.client_file(tmp_path / "token")
    stdin = canaries.new("stdin")
    body = b"\x02cc" + os.urandom(8)
    wasm = tmp_path / "hello.wasm"
    wasm.write_bytes(HELLO + b"\x00" + bytes([len(body)]) + body)
    root = state_dir / "cache" / "stockade" / "compile"
    before = set(root.glob(f"*/*{SUFFIX}"))

    def run() -> dict[str, Any]:
        proc = stockade(
            "run",
            "--allow-sim",
            "--json",
            "--secret",
            f"token=@{secret_file}",
            "--stdin",
            "-",
            str(wasm),
            "--",
            "Alice",
            input=stdin,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    first = run()
    (entry,) = set(root.glob(f"*/*{SUFFIX}")) - before
    serialized = bytes(wasmtime.Module(make_engine(), wasm.read_bytes()).serialize())
    entry.write_bytes(HEADER.pack(MAGIC, FORMAT_VERSION, os.urandom(12)) + serialized + os.urandom(16))
    second = run()
    assert second["timing_ms"]["keep_compile_cached"] is False
    assert second["stdout"] == first["stdout"] and "Alice" in first["stdout"]
    logs = "".join(p.read_text(errors="replace") for p in (state_dir / "logs").glob("keep-*.log"))
    assert "compile cache: entry discarded (authentication failed)" in logs
    assert run()["timing_ms"]["keep_compile_cached"] is True  # the Keep replaced it with a sealed one
