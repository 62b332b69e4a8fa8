"""The Keep's sealed compile cache (stockade.keep.compilecache, ADR 0023):
hits after misses, every kind of bad entry discarded and recompiled (never
deserialized unless it authenticated), no cache without a key or when
disabled, concurrent writers, eviction; and through `stockade run`."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from stockade.keep.compilecache import MAGIC, SUFFIX, CompileCache, EntryKey
from stockade.keep.runner import Runner, engine_fingerprint, make_engine
from stockade.keep.sandbox import Sandbox

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HELLO = (EXAMPLES / "hello" / "hello.wasm").read_bytes()
WORDCOUNT = (EXAMPLES / "wordcount" / "wordcount.wasm").read_bytes()


class Spy:
    """Records every call of wasmtime's deserialize (Module and Component)."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    from wasmtime.component import Component

    recorder = Spy()
    for cls in (wasmtime.Module, Component):
        real = cls.deserialize

        def wrapped(engine: Any, data: bytes, _real: Callable[..., Any] = real) -> Any:
            recorder.calls.append(bytes(data))
            return _real(engine, data)

        monkeypatch.setattr(cls, "deserialize", staticmethod(wrapped))
    return recorder


@pytest.fixture(scope="module")
def engine() -> Any:
    return make_engine()


def _runner(engine: Any, cache: CompileCache | None) -> Runner:
    return Runner(engine, lambda fd, data: None, Sandbox(Path("/nonexistent"), private=False), cache)


def _compile(engine: Any, cache: CompileCache | None, wasm: bytes = HELLO) -> tuple[Any, dict[str, int]]:
    timing: dict[str, int] = {}
    runner = _runner(engine, cache)
    module = runner._compile(wasm, hashlib.sha256(wasm).digest(), False, timing)
    runner.store_compiled()  # what the Keep does after its session
    return module, timing


def _exports(module: Any) -> list[str]:
    return sorted(e.name for e in module.exports)


def _entries(cache: CompileCache) -> list[Path]:
    return sorted(cache.dir.glob(f"*{SUFFIX}"))


def _entry_key(wasm: bytes) -> EntryKey:
    from stockade.keep.compilecache import host_fingerprint
    from stockade.keep.loading import runtime_name

    return EntryKey(
        hashlib.sha256(wasm).digest(), "module", runtime_name(), engine_fingerprint(False), host_fingerprint()
    )


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[CompileCache]:
    logged: list[str] = []
    c = CompileCache(tmp_path / "cc", KEY, log=logged.append)
    c.logged = logged  # type: ignore[attr-defined]
    yield c


def test_hit_after_miss_gives_the_same_module(engine: Any, cache: CompileCache, spy: Spy) -> None:
    runner = _runner(engine, cache)
    timing: dict[str, int] = {}
    cold = runner._compile(HELLO, hashlib.sha256(HELLO).digest(), False, timing)
    assert timing["compile_cached"] == 0
    assert _entries(cache) == []  # stored only after the session
    assert runner.store_compiled() is not None
    assert runner.store_compiled() is None  # once
    assert len(_entries(cache)) == 1 and spy.calls == []
    warm, timing = _compile(engine, cache)
    assert timing["compile_cached"] == 1
    assert len(spy.calls) == 1
    assert _exports(warm) == _exports(cold) and warm.serialize() == cold.serialize()
    assert cache.stats.hits == 1 and cache.stats.misses == 1 and cache.stats.stored == 1


def test_entry_names_do_not_reveal_the_module(engine: Any, cache: CompileCache) -> None:
    _compile(engine, cache)
    (entry,) = _entries(cache)
    digest = hashlib.sha256(HELLO).hexdigest()
    assert digest not in str(entry) and digest.encode() not in entry.read_bytes()
    assert hashlib.sha256(HELLO).digest() not in entry.read_bytes()  # the tuple inside is encrypted


