"""Host side of the Keep fork server (the zygote, stockade.keep.zygote).

A :class:`ForkServer` starts ``python -I -m stockade.keep.zygote --role R``
as a subprocess (the host never imports Keep code) and talks to it over a
``SOCK_SEQPACKET`` socket pair: JSON requests, file descriptors with
SCM_RIGHTS. One reader thread per fork server receives the replies and the
exit reports of the children (the zygote is their parent and reaps them).

A child is a :class:`ZygoteChild`, which behaves like the
:class:`subprocess.Popen` the loader returns otherwise (pid, poll, wait,
send_signal, kill, returncode; see stockade.host.loader.KeepProcess).
Signals go through a pidfd opened when the child is reported and checked
against the start time the zygote read, so a recycled pid is never
signalled.

:class:`ForkSpawner` plugs two fork servers (one for Keeps, one for sim
PSPs) into :func:`stockade.host.loader.start_keep`; :func:`fork_starter`
makes the ``starter`` of the keep manager from it. Per-Keep limits: rlimits
in every child; a cgroup v2 (memory.max, pids.max) per Keep when the host
delegates one (stockade.host.cgroups), else a log line says why not.

Design and security notes: docs/adr/0011-keep-fork-server.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from stockade.host.cgroups import Cgroups
from stockade.host.loader import DEFAULT_LIMITS, KeepHandle, KeepProcess, ResourceLimits, start_keep
from stockade.measure.launch import keep_measurement
from stockade.procfs import start_time as proc_start_time

log = logging.getLogger("stockade.host.forkserver")

MAX_MESSAGE = 1 << 16
READY_TIMEOUT_S = 60.0
SPAWN_TIMEOUT_S = 30.0


class ForkServerError(RuntimeError):
    """The fork server could not start a child (or is gone)."""


class ZygoteChild:
    """A process forked by the zygote; its exit status comes from the zygote."""

    def __init__(self, pid: int, start_time: int | None, on_exit: Callable[[], None] | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._done = threading.Event()
        self._on_exit = on_exit
        self._pidfd: int | None = None
        self._lock = threading.Lock()
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return  # already reaped: its exit report follows
        if start_time is not None and proc_start_time(pid) == start_time:
            self._pidfd = fd
        else:
            os.close(fd)  # gone, or the pid is another process's by now

    def _exited(self, status: int) -> None:
        with self._lock:
            if self.returncode is not None:
                return
            self.returncode = status
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        if self._on_exit is not None:
            self._on_exit()
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"keep child {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self.returncode is not None or self._pidfd is None:
                return
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """One zygote process of a role (``keep`` or ``sim-psp``)."""

    def __init__(self, role: str, log_path: Path) -> None:
        self.role = role
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as err, theirs:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-m",
                    "stockade.keep.zygote",
                    "--role",
                    role,
                    "--control-fd",
                    str(theirs.fileno()),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")},
                close_fds=True,
            )
        self._sock = ours
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, tuple[Future[ZygoteChild], Callable[[], None] | None]] = {}
        self._children: dict[int, ZygoteChild] = {}
        self._closed = False
        self._ready: Future[int] = Future()
        self._thread = threading.Thread(target=self._read_loop, name=f"zygote-{role}", daemon=True)
        self._thread.start()
        try:
            self.zygote_pid = self._ready.result(READY_TIMEOUT_S)
        except Exception as exc:
            self.close()
            raise ForkServerError(f"the {role} fork server did not start ({exc}); see {log_path}") from None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and not self._closed

    def spawn(
        self, params: dict[str, Any], fds: list[int], on_exit: Callable[[], None] | None = None
    ) -> ZygoteChild:
        """Fork a child that gets ``fds`` (log first) and runs the role's main."""
        future: Future[ZygoteChild] = Future()
        with self._state_lock:
            if self._closed:
                raise ForkServerError(f"the {self.role} fork server is closed")
            self._next_id += 1
            rid = self._next_id
            self._pending[rid] = (future, on_exit)
        msg = json.dumps({"op": "spawn", "id": rid, "params": params}).encode()
        try:
            with self._send_lock:
                socket.send_fds(self._sock, [msg], fds)
        except OSError as exc:
            with self._state_lock:
                self._pending.pop(rid, None)
            raise ForkServerError(f"the {self.role} fork server is gone ({type(exc).__name__})") from None
        return future.result(SPAWN_TIMEOUT_S)

    def _read_loop(self) -> None:
        try:
            while True:
                data = self._sock.recv(MAX_MESSAGE)
                if not data:
                    break
                self._dispatch(json.loads(data))
        except (OSError, ValueError) as exc:
            log.error("%s fork server: control channel failed (%s)", self.role, type(exc).__name__)
        finally:
            self._gone()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "ready":
            self._ready.set_result(int(msg["pid"]))
        elif op == "spawned":
            with self._state_lock:
                future, on_exit = self._pending.pop(int(msg["id"]), (None, None))
            child = ZygoteChild(int(msg["pid"]), msg.get("start_time"), on_exit)
            with self._state_lock:
                self._children[child.pid] = child  # before its exit report can arrive
            if future is not None:
                future.set_result(child)
        elif op == "exit":
            with self._state_lock:
                exited = self._children.pop(int(msg["pid"]), None)
            if exited is not None:
                exited._exited(int(msg["status"]))
        elif op == "error":
            with self._state_lock:
                future, _ = self._pending.pop(int(msg.get("id") or 0), (None, None))
            if future is not None:
                future.set_exception(ForkServerError(f"fork server refused: {msg.get('detail')}"))

    def _gone(self) -> None:
        """The zygote ended: its children were killed (PR_SET_PDEATHSIG)."""
        with self._state_lock:
            self._closed = True
            pending, self._pending = self._pending, {}
            children, self._children = self._children, {}
        if not self._ready.done():
            self._ready.set_exception(ForkServerError("the fork server exited"))
        for future, _ in pending.values():
            future.set_exception(ForkServerError(f"the {self.role} fork server exited"))
        if children:
            log.error(
                "%s fork server ended with %d live child(ren); they were killed", self.role, len(children)
            )
        for child in children.values():
            child._exited(-signal.SIGKILL)

    def close(self, timeout: float = 10.0) -> None:
        """Stop forking; the zygote exits once its children have ended."""
        with self._state_lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
            self.proc.wait()
        self._thread.join(timeout)
        with contextlib.suppress(OSError):
            self._sock.close()


