"""Client of a remote keep manager (``stockade host serve``).

:class:`ManagerClient` speaks the manager's HTTP+CBOR API (create, list,
get, kill, sim root) and :meth:`ManagerClient.connect` opens the WebSocket
relay to one Keep, returning an ordinary connected stream socket so that
:func:`stockade.client.deploy.deploy` runs over it unchanged: the attested
TLS session is end to end between this client and the Keep; the manager
only relays its bytes.

Nothing the manager says is trusted: a Keep's measurement reported by the
API is informational, the policy pins what the evidence must show, and a
sim root fetched from the host is used only when the deployer's policy pins
its SHA-256 (``stockade deploy`` takes it from ``--sim-root`` otherwise).
Text in its answers (problem details, Keep fields, logs) is the host's:
the CLI prints it through ``stockade.commands._output.safe_text``.

Transport: ``https://`` URLs are verified against the system CA store, or
against ``cacert`` alone when given (like curl's --cacert); the relay then
runs over ``wss://`` with the same context. A bearer token is never sent
over plain ``http://`` to a host that is not loopback unless the caller
allows it (``allow_insecure_http``): anyone on the path could read it. API
TLS protects the token and the metadata only; the deploy's attested TLS
session runs end to end inside the relay either way.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ipaddress
import os
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Final

import cbor2

from stockade.client._http import httpx  # without httpx's command line (rich, pygments)
from stockade.errors import (
    ManagerError,
    StockadeError,
    UsageError,
)
from stockade.wire.messages import PD_DETAIL, PD_TITLE, PD_TYPE, loads_strict
from stockade.wire.staging import PACKAGE_MEDIA_TYPE

CBOR: Final = "application/cbor"
PROBLEM: Final = "application/concise-problem-details+cbor"

#: Called with ("up", bytes) for bytes sent to the Keep and ("down", bytes)
#: for bytes received from it, exactly as relayed (tests use it as a tap).
Tap = Callable[[str, bytes], None]


#: The longest wait the manager grants per request (docs/host-api.md).
MAX_WAIT_S: Final = 300.0


def _loopback_address(text: str) -> bool:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1
    return addr.is_loopback  # 127.0.0.0/8, ::1


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a URL's host part) names this machine's loopback:
    a loopback IP literal (127.0.0.0/8, ::1), or exactly ``localhost`` when
    every address it resolves to is loopback. Other names are not, not even
    ``*.localhost``: RFC 6761 (section 6.3) only asks resolvers to keep them
    on loopback, and a resolver that sends ``foo.localhost`` to DNS would
    carry the token off this machine."""
    host = host.strip("[]").lower()
    if _loopback_address(host):
        return True
    if host != "localhost":
        return False
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(_loopback_address(str(info[4][0])) for info in infos)


