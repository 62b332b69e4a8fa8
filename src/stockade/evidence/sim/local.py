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
from typing import TYPE_CHECKING

from stockade import oneshot
from stockade.errors import StockadeError

if TYPE_CHECKING:
    from stockade.evidence.sim.psp import ReportSigner


def chip_exists(state_dir: Path) -> bool:
    """Cheap check (no crypto imports) whether the sim chip was generated."""
    return (state_dir / "sim" / "chip" / "chip.json").exists()


def serve_in_thread(
    state_dir: Path,
    measurement: bytes | Callable[[], bytes],
    flavour: str = "snp",
    on_first_request: Callable[[], None] | None = None,
) -> socket.socket:
    """Start a sim PSP for one Keep in a daemon thread; return the Keep's end.

    ``measurement`` may be a callable that blocks until the loader has the
    launch digest (stockade.host.loader hashes the Keep's files while the Keep
    starts): the PSP answers no report before it has it. If it fails (the
    loader refuses to measure), the PSP closes the channel. ``flavour``
    ``tdx`` serves the sim TDX QE instead (backend sim-tdx).
    ``on_first_request`` is called (in the PSP's thread) when the Keep's
    first request begins to arrive: the Keep is up and attesting (the
    progress shown by ``stockade run``)."""
    host_end, keep_end = socket.socketpair()

    def run() -> None:
        from stockade.evidence.sim.psp import serve_reports, signer_for

        def make_signer() -> ReportSigner:
            digest = measurement if isinstance(measurement, bytes) else measurement()
            return signer_for(flavour, state_dir, digest)

        with host_end, contextlib.suppress(OSError, ValueError, StockadeError):
            if on_first_request is None:
                serve_reports(host_end, make_signer())
                return
            # The signer (digest, chip keys) is made while this thread waits
            # for the Keep's first request, as it is without the hook.
            signer = oneshot.start(make_signer, "sim-psp-keys")
            if not host_end.recv(1, socket.MSG_PEEK):
                return  # the Keep closed its end without asking
            # Peeked: the request stays for serve_reports. The hook only
            # shows progress: its failure must not stop the PSP.
            with contextlib.suppress(Exception):
                on_first_request()
            serve_reports(host_end, signer.result())

    threading.Thread(target=run, daemon=True, name="sim-psp").start()
    return keep_end
