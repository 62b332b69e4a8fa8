"""The ``stockade`` command's entry point: hands a ``run`` or ``deploy`` to
this user's client agent when one runs, else runs the CLI in this process
(ADR 0028).

The client agent (:mod:`stockade.agent`) is a per-user, per-installation
process that has the CLI, cryptography, the verifier, the policy code and
the HTTP/WebSocket clients imported; for each command it forks a child that
runs the normal CLI (:func:`stockade.cli.main`) with this process's
arguments, working directory, environment, umask and standard streams, as
Mercurial's chg hands a command to its command server. Every check the CLI
makes runs in that child, per command, as it would here.

This module is what every ``stockade`` command loads first, so it imports
only built-in or tiny standard modules (``os``, ``sys``, ``_socket``,
``_struct``, ``_signal``, ``fcntl``; not ``socket`` or ``signal``, whose
``enum`` and ``selectors`` imports cost more than this whole module),
and none of stockade's own (``tests/test_client_agent.py`` checks).

The launcher uses the agent when:

* the command is ``run`` or ``deploy`` (:data:`AGENT_COMMANDS`): the
  commands whose start-up dominates their time; every other command runs
  here;
* ``STOCKADE_AGENT`` is not ``0`` (``no``, ``false``, ``off``);
* no interpreter-level setting would make the agent's child behave unlike
  this process: no ``PYTHON*`` variable other than
  :data:`PASSED_PYTHON_VARS` (``PYTHONPATH``, ``PYTHONHASHSEED``,
  ``PYTHONWARNINGS``... change how the interpreter starts; the agent started
  long ago), and the agent's locale encoding, filesystem encoding and UTF-8
  mode equal this process's (the agent checks and refuses).

When no agent answers, the command runs here and, if it is one of
:data:`AGENT_COMMANDS`, an agent is started in the background for the next
one (nothing here waits for it). Any problem with the agent before it has
started the command (no socket, refused, another uid, stale code, garbage)
falls back to running the command here; with ``-v`` (``stockade -v ...``)
one line on stderr says which way the command ran and why.

Protocol (``SOCK_SEQPACKET`` in the 0700 runtime directory of the warm fork
server, ``agent-NAME.sock``, mode 0600; NAME as :func:`stockade.host.warm.server_name`):

  launcher -> ``b"SA1\\0" + NUL-separated fields`` (see :func:`_request`) with
  the fds [cwd (O_PATH), stdin, stdout, stderr] (SCM_RIGHTS)
  agent -> ``b"S" + pid`` (the child started) or ``b"R" + reason`` (refused:
  the launcher runs the command itself)
  launcher -> ``b"G" + signal number`` (SIGINT, SIGTERM, SIGHUP, SIGQUIT,
  SIGTSTP, SIGCONT received: the agent sends it to the child's process group)
  agent -> ``b"X" + status`` (the child's exit code, or minus the signal
  that killed it); the launcher exits the same way.

The launcher closing the connection (killed) makes the agent kill the
child's process group.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # built in; signal imports enum
import os
import sys

# Not `from typing import TYPE_CHECKING`: typing imports re, collections and
# contextlib (~5 ms); mypy treats any TYPE_CHECKING constant as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

#: Commands handed to the agent; every other one runs in this process.
AGENT_COMMANDS = frozenset({"run", "deploy"})
#: ``PYTHON*`` variables the agent's child honours like this process: the
#: launcher sends its sys.dont_write_bytecode and stdio buffering and
#: encodings. Any other ``PYTHON*`` variable runs the command here.
PASSED_PYTHON_VARS = frozenset({"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONIOENCODING"})
#: Variables the agent process itself is started with (never a secret:
#: the command's own environment goes to its child only, per command).
AGENT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR")
PROTOCOL = b"SA1"
#: Seconds to wait for the agent to start a command before running it here.
START_TIMEOUT_S = 5.0
#: Signals forwarded to the agent's child (its process group).
FORWARDED = (
    *(_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT),
    # Job control: Ctrl-Z stops the command and the launcher; fg/bg resume both.
    *(_signal.SIGTSTP, _signal.SIGCONT),
)
DEFAULT_IDLE_S = 300.0

_OFF = ("0", "no", "false", "off")


class AgentUnavailable(Exception):
    """The agent cannot run this command; the message says why (the
    launcher runs it in-process)."""


# == names and places (the same as stockade.host.warm's, without its imports) ==========================


def package_dir() -> str:
    return os.path.dirname(os.path.realpath(__file__))


def server_name() -> str:
    """:func:`stockade.host.warm.server_name`: the interpreter and the
    ``stockade`` package directory (tests check they agree)."""
    key = f"{os.path.realpath(sys.executable)}\0{package_dir()}".encode("utf-8", "surrogateescape")
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # built-in: no OpenSSL load
    except ImportError:  # pragma: no cover - other builds
        from hashlib import sha256
    return str(sha256(key).hexdigest()[:16])


def runtime_dir(environ: dict[str, str] | None = None, create: bool = True) -> str:
    """:func:`stockade.host.warm.runtime_dir` (the same directory, the same
    checks): the user's private 0700 directory."""
    env = os.environ if environ is None else environ
    uid = os.getuid()
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        path = os.path.join(xdg, "stockade")
    elif os.path.isdir(f"/run/user/{uid}"):
        path = f"/run/user/{uid}/stockade"
    else:
        path = f"/tmp/stockade-{uid}"
    if create:
        try:  # noqa: SIM105 - contextlib costs more to import than this module
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    check_private(path)
    return path


