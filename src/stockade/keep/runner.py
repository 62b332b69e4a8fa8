"""Run one WASI command in wasmtime, inside the Keep: a preview 1 module
(``_start``) or a preview 2 component (``wasi:cli/run``, ADR 0020).

Limits (all from the client's Workload message). The time, output and
fallback disk limits are not checked by the Wasm code itself: the engines
run it with no instrumentation (no epoch interruption, no fuel: ADR 0029),
as bare wasmtime does. When one of them is hit, :meth:`Runner._interrupt`
(the one entry point: the timer, the output writer, the disk monitor)
records it and calls the Runner's ``stop``, which in a Keep
(keep/session.py) sends the output already queued, then the limit's problem
(exit 116), and ends the Keep process: the workload is stopped with its
process, whether it runs Wasm code or is blocked in a host call. A Runner
without ``stop`` (tests, benches) cannot stop running Wasm code: it drops
output past the limit and reports the limit when the workload ends.

* wall-clock time: a timer of ``timeout_ms`` from the start of the run;
  the problem says "blocked in a host call" when the workload's thread
  sleeps in the kernel at that moment (``poll_oneoff``, a full output queue).
  The Keep's process watchdog (keep/session.py) also ends the process
  ``WATCHDOG_GRACE`` after the limit, which covers the compile (the timer
  starts with the run) and a stop that cannot send its output;
* memory, the whole workload's: the engine refuses the WebAssembly features
  that would let a module hold memory outside one linear memory (multi-memory,
  memory64, threads and shared memory, GC and externref, exceptions, ...;
  see ``DISABLED_FEATURES``), and store limits bound the linear memory
  (``memory.grow`` fails beyond the limit), the number of memories (1),
  instances (1), tables (``MAX_TABLES``) and the elements of each table
  (:func:`table_elements_for`: all tables together hold at most a quarter
  of the memory limit). A module using a disabled feature is rejected at
  compile time with a message naming the feature. When a workload ends
  abnormally with its linear memory, or an exported table, within
  min(``MEMORY_SLACK``, limit/8) of its limit, this is reported as the
  memory limit (wasmtime-py exposes no hook on the failed grow itself, so a
  single grow far past the limit, which leaves the memory small, reads as
  the workload's own failure; the memory stays bounded either way);
* disk: the workload's files live in the Keep's private tmpfs
  (stockade.keep.sandbox) sized to the disk limit; a workload that ends
  abnormally with its files within min(``DISK_SLACK``, limit/8) of the limit
  (or with no inode left) is reported as the disk limit; in the fallback
  (no private tmpfs) a monitor stops the workload past the limit
  (stockade.keep.sandbox);
* output: bytes written to stdout+stderr; the bytes up to the limit are
  sent, the rest dropped, and the workload stopped.

Standard streams (issue 18): stdout and stderr are pipes (``stdout_file``
and ``stderr_file`` on ``/proc/self/fd/N`` of their write ends, which
wasmtime opens and holds until the store is closed) that an
:class:`OutputReader` thread reads in chunks of up to ``OUTPUT_READ``
bytes, each counted against the output limit and passed on in order per
stream (wasmtime-py's ``stdout_custom`` callback gets 4 KiB per call, the
cost of a Python call per 4 KiB). Order between the two streams is not
kept. stdin is a memfd holding the Release's input, or, when stdin
streams, the read end of a pipe the Keep's channel feeds (``stdin_fd``):
wasmtime's fd_read on it blocks until data or end of file, for modules
(preview 1) and components (preview 2) alike (checked with wasmtime-py 50).

Components (detected from the binary's preamble, stockade.package.format)
run in an engine that differs from the modules' only by the component model
being on, with the same WASI configuration (wasmtime-py 50 configures WASI
preview 2 from the same ``WasiConfig``), the same stop path, sandbox and
output accounting, and the same store limits except ``instances``: a
component is several core instances (``COMPONENT_MAX_INSTANCES``), still
with one linear memory and ``MAX_TABLES`` tables in all, so the memory
bound is the modules'. A component may import only the WASI preview 2
interfaces that match what preview 1 gives a module (``COMPONENT_IMPORTS``:
no sockets, no HTTP). Not available for components: reporting a failure
at the memory limit as the memory limit (a component exports no core
memory to inspect: it reads as a trap; the memory stays bounded).

Known trap of wasmtime-py: instantiating a WASI module in a store without
``set_wasi`` kills the process, so WASI is always configured, and the store
is always closed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import select
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from stockade import procfs
from stockade.errors import LimitExceeded, WorkloadRejected, WorkloadTrapped
from stockade.keep.sandbox import MONITOR_INTERVAL_S, Sandbox, SandboxUnavailable, inodes_for
from stockade.package.format import check_module_bytes, is_component
from stockade.wire.messages import STDERR, STDOUT, Net, Workload

if TYPE_CHECKING:
    from stockade.keep.compilecache import CompileCache
    from stockade.keep.service import ServiceIdentity

MEMORY_SLACK = 16 * 1024 * 1024
DISK_SLACK = 1024 * 1024
#: Tables a module may have (clang and rustc emit one).
MAX_TABLES = 4
#: Table elements always allowed, whatever the memory limit (large Rust
#: programs have indirect-function tables of some thousands of entries).
MIN_TABLE_ELEMENTS = 10_000
#: A table element costs at most 8 bytes in wasmtime (a pointer: funcref;
#: externref is refused with GC), so MAX_TABLES tables of
#: table_elements_for(m) elements hold at most m/4 bytes.
TABLE_ELEMENT_BYTES = 8

#: WebAssembly features a Keep turns off (wasmtime.Config attributes,
#: wasmtime-py 50; https://docs.wasmtime.dev/api/wasmtime/struct.Config.html):
#: none is needed by WASI preview 1 modules that clang or rustc build, and
#: each either holds memory outside the single limited linear memory
#: (several memories, 64-bit memories, shared memories, GC heap objects and
#: externref tables) or is not needed and widens what the Keep must bound.
#: Kept on: SIMD and relaxed SIMD, bulk memory, multi-value, reference types
#: (funcref tables; rustc and LLVM 19+ emit the reference-types encoding),
#: tail calls.
DISABLED_FEATURES = (
    "wasm_multi_memory",
    "wasm_memory64",
    "wasm_threads",
    "shared_memory",
    "wasm_gc",
    "gc_support",
    "wasm_function_references",
    "wasm_exceptions",
    "wasm_stack_switching",
    "wasm_custom_page_sizes",
    "wasm_component_model",
    "wasm_wide_arithmetic",
)

#: Component-model proposals a Keep turns off in the components' engine
#: (wasmtime.Config attributes, wasmtime-py 50).
COMPONENT_DISABLED_FEATURES = ("wasm_component_model_map", "wasm_component_model_implements")

#: Validation messages of wasmtime for modules that use a disabled feature
#: (substring -> the feature's name in the WebAssembly proposals).
_FEATURE_ERRORS = (
    ("multiple memories", "multi-memory"),
    ("memory64", "memory64"),
    ("threads", "threads (shared memory and atomics)"),
    ("shared memor", "threads (shared memory and atomics)"),
    ("requires gc", "GC (externref and other GC references)"),
    ("gc types", "GC (externref and other GC references)"),
    ("gc proposal", "GC (externref and other GC references)"),
    ("function references", "function references"),
    ("exceptions", "exception handling"),
    ("custom page sizes", "custom page sizes"),
    ("stack switching", "stack switching"),
    ("wide arithmetic", "wide arithmetic"),
)
SECRETS_GUEST_DIR = "/secrets"
#: Core instances a component may create (every instance counts against the
#: store's limit: wasmtime docs, ``StoreLimitsBuilder::instances``); a
#: componentize-js program needs 4 (its engine, the WASI adapter and two
#: shims). Instances hold no memory beyond the one memory and the tables
#: that the other limits bound.
COMPONENT_MAX_INSTANCES = 16
#: WASI preview 2 interface packages a component may import: the
#: counterparts of what preview 1 gives a module (wasi:sockets and
#: wasi:http are refused: a module has no network of its own either, only
#: the sockets its manifest declares, through keep/netsock.py).
COMPONENT_IMPORTS = ("wasi:cli/", "wasi:clocks/", "wasi:filesystem/", "wasi:io/", "wasi:random/")
#: The export a WASI command component has (wasi:cli/command world).
COMPONENT_RUN = "wasi:cli/run@0.2"
MAX_TRAP_MESSAGE = 2000


#: Engine settings a Keep makes besides the features (wasmtime.Config
#: attributes): epoch interruption off, said explicitly (it is off by
#: default), as the limits do not need it (ADR 0029). It is part of the
#: compile cache's engine fingerprint: code compiled with epoch checks
#: (earlier Keeps) is another entry, never loaded by these engines.
ENGINE_SETTINGS = (("epoch_interruption", False),)


def _module_config() -> Any:
    """The engine configuration of modules: ENGINE_SETTINGS, every feature
    of DISABLED_FEATURES off, wasmtime's defaults otherwise (Cranelift,
    optimization level "speed", as bare wasmtime-py)."""
    import wasmtime

    config = wasmtime.Config()
    for name, value in ENGINE_SETTINGS:
        setattr(config, name, value)
    for feature in DISABLED_FEATURES:
        setattr(config, feature, False)
    # Module.deserialize accepts tampered blobs: the compile cache
    # (keep/compilecache.py) authenticates its entries with a Keep-held key
    # before wasmtime sees them (DESIGN.md, known traps; ADR 0023).
    return config


def engine_fingerprint(
    component: bool, engine_settings: tuple[tuple[str, bool], ...] = ENGINE_SETTINGS
) -> str:
    """What the compile cache keys an entry's engine by: a digest of every
    setting this module makes (a change of them is another fingerprint;
    wasmtime also refuses code made under an incompatible configuration).
    ``engine_settings``: another value than the Keep's only in tests (the
    fingerprint of the epoch-interruption engines of earlier Keeps)."""
    settings = [*engine_settings, *((name, False) for name in DISABLED_FEATURES)]
    if component:
        settings += [("wasm_component_model", True), *((n, False) for n in COMPONENT_DISABLED_FEATURES)]
    return hashlib.sha256(repr(settings).encode()).hexdigest()


def make_engine() -> Any:
    import wasmtime

    return wasmtime.Engine(_module_config())


def make_component_engine() -> Any:
    """The engine for components: the modules' configuration with the
    component model on (nothing else is turned on)."""
    import wasmtime

    config = _module_config()
    config.wasm_component_model = True
    # Component-model proposals beyond the MVP stay off (they are off by
    # default; said explicitly so that a new default cannot turn them on).
    # wasmtime-py 50 has no setting for component-model async, whose
    # default in wasmtime 50 applies.
    for feature in COMPONENT_DISABLED_FEATURES:
        setattr(config, feature, False)
    return wasmtime.Engine(config)


def table_elements_for(memory_bytes: int) -> int:
    """Elements allowed in each table under a memory limit."""
    return max(MIN_TABLE_ELEMENTS, memory_bytes // (4 * MAX_TABLES * TABLE_ELEMENT_BYTES))


def store_limits(memory_bytes: int, component: bool = False, network: bool = False) -> dict[str, int]:
    """wasmtime store limits of a workload under a memory limit: one linear
    memory of that size, one instance (core Wasm cannot make more; WASI
    functions are host functions; a component: COMPONENT_MAX_INSTANCES;
    a module with network sockets: 2, the second being the Keep's own
    forwarding module, which holds no memory or table: keep/netsock.py),
    MAX_TABLES tables. The limits count the store's memories, tables and
    instances, whichever core instance creates them."""
    return {
        "memory_size": memory_bytes,
        "table_elements": table_elements_for(memory_bytes),
        "instances": COMPONENT_MAX_INSTANCES if component else 2 if network else 1,
        "tables": MAX_TABLES,
        "memories": 1,
    }


def compile_error(exc: Exception) -> WorkloadRejected:
    """A clear refusal for a module wasmtime does not compile: names the
    feature when the module uses one the Keep turns off."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    cause = lines[-1] if lines else "invalid module"
    cause = re.sub(r"^\d+: ", "", cause)
    lowered = cause.lower()
    for needle, feature in _FEATURE_ERRORS:
        if needle in lowered:
            return WorkloadRejected(
                f"the module uses the WebAssembly {feature} feature, which a Keep does not enable ({cause})"
            )
    return WorkloadRejected(f"invalid WebAssembly module: {cause}")


