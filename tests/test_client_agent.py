"""The per-user client agent (ADR 0028): ``stockade run``/``deploy`` handed
by the launcher (stockade.launcher) to a pre-imported agent
(stockade.agent) that forks the normal CLI per command.

Every test runs the real launcher in a subprocess with a private runtime
directory (XDG_RUNTIME_DIR) and STOCKADE_AGENT=1 (the suite's conftest
turns the agent off), and stops every agent it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.conftest import EXAMPLES

from stockade import agent, launcher
from stockade.host import warm

HELLO = EXAMPLES / "hello" / "hello.wasm"


class AgentEnv:
    """A private runtime directory; the CLI run with the agent on."""

    def __init__(self, runtime: Path, state_dir: Path) -> None:
        self.runtime = runtime
        self.state_dir = state_dir
        self.env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(runtime),
            "STOCKADE_STATE_DIR": str(state_dir),
            "STOCKADE_AGENT": "1",
            "STOCKADE_AGENT_IDLE": "120",
            "STOCKADE_WARM": "0",
        }
        self.dir = runtime / "stockade"
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.paths = {
            k: Path(v) for k, v in launcher.agent_paths(str(self.dir), launcher.server_name()).items()
        }
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, idle: float = 120) -> int:
        """Start an agent as the launcher does and wait until it serves."""
        log = open(self.paths["log"], "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [
                *(sys.executable, "-E", "-P", "-m", "stockade.agent"),
                *("--dir", str(self.dir), "--name", launcher.server_name(), "--idle", str(idle)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={k: v for k, v in os.environ.items() if k in launcher.AGENT_ENV},
            start_new_session=True,
        )
        log.close()
        self.started.append(proc)
        assert self.wait_serving(120), self.log()
        return proc.pid

    def wait_serving(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.paths["socket"].exists():
                return True
            time.sleep(0.05)
        return False

    def pid(self) -> int | None:
        try:
            return int(self.paths["lock"].read_text().strip() or "0") or None
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        return self.paths["log"].read_text() if self.paths["log"].exists() else ""

    def served(self) -> int:
        """How many commands the agent(s) started so far."""
        return len(re.findall(r"\) started$", self.log(), re.MULTILINE))

    def stockade(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "stockade", *args],
            capture_output=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            check=False,
        )

    def stop(self) -> None:
        pids = {p.pid for p in self.started}
        if (pid := self.pid()) is not None:
            pids.add(pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in pids:
            if not _wait_gone(pid, 15):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


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


@pytest.fixture
def agent_env(state_dir: Path) -> Iterator[AgentEnv]:
    runtime = Path(tempfile.mkdtemp(prefix="stockade-xdg-"))  # 0700
    env = AgentEnv(runtime, state_dir)
    try:
        yield env
    finally:
        env.stop()
        shutil.rmtree(runtime, ignore_errors=True)


def _normalized(text: bytes) -> str:
    """stderr without what differs between any two runs (digests, times, ids)."""
    out = re.sub(r"[0-9a-f]{8,}…?", "H", text.decode())
    return re.sub(r"\d+(\.\d+)?", "N", out)


# == same results through the agent as in-process ==========================================================


def _cases(wasm: Callable[[str], Path]) -> list[tuple[str, list[str]]]:
    zero = "0" * 96
    return [
        ("success", ["run", "--allow-sim", str(HELLO), "--", "Alice"]),
        ("workload exit code", ["run", "--allow-sim", "-q", str(wasm("exit7"))]),
        ("trap", ["run", "--allow-sim", "-q", str(wasm("trap"))]),
        ("sim refused by the default policy", ["run", "-q", str(HELLO)]),
        ("wrong measurement", ["run", "--allow-sim", "-q", "--expect-measurement", zero, str(HELLO)]),
        ("usage error", ["run", "--allow-sim", "--no-such-option", str(HELLO)]),
        ("missing module", ["run", "--allow-sim", "-q", "/nonexistent/x.wasm"]),
        ("json", ["run", "--allow-sim", "--json", str(HELLO), "--", "Bob"]),
        ("json error", ["run", "--json", str(HELLO)]),
    ]


def test_same_exit_codes_stdout_and_stderr_via_the_agent_and_in_process(
    agent_env: AgentEnv, wasm: Callable[[str], Path]
) -> None:
    agent_env.start()
    for name, args in _cases(wasm):
        before = agent_env.served()
        via = agent_env.stockade(*args)
        assert agent_env.served() == before + 1, (name, agent_env.log())
        here = agent_env.stockade(*args, env={"STOCKADE_AGENT": "0"})
        assert agent_env.served() == before + 1, name
        assert via.returncode == here.returncode, (name, via.stderr.decode(), here.stderr.decode())
        if "json" in name:
            a, b = json.loads(via.stdout), json.loads(here.stdout)
            for doc in (a, b):
                doc.pop("timing_ms", None)
            # The same document but for its nonces, times and keys.
            assert _normalized(json.dumps(a, sort_keys=True).encode()) == _normalized(
                json.dumps(b, sort_keys=True).encode()
            ), name
        else:
            assert via.stdout == here.stdout, name
        assert _normalized(via.stderr) == _normalized(here.stderr), name
    codes = {name: agent_env.stockade(*args).returncode for name, args in _cases(wasm)[:6]}
    assert codes == {
        "success": 0,
        "workload exit code": 7,
        "trap": 134,
        "sim refused by the default policy": 112,
        "wrong measurement": 112,
        "usage error": 2,
    }


def test_deploy_host_gives_the_same_results_via_the_agent_and_in_process(
    agent_env: AgentEnv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from manager_support import running_server

    agent_env.start()
    with running_server(agent_env.state_dir, tmp_path_factory, quota=4) as server:
        sim_root = str(server.state / "sim" / "chip" / "ark.der")
        base = ["deploy", "--host", server.url, "--token-file", str(server.token_file)]
        bad_token = tmp_path_factory.mktemp("token") / "bad"
        bad_token.write_text("not-a-token\n")
        cases = {
            "success": [*base, "--sim-root", sim_root, "--allow-sim", "--json", str(HELLO), "--", "Dee"],
            "policy refusal": [*base, "--sim-root", sim_root, "-q", str(HELLO)],
            "no sim root": [*base, "--allow-sim", str(HELLO)],
            "bad token": [
                *base[:3],
                "--token-file",
                str(bad_token),
                "--sim-root",
                sim_root,
                "--allow-sim",
                str(HELLO),
            ],
        }
        for name, args in cases.items():
            before = agent_env.served()
            via = agent_env.stockade(*args)
            assert agent_env.served() == before + 1, name
            here = agent_env.stockade(*args, env={"STOCKADE_AGENT": "0"})
            assert via.returncode == here.returncode, (name, via.stderr.decode(), here.stderr.decode())
            if name == "success":  # the same document but for timings, nonces, keys, ids
                a, b = json.loads(via.stdout), json.loads(here.stdout)
                a.pop("timing_ms"), b.pop("timing_ms")
                assert _normalized(json.dumps(a).encode()) == _normalized(json.dumps(b).encode())
            else:
                assert via.stdout == here.stdout, name
            assert _normalized(via.stderr) == _normalized(here.stderr), name
            if name == "success":
                assert json.loads(via.stdout)["stdout"] == "Hello, Dee!\narguments: 1\n"
        assert [agent_env.stockade(*a).returncode for a in cases.values()] == [0, 112, 2, 1]


def test_verbose_says_which_way_the_command_ran(agent_env: AgentEnv) -> None:
    proc = agent_env.stockade("-v", "run", "--allow-sim", "-q", str(HELLO))
    assert proc.returncode == 0
    assert proc.stderr.decode().splitlines()[0] == (
        "stockade: running in this process, not the client agent: no client agent runs"
    )
    agent_env.start()
    proc = agent_env.stockade("-v", "run", "--allow-sim", "-q", str(HELLO))
    assert proc.returncode == 0 and proc.stdout.startswith(b"Hello")
    first = proc.stderr.decode().splitlines()[0]
    assert re.match(r"stockade: running in a child \(pid \d+\) of this user's client agent$", first), first
    off = agent_env.stockade("-v", "run", "--allow-sim", "-q", str(HELLO), env={"STOCKADE_AGENT": "off"})
    assert off.stderr.decode().startswith(
        "stockade: running in this process, not the client agent: STOCKADE_AGENT=0"
    )
    py = agent_env.stockade("-v", "run", "--allow-sim", "-q", str(HELLO), env={"PYTHONHASHSEED": "1"})
    assert py.stderr.decode().startswith(
        "stockade: running in this process, not the client agent: PYTHONHASHSEED"
    )
    # Other commands always run in this process; without -v nothing is said.
    before = agent_env.served()
    assert agent_env.stockade("policy", "--help").returncode == 0
    assert agent_env.served() == before


def test_the_working_directory_stdin_and_umask_are_the_launchers(agent_env: AgentEnv, tmp_path: Path) -> None:
    agent_env.start()
    shutil.copy(HELLO, tmp_path / "rel.wasm")
    proc = subprocess.run(
        [sys.executable, "-m", "stockade", "run", "--allow-sim", "-q", "rel.wasm", "--", "X"],
        capture_output=True,
        cwd=tmp_path,
        env=agent_env.env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.startswith(b"Hello, X!")
    assert "run (pid" in agent_env.log()


# == signals and death ===================================================================================


def _sleeping(
    agent_env: AgentEnv, wasm: Callable[[str], Path], *extra: str
) -> tuple[subprocess.Popen[bytes], int]:
    """A launcher running the 30 s sleep workload through the agent, and the child's pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockade", "-v", "run", "--allow-sim", "-q", *extra, str(wasm("sleep"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=agent_env.env,
        # A process group of its own in this session, as a shell's job: the
        # kernel discards SIGTSTP sent to a process of an orphaned group
        # (POSIX, "orphaned process group"), which pytest's own group may be
        # when it was started in the background by a parent that ended.
        process_group=0,
    )
    assert proc.stderr is not None and proc.stdout is not None
    line = proc.stderr.readline().decode()
    match = re.match(r"stockade: running in a child \(pid (\d+)\)", line)
    assert match, line
    assert proc.stdout.readline() == b"sleeping\n"
    return proc, int(match.group(1))


