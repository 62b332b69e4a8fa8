"""The per-user client agent: the ``stockade`` CLI pre-imported, one fork
per command (ADR 0028).

    python -E -P -m stockade.agent --dir DIR --name NAME --idle SECONDS

Started in the background by the launcher (:mod:`stockade.launcher`) the
first time a ``run`` or ``deploy`` finds none. It imports the CLI and what
``run`` and ``deploy`` use (click, cryptography, cbor2, the verifiers, the
policy and package code, httpx and websockets), hashes this installation's
Keep runtime once (the measurement ``deploy`` pins; :mod:`stockade.measure.launch`'s
per-process cache, keyed on each file's stat), then serves the launcher's
requests on ``agent-NAME.sock`` in the warm fork server's 0700 runtime
directory. For each request it forks a child that takes the launcher's
working directory, standard streams, environment and umask and runs the
normal click main (:func:`stockade.cli.main`): a fresh nonce, the
verification of the evidence and identity, the policy, everything a
command does, happens in that child as it would in the launcher's own
process. The agent reports the child's exit status to the launcher, which
exits with it. This is the user's own process, trusted like the CLI
(ADR 0028); it is client code, not host code.

* Same user only: the socket is 0600 in a 0700 directory, and every
  connection's ``SO_PEERCRED`` uid must be the agent's (checked before
  anything is read); the launcher checks the agent's the same way.
* One instance per installation: an exclusive ``flock`` on
  ``agent-NAME.lock`` for the agent's life.
* Never stale: before each fork the agent re-stats every file and
  directory of the ``stockade`` package, every module file it has loaded
  and the interpreter (:class:`Tree`); if any changed since it started, it
  refuses the request (the launcher runs the command itself), stops
  listening and exits once its children have ended.
* Single-threaded: a ``select`` loop (children's exits arrive as SIGCHLD
  through a wake-up pipe), so that no lock of another thread is held when
  it forks.
* Idle exit after ``--idle`` seconds (``STOCKADE_AGENT_IDLE``, default 300)
  with no child and no request; SIGTERM stops it listening, and it exits
  once its children have ended.
* The launcher gone (its connection closed) before the child ended: the
  child's process group is killed (SIGKILL), as a killed CLI would be gone.
  The agent gone: its children have ``PR_SET_PDEATHSIG(SIGKILL)``.
* Its log (``agent-NAME.log``) holds its start, its exit and one line per
  command with the command's name only: never an argument, a variable or
  any output of a command.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from stockade import launcher

#: What the agent imports before it serves: what ``run`` and ``deploy``
#: load in the CLI process (from ``python -X importtime``; a name missing
#: in this installation is skipped).
PRELOAD = (
    "stockade.cli",
    "stockade.commands.run",
    "stockade.commands.remote",
    "stockade.commands._run",
    "stockade.commands._warm",
    "stockade.commands._output",
    "stockade.commands._progress",
    "stockade.client.plan",
    "stockade.client.hello",
    "stockade.client.deploy",
    "stockade.client.attest",
    "stockade.client.identity",
    "stockade.client.remote",
    "stockade.client.failover",
    "stockade.client._http",
    "stockade.client.collateral",
    "difflib",  # the policy loader's suggestions
    "stockade.evidence.sim.chip",
    "stockade.evidence.sim.tdx_chip",
    "stockade.evidence.registry",
    "stockade.evidence.snp.verify",
    "stockade.evidence.tdx.verify",
    "stockade.policy",
    "stockade.package",
    "stockade.measure.launch",
    "stockade.measure.keep_modules",
    "stockade.host.warm",
    "cryptography.hazmat.backends.openssl",
    "httpx",
    "httpcore",  # httpx's transport imports it when a client is made
    "websockets.exceptions",
    "websockets.sync.client",
    # The relay of deploy --host (stockade.client.remote.ManagerClient.connect):
    # 2-3 ms of its WebSocket open in the agent's child otherwise (issue 18).
    "websockets.asyncio.client",
)
PR_SET_PDEATHSIG = 1  # prctl(2), <linux/prctl.h>
MAX_REQUEST = 1 << 20
#: A file whose ctime is this close to (or after) the start of the agent's
#: preload may have changed between its import and the snapshot: the agent
#: does not serve (the kernel's file timestamps are coarser than its clock).
CHANGE_MARGIN_NS = 2_000_000_000
#: Seconds a connection may take to send its request (the launcher sends it at once).
REQUEST_TIMEOUT_S = 2.0


# == the stale-code check ================================================================================


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Tree:
    """A snapshot of the code this agent runs: the listing of every
    directory below the ``stockade`` package (a new or removed module shows
    there) and the stat of every file in it, of the file of every module
    loaded (third-party and stdlib), and of the interpreter. Bytecode
    caches (``__pycache__``, ``.pyc``) are left out: an interpreter writes
    them beside the sources on first import (unless
    ``PYTHONDONTWRITEBYTECODE``), which changes no code, and a directory's
    own stat would change with them. Comparing costs one ``stat`` per file
    and one listing per directory, no read: the same key the launch
    measurement's hash cache uses (a write sets ctime, which a user cannot
    set back)."""

    def __init__(self, paths: Iterable[str], dirs: Iterable[str] = ()) -> None:
        self.entries: dict[str, tuple[int, int, int, int, int] | None] = {p: _stat_or_none(p) for p in paths}
        self.listings: dict[str, tuple[str, ...] | None] = {d: _listing_or_none(d) for d in dirs}

    @classmethod
    def of_this_process(cls, package: str | None = None) -> Tree:
        package = package or launcher.package_dir()
        paths: list[str] = []
        dirs: list[str] = []
        for root, subdirs, files in os.walk(package):
            subdirs[:] = [d for d in subdirs if d != "__pycache__"]
            dirs.append(root)
            paths.extend(os.path.join(root, f) for f in files if not f.endswith((".pyc", ".pyo")))
        for module in list(sys.modules.values()):
            file = getattr(module, "__file__", None)
            if isinstance(file, str) and os.path.isabs(file):
                paths.append(file)
        paths.append(os.path.realpath(sys.executable))
        return cls(paths, dirs)

    def changed_since(self, ns: int) -> str | None:
        """The first file whose ctime is ``ns`` or later, or None."""
        for path, key in self.entries.items():
            if key is not None and key[4] >= ns:
                return path
        return None

    def changed(self) -> str | None:
        """The first directory whose listing or file whose stat differs
        from the snapshot, or None."""
        for directory, listing in self.listings.items():
            if _listing_or_none(directory) != listing:
                return directory
        for path, key in self.entries.items():
            if _stat_or_none(path) != key:
                return path
        return None


def _listing_or_none(directory: str) -> tuple[str, ...] | None:
    """The sorted names in ``directory`` but bytecode caches; None if it
    cannot be listed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    return tuple(sorted(n for n in names if n != "__pycache__" and not n.endswith((".pyc", ".pyo"))))


