"""End to end: ``stockade run`` through the real CLI, a sim Keep and its sim PSP.

Every test starts real processes (``python -m stockade run ...``): the CLI,
the Keep runtime and the sim PSP, with the session's sim chip (conftest's
``state_dir``). Small test modules are WAT sources in tests/data/wasm/,
compiled with ``wasmtime.wat2wasm`` at test time (conftest's ``wasm``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HELLO = EXAMPLES / "hello" / "hello.wasm"
WORDCOUNT = EXAMPLES / "wordcount" / "wordcount.wasm"
SAMPLE = EXAMPLES / "wordcount" / "sample.txt"

pytestmark = pytest.mark.slow


def sha256_line(guest_path: str, data: bytes) -> str:
    """The wordcount line for one input (see examples/README.md)."""
    lines = data.count(b"\n")
    words = len(data.split())
    return (
        f"{guest_path}: lines={lines} words={words} bytes={len(data)} "
        f"sha256={hashlib.sha256(data).hexdigest()}"
    )


#: With --quiet, the one line stockade still prints on stderr for a sim Keep.
SIM_LABEL = b"stockade: sim Keep: NO HARDWARE PROTECTION\n"


def workload_stderr(proc: subprocess.CompletedProcess[bytes]) -> bytes:
    """stderr of a --quiet run without stockade's sim label (which must come first)."""
    assert proc.stderr.startswith(SIM_LABEL), proc.stderr
    return proc.stderr[len(SIM_LABEL) :]


def no_traceback(proc: subprocess.CompletedProcess[bytes]) -> None:
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    assert b"Traceback" not in proc.stdout


def ok(proc: subprocess.CompletedProcess[bytes], code: int = 0) -> None:
    no_traceback(proc)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)


def every_file_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()]


# --------------------------------------------------------------------------- happy path


def test_hello_alice(stockade) -> None:
    proc = stockade("run", "--allow-sim", str(HELLO), "--", "Alice")
    ok(proc)
    assert proc.stdout == b"Hello, Alice!\narguments: 1\n"
    err = proc.stderr.decode()
    assert "stockade: Keep attested and verified" in err
    assert "NO HARDWARE PROTECTION" in err
    assert re.search(r"measurement\s+[0-9a-f]{96}\n", err), err
    assert "freshness" in err
    assert "report binds this session's nonce and the Keep's TLS key" in err
    assert "measurement pinned to this installation's Keep runtime" in err


def test_hello_quiet_prints_no_summary(stockade) -> None:
    proc = stockade("run", "--allow-sim", "-q", str(HELLO), "--", "Alice")
    ok(proc)
    assert proc.stdout == b"Hello, Alice!\narguments: 1\n"
    # Only the sim label survives --quiet.
    assert proc.stderr == SIM_LABEL


def test_hello_json(stockade) -> None:
    proc = stockade("run", "--allow-sim", "--json", str(HELLO), "--", "Alice")
    ok(proc)
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 0
    assert doc["exit_code_source"] == "workload"
    assert doc["stdout"] == "Hello, Alice!\narguments: 1\n"
    assert doc["stderr"] == ""
    assert doc["workload_sha256"] == hashlib.sha256(HELLO.read_bytes()).hexdigest()
    att = doc["attestation"]
    assert att["platform"] == "sim"
    assert att["hardware_protection"] is False
    assert re.fullmatch(r"[0-9a-f]{96}", att["measurement"]), att["measurement"]
    assert att["debug"] is False
    assert any("freshness" in c for c in att["checks"])
    assert any("policy" in c and "accepted" in c for c in att["checks"])
    assert doc["policy"]["accepted"] is True
    timing = doc["timing_ms"]
    assert isinstance(timing, dict)
    assert {"attest_and_handshake", "verify", "run"} <= set(timing)
    assert all(isinstance(v, int | float) and v >= 0 for v in timing.values())
    # The run's CPU time (the thread running the Wasm code) fits in its wall time.
    assert timing["keep_run_cpu"] <= timing["keep_run"] + 1.0
    # --json: nothing but the document on stdout, no summary on stderr.
    assert b"NO HARDWARE PROTECTION" not in proc.stderr


def test_json_error_document(stockade) -> None:
    proc = stockade("run", "--json", str(HELLO))
    no_traceback(proc)
    assert proc.returncode == 112
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == doc["error"]["exit_code"] == 112
    assert doc["exit_code_source"] == "stockade"
    assert doc["error"]["type"] == "policy-rejected"
    assert "--allow-sim" in doc["error"]["detail"]


def test_env_reaches_workload(stockade) -> None:
    proc = stockade("run", "--allow-sim", "-q", "--env", "GREETING=hi", str(HELLO), "--", "Bob")
    ok(proc)
    assert proc.stdout == b"Hello, Bob!\narguments: 1\nGREETING: hi\n"