def tls_context(cacert: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """Client TLS context: the system CA store, or only ``cacert`` (PEM)."""
    try:
        if cacert is None:
            return ssl.create_default_context()
        return ssl.create_default_context(cafile=os.fspath(cacert))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--cacert: cannot load CA certificates from {cacert}: {exc}") from None


class ManagerClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        cacert: str | os.PathLike[str] | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        """``cacert``: PEM file of the CA(s) that sign the manager's
        certificate (https only; default: the system CA store).
        ``allow_insecure_http``: send the token over plain http to a host
        that is not loopback (refused otherwise, with a UsageError)."""
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ManagerError(f"host URL must start with http:// or https://, got {url!r}")
        try:
            host = httpx.URL(self.url).host
        except httpx.InvalidURL as exc:
            raise UsageError(f"--host: not a valid URL {url!r}: {exc}") from None
        if not host:
            raise UsageError(f"--host: no host name in {url!r}")
        self.tls = self.url.startswith("https://")
        if not self.tls and not is_loopback(host) and not allow_insecure_http:
            raise UsageError(
                f"refusing to send the API token over plain http to {host}: use https:// "
                "(stockade host serve --tls-cert/--tls-key), or --insecure-http to send it in clear"
            )
        self.token = token
        self._ssl = tls_context(cacert) if self.tls else None
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            # A plain-http client needs no CA store, and httpx loads one for
            # verify=True (certifi's, ~40 ms of CPU per deploy, issue 18): a
            # client TLS context with no CA verifies nothing, so it fails
            # closed should any https URL reach this client.
            verify=self._ssl if self._ssl is not None else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
            headers={"Authorization": f"Bearer {token}", "Accept": f"{CBOR}, {PROBLEM}"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ManagerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
        raw: tuple[str, bytes] | None = None,
    ) -> tuple[httpx.Response, str]:
        """Send one request (a CBOR ``body``, or ``raw`` = (media type,
        bytes)); return the response and its media type, or raise
        ManagerError for a problem answer or a transport failure."""
        content = None if body is None else cbor2.dumps(body, canonical=True)
        headers = {"Content-Type": CBOR} if content is not None else None
        if raw is not None:
            headers, content = {"Content-Type": raw[0]}, raw[1]
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        # A reused keep-alive connection may be closed by the server just as
        # a request goes out; idempotent requests are retried once for that.
        attempts = 2 if method in ("GET", "PUT", "DELETE") else 1
        for attempt in range(attempts):
            try:
                resp = self._http.request(
                    method, path, content=content, headers=headers, params=params, **extra
                )
                break
            except httpx.RemoteProtocolError as exc:
                if attempt + 1 == attempts:
                    raise ManagerError(self._transport_failure(exc)) from None
            except httpx.HTTPError as exc:
                raise ManagerError(self._transport_failure(exc)) from None
        ctype = resp.headers.get("content-type", "").split(";")[0].strip()
        if resp.status_code >= 400:
            raise _problem(resp.status_code, ctype, resp.content)
        return resp, ctype

    def _transport_failure(self, exc: BaseException) -> str:
        """One line saying why the manager could not be reached."""
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, ssl.SSLCertVerificationError):
                why = cause.verify_message or cause.reason or "not trusted"
                return (
                    f"the TLS certificate of the keep manager at {self.url} did not verify ({why}); "
                    "give the CA that signed it with --cacert FILE or STOCKADE_HOST_CACERT"
                )
            if isinstance(cause, ssl.SSLError):
                return (
                    f"TLS handshake with the keep manager at {self.url} failed ({cause.reason or cause}); "
                    "if it serves plain http, use an http:// URL"
                )
            cause = cause.__cause__ or cause.__context__
        if not self.tls and isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            return (
                f"the keep manager at {self.url} closed the connection without an HTTP answer; "
                "if it serves TLS, use an https:// URL"
            )
        return f"cannot reach the keep manager at {self.url}: {str(exc) or type(exc).__name__}"

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> dict[Any, Any]:
        resp, ctype = self._request(method, path, body, params, timeout)
        if ctype != CBOR:
            raise ManagerError(f"{method} {path}: expected {CBOR}, got {ctype or 'no content type'}")
        value = loads_strict(resp.content, f"{method} {path} response")
        if not isinstance(value, dict):
            raise ManagerError(f"{method} {path}: expected a CBOR map")
        return value

    def health(self) -> dict[Any, Any]:
        return self._call("GET", "/v1/health")

    def create(
        self, backend: str = "sim", limits: dict[str, int] | None = None, publish: tuple[str, ...] = ()
    ) -> dict[Any, Any]:
        body: dict[str, Any] = {"backend": backend, "limits": limits or {}}
        if publish:
            body["publish"] = list(publish)
        return self._call("POST", "/v1/keeps", body)

    def list(self) -> list[dict[Any, Any]]:
        keeps = self._call("GET", "/v1/keeps").get("keeps")
        if not isinstance(keeps, list):
            raise ManagerError("GET /v1/keeps: expected a list of Keeps")
        return keeps

    def get(self, keep_id: str) -> dict[Any, Any]:
        return self._call("GET", f"/v1/keeps/{keep_id}")

    def kill(self, keep_id: str) -> dict[Any, Any]:
        return self._call("DELETE", f"/v1/keeps/{keep_id}")

    def wait(self, keep_id: str, timeout: float) -> dict[Any, Any]:
        """Wait up to ``timeout`` s (at most MAX_WAIT_S) for the Keep to reach
        a final state: its document, with ``timed_out`` true if it did not."""
        timeout = min(max(timeout, 0.0), MAX_WAIT_S)
        doc = self._call(
            "GET", f"/v1/keeps/{keep_id}/wait", params={"timeout": f"{timeout:g}"}, timeout=timeout + 30
        )
        if not isinstance(doc.get("timed_out"), bool):
            raise ManagerError(f"GET /v1/keeps/{keep_id}/wait: expected timed_out (a boolean)")
        return doc

    def logs(self, keep_id: str, *, tail: int | None = None, offset: int | None = None) -> tuple[bytes, int]:
        """Bytes of the Keep's host-side log (the last ``tail`` lines, or from
        byte ``offset`` on, or all; at most 1 MiB per call) and the offset of
        their first byte in the log."""
        params = {k: str(v) for k, v in (("tail", tail), ("offset", offset)) if v is not None}
        resp, ctype = self._request("GET", f"/v1/keeps/{keep_id}/logs", params=params)
        if ctype != "text/plain":
            raise ManagerError(f"GET /v1/keeps/{keep_id}/logs: expected text/plain, got {ctype or 'nothing'}")
        start = resp.headers.get("stockade-log-offset", "")
        if not start.isdigit():
            raise ManagerError(f"GET /v1/keeps/{keep_id}/logs: no valid Stockade-Log-Offset header")
        return resp.content, int(start)

    def stage(self, keep_id: str, package: bytes) -> None:
        """Upload a package for the Keep to load as ``staged`` (before
        connecting). The host is untrusted: the Keep measures these bytes
        and the client checks the attested digest."""
        self._request("PUT", f"/v1/keeps/{keep_id}/package", raw=(PACKAGE_MEDIA_TYPE, package))

    def sim_root(self) -> bytes:
        """The sim ARK the host serves. Not to be trusted on its own: the
        host could serve the root of a chip it made up. Callers compare its
        SHA-256 with one the deployer pinned ([sim] root_sha256)."""
        der = self._call("GET", "/v1/sim/root").get("ark")
        if not isinstance(der, bytes):
            raise ManagerError("GET /v1/sim/root: expected the ARK as a byte string")
        return der

    def collateral_list(self) -> builtins.list[tuple[str, int, bytes]]:
        """(name, size, SHA-256) of each collateral file the host serves
        (untrusted: see stockade.client.provision)."""
        files = self._call("GET", "/v1/collateral").get("files")
        if not isinstance(files, list):
            raise ManagerError("GET /v1/collateral: expected a list of files")
        out = []
        for f in files:
            name, size, digest = (
                (f.get("name"), f.get("size"), f.get("sha256")) if isinstance(f, dict) else (None,) * 3
            )
            if not isinstance(name, str) or not isinstance(size, int) or not isinstance(digest, bytes):
                raise ManagerError("GET /v1/collateral: a file entry lacks name, size or sha256")
            out.append((name, size, digest))
        return out

    def collateral_file(self, name: str) -> bytes:
        """The bytes of one collateral file the host serves."""
        data = self._call("GET", f"/v1/collateral/{name}").get("data")
        if not isinstance(data, bytes):
            raise ManagerError(f"GET /v1/collateral/{name}: expected the file as a byte string")
        return data

    def connect(self, keep_id: str, tap: Tap | None = None) -> socket.socket:
        """Open the relay to ``keep_id``; return a stream socket to the Keep.

        The WebSocket runs on an asyncio event loop in a thread of its own
        (websockets' asyncio implementation): receiving never waits for a
        send to finish. websockets' threaded client holds one lock while it
        sends, and receiving needs that lock, so a send blocked on a full
        socket stopped the relay from receiving: with stdin streaming while
        output comes back, both ends then waited for each other."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        ws_url = "ws" + self.url.removeprefix("http") + f"/v1/keeps/{keep_id}/connect"
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name="stockade-relay", daemon=True)
        thread.start()

        async def opening() -> Any:
            return await connect(
                ws_url,
                additional_headers={"Authorization": f"Bearer {self.token}"},
                max_size=1 << 24,
                compression=None,
                open_timeout=30,
                ssl=self._ssl,
            )

        try:
            ws = asyncio.run_coroutine_threadsafe(opening(), loop).result()
        except BaseException as exc:
            loop.call_soon_threadsafe(loop.stop)
            if isinstance(exc, InvalidStatus):
                resp = exc.response
                ctype = resp.headers.get("content-type", "").split(";")[0].strip()
                raise _problem(resp.status_code, ctype, bytes(resp.body or b"")) from None
            if isinstance(exc, ssl.SSLError):
                raise ManagerError(self._transport_failure(exc)) from None
            if isinstance(exc, (OSError, WebSocketException, TimeoutError)):
                raise ManagerError(f"cannot open the relay to Keep {keep_id}: {exc}") from None
            raise
        mine, theirs = socket.socketpair()
        for end in (mine, theirs):
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                # Room for a few deploy frames between the deploy and the
                # relay thread (capped by the kernel: socket(7)).
                with contextlib.suppress(OSError):
                    end.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        future = asyncio.run_coroutine_threadsafe(_relay(ws, theirs, tap), loop)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(loop.stop))
        return mine


#: Bytes the relay reads from the local socket at a time (one WebSocket message).
RELAY_READ: Final = 1 << 18


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _relay(ws: Any, sock: socket.socket, tap: Tap | None) -> None:
    """Copy bytes between a WebSocket (binary messages) and a local socket
    until both directions end: the end of the WebSocket is EOF on the
    socket, EOF on the socket closes the WebSocket."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)

    async def down() -> None:
        try:
            async for message in ws:
                if isinstance(message, str):
                    break
                if tap is not None:
                    tap("down", message)
                await loop.sock_sendall(sock, message)
        except Exception:  # noqa: S110 - a broken relay is EOF to the deploy session
            pass
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    async def up() -> None:
        try:
            while data := await loop.sock_recv(sock, RELAY_READ):
                if tap is not None:
                    tap("up", data)
                await ws.send(data)
        except Exception:  # noqa: S110 - see down
            pass
        with contextlib.suppress(Exception):
            await ws.close()

    try:
        await asyncio.gather(down(), up())
    finally:
        sock.close()


