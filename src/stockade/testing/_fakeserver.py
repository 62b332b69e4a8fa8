"""The loopback HTTP scaffold shared by the fake KDS (:mod:`stockade.testing.kds`)
and the fake PCS (:mod:`stockade.testing.pcs`): a ThreadingHTTPServer on
127.0.0.1 (a free port) served by a daemon thread, ``start``/``stop`` and the
context manager, ``base_url``, the fault list with its prefix matching, the
request log and the answer writer. Each fake adds its content, its fault
kinds and the way it applies them (``_handle``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar


@dataclass
class FaultBase:
    """A fault for the next ``times`` requests (None: forever) whose path
    starts with ``path`` (None: every path); each fake adds its own fields."""

    kind: str
    path: str | None = None
    times: int | None = 1

    def matches(self, path: str) -> bool:
        return (self.times is None or self.times > 0) and (self.path is None or path.startswith(self.path))


class _HasPath(Protocol):
    @property
    def path(self) -> str: ...


F = TypeVar("F", bound=FaultBase)
R = TypeVar("R", bound=_HasPath)


class LoopbackServer(Generic[F, R]):
    """A fake HTTP service on 127.0.0.1. Subclasses set the class attributes
    below and implement ``_handle`` (called for every GET, on a server
    thread)."""

    #: Name of the serving thread (None: threading's default name).
    _thread_name: str | None = None
    #: serve_forever's poll interval, i.e. how long ``stop`` may wait.
    _poll_interval: float = 0.05
    #: The RuntimeError message of ``base_url`` before ``start``.
    _not_started: str = "the server is not started"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[F] = []
        self.requests: list[R] = []
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> Self:
        if self._server is not None:
            return self
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._stopping.clear()
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": self._poll_interval},
            name=self._thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends pending delays that wait on it
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError(self._not_started)
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- faults and requests ---

    def _add(self, fault: F) -> F:
        with self._lock:
            self._faults.append(fault)
        return fault

    def _record(self, request: R) -> None:
        with self._lock:
            self.requests.append(request)

    def count(self, path_prefix: str = "") -> int:
        """Requests received so far whose path starts with ``path_prefix``."""
        with self._lock:
            return sum(1 for r in self.requests if r.path.startswith(path_prefix))

    # --- serving ---

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. timed out): nothing to do
