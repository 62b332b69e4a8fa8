"""The Keep inside a VM: its byte streams are virtio-serial ports.

In a VM Keep (backend ``vm``, ``snp`` or ``tdx``; the image's /init starts
``python3 -I -B -m stockade.keep --backend vm``) the host reaches the Keep
only through virtio-serial ports that QEMU connects to host sockets:

- ``stockade.conn``: the byte stream to the client, relayed by the host
  exactly as a process Keep's socket is;
- ``stockade.psp``: only without hardware: the sim PSP that signs reports
  for the ``vm`` backend (NO HARDWARE PROTECTION).

The guest kernel names each port in /sys/class/virtio-ports/*/name and
devtmpfs makes its node /dev/vportNpM. The Keep session works on sockets
(pyOpenSSL, SO_RCVTIMEO), so each port is joined to one end of a socket
pair by two copying threads; the other end is what the session gets.

Evidence: an SEV-SNP guest (configfs-tsm ``sev_guest`` provider or
/dev/sev-guest) uses stockade.evidence.snp.attester, a TD (``tdx_guest``)
stockade.evidence.tdx.attester, and only a guest with neither asks the sim
PSP on its port. A host cannot turn a real guest into a sim one: the guest
kernel, not the host, decides whether those interfaces exist, and sim
evidence never satisfies a policy for snp or tdx.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from stockade.wire.vmports import CONN_PORT, PSP_PORT

__all__ = ["CONN_PORT", "PSP_PORT", "attester", "port_socket"]

PORTS = Path("/sys/class/virtio-ports")
TSM_REPORT = Path("/sys/kernel/config/tsm/report")
SEV_GUEST = Path("/dev/sev-guest")
#: How long the guest waits for a port to appear after the driver loads.
PORT_WAIT_S = 10.0


def find_port(name: str, ports: Path = PORTS, dev: Path = Path("/dev"), wait: float = PORT_WAIT_S) -> Path:
    """The device node of the virtio-serial port called ``name``."""
    deadline = time.monotonic() + wait
    while True:
        try:
            for entry in sorted(os.listdir(ports)):
                try:
                    if (ports / entry / "name").read_text().strip() == name:
                        return dev / entry
                except OSError:
                    continue
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise FileNotFoundError(f"no virtio-serial port named {name!r}")
        time.sleep(0.02)


def _pump_in(fd: int, sock: socket.socket) -> None:
    try:
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                break
            sock.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)


def _pump_out(sock: socket.socket, fd: int) -> None:
    try:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                break
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
    except OSError:
        pass


def port_socket(name: str, **kwargs: Any) -> socket.socket:
    """A socket whose peer is the virtio-serial port ``name``: bytes from
    the host arrive on it, bytes sent on it go to the host; EOF from the
    host (its end closed) is EOF here."""
    node = find_port(name, **kwargs)
    fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
    ours, theirs = socket.socketpair()
    threading.Thread(target=_pump_in, args=(fd, theirs), daemon=True, name=f"{name}-in").start()
    threading.Thread(target=_pump_out, args=(theirs, fd), daemon=True, name=f"{name}-out").start()
    return ours


#: Guest RAM kept for the Keep runtime's own growth while a workload runs
#: (TLS, wasmtime's code and metadata, output buffers).
RUNTIME_RESERVE = 96 << 20


def ram_budget(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes of guest RAM a workload's memory and disk may use together:
    what the kernel reports available now, less :data:`RUNTIME_RESERVE`.
    None when /proc/meminfo cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return max(int(line.split()[1]) * 1024 - RUNTIME_RESERVE, 0)
    except (OSError, ValueError, IndexError):
        return None
    return None


def tsm_provider(root: Path = TSM_REPORT) -> str | None:
    """The configfs-tsm report provider of this guest, if the kernel has one
    (probed by creating and removing a report entry)."""
    if not root.is_dir():
        return None
    entry = root / f"stockade-probe-{os.getpid()}"
    try:
        entry.mkdir()
        try:
            return (entry / "provider").read_text().strip()
        finally:
            entry.rmdir()
    except OSError:
        return None


def attester(
    psp_port: str, *, tsm_root: Path = TSM_REPORT, sev_guest: Path = SEV_GUEST, **port_kwargs: Any
) -> Any:
    """The attester of this guest: hardware when the guest kernel offers
    it, else the sim PSP on ``psp_port`` (``port_kwargs``: where to look
    for it, for tests)."""
    provider = tsm_provider(tsm_root)
    if provider == "sev_guest" or sev_guest.exists():
        from stockade.evidence.snp.attester import SnpAttester

        print("keep: SEV-SNP guest: reports from the AMD security processor", file=sys.stderr, flush=True)
        return SnpAttester()
    if provider == "tdx_guest":
        from stockade.evidence.tdx.attester import TdxAttester

        print("keep: TDX guest: quotes from the TDX module", file=sys.stderr, flush=True)
        return TdxAttester()
    from stockade.evidence.sim.attester import SimAttester

    try:
        sock = port_socket(psp_port, **port_kwargs)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"this guest has no TEE interface (configfs-tsm, /dev/sev-guest) and no sim PSP port {psp_port!r}: "
            "nothing can sign its evidence (a confidential guest needs a kernel with its TEE guest driver)"
        ) from None
    print("keep: no TEE in this VM: the sim PSP signs (NO HARDWARE PROTECTION)", file=sys.stderr, flush=True)
    return SimAttester(sock, "sim")


def load_attesters() -> None:
    """Import every module a VM Keep may use beyond a process Keep's (for
    the recorder of the measured set, stockade.testing.keepload: the
    hardware paths cannot run here, but their modules must be in the
    measured list)."""
    import stockade.evidence.sim.attester
    import stockade.evidence.snp.attester
    import stockade.evidence.tdx.attester  # noqa: F401


if __name__ == "__main__":
    load_attesters()
    os._exit(0)
