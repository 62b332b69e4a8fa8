"""The keep manager's supervisor: the Keeps of one manager process, without HTTP.

:class:`Supervisor` owns the registry (opened and reconciled at start), the
Keeps this process started (:class:`LiveKeep`) and their life cycle:

* create (quota check and reservation in one step, the loader, ``running``),
* the idle timer (a Keep no client connects to within ``idle_timeout`` is
  killed, so that abandoned creates do not hold quota or memory),
* claim (the one client a Keep ever gets; arms the host watchdog),
* the host watchdog (a Keep with a ``timeout_ms`` limit still alive
  ``timeout_ms`` + ``watchdog_grace`` after its client connected is killed:
  the host's backstop against a Keep that does not enforce its own limit,
  using only what the host was told),
* staging a package (untrusted bytes for the Keep to measure),
* kill (SIGTERM, SIGKILL after ``kill_grace``), wait, and recording how each
  Keep ended (``exited``/``failed``/``killed``/``lost``).

A request it refuses raises a :class:`SupervisorError` subclass; the API
routes (stockade.host.manager.routes) answer it with its problem details
(stockade.host.manager.problems). It never sees plaintext workload data or
secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import tempfile
import time
from collections.abc import AsyncIterable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio.to_thread

from stockade import procfs
from stockade.host.keeppool import KeepPool
from stockade.host.loader import KeepHandle, start_keep, sweep_stale_scratch
from stockade.host.manager.collateral import NotServed, ServedFile, list_files, read_file
from stockade.host.manager.logs import reports_served
from stockade.host.manager.metrics import Metrics
from stockade.host.manager.portfwd import NoFreePort, PortForwarder, Published
from stockade.host.manager.processes import reap_rest, send_signal, signame, wait_process
from stockade.host.registry import FINAL_STATES, KeepNotFound, KeepRecord, Limits, Registry, RegistryError
from stockade.host.tokens import TokenEntry, Tokens
from stockade.wire.staging import MAX_STAGED, STAGED_NAME

log = logging.getLogger("stockade.host.manager")

#: Backends a manager runs unless told otherwise: the process Keeps (vm
#: needs a Keep image: ``stockade host serve --backend vm``).
DEFAULT_BACKENDS = ("sim", "sim-snp", "sim-tdx")

KILL_GRACE_S: Final = 2.0
IDLE_TIMEOUT_S: Final = 60.0
#: Time the host watchdog adds to a Keep's timeout_ms (attestation, load, compile).
WATCHDOG_GRACE_S: Final = 30.0
#: The forwarder's key for ports reserved by a create not yet in the
#: registry (one at a time: under the create lock).
_PENDING: Final = "-pending-"
#: How often a wait on a Keep this process did not start (re-adopted after a
#: restart) looks at the registry and the process.
ADOPTED_POLL_S: Final = 0.5

T = TypeVar("T")


# -- refusals ------------------------------------------------------------------


class SupervisorError(Exception):
    """A request the supervisor refuses (its detail names why, one line)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnknownKeep(SupervisorError):
    """No such Keep for this owner (another owner's Keep is unknown too)."""


class NoSimChip(SupervisorError):
    """This host has no sim chip."""


class NoSuchCollateral(SupervisorError):
    """No such collateral file on this host (host pre-provisioning)."""


class KeepNotRunning(SupervisorError):
    """The Keep has ended or is being killed."""


class AlreadyConnected(SupervisorError):
    """The Keep has had its one client."""


class NoStagingArea(SupervisorError):
    """The Keep has no scratch directory to stage a package in."""


class PackageTooLarge(SupervisorError):
    """A staged package is larger than MAX_STAGED."""


class QuotaExceeded(SupervisorError):
    """The owner has its quota of Keeps in a non-final state."""


class LoaderFailed(SupervisorError):
    """The keep loader could not start the Keep."""


class StagingFailed(SupervisorError):
    """The host cannot store a package (disk full, ...)."""


class PublishingDisabled(SupervisorError):
    """A create asks to publish ports on a manager without --keep-ports, or
    for a Keep that has no scratch directory (VM Keeps)."""


class PortsExhausted(SupervisorError):
    """Every port of --keep-ports is in use."""


# -- the supervisor ------------------------------------------------------------