def check_private(path: str) -> None:
    """Refuse (:class:`AgentUnavailable`) unless ``path`` is a real
    directory owned by this user with no group or other access."""
    uid = os.getuid()
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise AgentUnavailable(f"{path}: {exc.strerror}") from None
    if (st.st_mode & 0o170000) != 0o040000 or st.st_uid != uid or st.st_mode & 0o077:
        raise AgentUnavailable(
            f"{path} is not a directory private to uid {uid} (mode {st.st_mode & 0o777:o})"
        )


def agent_paths(directory: str, name: str) -> dict[str, str]:
    return {
        "socket": os.path.join(directory, f"agent-{name}.sock"),
        "lock": os.path.join(directory, f"agent-{name}.lock"),
        "log": os.path.join(directory, f"agent-{name}.log"),
    }


def enabled(environ: dict[str, str] | Any = None) -> bool:
    env = os.environ if environ is None else environ
    value: str = env.get("STOCKADE_AGENT", "1")
    return value.strip().lower() not in _OFF


def idle_seconds(environ: dict[str, str] | Any = None) -> float:
    env = os.environ if environ is None else environ
    try:
        value = float(env.get("STOCKADE_AGENT_IDLE", DEFAULT_IDLE_S))
    except ValueError:
        return DEFAULT_IDLE_S
    return min(max(value, 0.5), 86400.0)


def split_root_options(argv: list[str]) -> tuple[bool, str | None]:
    """(-v given, the command name) of ``stockade [-v] COMMAND ...``; the
    command is None when a root option other than -v comes first."""
    verbose = False
    for arg in argv:
        if arg in ("-v", "--verbose"):
            verbose = True
            continue
        if arg.startswith("-"):
            return verbose, None
        return verbose, arg
    return verbose, None


def blocking_python_var(environ: dict[str, str] | Any = None) -> str | None:
    """The first ``PYTHON*`` variable that makes the agent unfit (module docstring)."""
    env = os.environ if environ is None else environ
    for key in env:
        if key.startswith("PYTHON") and key not in PASSED_PYTHON_VARS and env[key]:
            return str(key)
    return None


def compat() -> str:
    """Interpreter state the agent's child cannot change and must share
    with this process: locale and filesystem encodings, UTF-8 mode."""
    import _locale

    return f"{_locale.getencoding()}|{sys.getfilesystemencoding()}|{sys.getfilesystemencodeerrors()}|{sys.flags.utf8_mode}"


def peer_uid(sock: Any) -> int:
    """SO_PEERCRED (unix(7): ``struct ucred {pid_t pid; uid_t uid; gid_t gid}``)."""
    import _socket
    import _struct

    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int(_struct.unpack("3i", raw)[1])