@pytest.mark.parametrize("where", ["magic", "version", "nonce", "ciphertext", "tag"])
def test_tampered_entry_is_discarded_and_recompiled(
    engine: Any, cache: CompileCache, spy: Spy, where: str
) -> None:
    _compile(engine, cache)
    (entry,) = _entries(cache)
    data = bytearray(entry.read_bytes())
    offset = {"magic": 0, "version": 5, "nonce": 8, "ciphertext": len(data) // 2, "tag": len(data) - 1}[where]
    data[offset] ^= 0x01
    entry.write_bytes(bytes(data))
    module, timing = _compile(engine, cache)
    assert spy.calls == []  # never deserialized
    assert timing["compile_cached"] == 0
    assert "_start" in _exports(module)
    reason = "not an entry of this format" if where in ("magic", "version") else "authentication failed"
    assert cache.stats.discarded == {reason: 1}
    assert any(reason in line for line in cache.logged)  # type: ignore[attr-defined]
    # Replaced by a good entry: the next compile is a hit.
    _, timing = _compile(engine, cache)
    assert timing["compile_cached"] == 1 and len(spy.calls) == 1


def test_entry_of_another_module_renamed_into_place_is_discarded(
    engine: Any, cache: CompileCache, spy: Spy
) -> None:
    _compile(engine, cache, HELLO)
    hello_entry = cache.path_for(_entry_key(HELLO))
    _compile(engine, cache, WORDCOUNT)
    wordcount_entry = cache.path_for(_entry_key(WORDCOUNT))
    os.replace(wordcount_entry, hello_entry)
    module, timing = _compile(engine, cache, HELLO)
    assert spy.calls == [] and timing["compile_cached"] == 0
    assert cache.stats.discarded == {"authentication failed": 1}
    assert module.serialize() == wasmtime.Module(engine, HELLO).serialize()


def test_entry_of_another_keep_key_is_discarded(engine: Any, tmp_path: Path, spy: Spy) -> None:
    # Another measurement (another Keep runtime) derives another key.
    theirs = CompileCache(tmp_path / "cc", OTHER_KEY)
    _compile(engine, theirs)
    ours = CompileCache(tmp_path / "cc", KEY)
    assert ours.dir != theirs.dir  # one subdirectory per key
    (entry,) = _entries(theirs)
    ours.dir.mkdir(parents=True)
    os.replace(entry, ours.path_for(_entry_key(HELLO)))
    _, timing = _compile(engine, ours)
    assert spy.calls == [] and timing["compile_cached"] == 0
    assert ours.stats.discarded == {"authentication failed": 1}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "truncated"),
        (MAGIC + b"\x01", "truncated"),
        (b"\x00" * 4096, "not an entry of this format"),
        (os.urandom(4096), "not an entry of this format"),
    ],
    ids=["empty", "header-only", "zeros", "garbage"],
)
def test_truncated_empty_and_garbage_entries_are_discarded(
    engine: Any, cache: CompileCache, spy: Spy, content: bytes, reason: str
) -> None:
    cache.dir.mkdir(parents=True)
    cache.path_for(_entry_key(HELLO)).write_bytes(content)
    _, timing = _compile(engine, cache)
    assert spy.calls == [] and timing["compile_cached"] == 0
    assert cache.stats.discarded == {reason: 1}


def test_truncated_valid_entry_is_discarded(engine: Any, cache: CompileCache, spy: Spy) -> None:
    _compile(engine, cache)
    (entry,) = _entries(cache)
    entry.write_bytes(entry.read_bytes()[:-100])
    _, timing = _compile(engine, cache)
    assert timing["compile_cached"] == 0
    assert spy.calls == [] and cache.stats.discarded == {"authentication failed": 1}


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_entries_that_are_not_regular_files_are_discarded(
    engine: Any, cache: CompileCache, spy: Spy, tmp_path: Path, kind: str
) -> None:
    _compile(engine, cache)
    (entry,) = _entries(cache)
    good = tmp_path / "good"
    os.replace(entry, good)
    if kind == "symlink":
        entry.symlink_to(good)  # even a valid entry is not followed
    elif kind == "fifo":
        os.mkfifo(entry)  # must not block the Keep
    else:
        entry.mkdir()
    _, timing = _compile(engine, cache)
    assert spy.calls == [] and timing["compile_cached"] == 0
    (reason,) = cache.stats.discarded
    expected = "unreadable (Too many levels of symbolic links)" if kind == "symlink" else "not a regular file"
    assert reason.startswith(expected)


