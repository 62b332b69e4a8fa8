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

from stockade.host.warm import WARM_BACKENDS, WarmKeep, WarmUnavailable, acquire, wanted

#: Summary line of a cold start (a fresh interpreter for the Keep).
COLD_LINE = "  keep start   cold: a fresh Keep process"


def warm_keep(backend: str, state_dir: Path, cold: bool) -> tuple[WarmKeep | None, str]:
    """The warm Keep to use, or None (then start a cold one); and the
    summary line that says which path runs and, when it is not the warm
    one although it could have been, why."""
    if backend not in WARM_BACKENDS:
        return None, COLD_LINE
    if cold:
        return None, f"{COLD_LINE} (--cold)"
    if not wanted():
        return None, f"{COLD_LINE} (STOCKADE_WARM=0)"
    try:
        keep, started = acquire(backend, state_dir)
    except WarmUnavailable as exc:
        return None, f"{COLD_LINE} (warm fork server unavailable: {exc})"
    how = "started it for this run" if started else "already running"
    line = (
        f"  keep start   warm: forked by this user's fork server (pid {keep.server_pid}, {how}); "
        "--cold for a fresh process"
    )
    return keep, line


def sim_flavour(backend: str) -> str:
    """The sim signer's flavour of a local backend: what
    ``stockade.host.loader.SIM_FLAVOUR`` says (tests/test_warm.py checks),
    without importing the loader on the warm path."""
    return "tdx" if backend == "sim-tdx" else "snp"


def chip_exists(state_dir: Path) -> bool:
    """``stockade.evidence.sim.local.chip_exists``, without its imports."""
    return (state_dir / "sim" / "chip" / "chip.json").exists()