def compile_component(engine: Any, wasm: bytes) -> Any:
    """Compile a component (a clear refusal when wasmtime does not)."""
    import wasmtime
    from wasmtime.component import Component

    try:
        return Component(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        refusal = compile_error(exc)
        raise WorkloadRejected(
            refusal.detail.replace("WebAssembly module", "WebAssembly component")
        ) from None


def compile_module(engine: Any, wasm: bytes) -> Any:
    """Compile a module (a clear refusal when wasmtime does not)."""
    import wasmtime

    try:
        return wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        raise compile_error(exc) from None


def load_component(engine: Any, wasm: bytes, component: Any = None) -> tuple[Any, str]:
    """Compile a component (unless given compiled) and check that it is a
    WASI command that imports only COMPONENT_IMPORTS; returns it with the
    name of its wasi:cli/run export."""
    if component is None:
        component = compile_component(engine, wasm)
    kind = component.type
    run = [name for name in kind.exports(engine) if name.startswith(COMPONENT_RUN)]
    if len(run) != 1:
        raise WorkloadRejected(
            "component does not export wasi:cli/run (0.2.x): not a WASI command "
            "(libraries and reactors are not run)"
        )
    for name in sorted(kind.imports(engine)):
        if not name.startswith(COMPONENT_IMPORTS):
            raise WorkloadRejected(
                f"component imports {name}; a Keep provides only "
                + ", ".join(p + "*" for p in COMPONENT_IMPORTS)
                + " (WASI preview 2, no sockets or HTTP)"
            )
    return component, run[0]


def component_run_func(instance: Any, store: Any, run: str) -> Any:
    """The ``run`` function of the instance's ``run`` export (wasi:cli/run)."""
    iface = instance.get_export_index(store, run)
    func = instance.get_func(store, instance.get_export_index(store, "run", iface)) if iface else None
    if func is None:
        raise WorkloadRejected(f"component's {run} has no run function")
    return func


def run_result_code(result: Any) -> int:
    """wasi:cli/run#run returns ``result`` with no payloads: ok is exit code
    0, err is 1 (as the wasmtime CLI maps it); wasi:cli/exit.exit with
    another code raises ExitTrap instead."""
    return 0 if getattr(result, "tag", None) == "ok" else 1


def _guest_path(path: str) -> PurePosixPath:
    p = PurePosixPath(path)
    if path == "/":
        return p  # the root directory itself (a mounted, possibly empty, directory)
    if not p.is_absolute() or ".." in p.parts or str(p) != path.rstrip("/") or path == "":
        raise WorkloadRejected(f"file path {path!r} must be absolute, normalized and below /")
    if p.parts[1] == SECRETS_GUEST_DIR.strip("/"):
        raise WorkloadRejected(f"file path {path!r} is inside the reserved {SECRETS_GUEST_DIR}")
    return p


#: Bytes the output reader takes from a stdout or stderr pipe at a time.
OUTPUT_READ = 1 << 20
#: Pipe buffer asked for (F_SETPIPE_SZ; an unprivileged process may ask up
#: to /proc/sys/fs/pipe-max-size, 1 MiB by default: pipe(7)). Fewer wake-ups
#: of the workload's writes and the reader's reads than the default 64 KiB.
PIPE_BYTES = 1 << 20


def grow_pipe(fd: int) -> None:
    """Enlarge a pipe's buffer to PIPE_BYTES when the system allows it."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class OutputReader:
    """Reads the workload's stdout and stderr pipes (``fds``: stream number
    -> read end, which it closes) in a thread until both end, passing each
    chunk to ``writer(stream)`` in the order read, per stream."""

    def __init__(self, fds: dict[int, int], writer: Callable[[int], Callable[[bytes], None]]) -> None:
        self._fds = dict(fds)
        self._write = {stream: writer(stream) for stream in fds}
        self._cond = threading.Condition()
        self._busy = False  # a chunk is being read or passed on
        self._open = set(fds.values())
        self._thread = threading.Thread(target=self._loop, daemon=True, name="output-reader")
        self._thread.start()

    def _loop(self) -> None:
        poll = select.poll()
        by_fd = {fd: stream for stream, fd in self._fds.items()}
        for fd in by_fd:
            poll.register(fd, select.POLLIN)
        try:
            while by_fd:
                for fd, _ in poll.poll():
                    if fd not in by_fd:
                        continue
                    with self._cond:
                        self._busy = True
                    try:
                        data = os.read(fd, OUTPUT_READ)
                        if data:
                            self._write[by_fd[fd]](data)
                        else:  # end of file: wasmtime closed its end
                            poll.unregister(fd)
                            del by_fd[fd]
                            self._open.discard(fd)
                    finally:
                        with self._cond:
                            self._busy = False
                            self._cond.notify_all()
        finally:
            with self._cond:
                self._open.clear()
                for fd in self._fds.values():
                    os.close(fd)
                self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every byte now in the pipes has been passed on (the
        workload has stopped writing: it ended). Returns at once if the
        thread has ended."""
        with self._cond:
            while self._thread.is_alive() and (self._busy or any(_unread(fd) for fd in self._open)):
                self._cond.wait(0.005)

    def join(self) -> None:
        self._thread.join()


