"""Keep loader: starts one Keep (and, for sim, its PSP) on the untrusted host.

The loader is host code: it imports ``stockade.wire`` only and never sees
plaintext workload data or secrets. For the ``sim`` backend it

1. computes the launch digest of the Keep runtime it is about to start
   (measure.launch), as a hypervisor measures guest pages at launch;
2. starts the sim PSP process with that digest and one end of a socket pair
   (the Keep gets the other end: its /dev/sev-guest);
3. starts the Keep runtime process with one end of a second socket pair,
   whose other end is returned to the caller: the byte stream to the Keep.

Both children get a minimal environment and ``-I`` (isolated mode), their
stdout is discarded and their stderr goes to a log file in the state
directory (the loader's own messages and the runtime's, never workload
data). How they are started is the ``spawner``'s business: a fresh
interpreter each (:class:`PopenSpawner`, the default) or a fork of the
Keep fork server (stockade.host.forkserver, the keep manager's default).
Either way each gets the per-Keep rlimits of :class:`ResourceLimits`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from stockade import oneshot
from stockade.measure.launch import keep_measurement

#: Keep backends this loader starts. "sim" and its alias "sim-snp": a
#: simulated SEV-SNP PSP; "sim-tdx": a simulated TDX quoting enclave. All
#: sim: NO HARDWARE PROTECTION.
#: "vm": a QEMU VM booting the Keep image, its reports signed by the sim
#: PSP too (stockade.host.vm; started with a VmSpawner).
#: "snp" and "tdx": a confidential VM on real hardware (stockade.host.vm;
#: no sim signer: the guest asks its own firmware). Never run here.
BACKENDS = ("sim", "sim-snp", "sim-tdx", "vm", "snp", "tdx")
#: Backends with no host-side signer.
HARDWARE_BACKENDS = ("snp", "tdx")
#: Backends whose Keep is a VM (started with stockade.host.vm.VmSpawner).
VM_BACKENDS = ("vm", *HARDWARE_BACKENDS)
#: Keep backend -> flavour of its host-side sim signer
#: (stockade.evidence.sim.psp --flavour).
SIM_FLAVOUR = {"sim": "snp", "sim-snp": "snp", "sim-tdx": "tdx", "vm": "snp"}


class KeepProcess(Protocol):
    """What the host needs of a Keep (or sim PSP) process: a
    :class:`subprocess.Popen` or a child of the Keep fork server
    (:class:`stockade.host.forkserver.ZygoteChild`)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


@dataclass(frozen=True)
class ResourceLimits:
    """Per-Keep process limits. rlimits always apply (soft = hard); the
    cgroup limits only where cgroup v2 is delegated to the manager
    (stockade.host.cgroups). No RLIMIT_AS: wasmtime reserves many GiB of
    address space per linear memory (guard regions), so an address-space
    limit breaks instantiation long before any real memory is used; the
    memory that matters is limited by the store limit (linear memory) and
    memory.max (the whole process)."""

    nofile: int = 256
    fsize: int = 256 << 20
    core: int = 0
    memory_max: int | None = 1 << 30
    pids_max: int | None = 64

    def rlimits(self) -> dict[str, int]:
        return {"core": self.core, "nofile": self.nofile, "fsize": self.fsize}


DEFAULT_LIMITS = ResourceLimits()
_RLIMIT = {"core": resource.RLIMIT_CORE, "nofile": resource.RLIMIT_NOFILE, "fsize": resource.RLIMIT_FSIZE}


class Spawner(Protocol):
    """Starts the processes of one Keep; the fds are inherited by the child
    (log as its stderr; the others as the numbers it is told)."""

    def keep(
        self,
        keep_id: str,
        backend: str,
        log_fd: int,
        conn_fd: int,
        psp_fd: int,
        scratch: Path | None,
        compile_cache: Path | None = None,
    ) -> KeepProcess: ...

    def psp(
        self, state_dir: Path, log_fd: int, channel_fd: int, measurement: bytes, flavour: str = "snp"
    ) -> KeepProcess: ...

    def measurement(self) -> bytes:
        """Launch digest of the Keep runtime this spawner runs."""
        ...


