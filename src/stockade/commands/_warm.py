"""``stockade run``'s warm path: a Keep forked by the per-user warm fork
server (:mod:`stockade.host.warm`, ADR 0022) instead of a fresh interpreter.

Only the Keep's start differs: the client sends its hello on the stream the
server hands over, verifies the evidence with the same trust and policy
(the measurement pinned is the one the server's loader computed from the
installed Keep runtime, as the cold path's loader does) and runs the same
session. The run summary says which path ran (``keep start`` line).
"""

from __future__ import annotations

from pathlib import Path

from stockade.host.warm import WARM_BACKENDS, Pending, WarmKeep, WarmUnavailable, wanted

#: Summary line of a cold start (a fresh interpreter for the Keep).
COLD_LINE = "  keep start   cold: a fresh Keep process"


class WarmStart:
    """The warm path's decision for one run: a Keep requested of this
    user's fork server (it forks while the client gets ready), or the reason
    to start a cold one. Never raises."""

    def __init__(self, backend: str, state_dir: Path, cold: bool, compile_cache: Path | None = None) -> None:
        self.pending: Pending | None = None
        self.line = COLD_LINE
        if backend not in WARM_BACKENDS:
            return
        if cold:
            self.line = f"{COLD_LINE} (--cold)"
        elif not wanted():
            self.line = f"{COLD_LINE} (STOCKADE_WARM=0)"
        else:
            try:
                self.pending = Pending(backend, state_dir, compile_cache=compile_cache)
            except WarmUnavailable as exc:
                self.line = f"{COLD_LINE} (warm fork server unavailable: {exc})"

    def finish(self) -> tuple[WarmKeep | None, str]:
        """The warm Keep (None: start a cold one) and the summary line that
        says which path runs and, when not the warm one, why."""
        if self.pending is None:
            return None, self.line
        try:
            keep = self.pending.result()
        except WarmUnavailable as exc:
            return None, f"{COLD_LINE} (warm fork server unavailable: {exc})"
        how = "started it for this run" if self.pending.started else "already running"
        line = (
            f"  keep start   warm: forked by this user's fork server (pid {keep.server_pid}, {how}); "
            "--cold for a fresh process"
        )
        return keep, line

    def cancel(self) -> None:
        if self.pending is not None:
            self.pending.cancel()


def chip_ready(state_dir: Path, flavour: str) -> bool:
    """Whether the sim chip a warm Keep's PSP loads exists already
    (``chip_exists`` / ``tdx_chip.tdx_chip_exists``, without their imports)."""
    sim = state_dir / "sim"
    return (sim / ("tdx" if flavour == "tdx" else "chip") / "chip.json").exists()


def sim_flavour(backend: str) -> str:
    """The sim signer's flavour of a local backend: what
    ``stockade.host.loader.SIM_FLAVOUR`` says (tests/test_warm.py checks),
    without importing the loader on the warm path."""
    return "tdx" if backend == "sim-tdx" else "snp"
