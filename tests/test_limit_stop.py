"""The Keep's one stop path for the time, output and disk limits (ADR 0029):
no epoch interruption in the engines; a limit calls the Runner's ``stop``
once, with the limit's problem already set (and, for output, after the
bytes up to the limit were handed over), and the run reports the same
problem. In a Keep, ``stop`` ends the process (tests/adversarial and
tests/test_run_bad_input.py run those through ``stockade run``); here it is
a recorder that returns, so the run goes on until the workload ends."""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import wasmtime

from stockade import procfs
from stockade.errors import LimitExceeded
from stockade.keep.runner import Runner, make_engine
from stockade.keep.sandbox import Sandbox
from stockade.wire.messages import Limits, Workload

DATA = Path(__file__).resolve().parent / "data" / "wasm"

#: Counts down from 400 million: a few tenths of a second of Wasm code that
#: never calls the host.
COUNTDOWN = """
(module
  (func (export "_start") (local $i i32)
    (local.set $i (i32.const 400000000))
    (loop $l
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (local.get $i)))))
"""

#: Writes 32 times 64 KiB of "x" to stdout (2 MiB), then returns.
WRITER = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $n i32)
    (memory.fill (i32.const 65536) (i32.const 120) (i32.const 65536))
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (local.set $n (i32.const 32))
    (loop $l
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (local.get $n)))))
"""


class Scratch(Sandbox):
    """A plain directory as the Keep's disk, with no limit applied (the
    fallback's RLIMIT_FSIZE would bind the test process)."""

    def set_limit(self, disk_bytes: int) -> None:
        self.limit = disk_bytes

    def usage(self) -> tuple[int, bool]:
        return 0, False


@pytest.fixture
def scratch(tmp_path: Path) -> Sandbox:
    return Scratch(tmp_path, private=True)


