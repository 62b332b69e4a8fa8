"""The warm path of ``stockade run`` (ADR 0022): a sim Keep forked by the
per-user warm fork server (stockade.host.warm).

Every test runs the real CLI in a subprocess with a private runtime
directory (XDG_RUNTIME_DIR) and stops the server it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.conftest import EXAMPLES

from stockade.host import warm

HELLO = EXAMPLES / "hello" / "hello.wasm"


class Warm:
    """A private runtime directory and the CLI run with the warm path on."""

    def __init__(self, runtime: Path, state_dir: Path) -> None:
        self.runtime = runtime
        self.state_dir = state_dir
        self.env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(runtime),
            "STOCKADE_STATE_DIR": str(state_dir),
            "STOCKADE_WARM": "1",
        }

    @property
    def dir(self) -> Path:
        return self.runtime / "stockade"

    @property
    def paths(self) -> dict[str, Path]:
        return warm.paths(self.dir, warm.server_name())

    def pid(self) -> int | None:
        return warm.read_pid(self.dir, warm.server_name())

    def log(self) -> str:
        return self.paths["log"].read_text() if self.paths["log"].exists() else ""

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "stockade", "run", "--allow-sim", *args],
            capture_output=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            check=False,
        )

    def json_run(self, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
        proc = self.run("--json", *args, env=env)
        assert proc.returncode in (0, 7), proc.stderr.decode()
        doc: dict[str, object] = json.loads(proc.stdout)
        return doc

    def stop(self) -> None:
        pid = self.pid()
        if pid is None or not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, 15):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _wait_gone(pid, 5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


@pytest.fixture
def warm_env(state_dir: Path) -> Iterator[Warm]:
    runtime = Path(tempfile.mkdtemp(prefix="stockade-xdg-"))  # 0700
    env = Warm(runtime, state_dir)
    try:
        yield env
    finally:
        env.stop()
        import shutil

        shutil.rmtree(runtime, ignore_errors=True)


def test_the_warm_path_is_used_reported_and_gives_what_the_cold_one_gives(warm_env: Warm) -> None:
    cold = warm_env.json_run("--cold", str(HELLO), "--", "Alice")
    assert cold["keep_start"] == "cold"
    assert warm_env.pid() is None  # --cold starts no server
    first = warm_env.json_run(str(HELLO), "--", "Alice")
    pid = warm_env.pid()
    assert pid is not None and _alive(pid)
    second = warm_env.json_run(str(HELLO), "--", "Alice")
    assert warm_env.pid() == pid  # the same server, reused
    for doc in (first, second):
        assert doc["keep_start"] == "warm"
        for key in ("stdout", "stderr", "exit_code", "workload_sha256", "workload"):
            assert doc[key] == cold[key], key
        attestation = doc["attestation"]
        assert isinstance(attestation, dict) and isinstance(cold["attestation"], dict)
        assert attestation["measurement"] == cold["attestation"]["measurement"]
        assert attestation["platform"] == "sim"
    assert first["stdout"] == "Hello, Alice!\narguments: 1\n" or "Hello, Alice!" in str(first["stdout"])
    # Text mode: the summary says which path ran, and why not when cold.
    text = warm_env.run(str(HELLO))
    assert text.returncode == 0
    assert "keep start   warm: forked by this user's fork server" in text.stderr.decode()
    assert f"pid {pid}, already running" in text.stderr.decode()
    assert (
        "keep start   cold: a fresh Keep process (--cold)"
        in warm_env.run("--cold", str(HELLO)).stderr.decode()
    )
    off = warm_env.run(str(HELLO), env={"STOCKADE_WARM": "0"})
    assert "keep start   cold: a fresh Keep process (STOCKADE_WARM=0)" in off.stderr.decode()


def test_the_warm_client_imports_no_keep_loader_or_wasmtime(warm_env: Warm) -> None:
    """The client of a warm run loads neither the Keep runtime (wasmtime),
    nor the loader, nor the in-process sim PSP, nor the launch measurement
    (it hashes nothing): the server does that."""
    assert warm_env.run("-q", str(HELLO)).returncode == 0  # the server is up
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "stockade", "run", "--allow-sim", str(HELLO)],
        capture_output=True,
        timeout=120,
        env=warm_env.env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    err = proc.stderr.decode()
    assert "keep start   warm" in err
    imported = {
        line.rsplit("|", 1)[1].strip() for line in err.splitlines() if line.startswith("import time:")
    }
    assert "stockade.host.warm" in imported
    for name in (
        "wasmtime",
        "stockade.keep",
        "stockade.host.loader",
        "stockade.host.forkserver",
        "stockade.evidence.sim.local",
        "stockade.measure.launch",
    ):
        assert name not in imported, name


def test_exit_status_and_trap_are_the_cold_ones(warm_env: Warm, wasm: Callable[[str], Path]) -> None:
    for name in ("exit7", "trap"):
        module = str(wasm(name))
        cold = warm_env.run("--cold", "-q", module)
        hot = warm_env.run("-q", module)
        assert hot.returncode == cold.returncode != 0, (name, hot.stderr, cold.stderr)
        assert hot.stdout == cold.stdout


def test_concurrent_first_runs_share_one_server(warm_env: Warm) -> None:
    """Three runs start at once with no server: one server wins the lock,
    every run is served warm by it, and each gets its own Keep."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "stockade", "run", "--allow-sim", "--json", str(HELLO), "--", f"n{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=warm_env.env,
        )
        for i in range(3)
    ]
    docs = []
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        docs.append(json.loads(out))
        assert f"Hello, n{i}!" in docs[-1]["stdout"]
    assert [d["keep_start"] for d in docs] == ["warm"] * 3
    log = warm_env.log()
    assert log.count("serving ") == 1, log  # one server
    assert len({line.split(" forked")[0] for line in log.splitlines() if " forked, pid " in line}) == 3


