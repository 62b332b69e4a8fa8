"""The keep manager's Starlette app: the supervisor, the routes, the
metrics middleware, problem answers and the lifespan, put together."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from stockade.host.loader import KeepHandle, start_keep
from stockade.host.manager.metrics import Metrics, RequestMetrics
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
    fleet: FleetSource = no_fleet,
) -> Starlette:
    """The manager app. The registry is opened and reconciled at start-up
    (lifespan), before the first request is served. ``starter`` starts the
    Keeps (stockade.host.forkserver.fork_starter: from the fork server).
    ``fleet`` returns the host's fleet membership for ``GET /v1/host`` (the
    fleet registration passes it; stockade.host.manager.status)."""
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
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sup.start()
        try:
            yield
        finally:
            await sup.stop()

    app = Starlette(
        routes=[*Api(sup, metrics, HostStatus(backends, fleet)).routes(), *ui_routes()],
        middleware=[Middleware(RequestMetrics, metrics=metrics)],
        exception_handlers={ApiProblem: _on_problem, SupervisorError: _on_refusal, HTTPException: _on_http},
        lifespan=lifespan,
    )
    app.state.manager = sup
    app.state.metrics = metrics
    return app