class ForkSpawner:
    """A loader spawner (stockade.host.loader.Spawner) backed by two fork
    servers, started on first use; thread-safe."""

    def __init__(
        self,
        log_dir: Path,
        limits: ResourceLimits = DEFAULT_LIMITS,
        cgroups: Cgroups | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.limits = limits
        self.cgroups = cgroups
        self._servers: dict[str, ForkServer] = {}
        self._lock = threading.Lock()
        self._measurement: bytes | None = None

    def _server(self, role: str) -> ForkServer:
        with self._lock:
            server = self._servers.get(role)
            if server is None or not server.alive:
                if role == "keep":
                    # The digest of the files the zygote is about to import:
                    # every Keep it forks runs exactly this code.
                    self._measurement = keep_measurement()
                server = ForkServer(role, self.log_dir / f"zygote-{role}.log")
                self._servers[role] = server
            return server

    def start(self) -> None:
        """Start both fork servers now (instead of on the first Keep)."""
        self._server("keep")
        self._server("sim-psp")

    def measurement(self) -> bytes:
        self._server("keep")
        assert self._measurement is not None
        return self._measurement

    def current_measurement(self) -> bytes | None:
        """The measurement of the Keep zygote now serving (None: none is
        running; it is measured again when the next one starts). Never
        starts a zygote (stockade.host.keeppool compares its Keeps with it)."""
        with self._lock:
            server = self._servers.get("keep")
            return self._measurement if server is not None and server.alive else None

    def keep(
        self,
        keep_id: str,
        backend: str,
        log_fd: int,
        conn_fd: int,
        psp_fd: int,
        scratch: Path | None,
        compile_cache: Path | None = None,
    ) -> KeepProcess:
        params: dict[str, Any] = {"backend": backend, "rlimits": self.limits.rlimits()}
        if scratch is not None:
            params["scratch"] = str(scratch)
        if compile_cache is not None:
            params["compile_cache"] = str(compile_cache)
        group: Path | None = None
        if self.cgroups is not None:
            group = self.cgroups.create(keep_id, self.limits.memory_max, self.limits.pids_max)
            params["cgroup"] = str(group)
        on_exit = functools.partial(Cgroups.remove, group) if group is not None else None
        try:
            return self._server("keep").spawn(params, [log_fd, conn_fd, psp_fd], on_exit)
        except BaseException:
            if group is not None:
                Cgroups.remove(group)
            raise

    def psp(
        self, state_dir: Path, log_fd: int, channel_fd: int, measurement: bytes, flavour: str = "snp"
    ) -> KeepProcess:
        params = {
            "state": str(state_dir),
            "measurement": measurement.hex(),
            "flavour": flavour,
            "rlimits": self.limits.rlimits(),
        }
        return self._server("sim-psp").spawn(params, [log_fd, channel_fd])

    def close(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.close()


def fork_starter(spawner: ForkSpawner) -> Callable[..., KeepHandle]:
    """A ``starter`` for stockade.host.manager.Supervisor / create_app."""
    return functools.partial(start_keep, spawner=spawner)


def manager_spawner(
    state_dir: Path, limits: ResourceLimits = DEFAULT_LIMITS, *, use_cgroups: bool = True
) -> ForkSpawner:
    """The fork spawner of ``stockade host serve``: per-Keep cgroups when the
    host delegates cgroup v2 (logged either way), both fork servers started."""
    from stockade.host import cgroups as cg

    groups: Cgroups | None = None
    if use_cgroups:
        try:
            groups = cg.setup(cg.detect())
            log.info(
                "per-Keep cgroups in %s (memory.max %s, pids.max %s)",
                groups.keeps,
                limits.memory_max,
                limits.pids_max,
            )
        except cg.CgroupUnavailable as exc:
            log.warning("per-Keep cgroup limits unavailable: %s; Keeps run with rlimits only", exc)
    _raise_nofile()
    spawner = ForkSpawner(state_dir / "logs", limits, groups)
    spawner.start()
    return spawner


def _raise_nofile(want: int = 65536) -> None:
    """Each Keep costs the manager about five descriptors (its stream, the
    client's WebSocket, pidfds of the Keep and its PSP, the watcher's
    pidfd): raise the soft limit (1024 under systemd by default) toward
    the hard one. The manager's children get their own lower limits."""
    from stockade.host.guard import raise_nofile

    raise_nofile(want)