class PopenSpawner:
    """A fresh ``python -I`` interpreter per process (local runs, and
    ``stockade host serve --no-fork-server``). rlimits are set with
    prlimit(2) right after the start, before the Keep reads its hello.

    ``die_with_parent`` (local runs): the Keep sets PR_SET_PDEATHSIG
    (SIGKILL) first thing (``--die-with-parent``), so a killed ``stockade
    run`` does not leave its Keep running (the signal follows the *thread*
    that started the child: start Keeps from a thread that outlives them,
    as ``stockade run``'s main thread does).
    The keep manager does not set it: its Keeps outlive a manager restart."""

    def __init__(self, limits: ResourceLimits = DEFAULT_LIMITS, die_with_parent: bool = False) -> None:
        self.limits = limits
        self.die_with_parent = die_with_parent

    def _start(self, cmd: list[str], fds: tuple[int, ...], log_fd: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-I", "-m", *cmd],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_fd,
            env=child_env(),
            close_fds=True,
        )

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
        cmd = ["stockade.keep", "--backend", backend, "--conn-fd", str(conn_fd), "--psp-fd", str(psp_fd)]
        if scratch is not None:
            cmd += ["--scratch", str(scratch)]
        if compile_cache is not None:
            cmd += ["--compile-cache", str(compile_cache)]
        if self.die_with_parent:
            cmd += ["--die-with-parent", str(os.getpid())]
        return self._limited(self._start(cmd, (conn_fd, psp_fd), log_fd))

    def _limited(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        for name, value in self.limits.rlimits().items():
            with contextlib.suppress(OSError):  # already gone: the watcher sees it
                resource.prlimit(proc.pid, _RLIMIT[name], (value, value))
        return proc

    def measurement(self) -> bytes:
        return keep_measurement()  # the files the fresh interpreter is about to load

    def psp(
        self, state_dir: Path, log_fd: int, channel_fd: int, measurement: bytes, flavour: str = "snp"
    ) -> KeepProcess:
        cmd = [
            "stockade.evidence.sim.psp",
            "--state",
            str(state_dir),
            "--fd",
            str(channel_fd),
            "--measurement",
            measurement.hex(),
            "--flavour",
            flavour,
        ]
        return self._limited(self._start(cmd, (channel_fd,), log_fd))


@dataclass
class KeepHandle:
    keep_id: str
    backend: str
    conn: socket.socket
    keep: KeepProcess
    psp: KeepProcess | None
    #: The launch digest, or (a sim PSP in the caller's process) the digest
    #: still being computed while the Keep starts: read :attr:`measurement`.
    launch_digest: bytes | oneshot.OneShot[bytes]
    log_path: Path
    scratch: Path | None = None  # created by the loader, removed by close()

    @property
    def measurement(self) -> bytes:
        """The launch digest the Keep's PSP signs; waits for it when the
        loader is still hashing the Keep's files (raises what the
        measurement raised, e.g. UnmeasuredCode: the PSP then signs nothing)."""
        if isinstance(self.launch_digest, oneshot.OneShot):
            return self.launch_digest.result()
        return self.launch_digest

    def check_measured(self) -> None:
        """Raise what the measurement raised, if it was refused (the cause
        to report when the Keep died early: it refuses to start for the
        same reason, stockade.keep.guard)."""
        _ = self.measurement

    def wait(self, timeout: float) -> int | None:
        try:
            return self.keep.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self, grace: float = 2.0) -> None:
        """Close the stream and reap both processes (kill after ``grace``)."""
        with contextlib.suppress(OSError):
            self.conn.close()
        for proc in (self.keep, self.psp):
            if proc is None:
                continue
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


#: Scratch directories of the loader: stockade-keep-<id>-<mkdtemp suffix>.
SCRATCH_PREFIX = "stockade-keep-"
_SCRATCH_NAME = re.compile(r"stockade-keep-[A-Za-z0-9]{1,64}-[A-Za-z0-9_]{8}")
#: A scratch directory younger than this is never swept (its Keep may not
#: have locked it yet).
STALE_AFTER_S = 600.0


def scratch_bases() -> list[Path]:
    """Where the loader makes scratch directories: /dev/shm when writable,
    else the temporary directory."""
    shm = Path("/dev/shm")
    bases = [shm] if shm.is_dir() and os.access(shm, os.W_OK) else []
    return [*bases, Path(tempfile.gettempdir())]


def sweep_stale_scratch(bases: list[Path] | None = None, older_than: float = STALE_AFTER_S) -> list[Path]:
    """Remove scratch directories left by Keeps that are gone (a Keep ended
    by SIGKILL, a loader killed before it cleaned up). A live Keep holds a
    shared flock on its scratch directory (stockade.keep.__main__), so a
    directory whose exclusive lock is free and that is older than
    ``older_than`` seconds belongs to nobody. Returns what was removed."""
    removed: list[Path] = []
    now = time.time()
    for base in bases if bases is not None else scratch_bases():
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            if not _SCRATCH_NAME.fullmatch(entry.name):
                continue
            try:
                if not entry.is_dir(follow_symlinks=False) or now - entry.stat().st_mtime < older_than:
                    continue
                fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live Keep holds it
            else:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
            finally:
                os.close(fd)
    return removed


