"""Keep manager: the HTTP+CBOR API of the untrusted host (``stockade host serve``).

A Starlette app (:func:`create_app`) that creates, lists, inspects and kills
Keeps for holders of a bearer token, keeps the registry, and relays each
Keep's byte stream to one client over a WebSocket. Host code: it imports
``stockade.wire``, ``stockade.errors`` and ``stockade.host`` only, and never
sees plaintext workload data or secrets: after the clear-text hello (a
nonce) everything it relays is TLS ciphertext between the client and the
Keep.

API (docs: docs/adr/0009-websocket-relay.md; bodies are CBOR,
``application/cbor``, in the strict profile of stockade.wire.messages;
errors are RFC 9290 concise problem details,
``application/concise-problem-details+cbor``)::

    GET    /v1/health                 -> {"status": "ok"}            (no auth)
    POST   /v1/keeps  {"backend", "limits"?} -> 201 Keep document
    GET    /v1/keeps                  -> {"keeps": [Keep document...]} (the caller's)
    GET    /v1/keeps/{id}             -> Keep document
    DELETE /v1/keeps/{id}             -> Keep document (SIGTERM, SIGKILL after a grace)
    GET    /v1/keeps/{id}/wait?timeout=S -> Keep document + timed_out (blocks <= 300 s)
    GET    /v1/keeps/{id}/logs?tail=N|offset=B -> text/plain: the Keep's host-side log
    GET    /v1/sim/root               -> {"ark": DER of this host's sim ARK}
    WS     /v1/keeps/{id}/connect     -> binary frames <-> the Keep's byte stream
    GET    /metrics                   -> Prometheus text exposition     (no auth)

/metrics exposes counts only (Keeps per state, creates, relayed bytes,
requests per route and status), no ids, tokens, owners or workload data;
each app has its own CollectorRegistry (:class:`Metrics`). The full API
description is docs/host-api.md, the bodies' schema docs/host-api.cddl.

The sim root is served for development only: a client that trusts a sim
root handed over by the host it does not trust gets no protection at all
(the host owns the sim chip's keys). sim never protects anything anyway.

Every /v1 route but health needs ``Authorization: Bearer <token>`` (401
without one, 403 for an unknown token); a token sees only its own Keeps
(another token's Keep is 404) and may have at most its quota of Keeps in a
non-final state (429).

A Keep that no client connects to within the idle timeout (``idle_timeout``,
60 s by default) is killed and recorded as ``killed`` with the reason, so
that abandoned creates do not hold quota or memory.

Host watchdog: a Keep created with a ``timeout_ms`` limit is killed (and
recorded as ``killed``) when it is still alive ``timeout_ms`` plus the
watchdog grace (``watchdog_grace``, 30 s by default: attestation, loading
and compiling) after its client connected. The Keep enforces the workload's
own time limit inside; this is the host's backstop against a Keep that does
not (a hung or hostile runtime), using only what the host was told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import signal
import socket
import tempfile
import time
from collections import Counter as _Tally
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio.to_thread
import cbor2
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from stockade.errors import ProtocolError
from stockade.host.guard import SHED_REASONS
from stockade.host.loader import BACKENDS, KeepHandle, start_keep, sweep_stale_scratch
from stockade.host.registry import (
    FINAL_STATES,
    STATES,
    KeepNotFound,
    KeepRecord,
    Limits,
    Registry,
    RegistryError,
    proc_is_alive,
)
from stockade.host.tokens import TokenEntry, Tokens
from stockade.wire.messages import PD_DETAIL, PD_TITLE, PD_TYPE, decode_map
from stockade.wire.staging import MAX_STAGED, PACKAGE_MEDIA_TYPE, STAGED_NAME

log = logging.getLogger("stockade.host.manager")

CBOR: Final = "application/cbor"
PROBLEM: Final = "application/concise-problem-details+cbor"
MAX_BODY: Final = 1 << 20
KILL_GRACE_S: Final = 2.0
RELAY_CHUNK: Final = 1 << 16
IDLE_TIMEOUT_S: Final = 60.0
#: Time the host watchdog adds to a Keep's timeout_ms (attestation, load, compile).
WATCHDOG_GRACE_S: Final = 30.0
#: Longest a wait request blocks, and its default.
MAX_WAIT_S: Final = 300.0
DEFAULT_WAIT_S: Final = 30.0
#: A log response holds at most this many bytes (the newest, unless an offset
#: is asked for), and ``tail`` at most this many lines.
MAX_LOG_BYTES: Final = 1 << 20
MAX_TAIL_LINES: Final = 100_000
#: How often a wait on a Keep this process did not start (re-adopted after a
#: restart) looks at the registry and the process.
ADOPTED_POLL_S: Final = 0.5
TEXT: Final = "text/plain"
_LIMIT_KEYS: Final = ("timeout_ms", "memory_bytes", "output_bytes")

T = TypeVar("T")


class ApiProblem(Exception):
    """An API error, answered as concise problem details."""

    def __init__(self, status: int, problem_type: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.problem_type = problem_type
        self.title = title
        self.detail = detail

    def response(self) -> Response:
        body = cbor2.dumps(
            {PD_TITLE: self.title, PD_DETAIL: self.detail, PD_TYPE: self.problem_type}, canonical=True
        )
        headers = {"WWW-Authenticate": 'Bearer realm="stockade"'} if self.status == 401 else None
        return Response(body, self.status, headers=headers, media_type=PROBLEM)


def _cbor(doc: Any, status: int = 200) -> Response:
    return Response(cbor2.dumps(doc, canonical=True), status, media_type=CBOR)


class _KeepStates(Collector):
    """stockade_keeps{state}: Keeps in the registry per state, read at
    scrape time (the scrape runs in a worker thread; the registry is
    thread-safe)."""

    def __init__(self, manager: Manager) -> None:
        self._manager = manager

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("stockade_keeps", "Keeps in the registry, by state", labels=["state"])

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        counts: _Tally[str] = _Tally()
        reg = self._manager._registry
        if reg is not None:
            with contextlib.suppress(RegistryError):
                counts.update(rec.state for rec in reg.list())
        for state in STATES:
            family.add_metric([state], counts[state])
        yield family


class Metrics:
    """The Prometheus metrics of one manager app, in its own registry.

    Only counts: no Keep ids, token ids, owners or workload data appear in
    any label or value.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.create_seconds = Histogram(
            "stockade_keep_create_seconds",
            "Time to create and start a Keep (successful creates)",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.creates = Counter(
            "stockade_keep_creates",
            "Keep creation attempts, by outcome (ok, quota-exceeded, loader-failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.relay_bytes = Counter(
            "stockade_relay_bytes",
            "Bytes relayed between clients and Keeps (TLS ciphertext after the hello)",
            ["direction"],
            registry=self.registry,
        )
        self.evidence = Counter(
            "stockade_evidence_requests",
            "Attestation reports the sim PSP processes signed for Keeps (counted when a Keep ends)",
            ["backend"],
            registry=self.registry,
        )
        self.requests = Counter(
            "stockade_api_requests",
            "API requests, by route template and response status (101: WebSocket accepted)",
            ["route", "status"],
            registry=self.registry,
        )
        self.connections_shed = Counter(
            "stockade_connections_shed",
            "Connections the flood guard closed (stockade.host.guard), by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in SHED_REASONS:
            self.connections_shed.labels(reason)
        for outcome in ("ok", "quota-exceeded", "loader-failed"):
            self.creates.labels(outcome)
        for direction in ("to_keep", "to_client"):
            self.relay_bytes.labels(direction)
        self.evidence.labels("sim")

    def watch(self, manager: Manager) -> None:
        self.registry.register(_KeepStates(manager))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _RequestMetrics:
    """ASGI middleware: count every HTTP and WebSocket request by route
    template (never the concrete path, which holds Keep ids) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        status: int | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if status is None:
                if message["type"] in ("http.response.start", "websocket.http.response.start"):
                    status = int(message["status"])
                elif message["type"] == "websocket.accept":
                    status = 101
                elif message["type"] == "websocket.close":
                    status = 403  # closed before accepting: the server's handshake denial
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            if status is None:
                status = 500
            raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) if route is not None else None
            self.metrics.requests.labels(template or "unmatched", str(status or 0)).inc()


@dataclass
class _Live:
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


class Manager:
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
    ) -> None:
        self.state_dir = state_dir
        self.tokens = tokens
        self.kill_grace = kill_grace
        #: Seconds a new Keep waits for its client before it is killed (None
        #: or 0: forever).
        self.idle_timeout = idle_timeout or None
        self.watchdog_grace = watchdog_grace
        self._start = starter
        self.metrics = metrics or Metrics()
        self._registry: Registry | None = None
        self.live: dict[str, _Live] = {}
        self.measurements: dict[str, bytes] = {}
        self.log_paths: dict[str, Path] = {}
        self._create_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set when the server begins to shut down: open waits answer at once.
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.metrics.watch(self)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise RuntimeError("the manager is not started")
        return self._registry

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a registry call (SQLite with fsync) off the event loop."""
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    # -- life cycle

    async def start(self) -> None:
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

    def begin_shutdown(self) -> None:
        """The server is about to stop: answer open waits now (timed out)
        rather than hold the shutdown up. Safe from a signal handler."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)

    async def stop(self) -> None:
        """Kill the Keeps this process started (their byte streams end with
        it) and close the registry."""
        self._stopping.set()
        for live in list(self.live.values()):
            live.kill_requested = True
            live.kill_reason = "killed: the manager stopped"
            _signal(live.handle, signal.SIGKILL)
        for live in list(self.live.values()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.done.wait(), 10)
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    # -- authentication

    def authenticate(self, headers: Any) -> TokenEntry:
        value = headers.get("authorization")
        if not value:
            raise ApiProblem(
                401, "unauthorized", "authentication required", "send Authorization: Bearer TOKEN"
            )
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiProblem(401, "unauthorized", "authentication required", "expected a Bearer token")
        entry = self.tokens.authenticate(token.strip())
        if entry is None:
            raise ApiProblem(403, "forbidden", "forbidden", "the bearer token is not valid on this host")
        return entry

    async def record_of(self, keep_id: str, owner: str) -> KeepRecord:
        try:
            rec = await self._db(self.registry.get, keep_id)
        except KeepNotFound:
            rec = None
        except RegistryError:  # malformed id and the like: the same answer
            rec = None
        if rec is None or rec.owner != owner:
            raise ApiProblem(404, "not-found", "no such Keep", f"no Keep {keep_id!r} for this token")
        return rec

    def document(self, rec: KeepRecord) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": rec.keep_id,
            "state": rec.state,
            "backend": rec.backend,
            "created_at": rec.created_at.isoformat(),
            "limits": {k: v for k in _LIMIT_KEYS if (v := getattr(rec.limits, k)) is not None},
        }
        optional = {
            "started_at": rec.started_at.isoformat() if rec.started_at else None,
            "ended_at": rec.ended_at.isoformat() if rec.ended_at else None,
            "exit_status": rec.exit_status,
            "pid": rec.pid,
            "detail": rec.detail,
            "measurement": self.measurements.get(rec.keep_id),
        }
        doc.update({k: v for k, v in optional.items() if v is not None})
        return doc

    # -- Keeps

    async def create(self, owner: TokenEntry, backend: str, limits: Limits) -> KeepRecord:
        started = time.monotonic()
        async with self._create_lock:  # quota check and reservation are one step
            active = await self._db(self.registry.count_active, owner.token_id)
            if active >= owner.quota:
                self.metrics.creates.labels("quota-exceeded").inc()
                raise ApiProblem(
                    429,
                    "quota-exceeded",
                    "Keep quota exceeded",
                    f"this token may run {owner.quota} Keep(s) at a time and has {active}",
                )
            rec = await self._db(self.registry.create, backend, limits, owner.token_id)
        keep_id = rec.keep_id
        try:
            handle = await anyio.to_thread.run_sync(
                lambda: self._start(backend, self.state_dir, keep_id=keep_id)
            )
        except Exception as exc:
            log.exception("Keep %s: the loader failed", keep_id)
            self.metrics.creates.labels("loader-failed").inc()
            await self._db(
                self.registry.transition, keep_id, "failed", detail=f"loader failed: {type(exc).__name__}"
            )
            raise ApiProblem(500, "loader-failed", "cannot start a Keep", "the keep loader failed") from None
        live = _Live(handle, owner.token_id)
        self.live[keep_id] = live
        self.measurements[keep_id] = handle.measurement
        self.log_paths[keep_id] = handle.log_path
        await self._db(self.registry.transition, keep_id, "running", pid=handle.keep.pid)
        # Registry paths may not exist until the loader made them.
        self._spawn(self._watch(keep_id, live))
        if self.idle_timeout is not None:
            live.idle_timer = asyncio.get_running_loop().call_later(
                self.idle_timeout, self._idle, keep_id, live
            )
        log.info("Keep %s started for %s (pid %d)", keep_id, owner.token_id, handle.keep.pid)
        self.metrics.create_seconds.observe(time.monotonic() - started)
        self.metrics.creates.labels("ok").inc()
        return await self._db(self.registry.get, keep_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _idle(self, keep_id: str, live: _Live) -> None:
        """The idle timer of a Keep fired: kill it unless its client came."""
        live.idle_timer = None
        if live.connected or live.kill_requested or self.live.get(keep_id) is not live:
            return
        reason = f"killed: no client connected within {self.idle_timeout:g} s"
        log.info("Keep %s: %s", keep_id, reason)
        self._spawn(self._terminate(live, reason))

    def arm_watchdog(self, keep_id: str, live: _Live, rec: KeepRecord) -> None:
        """Start the host watchdog of a Keep whose client just connected."""
        timeout_ms = rec.limits.timeout_ms
        if timeout_ms is None:
            return
        seconds = timeout_ms / 1000 + self.watchdog_grace
        live.watchdog = asyncio.get_running_loop().call_later(seconds, self._overdue, keep_id, live, seconds)

    def _overdue(self, keep_id: str, live: _Live, seconds: float) -> None:
        live.watchdog = None
        if live.kill_requested or self.live.get(keep_id) is not live or live.done.is_set():
            return
        reason = f"killed: still running {seconds:g} s after its client connected (host watchdog)"
        log.warning("Keep %s: %s", keep_id, reason)
        self._spawn(self._terminate(live, reason))

    async def _terminate(self, live: _Live, reason: str) -> None:
        """SIGTERM the Keep, SIGKILL after the grace; return once it ended
        (its end recorded as ``killed`` with the first reason given)."""
        if not live.kill_requested:
            live.kill_requested = True
            live.kill_reason = reason
        _signal(live.handle, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(live.done.wait()), self.kill_grace)
        except TimeoutError:
            _signal(live.handle, signal.SIGKILL)
            await live.done.wait()

    async def _watch(self, keep_id: str, live: _Live) -> None:
        """Wait for the Keep process to end, record how, reap its PSP."""
        try:
            status = await _wait_process(live.handle)
            if live.kill_requested:
                state, detail = "killed", live.kill_reason
            elif status == 0:
                state, detail = "exited", "Keep process exited with status 0"
            elif status > 0:
                state, detail = "failed", f"Keep process exited with status {status}"
            else:
                state, detail = "failed", f"Keep process killed by signal {_signame(-status)}"
            try:
                await self._db(self.registry.transition, keep_id, state, exit_status=status, detail=detail)
            except RegistryError:
                log.exception("Keep %s: cannot record its end", keep_id)
            log.info("Keep %s: %s (%s)", keep_id, state, detail)
            await anyio.to_thread.run_sync(lambda: _reap_rest(live.handle, self.kill_grace))
            if live.handle.psp is not None:
                served = await anyio.to_thread.run_sync(_reports_served, live.handle.log_path)
                self.metrics.evidence.labels(live.handle.backend).inc(served)
        finally:
            for timer in (live.idle_timer, live.watchdog):
                if timer is not None:
                    timer.cancel()
            live.idle_timer = live.watchdog = None
            if not live.relaying:
                with contextlib.suppress(OSError):
                    live.handle.conn.close()
            self.live.pop(keep_id, None)
            live.done.set()

    async def kill(self, rec: KeepRecord) -> KeepRecord:
        live = self.live.get(rec.keep_id)
        if live is not None:
            await self._terminate(live, "killed on request")
        elif not rec.is_final:
            # Re-adopted after a manager restart: only the pid is known.
            if rec.pid is not None and proc_is_alive(rec.pid, rec.pid_start_time):
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
                if rec.pid is not None and not proc_is_alive(rec.pid, rec.pid_start_time):
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

    def log_path(self, rec: KeepRecord) -> Path:
        """Where the loader writes this Keep's stderr log."""
        known = self.log_paths.get(rec.keep_id) or rec.log_path
        # The loader's naming; the id matched the registry's [A-Za-z0-9_-]{1,64}.
        return known or self.state_dir / "logs" / f"keep-{rec.keep_id}.log"

    # -- relay

    async def relay(self, ws: WebSocket, keep_id: str, live: _Live) -> None:
        """Pump bytes between the WebSocket and the Keep's stream until both
        directions end."""
        conn = live.handle.conn
        conn.setblocking(False)
        loop = asyncio.get_running_loop()
        to_keep = self.metrics.relay_bytes.labels("to_keep")
        to_client = self.metrics.relay_bytes.labels("to_client")

        async def keep_to_client() -> None:
            try:
                while True:
                    data = await loop.sock_recv(conn, RELAY_CHUNK)
                    if not data:
                        break
                    await ws.send_bytes(data)
                    to_client.inc(len(data))
            except (OSError, WebSocketDisconnect, RuntimeError):
                pass
            with contextlib.suppress(Exception):
                await ws.close(1000)

        async def client_to_keep() -> None:
            try:
                while True:
                    msg = await ws.receive()
                    if msg["type"] == "websocket.disconnect":
                        break
                    data = msg.get("bytes")
                    if data is None:
                        await ws.close(1003, "binary frames only")
                        break
                    await loop.sock_sendall(conn, data)
                    to_keep.inc(len(data))
            except (OSError, WebSocketDisconnect, RuntimeError):
                pass
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)  # the Keep sees the end of the stream

        try:
            await asyncio.gather(keep_to_client(), client_to_keep())
        finally:
            live.relaying = False
            if live.done.is_set() or self.live.get(keep_id) is not live:
                with contextlib.suppress(OSError):
                    conn.close()


def _read_log(path: Path, tail: int | None, offset: int | None) -> tuple[bytes, int, int]:
    """(bytes, offset of the first byte, file size) of a Keep log: from
    ``offset`` on, else the last ``tail`` lines, else all, each capped at
    MAX_LOG_BYTES (from the end: whole lines only). A missing file is empty."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return b"", 0, 0
    with f:
        size = os.fstat(f.fileno()).st_size
        if offset is not None:
            start = min(offset, size)
            f.seek(start)
            return f.read(min(MAX_LOG_BYTES, size - start)), start, size
        start = max(0, size - MAX_LOG_BYTES)
        f.seek(start)
        data = f.read(size - start)
    if start > 0:  # drop the partial first line
        cut = data.find(b"\n") + 1
        data, start = data[cut:], start + cut
    if tail is not None:
        cut = _tail_start(data, tail)
        data, start = data[cut:], start + cut
    return data, start, size


def _tail_start(data: bytes, lines: int) -> int:
    """Index in ``data`` where its last ``lines`` lines start (a last line
    without a newline counts)."""
    if lines == 0:
        return len(data)
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        newline = data.rfind(b"\n", 0, end)
        if newline < 0:
            return 0
        end = newline
    return end + 1


def _query_number(request: Request, name: str, low: float, high: float, *, integer: bool) -> float | None:
    """A numeric query parameter in [low, high], or None if absent; 400 otherwise."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        kind = "an integer" if integer else "a number of seconds"
        raise ApiProblem(
            400, "bad-request", "malformed request", f"{name} must be {kind} from {low:g} to {high:g}"
        )
    return value


def _signame(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _signal(handle: KeepHandle, sig: int) -> None:
    for proc in (handle.keep, handle.psp):
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)


#: The last line a sim PSP process writes to the Keep's log
#: (stockade.evidence.sim.psp.SERVED_LINE; host code may not import it).
_PSP_SERVED = re.compile(rb"^sim PSP: served (\d{1,9}) report\(s\)$", re.MULTILINE)


def _reports_served(log_path: Path) -> int:
    """Reports the Keep's sim PSP process says it signed (its last such line)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read()
    except OSError:
        return 0
    found = _PSP_SERVED.findall(tail)
    return int(found[-1]) if found else 0


def _reap_rest(handle: KeepHandle, grace: float) -> None:
    """After the Keep process ended: reap the PSP, remove the scratch dir."""
    import shutil
    import subprocess

    if handle.psp is not None:
        try:
            handle.psp.wait(grace)
        except subprocess.TimeoutExpired:
            handle.psp.kill()
            handle.psp.wait()
    if handle.scratch is not None:
        shutil.rmtree(handle.scratch, ignore_errors=True)


async def _wait_process(handle: KeepHandle) -> int:
    """Exit status of the Keep process (negative: killed by that signal),
    waiting on a pidfd so that no thread is held per Keep."""
    proc = handle.keep
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (OSError, AttributeError):
        pidfd = -1
    if pidfd >= 0:
        ended = asyncio.Event()
        loop.add_reader(pidfd, ended.set)
        try:
            if proc.poll() is None:
                await ended.wait()
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    while (status := proc.poll()) is None:  # no pidfd, or a zombie not yet reapable
        await asyncio.sleep(0.05)
    return status


# -- HTTP ---------------------------------------------------------------------------


async def _read_body(request: Request) -> dict[Any, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != CBOR:
        raise ApiProblem(415, "unsupported-media-type", "unsupported media type", f"send {CBOR}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiProblem(413, "too-large", "request body too large", f"at most {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiProblem(413, "too-large", "request body too large", f"at most {MAX_BODY} bytes")
    try:
        return decode_map(bytes(body), "request body")
    except ProtocolError as exc:
        raise ApiProblem(400, "bad-request", "malformed request", exc.detail) from None


def _parse_create(body: dict[Any, Any]) -> tuple[str, Limits]:
    def bad(detail: str) -> ApiProblem:
        return ApiProblem(400, "bad-request", "malformed request", detail)

    extra = set(body) - {"backend", "limits"}
    if extra:
        raise bad(f"unknown key(s) {sorted(map(str, extra))}")
    backend = body.get("backend")
    if not isinstance(backend, str):
        raise bad("backend (text) is required")
    if backend not in BACKENDS:
        raise ApiProblem(
            422, "unsupported-backend", "backend not available", f"this host runs: {', '.join(BACKENDS)}"
        )
    raw = body.get("limits", {})
    if not isinstance(raw, dict) or set(raw) - set(_LIMIT_KEYS):
        raise bad(f"limits must be a map with keys among {', '.join(_LIMIT_KEYS)}")
    try:
        return backend, Limits(**{k: raw[k] for k in _LIMIT_KEYS if k in raw})
    except RegistryError as exc:
        raise bad(exc.detail) from None


def create_app(
    state_dir: Path,
    tokens: Tokens,
    *,
    kill_grace: float = KILL_GRACE_S,
    idle_timeout: float | None = IDLE_TIMEOUT_S,
    starter: Callable[..., KeepHandle] = start_keep,
    watchdog_grace: float = WATCHDOG_GRACE_S,
) -> Starlette:
    """The manager app. The registry is opened and reconciled at start-up
    (lifespan), before the first request is served. ``starter`` starts the
    Keeps (stockade.host.forkserver.fork_starter: from the fork server)."""
    metrics = Metrics()
    mgr = Manager(
        state_dir,
        tokens,
        kill_grace=kill_grace,
        starter=starter,
        metrics=metrics,
        idle_timeout=idle_timeout,
        watchdog_grace=watchdog_grace,
    )

    async def health(request: Request) -> Response:
        return _cbor({"status": "ok"})

    async def create_keep(request: Request) -> Response:
        owner = mgr.authenticate(request.headers)
        backend, limits = _parse_create(await _read_body(request))
        rec = await mgr.create(owner, backend, limits)
        return _cbor(mgr.document(rec), 201)

    async def list_keeps(request: Request) -> Response:
        owner = mgr.authenticate(request.headers)
        recs = await mgr._db(mgr.registry.list, owner.token_id)
        return _cbor({"keeps": [mgr.document(r) for r in recs]})

    async def get_keep(request: Request) -> Response:
        owner = mgr.authenticate(request.headers)
        rec = await mgr.record_of(request.path_params["keep_id"], owner.token_id)
        return _cbor(mgr.document(rec))

    async def delete_keep(request: Request) -> Response:
        owner = mgr.authenticate(request.headers)
        rec = await mgr.record_of(request.path_params["keep_id"], owner.token_id)
        return _cbor(mgr.document(await mgr.kill(rec)))

    async def wait_keep(request: Request) -> Response:
        owner = mgr.authenticate(request.headers)
        timeout = _query_number(request, "timeout", 0, MAX_WAIT_S, integer=False)
        if set(request.query_params) - {"timeout"}:
            raise ApiProblem(400, "bad-request", "malformed request", "the only query parameter is timeout")
        rec = await mgr.record_of(request.path_params["keep_id"], owner.token_id)
        rec, timed_out = await mgr.wait(rec, DEFAULT_WAIT_S if timeout is None else timeout)
        return _cbor({**mgr.document(rec), "timed_out": timed_out})

    async def keep_logs(request: Request) -> Response:
        owner = mgr.authenticate(request.headers)
        tail = _query_number(request, "tail", 0, MAX_TAIL_LINES, integer=True)
        offset = _query_number(request, "offset", 0, 2**63 - 1, integer=True)
        if set(request.query_params) - {"tail", "offset"}:
            raise ApiProblem(400, "bad-request", "malformed request", "query parameters are tail or offset")
        if tail is not None and offset is not None:
            raise ApiProblem(400, "bad-request", "malformed request", "give tail or offset, not both")
        rec = await mgr.record_of(request.path_params["keep_id"], owner.token_id)
        path = mgr.log_path(rec)
        data, start, size = await anyio.to_thread.run_sync(
            lambda: _read_log(
                path, None if tail is None else int(tail), None if offset is None else int(offset)
            )
        )
        headers = {"Stockade-Log-Offset": str(start), "Stockade-Log-Size": str(size)}
        return Response(data, 200, headers=headers, media_type=TEXT)

    async def stage_package(request: Request) -> Response:
        owner = mgr.authenticate(request.headers)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != PACKAGE_MEDIA_TYPE:
            raise ApiProblem(
                415, "unsupported-media-type", "unsupported media type", f"send {PACKAGE_MEDIA_TYPE}"
            )
        keep_id = request.path_params["keep_id"]
        rec = await mgr.record_of(keep_id, owner.token_id)
        live = mgr.live.get(keep_id)
        if live is None or rec.state in FINAL_STATES or live.kill_requested:
            raise ApiProblem(409, "conflict", "Keep not running", f"Keep {keep_id} is {rec.state}")
        if live.connected:
            raise ApiProblem(409, "conflict", "already connected", "stage the package before connecting")
        scratch = live.handle.scratch
        if scratch is None:
            raise ApiProblem(409, "conflict", "no staging area", f"Keep {keep_id} has no staging area")
        declared = request.headers.get("content-length")
        too_large = ApiProblem(413, "too-large", "package too large", f"at most {MAX_STAGED} bytes")
        if declared is not None and declared.isdigit() and int(declared) > MAX_STAGED:
            raise too_large

        # Untrusted bytes for the Keep to measure: streamed to a temporary
        # file of its own (two PUTs never share one), renamed into place only
        # once complete; the last complete upload wins.
        def failed(exc: OSError | None) -> ApiProblem:
            if mgr.live.get(keep_id) is not live or live.kill_requested:  # deleted or ended meanwhile
                return ApiProblem(
                    409, "conflict", "Keep not running", f"Keep {keep_id} ended during the upload"
                )
            reason = exc.strerror if exc is not None else "unknown error"
            return ApiProblem(
                500, "staging-failed", "cannot stage the package", f"the host cannot store it: {reason}"
            )

        tmp: Path | None = None
        size = 0
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=STAGED_NAME + ".", suffix=".part", dir=scratch)
            tmp = Path(tmp_name)
            with open(fd, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_STAGED:
                        raise too_large
                    await anyio.to_thread.run_sync(out.write, chunk)
            if mgr.live.get(keep_id) is not live or live.kill_requested:
                raise failed(None)
            os.replace(tmp, scratch / STAGED_NAME)
            tmp = None
        except OSError as exc:  # the scratch dir is gone (the Keep ended), disk full, ...
            raise failed(exc) from None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        log.info("Keep %s: %d-byte package staged", keep_id, size)
        return Response(status_code=204)

    async def sim_root(request: Request) -> Response:
        mgr.authenticate(request.headers)
        path = state_dir / "sim" / "chip" / "ark.der"
        try:
            der = await anyio.to_thread.run_sync(path.read_bytes)
        except OSError:
            raise ApiProblem(404, "not-found", "no sim chip", "this host has no sim chip") from None
        return _cbor({"ark": der})

    async def metrics_page(request: Request) -> Response:
        body = await anyio.to_thread.run_sync(metrics.exposition)
        return Response(body, 200, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def connect(ws: WebSocket) -> None:
        try:
            owner = mgr.authenticate(ws.headers)
            keep_id = ws.path_params["keep_id"]
            rec = await mgr.record_of(keep_id, owner.token_id)
            live = mgr.live.get(keep_id)
            if live is None or rec.state in FINAL_STATES:
                raise ApiProblem(409, "conflict", "Keep not running", f"Keep {keep_id} is {rec.state}")
            if live.kill_requested:
                raise ApiProblem(409, "conflict", "Keep not running", f"Keep {keep_id} is being killed")
            if live.connected:
                raise ApiProblem(409, "conflict", "already connected", f"Keep {keep_id} has had its client")
        except ApiProblem as problem:
            await ws.send_denial_response(problem.response())
            return
        live.connected = live.relaying = True
        if live.idle_timer is not None:
            live.idle_timer.cancel()
            live.idle_timer = None
        mgr.arm_watchdog(keep_id, live, rec)
        await ws.accept()
        started = time.monotonic()
        await mgr.relay(ws, keep_id, live)
        log.info("Keep %s: relay closed after %.1f s", keep_id, time.monotonic() - started)

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblem)
        return exc.response()

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return ApiProblem(exc.status_code, "http", str(exc.detail), str(exc.detail)).response()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await mgr.start()
        try:
            yield
        finally:
            await mgr.stop()

    app = Starlette(
        routes=[
            Route("/v1/health", health, methods=["GET"]),
            Route("/v1/keeps", create_keep, methods=["POST"]),
            Route("/v1/keeps", list_keeps, methods=["GET"]),
            Route("/v1/keeps/{keep_id}", get_keep, methods=["GET"]),
            Route("/v1/keeps/{keep_id}", delete_keep, methods=["DELETE"]),
            Route("/v1/keeps/{keep_id}/wait", wait_keep, methods=["GET"]),
            Route("/v1/keeps/{keep_id}/logs", keep_logs, methods=["GET"]),
            Route("/v1/keeps/{keep_id}/package", stage_package, methods=["PUT"]),
            Route("/v1/sim/root", sim_root, methods=["GET"]),
            WebSocketRoute("/v1/keeps/{keep_id}/connect", connect),
            Route("/metrics", metrics_page, methods=["GET"]),
        ],
        middleware=[Middleware(_RequestMetrics, metrics=metrics)],
        exception_handlers={ApiProblem: on_problem, HTTPException: on_http},
        lifespan=lifespan,
    )
    app.state.manager = mgr
    app.state.metrics = metrics
    return app
