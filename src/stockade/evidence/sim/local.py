"""Run a sim PSP inside the calling host-side process (local runs).

``stockade run`` is both client and host: instead of starting a separate
PSP process it serves the PSP from a thread, after starting the Keep, so the
expensive imports and key loading overlap with the Keep's own start-up. The
VCEK key is still never in the Keep process.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from stockade.errors import StockadeError


def chip_exists(state_dir: Path) -> bool:
    """Cheap check (no crypto imports) whether the sim chip was generated."""
    return (state_dir / "sim" / "chip" / "chip.json").exists()


def serve_in_thread(
    state_dir: Path, measurement: bytes | Callable[[], bytes], flavour: str = "snp"
) -> socket.socket:
    """Start a sim PSP for one Keep in a daemon thread; return the Keep's end.

    ``measurement`` may be a callable that blocks until the loader has the
    launch digest (stockade.host.loader hashes the Keep's files while the Keep
    starts): the PSP answers no report before it has it. If it fails (the
    loader refuses to measure), the PSP closes the channel. ``flavour``
    ``tdx`` serves the sim TDX QE instead (backend sim-tdx)."""
    host_end, keep_end = socket.socketpair()

    def run() -> None:
        from stockade.evidence.sim.psp import serve_reports, signer_for

        with host_end, contextlib.suppress(OSError, ValueError, StockadeError):
            digest = measurement if isinstance(measurement, bytes) else measurement()
            serve_reports(host_end, signer_for(flavour, state_dir, digest))

    threading.Thread(target=run, daemon=True, name="sim-psp").start()
    return keep_end
