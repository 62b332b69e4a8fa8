"""Client of a remote keep manager (``stockade host serve``).

:class:`ManagerClient` speaks the manager's HTTP+CBOR API (create, list,
get, kill, sim root) and :meth:`ManagerClient.connect` opens the WebSocket
relay to one Keep, returning an ordinary connected stream socket so that
:func:`stockade.client.deploy.deploy` runs over it unchanged: the attested
TLS session is end to end between this client and the Keep; the manager
only relays its bytes.

Nothing the manager says is trusted: a Keep's measurement reported by the
API is informational, the policy pins what the evidence must show, and a
sim root fetched from the host protects nothing (the host owns the sim
chip's keys).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any, Final

import cbor2
import httpx

from stockade.errors import StockadeError
from stockade.wire.messages import PD_DETAIL, PD_TITLE, PD_TYPE, loads_strict

CBOR: Final = "application/cbor"
PROBLEM: Final = "application/concise-problem-details+cbor"

#: Called with ("up", bytes) for bytes sent to the Keep and ("down", bytes)
#: for bytes received from it, exactly as relayed (tests use it as a tap).
Tap = Callable[[str, bytes], None]


class ManagerError(StockadeError):
    """The keep manager refused a request or could not be reached."""

    exit_code = 1
    problem_type = "host-manager"
    title = "keep manager error"

    def __init__(self, detail: str, status: int | None = None, manager_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.manager_type = manager_type


class ManagerClient:
    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ManagerError(f"host URL must start with http:// or https://, got {url!r}")
        self.token = token
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}", "Accept": f"{CBOR}, {PROBLEM}"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ManagerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> dict[Any, Any]:
        content = None if body is None else cbor2.dumps(body, canonical=True)
        headers = {"Content-Type": CBOR} if content is not None else None
        try:
            resp = self._http.request(method, path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise ManagerError(f"cannot reach the keep manager at {self.url}: {exc}") from None
        ctype = resp.headers.get("content-type", "").split(";")[0].strip()
        if resp.status_code >= 400:
            raise _problem(resp.status_code, ctype, resp.content)
        if ctype != CBOR:
            raise ManagerError(f"{method} {path}: expected {CBOR}, got {ctype or 'no content type'}")
        value = loads_strict(resp.content, f"{method} {path} response")
        if not isinstance(value, dict):
            raise ManagerError(f"{method} {path}: expected a CBOR map")
        return value

    def health(self) -> dict[Any, Any]:
        return self._call("GET", "/v1/health")

    def create(self, backend: str = "sim", limits: dict[str, int] | None = None) -> dict[Any, Any]:
        return self._call("POST", "/v1/keeps", {"backend": backend, "limits": limits or {}})

    def list(self) -> list[dict[Any, Any]]:
        keeps = self._call("GET", "/v1/keeps").get("keeps")
        if not isinstance(keeps, list):
            raise ManagerError("GET /v1/keeps: expected a list of Keeps")
        return keeps

    def get(self, keep_id: str) -> dict[Any, Any]:
        return self._call("GET", f"/v1/keeps/{keep_id}")

    def kill(self, keep_id: str) -> dict[Any, Any]:
        return self._call("DELETE", f"/v1/keeps/{keep_id}")

    def sim_root(self) -> bytes:
        """The sim ARK of the host. Trusting it gives NO protection: the
        host that hands it over owns the sim chip's keys."""
        der = self._call("GET", "/v1/sim/root").get("ark")
        if not isinstance(der, bytes):
            raise ManagerError("GET /v1/sim/root: expected the ARK as a byte string")
        return der

    def connect(self, keep_id: str, tap: Tap | None = None) -> socket.socket:
        """Open the relay to ``keep_id``; return a stream socket to the Keep."""
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        ws_url = "ws" + self.url.removeprefix("http") + f"/v1/keeps/{keep_id}/connect"
        try:
            ws = connect(
                ws_url,
                additional_headers={"Authorization": f"Bearer {self.token}"},
                max_size=1 << 24,
                compression=None,
                open_timeout=30,
            )
        except InvalidStatus as exc:
            resp = exc.response
            ctype = resp.headers.get("content-type", "").split(";")[0].strip()
            raise _problem(resp.status_code, ctype, bytes(resp.body or b"")) from None
        except (OSError, WebSocketException) as exc:
            raise ManagerError(f"cannot open the relay to Keep {keep_id}: {exc}") from None
        # The pump threads own the connection until it closes; entering it
        # is how websockets >= 17.1 is told so (a no-op returning it before).
        ws = ws.__enter__()
        mine, theirs = socket.socketpair()
        _Pump(ws, theirs, tap).start()
        return mine


def _problem(status: int, ctype: str, body: bytes) -> ManagerError:
    detail = f"HTTP {status}"
    ptype = None
    if ctype == PROBLEM:
        with contextlib.suppress(StockadeError):
            pd = loads_strict(body, "problem details")
            if isinstance(pd, dict):
                title, text, ptype = pd.get(PD_TITLE), pd.get(PD_DETAIL), pd.get(PD_TYPE)
                detail = f"{title} ({status}): {text}" if title else detail
    return ManagerError(detail, status, ptype if isinstance(ptype, str) else None)


class _Pump:
    """Copies bytes between a WebSocket (binary messages) and a local socket."""

    def __init__(self, ws: Any, sock: socket.socket, tap: Tap | None) -> None:
        self.ws = ws
        self.sock = sock
        self.tap = tap
        self._left = 2
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._down, name="stockade-relay-down", daemon=True).start()
        threading.Thread(target=self._up, name="stockade-relay-up", daemon=True).start()

    def _finish(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            with contextlib.suppress(OSError):
                self.sock.close()

    def _down(self) -> None:
        """WebSocket -> local socket; the end of the WebSocket is EOF."""
        try:
            for message in self.ws:
                if isinstance(message, str):
                    break
                if self.tap is not None:
                    self.tap("down", message)
                self.sock.sendall(message)
        except Exception:  # noqa: S110 - a broken relay is EOF to the deploy session
            pass
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self._finish()

    def _up(self) -> None:
        """Local socket -> WebSocket; EOF closes the WebSocket."""
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                if self.tap is not None:
                    self.tap("up", data)
                self.ws.send(data)
        except Exception:  # noqa: S110 - see _down
            pass
        with contextlib.suppress(Exception):
            self.ws.close()
        self._finish()