def test_authenticated_entry_wasmtime_refuses_is_discarded(
    engine: Any, cache: CompileCache, spy: Spy
) -> None:
    # A sealed entry whose code wasmtime does not accept (e.g. made by an
    # incompatible engine): deserialize fails, the entry goes, a compile follows.
    cache.dir.mkdir(parents=True)
    cache.path_for(_entry_key(HELLO)).write_bytes(cache.seal(_entry_key(HELLO), b"not wasmtime code"))
    _, timing = _compile(engine, cache)
    assert spy.calls == [b"not wasmtime code"] and timing["compile_cached"] == 0
    assert cache.stats.discarded == {"wasmtime refused the authenticated entry": 1}


def test_other_engine_configuration_is_another_entry(cache: CompileCache) -> None:
    a, b = _entry_key(HELLO), _entry_key(HELLO)
    assert cache.path_for(a) == cache.path_for(b)
    other = EntryKey(a.module_sha256, "component", a.wasmtime, engine_fingerprint(True), a.host)
    assert cache.path_for(other) != cache.path_for(a)
    assert engine_fingerprint(True) != engine_fingerprint(False)
    with pytest.raises(Exception, match="authentication failed"):
        cache.unseal(other, cache.seal(a, b"x"))


#: The engine settings of Keeps before ADR 0029 (epoch interruption on).
EPOCH_ON = (("epoch_interruption", True),)


def _epoch_engine() -> Any:
    from stockade.keep.runner import DISABLED_FEATURES

    config = wasmtime.Config()
    config.epoch_interruption = True
    for feature in DISABLED_FEATURES:
        setattr(config, feature, False)
    return wasmtime.Engine(config)


def test_entries_of_epoch_interruption_engines_are_not_loaded(
    engine: Any, cache: CompileCache, spy: Spy
) -> None:
    """Entries compiled by Keeps with epoch interruption (before ADR 0029)
    have another engine fingerprint: the Keep's engines, which have none,
    never look them up; and wasmtime itself refuses that code."""
    for component in (False, True):
        assert engine_fingerprint(component) != engine_fingerprint(component, EPOCH_ON)
    epoch_code = bytes(wasmtime.Module(_epoch_engine(), HELLO).serialize())
    current = _entry_key(HELLO)
    old = EntryKey(
        current.module_sha256, "module", current.wasmtime, engine_fingerprint(False, EPOCH_ON), current.host
    )
    cache.dir.mkdir(parents=True)
    cache.path_for(old).write_bytes(cache.seal(old, epoch_code))
    _, timing = _compile(engine, cache)
    assert timing["compile_cached"] == 0 and spy.calls == []  # another entry: not even read
    assert len(_entries(cache)) == 2  # the old entry and the new one
    # Had the fingerprint stayed the same, wasmtime would refuse the code.
    cache.path_for(current).write_bytes(cache.seal(current, epoch_code))
    _, timing = _compile(engine, cache)
    assert spy.calls == [epoch_code] and timing["compile_cached"] == 0
    assert cache.stats.discarded == {"wasmtime refused the authenticated entry": 1}


def test_disabled_cache_compiles_and_writes_nothing(engine: Any, tmp_path: Path, spy: Spy) -> None:
    _, timing = _compile(engine, None)
    _, timing = _compile(engine, None)
    assert "compile_cached" not in timing and spy.calls == []
    assert list(tmp_path.iterdir()) == []


def test_no_key_means_no_cache(tmp_path: Path) -> None:
    from stockade.keep.session import KeepServer

    class NoKeyAttester:
        platform = "sim-tdx"

        def sealing_key(self) -> None:
            return None

    class NoMethodAttester:
        platform = "tdx"

    for attester in (NoKeyAttester(), NoMethodAttester()):
        a, b = __import__("socket").socketpair()
        with a, b:
            server = KeepServer(
                a, attester, None, None, Sandbox(tmp_path, private=False), compile_cache=tmp_path / "cc"
            )  # type: ignore[arg-type]
            assert server.open_cache() is None
    assert not (tmp_path / "cc").exists()


