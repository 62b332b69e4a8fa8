"""The per-user warm fork server of ``stockade run`` (ADR 0022).

    python -I -m stockade.host.warm --dir DIR --name NAME --idle SECONDS

A detached, per-user, per-installation process that keeps the Keep fork
server of the keep manager (:class:`stockade.host.forkserver.ForkSpawner`:
a pre-imported Keep runtime and a pre-imported sim PSP, ADR 0011) running
between local runs, so that ``stockade run`` gets a Keep by a fork instead of
a fresh interpreter. It is host code (untrusted, like the keep manager): it
starts Keeps and hands over the stream to them, and never sees a byte of the
session (the stream goes to the client as a file descriptor).

* Where: a Unix socket ``warm-NAME.sock`` in a 0700 directory of the user
  (``$XDG_RUNTIME_DIR/stockade``, else ``/run/user/UID/stockade``, else
  ``/tmp/stockade-UID``; :func:`runtime_dir`). ``NAME`` is derived from the
  interpreter and the installed ``stockade`` package (:func:`server_name`),
  so two virtual environments never share a fork server.
* One instance: the server holds an exclusive ``flock`` on
  ``warm-NAME.lock`` for its whole life (and writes its pid there); a second
  one started meanwhile exits at once.
* Same user only: the directory is 0700, the socket 0600, and every
  connection's ``SO_PEERCRED`` uid must be the server's (else refused and
  logged); the client checks the server's uid the same way.
* Idle exit: with no Keep running and no request for ``--idle`` seconds, the
  server removes its socket and exits (its fork servers with it).
* Fresh measurement: before every fork, the launch measurement of the
  installed Keep runtime is recomputed (:func:`stockade.measure.launch.keep_measurement`,
  whose per-process cache re-hashes any file whose inode, size, mtime or
  ctime changed). If it differs from what the running zygote was started
  with, the zygotes are restarted (the old ones end with their last Keep),
  so a Keep never reports a measurement of files other than the ones its
  zygote loaded.

Protocol (``SOCK_SEQPACKET``, one JSON object per message):
  client -> ``{"op": "keep", "v": 1, "backend": "sim"|"sim-snp"|"sim-tdx", "state_dir": PATH,
  "compile_cache": PATH|null}``
  server -> ``{"op": "started", "keep_id", "measurement" (hex), "log", "pid", "server_pid"}``
            with the client's end of the Keep's stream (SCM_RIGHTS),
            or ``{"op": "error", "detail"}``;
  server -> ``{"op": "exit", "status"}`` when the Keep process ends.
The client closing its connection ends its Keep (after a grace period), as a
killed ``stockade run`` ends its cold Keep.

The client side (:class:`Pending`, :class:`WarmKeep`) imports only the
standard library: it is what ``stockade run`` loads on the warm path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stockade.host.forkserver import ForkSpawner
    from stockade.host.loader import KeepHandle

PROTOCOL = 1
#: Backends the warm path serves: the sim ones (a VM Keep is not forked).
WARM_BACKENDS = ("sim", "sim-snp", "sim-tdx")
#: Seconds without a Keep or a request after which the server exits.
DEFAULT_IDLE_S = 60.0
#: How long a client waits for a fork server it started to accept.
START_TIMEOUT_S = 30.0
#: How long a client waits for a started Keep (the server forks two processes).
REQUEST_TIMEOUT_S = 30.0
MAX_MESSAGE = 1 << 16
#: Grace given to a Keep whose client went away before it exited.
ORPHAN_GRACE_S = 2.0


class WarmUnavailable(Exception):
    """The warm path cannot be used here; the message says why (the caller
    falls back to a cold Keep)."""


# == names and places =====================================================================================


def runtime_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The user's private directory for the warm server's socket: under
    ``$XDG_RUNTIME_DIR`` (XDG Base Directory Specification: owned by the
    user, mode 0700), else ``/run/user/UID``, else ``/tmp/stockade-UID``.
    Created 0700; refused (:class:`WarmUnavailable`) unless it is a real
    directory owned by this user with no group or other access."""
    env = os.environ if environ is None else environ
    uid = os.getuid()
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        path = Path(xdg) / "stockade"
    elif os.path.isdir(f"/run/user/{uid}"):
        path = Path(f"/run/user/{uid}") / "stockade"
    else:
        path = Path(f"/tmp/stockade-{uid}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise WarmUnavailable(f"{path} is not a directory private to uid {uid} (mode {st.st_mode & 0o777:o})")
    return path


def server_name() -> str:
    """Names this installation's server: the interpreter and the ``stockade``
    package directory it runs (another venv or checkout gets its own)."""
    package = Path(__file__).resolve().parent.parent
    key = f"{os.path.realpath(sys.executable)}\0{package}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(key).hexdigest()[:16]


def paths(directory: Path, name: str) -> dict[str, Path]:
    return {
        "socket": directory / f"warm-{name}.sock",
        "lock": directory / f"warm-{name}.lock",
        "log": directory / f"warm-{name}.log",
        "logs": directory / f"warm-{name}-logs",
    }


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """``STOCKADE_WARM=0`` (or ``no``, ``false``, ``off``) turns the warm path off."""
    env = os.environ if environ is None else environ
    return env.get("STOCKADE_WARM", "1").strip().lower() not in ("0", "no", "false", "off")


def idle_seconds(environ: Mapping[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    try:
        value = float(env.get("STOCKADE_WARM_IDLE", DEFAULT_IDLE_S))
    except ValueError:
        return DEFAULT_IDLE_S
    return min(max(value, 0.5), 3600.0)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket,
    from the kernel (SO_PEERCRED, unix(7): ``struct ucred {pid, uid, gid}``)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def read_pid(directory: Path, name: str) -> int | None:
    """The pid the running server wrote in its lock file (tests, diagnostics)."""
    try:
        return int(paths(directory, name)["lock"].read_text().strip() or "0") or None
    except (OSError, ValueError):
        return None


# == client side ==========================================================================================


class WarmKeep:
    """A Keep forked by the warm server: the same surface as the loader's
    :class:`stockade.host.loader.KeepHandle` that ``stockade run`` uses
    (``conn``, ``measurement``, ``check_measured``, ``log_path``, ``wait``,
    ``close``)."""

    def __init__(self, control: socket.socket, conn: socket.socket, reply: dict[str, Any]) -> None:
        self._control = control
        self.conn = conn
        self.keep_id = str(reply["keep_id"])
        self.measurement = bytes.fromhex(str(reply["measurement"]))
        self.log_path = Path(str(reply["log"]))
        self.pid = int(reply["pid"])
        self.server_pid = int(reply["server_pid"])
        self.returncode: int | None = None
        self._gone = False

    def check_measured(self) -> None:
        """Nothing to raise: the server measured the runtime before it
        forked this Keep and sent the digest with it."""

    def wait(self, timeout: float) -> int | None:
        """The Keep's exit status as the server reports it; None if it has not
        ended within ``timeout`` or the server is gone without saying."""
        if self.returncode is not None or self._gone:
            return self.returncode
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._control], [], [], max(left, 0.0))
            if not ready:
                return None
            try:
                data = self._control.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                self._gone = True
                return None
            with contextlib.suppress(ValueError, KeyError, TypeError):
                msg = json.loads(data)
                if msg.get("op") == "exit":
                    self.returncode = int(msg["status"])
                    return self.returncode

    def close(self) -> None:
        """Close the stream and the control connection (the server ends the
        Keep if it is still running after a grace period)."""
        for sock in (self.conn, self._control):
            with contextlib.suppress(OSError):
                sock.close()


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


def _start_server(directory: Path, name: str, idle: float) -> subprocess.Popen[bytes]:
    """Start the server detached (own session; it outlives this process).
    Its environment is minimal and its arguments name only places: no
    secret of the caller's reaches it."""
    p = paths(directory, name)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    fd = os.open(p["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-m",
                "stockade.host.warm",
                "--dir",
                str(directory),
                "--name",
                name,
                "--idle",
                str(idle),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=fd,
            env=env,
            cwd="/",  # not the first client's directory, which may go away
            close_fds=True,
            start_new_session=True,
        )
    finally:
        os.close(fd)


def _try_connect(path: Path) -> socket.socket | None:
    """A connection to the server at ``path``; None when none listens."""
    try:
        return _connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except OSError as exc:
        raise WarmUnavailable(f"cannot reach the fork server at {path} ({exc.strerror})") from None


def _await_server(directory: Path, name: str, idle: float, proc: subprocess.Popen[bytes]) -> socket.socket:
    """A connection to the server ``proc`` (or the one that won the lock)."""
    path = paths(directory, name)["socket"]
    starts = 1
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        sock = _try_connect(path)
        if sock is not None:
            return sock
        status = proc.poll()
        if status not in (None, 0):
            raise WarmUnavailable(
                f"the fork server exited with status {status} at start-up; see {paths(directory, name)['log']}"
            )
        if status == 0 and starts < 3:
            # It lost the lock: to another client's server, which binds soon,
            # or to one exiting (idle), which releases it soon: try again.
            time.sleep(0.05)
            proc = _start_server(directory, name, idle)
            starts += 1
        time.sleep(0.01)
    raise WarmUnavailable(f"the fork server did not start within {START_TIMEOUT_S:.0f} s")


class Pending:
    """A Keep asked of this user's warm server: the request goes out at once
    when the server runs, so that it forks the Keep while the caller gets
    ready; else the server is started at once and asked in :meth:`result`,
    which waits for the Keep. Raises :class:`WarmUnavailable` (nothing was
    sent to any Keep yet)."""

    def __init__(
        self,
        backend: str,
        state_dir: Path,
        environ: Mapping[str, str] | None = None,
        compile_cache: Path | None = None,
    ) -> None:
        if backend not in WARM_BACKENDS:
            raise WarmUnavailable(f"backend {backend} is not served warm")
        env = os.environ if environ is None else environ
        self.directory, self.name, self.idle = runtime_dir(env), server_name(), idle_seconds(env)
        self.request = {
            "op": "keep",
            "v": PROTOCOL,
            "backend": backend,
            "state_dir": str(state_dir.resolve()),
            # The Keep's sealed compile cache (ADR 0023), or None: --no-compile-cache.
            "compile_cache": None if compile_cache is None else str(compile_cache.absolute()),
        }
        #: Whether this client started the server.
        self.started = False
        self._control: socket.socket | None = None
        self._starting: subprocess.Popen[bytes] | None = None
        sock = _try_connect(paths(self.directory, self.name)["socket"])
        if sock is None:
            # It starts while the caller gets ready (imports, options).
            self._starting = _start_server(self.directory, self.name, self.idle)
            self.started = True
        else:
            self._control = self._ask(sock)

    def _send(self) -> socket.socket:
        """Connect (starting a server when none listens) and ask."""
        sock = _try_connect(paths(self.directory, self.name)["socket"])
        if sock is None:
            sock = _await_server(
                self.directory, self.name, self.idle, _start_server(self.directory, self.name, self.idle)
            )
            self.started = True
        return self._ask(sock)

    def _ask(self, control: socket.socket) -> socket.socket:
        try:
            if peer_uid(control) != os.getuid():
                raise WarmUnavailable(f"the fork server at {self.directory} runs as another user")
            with contextlib.suppress(OSError):  # a server exiting as we connected: result() retries
                control.send(json.dumps(self.request).encode())
        except BaseException:
            control.close()
            raise
        return control

    def result(self) -> WarmKeep:
        if self._starting is not None:
            proc, self._starting = self._starting, None
            self._control = self._ask(_await_server(self.directory, self.name, self.idle, proc))
        for attempt in range(2):
            control = self._control
            if control is None:
                raise WarmUnavailable("the request was cancelled")
            try:
                keep = _receive(control)
            except BaseException:
                self.cancel()
                raise
            if keep is not None:
                self._control = None  # the Keep's now
                return keep
            self.cancel()
            if attempt == 0:
                # The server was exiting (idle) as we connected: start a new one.
                self._control = self._send()
        raise WarmUnavailable("the fork server closed the connection before starting a Keep")

    def cancel(self) -> None:
        """Give up the request (the server ends a Keep it started for it)."""
        control, self._control = self._control, None
        if control is not None:
            control.close()


def _receive(control: socket.socket) -> WarmKeep | None:
    """The server's reply to a request sent on ``control``; None if it
    closed the connection first."""
    try:
        ready, _, _ = select.select([control], [], [], REQUEST_TIMEOUT_S)
        if not ready:
            raise WarmUnavailable(f"the fork server did not answer within {REQUEST_TIMEOUT_S:.0f} s")
        data, fds, _flags, _addr = socket.recv_fds(control, MAX_MESSAGE, 1)
    except OSError:
        return None
    try:
        if not data:
            return None
        try:
            reply = json.loads(data)
            op = reply.get("op")
        except (ValueError, AttributeError):
            raise WarmUnavailable("the fork server sent a malformed reply") from None
        if op == "error":
            raise WarmUnavailable(f"the fork server refused: {reply.get('detail')}")
        if op != "started" or len(fds) != 1:
            raise WarmUnavailable("the fork server sent an unexpected reply")
        conn = socket.socket(fileno=fds.pop())
        try:
            return WarmKeep(control, conn, reply)
        except (ValueError, KeyError, TypeError):
            conn.close()
            raise WarmUnavailable("the fork server sent a malformed reply") from None
    finally:
        for fd in fds:
            os.close(fd)


# == server side ==========================================================================================


class _Generation:
    """One pair of zygotes and the measurement of the files they loaded."""

    def __init__(self, log_dir: Path) -> None:
        from stockade.host.forkserver import ForkSpawner

        self.spawner: ForkSpawner = ForkSpawner(log_dir)
        self.spawner.start()
        self.measurement = self.spawner.measurement()
        self.active = 0
        self.retired = False


class WarmServer:
    def __init__(self, directory: Path, name: str, idle: float, log: Any) -> None:
        self.directory, self.name, self.idle = directory, name, idle
        self.paths = paths(directory, name)
        self.log = log
        self.uid = os.getuid()
        self._lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._gen: _Generation | None = None
        self._active = 0
        self._last = time.monotonic()

    def say(self, text: str) -> None:
        """One line in the server's log (never workload data: the server
        sees none; never a request's content beyond backend and paths)."""
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} warm[{os.getpid()}] {text}\n"
        with self._log_lock:
            self.log.write(line)
            self.log.flush()

    # -- generations ---------------------------------------------------------------------------------------

    def _current(self) -> _Generation:
        """The generation to fork from, restarted when the Keep runtime's
        files changed since it started (or its zygote died)."""
        from stockade.measure.launch import keep_measurement

        with self._lock:
            gen = self._gen
            now = keep_measurement()  # cheap when nothing changed (per-process hash cache)
            # spawner.measurement() restarts a dead zygote (and re-measures).
            if gen is not None and gen.spawner.measurement() != now:
                self.say(
                    f"Keep runtime changed since its zygotes started (measurement "
                    f"{gen.spawner.measurement().hex()[:16]}… -> {now.hex()[:16]}…): restarting them"
                )
                self._retire(gen)
                gen = None
            if gen is None:
                gen = _Generation(self.paths["logs"])
                if gen.measurement != now:  # changed again while starting: never report a stale digest
                    self._retire(gen)
                    raise RuntimeError("the Keep runtime is changing; try again")
                self._gen = gen
                self.say(f"zygotes started, measurement {gen.measurement.hex()}")
            gen.active += 1
            return gen

    def _retire(self, gen: _Generation) -> None:
        gen.retired = True
        if gen.active == 0:
            threading.Thread(target=gen.spawner.close, daemon=True).start()

    def _release(self, gen: _Generation) -> None:
        with self._lock:
            gen.active -= 1
            if gen.retired and gen.active == 0:
                threading.Thread(target=gen.spawner.close, daemon=True).start()

    # -- connections ---------------------------------------------------------------------------------------

    def serve_connection(self, conn: socket.socket) -> None:
        try:
            self._serve(conn)
        except Exception as exc:  # one client's failure never ends the server
            self.say(f"request failed: {type(exc).__name__}: {exc}")
            with contextlib.suppress(OSError):
                conn.send(json.dumps({"op": "error", "detail": f"{type(exc).__name__}: {exc}"}).encode())
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            with self._lock:
                self._active -= 1
                self._last = time.monotonic()

    def _serve(self, conn: socket.socket) -> None:
        from stockade.host.loader import start_keep

        uid = peer_uid(conn)
        if uid != self.uid:
            self.say(f"refused a connection from uid {uid}: this fork server serves uid {self.uid} only")
            conn.send(json.dumps({"op": "error", "detail": f"uid {uid} is not this server's user"}).encode())
            return
        conn.settimeout(10.0)
        data = conn.recv(MAX_MESSAGE)
        if not data:
            return
        req = json.loads(data)
        if not isinstance(req, dict) or req.get("op") != "keep" or req.get("v") != PROTOCOL:
            raise ValueError("not a version 1 keep request")
        backend, state = req.get("backend"), req.get("state_dir")
        if backend not in WARM_BACKENDS:
            raise ValueError(f"backend {backend!r} is not served warm")
        if not isinstance(state, str) or not os.path.isabs(state) or not os.path.isdir(state):
            raise ValueError("state_dir must be an existing absolute directory")
        cache = req.get("compile_cache")
        if cache is not None and (not isinstance(cache, str) or not os.path.isabs(cache)):
            raise ValueError("compile_cache must be an absolute path or null")
        gen = self._current()
        handle: KeepHandle | None = None
        try:
            handle = start_keep(
                backend,
                Path(state),
                spawner=gen.spawner,
                compile_cache=None if cache is None else Path(cache),
            )
            reply = {
                "op": "started",
                "keep_id": handle.keep_id,
                "measurement": handle.measurement.hex(),
                "log": str(handle.log_path),
                "pid": handle.keep.pid,
                "server_pid": os.getpid(),
            }
            socket.send_fds(conn, [json.dumps(reply).encode()], [handle.conn.fileno()])
            handle.conn.close()  # the client's now: its end must close when the client's does
            self.say(f"Keep {handle.keep_id} ({backend}) forked, pid {handle.keep.pid}")
            self._watch(conn, handle)
        finally:
            if handle is not None:
                handle.close(ORPHAN_GRACE_S)
                self.say(f"Keep {handle.keep_id} ended (status {handle.keep.poll()})")
            self._release(gen)

    def _watch(self, conn: socket.socket, handle: KeepHandle) -> None:
        """Report the Keep's exit, or end it when the client goes away."""
        conn.setblocking(False)
        while True:
            status = handle.wait(0.05)
            if status is not None:
                with contextlib.suppress(OSError):
                    conn.send(json.dumps({"op": "exit", "status": status}).encode())
                return
            ready, _, _ = select.select([conn], [], [], 0.2)
            if ready:
                try:
                    gone = conn.recv(MAX_MESSAGE) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:  # the Keep gets a grace period, then is killed
                    return

    # -- main loop -----------------------------------------------------------------------------------------

    def run(self) -> int:
        lock_fd = os.open(self.paths["lock"], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            return 0  # another server of this installation runs
        os.ftruncate(lock_fd, 0)
        os.write(lock_fd, f"{os.getpid()}\n".encode())
        try:
            self._release(self._current())  # zygotes up before the socket accepts
        except Exception as exc:
            self.say(f"cannot start the zygotes: {type(exc).__name__}: {exc}")
            return 1
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        path = self.paths["socket"]
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket: we hold the lock, so its server is gone
        old = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old)
        listener.listen(64)
        ino = os.stat(path).st_ino
        self.say(f"serving {path} for uid {self.uid}, idle exit after {self.idle:g} s")
        try:
            while True:
                ready, _, _ = select.select([listener], [], [], 0.25)
                if ready:
                    conn, _ = listener.accept()
                    with self._lock:
                        self._active += 1
                    threading.Thread(target=self.serve_connection, args=(conn,), daemon=True).start()
                    continue
                with self._lock:
                    idle = self._active == 0 and time.monotonic() - self._last >= self.idle
                if idle:
                    self.say("idle: exiting")
                    return 0
        finally:
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == ino:
                    path.unlink()
            listener.close()
            os.close(lock_fd)  # a new server may start now; ours end below
            with self._lock:
                gens = [self._gen] if self._gen is not None else []
                self._gen = None
            for gen in gens:
                gen.spawner.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stockade.host.warm", description=__doc__)
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--idle", type=float, default=DEFAULT_IDLE_S)
    args = parser.parse_args(argv)
    if not args.name.isalnum():
        parser.error("--name must be letters and digits")
    # Started in its own session: a terminal's signals to the run that started
    # it do not reach the server. SIGTERM ends it cleanly (socket removed).
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(0))
    server = WarmServer(args.dir, args.name, args.idle, sys.stderr)
    return server.run()


if __name__ == "__main__":
    sys.exit(main())
