"""Keep fork server ("zygote"): pre-imported Keep runtime, one fork per Keep.

    python -I -m stockade.keep.zygote --role keep|sim-psp --control-fd N

Started by the host (stockade.host.forkserver) with one end of a
``SOCK_SEQPACKET`` socket pair. The process imports the modules of its role
(code only: no key, engine, thread, file or randomness-dependent state is
created before a fork) and runs the role's ``WARM_UP`` (OpenSSL's algorithm
caches filled with constant, public inputs: ADR 0032), then serves
requests, single-threaded:

* ``spawn``: one JSON object plus file descriptors passed with SCM_RIGHTS.
  The zygote forks; the child applies its resource limits (rlimits, and
  joins a cgroup the host prepared), puts the passed descriptors in place
  (0 = /dev/null, 1 = /dev/null, 2 = the log) and runs exactly what
  ``python -m stockade.keep`` (role ``keep``) or ``python -m
  stockade.evidence.sim.psp`` (role ``sim-psp``) runs, then ``_exit``\\ s.
  Its key and its wasmtime engine are created there, after the fork.
  The zygote answers ``spawned`` (pid and /proc start time) or ``error``.
* child exits: the zygote is the children's parent; it reaps them on
  SIGCHLD and reports ``exit`` with the status in subprocess convention
  (negative: killed by that signal). A reply for a spawn is always sent
  before the exit report of that child.

Children get PR_SET_PDEATHSIG(SIGKILL): if the zygote dies, its Keeps die
with it and the host sees their streams end. When the host closes the
control socket, the zygote stops forking, waits for its children (whose
streams were held by the host and have ended) and exits.

Security consequences are discussed in docs/adr/0011-keep-fork-server.md.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import gc
import importlib
import json
import os
import resource
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stockade import procfs

#: Modules imported before any fork, per role: what the child's main needs.
PRELOAD: dict[str, tuple[str, ...]] = {
    "keep": (
        "stockade.keep.__main__",
        "stockade.keep.session",
        "stockade.keep.runner",
        "stockade.keep.identity",
        "stockade.keep.loading",
        "stockade.keep.sandbox",
        # Imported by every Keep's preload thread (keep/session.py): ~10 ms
        # of a forked Keep's CPU, which held the GIL while the session's
        # thread attested (issue 18).
        "stockade.keep.netsock",
        "stockade.keep.compilecache",
        "stockade.evidence.sim.attester",
        "wasmtime",
        "OpenSSL.SSL",
        "cryptography.x509",
        "cryptography.hazmat.primitives.asymmetric.ec",
        "tempfile",
        "argparse",
    ),
    "sim-psp": (
        "stockade.evidence.sim.psp",
        "stockade.evidence.sim.chip",
        "stockade.evidence.sim.tdx_chip",
        "argparse",
    ),
}

#: Run after the imports, before any fork, per role: one-time library
#: set-up with constant, public inputs only (no key, no randomness, no
#: thread: ADR 0032), that every child would otherwise repeat.
WARM_UP: dict[str, str] = {
    "keep": "stockade.keep.session:fork_warm_up",
    "sim-psp": "stockade.evidence.sim.psp:fork_warm_up",
}

#: rlimits a spawn request may set (name in the request -> resource).
RLIMITS: dict[str, int] = {
    "core": resource.RLIMIT_CORE,
    "nofile": resource.RLIMIT_NOFILE,
    "fsize": resource.RLIMIT_FSIZE,
}

MAX_MESSAGE = 1 << 16
MAX_FDS = 8
PR_SET_PDEATHSIG = 1


class SpawnError(Exception):
    """A spawn request the zygote refuses (reported to the host)."""


def _thread_count() -> int:
    count = procfs.status_number("Threads")
    return threading.active_count() if count is None else count  # no /proc: best guess


def preload(role: str) -> None:
    """Import the role's modules, then move every object to the permanent
    GC generation so that collections in the children do not touch (and
    copy) the pages shared with the zygote."""
    for name in PRELOAD[role]:
        importlib.import_module(name)
    if role in WARM_UP:
        module, _, function = WARM_UP[role].partition(":")
        warm_up = getattr(importlib.import_module(module), function)
        with contextlib.suppress(Exception):  # only a warm-up: the children do without it
            warm_up()
    gc.collect()
    gc.freeze()


def _status_to_returncode(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def _child_main(role: str, params: dict[str, Any], fds: list[int]) -> Callable[[], int]:
    """The function the child runs after its fds are in place (validated
    in the zygote before forking, so that bad requests fail there)."""
    if role == "keep":
        if len(fds) != 3:
            raise SpawnError("a keep spawn passes 3 fds: log, conn, psp")
        backend = params.get("backend")
        if backend not in ("sim", "sim-snp", "sim-tdx"):
            raise SpawnError(f"unsupported backend {backend!r}")
        argv = ["--backend", backend, "--conn-fd", "3", "--psp-fd", "4"]
        scratch = params.get("scratch")
        if scratch is not None:
            if not isinstance(scratch, str):
                raise SpawnError("scratch must be a path")
            argv += ["--scratch", scratch]
        cache = params.get("compile_cache")
        if cache is not None:
            if not isinstance(cache, str):
                raise SpawnError("compile_cache must be a path")
            argv += ["--compile-cache", cache]

        def run_keep() -> int:
            from stockade.keep.__main__ import main

            sys.argv = ["stockade-keep", *argv]
            return main(argv)

        return run_keep
    if len(fds) != 2:
        raise SpawnError("a sim-psp spawn passes 2 fds: log, channel")
    state, measurement = params.get("state"), params.get("measurement")
    if not isinstance(state, str) or not isinstance(measurement, str):
        raise SpawnError("a sim-psp spawn needs state and measurement")
    flavour = params.get("flavour", "snp")
    if flavour not in ("snp", "tdx"):
        raise SpawnError(f"unsupported sim flavour {flavour!r}")
    argv = ["--state", state, "--fd", "3", "--measurement", measurement, "--flavour", flavour]

    def run_psp() -> int:
        from stockade.evidence.sim.psp import main

        sys.argv = ["stockade-sim-psp", *argv]
        return main(argv)

    return run_psp


def _check_limits(params: dict[str, Any]) -> tuple[dict[str, int], str | None]:
    raw = params.get("rlimits", {})
    if not isinstance(raw, dict) or set(raw) - set(RLIMITS):
        raise SpawnError(f"rlimits must be a map with keys among {', '.join(RLIMITS)}")
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SpawnError(f"rlimit {name} must be a non-negative integer")
    cgroup = params.get("cgroup")
    if cgroup is not None and not isinstance(cgroup, str):
        raise SpawnError("cgroup must be a path")
    return raw, cgroup


def apply_limits(rlimits: dict[str, int], cgroup: str | None) -> None:
    """In the child: lower the soft and hard limits, join the cgroup."""
    for name, value in rlimits.items():
        resource.setrlimit(RLIMITS[name], (value, value))
    if cgroup is not None:
        # "0" moves the writing process (cgroup v2).
        Path(cgroup, "cgroup.procs").write_text("0\n")


def _load_libc() -> Any:
    """libc for prctl, loaded before any fork (children only call into it)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