def test_the_server_exits_when_idle(warm_env: Warm) -> None:
    proc = warm_env.run("-q", str(HELLO), env={"STOCKADE_WARM_IDLE": "1"})
    assert proc.returncode == 0, proc.stderr.decode()
    pid = warm_env.pid()
    assert pid is not None
    assert _wait_gone(pid, 20), "the warm server did not exit when idle"
    assert not warm_env.paths["socket"].exists()
    assert "idle: exiting" in warm_env.log()


def test_a_changed_runtime_file_is_measured_not_the_stale_zygote(warm_env: Warm) -> None:
    """A file the Keep may load changes while the server runs: the next Keep
    reports the measurement of the files now installed (the server restarted
    its zygotes), not the one its zygote was started with."""
    from stockade.measure import launch

    before = warm_env.json_run(str(HELLO))
    pid = warm_env.pid()
    assert before["keep_start"] == "warm"
    old = launch.keep_measurement()
    assert before["attestation"]["measurement"] == old.hex()  # type: ignore[index]
    # usercustomize is always in the measured set (ADR 0013), absent here;
    # with -I, site never imports it. A comment only, removed at once.
    site = next(p for p in launch.keep_sys_path() if p.endswith("site-packages"))
    planted = Path(site, "usercustomize.py")
    assert not planted.exists()
    try:
        planted.write_text("# planted by tests/test_warm.py (removed by it)\n")
        launch.clear_cache()
        new = launch.keep_measurement()
        assert new != old
        after = warm_env.json_run(str(HELLO))
    finally:
        planted.unlink()
    assert after["keep_start"] == "warm" and warm_env.pid() == pid
    assert after["attestation"]["measurement"] == new.hex()  # type: ignore[index]
    assert "Keep runtime changed since its zygotes started" in warm_env.log()
    again = warm_env.json_run(str(HELLO))
    assert again["attestation"]["measurement"] == old.hex()  # type: ignore[index]


def test_a_dead_fork_server_is_a_keep_died_error_and_the_next_run_starts_one(
    warm_env: Warm, wasm: Callable[[str], Path]
) -> None:
    assert warm_env.run("-q", str(HELLO)).returncode == 0
    pid = warm_env.pid()
    assert pid is not None
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockade", "run", "--allow-sim", "-q", str(wasm("sleep"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=warm_env.env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"sleeping\n"  # the Keep runs the workload
        os.killpg(pid, signal.SIGKILL)  # the server, its zygotes and (PR_SET_PDEATHSIG) their Keeps
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 115, err.decode()
    assert "Keep" in err.decode() and "Traceback" not in err.decode()
    # The stale socket is noticed (nobody accepts) and a new server started.
    again = warm_env.run(str(HELLO))
    assert again.returncode == 0, again.stderr.decode()
    assert "started it for this run" in again.stderr.decode()
    assert warm_env.pid() not in (None, pid)


