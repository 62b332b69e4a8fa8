"""Connection-flood guard of the keep manager (``stockade host serve``).

A hostile network peer needs no token to open TCP connections. Without a
guard, 2 x 10,000 idle connections exhaust the manager's file descriptors
(health and create time out, and asyncio logs a traceback for every failed
``accept()``), and a peer that sends half a request head holds its
connection forever: uvicorn's h11 protocol times out idle keep-alive
connections only, not a connection that never completes its request head
(uvicorn 0.55 ``protocols/http/h11_impl.py``, read for this module:
``connection_made`` arms no timer, ``data_received`` cancels the
keep-alive timer and nothing re-arms one until a response is complete).

This module bounds that, in the manager process:

* :class:`GuardedH11Protocol` (uvicorn's ``http`` protocol class, made per
  server by :func:`guarded_protocol`):

  - at most ``max_connections`` connections (HTTP and WebSocket relays
    together). A connection beyond it evicts the oldest connection that is
    waiting for a request head (first those that never sent a complete
    one, then idle keep-alive ones); when every connection is busy with a
    request or a relay, the new one is answered 503 and closed. A request
    or relay in progress is never evicted.
  - a request-head timeout: a new connection must complete its request
    head within ``header_timeout`` seconds; on a kept-alive connection the
    clock starts with the first byte of the next head (the idle time before
    it is uvicorn's ``timeout_keep_alive``). Then it is closed (408 if it
    had sent part of a head).

* :class:`LogRateLimit`: a logging filter that lets the first of each kind
  of peer-driven log line through per interval (without a traceback) and
  summarises the rest in one line per interval ("N accept errors (EMFILE)
  in the last 10 s"), so that a flood cannot fill the host's disk with logs.

* :func:`plan_descriptors`: the file-descriptor budget. Connections,
  the sockets in the accept pipeline (ACCEPT_PIPELINE bursts of
  ``backlog``, see there) and a reserve for Keeps (their stream socket,
  pidfds, log files, fork-server sockets) must fit in the soft
  ``RLIMIT_NOFILE``, so that Keep creation and health keep working under a
  flood.

What it does not do: limit the rate of connections or requests per peer
address, time out a slow request body, count connections still in their
TLS handshake (asyncio calls ``connection_made`` only once the handshake
is done, ``asyncio/sslproto.py``; its 60 s handshake timeout bounds them),
or stop a flood that saturates the network or the CPU. An internet-facing manager belongs behind a reverse
proxy (docs/host-api.md, "Running behind a reverse proxy").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from stockade.errors import UsageError

log = logging.getLogger("stockade.host.guard")

DEFAULT_MAX_CONNECTIONS: Final = 1024
DEFAULT_BACKLOG: Final = 128
DEFAULT_HEADER_TIMEOUT_S: Final = 10.0
#: Fewest connections worth serving with.
MIN_CONNECTIONS: Final = 16
#: Descriptors the manager holds without any Keep or connection: stdio, the
#: listening socket, the registry (SQLite and its journal), the event loop's
#: selector and self-pipe, the fork servers' control sockets, and log files
#: opened by worker threads (anyio runs at most 40 at a time).
BASE_RESERVE: Final = 128
#: Descriptors per Keep in the manager besides its client's connection: the
#: Keep's stream socket, the watcher's pidfd, the fork-server child's pidfd,
#: the PSP's, the log file while the loader opens it, with margin.
PER_KEEP_RESERVE: Final = 8
#: Sockets beyond the connection cap that the accept path can hold, in
#: bursts of ``backlog``. asyncio accepts up to ``backlog`` sockets per
#: event-loop iteration in which the listening socket is readable
#: (``selector_events._accept_connection``); a socket accepted in iteration
#: i reaches ``connection_made`` (where the cap is applied) in i+2 (task
#: step, then the transport's call_soon), and the connection it evicts is
#: closed in i+3 (``_call_connection_lost``). So up to four bursts are in
#: flight on top of the cap: measured, a cap + 1 x backlog budget ran out
#: of descriptors under a flood (tests/adversarial/test_manager_flood.py).
ACCEPT_PIPELINE: Final = 4
#: Interval of the log summaries.
SUMMARY_INTERVAL_S: Final = 10.0

_RESPONSE_503: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 20\r\nconnection: close\r\n\r\ntoo many connections"
)
_RESPONSE_408: Final = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"

#: Reasons a connection is shed (label values of stockade_connections_shed).
SHED_REASONS: Final = ("header-timeout", "evicted", "refused")


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    backlog: int = DEFAULT_BACKLOG
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S


@dataclass(frozen=True)
class DescriptorPlan:
    """How the soft RLIMIT_NOFILE is shared out."""

    nofile: int
    max_connections: int
    backlog: int
    keep_reserve: int

    def describe(self) -> str:
        return (
            f"at most {self.max_connections} connections, backlog {self.backlog}; file descriptors: "
            f"soft limit {self.nofile}, {ACCEPT_PIPELINE * self.backlog} for the accept path, "
            f"{self.keep_reserve} reserved for Keeps"
        )


def raise_nofile(want: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE toward the hard one (at most ``want``);
    return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 30 if soft == resource.RLIM_INFINITY else soft


def plan_descriptors(
    nofile: int, max_keeps: int, backlog: int, max_connections: int | None
) -> DescriptorPlan:
    """Fit connections, the accept burst and the Keeps' reserve in ``nofile``.

    ``max_connections`` None: as many as fit, at most DEFAULT_MAX_CONNECTIONS.
    A given value that does not fit, or a limit that leaves fewer than
    MIN_CONNECTIONS, is a UsageError that says what to change.
    """
    reserve = BASE_RESERVE + PER_KEEP_RESERVE * max_keeps
    accepting = ACCEPT_PIPELINE * backlog
    room = nofile - reserve - accepting
    if max_connections is None:
        max_connections = min(DEFAULT_MAX_CONNECTIONS, room)
        if max_connections < MIN_CONNECTIONS:
            raise UsageError(
                f"the file-descriptor limit {nofile} leaves {max(room, 0)} for connections after "
                f"{reserve} reserved for {max_keeps} Keep(s) (the tokens' quotas) and {accepting} for the "
                f"accept path ({ACCEPT_PIPELINE} x backlog {backlog}); "
                "raise LimitNOFILE (ulimit -n) or lower --backlog"
            )
    elif max_connections > room:
        raise UsageError(
            f"--max-connections {max_connections} does not fit in the file-descriptor limit {nofile}: "
            f"{reserve} are reserved for {max_keeps} Keep(s) (the tokens' quotas) and {accepting} for the "
            f"accept path ({ACCEPT_PIPELINE} x backlog {backlog}), leaving {max(room, 0)}; "
            "lower --max-connections or --backlog, or raise LimitNOFILE"
        )
    return DescriptorPlan(nofile, max_connections, backlog, reserve)


@dataclass
class _Shared:
    """State shared by the connections of one server."""

    limits: ConnectionLimits
    on_shed: Callable[[str], None]
    #: Connections waiting for a request head, oldest first: never served
    #: one, and idle between requests (keep-alive).
    fresh: OrderedDict[GuardedH11Protocol, None] = field(default_factory=OrderedDict)
    kept: OrderedDict[GuardedH11Protocol, None] = field(default_factory=OrderedDict)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a request-head
    timeout. Use :func:`guarded_protocol` to make the class for one server."""

    shared: ClassVar[_Shared]

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.shared.limits.max_connections:
            victim = next(iter(self.shared.fresh), None) or next(iter(self.shared.kept), None)
            if victim is None:  # everyone is busy with a request or a relay
                self.connections.discard(self)
                self.shared.on_shed("refused")
                transport.write(_RESPONSE_503)
                transport.close()
                return
            victim._drop("evicted", b"")
        self.shared.fresh[self] = None
        self._head_timer = self.loop.call_later(self.shared.limits.header_timeout, self._head_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._sync()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._sync()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def _sync(self) -> None:
        """After h11 consumed bytes or a response ended: is this connection
        waiting for a request head (and since when), or busy?"""
        if self.transport.is_closing():
            self._forget()
        elif self.conn.their_state is h11.IDLE:
            if self not in self.shared.fresh:
                self.shared.kept.setdefault(self)
            buffered = bool(self.conn.trailing_data[0])
            if buffered and self._head_timer is None:  # the next head has begun
                self._head_timer = self.loop.call_later(self.shared.limits.header_timeout, self._head_timeout)
            elif not buffered and self in self.shared.kept and self._head_timer is not None:
                self._head_timer.cancel()  # between requests: uvicorn's keep-alive timeout governs
                self._head_timer = None
        else:  # a request head is complete (or the connection switched to a WebSocket)
            self._forget()

    def _forget(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.shared.fresh.pop(self, None)
        self.shared.kept.pop(self, None)

    def _head_timeout(self) -> None:
        self._head_timer = None
        self._drop("header-timeout", _RESPONSE_408 if self.conn.trailing_data[0] else b"")

    def _drop(self, reason: str, answer: bytes) -> None:
        self._forget()
        self.connections.discard(self)
        self.shared.on_shed(reason)
        if not self.transport.is_closing():
            if answer:
                self.transport.write(answer)
            self.transport.close()


def guarded_protocol(
    limits: ConnectionLimits, on_shed: Callable[[str], None] | None = None
) -> type[GuardedH11Protocol]:
    """A protocol class for one uvicorn server (``Config(http=...)``), with
    its own bookkeeping; ``on_shed(reason)`` is called for every connection
    it closes (reason in SHED_REASONS)."""

    def ignore(reason: str) -> None:
        pass

    shared = _Shared(limits, on_shed or ignore)
    return type("StockadeH11Protocol", (GuardedH11Protocol,), {"shared": shared})


# -- logs -------------------------------------------------------------------------

_ACCEPT_MESSAGE: Final = "socket.accept() out of system resource"
#: Lines uvicorn writes once per request a peer can send at will.
_PEER_DRIVEN: Final = {
    "Exceeded concurrency limit.": "requests refused over the concurrency limit",
    "Invalid HTTP request received.": "invalid HTTP requests",
    "Unsupported upgrade request.": "unsupported upgrade requests",
}


class LogRateLimit(logging.Filter):
    """Let the first line of each peer-driven kind through per interval,
    count the rest, and log one summary line per kind and interval.

    Attach it to the loggers that write them (``asyncio``: accept errors
    from ``BaseEventLoop.default_exception_handler``; ``uvicorn.error``).
    An accept error passes as one line without its traceback. :meth:`note`
    counts events that are never logged one by one (shed connections);
    :meth:`flush` (call it often, e.g. from the server's tick) writes the
    summaries of the intervals that ended.
    """

    def __init__(
        self, interval: float = SUMMARY_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        #: kind -> (start of its interval, events in it, whether the first was logged)
        self._windows: dict[str, tuple[float, int, bool]] = {}

    def _count(self, kind: str, *, logged: bool) -> bool:
        """Count one event; True if it is the first of its interval."""
        window = self._windows.get(kind)
        if window is None:
            self._windows[kind] = (self._clock(), 1, logged)
            return True
        self._windows[kind] = (window[0], window[1] + 1, window[2])
        return False

    def note(self, kind: str) -> None:
        """Count an event that is not logged by itself."""
        self._count(kind, logged=False)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if message.startswith(_ACCEPT_MESSAGE):
            exc = record.exc_info[1] if record.exc_info else None
            code = errno.errorcode.get(getattr(exc, "errno", None) or 0, "unknown error")
            if not self._count(f"accept errors ({code})", logged=True):
                return False
            record.msg = "accept() failed: %s (%s); further accept errors are summarised every %g s"
            record.args = (code, exc.strerror if isinstance(exc, OSError) else exc, self.interval)
            record.exc_info = None
            record.exc_text = None
            return True
        kind = _PEER_DRIVEN.get(message)
        if kind is None:
            return True
        return self._count(kind, logged=True)

    def flush(self, now: float | None = None, *, force: bool = False) -> None:
        """Log the summary of each interval that ended (all, with ``force``)."""
        now = self._clock() if now is None else now
        for kind, (start, count, logged) in list(self._windows.items()):
            if force or now - start >= self.interval:
                del self._windows[kind]
                if count > 1 or not logged:  # a lone event already logged needs no summary
                    log.warning("%d %s in the last %.0f s", count, kind, max(now - start, self.interval))


def shed_kind(reason: str) -> str:
    """The summary wording of a shed reason (SHED_REASONS)."""
    return {
        "header-timeout": "connections closed without a complete request head in time",
        "evicted": "waiting connections closed to make room (connection limit)",
        "refused": "connections refused (connection limit, every connection busy)",
    }[reason]


def attach_log_limit(limiter: LogRateLimit) -> None:
    """Attach ``limiter`` to the loggers that write peer-driven lines (after
    uvicorn configured its logging)."""
    for name in _LOGGERS:
        logging.getLogger(name).addFilter(limiter)


def detach_log_limit(limiter: LogRateLimit) -> None:
    for name in _LOGGERS:
        logging.getLogger(name).removeFilter(limiter)


_LOGGERS: Final = ("asyncio", "uvicorn.error")
