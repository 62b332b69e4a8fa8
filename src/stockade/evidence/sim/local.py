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
from pathlib import Path


def chip_exists(state_dir: Path) -> bool:
    """Cheap check (no crypto imports) whether the sim chip was generated."""
    return (state_dir / "sim" / "chip" / "chip.json").exists()


def serve_in_thread(state_dir: Path, measurement: bytes) -> socket.socket:
    """Start a sim PSP for one Keep in a daemon thread; return the Keep's end."""
    host_end, keep_end = socket.socketpair()

    def run() -> None:
        from stockade.evidence.sim import chip
        from stockade.evidence.sim.psp import SimPsp

        with host_end, contextlib.suppress(OSError):
            SimPsp(chip.load_chip(state_dir), measurement).serve(host_end)

    threading.Thread(target=run, daemon=True, name="sim-psp").start()
    return keep_end
