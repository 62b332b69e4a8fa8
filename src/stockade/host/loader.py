"""Keep loader: starts one Keep (and, for sim, its PSP) on the untrusted host.

The loader is host code: it imports ``stockade.wire`` only and never sees
plaintext workload data or secrets. For the ``sim`` backend it

1. computes the launch digest of the Keep runtime it is about to start
   (wire.launch), as a hypervisor measures guest pages at launch;
2. starts the sim PSP process with that digest and one end of a socket pair
   (the Keep gets the other end: its /dev/sev-guest);
3. starts the Keep runtime process with one end of a second socket pair,
   whose other end is returned to the caller: the byte stream to the Keep.

Both children get a minimal environment and ``-I`` (isolated mode), their
stdout is discarded and their stderr goes to a log file in the state
directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stockade.wire.launch import keep_measurement

BACKENDS = ("sim",)


@dataclass
class KeepHandle:
    keep_id: str
    backend: str
    conn: socket.socket
    keep: subprocess.Popen[bytes]
    psp: subprocess.Popen[bytes] | None
    measurement: bytes
    log_path: Path
    scratch: Path | None = None  # created by the loader, removed by close()

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


def _child_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep}


#: Starts a PSP for a Keep with the given launch digest and returns the
#: Keep's end of its channel (used to run the sim PSP in the caller's process).
PspStarter = Callable[[bytes], socket.socket]


def start_keep(
    backend: str,
    state_dir: Path,
    scratch: Path | None = None,
    psp: PspStarter | None = None,
    keep_id: str | None = None,
) -> KeepHandle:
    """Start a Keep. The sim PSP runs as its own process unless ``psp`` is
    given (local runs pass one that serves it from a thread of the calling
    host-side process, saving a Python start-up). ``keep_id`` defaults to 16
    random hex digits (the keep manager passes the id it registered)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; this host supports: {', '.join(BACKENDS)}")
    if keep_id is None:
        keep_id = secrets.token_hex(8)
    elif not keep_id.isalnum() or not keep_id.isascii() or len(keep_id) > 64:
        raise ValueError(f"Keep id must be 1 to 64 ASCII letters or digits, got {keep_id!r}")
    owned_scratch = None
    if scratch is None:
        # Per-Keep scratch directory for the workload's files and secrets,
        # preferably in memory (/dev/shm); the loader removes it when the Keep
        # is gone, even if the Keep was killed.
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        scratch = owned_scratch = Path(tempfile.mkdtemp(prefix=f"stockade-keep-{keep_id}-", dir=base))
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"keep-{keep_id}.log"
    measurement = keep_measurement()
    client_end, keep_end = socket.socketpair()
    env = _child_env()
    psp_proc: subprocess.Popen[bytes] | None = None
    to_close = [keep_end]
    with open(log_path, "ab") as log:
        if psp is not None:
            psp_keep_end = psp(measurement)
        else:
            psp_host_end, psp_keep_end = socket.socketpair()
            psp_cmd = [
                sys.executable,
                "-I",
                "-m",
                "stockade.evidence.sim.psp",
                "--state",
                str(state_dir),
                "--fd",
                str(psp_host_end.fileno()),
                "--measurement",
                measurement.hex(),
            ]
            psp_proc = subprocess.Popen(
                psp_cmd,
                pass_fds=(psp_host_end.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                close_fds=True,
            )
            to_close.append(psp_host_end)
        to_close.append(psp_keep_end)
        cmd = [
            sys.executable,
            "-I",
            "-m",
            "stockade.keep",
            "--backend",
            backend,
            "--conn-fd",
            str(keep_end.fileno()),
            "--psp-fd",
            str(psp_keep_end.fileno()),
        ]
        if scratch is not None:
            cmd += ["--scratch", str(scratch)]
        keep = subprocess.Popen(
            cmd,
            pass_fds=(keep_end.fileno(), psp_keep_end.fileno()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
            close_fds=True,
        )
    for sock in to_close:
        sock.close()
    return KeepHandle(keep_id, backend, client_end, keep, psp_proc, measurement, log_path, owned_scratch)