def child_env() -> dict[str, str]:
    """The environment of a host-started Keep-side process: nothing but
    these variables (never a secret: secrets arrive in the attested channel)."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep}


#: Starts a PSP for a Keep and returns the Keep's end of its channel (used to
#: run the sim PSP in the caller's process). Its argument returns the launch
#: digest, blocking until the loader has computed it: the loader hashes the
#: Keep's files while the Keep's interpreter starts (ADR 0013).
PspStarter = Callable[[Callable[[], bytes]], socket.socket]


def start_keep(
    backend: str,
    state_dir: Path,
    scratch: Path | None = None,
    psp: PspStarter | None = None,
    keep_id: str | None = None,
    spawner: Spawner | None = None,
    compile_cache: Path | None = None,
) -> KeepHandle:
    """Start a Keep. The sim PSP runs as its own process unless ``psp`` is
    given (local runs pass one that serves it from a thread of the calling
    host-side process, saving a Python start-up). ``keep_id`` defaults to 16
    random hex digits (the keep manager passes the id it registered).
    ``spawner`` starts the processes: fresh interpreters by default, or
    children of the Keep fork server (stockade.host.forkserver). With
    ``psp``, the handle is returned while the Keep's files are still being
    hashed (:attr:`KeepHandle.measurement` waits for the digest, and raises
    if the measurement was refused: the PSP then signs nothing).
    ``compile_cache``: a host directory the Keep may keep its sealed compile
    cache in (stockade.keep.compilecache; the Keep makes one subdirectory
    per sealing key, i.e. per runtime measurement); process Keeps only (a
    VM Keep has no host storage: ignored); None: no cache."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; this host supports: {', '.join(BACKENDS)}")
    if keep_id is None:
        keep_id = secrets.token_hex(8)
    elif not keep_id.isalnum() or not keep_id.isascii() or len(keep_id) > 64:
        raise ValueError(f"Keep id must be 1 to 64 ASCII letters or digits, got {keep_id!r}")
    spawner = spawner or PopenSpawner()
    owned_scratch = None
    if scratch is None and backend not in VM_BACKENDS:  # a VM Keep's disk is in its own RAM
        # Per-Keep scratch directory, preferably in memory (/dev/shm): the
        # mount point of the Keep's private tmpfs (the workload's files and
        # secrets live there, unseen by the host) and the host's staged
        # package. The loader removes it when the Keep is gone, even if the
        # Keep was killed; directories of Keeps that died with their loader
        # are swept here (and when the keep manager starts).
        sweep_stale_scratch()
        base = scratch_bases()[0]
        scratch = owned_scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{keep_id}-", dir=base))
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"keep-{keep_id}.log"
    measuring: oneshot.OneShot[bytes] | None = None
    hardware = backend in HARDWARE_BACKENDS
    vm = backend in VM_BACKENDS
    if hardware:
        # The launch measurement is the firmware's to compute and sign; the
        # client checks it against its own policy (stockade image measure).
        measurement = b""
    elif psp is not None:
        # Hash the Keep's files (tens of MB on a cold start, ADR 0013) while
        # its interpreter starts: the in-process PSP waits for the digest
        # before it answers the Keep's first report request, and the caller
        # gets the handle at once (it can send its hello while the files are
        # hashed); handle.measurement waits for the digest.
        measuring = oneshot.start(spawner.measurement, "measure")
        measurement = b""
    else:
        measurement = spawner.measurement()
    client_end, keep_end = socket.socketpair()
    psp_proc: KeepProcess | None = None
    keep: KeepProcess | None = None
    to_close = [keep_end]
    try:
        with open(log_path, "ab") as log:
            psp_fd = -1  # hardware backends: no sim signer
            if psp is not None and measuring is not None:  # set only for a sim signer in this process
                psp_keep_end = psp(measuring.result)
                to_close.append(psp_keep_end)
                psp_fd = psp_keep_end.fileno()
            elif not hardware:
                psp_host_end, psp_keep_end = socket.socketpair()
                to_close.append(psp_host_end)
                psp_proc = spawner.psp(
                    state_dir, log.fileno(), psp_host_end.fileno(), measurement, SIM_FLAVOUR[backend]
                )
                to_close.append(psp_keep_end)
                psp_fd = psp_keep_end.fileno()
            extra = {"compile_cache": compile_cache} if compile_cache is not None and not vm else {}
            keep = spawner.keep(keep_id, backend, log.fileno(), keep_end.fileno(), psp_fd, scratch, **extra)
    except BaseException:
        client_end.close()
        if keep is not None:
            keep.kill()
            keep.wait()
        if psp_proc is not None:
            psp_proc.kill()
            psp_proc.wait()
        if owned_scratch is not None:
            shutil.rmtree(owned_scratch, ignore_errors=True)
        raise
    finally:
        for sock in to_close:
            sock.close()
    launch_digest = measurement if measuring is None else measuring
    return KeepHandle(keep_id, backend, client_end, keep, psp_proc, launch_digest, log_path, owned_scratch)