def test_ctrl_c_on_the_launcher_interrupts_the_command_exit_130(
    agent_env: AgentEnv, wasm: Callable[[str], Path]
) -> None:
    agent_env.start()
    proc, child = _sleeping(agent_env, wasm)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert b"stockade: interrupted" in err
    assert _wait_gone(child, 10)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_state(pid: int, stopped: bool, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (_state(pid) == "T") == stopped:
            return True
        time.sleep(0.02)
    return False


def test_ctrl_z_stops_the_command_and_fg_continues_it(
    agent_env: AgentEnv, wasm: Callable[[str], Path]
) -> None:
    agent_env.start()
    proc, child = _sleeping(agent_env, wasm)
    try:
        proc.send_signal(signal.SIGTSTP)
        assert _wait_state(proc.pid, stopped=True) and _wait_state(child, stopped=True)
        proc.send_signal(signal.SIGCONT)
        assert _wait_state(proc.pid, stopped=False) and _wait_state(child, stopped=False)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 130


def test_sigterm_on_the_launcher_ends_it_as_it_ends_the_cli(
    agent_env: AgentEnv, wasm: Callable[[str], Path]
) -> None:
    agent_env.start()
    proc, child = _sleeping(agent_env, wasm)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # what SIGTERM does to the in-process CLI
    assert _wait_gone(child, 10)


def test_a_killed_launcher_ends_its_command(agent_env: AgentEnv, wasm: Callable[[str], Path]) -> None:
    agent_env.start()
    proc, child = _sleeping(agent_env, wasm)
    proc.kill()
    proc.wait()
    assert _wait_gone(child, 10), "the command outlived its launcher"
    deadline = time.monotonic() + 10
    while "launcher gone" not in agent_env.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "launcher gone, killing it" in agent_env.log()


def test_a_killed_agent_ends_its_commands_and_the_launcher_says_so(
    agent_env: AgentEnv, wasm: Callable[[str], Path]
) -> None:
    pid = agent_env.start()
    proc, child = _sleeping(agent_env, wasm)
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert b"the client agent ended before the command finished" in err
    assert _wait_gone(child, 10)  # PR_SET_PDEATHSIG


# == who may connect =====================================================================================


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_another_user_is_refused_by_the_agent(agent_env: AgentEnv) -> None:
    agent_env.start()
    # Open the way to the socket (as a misconfigured host might): the
    # agent's SO_PEERCRED check must still refuse the other user.
    for path in (agent_env.runtime, agent_env.dir):
        path.chmod(0o711)
    os.chmod(agent_env.paths["socket"], 0o777)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.settimeout(20)
            sock.connect(str(agent_env.paths["socket"]))
            os.write(write, sock.recv(4096))
        except BaseException as exc:
            os.write(write, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        reply = f.read()
    os.waitpid(child, 0)
    assert reply == b"Ruid 65534 is not this agent's user", reply
    assert "refused a connection from uid 65534" in agent_env.log()


def test_the_launcher_refuses_an_agent_of_another_user(monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        monkeypatch.setattr(launcher, "peer_uid", lambda _sock: os.getuid() + 1)
        with pytest.raises(launcher.AgentUnavailable, match="runs as another user"):
            launcher._converse(ours, "stockade", ["run", "x.wasm"], False)
        theirs.setblocking(False)
        with pytest.raises(BlockingIOError):
            theirs.recv(10)  # nothing was sent to it


def test_the_runtime_directory_must_be_private(tmp_path: Path) -> None:
    loose = tmp_path / "stockade"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    with pytest.raises(launcher.AgentUnavailable, match="not a directory private"):
        launcher.runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path)})
    loose.chmod(0o700)
    assert launcher.runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path)}) == str(loose)


