"""A warm pool of process Keeps: forked ahead of demand, not yet attested.

The VM pool's sibling (stockade.host.vmpool) for the process backends
(``sim``, ``sim-snp``, ``sim-tdx``) of a keep manager with a fork server:
the fork of the Keep and of its sim PSP, the Keep's sandbox set-up and its
wasmtime engine warm-up (together most of a create's server time, issue 18)
happen before a client asks. ``size`` Keeps per backend wait, each blocked
on its first hello; a create takes one (a new one is forked in the
background ``refill_delay`` later) and the client's hello is the first
thing it reads.

Nothing in a pooled Keep belongs to anybody yet: it has no owner, no
registry record, no workload, no secret, and no key a client has seen (the
Keep makes its TLS key and asks for its evidence with the client's own
nonce only after its hello arrives: stockade.keep.session). So a Keep from
the pool is as fresh to its client as a new one, and two Keeps from the pool
give two different keys and reports.

A pooled Keep is handed out only when it is still what a fresh fork would
be: alive (Keep and PSP), forked with exactly the resource limits the
create needs (a mismatch falls back to a fresh fork), by the fork server
whose measurement is current (Keeps of a zygote that was replaced are
retired), and younger than ``max_age``: a process Keep waits at most
stockade.keep.session.IDLE_TIMEOUT (60 s) for its hello, so pooled Keeps
are replaced well before that and a client always gets at least
``IDLE_TIMEOUT - max_age`` seconds to send it. Dead, stale and old Keeps are
killed and replaced by a background thread, never handed out.

Pooled Keeps are not in the registry: ``host ps``, the status page, the
owner's quota and re-adoption after a restart see only Keeps handed out. If
the manager dies, a pooled Keep reads the end of its stream (the manager
held the other end) and exits; the scratch-directory sweep removes what it
left. Design: docs/adr/0031-warm-keep-pool.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from stockade.host.loader import KeepHandle, ResourceLimits

log = logging.getLogger("stockade.host.keeppool")

#: Prefix of pooled Keeps' temporary ids (their log file, scratch directory
#: and cgroup names until handed out; the log file is renamed then).
POOL_ID_PREFIX: Final = "pool"
#: Pooled Keeps older than this are replaced (< the Keep's 60 s hello timeout).
MAX_AGE_S: Final = 30.0
#: How long after a hand-out the replacement is forked: the fork (and the
#: loader's work in the manager) would otherwise compete for the CPU and
#: the manager's GIL with the create that took the Keep and with the start
#: of its attestation (measured: the create's registry write took 3-10 ms
#: instead of under 1 with the refill at once; bench/README.md).
REFILL_DELAY_S: Final = 0.2
#: Why pooled Keeps were retired (the stockade_keep_pool_retired label).
RETIRE_REASONS: Final = ("dead", "aged", "stale", "closed")


class PoolSpawner(Protocol):
    """What the pool needs of the fork spawner (stockade.host.forkserver.ForkSpawner)."""

    @property
    def limits(self) -> ResourceLimits: ...

    def current_measurement(self) -> bytes | None: ...


@dataclass
class _Pooled:
    handle: KeepHandle
    limits: ResourceLimits
    measurement: bytes
    born: float

    def alive(self) -> bool:
        return self.handle.keep.poll() is None and (self.handle.psp is None or self.handle.psp.poll() is None)


class KeepPool:
    """``size`` warm Keeps per backend in ``backends``, started with
    ``starter`` (the manager's own: same spawner, compile cache, ...)."""

    def __init__(
        self,
        starter: Callable[..., KeepHandle],
        spawner: PoolSpawner,
        state_dir: Path,
        backends: tuple[str, ...],
        size: int = 1,
        *,
        max_age: float = MAX_AGE_S,
        refill_delay: float = REFILL_DELAY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 0:
            raise ValueError("pool size must be 0 or more")
        self.starter = starter
        self.spawner = spawner
        self.state_dir = state_dir
        self.backends = backends
        self.size = size
        self.max_age = max_age
        self.refill_delay = refill_delay
        self._clock = clock
        self._ready: dict[str, deque[_Pooled]] = {b: deque() for b in backends}
        self._starting: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._retiring: list[tuple[_Pooled, str]] = []
        self._maintainer: threading.Thread | None = None
        #: Counters for metrics and tests.
        self.hits = 0
        self.misses = 0
        self.retired: Counter[str] = Counter()

    # -- filling

    def start(self) -> None:
        """Fill the pool and keep it fresh from a background thread."""
        if self.size == 0:
            return
        log.info(
            "warm pool: %d process Keep(s) per backend (%s) forked ahead of demand",
            self.size,
            ", ".join(self.backends),
        )
        self.fill()
        self._maintainer = threading.Thread(target=self._maintain, daemon=True, name="keep-pool")
        self._maintainer.start()

    def fill(self) -> None:
        """Start Keeps in the background until ``size`` per backend are
        ready or starting."""
        todo: list[str] = []
        with self._lock:
            if self._closed:
                return
            for backend in self.backends:
                need = self.size - len(self._ready[backend]) - self._starting[backend]
                self._starting[backend] += max(need, 0)
                todo += [backend] * max(need, 0)
            threads = [
                threading.Thread(target=self._start_one, args=(b,), daemon=True, name="keep-pool-fork")
                for b in todo
            ]
            self._threads.update(threads)
        for thread in threads:
            thread.start()

    def _start_one(self, backend: str) -> None:
        pooled: _Pooled | None = None
        try:
            # The limits and measurement the Keep is forked with: read before
            # the fork, so a change during it makes the Keep stale, not wrong.
            limits = self.spawner.limits
            handle = self.starter(backend, self.state_dir, keep_id=POOL_ID_PREFIX + secrets.token_hex(6))
            pooled = _Pooled(handle, limits, handle.measurement, self._clock())
        except Exception:
            log.exception("warm pool: a %s Keep failed to start", backend)
        with self._lock:
            self._starting[backend] -= 1
            self._threads.discard(threading.current_thread())
            if pooled is not None and not self._closed:
                self._ready[backend].append(pooled)
                pooled = None
        if pooled is not None:  # closed meanwhile
            self._discard(pooled, "closed")

    def _maintain(self) -> None:
        """Every max_age/4 s (or when woken): retire what may no longer be
        handed out, then refill."""
        interval = max(0.5, self.max_age / 4)
        while not self._closed:
            woken = self._wake.wait(interval)
            if woken and self._stop.wait(self.refill_delay):
                return  # closed
            self._wake.clear()
            if self._closed:
                return
            self._retire_taken()
            self.prune()
            self.fill()

    def _retire_taken(self) -> None:
        with self._lock:
            out, self._retiring = self._retiring, []
        for pooled, why in out:
            self._discard(pooled, why)

    def prune(self) -> None:
        """Retire dead, old and stale pooled Keeps (killed, never handed out)."""
        current = self.spawner.current_measurement()
        now = self._clock()
        out: list[tuple[_Pooled, str]] = []
        with self._lock:
            for backend, ready in self._ready.items():
                keep: deque[_Pooled] = deque()
                for pooled in ready:
                    why = self._unusable(pooled, current, now)
                    if why is None:
                        keep.append(pooled)
                    else:
                        out.append((pooled, why))
                self._ready[backend] = keep
        for pooled, why in out:
            self._discard(pooled, why)

    def _unusable(self, pooled: _Pooled, current: bytes | None, now: float) -> str | None:
        if not pooled.alive():
            return "dead"
        if now - pooled.born > self.max_age:
            return "aged"
        if pooled.measurement != current or pooled.limits != self.spawner.limits:
            return "stale"
        return None

    def _discard(self, pooled: _Pooled, why: str) -> None:
        handle = pooled.handle
        if why == "dead":
            log.warning(
                "warm pool: dropped a dead %s Keep (%s, exit %s)",
                handle.backend,
                handle.keep_id,
                handle.keep.returncode,
            )
        else:
            log.info("warm pool: retired a %s Keep (%s: %s)", handle.backend, handle.keep_id, why)
        with self._lock:
            self.retired[why] += 1
        handle.close(grace=0)  # killed at once (the Keep and its PSP), reaped
        if why != "dead":  # a dead one's log says why it died
            with contextlib.suppress(OSError):
                handle.log_path.unlink()  # nobody's: the Keep never had a client

    # -- taking

    def take(self, backend: str, keep_id: str, limits: ResourceLimits | None = None) -> KeepHandle | None:
        """A pooled Keep of ``backend`` forked with exactly ``limits`` (None:
        the spawner's, what a fresh fork gets), renamed ``keep_id``; None
        when none is ready (the caller forks one). Starts a replacement."""
        want = self.spawner.limits if limits is None else limits
        current = self.spawner.current_measurement()
        now = self._clock()
        taken: _Pooled | None = None
        out: list[tuple[_Pooled, str]] = []
        with self._lock:
            ready = self._ready.get(backend)
            if ready is not None and want == self.spawner.limits:
                while ready:
                    pooled = ready.popleft()
                    why = self._unusable(pooled, current, now)  # its limits are the spawner's, or stale
                    if why is None:
                        taken = pooled
                        break
                    out.append((pooled, why))
            if taken is not None:
                self.hits += 1
            else:
                self.misses += 1
            # Killed and reaped by the maintainer (this runs on the event loop).
            self._retiring.extend(out)
        if out or taken is not None:
            self._wake.set()  # the maintainer retires, and refills after refill_delay
        if taken is None:
            return None
        handle = taken.handle
        new_log = handle.log_path.with_name(f"keep-{keep_id}.log")
        with contextlib.suppress(OSError):  # then it keeps its pool name
            os.replace(handle.log_path, new_log)  # the Keep and its PSP write through open descriptors
            handle.log_path = new_log
        handle.keep_id = keep_id
        return handle

    # -- the end

    def close(self) -> None:
        """Kill every pooled Keep and wait for Keeps being forked (at
        manager shutdown): no pooled process outlives the manager."""
        with self._lock:
            self._closed = True
            ready = [p for queue in self._ready.values() for p in queue]
            for queue in self._ready.values():
                queue.clear()
            threads = list(self._threads)
        self._stop.set()
        self._wake.set()
        if self._maintainer is not None:
            self._maintainer.join(30)
        self._retire_taken()
        for pooled in ready:
            self._discard(pooled, "closed")
        for thread in threads:
            thread.join(30)  # a Keep forked meanwhile is killed by its thread

    # -- figures

    def ready(self) -> dict[str, int]:
        with self._lock:
            return {backend: len(queue) for backend, queue in self._ready.items()}

    def stats(self) -> tuple[dict[str, int], int, int, dict[str, int]]:
        """(ready per backend, hits, misses, retired per reason) for metrics."""
        with self._lock:
            ready = {backend: len(queue) for backend, queue in self._ready.items()}
            return ready, self.hits, self.misses, {r: self.retired[r] for r in RETIRE_REASONS}
