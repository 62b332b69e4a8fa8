"""Keep runtime entry point, started by a keep loader (never by users).

    python -I -m stockade.keep --conn-fd N --backend sim --psp-fd M [--compile-cache DIR]
    python3 -I -B -m stockade.keep --backend vm --scratch DIR     (in a VM Keep's /init)

``--conn-fd`` is the byte stream to the client (through the host);
``--psp-fd`` the sim backend's channel to its PSP; ``--compile-cache`` a
host directory for the sealed compile cache (stockade.keep.compilecache:
entries are sealed under a key only this Keep derives). No secret is ever passed
on this command line or in the environment: secrets arrive only inside the
attested TLS channel.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from stockade.keep import guard

    guard.install()  # first: only measured modules may be imported (ADR 0013)
    parser = argparse.ArgumentParser(prog="stockade-keep")
    parser.add_argument("--conn-fd", type=int)
    parser.add_argument("--backend", choices=["sim", "sim-snp", "sim-tdx", "vm"], required=True)
    parser.add_argument("--psp-fd", type=int)
    parser.add_argument("--scratch", type=Path)
    parser.add_argument("--die-with-parent", type=int, metavar="PID")
    parser.add_argument("--compile-cache", type=Path)
    args = parser.parse_args(argv)
    if args.die_with_parent is not None:
        die_with_parent(args.die_with_parent)

    # First, while the process has one thread: the private tmpfs for the
    # workload's files and secrets (stockade.keep.sandbox), and a shared
    # lock on the scratch directory so that no sweep of stale scratch
    # removes it while this Keep lives (stockade.host.loader).
    from stockade.keep import sandbox as _sandbox

    if args.scratch is not None:
        lock_scratch(args.scratch)
    box = _sandbox.enter(args.scratch)
    print(f"keep[{os.getpid()}]: workload disk: {box.mode}", file=sys.stderr, flush=True)

    from stockade.keep.runner import make_engine
    from stockade.keep.session import serve, warm_engine

    engine = warm_engine(make_engine)
    if args.backend == "vm":
        # Inside a VM Keep (stockade.keep.vmguest): virtio-serial ports,
        # hardware evidence when the guest has it, else the sim PSP's port.
        from stockade.keep import vmguest

        box.ram_budget = vmguest.ram_budget()  # the workload's memory and disk share the guest's RAM
        print(
            f"keep: {box.ram_budget} bytes of RAM for the workload's memory and disk",
            file=sys.stderr,
            flush=True,
        )
        try:
            conn = vmguest.port_socket(vmguest.CONN_PORT)
            vm_attester = vmguest.attester(vmguest.PSP_PORT)
        except FileNotFoundError as exc:
            # No connection port, or neither a TEE interface nor the sim
            # PSP's port (e.g. an SNP host whose guest kernel lacks sev-guest).
            print(f"keep: cannot start: {exc}", file=sys.stderr, flush=True)
            return 1
        # A VM Keep may wait in its host's warm pool before a client comes:
        # no limit on the first hello (its host reaps it; nothing is in it yet).
        # No network of its own: only the virtio ports to its host (no steward).
        return serve(conn, vm_attester, engine, args.scratch, box, hello_timeout=None, network=False)
    if args.conn_fd is None:
        parser.error(f"--backend {args.backend} needs --conn-fd")
    if args.psp_fd is None:
        parser.error(f"--backend {args.backend} needs --psp-fd")
    from stockade.evidence.sim.attester import SimAttester

    attester = SimAttester(socket.socket(fileno=args.psp_fd), args.backend)
    return serve(
        socket.socket(fileno=args.conn_fd),
        attester,
        engine,
        args.scratch,
        box,
        compile_cache=args.compile_cache,
    )


def die_with_parent(parent: int) -> None:
    """SIGKILL this Keep when the process that started it dies
    (PR_SET_PDEATHSIG, prctl(2)); end now if it is already gone."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def lock_scratch(scratch: Path) -> None:
    """Hold a shared flock on the scratch directory for the life of the
    process (the descriptor is never closed; it closes when the Keep ends)."""
    import fcntl

    try:
        fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError as exc:
        print(f"keep[{os.getpid()}]: cannot lock the scratch directory ({exc.strerror})", file=sys.stderr)


if __name__ == "__main__":
    code = main()
    # A Keep serves one session; skip interpreter teardown (wasmtime, OpenSSL)
    # so the host and the client are not kept waiting.
    sys.stderr.flush()
    os._exit(code)