class Recorder:
    """A Runner's emit and stop: what happened, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.runner: Runner | None = None

    def emit(self, fd: int, data: bytes) -> None:
        self.events.append(("output", len(data)))

    def stop(self, reason: str) -> None:
        assert self.runner is not None
        self.events.append(("stop", (reason, self.runner.limit_error)))

    @property
    def stops(self) -> list[object]:
        return [what for kind, what in self.events if kind == "stop"]


def _run(wat: str, recorder: Recorder, scratch: Sandbox, **limits: int) -> LimitExceeded | None:
    runner = Runner(make_engine(), recorder.emit, scratch, stop=recorder.stop)
    recorder.runner = runner
    try:
        runner.run(Workload(wasm=wasmtime.wat2wasm(wat), limits=Limits(**limits)))
    except LimitExceeded as exc:
        return exc
    return None


def test_time_limit_on_running_wasm_calls_stop_once(scratch: Sandbox) -> None:
    rec = Recorder()
    err = _run(COUNTDOWN, rec, scratch, timeout_ms=20)
    assert err is not None and err.limit == "time"
    assert err.detail == "workload exceeded its wall-clock time limit and was stopped"
    assert rec.stops == [("time", err)]  # the problem was set before stop was called


def test_time_limit_in_a_host_call_says_so(scratch: Sandbox) -> None:
    rec = Recorder()
    sleep = (DATA / "sleep.wat").read_text().replace("30000000000", "400000000")  # 0.4 s
    err = _run(sleep, rec, scratch, timeout_ms=50)
    assert err is not None and err.limit == "time"
    assert (
        err.detail == "workload exceeded its wall-clock time limit (blocked in a host call) and was stopped"
    )
    assert rec.stops == [("time", err)]


def test_output_limit_hands_over_the_bytes_up_to_it_before_stopping(scratch: Sandbox) -> None:
    rec = Recorder()
    err = _run(WRITER, rec, scratch, output_bytes=100_000, timeout_ms=20_000)
    assert err is not None and err.limit == "output"
    assert err.detail == "workload exceeded its output limit and was stopped"
    # wasmtime-py hands the writer 4 KiB at a time: every byte up to the
    # limit, then the stop, then nothing.
    assert rec.events[-1] == ("stop", ("output", err))
    assert [kind for kind, _ in rec.events[:-1]] == ["output"] * (len(rec.events) - 1)
    assert sum(n for _, n in rec.events[:-1]) == 100_000


def test_no_limit_no_stop(scratch: Sandbox) -> None:
    rec = Recorder()
    assert _run(WRITER, rec, scratch, output_bytes=4 << 20, timeout_ms=20_000) is None
    assert rec.stops == [] and sum(n for _, n in rec.events) == 2 << 20


def test_a_limit_after_the_workload_ended_is_ignored(scratch: Sandbox) -> None:
    """The timer may fire just as the workload returns: once the run is
    over, nothing stops (a Keep would otherwise end after its Exit)."""
    rec = Recorder()
    runner = Runner(make_engine(), rec.emit, scratch, stop=rec.stop)
    rec.runner = runner
    runner.run(Workload(wasm=wasmtime.wat2wasm('(module (func (export "_start")))')))
    runner._interrupt("time")
    assert rec.stops == [] and runner.limit_error is None


def test_the_run_waits_for_a_stop_under_way(scratch: Sandbox) -> None:
    """A limit hit while the workload ends: the run reports nothing until
    the stop has returned (a Keep's stop ends the process before)."""
    release = threading.Event()
    order: list[str] = []
    runner = Runner(
        make_engine(),
        lambda fd, data: None,
        scratch,
        stop=lambda reason: (order.append("stop"), release.wait(5), order.append("stopped")),
    )
    threading.Timer(0.3, release.set).start()
    with pytest.raises(LimitExceeded):
        runner.run(Workload(wasm=wasmtime.wat2wasm(COUNTDOWN), limits=Limits(timeout_ms=10)))
    order.append("reported")
    assert order == ["stop", "stopped", "reported"]


def test_thread_state_tells_sleeping_from_running() -> None:
    asleep = threading.Event()
    tid: list[int] = []

    def sleeper() -> None:
        tid.append(threading.get_native_id())
        asleep.wait(5)

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        for _ in range(100):
            if tid and procfs.thread_state(tid[0]) == "S":
                break
            time.sleep(0.01)
        assert procfs.thread_state(tid[0]) == "S"
        assert procfs.thread_state(threading.get_native_id()) == "R"
    finally:
        asleep.set()
        thread.join()
    # join() returns when Python is done with the thread, a moment before the
    # kernel's task goes: wait for it (bounded) rather than race it.
    deadline = time.monotonic() + 10
    while procfs.thread_state(tid[0]) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert procfs.thread_state(tid[0]) is None  # gone


FALLBACK_STOP = """
import os, resource, sys, wasmtime
from pathlib import Path
from stockade.keep import sandbox
from stockade.keep.runner import Runner, make_engine
from stockade.wire.messages import FileEntry, Limits, Workload

box = sandbox.enter(Path(sys.argv[1]), namespaces=False)
runner = None

def stop(reason):
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    print("stop", reason, runner.limit_error.limit, soft, flush=True)
    try:
        (box.root / "probe").write_bytes(b"x")
    except OSError as exc:
        print("write", exc.strerror, flush=True)
    box.cleanup()
    print("lifted", resource.getrlimit(resource.RLIMIT_FSIZE)[0] != 0, flush=True)
    os._exit(0)

runner = Runner(make_engine(), lambda fd, data: None, box, stop=stop)
wasm = wasmtime.wat2wasm(Path(sys.argv[2]).read_text())
limits = Limits(disk_bytes=4 << 20, timeout_ms=20000)
runner.run(Workload(wasm=wasm, files=(FileEntry("/", None),), limits=limits))
print("not stopped")
"""


def test_fallback_disk_monitor_freezes_the_files_then_stops(tmp_path: Path) -> None:
    """Without namespaces the disk monitor, past the limit, sets
    RLIMIT_FSIZE to 0 before it calls stop (the workload runs on while a
    Keep sends its queued output); cleanup lifts it. In a process of its
    own: RLIMIT_FSIZE binds the whole process."""
    wat = tmp_path / "fill.wat"
    fill = (Path(__file__).resolve().parent / "data" / "hostile" / "fill.wat").read_text()
    wat.write_text(fill.replace("CHUNKS", "16"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", FALLBACK_STOP, str(scratch), str(wat)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["stop disk disk 0", "write File too large", "lifted True"]


def _elf_sections(blob: bytes) -> dict[str, bytes]:
    """Sections of an ELF64 little-endian file (wasmtime's serialized
    modules are ELF: section headers at e_shoff, ELF specification)."""
    shoff = struct.unpack_from("<Q", blob, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", blob, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", blob, shoff + i * shentsize) for i in range(shnum)]
    names = headers[shstrndx]
    return {
        blob[names[4] + h[0] :].split(b"\0", 1)[0].decode(): blob[h[4] : h[4] + h[5]]
        for h in headers
        if h[1] != 8  # SHT_NOBITS has no bytes in the file
    }


def test_the_keeps_engine_compiles_the_same_machine_code_as_bare_wasmtime() -> None:
    """No instrumentation in the Keep's engine: for examples/compute, the
    machine code (.text) is wasmtime's default engine's, byte for byte;
    only the engine's settings record differs. Epoch interruption would
    add its checks (the control)."""
    wasm = (Path(__file__).resolve().parent.parent / "examples" / "compute" / "compute.wasm").read_bytes()

    def text(engine: wasmtime.Engine) -> bytes:
        return _elf_sections(bytes(wasmtime.Module(engine, wasm).serialize()))[".text"]

    bare = text(wasmtime.Engine())
    assert text(make_engine()) == bare
    epoch = wasmtime.Config()
    epoch.epoch_interruption = True
    assert len(text(wasmtime.Engine(epoch))) > len(bare)


def test_the_keeps_component_engine_compiles_the_same_machine_code_too() -> None:
    from wasmtime.component import Component

    from stockade.keep.runner import make_component_engine

    examples = Path(__file__).resolve().parent.parent / "examples"
    wasm = (examples / "hello-component" / "hello.component.wasm").read_bytes()

    def text(engine: wasmtime.Engine) -> bytes:
        return _elf_sections(bytes(Component(engine, wasm).serialize()))[".text"]

    config = wasmtime.Config()
    config.wasm_component_model = True
    assert text(make_component_engine()) == text(wasmtime.Engine(config))


def test_disk_limit_stands_when_the_files_cannot_be_summed(tmp_path: Path) -> None:
    class Unreadable(Scratch):
        def usage(self) -> tuple[int, bool]:
            raise OSError("gone")

    rec = Recorder()
    runner = Runner(make_engine(), rec.emit, Unreadable(tmp_path, private=True, limit=1 << 20), stop=rec.stop)
    rec.runner = runner
    runner._interrupt("disk")
    err = runner.limit_error
    assert err is not None and err.limit == "disk"
    assert err.detail == "workload failed at its disk limit (its files fill the 1048576-byte limit)"
    assert rec.stops == [("disk", err)]


def test_interrupt_from_code_that_holds_the_runners_lock(scratch: Sandbox) -> None:
    """Output accounting may hit the limit while it holds the Runner's lock:
    _interrupt takes the same lock, so it must be reentrant."""
    rec = Recorder()
    runner = Runner(make_engine(), rec.emit, scratch, stop=rec.stop)
    rec.runner = runner
    done = threading.Event()

    def hit() -> None:
        with runner._lock:
            runner._interrupt("output")
        done.set()

    threading.Thread(target=hit, daemon=True).start()
    assert done.wait(5), "_interrupt deadlocked under the Runner's lock"
    assert rec.stops == [("output", runner.limit_error)]