def test_argv_and_environment_are_exact(stockade, wasm) -> None:
    # argv[0] is always "main.wasm" in the Keep; the rest arrive byte for byte,
    # options after "--" included; the environment is exactly the --env values
    # (sorted by key, "=" allowed in values), nothing from the host.
    proc = stockade(
        "run",
        "--allow-sim",
        "-q",
        "--env",
        "B=2",
        "--env",
        "A=x=y",
        "--env",
        "EMPTY=",
        "--env",
        "U=é ü",
        str(wasm("argv_env")),
        "--",
        "",
        "a b",
        'q"uote',
        "ünï",
        "-x",
        "--help",
        env={"HOST_ONLY": "must-not-leak"},
    )
    ok(proc)
    assert proc.stdout.decode() == (
        'main.wasm\n\na b\nq"uote\nünï\n-x\n--help\n--\nA=x=y\nB=2\nEMPTY=\nU=é ü\n'
    )


def test_host_environment_is_not_inherited(stockade) -> None:
    # hello prints GREETING only when set: a host variable must not leak in.
    proc = stockade("run", "--allow-sim", "-q", str(HELLO), env={"GREETING": "from-the-host"})
    ok(proc)
    assert proc.stdout == b"Hello, world!\narguments: 0\n"


def test_wordcount_file(stockade) -> None:
    proc = stockade(
        "run",
        "--allow-sim",
        "-q",
        "--file",
        f"{SAMPLE}:/data/sample.txt",
        str(WORDCOUNT),
        "--",
        "/data/sample.txt",
    )
    ok(proc)
    out = proc.stdout.decode()
    assert out.splitlines()[0] == sha256_line("/data/sample.txt", SAMPLE.read_bytes())
    # Values documented in examples/README.md.
    assert out.startswith(
        "/data/sample.txt: lines=12 words=131 bytes=743 "
        "sha256=6bd386a8718637c6725ac732d367b0b4af33dc113cae50fb8ba1e7d385f688e8\n"
        "top words:\n     20 the\n"
    )


def test_wordcount_stdin_file(stockade) -> None:
    proc = stockade("run", "--allow-sim", "-q", "--stdin", str(SAMPLE), str(WORDCOUNT))
    ok(proc)
    first = proc.stdout.decode().splitlines()[0]
    assert first.endswith(f"sha256={hashlib.sha256(SAMPLE.read_bytes()).hexdigest()}")
    assert "lines=12 words=131 bytes=743" in first


def test_wordcount_stdin_pipe(stockade) -> None:
    data = b"piped input\nfrom the deployer's stdin\n" * 100 + bytes(range(256))
    proc = stockade("run", "--allow-sim", "-q", "--stdin", "-", str(WORDCOUNT), "--", "-", input=data)
    ok(proc)
    first = proc.stdout.decode().splitlines()[0]
    assert f"bytes={len(data)} sha256={hashlib.sha256(data).hexdigest()}" in first


