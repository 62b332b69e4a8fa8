"""End to end: what ``stockade run`` does with bad input, hostile workloads and
a Keep that dies.

Each test checks the exit code (src/stockade/errors.py, docs/exit-codes.md),
a distinctive part of the one-line ``stockade: <title>: <detail>`` message on
stderr, and that no Python traceback escaped. Test modules are WAT sources in
tests/data/wasm/, compiled with ``wasmtime.wat2wasm`` at test time (conftest's
``wasm``).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import wasmtime

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"

pytestmark = pytest.mark.slow


def exit_module(tmp_path: Path, code: int) -> Path:
    path = tmp_path / f"exit{code}.wasm"
    path.write_bytes(
        wasmtime.wat2wasm(
            f"""
            (module
              (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
              (memory (export "memory") 1)
              (func (export "_start") (call $proc_exit (i32.const {code}))))
            """
        )
    )
    return path


#: With --quiet, the one line stockade still prints on stderr once a sim Keep is verified.
SIM_LABEL = "stockade: sim Keep: NO HARDWARE PROTECTION"


def failure(proc: subprocess.CompletedProcess[bytes], code: int, *fragments: str) -> str:
    """Assert exit ``code``, no traceback, and exactly one stderr line (run with -q;
    apart from the sim label) of the form ``stockade: <title>: <detail>``
    containing every fragment."""
    stderr = proc.stderr.decode(errors="replace")
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == code, (proc.returncode, stderr)
    lines = stderr.splitlines()
    if lines and lines[0] == SIM_LABEL:
        lines = lines[1:]
    assert len(lines) == 1, f"expected a one-line error message, got {stderr!r}"
    line = lines[0]
    assert line.startswith("stockade: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def keep_logs(state_dir: Path) -> set[Path]:
    return set((state_dir / "logs").glob("keep-*.log"))


def assert_scratch_removed(state_dir: Path, before: set[Path], tmpdir: Path) -> None:
    """The Keeps started since ``before`` (one log file each, keep-<id>.log) left
    no scratch directory (stockade-keep-<id>-*) in /dev/shm or ``tmpdir``."""
    ids = [p.name.removeprefix("keep-").removesuffix(".log") for p in keep_logs(state_dir) - before]
    assert len(ids) == 1, ids
    for base in (Path("/dev/shm"), tmpdir):
        leftovers = list(base.glob(f"stockade-keep-{ids[0]}-*")) if base.is_dir() else []
        assert leftovers == [], f"scratch left behind: {leftovers}"


def assert_not_in_state_dir(state_dir: Path, value: str) -> None:
    for file in state_dir.rglob("*"):
        if file.is_file():
            assert value.encode() not in file.read_bytes(), f"secret found in {file}"


def run_q(stockade, *args: str, **kw):
    return stockade("run", "--allow-sim", "-q", *args, **kw)


# --------------------------------------------------------------------------- local input


def test_missing_wasm_file(stockade, tmp_path: Path) -> None:
    proc = run_q(stockade, str(tmp_path / "nope.wasm"))
    failure(proc, 2, "usage error", "cannot read", "nope.wasm")


def test_text_file_is_not_wasm(stockade, tmp_path: Path) -> None:
    text = tmp_path / "readme.wasm"
    text.write_text("this is not WebAssembly\n")
    proc = run_q(stockade, str(text))
    failure(proc, 117, "workload rejected", "not a WebAssembly module")


def test_invalid_wasm_with_magic(stockade, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"\0asm\x01\0\0\0\xff\xff")
    proc = run_q(stockade, str(bad))
    failure(proc, 117, "workload rejected", "invalid WebAssembly")


def test_component_version_is_rejected(stockade, tmp_path: Path) -> None:
    component = tmp_path / "component.wasm"
    component.write_bytes(b"\0asm\x0c\0\x01\0")  # layer 1, a version wasmtime does not read
    proc = run_q(stockade, str(component))
    failure(proc, 117, "workload rejected", "unsupported WebAssembly component version 0x000c")


def test_module_without_start(stockade, wasm) -> None:
    proc = run_q(stockade, str(wasm("nostart")))
    failure(proc, 117, "workload rejected", "_start")


def test_non_wasi_import_is_rejected(stockade, tmp_path: Path) -> None:
    module = tmp_path / "env.wasm"
    module.write_bytes(
        wasmtime.wat2wasm('(module (import "env" "f" (func)) (func (export "_start") (call 0)))')
    )
    proc = run_q(stockade, str(module))
    failure(proc, 117, "workload rejected", "env::f")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--env", "NOEQUALS"), "KEY=VALUE"),
        (("--memory", "lots"), "--memory"),
        (("--memory", "0"), "--memory must be positive"),
        (("--max-output", "12Q"), "--max-output"),
        (("--timeout", "0"), "--timeout must be a number of seconds"),
        (("--expect-measurement", "not-hex"), "--expect-measurement must be 96 hex digits"),
        (("--stdin", "/nonexistent/input"), "--stdin"),
        (("--file", "/nonexistent/input:/x"), "does not exist"),
        (("--secret", "token=@/nonexistent/secret"), "cannot read"),
        (("--secret", "../token=@/etc/hostname"), "plain file name"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_usage_errors(stockade, args: tuple[str, ...], fragment: str) -> None:
    proc = run_q(stockade, *args, str(HELLO))
    failure(proc, 2, "usage error", fragment)


def test_file_directory_with_dangling_symlink(stockade, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok.txt").write_text("fine\n")
    (tree / "dangling").symlink_to(tmp_path / "does-not-exist")
    proc = run_q(stockade, "--file", f"{tree}:/", str(HELLO))
    failure(proc, 2, "usage error", "dangling")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_timeout_not_finite(stockade, value: str) -> None:
    proc = run_q(stockade, "--timeout", value, str(HELLO))
    failure(proc, 2, "--timeout")


# --------------------------------------------------------------------------- policy


def test_sim_without_allow_sim(stockade) -> None:
    proc = stockade("run", "-q", str(HELLO), "--", "Alice")
    failure(proc, 112, "refused by policy", "--allow-sim", "NO hardware protection")
    assert proc.stdout == b"", "the workload must not run"


def test_rejection_does_not_wait_for_the_keep(stockade, state_dir: Path) -> None:
    before = keep_logs(state_dir)
    t0 = time.monotonic()
    proc = stockade("run", "-q", str(HELLO))
    elapsed = time.monotonic() - t0
    failure(proc, 112, "--allow-sim")
    # A Keep whose client hangs up logs how its session ended; a killed one logs nothing.
    (log,) = keep_logs(state_dir) - before
    assert "session ended" in log.read_text(), "the Keep was killed instead of ending by itself"
    assert elapsed < 2.0, f"a rejected deploy took {elapsed:.2f}s"


def test_wrong_expected_measurement(stockade) -> None:
    wrong = "ab" * 48
    proc = run_q(stockade, "--expect-measurement", wrong, str(HELLO))
    line = failure(proc, 112, "refused by policy", "measurement", wrong)
    assert proc.stdout == b"", "the workload must not run"
    assert "measurements: expected" in line and "actual" in line


# --------------------------------------------------------------------------- workload behaviour


def test_trap(stockade, wasm) -> None:
    proc = run_q(stockade, str(wasm("trap")))
    stderr = proc.stderr.decode(errors="replace")
    assert "Traceback" not in stderr
    assert proc.returncode == 134, stderr
    assert stderr.startswith(f"{SIM_LABEL}\nstockade: workload trapped: ")
    assert "unreachable" in stderr
    assert proc.stdout == b""


def test_trap_message_is_one_line(stockade, wasm) -> None:
    proc = run_q(stockade, str(wasm("trap")))
    line = failure(proc, 134, "workload trapped", "unreachable")
    assert line.count("workload trapped") == 1


@pytest.mark.parametrize("code", [1, 3, 42, 125])
def test_proc_exit_code(stockade, tmp_path: Path, code: int) -> None:
    proc = run_q(stockade, str(exit_module(tmp_path, code)))
    assert b"Traceback" not in proc.stderr
    assert proc.returncode == code, proc.stderr
    assert proc.stderr == f"{SIM_LABEL}\n".encode()
    assert proc.stdout == b""


def test_exit_code_with_small_memory_limit(stockade, wasm) -> None:
    proc = run_q(stockade, "--memory", "16M", str(wasm("exit7")))
    assert b"Traceback" not in proc.stderr
    assert proc.returncode == 7, proc.stderr


def test_infinite_loop_timeout(stockade, wasm) -> None:
    t0 = time.monotonic()
    proc = run_q(stockade, "--timeout", "1", str(wasm("spin")))
    elapsed = time.monotonic() - t0
    failure(proc, 116, "limit exceeded", "time")
    assert elapsed < 10, f"took {elapsed:.1f}s"


def test_blocked_host_call_timeout(stockade, wasm, tmp_path: Path) -> None:
    # poll_oneoff sleeping 30 s: epoch interruption cannot stop it, the Keep's
    # process watchdog must (limit + 1 s grace).
    t0 = time.monotonic()
    proc = run_q(stockade, "--timeout", "1", str(wasm("sleep")))
    elapsed = time.monotonic() - t0
    failure(proc, 116, "limit exceeded", "time", "blocked in a host call")
    assert proc.stdout == b"sleeping\n"
    assert elapsed < 6, f"took {elapsed:.1f}s"


def test_watchdog_leaves_no_scratch_files(stockade, state_dir: Path, wasm, tmp_path: Path) -> None:
    # The watchdog ends the Keep with os._exit(): its own cleanup does not run,
    # so the loader must remove the per-Keep scratch directory (files, secrets).
    canary = "canary-" + secrets.token_hex(16)
    (tmp_path / "secret").write_text(canary)
    (tmp_path / "input").write_text("some input")
    before = keep_logs(state_dir)
    proc = run_q(
        stockade,
        "--timeout",
        "1",
        "--secret",
        f"token=@{tmp_path / 'secret'}",
        "--file",
        f"{tmp_path / 'input'}:/input",
        str(wasm("sleep")),
        env={"TMPDIR": str(tmp_path)},
    )
    failure(proc, 116, "time")
    assert_scratch_removed(state_dir, before, tmp_path)
    assert_not_in_state_dir(state_dir, canary)


def test_memory_bomb(stockade, wasm) -> None:
    proc = run_q(stockade, "--memory", "16M", str(wasm("membomb")))
    failure(proc, 116, "limit exceeded", "memory", "16777216 of 16777216")


def test_memory_limit_below_initial_memory(stockade, wasm) -> None:
    proc = run_q(stockade, "--memory", "1K", str(wasm("exit7")))
    failure(proc, 116, "memory")


def test_output_flood(stockade, wasm) -> None:
    proc = run_q(stockade, "--max-output", "1M", str(wasm("flood")))
    failure(proc, 116, "limit exceeded", "output")
    assert len(proc.stdout) == 1024 * 1024
    assert set(proc.stdout) == {ord("x")}


# --------------------------------------------------------------------------- Keep death


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry))
    return found


def _keep_of(cli_pid: int) -> int:
    for pid in _children(cli_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"stockade.keep" in cmdline:
            return pid
    raise AssertionError(f"no Keep process among the children of {cli_pid}")


def test_keep_killed_mid_run(state_dir: Path, wasm, tmp_path: Path) -> None:
    canary = "canary-" + secrets.token_hex(16)
    (tmp_path / "secret").write_text(canary)
    cmd = [
        sys.executable,
        "-m",
        "stockade",
        "run",
        "--allow-sim",
        "-q",
        "--timeout",
        "60",
        "--secret",
        f"token=@{tmp_path / 'secret'}",
        str(wasm("sleep")),
    ]
    env = {**os.environ, "STOCKADE_STATE_DIR": str(state_dir), "TMPDIR": str(tmp_path)}
    before = keep_logs(state_dir)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    started = threading.Event()
    out = bytearray()

    def read() -> None:
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 4096):
            out.extend(chunk)
            if b"sleeping\n" in out:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(30), "the workload never started"
        keep = _keep_of(proc.pid)
        # The secret travelled inside TLS: not in the Keep's arguments or environment.
        assert canary.encode() not in Path(f"/proc/{keep}/cmdline").read_bytes()
        assert canary.encode() not in Path(f"/proc/{keep}/environ").read_bytes()
        # While it runs, the Keep's scratch directory exists (so the check
        # below that it is gone looks in the right place).
        (log,) = keep_logs(state_dir) - before
        keep_id = log.name.removeprefix("keep-").removesuffix(".log")
        live = [p for base in (Path("/dev/shm"), tmp_path) for p in base.glob(f"stockade-keep-{keep_id}-*")]
        assert len(live) == 1, live
        os.kill(keep, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=15)
        elapsed = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    stderr = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    result = subprocess.CompletedProcess(cmd, proc.returncode, bytes(out), stderr)
    failure(result, 115, "Keep died", "closed the connection")
    assert elapsed < 5, f"the CLI noticed the Keep's death only after {elapsed:.1f}s"
    # The Keep could not clean up after SIGKILL; the loader must have.
    assert_scratch_removed(state_dir, before, tmp_path)
    assert_not_in_state_dir(state_dir, canary)