class Zygote:
    def __init__(self, role: str, control: socket.socket) -> None:
        self.role = role
        self.control = control
        self.children: set[int] = set()
        self.accepting = True
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._libc = _load_libc()

    # -- protocol

    def send(self, msg: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.control.send(json.dumps(msg, separators=(",", ":")).encode())

    def receive(self) -> tuple[dict[str, Any], list[int]] | None:
        """One request, or None at the end of the control stream."""
        fds: list[int] = []
        try:
            msg, fds, flags, _ = socket.recv_fds(self.control, MAX_MESSAGE, MAX_FDS)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            return {}, []
        if not msg:
            for fd in fds:
                os.close(fd)
            return None
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            return {"op": "invalid"}, []
        try:
            doc = json.loads(msg)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            doc = {"op": "invalid"}
        return doc, fds

    # -- work

    def spawn(self, req: dict[str, Any], fds: list[int]) -> None:
        rid = req.get("id")
        try:
            if not self.accepting:
                raise SpawnError("the fork server is shutting down")
            params = req.get("params")
            if not isinstance(params, dict):
                raise SpawnError("params must be a map")
            target = _child_main(self.role, params, fds)
            rlimits, cgroup = _check_limits(params)
            pid = self._fork(target, fds, rlimits, cgroup)
        except (SpawnError, OSError) as exc:
            self.send({"op": "error", "id": rid, "detail": str(exc) or type(exc).__name__})
            return
        finally:
            for fd in fds:
                os.close(fd)  # the child has its copies
        self.children.add(pid)
        self.send({"op": "spawned", "id": rid, "pid": pid, "start_time": procfs.start_time(pid)})

    def _fork(
        self, target: Callable[[], int], fds: list[int], rlimits: dict[str, int], cgroup: str | None
    ) -> int:
        if _thread_count() != 1:  # pragma: no cover - guarded at start-up too
            raise SpawnError("the fork server is not single-threaded; refusing to fork")
        pid = os.fork()
        if pid:
            return pid
        # Child: never return into the zygote's loop.
        code = 1
        try:
            code = self._child(target, fds, rlimits, cgroup)
        except BaseException:  # report and exit, whatever happened
            with contextlib.suppress(Exception):
                import traceback

                traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
        return 0  # pragma: no cover - unreachable

    def _child(
        self, target: Callable[[], int], fds: list[int], rlimits: dict[str, int], cgroup: str | None
    ) -> int:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
        self._libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the zygote died between fork and prctl
            return 1
        # fds: log -> 2, then the role's sockets -> 3, 4, ...; stdin/stdout -> /dev/null.
        devnull = os.open(os.devnull, os.O_RDWR)
        staged = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + MAX_FDS) for fd in fds]  # above the targets
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(staged[0], 2)
        for i, fd in enumerate(staged[1:]):
            os.dup2(fd, 3 + i, inheritable=False)
        keep_open = 3 + len(staged) - 1
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        os.closerange(keep_open, hard if 0 < hard <= 1 << 20 else 1 << 20)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's stdin
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        apply_limits(rlimits, cgroup)
        return target()

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.send({"op": "exit", "pid": pid, "status": _status_to_returncode(status)})

    def serve(self) -> int:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        # The host ends the zygote by closing the socket; a Ctrl-C meant for
        # the manager's terminal must not kill the Keeps with their zygote.
        signal.signal(signal.SIGTERM, lambda *_: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        poller = select.poll()
        poller.register(self.control, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while self.accepting or self.children:
            try:
                events = poller.poll(None if self.accepting else 1000)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            for fd, _ in events:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 512):
                            pass
                elif self.accepting:
                    got = self.receive()
                    if got is None:
                        self.accepting = False
                        poller.unregister(self.control)
                        continue
                    req, fds = got
                    if req.get("op") == "spawn":
                        self.spawn(req, fds)
                    else:
                        for fd_ in fds:
                            os.close(fd_)
                        self.send({"op": "error", "id": req.get("id"), "detail": "unknown request"})
            self.reap()
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stockade-zygote")
    parser.add_argument("--role", choices=sorted(PRELOAD), required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    if args.role == "keep":
        from stockade.keep import guard

        guard.install()  # before any preload: only measured modules (ADR 0013)
    control = socket.socket(fileno=args.control_fd)
    preload(args.role)
    if _thread_count() != 1:
        print("zygote: a preloaded module started a thread; refusing to fork", file=sys.stderr)
        return 1
    zygote = Zygote(args.role, control)
    zygote.send({"op": "ready", "pid": os.getpid()})
    try:
        return zygote.serve()
    except OSError as exc:
        if exc.errno != errno.EBADF:
            print(f"zygote: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)