# == the request ========================================================================================


def _stream_info(stream: Any) -> str:
    if stream is None:
        return "utf-8:strict"
    return f"{getattr(stream, 'encoding', None) or 'utf-8'}:{getattr(stream, 'errors', None) or 'strict'}"


def _request(argv0: str, argv: list[str]) -> bytes:
    """The request's fields, NUL-separated (no field can hold a NUL: they
    are argv and environment strings): protocol, compat, umask,
    dont_write_bytecode, unbuffered, stdin/stdout/stderr ``encoding:errors``,
    argv0, len(argv), argv..., KEY=VALUE...."""
    mask = os.umask(0o022)
    os.umask(mask)
    fields = [
        PROTOCOL,
        compat().encode(),
        b"%o" % mask,
        b"1" if sys.dont_write_bytecode else b"0",
        # -u or PYTHONUNBUFFERED: the interpreter made stdout write-through.
        b"1" if getattr(sys.stdout, "write_through", False) else b"0",
        _stream_info(sys.stdin).encode(),
        _stream_info(sys.stdout).encode(),
        _stream_info(sys.stderr).encode(),
        os.fsencode(argv0),
        b"%d" % len(argv),
        *(os.fsencode(a) for a in argv),
        *(os.fsencode(k) + b"=" + os.fsencode(v) for k, v in os.environ.items()),
    ]
    return b"\0".join(fields)


def parse_request(data: bytes) -> dict[str, Any]:
    """The agent's side of :func:`_request`; raises ValueError."""
    fields = data.split(b"\0")
    if len(fields) < 10 or fields[0] != PROTOCOL:
        raise ValueError("not a version 1 agent request")
    n = int(fields[9])
    if n < 0 or 10 + n > len(fields):
        raise ValueError("bad argument count")
    env: dict[str, str] = {}
    for item in fields[10 + n :]:
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            raise ValueError("bad environment entry")
        env[os.fsdecode(key)] = os.fsdecode(value)
    streams = [f.decode().rpartition(":") for f in fields[5:8]]
    return {
        "compat": fields[1].decode(),
        "umask": int(fields[2], 8) & 0o777,
        "dont_write_bytecode": fields[3] == b"1",
        "unbuffered": fields[4] == b"1",
        "streams": [(enc, err) for enc, _, err in streams],
        "argv0": os.fsdecode(fields[8]),
        "argv": [os.fsdecode(a) for a in fields[10 : 10 + n]],
        "env": env,
    }


# == talking to the agent ===============================================================================


def _connect(path: str) -> Any:
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def _send_fds(sock: Any, data: bytes, fds: list[int]) -> None:
    import _socket
    import _struct

    sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _struct.pack(f"{len(fds)}i", *fds))])