def _unread(fd: int) -> bool:
    """Whether a pipe holds bytes not read yet (poll(2): POLLIN; a closed
    write end alone gives POLLHUP)."""
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return any(events & select.POLLIN for _, events in poll.poll(0))


@dataclass(frozen=True)
class Ahead:
    """A module loaded from the sealed compile cache before the release
    (:func:`load_ahead`), for the Runner of the same session."""

    digest: bytes
    module: Any
    #: Microseconds the load took (counted in the run's ``compile`` step).
    took_us: int


def cache_entry_key(digest: bytes, component: bool) -> Any:
    """The compile cache's key of a module or component of this Keep."""
    from stockade.keep.compilecache import EntryKey, host_fingerprint
    from stockade.keep.loading import runtime_name

    return EntryKey(
        module_sha256=digest,
        kind="component" if component else "module",
        wasmtime=runtime_name(),  # the stockade and wasmtime versions
        engine=engine_fingerprint(component),
        host=host_fingerprint(),
    )


def from_cache(cache: CompileCache, engine: Any, key: Any, component: bool) -> Any:
    """The compiled module (or component) of an authenticated entry that
    wasmtime accepts, else None (an entry wasmtime refuses is discarded)."""
    import wasmtime

    if component:
        from wasmtime.component import Component

        deserialize: Callable[[Any, bytes], Any] = Component.deserialize
    else:
        deserialize = wasmtime.Module.deserialize
    serialized = cache.load(key)  # authenticated bytes only, or None
    if serialized is None:
        return None
    try:
        return deserialize(engine, serialized)
    except wasmtime.WasmtimeError:
        cache.discard(key, "wasmtime refused the authenticated entry")
        return None


