"""The keep manager's API routes: each handler only translates HTTP to one
call of the supervisor and its answer (or refusal) back to HTTP.

Request parsing (CBOR bodies, query parameters, the bearer token) and the
Keep document live here; what a request does lives in
stockade.host.manager.supervisor. URLs, bodies and problem types:
docs/host-api.md, docs/host-api.cddl.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Final

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from stockade.errors import ProtocolError
from stockade.host.loader import BACKENDS
from stockade.host.manager.logs import MAX_TAIL_LINES, read_log
from stockade.host.manager.metrics import Metrics
from stockade.host.manager.portfwd import check_publish
from stockade.host.manager.problems import CBOR, NO_STORE, ApiProblem, bad_request, cbor_response, problem_of
from stockade.host.manager.relay import pump
from stockade.host.manager.status import HostStatus
from stockade.host.manager.supervisor import Supervisor, SupervisorError
from stockade.host.registry import KeepRecord, Limits, RegistryError
from stockade.host.tokens import TokenEntry
from stockade.wire.messages import decode_map
from stockade.wire.staging import PACKAGE_MEDIA_TYPE

log = logging.getLogger("stockade.host.manager")

MAX_BODY: Final = 1 << 20
#: Longest a wait request blocks, and its default.
MAX_WAIT_S: Final = 300.0
DEFAULT_WAIT_S: Final = 30.0
TEXT: Final = "text/plain"
LIMIT_KEYS: Final = ("timeout_ms", "memory_bytes", "output_bytes")


# -- request parsing -------------------------------------------------------------


def authenticate(sup: Supervisor, headers: Any) -> TokenEntry:
    """The token entry of ``Authorization: Bearer TOKEN``; 401 without one,
    403 for a token this host does not know."""
    value = headers.get("authorization")
    if not value:
        raise ApiProblem(401, "unauthorized", "authentication required", "send Authorization: Bearer TOKEN")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiProblem(401, "unauthorized", "authentication required", "expected a Bearer token")
    entry = sup.authenticate(token.strip())
    if entry is None:
        raise ApiProblem(403, "forbidden", "forbidden", "the bearer token is not valid on this host")
    return entry


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


async def read_body(request: Request) -> dict[Any, Any]:
    """The request's CBOR map (strict profile of stockade.wire.messages)."""
    if _media_type(request) != CBOR:
        raise ApiProblem(415, "unsupported-media-type", "unsupported media type", f"send {CBOR}")
    declared = _declared_length(request)
    if declared is not None and declared > MAX_BODY:
        raise ApiProblem(413, "too-large", "request body too large", f"at most {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiProblem(413, "too-large", "request body too large", f"at most {MAX_BODY} bytes")
    try:
        return decode_map(bytes(body), "request body")
    except ProtocolError as exc:
        raise bad_request(exc.detail) from None


def parse_create(
    body: dict[Any, Any], backends: tuple[str, ...] = BACKENDS
) -> tuple[str, Limits, tuple[str, ...]]:
    """(backend, limits, published socket names) of a create request;
    ``backends``: those this manager runs."""
    extra = set(body) - {"backend", "limits", "publish"}
    if extra:
        raise bad_request(f"unknown key(s) {sorted(map(str, extra))}")
    backend = body.get("backend")
    if not isinstance(backend, str):
        raise bad_request("backend (text) is required")
    if backend not in backends:
        raise ApiProblem(
            422, "unsupported-backend", "backend not available", f"this host runs: {', '.join(backends)}"
        )
    raw = body.get("limits", {})
    if not isinstance(raw, dict) or set(raw) - set(LIMIT_KEYS):
        raise bad_request(f"limits must be a map with keys among {', '.join(LIMIT_KEYS)}")
    try:
        publish = check_publish(body.get("publish", []))
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    try:
        return backend, Limits(**{k: raw[k] for k in LIMIT_KEYS if k in raw}), publish
    except RegistryError as exc:
        raise bad_request(exc.detail) from None


def query_number(request: Request, name: str, low: float, high: float, *, integer: bool) -> float | None:
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
        raise bad_request(f"{name} must be {kind} from {low:g} to {high:g}")
    return value


def document(rec: KeepRecord, measurement: bytes | None) -> dict[str, Any]:
    """The Keep document of ``rec`` (docs/host-api.cddl ``keep-document``)."""
    doc: dict[str, Any] = {
        "id": rec.keep_id,
        "state": rec.state,
        "backend": rec.backend,
        "created_at": rec.created_at.isoformat(),
        "limits": {k: v for k in LIMIT_KEYS if (v := getattr(rec.limits, k)) is not None},
    }
    optional = {
        "started_at": rec.started_at.isoformat() if rec.started_at else None,
        "ended_at": rec.ended_at.isoformat() if rec.ended_at else None,
        "exit_status": rec.exit_status,
        "pid": rec.pid,
        "detail": rec.detail,
        "measurement": measurement,
    }
    doc.update({k: v for k, v in optional.items() if v is not None})
    return doc


# -- the routes ---------------------------------------------------------------------


class Api:
    """The handlers of one manager app, bound to its supervisor."""

    def __init__(self, sup: Supervisor, metrics: Metrics, status: HostStatus) -> None:
        self.sup = sup
        self.metrics = metrics
        self.status = status

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/health", self.health, methods=["GET"]),
            Route("/v1/host", self.host, methods=["GET"]),
            Route("/v1/keeps", self.create_keep, methods=["POST"]),
            Route("/v1/keeps", self.list_keeps, methods=["GET"]),
            Route("/v1/keeps/{keep_id}", self.get_keep, methods=["GET"]),
            Route("/v1/keeps/{keep_id}", self.delete_keep, methods=["DELETE"]),
            Route("/v1/keeps/{keep_id}/wait", self.wait_keep, methods=["GET"]),
            Route("/v1/keeps/{keep_id}/logs", self.keep_logs, methods=["GET"]),
            Route("/v1/keeps/{keep_id}/package", self.stage_package, methods=["PUT"]),
            Route("/v1/sim/root", self.sim_root, methods=["GET"]),
            Route("/v1/collateral", self.collateral_list, methods=["GET"]),
            Route("/v1/collateral/{name:path}", self.collateral_file, methods=["GET"]),
            WebSocketRoute("/v1/keeps/{keep_id}/connect", self.connect),
            Route("/metrics", self.metrics_page, methods=["GET"]),
        ]

    def _document(self, rec: KeepRecord) -> dict[str, Any]:
        doc = document(rec, self.sup.measurements.get(rec.keep_id))
        published = self.sup.published(rec.keep_id)
        if published:
            doc["published"] = {p.name: {"public": p.public, "bind": p.bind} for p in published}
        return doc

    async def _record(self, request: Request) -> KeepRecord:
        owner = authenticate(self.sup, request.headers)
        return await self.sup.record_of(request.path_params["keep_id"], owner.token_id)

    async def health(self, request: Request) -> Response:
        return cbor_response({"status": "ok"})

    async def host(self, request: Request) -> Response:
        authenticate(self.sup, request.headers)
        return cbor_response(self.status.document())

    async def create_keep(self, request: Request) -> Response:
        owner = authenticate(self.sup, request.headers)
        backend, limits, publish = parse_create(await read_body(request), self.sup.backends)
        rec = await self.sup.create(owner, backend, limits, publish)
        return cbor_response(self._document(rec), 201)

    async def list_keeps(self, request: Request) -> Response:
        owner = authenticate(self.sup, request.headers)
        recs = await self.sup.records(owner.token_id)
        return cbor_response({"keeps": [self._document(r) for r in recs]})

    async def get_keep(self, request: Request) -> Response:
        return cbor_response(self._document(await self._record(request)))

    async def delete_keep(self, request: Request) -> Response:
        rec = await self._record(request)
        return cbor_response(self._document(await self.sup.kill(rec)))

    async def wait_keep(self, request: Request) -> Response:
        owner = authenticate(self.sup, request.headers)
        timeout = query_number(request, "timeout", 0, MAX_WAIT_S, integer=False)
        if set(request.query_params) - {"timeout"}:
            raise bad_request("the only query parameter is timeout")
        rec = await self.sup.record_of(request.path_params["keep_id"], owner.token_id)
        rec, timed_out = await self.sup.wait(rec, DEFAULT_WAIT_S if timeout is None else timeout)
        return cbor_response({**self._document(rec), "timed_out": timed_out})

    async def keep_logs(self, request: Request) -> Response:
        owner = authenticate(self.sup, request.headers)
        tail = query_number(request, "tail", 0, MAX_TAIL_LINES, integer=True)
        offset = query_number(request, "offset", 0, 2**63 - 1, integer=True)
        if set(request.query_params) - {"tail", "offset"}:
            raise bad_request("query parameters are tail or offset")
        if tail is not None and offset is not None:
            raise bad_request("give tail or offset, not both")
        rec = await self.sup.record_of(request.path_params["keep_id"], owner.token_id)
        path = self.sup.log_path(rec)
        data, start, size = await anyio.to_thread.run_sync(
            lambda: read_log(
                path, None if tail is None else int(tail), None if offset is None else int(offset)
            )
        )
        headers = {"Stockade-Log-Offset": str(start), "Stockade-Log-Size": str(size), **NO_STORE}
        return Response(data, 200, headers=headers, media_type=TEXT)

    async def stage_package(self, request: Request) -> Response:
        owner = authenticate(self.sup, request.headers)
        if _media_type(request) != PACKAGE_MEDIA_TYPE:
            raise ApiProblem(
                415, "unsupported-media-type", "unsupported media type", f"send {PACKAGE_MEDIA_TYPE}"
            )
        keep_id = request.path_params["keep_id"]
        await self.sup.stage(keep_id, owner.token_id, request.stream(), _declared_length(request))
        return Response(status_code=204)

    async def sim_root(self, request: Request) -> Response:
        authenticate(self.sup, request.headers)
        return cbor_response({"ark": await self.sup.sim_root()})

    async def collateral_list(self, request: Request) -> Response:
        authenticate(self.sup, request.headers)
        files = await self.sup.collateral_files()
        return cbor_response({"files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in files]})

    async def collateral_file(self, request: Request) -> Response:
        authenticate(self.sup, request.headers)
        name = request.path_params["name"]
        return cbor_response({"name": name, "data": await self.sup.collateral_file(name)})

    async def metrics_page(self, request: Request) -> Response:
        body = await anyio.to_thread.run_sync(self.metrics.exposition)
        return Response(body, 200, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def connect(self, ws: WebSocket) -> None:
        keep_id = ws.path_params["keep_id"]
        try:
            owner = authenticate(self.sup, ws.headers)
            live = await self.sup.claim(keep_id, owner.token_id)
        except SupervisorError as exc:
            await ws.send_denial_response(problem_of(exc).response())
            return
        except ApiProblem as problem:
            await ws.send_denial_response(problem.response())
            return
        try:
            await ws.accept()
            started = time.monotonic()
            await pump(ws, live.handle.conn, self.metrics.relay_bytes)
            log.info("Keep %s: relay closed after %.1f s", keep_id, time.monotonic() - started)
        finally:
            self.sup.release(keep_id, live)