def published_of(doc: dict[Any, Any], names: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """The ``published`` answer of a create request that asked to publish
    ``names``: name -> (public HOST:PORT, bind address ``unix:/PATH``).
    ManagerError when the host answers something else. What the host says
    is not trusted: the bind address goes into the measured configuration
    (a wrong one only makes the Keep listen where nobody forwards), and
    the workload's peers still check its certificate over TLS."""
    from stockade.wire.messages import parse_unix_address

    raw = doc.get("published", {})
    if not isinstance(raw, dict) or set(raw) != set(names):
        raise ManagerError("POST /v1/keeps: the host did not publish the sockets asked for")
    out: dict[str, tuple[str, str]] = {}
    for name in names:
        entry = raw[name]
        if not isinstance(entry, dict) or set(entry) != {"public", "bind"}:
            raise ManagerError(f"POST /v1/keeps: published {name}: expected public and bind")
        public, bind = entry["public"], entry["bind"]
        if not isinstance(public, str) or not isinstance(bind, str) or len(public) > 300:
            raise ManagerError(f"POST /v1/keeps: published {name}: expected text addresses")
        try:
            parse_unix_address(bind)
        except ValueError as exc:
            raise ManagerError(f"POST /v1/keeps: published {name}: {exc}") from None
        out[name] = (public, bind)
    return out


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