def test_cache_with_a_key_is_opened(tmp_path: Path) -> None:
    from stockade.keep.session import KeepServer

    class KeyAttester:
        platform = "sim"

        def sealing_key(self) -> bytes:
            return KEY

    a, b = __import__("socket").socketpair()
    with a, b:
        server = KeepServer(
            a, KeyAttester(), None, None, Sandbox(tmp_path, private=False), compile_cache=tmp_path / "cc"
        )  # type: ignore[arg-type]
        opened = server.open_cache()
        assert isinstance(opened, CompileCache) and opened.base == tmp_path / "cc"
        no_dir = KeepServer(a, KeyAttester(), None, None, Sandbox(tmp_path, private=False))  # type: ignore[arg-type]
        assert no_dir.open_cache() is None


def test_concurrent_writers_leave_only_valid_entries(engine: Any, tmp_path: Path) -> None:
    serialized = {w: wasmtime.Module(engine, w).serialize() for w in (HELLO, WORDCOUNT)}
    caches = [CompileCache(tmp_path / "cc", KEY) for _ in range(6)]
    barrier = threading.Barrier(len(caches))
    errors: list[BaseException] = []

    def write(c: CompileCache, i: int) -> None:
        try:
            barrier.wait(10)
            for _ in range(5):
                for w, blob in serialized.items():
                    assert c.store(_entry_key(w), blob)
                    got = c.load(_entry_key(w))
                    assert got is None or got == blob
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(c, i)) for i, c in enumerate(caches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    reader = CompileCache(tmp_path / "cc", KEY)
    assert sorted(p.name for p in reader.dir.iterdir()) == sorted(
        reader.path_for(_entry_key(w)).name for w in serialized
    )  # no temporary file left
    for w, blob in serialized.items():
        assert reader.load(_entry_key(w)) == blob
    assert all(sum(c.stats.discarded.values()) == 0 for c in caches)


def test_eviction_keeps_the_directory_under_its_cap(engine: Any, tmp_path: Path) -> None:
    blob = os.urandom(40_000)
    cache = CompileCache(tmp_path / "cc", KEY, max_bytes=100_000)
    keys = [EntryKey(bytes([i]) * 32, "module", "v", "e", "h") for i in range(4)]
    for i, key in enumerate(keys):
        assert cache.store(key, blob)
        os.utime(cache.path_for(key), (1000 + i, 1000 + i))
    # Stores evicted the oldest: at most two 40 kB entries fit 100 kB.
    present = [k for k in keys if cache.path_for(k).exists()]
    assert present == keys[2:]
    # Other keys' entries in the same base directory count too.
    other = CompileCache(tmp_path / "cc", OTHER_KEY, max_bytes=100_000)
    assert other.store(keys[0], blob)
    assert sum(1 for k in keys if cache.path_for(k).exists()) == 1
    # A stale temporary file of a writer that died goes too.
    stale = cache.dir / ".tmp-1-dead"
    stale.write_bytes(b"x")
    os.utime(stale, (1000, 1000))
    cache.evict()
    assert not stale.exists()


def test_entry_larger_than_the_cap_is_not_stored(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cc", KEY, max_bytes=1000)
    assert not cache.store(EntryKey(bytes(32), "module", "v", "e", "h"), bytes(2000))
    assert not cache.dir.exists() or list(cache.dir.iterdir()) == []


def test_unwritable_directory_does_not_fail_the_compile(engine: Any, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    cache = CompileCache(tmp_path / "file" / "cc", KEY)  # mkdir fails: a file is in the way
    module, timing = _compile(engine, cache)
    assert timing["compile_cached"] == 0 and cache.stats.stored == 0
    assert "_start" in _exports(module)


def test_components_are_cached_too(tmp_path: Path, spy: Spy) -> None:
    from stockade.keep.runner import make_component_engine

    component = (EXAMPLES / "hello-component" / "hello.component.wasm").read_bytes()
    cache = CompileCache(tmp_path / "cc", KEY)
    engine = make_component_engine()
    digest = hashlib.sha256(component).digest()
    runner = _runner(engine, cache)
    cold_timing: dict[str, int] = {}
    runner._compile(component, digest, True, cold_timing)
    runner.store_compiled()
    warm_timing: dict[str, int] = {}
    warm = runner._compile(component, digest, True, warm_timing)
    assert (cold_timing["compile_cached"], warm_timing["compile_cached"]) == (0, 1)
    assert len(spy.calls) == 1
    from stockade.keep.runner import load_component

    assert load_component(engine, component, warm)[1].startswith("wasi:cli/run@0.2")


def test_sealing_key_must_be_32_bytes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        CompileCache(tmp_path, bytes(16))


# --- through `stockade run` (a sim Keep, its PSP's key) -------------------------------------------


def _unique(wasm: bytes) -> bytes:
    """``wasm`` with a custom section of random bytes: another digest, so
    that entries of other tests (or runs) do not count."""
    body = b"\x02cc" + os.urandom(8)
    return wasm + b"\x00" + bytes([len(body)]) + body


def _run_json(stockade: Any, *args: str) -> dict[str, Any]:
    proc = stockade("run", "--allow-sim", "--json", *args)
    assert proc.returncode == 0, proc.stderr.decode()
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def _local_entries(state_dir: Path) -> list[Path]:
    return sorted((state_dir / "cache" / "stockade" / "compile").glob(f"*/*{SUFFIX}"))


def test_run_hits_the_cache_on_the_second_run_and_survives_tampering(
    stockade: Any, state_dir: Path, tmp_path: Path
) -> None:
    wasm = tmp_path / "hello.wasm"  # a module of its own: other tests' entries do not count
    wasm.write_bytes(_unique(HELLO))
    before = set(_local_entries(state_dir))
    first = _run_json(stockade, str(wasm), "--", "Alice")
    assert first["timing_ms"]["keep_compile_cached"] is False
    (entry,) = set(_local_entries(state_dir)) - before
    second = _run_json(stockade, str(wasm), "--", "Alice")
    assert second["timing_ms"]["keep_compile_cached"] is True
    assert second["stdout"] == first["stdout"] and "Alice" in first["stdout"]
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    third = _run_json(stockade, str(wasm), "--", "Alice")
    assert third["timing_ms"]["keep_compile_cached"] is False
    assert third["stdout"] == first["stdout"]
    logs = "".join(p.read_text(errors="replace") for p in (state_dir / "logs").glob("keep-*.log"))
    assert "compile cache: entry discarded (authentication failed)" in logs
    fourth = _run_json(stockade, str(wasm), "--", "Alice")
    assert fourth["timing_ms"]["keep_compile_cached"] is True


def test_run_without_compile_cache(stockade: Any, state_dir: Path, tmp_path: Path) -> None:
    wasm = tmp_path / "hello.wasm"
    wasm.write_bytes(_unique(HELLO))
    before = set(_local_entries(state_dir))
    doc = _run_json(stockade, "--no-compile-cache", str(wasm))
    assert "keep_compile_cached" not in doc["timing_ms"]
    assert set(_local_entries(state_dir)) == before


def test_timings_show_whether_the_compile_was_cached() -> None:
    from stockade.commands._run import timings_text

    text = timings_text({"keep_compile": 1.5, "keep_compile_cached": True, "keep_run": 2.0})
    assert "cached=true" in text and "compile_cached" not in text
    assert "cached=false" in timings_text({"keep_compile": 1.5, "keep_compile_cached": False})
    assert "cached=" not in timings_text({"keep_compile": 1.5})


def test_sim_tdx_keep_caches_nothing(stockade: Any, state_dir: Path, tmp_path: Path) -> None:
    # TDX has no sealing key without a sealing service: no key, no cache.
    wasm = tmp_path / "hello.wasm"
    wasm.write_bytes(_unique(HELLO))
    before = set(_local_entries(state_dir))
    doc = _run_json(stockade, "--backend", "sim-tdx", str(wasm))
    assert "keep_compile_cached" not in doc["timing_ms"]
    assert set(_local_entries(state_dir)) == before
    logs = "".join(p.read_text(errors="replace") for p in (state_dir / "logs").glob("keep-*.log"))
    assert "compile cache off: this Keep's platform derives no sealing key" in logs


def test_oversized_entry_is_discarded_unread(engine: Any, cache: CompileCache, spy: Spy) -> None:
    from stockade.keep.compilecache import MAX_ENTRY_BYTES

    cache.dir.mkdir(parents=True)
    path = cache.path_for(_entry_key(HELLO))
    with open(path, "wb") as fh:
        fh.truncate(MAX_ENTRY_BYTES + 1)  # sparse: nothing is written
    _, timing = _compile(engine, cache)
    assert spy.calls == [] and timing["compile_cached"] == 0
    (reason,) = cache.stats.discarded
    assert reason.startswith("not a regular file of at most")


# -- loaded before the release (issue 18, ADR 0032) ---------------------------------------------


def test_load_ahead_gives_the_authenticated_module_to_the_run(
    engine: Any, cache: CompileCache, spy: Spy
) -> None:
    from stockade.keep.runner import load_ahead

    assert load_ahead(engine, cache, HELLO) is None  # a miss: nothing compiled ahead
    assert spy.calls == []
    _compile(engine, cache)  # the run compiles and stores it
    ahead = load_ahead(engine, cache, HELLO)
    assert ahead is not None and ahead.digest == hashlib.sha256(HELLO).digest()
    assert len(spy.calls) == 1
    runner = Runner(
        engine, lambda fd, data: None, Sandbox(Path("/nonexistent"), private=False), cache, ahead=ahead
    )
    timing: dict[str, int] = {}
    module = runner._compile(HELLO, ahead.digest, False, timing)
    assert module is ahead.module
    assert timing["compile_cached"] == 1 and timing["compile_ahead"] == ahead.took_us
    assert len(spy.calls) == 1  # not loaded a second time
    assert runner.store_compiled() is None


def test_load_ahead_of_another_module_is_not_used(engine: Any, cache: CompileCache, spy: Spy) -> None:
    from stockade.keep.runner import load_ahead

    _compile(engine, cache, WORDCOUNT)
    ahead = load_ahead(engine, cache, WORDCOUNT)
    assert ahead is not None
    runner = Runner(
        engine, lambda fd, data: None, Sandbox(Path("/nonexistent"), private=False), cache, ahead=ahead
    )
    timing: dict[str, int] = {}
    module = runner._compile(HELLO, hashlib.sha256(HELLO).digest(), False, timing)
    assert module is not ahead.module and timing["compile_cached"] == 0
    assert "compile_ahead" not in timing
    assert module.serialize() == wasmtime.Module(engine, HELLO).serialize()


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
def test_load_ahead_discards_a_tampered_entry_unloaded(
    engine: Any, cache: CompileCache, spy: Spy, where: str
) -> None:
    from stockade.keep.runner import load_ahead

    _compile(engine, cache)
    (entry,) = _entries(cache)
    data = bytearray(entry.read_bytes())
    data[{"nonce": 8, "ciphertext": len(data) // 2, "tag": len(data) - 1}[where]] ^= 0x01
    entry.write_bytes(bytes(data))
    assert load_ahead(engine, cache, HELLO) is None
    assert spy.calls == []  # never deserialized
    assert cache.stats.discarded == {"authentication failed": 1}
    assert _entries(cache) == []


@pytest.mark.parametrize("what", ["no cache", "not a module", "component"])
def test_load_ahead_leaves_the_rest_to_the_run(engine: Any, cache: CompileCache, spy: Spy, what: str) -> None:
    from stockade.keep.runner import load_ahead

    if what == "no cache":
        _compile(engine, cache)
        assert load_ahead(engine, None, HELLO) is None
    elif what == "not a module":
        assert load_ahead(engine, cache, b"\0asm\x01\0\0\0garbage") is None  # refused by the run, as before
    else:
        component = (EXAMPLES / "hello-component" / "hello.component.wasm").read_bytes()
        assert load_ahead(engine, cache, component) is None  # its engine is made at the run
    assert spy.calls == []
