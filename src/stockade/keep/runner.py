"""Run one WASI preview 1 command module in wasmtime, inside the Keep.

Limits (all from the client's Workload message):

* wall-clock time: wasmtime epoch interruption (a timer bumps the engine's
  epoch) traps running Wasm code; a call blocked in the host (a sleep in
  ``poll_oneoff``) is not interrupted by that, so the Keep also runs a process
  watchdog (keep/session.py) that ends the process;
* linear memory: store limits make ``memory.grow`` fail beyond the limit; the
  guest then usually aborts. When a workload ends abnormally with its memory
  within min(``MEMORY_SLACK``, limit/8) of the limit, this is reported as the memory limit
  (wasmtime-py exposes no hook on the failed grow itself);
* output: bytes written to stdout+stderr; past the limit output is dropped
  and the workload interrupted through the same epoch mechanism.

Known trap of wasmtime-py: instantiating a WASI module in a store without
``set_wasi`` kills the process, so WASI is always configured, and the store
is always closed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from stockade.errors import LimitExceeded, WorkloadRejected, WorkloadTrapped
from stockade.package.format import check_module_bytes
from stockade.wire.messages import STDERR, STDOUT, Workload

MEMORY_SLACK = 16 * 1024 * 1024
SECRETS_GUEST_DIR = "/secrets"
MAX_TRAP_MESSAGE = 2000


def make_engine() -> Any:
    import wasmtime

    config = wasmtime.Config()
    config.epoch_interruption = True
    # No compile cache: Module.deserialize accepts tampered blobs, so a cache
    # would need authentication with a Keep-held key (DESIGN.md, known traps).
    return wasmtime.Engine(config)


def _guest_path(path: str) -> PurePosixPath:
    p = PurePosixPath(path)
    if path == "/":
        return p  # the root directory itself (a mounted, possibly empty, directory)
    if not p.is_absolute() or ".." in p.parts or str(p) != path.rstrip("/") or path == "":
        raise WorkloadRejected(f"file path {path!r} must be absolute, normalized and below /")
    if p.parts[1] == SECRETS_GUEST_DIR.strip("/"):
        raise WorkloadRejected(f"file path {path!r} is inside the reserved {SECRETS_GUEST_DIR}")
    return p


@dataclass
class RunOutcome:
    exit_code: int
    workload_sha256: bytes
    timing_us: dict[str, int] = field(default_factory=dict)


class Runner:
    """Executes a Workload; ``emit(fd, data)`` is called as output is written."""

    def __init__(self, engine: Any, emit: Callable[[int, bytes], None], scratch: Path | None = None) -> None:
        self.engine = engine
        self._emit = emit
        self._scratch = scratch
        self._output_left = 0
        self.limit_hit: str | None = None
        self._lock = threading.Lock()

    def _writer(self, fd: int) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            # Called from inside wasmtime: must never raise.
            try:
                with self._lock:
                    if self.limit_hit:
                        return
                    if len(data) > self._output_left:
                        data = data[: self._output_left]
                        self._interrupt("output")
                    self._output_left -= len(data)
                if data:
                    self._emit(fd, data)
            except Exception:
                self._interrupt("client-gone")

        return write

    def _interrupt(self, reason: str) -> None:
        if self.limit_hit is None:
            self.limit_hit = reason
        self.engine.increment_epoch()

    def run(self, workload: Workload) -> RunOutcome:
        import wasmtime

        digest = hashlib.sha256(workload.wasm).digest()
        timing: dict[str, int] = {}
        t0 = time.perf_counter()
        check_module_bytes(workload.wasm)
        try:
            module = wasmtime.Module(self.engine, workload.wasm)
        except wasmtime.WasmtimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid module"
            raise WorkloadRejected(f"invalid WebAssembly module: {first}") from None
        start = next((e for e in module.exports if e.name == "_start"), None)
        if start is None or not isinstance(start.type, wasmtime.FuncType):
            raise WorkloadRejected("module has no _start function: not a WASI command")
        for imp in module.imports:
            if imp.module != "wasi_snapshot_preview1":
                raise WorkloadRejected(
                    f"module imports {imp.module}::{imp.name}; only wasi_snapshot_preview1 is provided"
                )
        timing["compile"] = int((time.perf_counter() - t0) * 1e6)

        limits = workload.limits
        self._output_left = limits.output_bytes
        base = Path(tempfile.mkdtemp(prefix="keep-", dir=self._scratch))
        store = wasmtime.Store(self.engine)
        timer = threading.Timer(limits.timeout_ms / 1000, self._interrupt, args=("time",))
        timer.daemon = True
        try:
            wasi = self._wasi_config(workload, base)
            store.set_wasi(wasi)
            store.set_limits(memory_size=limits.memory_bytes)
            store.set_epoch_deadline(1)
            linker = wasmtime.Linker(self.engine)
            linker.define_wasi()
            t1 = time.perf_counter()
            timer.start()
            instance = None
            try:
                instance = linker.instantiate(store, module)
                func = instance.exports(store)["_start"]
                if not isinstance(func, wasmtime.Func):  # pragma: no cover - checked above
                    raise WorkloadRejected("_start is not a function")
                func(store)
                code = 0
            except wasmtime.ExitTrap as exc:
                code = exc.code
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                if "exceeds memory limits" in str(exc):
                    raise LimitExceeded(
                        f"the module's initial memory is larger than the {limits.memory_bytes}-byte limit",
                        "memory",
                    ) from None
                self._raise_for_limit(instance_memory_size(store, instance), limits.memory_bytes)
                raise WorkloadTrapped(trap_summary(exc)) from None
            finally:
                timer.cancel()
                timing["run"] = int((time.perf_counter() - t1) * 1e6)
            if self.limit_hit in ("time", "output"):
                self._raise_for_limit(0, limits.memory_bytes)
            if code != 0:
                self._raise_for_limit(instance_memory_size(store, instance), limits.memory_bytes)
            return RunOutcome(exit_code=code, workload_sha256=digest, timing_us=timing)
        finally:
            store.close()
            shutil.rmtree(base, ignore_errors=True)

    def _raise_for_limit(self, memory_used: int, memory_limit: int) -> None:
        if self.limit_hit == "time":
            raise LimitExceeded("workload exceeded its wall-clock time limit and was stopped", "time")
        if self.limit_hit == "output":
            raise LimitExceeded("workload exceeded its output limit and was stopped", "output")
        if memory_used and memory_used + min(MEMORY_SLACK, memory_limit // 8) >= memory_limit:
            raise LimitExceeded(
                f"workload failed at its memory limit ({memory_used} of {memory_limit} bytes of linear memory)",
                "memory",
            )

    def _wasi_config(self, workload: Workload, base: Path) -> Any:
        import wasmtime

        wasi = wasmtime.WasiConfig()
        wasi.argv = ["main.wasm", *workload.args]
        wasi.env = [[k, v] for k, v in workload.env]
        wasi.stdout_custom = self._writer(STDOUT)
        wasi.stderr_custom = self._writer(STDERR)
        stdin = base / "stdin"
        stdin.write_bytes(workload.stdin)
        wasi.stdin_file = str(stdin)
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
        return wasi


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