def _stat_or_none(path: str) -> tuple[int, int, int, int, int] | None:
    try:
        return _stat_key(os.stat(path))
    except OSError:
        return None


def _warm_up() -> None:
    """Process-wide first-use work that every command would repeat and that
    holds no command's data: OpenSSL's initialisation (the first TLS
    context of a process costs ~3 ms, the next ~0.2 ms) and httpx's lazy
    imports and compiled patterns (a first client ~20 ms, the next
    ~0.5 ms). The objects made here are dropped."""
    import ssl

    from stockade.client._http import httpx

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    httpx.Client(base_url="http://127.0.0.1:1", verify=context, trust_env=False).close()


# == the child: one command ==============================================================================


def _reopen_stdio(streams: list[tuple[str, str]], unbuffered: bool) -> None:
    """sys.stdin/stdout/stderr on fds 0-2 as the interpreter would open them
    for the launcher (its encodings; stdout line-buffered on a terminal,
    stderr always; ``PYTHONUNBUFFERED``)."""
    import io

    (in_enc, in_err), (out_enc, out_err), (err_enc, err_err) = streams
    stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding=in_enc, errors=in_err, newline="\n")  # noqa: SIM115
    outs = []
    for fd, enc, err, line in ((1, out_enc, out_err, os.isatty(1)), (2, err_enc, err_err, True)):
        raw = open(fd, "wb", buffering=0 if unbuffered else -1, closefd=False)  # noqa: SIM115
        outs.append(
            io.TextIOWrapper(
                raw,
                encoding=enc,
                errors=err,
                newline="\n",
                line_buffering=line and not unbuffered,
                write_through=unbuffered,
            )
        )
    # As in a fresh interpreter, sys.__stdout__ is sys.stdout (click and
    # faulthandler may use either).
    for name, stream in (("stdin", stdin), ("stdout", outs[0]), ("stderr", outs[1])):
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def system_exit_code(exc: SystemExit) -> int:
    """The exit status the interpreter gives an uncaught SystemExit."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def run_cli(argv0: str, argv: list[str]) -> int:
    """The normal click main, as ``stockade`` runs it in-process; its exit status."""
    from stockade.cli import main

    try:
        main(args=argv, prog_name=os.path.basename(argv0) or "stockade")
    except SystemExit as exc:
        return system_exit_code(exc)
    except KeyboardInterrupt:  # outside the CLI's boundary: end as the interpreter does
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    return 0


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


# == the agent ===========================================================================================


@dataclass
class _Command:
    conn: socket.socket
    pid: int
    name: str
    started: float = field(default_factory=time.monotonic)
    launcher_gone: bool = False


class Agent:
    def __init__(self, directory: str, name: str, idle: float, log: Any) -> None:
        self.directory, self.name, self.idle = directory, name, idle
        self.paths = launcher.agent_paths(directory, name)
        self.log = log
        self.uid = os.getuid()
        self.pid = os.getpid()
        self.commands: dict[int, _Command] = {}
        self.listener: socket.socket | None = None
        self.lock_fd = -1
        self.stopping = False
        self.tree: Tree | None = None
        self.compat = ""
        self._last = time.monotonic()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._libc: Any = None

    def say(self, text: str) -> None:
        """One line in the agent's log (module docstring: never a command's
        arguments, environment or output)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with contextlib.suppress(Exception):
            self.log.write(f"{stamp} agent[{self.pid}] {text}\n")
            self.log.flush()

    # -- start-up -------------------------------------------------------------------------------------------

    def preload(self) -> None:
        import ctypes
        import importlib

        self._libc = ctypes.CDLL(None, use_errno=True)  # prctl in the children
        for module in PRELOAD:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                self.say(f"preload: {module} not imported ({exc})")
        _warm_up()
        # The measurement `deploy` pins: hashed once here; a child re-hashes
        # only the files whose stat changed (measure.launch.file_sha256).
        from stockade.measure.launch import keep_measurement

        try:
            keep_measurement()
        except Exception as exc:  # the child raises it again, with its exit code
            self.say(f"Keep runtime not measured: {type(exc).__name__}: {exc}")
        self.compat = launcher.compat()
        self.tree = Tree.of_this_process()
        # What the preload made is never collected: out of the collector's
        # way, so that a child's collections do not write to (and copy) the
        # pages it shares with the agent (gc.freeze, Python >= 3.7).
        import gc

        gc.collect()
        gc.freeze()

    def run(self) -> int:
        self.lock_fd = os.open(self.paths["lock"], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.lock_fd)
            return 0  # another agent of this installation runs (or starts)
        os.ftruncate(self.lock_fd, 0)
        os.write(self.lock_fd, f"{self.pid}\n".encode())
        t, started_ns = time.perf_counter(), time.time_ns()
        self.preload()
        self.say(f"preloaded in {1000 * (time.perf_counter() - t):.0f} ms")
        assert self.tree is not None
        moving = self.tree.changed_since(started_ns - CHANGE_MARGIN_NS)
        if moving is not None:
            # Changed while (or just before) it was imported: the snapshot
            # may describe other bytes than those loaded. The next command's
            # launcher starts a new agent.
            self.say(f"the installed code is changing ({moving}): exiting")
            os.close(self.lock_fd)
            return 0
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.paths["socket"])  # a stale socket: we hold the lock, so its agent is gone
        old = os.umask(0o177)
        try:
            listener.bind(self.paths["socket"])
        finally:
            os.umask(old)
        listener.listen(64)
        self.listener = listener
        self._ino = os.stat(self.paths["socket"]).st_ino
        self.say(f"serving {self.paths['socket']} for uid {self.uid}, idle exit after {self.idle:g} s")
        self._last = time.monotonic()  # idle from now, not from before the preload
        try:
            self._loop()
        finally:
            self._stop_listening()
            self.say("exiting")
        return 0

    def _socket_is_mine(self) -> bool:
        try:
            return self.listener is None or os.stat(self.paths["socket"]).st_ino == self._ino
        except OSError:
            return False

    def _on_term(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    def _stop_listening(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.paths["socket"]).st_ino == self._ino:
                    os.unlink(self.paths["socket"])
            listener.close()
        if self.lock_fd >= 0:
            os.close(self.lock_fd)  # a new agent may start now
            self.lock_fd = -1

    # -- the loop -------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            if self.stopping:
                self._stop_listening()
                if not self.commands:
                    return
            elif not self.commands and time.monotonic() - self._last >= self.idle:
                self.say("idle: exiting")
                return
            elif not self._socket_is_mine():
                self.say("its socket was removed or replaced: exiting")
                self.listener.close() if self.listener is not None else None
                self.listener = None
                self.stopping = True
                continue
            watched: list[Any] = [
                self._wake_r,
                *(c.conn for c in self.commands.values() if not c.launcher_gone),
            ]
            if self.listener is not None:
                watched.append(self.listener)
            ready, _, _ = select.select(watched, [], [], 0.5)
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    while os.read(self._wake_r, 512):
                        pass
            self._reap()
            for sock in ready:
                if sock is self.listener and self.listener is not None:
                    conn, _ = self.listener.accept()
                    self._last = time.monotonic()
                    try:
                        self._accept(conn)
                    except Exception as exc:  # one launcher's failure never ends the agent
                        self.say(f"request failed: {type(exc).__name__}: {exc}")
                        _refuse(conn, f"{type(exc).__name__}: {exc}")
                elif isinstance(sock, socket.socket):
                    self._from_launcher(sock)

    def _reap(self) -> None:
        while self.commands:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            cpu_ms = (usage.ru_utime + usage.ru_stime) * 1000
            command = self.commands.pop(pid, None)
            if command is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                command.conn.send(b"X" + struct.pack("!i", code))
            command.conn.close()
            self._last = time.monotonic()
            # The child's CPU (user + system; its own children's included
            # once it waited for them): bench/bench_e2e.py reads it here.
            self.say(f"{command.name} (pid {pid}) ended, status {code}, {cpu_ms:.1f} ms CPU")

    def _from_launcher(self, conn: socket.socket) -> None:
        command = next((c for c in self.commands.values() if c.conn is conn), None)
        if command is None:
            return
        try:
            msg = conn.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            msg = b""
        if not msg:  # the launcher is gone: so is the command
            command.launcher_gone = True
            self.say(f"{command.name} (pid {command.pid}): launcher gone, killing it")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(command.pid, signal.SIGKILL)
            return
        if msg[:1] == b"G":
            with contextlib.suppress(ValueError):
                signum = int(msg[1:])
                if signum in launcher.FORWARDED:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(command.pid, signum)

    def _accept(self, conn: socket.socket) -> None:
        uid = launcher.peer_uid(conn)
        if uid != self.uid:
            self.say(f"refused a connection from uid {uid}: this agent serves uid {self.uid} only")
            _refuse(conn, f"uid {uid} is not this agent's user")
            return
        conn.settimeout(REQUEST_TIMEOUT_S)
        data, fds, flags, _ = socket.recv_fds(conn, MAX_REQUEST, 8)
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 4:
                raise ValueError("a request needs its message and four file descriptors")
            req = launcher.parse_request(data)
            if req["compat"] != self.compat:
                raise ValueError(
                    f"interpreter encodings differ (launcher {req['compat']}, agent {self.compat})"
                )
            _verbose, name = launcher.split_root_options(req["argv"])
            if name not in launcher.AGENT_COMMANDS:
                raise ValueError("not a command the agent runs")
            assert self.tree is not None
            stale = self.tree.changed()
            if stale is not None:
                self.say(f"the installed code changed ({stale}): no more commands; exiting")
                self.stopping = True
                # Socket and lock go before the refusal: the launcher that
                # gets it starts a new agent (of the new code) at once.
                self._stop_listening()
                raise ValueError(f"the installed stockade changed since the agent started ({stale})")
            if threading.active_count() != 1:  # never fork with another thread holding a lock
                raise ValueError("the agent has other threads")
            pid = os.fork()
            if pid == 0:
                try:
                    self._child(conn, fds, req)
                finally:
                    os._exit(1)  # never back into the agent's loop
        except BaseException:
            for fd in fds:
                os.close(fd)
            _refuse(conn, str(sys.exc_info()[1]))
            raise
        for fd in fds:
            os.close(fd)
        conn.setblocking(True)
        self.commands[pid] = _Command(conn, pid, name)
        try:
            conn.send(b"S" + struct.pack("!i", pid))
        except OSError:  # the launcher went away already
            self.commands[pid].launcher_gone = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.say(f"{name} (pid {pid}) started")

    def _child(self, conn: socket.socket, fds: list[int], req: dict[str, Any]) -> NoReturn:
        code = 1
        try:
            os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
            self._libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != self.pid:  # the agent died between fork and prctl
                os._exit(1)
            # Nothing of the agent's stays open in the command: its socket,
            # lock, wake-up pipe, the other commands' connections, its own.
            for other in [c.conn for c in self.commands.values()]:
                other.close()
            if self.listener is not None:
                self.listener.close()
            for fd in (self._wake_r, self._wake_w, self.lock_fd):
                if fd >= 0:
                    os.close(fd)
            conn.close()
            cwd, stdin, stdout, stderr = fds
            os.dup2(stdin, 0)
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            os.fchdir(cwd)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            os.umask(req["umask"])
            os.environ.clear()
            os.environ.update(req["env"])
            time.tzset()
            sys.dont_write_bytecode = req["dont_write_bytecode"]
            _reopen_stdio(req["streams"], req["unbuffered"])
            sys.argv = [req["argv0"], *req["argv"]]
            code = run_cli(req["argv0"], req["argv"])
            # As the interpreter does at exit (threading._shutdown): wait for
            # the command's non-daemon threads.
            for thread in threading.enumerate():
                if thread is not threading.main_thread() and not thread.daemon:
                    thread.join()
        except BaseException:
            import traceback

            with contextlib.suppress(Exception):
                traceback.print_exc()
            code = 1
        _flush()
        os._exit(code)


def _refuse(conn: socket.socket, reason: str) -> None:
    with contextlib.suppress(OSError):
        conn.send(b"R" + reason.encode("utf-8", "replace")[:1000])
    with contextlib.suppress(OSError):
        conn.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stockade.agent", description=__doc__)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--idle", type=float, default=launcher.DEFAULT_IDLE_S)
    args = parser.parse_args(argv)
    if not args.name.isalnum():
        parser.error("--name must be letters and digits")
    try:
        launcher.check_private(args.dir)
    except launcher.AgentUnavailable as exc:
        parser.error(str(exc))
    return Agent(args.dir, args.name, args.idle, sys.stderr).run()


if __name__ == "__main__":
    sys.exit(main())
