"""Progress of one deploy through its phases, for a status line and timings.

A deploy (``stockade run``, ``stockade deploy --host``) goes through these
phases, in this order, as the client sees them:

* ``booting``: the Keep is being started (the loader spawns it; a VM boots
  its kernel) and has not yet asked for evidence;
* ``attesting``: the Keep has the nonce and is getting its evidence (a
  report from the security processor, a certificate for its TLS key); the
  phase ends when the TLS handshake has delivered that certificate;
* ``verifying``: the client checks the evidence: signature and chain,
  collateral and revocation, the binding to its nonce, the policy;
* ``loading``: the workload is sent, the Keep checks and measures it and
  attests again; the client checks that second attestation (the workload
  identity) before any secret leaves;
* ``running``: secrets and stdin are released and the workload runs;
* ``done``: the Keep reported the exit status.

When the Keep's move from booting to attesting is visible depends on where
it runs: for a local Keep, it is the Keep's first request to the (local,
sim) security processor; for a Keep on a remote host, the client sees only
that the relay to it is open and the nonce sent (the rest of its boot then
counts as attesting).

:class:`Progress` records when each phase began (monotonic clock; for a
later ``--timings``) and tells an optional :class:`ProgressListener` (the
CLI's status line: ``stockade.commands._progress``). It has no display of
its own and imports nothing heavy: the cold path stays cheap.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol


class Phase(enum.Enum):
    """The phases of one deploy, in order (module docstring)."""

    BOOTING = "booting"
    ATTESTING = "attesting"
    VERIFYING = "verifying"
    LOADING = "loading"
    RUNNING = "running"
    DONE = "done"

    @property
    def order(self) -> int:
        return _ORDER[self]


_ORDER = {phase: i for i, phase in enumerate(Phase)}


class ProgressListener(Protocol):
    """Told about a deploy's progress (a status line on a terminal)."""

    def phase(self, phase: Phase, started: float) -> None:
        """``phase`` began at ``started`` (``time.monotonic()``). Called
        once per phase, in order; DONE is the last call."""

    def clear(self) -> None:
        """Remove whatever is shown now, at once: something else (the
        verification summary, the workload's output, an error) is about to
        be written to the terminal. What to show comes back with the next
        :meth:`phase`, if any."""


class Progress:
    """The phases one deploy went through, and when each began.

    Phases only move forward: entering a phase that is not after the
    current one is ignored (the local security processor's hook fires for
    both attestations of a session; only the first is the end of booting).
    Safe to call from several threads (that hook runs in the sim PSP's
    thread). Without a ``listener`` it only records.
    """

    def __init__(self, listener: ProgressListener | None = None, clock: Callable[[], float] = time.monotonic):
        self._listener = listener
        self._clock = clock
        self._lock = threading.Lock()
        self._phases: list[tuple[Phase, float]] = []
        self._closed = False

    def enter(self, phase: Phase) -> None:
        """Record that ``phase`` begins now (ignored if the deploy is
        already at or past it, or closed)."""
        with self._lock:
            if self._closed or (self._phases and phase.order <= self._phases[-1][0].order):
                return
            started = self._clock()
            self._phases.append((phase, started))
            if phase is Phase.DONE:
                self._closed = True
            if self._listener is not None:
                self._listener.phase(phase, started)

    def clear(self) -> None:
        """Something else is about to be written to the terminal: remove
        the status line now (it comes back at the next phase)."""
        with self._lock:
            if self._listener is not None:
                self._listener.clear()

    def close(self) -> None:
        """The deploy is over (done or failed): remove the status line for
        good; later phases are ignored. Idempotent."""
        with self._lock:
            self._closed = True
            if self._listener is not None:
                self._listener.clear()

    @property
    def current(self) -> Phase | None:
        with self._lock:
            return self._phases[-1][0] if self._phases else None

    @property
    def phases(self) -> tuple[tuple[Phase, float], ...]:
        """(phase, monotonic start) of each phase entered, in order."""
        with self._lock:
            return tuple(self._phases)

    def durations_ms(self) -> dict[str, float]:
        """Milliseconds spent in each phase that has ended (its successor
        began), by phase name."""
        phases = self.phases
        return {
            phase.value: round((nxt - started) * 1000, 3)
            for (phase, started), (_, nxt) in itertools.pairwise(phases)
        }