def test_names_and_places_are_the_warm_servers() -> None:
    assert launcher.server_name() == warm.server_name()
    env = {"XDG_RUNTIME_DIR": tempfile.mkdtemp()}
    try:
        assert launcher.runtime_dir(env) == str(warm.runtime_dir(env))
    finally:
        shutil.rmtree(env["XDG_RUNTIME_DIR"])


# == never stale, never garbage ============================================================================


def test_tree_sees_a_changed_added_or_touched_file(tmp_path: Path) -> None:
    pkg = tmp_path / "stockade"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("A = 1\n")
    (pkg / "sub" / "b.py").write_text("B = 1\n")
    tree = agent.Tree.of_this_process(str(pkg))
    assert tree.changed() is None
    (pkg / "sub" / "new.py").write_text("")
    assert tree.changed() == str(pkg / "sub")
    tree = agent.Tree.of_this_process(str(pkg))
    assert tree.changed_since(time.time_ns() - 60_000_000_000) is not None  # all written just now
    assert tree.changed_since(time.time_ns() + 60_000_000_000) is None
    st = os.stat(pkg / "a.py")
    os.utime(pkg / "a.py", ns=(st.st_atime_ns, st.st_mtime_ns))  # same times: only ctime moves
    assert tree.changed() == str(pkg / "a.py")