@dataclass
class LiveKeep:
    """A Keep started by this manager process."""

    handle: KeepHandle
    owner: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    kill_requested: bool = False
    kill_reason: str = "killed on request"
    connected: bool = False  # one client per Keep, ever
    relaying: bool = False
    idle_timer: asyncio.TimerHandle | None = None
    watchdog: asyncio.TimerHandle | None = None


class Supervisor:
    """State of one manager process: registry, tokens, live Keeps."""

    def __init__(
        self,
        state_dir: Path,
        tokens: Tokens,
        *,
        kill_grace: float = KILL_GRACE_S,
        starter: Callable[..., KeepHandle] = start_keep,
        metrics: Metrics | None = None,
        idle_timeout: float | None = IDLE_TIMEOUT_S,
        watchdog_grace: float = WATCHDOG_GRACE_S,
        backends: tuple[str, ...] = DEFAULT_BACKENDS,
        forwarder: PortForwarder | None = None,
        pool: KeepPool | None = None,
    ) -> None:
        self.state_dir = state_dir
        #: Warm process Keeps handed out on create (stockade.host.keeppool);
        #: closed (its Keeps killed) when the manager stops.
        self.pool = pool
        #: Published ports (--keep-ports); disabled when not given.
        self.forwarder = forwarder or PortForwarder("127.0.0.1", None)
        #: The backends this manager runs (a create for another is refused).
        self.backends = backends
        self.tokens = tokens
        self.kill_grace = kill_grace
        #: Seconds a new Keep waits for its client before it is killed (None
        #: or 0: forever).
        self.idle_timeout = idle_timeout or None
        self.watchdog_grace = watchdog_grace
        self._start = starter
        self.metrics = metrics or Metrics()
        self._registry: Registry | None = None
        self.live: dict[str, LiveKeep] = {}
        self.measurements: dict[str, bytes] = {}
        self.log_paths: dict[str, Path] = {}
        self._create_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set when the server begins to shut down: open waits answer at once.
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.metrics.watch(self._states)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise RuntimeError("the manager is not started")
        return self._registry

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a registry call (SQLite with fsync) off the event loop."""
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    def _states(self) -> list[str]:
        """The state of every Keep in the registry (for /metrics; none
        before start or when the registry cannot be read)."""
        reg = self._registry
        if reg is None:
            return []
        with contextlib.suppress(RegistryError):
            return [rec.state for rec in reg.list()]
        return []

    def keeps_running(self) -> int:
        """Keeps in a non-final state (the host's load, for the fleet
        record); blocking (reads the registry): call it from a thread."""
        return sum(1 for state in self._states() if state not in FINAL_STATES)

    # -- life cycle of the manager

    async def start(self) -> None:
        """Open the registry and reconcile it (re-adopt live Keeps, record
        the others' end), and sweep stale scratch directories."""
        self._loop = asyncio.get_running_loop()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._registry = await self._db(Registry.open_state_dir, self.state_dir)
        report = await self._db(self.registry.reconcile)
        log.info(
            "registry %s: %d Keep(s) re-adopted, %d lost, %d exited while the manager was down",
            self.registry.path,
            len(report.adopted),
            len(report.lost),
            len(report.exited),
        )
        swept = await self._db(sweep_stale_scratch)
        if swept:
            log.info("removed %d stale Keep scratch director(ies) of Keeps that are gone", len(swept))
        if self.pool is not None:
            self.pool.start()  # forks in the background

    def begin_shutdown(self) -> None:
        """The server is about to stop: answer open waits now (timed out)
        rather than hold the shutdown up. Safe from a signal handler."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)

    async def stop(self) -> None:
        """Kill the Keeps this process started (their byte streams end with
        it) and close the registry."""
        self._stopping.set()
        if self.pool is not None:
            await anyio.to_thread.run_sync(self.pool.close)
        for live in list(self.live.values()):
            live.kill_requested = True
            live.kill_reason = "killed: the manager stopped"
            send_signal(live.handle, signal.SIGKILL)
        for live in list(self.live.values()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.done.wait(), 10)
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    # -- reading

    def authenticate(self, token: str) -> TokenEntry | None:
        """The token's entry, or None for an unknown token."""
        return self.tokens.authenticate(token)

    async def record_of(self, keep_id: str, owner: str) -> KeepRecord:
        """The Keep ``keep_id`` of ``owner``; UnknownKeep for any other
        (missing, malformed id, another owner's)."""
        try:
            rec = await self._db(self.registry.get, keep_id)
        except KeepNotFound:
            rec = None
        except RegistryError:  # malformed id and the like: the same answer
            rec = None
        if rec is None or rec.owner != owner:
            raise UnknownKeep(f"no Keep {keep_id!r} for this token")
        return rec

    async def records(self, owner: str) -> list[KeepRecord]:
        """The Keeps of ``owner``."""
        return await self._db(self.registry.list, owner)

    def log_path(self, rec: KeepRecord) -> Path:
        """Where the loader writes this Keep's stderr log."""
        known = self.log_paths.get(rec.keep_id) or rec.log_path
        # The loader's naming; the id matched the registry's [A-Za-z0-9_-]{1,64}.
        return known or self.state_dir / "logs" / f"keep-{rec.keep_id}.log"

    async def sim_root(self) -> bytes:
        """DER of this host's sim ARK (development only: a client that trusts
        a root the host hands over gets no protection)."""
        path = self.state_dir / "sim" / "chip" / "ark.der"
        try:
            return await anyio.to_thread.run_sync(path.read_bytes)
        except OSError:
            raise NoSimChip("this host has no sim chip") from None

    # -- collateral (host pre-provisioning; bytes by name, never parsed here)

    @property
    def collateral_dir(self) -> Path:
        return self.state_dir / "collateral"

    async def collateral_files(self) -> list[ServedFile]:
        """The collateral files this host serves (name, size, SHA-256)."""
        return await anyio.to_thread.run_sync(list_files, self.collateral_dir)

    async def collateral_file(self, name: str) -> bytes:
        """The bytes of one collateral file, unparsed."""
        try:
            return await anyio.to_thread.run_sync(read_file, self.collateral_dir, name)
        except NotServed as exc:
            raise NoSuchCollateral(str(exc)) from None
        except OSError as exc:
            raise NoSuchCollateral(f"cannot read {name}: {exc.strerror}") from None

    # -- create

    async def create(
        self, owner: TokenEntry, backend: str, limits: Limits, publish: tuple[str, ...] = ()
    ) -> KeepRecord:
        """Reserve a Keep within the owner's quota, start it, record it
        ``running`` and arm its idle timer. ``publish``: listen socket names
        whose public ports the manager forwards to the Keep (bound before
        the Keep starts; :meth:`published` tells where)."""
        started = time.perf_counter()
        if publish and not self.forwarder.enabled:
            raise PublishingDisabled(
                "this host publishes no ports (stockade host serve --keep-ports LOW-HIGH)"
            )
        if publish and backend not in DEFAULT_BACKENDS:
            raise PublishingDisabled(f"{backend} Keeps cannot have published ports (process Keeps only)")
        registry = self.registry
        # A warm Keep from the pool (stockade.host.keeppool) when one fits:
        # not for published ports (their sockets are attached to a fresh
        # Keep's scratch directory). The pool hands out only a live Keep
        # forked with the limits a fresh fork would get; else a fresh fork.
        pool = None if publish or self.pool is None or backend not in self.pool.backends else self.pool

        def reserve() -> tuple[KeepRecord, KeepHandle | None] | int:
            """In one thread hop: the quota check, then the record (created
            and, for a pooled Keep, running: one transaction) and the pooled
            Keep if one was ready; the count of active Keeps when the quota
            is full (nothing taken from the pool then)."""
            active = registry.count_active(owner.token_id)
            if active >= owner.quota:
                return active
            if pool is not None:
                pool_id = secrets.token_hex(8)  # the registry's own format
                taken = pool.take(backend, pool_id)
                if taken is not None:
                    try:
                        pid = taken.keep.pid
                        return registry.create(
                            backend, limits, owner.token_id, keep_id=pool_id, running_pid=pid
                        ), taken
                    except BaseException:
                        send_signal(taken, signal.SIGKILL)
                        taken.close(self.kill_grace)
                        raise
            return registry.create(backend, limits, owner.token_id), None

        handle: KeepHandle | None = None
        async with self._create_lock:  # quota check and reservation are one step
            if publish:
                active = await self._db(registry.count_active, owner.token_id)
                if active >= owner.quota:
                    raise self._quota_exceeded(owner, active)
                try:
                    await self.forwarder.reserve(_PENDING, publish)
                except NoFreePort as exc:
                    self.metrics.creates.labels("ports-exhausted").inc()
                    raise PortsExhausted(str(exc)) from None
                try:
                    rec = await self._db(registry.create, backend, limits, owner.token_id)
                except BaseException:
                    await self.forwarder.release(_PENDING)
                    raise
                self.forwarder.rename(_PENDING, rec.keep_id)
            else:
                reserved = await self._db(reserve)
                if isinstance(reserved, int):
                    raise self._quota_exceeded(owner, reserved)
                rec, handle = reserved
        keep_id = rec.keep_id
        recorded = time.perf_counter()
        pooled = handle is not None
        if handle is None:
            try:
                handle = await anyio.to_thread.run_sync(
                    lambda: self._start(backend, self.state_dir, keep_id=keep_id)
                )
            except Exception as exc:
                log.exception("Keep %s: the loader failed", keep_id)
                await self.forwarder.release(keep_id)
                self.metrics.creates.labels("loader-failed").inc()
                await self._db(
                    registry.transition, keep_id, "failed", detail=f"loader failed: {type(exc).__name__}"
                )
                raise LoaderFailed("the keep loader failed") from None
        forked = time.perf_counter()
        if publish:
            try:
                if handle.scratch is None:
                    raise ValueError("the Keep has no scratch directory for its sockets")
                self.forwarder.attach(keep_id, handle.scratch)
            except ValueError as exc:  # e.g. a socket path too long: the Keep goes
                log.error("Keep %s: cannot publish its ports: %s", keep_id, exc)
                send_signal(handle, signal.SIGKILL)
                await anyio.to_thread.run_sync(lambda: handle.close(self.kill_grace))
                await self.forwarder.release(keep_id)
                self.metrics.creates.labels("loader-failed").inc()
                await self._db(registry.transition, keep_id, "failed", detail="cannot publish its ports")
                raise LoaderFailed(f"the Keep's ports cannot be published: {exc}") from None
        live = LiveKeep(handle, owner.token_id)
        self.live[keep_id] = live
        if len(handle.measurement) == 48:  # hardware backends: the firmware's to report
            self.measurements[keep_id] = handle.measurement
        self.log_paths[keep_id] = handle.log_path
        pid = handle.keep.pid
        if not pooled:

            def running() -> KeepRecord:  # one thread hop: record it running, read it back
                registry.transition(keep_id, "running", pid=pid)
                return registry.get(keep_id)

            rec = await self._db(running)
        # Registry paths may not exist until the loader made them.
        self._spawn(self._watch(keep_id, live))
        if self.idle_timeout is not None:
            live.idle_timer = asyncio.get_running_loop().call_later(
                self.idle_timeout, self._idle, keep_id, live
            )
        done = time.perf_counter()
        log.info(
            "Keep %s started for %s (pid %d, %s; registry %.1f ms, loader %.1f ms, then %.1f ms)",
            keep_id,
            owner.token_id,
            pid,
            "from the warm pool" if pooled else "forked",
            (recorded - started) * 1e3,
            (forked - recorded) * 1e3,
            (done - forked) * 1e3,
        )
        self.metrics.create_seconds.observe(done - started)
        self.metrics.creates.labels("ok").inc()
        return rec

    def _quota_exceeded(self, owner: TokenEntry, active: int) -> QuotaExceeded:
        """The refusal of a create over the owner's quota (counted)."""
        self.metrics.creates.labels("quota-exceeded").inc()
        return QuotaExceeded(f"this token may run {owner.quota} Keep(s) at a time and has {active}")

    def published(self, keep_id: str) -> list[Published]:
        """The ports published for a live Keep (none once it ended)."""
        return self.forwarder.published(keep_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _idle(self, keep_id: str, live: LiveKeep) -> None:
        """The idle timer of a Keep fired: kill it unless its client came."""
        live.idle_timer = None
        if live.connected or live.kill_requested or self.live.get(keep_id) is not live:
            return
        reason = f"killed: no client connected within {self.idle_timeout:g} s"
        log.info("Keep %s: %s", keep_id, reason)
        self._spawn(self._terminate(live, reason))

    # -- the client

    def _running(self, keep_id: str, rec: KeepRecord) -> LiveKeep:
        """The live Keep of ``rec``; KeepNotRunning if it ended or is being killed."""
        live = self.live.get(keep_id)
        if live is None or rec.state in FINAL_STATES:
            raise KeepNotRunning(f"Keep {keep_id} is {rec.state}")
        return live

    async def claim(self, keep_id: str, owner: str) -> LiveKeep:
        """Give the Keep its one client: stop its idle timer, arm its
        watchdog. The caller relays, then calls :meth:`release`."""
        rec = await self.record_of(keep_id, owner)
        live = self._running(keep_id, rec)
        if live.kill_requested:
            raise KeepNotRunning(f"Keep {keep_id} is being killed")
        if live.connected:
            raise AlreadyConnected(f"Keep {keep_id} has had its client")
        live.connected = live.relaying = True
        if live.idle_timer is not None:
            live.idle_timer.cancel()
            live.idle_timer = None
        self.arm_watchdog(keep_id, live, rec)
        return live

    def release(self, keep_id: str, live: LiveKeep) -> None:
        """The relay of a claimed Keep ended: close its stream if the Keep
        ended too (else its end closes it)."""
        live.relaying = False
        if live.done.is_set() or self.live.get(keep_id) is not live:
            with contextlib.suppress(OSError):
                live.handle.conn.close()

    def arm_watchdog(self, keep_id: str, live: LiveKeep, rec: KeepRecord) -> None:
        """Start the host watchdog of a Keep whose client just connected."""
        timeout_ms = rec.limits.timeout_ms
        if timeout_ms is None:
            return
        seconds = timeout_ms / 1000 + self.watchdog_grace
        live.watchdog = asyncio.get_running_loop().call_later(seconds, self._overdue, keep_id, live, seconds)

    def _overdue(self, keep_id: str, live: LiveKeep, seconds: float) -> None:
        live.watchdog = None
        if live.kill_requested or self.live.get(keep_id) is not live or live.done.is_set():
            return
        reason = f"killed: still running {seconds:g} s after its client connected (host watchdog)"
        log.warning("Keep %s: %s", keep_id, reason)
        self._spawn(self._terminate(live, reason))

    # -- staging

    async def stage(
        self, keep_id: str, owner: str, chunks: AsyncIterable[bytes], declared: int | None = None
    ) -> int:
        """Stage a package for the Keep to measure (untrusted bytes) before
        its client connects; return its size. ``declared`` is the size the
        sender announced (refused at once when too large)."""
        rec = await self.record_of(keep_id, owner)
        live = self._running(keep_id, rec)
        if live.kill_requested:
            raise KeepNotRunning(f"Keep {keep_id} is {rec.state}")
        if live.connected:
            raise AlreadyConnected("stage the package before connecting")
        scratch = live.handle.scratch
        if scratch is None:
            raise NoStagingArea(f"Keep {keep_id} has no staging area")
        too_large = PackageTooLarge(f"at most {MAX_STAGED} bytes")
        if declared is not None and declared > MAX_STAGED:
            raise too_large

        # Streamed to a temporary file of its own (two uploads never share
        # one), renamed into place only once complete; the last complete
        # upload wins.
        def failed(exc: OSError | None) -> SupervisorError:
            if self.live.get(keep_id) is not live or live.kill_requested:  # deleted or ended meanwhile
                return KeepNotRunning(f"Keep {keep_id} ended during the upload")
            reason = exc.strerror if exc is not None else "unknown error"
            return StagingFailed(f"the host cannot store it: {reason}")

        tmp: Path | None = None
        size = 0
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=STAGED_NAME + ".", suffix=".part", dir=scratch)
            tmp = Path(tmp_name)
            with open(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > MAX_STAGED:
                        raise too_large
                    await anyio.to_thread.run_sync(out.write, chunk)
            if self.live.get(keep_id) is not live or live.kill_requested:
                raise failed(None)
            os.replace(tmp, scratch / STAGED_NAME)
            tmp = None
        except OSError as exc:  # the scratch dir is gone (the Keep ended), disk full, ...
            raise failed(exc) from None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        log.info("Keep %s: %d-byte package staged", keep_id, size)
        return size

    # -- the end

    async def _terminate(self, live: LiveKeep, reason: str) -> None:
        """SIGTERM the Keep, SIGKILL after the grace; return once it ended
        (its end recorded as ``killed`` with the first reason given)."""
        if not live.kill_requested:
            live.kill_requested = True
            live.kill_reason = reason
        send_signal(live.handle, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(live.done.wait()), self.kill_grace)
        except TimeoutError:
            send_signal(live.handle, signal.SIGKILL)
            await live.done.wait()

    async def _watch(self, keep_id: str, live: LiveKeep) -> None:
        """Wait for the Keep process to end, record how, reap its PSP."""
        try:
            status = await wait_process(live.handle)
            if live.kill_requested:
                state, detail = "killed", live.kill_reason
            elif status == 0:
                state, detail = "exited", "Keep process exited with status 0"
            elif status > 0:
                state, detail = "failed", f"Keep process exited with status {status}"
            else:
                state, detail = "failed", f"Keep process killed by signal {signame(-status)}"
            try:
                await self._db(self.registry.transition, keep_id, state, exit_status=status, detail=detail)
            except RegistryError:
                log.exception("Keep %s: cannot record its end", keep_id)
            log.info("Keep %s: %s (%s)", keep_id, state, detail)
            await anyio.to_thread.run_sync(lambda: reap_rest(live.handle, self.kill_grace))
            if live.handle.psp is not None:
                served = await anyio.to_thread.run_sync(reports_served, live.handle.log_path)
                self.metrics.evidence.labels(live.handle.backend).inc(served)
        finally:
            for timer in (live.idle_timer, live.watchdog):
                if timer is not None:
                    timer.cancel()
            live.idle_timer = live.watchdog = None
            if not live.relaying:
                with contextlib.suppress(OSError):
                    live.handle.conn.close()
            try:
                await self.forwarder.release(keep_id)
            finally:
                self.live.pop(keep_id, None)
                live.done.set()

    async def kill(self, rec: KeepRecord) -> KeepRecord:
        """Kill the Keep (SIGTERM, SIGKILL after the grace) and return its
        final record. A Keep re-adopted after a restart is SIGKILLed by pid
        (if it still is the recorded process)."""
        live = self.live.get(rec.keep_id)
        if live is not None:
            await self._terminate(live, "killed on request")
        elif not rec.is_final:
            # Re-adopted after a manager restart: only the pid is known.
            if rec.pid is not None and procfs.is_alive(rec.pid, rec.pid_start_time):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec.pid, signal.SIGKILL)
            with contextlib.suppress(RegistryError):
                await self._db(
                    self.registry.transition, rec.keep_id, "killed", detail="killed on request (adopted)"
                )
        return await self._db(self.registry.get, rec.keep_id)

    async def wait(self, rec: KeepRecord, timeout: float) -> tuple[KeepRecord, bool]:
        """Wait up to ``timeout`` s for the Keep to reach a final state;
        return its record and whether the wait timed out.

        A Keep this process started is waited for on its ``done`` event (set
        once its end is recorded). A Keep re-adopted after a restart is not
        this process's child: its record and process are looked at every
        ADOPTED_POLL_S, and once its process is gone it is recorded as
        ``lost`` (its exit status cannot be known). When the server begins
        to stop, every wait answers at once.
        """
        if rec.is_final:
            return rec, False
        keep_id = rec.keep_id
        live = self.live.get(keep_id)
        if live is not None:
            await self._until(live.done, timeout)
        else:
            deadline = time.monotonic() + timeout
            while True:
                rec = await self._db(self.registry.get, keep_id)
                if rec.is_final or keep_id in self.live:
                    break  # a Keep being created here is live now: wait on it below
                if rec.pid is not None and not procfs.is_alive(rec.pid, rec.pid_start_time):
                    with contextlib.suppress(RegistryError):  # a DELETE may have been first
                        await self._db(
                            self.registry.transition,
                            keep_id,
                            "lost",
                            detail=f"the adopted Keep process {rec.pid} ended; its exit status is unknown",
                        )
                    break
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping.is_set():
                    break
                await self._until(self._stopping, min(ADOPTED_POLL_S, left))
            if not rec.is_final and (live := self.live.get(keep_id)) is not None:
                await self._until(live.done, max(0.0, deadline - time.monotonic()))
        rec = await self._db(self.registry.get, keep_id)
        return rec, not rec.is_final

    async def _until(self, event: asyncio.Event, timeout: float) -> None:
        """Return when ``event`` is set, the server is stopping, or after
        ``timeout`` s. (Not wait_for on a shield: a timed-out shielded wait
        would linger until the event, one per request, and --follow asks
        every second.)"""
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