def load_ahead(engine: Any, cache: CompileCache | None, wasm: bytes) -> Ahead | None:
    """Before the release, while the client checks the workload's identity
    (issue 18): the module from the sealed compile cache, when it holds an
    authenticated entry (the same check as :meth:`Runner._compile`). None
    otherwise: no cache, a component (its engine is made at the run), bytes
    that are no module (refused at the run, as before) or a miss. Never
    compiles: a miss is compiled after the release, under the workload's
    time limit, as before."""
    if cache is None:
        return None
    t0 = time.perf_counter()
    try:
        check_module_bytes(wasm)
        if is_component(wasm):
            return None
        digest = hashlib.sha256(wasm).digest()
        module = from_cache(cache, engine, cache_entry_key(digest, False), False)
    except Exception:  # the run compiles the module and reports any failure
        return None
    if module is None:
        return None
    return Ahead(digest=digest, module=module, took_us=int((time.perf_counter() - t0) * 1e6))


@dataclass
class RunOutcome:
    exit_code: int
    workload_sha256: bytes
    timing_us: dict[str, int] = field(default_factory=dict)


#: Samples of the workload thread's state, and the pause between them, that
#: tell "blocked in a host call" from running Wasm code when the time limit
#: is hit (blocked: asleep in every sample).
_STATE_SAMPLES = 3
_STATE_PAUSE_S = 0.005