def test_a_killed_warm_keep_is_a_keep_died_error_with_its_status(
    warm_env: Warm, wasm: Callable[[str], Path]
) -> None:
    """The warm counterpart of test_run_bad_input's test_keep_killed_mid_run:
    the Keep's exit status reaches the client through the server."""
    assert warm_env.run("-q", str(HELLO)).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockade", "run", "--allow-sim", "-q", str(wasm("sleep"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=warm_env.env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"sleeping\n"
        keep_pid = int(warm_env.log().rsplit(" forked, pid ", 1)[1].split()[0])
        os.kill(keep_pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 115, err.decode()
    text = err.decode()
    assert f"(Keep process exit status {-signal.SIGKILL})" in text and "Keep log: " in text, text
    assert "Traceback" not in text


def test_a_killed_client_ends_its_warm_keep(warm_env: Warm, wasm: Callable[[str], Path]) -> None:
    assert warm_env.run("-q", str(HELLO)).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockade", "run", "--allow-sim", "-q", str(wasm("sleep"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=warm_env.env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"sleeping\n"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while warm_env.log().count(" ended (status") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    # The sleeping Keep (30 s) was killed after the grace period.
    assert f"ended (status {-signal.SIGKILL})" in warm_env.log().rsplit("forked", 1)[1]
    pid = warm_env.pid()
    assert pid is not None
    # Only the two zygotes are left: no Keep, no PSP.
    grandchildren = [c for z in _children(pid) for c in _children(z)]
    assert grandchildren == [], grandchildren


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_another_user_is_refused(warm_env: Warm) -> None:
    assert warm_env.run("-q", str(HELLO)).returncode == 0
    # Open the way to the socket (as a misconfigured host might): the
    # server's SO_PEERCRED check must still refuse the other user.
    for path in (warm_env.runtime, warm_env.dir):
        path.chmod(0o711)
    sock_path = str(warm_env.paths["socket"])
    os.chmod(sock_path, 0o777)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.settimeout(20)
            sock.connect(sock_path)
            # The server answers before reading anything from a refused peer.
            data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 1)
            os.write(write, json.dumps({"reply": data.decode(), "fds": len(fds)}).encode())
        except BaseException as exc:
            os.write(write, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        result = json.loads(f.read())
    os.waitpid(child, 0)
    assert result.get("fds") == 0, result
    reply = json.loads(result["reply"])
    assert reply["op"] == "error" and "uid 65534" in reply["detail"]
    assert "refused a connection from uid 65534" in warm_env.log()


def test_secrets_never_reach_the_warm_server(warm_env: Warm, tmp_path: Path) -> None:
    canary = "stockade-warm-canary-" + os.urandom(8).hex()
    secret = tmp_path / "token"
    secret.write_text(canary)
    proc = warm_env.run(
        "--secret",
        f"token=@{secret}",
        "--env",
        f"GREETING={canary}",
        str(HELLO),
        env={"STOCKADE_TEST_CANARY": canary},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert "keep start   warm" in proc.stderr.decode()
    pid = warm_env.pid()
    assert pid is not None
    needle = canary.encode()
    for process in (pid, *_children(pid)):  # the server and its two zygotes
        for what in ("cmdline", "environ"):
            assert needle not in Path(f"/proc/{process}/{what}").read_bytes(), (process, what)
    for base in (warm_env.runtime, warm_env.state_dir / "logs"):
        for path in base.rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), path


def test_client_side_helpers_match_the_loader(tmp_path: Path) -> None:
    from stockade.commands import _warm
    from stockade.evidence.sim import local, tdx_chip
    from stockade.host.loader import SIM_FLAVOUR

    for backend, flavour in SIM_FLAVOUR.items():
        assert _warm.sim_flavour(backend) == flavour
    assert _warm.chip_ready(tmp_path, "snp") is local.chip_exists(tmp_path) is False
    assert _warm.chip_ready(tmp_path, "tdx") is tdx_chip.tdx_chip_exists(tmp_path) is False
    (tmp_path / "sim" / "chip").mkdir(parents=True)
    (tmp_path / "sim" / "chip" / "chip.json").write_text("{}")
    assert _warm.chip_ready(tmp_path, "snp") is local.chip_exists(tmp_path) is True
    assert _warm.chip_ready(tmp_path, "tdx") is tdx_chip.tdx_chip_exists(tmp_path) is False
    tdx_chip.tdx_dir(tmp_path).mkdir(parents=True)
    (tdx_chip.tdx_dir(tmp_path) / "chip.json").write_text("{}")
    assert _warm.chip_ready(tmp_path, "tdx") is tdx_chip.tdx_chip_exists(tmp_path) is True


def test_runtime_dir_must_be_private(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    assert warm.runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path)}) == tmp_path / "stockade"
    (tmp_path / "stockade").chmod(0o755)
    with pytest.raises(warm.WarmUnavailable, match="not a directory private to uid"):
        warm.runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path)})
    (tmp_path / "stockade").rmdir()
    (tmp_path / "stockade").symlink_to(tmp_path)
    with pytest.raises(warm.WarmUnavailable, match="not a directory private to uid"):
        warm.runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path)})