def test_tree_ignores_bytecode_written_beside_the_sources(tmp_path: Path) -> None:
    """An interpreter without PYTHONDONTWRITEBYTECODE writes __pycache__
    on first import (CI, most users): no code changed, the agent stays."""
    pkg = tmp_path / "stockade"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "b.py").write_text("B = 1\n")
    tree = agent.Tree.of_this_process(str(pkg))
    (pkg / "sub" / "__pycache__").mkdir()
    (pkg / "sub" / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"\x00")
    (pkg / "c.pyc").write_bytes(b"\x00")
    assert tree.changed() is None
    (pkg / "sub" / "b.py").unlink()
    assert tree.changed() == str(pkg / "sub")


def test_a_changed_installation_is_not_served(agent_env: AgentEnv) -> None:
    pid = agent_env.start()
    assert agent_env.stockade("run", "--allow-sim", "-q", str(HELLO)).returncode == 0
    assert agent_env.served() == 1
    # Change a module file's ctime only (mtime kept: no .pyc is invalidated).
    init = os.path.join(launcher.package_dir(), "__init__.py")
    st = os.stat(init)
    os.utime(init, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = agent_env.stockade("-v", "run", "--allow-sim", "-q", str(HELLO), "--", "Z")
    assert proc.returncode == 0 and proc.stdout.startswith(b"Hello, Z!")
    assert "the installed stockade changed since the agent started" in proc.stderr.decode().splitlines()[0]
    assert agent_env.served() == 1
    assert _wait_gone(pid, 20), "the stale agent kept running"
    # It let go of its socket and lock before refusing: that launcher
    # started an agent of the new code. An agent whose preload began within
    # CHANGE_MARGIN_NS of the change does not serve (the code was moving);
    # a later command's launcher starts another: one of them serves.
    deadline = time.monotonic() + 120
    while agent_env.served() < 2 and time.monotonic() < deadline:
        if agent_env.log().count("serving ") >= 2:
            assert agent_env.stockade("run", "--allow-sim", "-q", str(HELLO)).returncode == 0
        elif "the installed code is changing" in agent_env.log() and not agent_env.paths["socket"].exists():
            time.sleep(0.5)
            assert agent_env.stockade("run", "--allow-sim", "-q", str(HELLO)).returncode == 0
        time.sleep(0.05)
    assert agent_env.served() == 2, agent_env.log()
    assert agent_env.pid() not in (None, pid)


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        ("file", "no client agent runs"),
        ("reply", "the client agent sent an unexpected reply"),
        ("refuse", "the client agent refused: nope"),
        ("hangup", "the client agent closed the connection before starting the command"),
    ],
)
def test_a_broken_agent_socket_means_an_in_process_run(
    agent_env: AgentEnv, garbage: str, reason: str
) -> None:
    path = str(agent_env.paths["socket"])
    stop = threading.Event()
    listener: socket.socket | None = None
    if garbage == "file":
        Path(path).write_bytes(b"not a socket")
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(path)
        listener.listen(4)
        answer = {"reply": b"Z garbage", "refuse": b"Rnope", "hangup": b""}[garbage]

        def serve() -> None:
            assert listener is not None
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                with conn:
                    conn.recv(1 << 20)
                    if answer:
                        conn.send(answer)

        threading.Thread(target=serve, daemon=True).start()
    try:
        # Hold the agent's lock, as a live agent does: the launcher then
        # starts none in the background (the test controls the socket).
        import fcntl

        lock = os.open(agent_env.paths["lock"], os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            proc = agent_env.stockade("-v", "run", "--allow-sim", "-q", str(HELLO), "--", "G")
        finally:
            os.close(lock)
    finally:
        stop.set()
        if listener is not None:
            listener.close()
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.startswith(b"Hello, G!")
    first = proc.stderr.decode().splitlines()[0]
    assert first.startswith("stockade: running in this process, not the client agent: " + reason), first


def test_the_first_run_starts_an_agent_that_exits_when_idle(agent_env: AgentEnv) -> None:
    proc = agent_env.stockade("run", "--allow-sim", "-q", str(HELLO), env={"STOCKADE_AGENT_IDLE": "1"})
    assert proc.returncode == 0
    deadline = time.monotonic() + 120
    while "idle exit after 1 s" not in agent_env.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "idle exit after 1 s" in agent_env.log()
    pid = agent_env.pid()
    assert pid is not None
    assert _wait_gone(pid, 30), "the idle agent did not exit"
    assert "idle: exiting" in agent_env.log()
    assert not agent_env.paths["socket"].exists()


def test_secrets_never_reach_the_agent(agent_env: AgentEnv, tmp_path: Path) -> None:
    canary = "stockade-agent-canary-" + os.urandom(8).hex()
    secret = tmp_path / "token"
    secret.write_text(canary)
    args = ["run", "--allow-sim", "--secret", f"token=@{secret}", "--env", f"GREETING={canary}", str(HELLO)]
    env = {"STOCKADE_TEST_CANARY": canary}
    assert agent_env.stockade(*args, canary, env=env).returncode == 0  # starts the agent
    assert agent_env.wait_serving(120), agent_env.log()
    proc = agent_env.stockade(*args, canary, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert agent_env.served() == 1
    pid = agent_env.pid()
    assert pid is not None
    needle = canary.encode()
    for what in ("cmdline", "environ"):
        assert needle not in Path(f"/proc/{pid}/{what}").read_bytes(), what
    for path in agent_env.runtime.rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), path


# == the launcher stays small ============================================================================


def test_the_launcher_imports_nothing_heavy() -> None:
    code = "import sys; b = set(sys.modules); import stockade.launcher; print(' '.join(sorted(set(sys.modules) - b)))"
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, check=True, text=True
    ).stdout
    assert set(out.split()) <= {"__future__", "stockade", "stockade.launcher", "_signal"}, out