class Runner:
    """Executes a Workload; ``emit(fd, data)`` is called as output is written.

    ``stop(reason)`` is called once, from whichever thread hits a limit
    first (the timer, the output writer, the disk monitor), after
    :attr:`limit_error` is set ("client-gone": the output could not be
    sent; :attr:`limit_error` stays None). A Keep's ``stop`` ends the
    process and does not return; if it returns, the run goes on and the
    limit is reported when the workload ends."""

    def __init__(
        self,
        engine: Any,
        emit: Callable[[int, bytes], None],
        sandbox: Sandbox,
        cache: CompileCache | None = None,
        service: ServiceIdentity | None = None,
        stop: Callable[[str], None] | None = None,
        net_emit: Callable[[Net], None] | None = None,
        network: bool = True,
        ahead: Ahead | None = None,
    ) -> None:
        self.engine = engine
        #: This session's module, loaded from the compile cache before the
        #: release (used when the workload's digest is its digest).
        self._ahead = ahead
        #: The Keep's service key and steward certificate (None: no steward):
        #: the TLS identity of the workload's network sockets.
        self.service = service
        self._stop = stop
        #: The problem of the limit that was hit (set before ``stop`` is called).
        self.limit_error: LimitExceeded | None = None
        #: Clear while ``stop`` runs: the run waits for it before it reports
        #: anything (a Keep's stop ends the process first).
        self._stop_done = threading.Event()
        self._stop_done.set()
        self._finished = False
        self._thread_id: int | None = None
        #: Sends a ``net`` event to the client (keep/netsock.py).
        self._net_emit = net_emit
        #: Whether the workload's sockets may bind and connect on the network
        #: stack the Keep process sees (process Keeps); a VM Keep has none.
        self._network_allowed = network
        #: The sealed compile cache (None: compile every time).
        self.cache = cache
        #: A compiled module or component to store in the cache, and its entry key.
        self._to_store: tuple[Any, Any] | None = None
        self._emit = emit
        self._sandbox = sandbox
        self._output_left = 0
        self.limit_hit: str | None = None
        #: What the workload's time goes to now: "compiling" until the
        #: module is compiled, then "running" (the watchdog names it).
        self.phase = "compiling"
        # Reentrant: _interrupt may be called by code that holds it (the
        # output accounting).
        self._lock = threading.RLock()

    def _writer(self, fd: int) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            # Called from inside wasmtime: must never raise.
            try:
                with self._lock:
                    if self.limit_hit:
                        return
                    over = len(data) > self._output_left
                    if over:
                        data = data[: self._output_left]
                    self._output_left -= len(data)
                # The bytes up to the limit are queued before the stop, which
                # sends what is queued before the problem.
                if data:
                    self._emit(fd, data)
                if over:
                    self._interrupt("output")
            except Exception:
                self._interrupt("client-gone")

        return write

    def _interrupt(self, reason: str) -> None:
        """A limit is hit ("time", "output", "disk") or the output cannot
        be sent ("client-gone"): record it (the first one counts) and call
        ``stop``. Called from any thread, also from inside wasmtime (the
        output writer): never raises."""
        with self._lock:
            if self.limit_hit is not None or self._finished:
                return
            self.limit_hit = reason
            self._stop_done.clear()
        try:
            self.limit_error = self._limit_problem(reason)
            if self._stop is not None:
                self._stop(reason)
        except Exception:  # noqa: S110 - the limit is recorded; the run reports it
            pass
        finally:
            self._stop_done.set()

    def _settle(self) -> None:
        """The workload has ended: no stop from now on; a stop under way
        ends the process (a Keep's) or returns, and is waited for."""
        with self._lock:
            self._finished = True
        self._stop_done.wait()

    def _limit_problem(self, reason: str) -> LimitExceeded | None:
        if reason == "time":
            where = " (blocked in a host call)" if self._workload_blocked() else ""
            return LimitExceeded(
                f"workload exceeded its wall-clock time limit{where} and was stopped", "time"
            )
        if reason == "output":
            return LimitExceeded("workload exceeded its output limit and was stopped", "output")
        if reason == "disk":
            try:
                return self._disk_problem(force=True)
            except OSError:  # the files cannot be summed: the limit stands
                return LimitExceeded(
                    f"workload failed at its disk limit (its files fill the {self._sandbox.limit}-byte limit)",
                    "disk",
                )
        return None

    def _workload_blocked(self) -> bool:
        """Whether the thread that runs the workload sleeps in the kernel
        (a host call: ``poll_oneoff``, a read, a full output queue) rather
        than running Wasm code (state R: running or waiting for a CPU)."""
        tid = self._thread_id
        if tid is None:
            return False
        for i in range(_STATE_SAMPLES):
            if i:
                time.sleep(_STATE_PAUSE_S)
            if procfs.thread_state(tid) not in ("S", "D"):
                return False
        return True

    def run(self, workload: Workload, stdin_fd: int | None = None) -> RunOutcome:
        """Run ``workload``. ``stdin_fd``: the read end of a pipe to use as
        its stdin instead of ``workload.stdin`` (streamed stdin); the Runner
        owns it from here on and closes it on every path."""
        try:
            return self._run(workload, stdin_fd)
        finally:
            if stdin_fd is not None:
                with contextlib.suppress(OSError):  # closed already once wasmtime opened it
                    os.close(stdin_fd)

    def _run(self, workload: Workload, stdin_pipe: int | None) -> RunOutcome:
        import wasmtime

        digest = hashlib.sha256(workload.wasm).digest()
        timing: dict[str, int] = {}
        t0 = time.perf_counter()
        check_module_bytes(workload.wasm)
        component = is_component(workload.wasm)
        if component:
            self.engine = make_component_engine()
            compiled, run_export = load_component(
                self.engine, workload.wasm, self._compile(workload.wasm, digest, True, timing)
            )
        else:
            module = self._compile(workload.wasm, digest, False, timing)
            start = next((e for e in module.exports if e.name == "_start"), None)
            if start is None or not isinstance(start.type, wasmtime.FuncType):
                raise WorkloadRejected("module has no _start function: not a WASI command")
            for imp in module.imports:
                if imp.module != "wasi_snapshot_preview1":
                    raise WorkloadRejected(
                        f"module imports {imp.module}::{imp.name}; only wasi_snapshot_preview1 is provided"
                    )
        # With the module loaded before the release (compile_ahead), its
        # load is counted here too: "compile" is what getting the module took.
        timing["compile"] = int((time.perf_counter() - t0) * 1e6) + timing.get("compile_ahead", 0)
        self.phase = "running"

        limits = workload.limits
        self._output_left = limits.output_bytes
        budget = self._sandbox.ram_budget
        if budget is not None and limits.memory_bytes + limits.disk_bytes > budget:
            raise WorkloadRejected(
                f"the memory limit ({limits.memory_bytes} bytes) and the disk limit ({limits.disk_bytes} bytes) "
                f"exceed what this VM Keep's RAM holds for a workload ({budget} bytes): ask for less, or use "
                "larger VM Keeps (stockade host serve --vm-memory)"
            )
        try:
            self._sandbox.set_limit(limits.disk_bytes)
        except (SandboxUnavailable, OSError) as exc:
            raise WorkloadRejected(
                f"the Keep cannot apply the {limits.disk_bytes}-byte disk limit ({exc})"
            ) from None
        base = Path(tempfile.mkdtemp(prefix="keep-", dir=self._sandbox.root))
        store = wasmtime.Store(self.engine)
        timer = threading.Timer(limits.timeout_ms / 1000, self._interrupt, args=("time",))
        timer.daemon = True
        stop_monitor = threading.Event()
        stdin_fd: int | None = None
        net = None
        reader: OutputReader | None = None
        wasi: Any = None
        try:
            if workload.sockets:
                net = self._network(workload, component)
                sockets = net.start()
                names = {k for k, _ in sockets}
                workload = replace(
                    workload, env=(*((k, v) for k, v in workload.env if k not in names), *sockets)
                )
            wasi, stdin_fd, outputs = self._wasi_config(workload, base, stdin_pipe)
            reader = OutputReader(outputs, self._writer)
            store.set_wasi(wasi)
            store.set_limits(**store_limits(limits.memory_bytes, component, net is not None))
            if component:
                from wasmtime.component import Linker as ComponentLinker

                component_linker = ComponentLinker(self.engine)
                component_linker.add_wasip2()
            else:
                linker = wasmtime.Linker(self.engine)
                linker.define_wasi()
                if net is not None:
                    net.define(linker)
            t1 = time.perf_counter()
            # CPU time of this thread, where the Wasm code runs: the run's
            # cost without the waits of a busy machine (bench_throughput.py).
            c1 = time.thread_time()
            self._thread_id = threading.get_native_id()
            timer.start()
            self._sandbox.monitor(MONITOR_INTERVAL_S, lambda: self._interrupt("disk"), stop_monitor)
            instance = None
            try:
                try:
                    if component:
                        try:
                            component_instance = component_linker.instantiate(store, compiled)
                        except wasmtime.WasmtimeError as exc:
                            self._instantiation_limit(str(exc), limits.memory_bytes, COMPONENT_MAX_INSTANCES)
                            raise WorkloadRejected(
                                f"the component cannot be instantiated: {exc_line(exc)}"
                            ) from None
                        # A component exports no core memory or table to inspect:
                        # ``instance`` stays None for the limit reports.
                        code = run_result_code(
                            component_run_func(component_instance, store, run_export)(store)
                        )
                    else:
                        instance = linker.instantiate(store, module)
                        if net is not None:
                            net.attach(self.engine, store, instance)
                        func = instance.exports(store)["_start"]
                        if not isinstance(func, wasmtime.Func):  # pragma: no cover - checked above
                            raise WorkloadRejected("_start is not a function")
                        func(store)
                        code = 0
                finally:
                    # What the workload wrote before it ended counts: the
                    # output limit is decided on all of it (as when each
                    # write was counted in the write itself).
                    assert reader is not None
                    reader.drain()
            except wasmtime.ExitTrap as exc:
                code = exc.code
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                self._settle()  # a limit hit meanwhile is the cause
                if instance is None and not component:
                    self._instantiation_limit(str(exc), limits.memory_bytes)
                self._raise_for_limit(store, instance, limits.memory_bytes)
                raise WorkloadTrapped(trap_summary(exc)) from None
            finally:
                timer.cancel()
                stop_monitor.set()
                timing["run"] = int((time.perf_counter() - t1) * 1e6)
                timing["run_cpu"] = int((time.thread_time() - c1) * 1e6)
                self._settle()
            if self.limit_error is not None:
                raise self.limit_error
            if code != 0:
                self._raise_for_limit(store, instance, limits.memory_bytes)
            return RunOutcome(exit_code=code, workload_sha256=digest, timing_us=timing)
        finally:
            if net is not None:
                net.close()
            store.close()  # closes wasmtime's ends of the pipes
            del wasi  # and so does this, when the store never took it
            if stdin_fd is not None:
                os.close(stdin_fd)
            if reader is not None:
                reader.join()  # every byte written is passed on before the exit status
            shutil.rmtree(base, ignore_errors=True)

    def _network(self, workload: Workload, component: bool) -> Any:
        """The workload's sockets (keep/netsock.py); refusals for what a
        Keep cannot give them."""
        if component:
            raise WorkloadRejected(
                "network sockets are provided to WASI preview 1 modules only, not to components"
            )
        if not self._network_allowed:
            raise WorkloadRejected(
                "this Keep has no network: a VM Keep does not offer the package's network sockets "
                "(use a process Keep: sim, sim-snp or sim-tdx; docs/limitations.md)"
            )
        from stockade.keep.netsock import runtime_for

        def emit(event: Net) -> None:
            if self._net_emit is not None:
                self._net_emit(event)

        return runtime_for(workload.sockets, self.service, emit, lambda: self.limit_hit is not None)

    def _compile(self, wasm: bytes, digest: bytes, component: bool, timing: dict[str, int]) -> Any:
        """The compiled module or component: from the sealed compile cache
        when it holds an authenticated entry that wasmtime accepts, else
        compiled (and kept for :meth:`store_compiled`, which seals and
        writes the entry once the session is over: neither the client nor
        the workload's time limit waits for it). ``timing["compile_cached"]``
        says which (1 or 0; absent without a cache); ``compile_ahead``, the
        microseconds of a load before the release (:func:`load_ahead`)."""
        fresh = compile_component if component else compile_module
        if self.cache is None:
            return fresh(self.engine, wasm)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and not component and ahead.digest == digest:
            timing["compile_cached"] = 1
            timing["compile_ahead"] = ahead.took_us
            return ahead.module
        key = cache_entry_key(digest, component)
        compiled = from_cache(self.cache, self.engine, key, component)
        if compiled is not None:
            timing["compile_cached"] = 1
            return compiled
        compiled = fresh(self.engine, wasm)
        timing["compile_cached"] = 0
        self._to_store = (key, compiled)
        return compiled

    def store_compiled(self) -> float | None:
        """Seal and write the entry of a module this run compiled (a cache
        miss); the seconds it took, or None when there was nothing to
        store. Never raises: a cache never fails a run."""
        pending, self._to_store = self._to_store, None
        if pending is None or self.cache is None:
            return None
        key, compiled = pending
        t0 = time.perf_counter()
        try:
            self.cache.store(key, compiled.serialize())
        except Exception as exc:  # a cache never fails a run (wasmtime, memory)
            self.cache.log(f"compile cache: entry not stored ({type(exc).__name__})")
        return time.perf_counter() - t0

    def _instantiation_limit(self, text: str, memory_limit: int, instances: int = 1) -> None:
        """The module asks at instantiation for more than the limits allow."""
        if "exceeds memory limits" in text:
            raise LimitExceeded(
                f"the module's initial memory is larger than the {memory_limit}-byte limit", "memory"
            )
        if "exceeds table limits" in text:
            raise LimitExceeded(
                f"the module's initial table is larger than the {table_elements_for(memory_limit)} elements "
                f"a table may have under the {memory_limit}-byte memory limit",
                "memory",
            )
        if "resource limit exceeded" in text:
            what = text.split("resource limit exceeded:", 1)[1].strip().splitlines()[0]
            raise LimitExceeded(
                f"the module exceeds the Keep's limits on tables, memories and instances ({what}; "
                f"at most {MAX_TABLES} tables, 1 memory, {instances} instance{'s' if instances > 1 else ''})",
                "memory",
            )

    def _disk_problem(self, force: bool = False) -> LimitExceeded | None:
        """The disk limit as the cause of a failure: no inode left, or the
        files within min(DISK_SLACK, limit/8) of the limit (``force``: the
        monitor saw them past it)."""
        disk = self._sandbox.limit
        if disk is None:
            return None
        used, no_inodes = self._sandbox.usage()
        if no_inodes:
            return LimitExceeded(
                f"workload failed at its disk limit (no file entry left: at most "
                f"{inodes_for(disk)} files and directories under the {disk}-byte limit)",
                "disk",
            )
        if force or used + min(DISK_SLACK, disk // 8) >= disk:
            return LimitExceeded(
                f"workload failed at its disk limit (its files fill the {disk}-byte limit)", "disk"
            )
        return None

    def _raise_for_limit(self, store: Any, instance: Any, memory_limit: int) -> None:
        if self.limit_error is not None:
            raise self.limit_error
        disk = self._disk_problem()
        if disk is not None:
            raise disk
        memory_used = instance_memory_size(store, instance)
        if memory_used and memory_used + min(MEMORY_SLACK, memory_limit // 8) >= memory_limit:
            raise LimitExceeded(
                f"workload failed at its memory limit ({memory_used} of {memory_limit} bytes of linear memory)",
                "memory",
            )
        elements = table_elements_for(memory_limit)
        largest = largest_table(store, instance)
        if largest and largest + min(MEMORY_SLACK // TABLE_ELEMENT_BYTES, elements // 8) >= elements:
            raise LimitExceeded(
                f"workload failed at its memory limit (a table of {largest} of the {elements} elements "
                f"allowed under the {memory_limit}-byte limit)",
                "memory",
            )

    def _wasi_config(
        self, workload: Workload, base: Path, stdin_pipe: int | None
    ) -> tuple[Any, int | None, dict[int, int]]:
        """The WASI configuration, the memfd that holds stdin (None when
        stdin is ``stdin_pipe``; the caller closes it after the run) and the
        read ends of the stdout and stderr pipes (closed by the
        OutputReader)."""
        try:
            return self._wasi_config_files(workload, base, stdin_pipe)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise LimitExceeded(
                    f"the workload's files and secrets do not fit its {self._sandbox.limit}-byte disk limit",
                    "disk",
                ) from None
            raise

    def _wasi_config_files(
        self, workload: Workload, base: Path, stdin_pipe: int | None
    ) -> tuple[Any, int | None, dict[int, int]]:
        import wasmtime

        wasi = wasmtime.WasiConfig()
        wasi.argv = ["main.wasm", *workload.args]
        wasi.env = [[k, v] for k, v in workload.env]
        if workload.files:
            root = base / "root"
            root.mkdir()
            for entry in workload.files:
                target = root.joinpath(*_guest_path(entry.path).parts[1:])
                if entry.data is None:
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(entry.data)
            wasi.preopen_dir(str(root), "/")
        if workload.secrets:
            secrets_dir = base / "secrets"
            secrets_dir.mkdir(mode=0o700)
            for name, value in workload.secrets:
                if "/" in name or name in ("", ".", ".."):
                    raise WorkloadRejected(f"secret name {name!r} is not a plain file name")
                fd = os.open(secrets_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(value)
            wasi.preopen_dir(str(secrets_dir), SECRETS_GUEST_DIR, fs_mutable=False)
        stdin_fd: int | None = None
        if stdin_pipe is not None:
            # wasmtime opens the path at once (its own descriptor of the
            # pipe): ours is closed, so that the channel's writes fail
            # (EPIPE) once the workload's store is closed.
            wasi.stdin_file = f"/proc/self/fd/{stdin_pipe}"
            os.close(stdin_pipe)
        else:
            # stdin in memory (a memfd), never in a file: wasmtime opens the path.
            stdin_fd = os.memfd_create("stdin", os.MFD_CLOEXEC)
            try:
                view = memoryview(workload.stdin)
                while view:
                    view = view[os.write(stdin_fd, view) :]
                os.lseek(stdin_fd, 0, os.SEEK_SET)
                wasi.stdin_file = f"/proc/self/fd/{stdin_fd}"
            except BaseException:
                os.close(stdin_fd)
                raise
        outputs: dict[int, int] = {}
        try:
            for fd in (STDOUT, STDERR):
                read_end, write_end = os.pipe()
                outputs[fd] = read_end
                try:
                    grow_pipe(write_end)
                    path = f"/proc/self/fd/{write_end}"
                    if fd == STDOUT:
                        wasi.stdout_file = path
                    else:
                        wasi.stderr_file = path
                finally:
                    os.close(write_end)  # wasmtime holds its own until the store is closed
        except BaseException:
            for read_end in outputs.values():
                os.close(read_end)
            if stdin_fd is not None:
                os.close(stdin_fd)
            raise
        return wasi, stdin_fd, outputs


def exc_line(exc: Exception) -> str:
    """The first line of a wasmtime error, bounded."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else "error"
    return line if len(line) <= MAX_TRAP_MESSAGE else line[:MAX_TRAP_MESSAGE] + " [...]"


def trap_summary(exc: Exception) -> str:
    """One line: the trap's cause and, when known, the innermost function."""
    import wasmtime

    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    cause = next(
        (ln for ln in reversed(lines) if ln.startswith("wasm trap:")), lines[-1] if lines else "trap"
    )
    cause = cause.removeprefix("wasm trap: ")
    where = ""
    if isinstance(exc, wasmtime.Trap):
        try:
            frames = exc.frames
            if frames:
                name = frames[0].func_name or f"function #{frames[0].func_index}"
                where = f" in {name}"
        except Exception:  # frames are best effort
            where = ""
    summary = f"{cause}{where}"
    return summary if len(summary) <= MAX_TRAP_MESSAGE else summary[:MAX_TRAP_MESSAGE] + " [...]"


def instance_memory_size(store: Any, instance: Any) -> int:
    """Bytes of the instance's exported linear memory (0 when unknown)."""
    import wasmtime

    if instance is None:
        return 0
    try:
        memory = instance.exports(store).get("memory")
        if isinstance(memory, wasmtime.Memory):
            return int(memory.data_len(store))
    except Exception:
        return 0
    return 0


def largest_table(store: Any, instance: Any) -> int:
    """Elements of the instance's largest exported table (0 when unknown;
    tables that are not exported cannot be seen from the host API)."""
    import wasmtime

    if instance is None:
        return 0
    try:
        sizes = [
            int(t.size(store)) for t in instance.exports(store).values() if isinstance(t, wasmtime.Table)
        ]
    except Exception:
        return 0
    return max(sizes, default=0)
