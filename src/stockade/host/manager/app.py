"""The keep manager's Starlette app: the supervisor, the routes, the
metrics middleware, problem answers and the lifespan, put together."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from stockade.host.keeppool import KeepPool
from stockade.host.loader import KeepHandle, start_keep
from stockade.host.manager.metrics import Metrics, RequestMetrics
from stockade.host.manager.portfwd import PortForwarder
from stockade.host.manager.problems import ApiProblem, problem_of
from stockade.host.manager.routes import Api
from stockade.host.manager.status import FleetSource, HostStatus, no_fleet
from stockade.host.manager.supervisor import (
    DEFAULT_BACKENDS,
    IDLE_TIMEOUT_S,
    KILL_GRACE_S,
    WATCHDOG_GRACE_S,
    Supervisor,
    SupervisorError,
)
from stockade.host.manager.ui import ui_routes
from stockade.host.tokens import Tokens

if TYPE_CHECKING:
    from stockade.host.fleet import Registrar


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    return exc.response()


async def _on_refusal(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SupervisorError)
    return problem_of(exc).response()


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return ApiProblem(exc.status_code, "http", str(exc.detail), str(exc.detail)).response()


def create_app(
    state_dir: Path,
    tokens: Tokens,
    *,
    kill_grace: float = KILL_GRACE_S,
    idle_timeout: float | None = IDLE_TIMEOUT_S,
    starter: Callable[..., KeepHandle] = start_keep,
    watchdog_grace: float = WATCHDOG_GRACE_S,
    backends: tuple[str, ...] = DEFAULT_BACKENDS,
    fleet: Registrar | None = None,
    membership: FleetSource | None = None,
    forwarder: PortForwarder | None = None,
    pool: KeepPool | None = None,
) -> Starlette:
    """The manager app. The registry is opened and reconciled at start-up
    (lifespan), before the first request is served. ``starter`` starts the
    Keeps (stockade.host.forkserver.fork_starter: from the fork server).
    ``fleet``: the fleet registrar (stockade.host.fleet), started after the
    registry and stopped (its lease revoked) first; its status is
    ``app.state.fleet`` (None without a fleet) and its membership is the
    ``fleet`` field of ``GET /v1/host`` (stockade.host.manager.status).
    ``membership``: that field's source when no registrar runs here (an
    embedder's own fleet code; tests). ``forwarder``: the published ports
    (stockade.host.manager.portfwd; none published without it). ``pool``:
    warm process Keeps handed out on create (stockade.host.keeppool),
    filled at start-up and closed at shut-down by the supervisor."""
    metrics = Metrics()
    sup = Supervisor(
        state_dir,
        tokens,
        kill_grace=kill_grace,
        starter=starter,
        metrics=metrics,
        idle_timeout=idle_timeout,
        watchdog_grace=watchdog_grace,
        backends=backends,
        forwarder=forwarder,
        pool=pool,
    )
    if pool is not None:
        metrics.watch_keep_pool(pool.stats)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sup.start()
        if fleet is not None:
            fleet.start()
        try:
            yield
        finally:
            if fleet is not None:
                await fleet.stop()
            await sup.stop()

    app = Starlette(
        routes=[
            *Api(
                sup, metrics, HostStatus(backends, membership or (fleet.membership if fleet else no_fleet))
            ).routes(),
            *ui_routes(),
        ],
        middleware=[Middleware(RequestMetrics, metrics=metrics)],
        exception_handlers={ApiProblem: _on_problem, SupervisorError: _on_refusal, HTTPException: _on_http},
        lifespan=lifespan,
    )
    app.state.manager = sup
    app.state.metrics = metrics
    app.state.fleet = None
    if fleet is not None:
        fleet.load = sup.keeps_running
        status = fleet.status

        def fleet_stats() -> tuple[bool, bool, int, float | None]:
            age = None if status.last_refresh is None else max(0.0, time.time() - status.last_refresh)
            return status.member, status.drained, status.errors, age

        metrics.watch_fleet(fleet_stats)
        #: stockade.host.fleet.FleetStatus: for a status route (GET /v1/host).
        app.state.fleet = status
    return app