def test_request_round_trip_and_garbage() -> None:
    data = launcher._request("stockade", ["run", "a b.wasm", "--", "é"])
    req = launcher.parse_request(data)
    assert req["argv"] == ["run", "a b.wasm", "--", "é"]
    assert req["env"] == dict(os.environ)
    assert req["compat"] == launcher.compat()
    for bad in (b"", b"XX1\0a", data.replace(b"SA1", b"SA2", 1), b"SA1\0" + b"\0".join([b"x"] * 8) + b"\0-1"):
        with pytest.raises(ValueError):
            launcher.parse_request(bad)


def test_root_options_and_blocking_variables() -> None:
    assert launcher.split_root_options(["-v", "run", "x"]) == (True, "run")
    assert launcher.split_root_options(["deploy", "-v"]) == (False, "deploy")
    assert launcher.split_root_options(["--version"]) == (False, None)
    assert launcher.blocking_python_var({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}) is None
    assert launcher.blocking_python_var({"PYTHONPATH": "/x"}) == "PYTHONPATH"
    for off in ("0", "no", "false", "off", " OFF "):
        assert not launcher.enabled({"STOCKADE_AGENT": off})
    assert launcher.enabled({})


def test_nonces_differ_between_commands_forked_from_one_parent() -> None:
    """The client's nonces come from the kernel (secrets.token_bytes ->
    os.urandom), so children forked from one agent never share one."""
    from stockade.client import hello

    class Sink:
        def sendall(self, data: bytes) -> None:
            pass

    nonces = []
    for _ in range(2):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (runs in the child)
            os.write(write, hello.send_hello(Sink()).nonce)  # type: ignore[arg-type]
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as f:
            nonces.append(f.read())
        os.waitpid(pid, 0)
    assert len(nonces[0]) == 32 and nonces[0] != nonces[1]