class _Forward:
    """Signal handler: tells the agent to send the signal to the child."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock

    def __call__(self, signum: int, _frame: Any) -> None:
        self.forward(signum)
        if signum == _signal.SIGTSTP:
            # Stop as the terminal asked (the command is stopped too); the
            # shell's fg or bg continues us here: the command continues too.
            _signal.signal(signum, _signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            _signal.signal(signum, self)
            self.forward(_signal.SIGCONT)

    def forward(self, signum: int) -> None:
        try:  # noqa: SIM105
            self.sock.send(b"G%d" % signum)
        except OSError:
            pass


def via_agent(argv0: str, argv: list[str], verbose: bool = False) -> int:
    """Run the command in this user's agent; its exit code (minus a signal
    number when the child was killed by one). Raises :class:`AgentUnavailable`
    before anything ran."""
    directory = runtime_dir(create=False)
    path = agent_paths(directory, server_name())["socket"]
    try:
        sock = _connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        raise AgentUnavailable("no client agent runs") from None
    except OSError as exc:
        raise AgentUnavailable(f"cannot reach the client agent at {path} ({exc.strerror})") from None
    try:
        return _converse(sock, argv0, argv, verbose)
    finally:
        sock.close()


def _converse(sock: Any, argv0: str, argv: list[str], verbose: bool) -> int:
    import _struct

    if peer_uid(sock) != os.getuid():
        raise AgentUnavailable("the client agent runs as another user")
    try:
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise AgentUnavailable(f"the working directory: {exc.strerror}") from None
    try:
        _send_fds(sock, _request(argv0, argv), [cwd, 0, 1, 2])
    except OSError as exc:
        raise AgentUnavailable(f"cannot send the command ({exc.strerror})") from None
    finally:
        os.close(cwd)
    sock.settimeout(START_TIMEOUT_S)
    try:
        reply = sock.recv(4096)
    except OSError as exc:  # a timeout included
        raise AgentUnavailable(f"the client agent did not start the command ({exc})") from None
    if not reply:
        raise AgentUnavailable("the client agent closed the connection before starting the command")
    if reply[:1] == b"R":
        raise AgentUnavailable(f"the client agent refused: {reply[1:].decode(errors='replace')}")
    if reply[:1] != b"S" or len(reply) != 5:
        raise AgentUnavailable("the client agent sent an unexpected reply")
    # From here on the command runs in the agent's child: no fallback.
    if verbose:
        pid = _struct.unpack("!i", reply[1:])[0]
        sys.stderr.write(f"stockade: running in a child (pid {pid}) of this user's client agent\n")
    sock.settimeout(None)
    forward = _Forward(sock)
    for signum in FORWARDED:
        _signal.signal(signum, forward)
    while True:
        try:
            msg = sock.recv(64)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
        except OSError:
            msg = b""
        if not msg:
            sys.stderr.write("stockade: the client agent ended before the command finished\n")
            return 1
        if msg[:1] == b"X" and len(msg) == 5:
            return int(_struct.unpack("!i", msg[1:])[0])


def _start_agent(directory: str, name: str) -> None:
    """Start the agent in the background (own session; it outlives this
    process), unless one holds its lock (running or starting). Its
    arguments name only places and its environment is :data:`AGENT_ENV`."""
    import fcntl

    p = agent_paths(directory, name)
    try:
        fd = os.open(p["lock"], os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return  # an agent holds it
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    env = {k: os.environ[k] for k in AGENT_ENV if k in os.environ}
    log = os.open(p["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.posix_spawn(
            sys.executable,
            [
                sys.executable,
                # -E: no PYTHON* variable; -P: no unsafe sys.path entry; the
                # user site (if any) stays as for the console script.
                "-E",
                "-P",
                "-m",
                "stockade.agent",
                "--dir",
                directory,
                "--name",
                name,
                "--idle",
                str(idle_seconds()),
            ],
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, log, 2),
            ],
            setsid=True,
        )
    except OSError:
        pass
    finally:
        os.close(log)


def _exit_with(status: int) -> NoReturn:
    """Exit as the agent's child did: its code, or the signal that killed it."""
    if status < 0:
        sys.stdout.flush()
        sys.stderr.flush()
        _signal.signal(-status, _signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        status = 128 - status  # not reached for a deadly signal
    os._exit(status)


def main(prog_name: str | None = None) -> None:
    """``stockade``: through the agent when it can (module docstring), else
    :func:`stockade.cli.main` in this process."""
    argv = sys.argv[1:]
    verbose, command = split_root_options(argv)
    why: str | None = None
    start = False
    if command not in AGENT_COMMANDS:
        why = None
    elif not enabled():
        why = "STOCKADE_AGENT=0"
    elif (var := blocking_python_var()) is not None:
        why = f"{var} is set"
    else:
        argv0 = prog_name or sys.argv[0]
        try:
            status = via_agent(argv0, argv, verbose)
        except AgentUnavailable as exc:
            why, start = str(exc), True
        except OSError as exc:
            why, start = f"{type(exc).__name__}: {exc}", True
        else:
            _exit_with(status)
    if verbose and command in AGENT_COMMANDS:
        sys.stderr.write(f"stockade: running in this process, not the client agent: {why}\n")
    if start:
        try:  # noqa: SIM105
            _start_agent(runtime_dir(), server_name())
        except (AgentUnavailable, OSError):
            pass
    from stockade.cli import main as cli_main

    cli_main(prog_name=prog_name)