def test_opt_out_values() -> None:
    assert warm.wanted({}) and warm.wanted({"STOCKADE_WARM": "1"})
    for value in ("0", "no", "false", "OFF"):
        assert not warm.wanted({"STOCKADE_WARM": value})
    assert warm.idle_seconds({"STOCKADE_WARM_IDLE": "junk"}) == warm.DEFAULT_IDLE_S
    assert warm.idle_seconds({"STOCKADE_WARM_IDLE": "0"}) == 0.5


def test_the_deploy_client_imports_httpx_without_its_command_line() -> None:
    """`stockade deploy --host` imports httpx without ``httpx._main`` (which
    loads rich and pygments); httpx itself still works, and an explicit
    import of its command line still can be made."""
    code = (
        "import sys\n"
        "import stockade.cli, stockade.commands.remote, stockade.client.remote as r\n"
        "from stockade.client.deploy import deploy\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'pygments') or m == 'httpx._main')\n"
        "assert heavy == [], heavy\n"
        "assert r.httpx.Client is __import__('httpx').Client\n"
        "import httpx._main\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=False)
    assert proc.stdout == b"ok\n", proc.stderr.decode()


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"not json", "the fork server sent a malformed reply"),
        (b'{"op": "error", "detail": "busy"}', "the fork server refused: busy"),
        (b'{"op": "started", "keep_id": "x"}', "the fork server sent an unexpected reply"),
    ],
)
def test_a_broken_server_means_a_cold_run_that_says_why(warm_env: Warm, reply: bytes, reason: str) -> None:
    """Whatever listens on the socket and answers nonsense, the run falls
    back to a cold Keep before anything was sent to a Keep, and says why."""
    import threading

    warm_env.dir.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(warm_env.paths["socket"]))
    listener.listen(4)
    listener.settimeout(60)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(1 << 16)
                conn.send(reply)
                conn.recv(1 << 16)  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        proc = warm_env.run(str(HELLO), "--", "Bob")
    finally:
        listener.close()
        thread.join(10)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert b"Hello, Bob!" in proc.stdout
    assert f"keep start   cold: a fresh Keep process (warm fork server unavailable: {reason})" in err
    assert warm_env.pid() is None  # no server was started


def test_warm_keeps_use_the_sealed_compile_cache(warm_env: Warm, tmp_path: Path) -> None:
    """The warm server passes the client's compile cache to the Keeps it
    forks (ADR 0023): the second warm run loads the compiled module from it;
    --no-compile-cache reaches the forked Keep too."""
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    first = warm_env.json_run(str(HELLO), env=cache)
    second = warm_env.json_run(str(HELLO), env=cache)
    off = warm_env.json_run("--no-compile-cache", str(HELLO), env=cache)
    for doc in (first, second, off):
        assert str(doc["keep_start"]).startswith("warm"), doc["keep_start"]
        assert doc["stdout"] == "Hello, world!\narguments: 0\n"
    timings = [doc["timing_ms"] for doc in (first, second, off)]
    # absent: the Keep had no cache at all
    assert [t.get("keep_compile_cached") for t in timings] == [False, True, None]  # type: ignore[attr-defined]
    assert any((tmp_path / "cache" / "stockade" / "compile").rglob("*"))