# == the agent's refusals, in-process (nothing forked) =====================================================


@pytest.fixture
def bare_agent(tmp_path: Path) -> Iterator[agent.Agent]:
    with open(os.devnull, "w") as log:
        a = agent.Agent(str(tmp_path), "test", 60, log)
        a.tree = agent.Tree([])
        a.compat = launcher.compat()
        try:
            yield a
        finally:
            os.close(a._wake_r)
            os.close(a._wake_w)


def _ask(a: agent.Agent, data: bytes, fds: list[int]) -> bytes:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        if fds:
            launcher._send_fds(ours, data, fds)
        elif data:
            ours.send(data)
        with contextlib.suppress(ValueError):
            a._accept(theirs)
        assert a.commands == {}  # nothing was started
        ours.settimeout(5)
        return ours.recv(4096)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("compat", b"Rinterpreter encodings differ"),
        ("command", b"Rnot a command the agent runs"),
        ("garbage", b"Rnot a version 1 agent request"),
        ("fds", b"Ra request needs its message and four file descriptors"),
        ("stale", b"Rthe installed stockade changed since the agent started"),
    ],
)
def test_the_agent_refuses_what_it_must_not_run(
    bare_agent: agent.Agent, tmp_path: Path, case: str, reason: bytes
) -> None:
    a = bare_agent
    argv = ["host", "serve"] if case == "command" else ["run", "x.wasm"]
    data = launcher._request("stockade", argv)
    fds = [0, 1, 2, 2]
    if case == "compat":
        a.compat = "other|encoding|strict|0"
    elif case == "garbage":
        data = b"SA9\0whatever"
    elif case == "fds":
        fds = [0, 1]
    elif case == "stale":
        probe = tmp_path / "probe.py"
        probe.write_text("")
        a.tree = agent.Tree([str(probe)])
        probe.write_text("changed = 1\n")
    reply = _ask(a, data, fds)
    assert reply.startswith(reason), reply
    assert a.stopping == (case == "stale")


def test_the_agent_refuses_another_uid_before_reading(
    bare_agent: agent.Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = bare_agent
    monkeypatch.setattr(launcher, "peer_uid", lambda _sock: os.getuid() + 7)
    # It answers before reading anything (the request is never sent here:
    # closing a Unix socket with unread data resets the connection).
    reply = _ask(a, b"", [])
    assert reply == f"Ruid {os.getuid() + 7} is not this agent's user".encode()