def test_directory_as_root(stockade, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    files = {
        "a.txt": b"alpha beta\n",
        "sub/b.txt": b"gamma\ndelta epsilon\n",
        "sub/deeper/c.bin": secrets.token_bytes(3000),
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    guest = ["/" + rel for rel in files]
    proc = stockade("run", "--allow-sim", "-q", "--file", f"{root}:/", str(WORDCOUNT), "--", *guest)
    ok(proc)
    lines = proc.stdout.decode().splitlines()
    for i, (rel, data) in enumerate(files.items()):
        assert lines[i] == sha256_line("/" + rel, data)


def test_directory_below_root(stockade, tmp_path: Path, wasm) -> None:
    root = tmp_path / "inputs"
    root.mkdir()
    (root / "x.txt").write_bytes(b"one two three\n")
    proc = stockade("run", "--allow-sim", "-q", "--file", f"{root}:/in", str(WORDCOUNT), "--", "/in/x.txt")
    ok(proc)
    assert proc.stdout.decode().splitlines()[0] == sha256_line("/in/x.txt", b"one two three\n")


def test_preopens(stockade, tmp_path: Path, wasm) -> None:
    """Files appear under a preopened "/", secrets under "/secrets"; nothing else."""
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "s").write_bytes(b"y")
    probe = str(wasm("preopens"))
    bare = stockade("run", "--allow-sim", "-q", probe)
    ok(bare)
    assert bare.stdout == b""
    both = stockade(
        "run",
        "--allow-sim",
        "-q",
        "--file",
        f"{tmp_path / 'f'}:/f",
        "--secret",
        f"k=@{tmp_path / 's'}",
        probe,
    )
    ok(both)
    assert both.stdout == b"/\n/secrets\n"


def test_empty_directory_as_root_is_still_preopened(stockade, tmp_path: Path, wasm) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = stockade("run", "--allow-sim", "-q", "--file", f"{empty}:/", str(wasm("preopens")))
    ok(proc)
    assert proc.stdout == b"/\n"


def test_workload_exit_code_passes_through(stockade, wasm) -> None:
    proc = stockade("run", "--allow-sim", "-q", str(wasm("exit7")))
    ok(proc, 7)
    assert proc.stdout == b""
    assert workload_stderr(proc) == b""


def test_workload_exit_code_in_json(stockade, wasm) -> None:
    proc = stockade("run", "--allow-sim", "--json", str(wasm("exit7")))
    ok(proc, 7)
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 7
    assert doc["exit_code_source"] == "workload"


def test_workload_stderr_is_forwarded(stockade) -> None:
    proc = stockade("run", "--allow-sim", "-q", str(WORDCOUNT), "--", "/no/such/file")
    ok(proc, 1)
    assert proc.stdout == b""
    assert workload_stderr(proc).startswith(b"wordcount: /no/such/file: cannot open:")


# --------------------------------------------------------------------------- secrets


@pytest.fixture
def canary(tmp_path: Path) -> tuple[str, Path]:
    value = "canary-" + secrets.token_hex(16)
    path = tmp_path / "token.txt"
    path.write_text(value)
    return value, path


def test_secret_readable_at_secrets_dir(stockade, state_dir: Path, canary, tmp_path: Path) -> None:
    value, path = canary
    before = set((state_dir / "logs").glob("keep-*.log"))
    proc = stockade(
        "run",
        "--allow-sim",
        "--secret",
        f"token=@{path}",
        str(WORDCOUNT),
        "--",
        "/secrets/token",
        env={"TMPDIR": str(tmp_path)},
    )
    ok(proc)
    assert proc.stdout.decode().splitlines()[0] == sha256_line("/secrets/token", value.encode())
    # The value never reaches stockade's own messages (only the workload printed it).
    assert value.encode() not in proc.stderr
    # Nothing the Keep wrote survives the run: its scratch directory is gone ...
    (log,) = set((state_dir / "logs").glob("keep-*.log")) - before
    keep_id = log.name.removeprefix("keep-").removesuffix(".log")
    for base in (Path("/dev/shm"), tmp_path):
        assert not list(base.glob(f"stockade-keep-{keep_id}-*")), f"scratch left in {base}"
    # ... and neither the logs nor anything else in the state directory holds it.
    for file in every_file_under(state_dir):
        assert value.encode() not in file.read_bytes(), f"secret found in {file}"


def test_secrets_are_read_only_and_root_is_writable(stockade, canary, wasm) -> None:
    # create.wasm exits with the WASI errno of creating a file in the first preopen (fd 3).
    _, path = canary
    probe = str(wasm("create"))
    secret_only = stockade("run", "--allow-sim", "-q", "--secret", f"token=@{path}", probe)
    no_traceback(secret_only)
    assert secret_only.returncode == 63, "expected EPERM (63) creating a file in /secrets"
    files_only = stockade("run", "--allow-sim", "-q", "--file", f"{path}:/in.txt", probe)
    ok(files_only, 0)


def test_secret_literal_value_is_refused(stockade, state_dir: Path) -> None:
    value = "literal-" + secrets.token_hex(16)
    proc = stockade("run", "--allow-sim", "--secret", f"token={value}", str(HELLO))
    no_traceback(proc)
    assert proc.returncode == 2
    assert b"NAME=@FILE" in proc.stderr
    assert proc.stderr.count(b"\n") == 1
    assert value.encode() not in proc.stderr
    assert value.encode() not in proc.stdout
    for file in every_file_under(state_dir):
        assert value.encode() not in file.read_bytes(), f"secret found in {file}"


# --------------------------------------------------------------------------- streaming


class StreamReader:
    """Reads a pipe in a thread, recording when each chunk arrived."""

    def __init__(self, fd: int) -> None:
        self.chunks: list[tuple[float, bytes]] = []
        self._fd = fd
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            data = os.read(self._fd, 65536)
            if not data:
                return
            self.chunks.append((time.monotonic(), data))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def data(self) -> bytes:
        return b"".join(d for _, d in self.chunks)

    def first_time(self, needle: bytes) -> float:
        seen = b""
        for t, d in self.chunks:
            seen += d
            if needle in seen:
                return t
        raise AssertionError(f"{needle!r} never arrived; got {seen!r}")


def test_output_is_streamed_while_workload_runs(state_dir: Path, wasm) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockade", "run", "--allow-sim", "-q", str(wasm("stream"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "STOCKADE_STATE_DIR": str(state_dir)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    reader = StreamReader(proc.stdout.fileno())
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    exited = time.monotonic()
    reader.join(5)
    stderr = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert b"Traceback" not in stderr
    assert proc.returncode == 0, stderr
    assert reader.data == b"first\nsecond\n"
    first, second = reader.first_time(b"first\n"), reader.first_time(b"second\n")
    # The workload spins 1.5 s between its two writes.
    assert exited - first >= 0.5, f"'first' arrived only {exited - first:.3f}s before exit"
    assert second - first >= 1.0, f"'second' arrived {second - first:.3f}s after 'first'"
