"""Problem responses of the keep manager: RFC 9290 concise problem details
(``application/concise-problem-details+cbor``), and the one table that turns
a refusal of the supervisor into its status, problem type and title.

The problem types are those of docs/host-api.cddl (``host-problem-type``);
tests/test_host_api_spec.py checks that every type raised in this package is
listed there and the reverse.
"""

from __future__ import annotations

from typing import Any, Final

import cbor2
from starlette.responses import Response

from stockade.host.manager.supervisor import (
    AlreadyConnected,
    KeepNotRunning,
    LoaderFailed,
    NoSimChip,
    NoStagingArea,
    NoSuchCollateral,
    PackageTooLarge,
    PortsExhausted,
    PublishingDisabled,
    QuotaExceeded,
    StagingFailed,
    SupervisorError,
    UnknownKeep,
)
from stockade.wire.messages import PD_DETAIL, PD_TITLE, PD_TYPE

CBOR: Final = "application/cbor"
PROBLEM: Final = "application/concise-problem-details+cbor"
#: On every API answer: Keep data is per token and changes; no cache (a
#: browser's or a proxy's) may keep it (RFC 9111 section 5.2.2.5).
NO_STORE: Final = {"Cache-Control": "no-store"}


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
        headers = dict(NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="stockade"'
        return Response(body, self.status, headers=headers, media_type=PROBLEM)


def cbor_response(doc: Any, status: int = 200) -> Response:
    return Response(cbor2.dumps(doc, canonical=True), status, headers=NO_STORE, media_type=CBOR)


def bad_request(detail: str) -> ApiProblem:
    return ApiProblem(400, "bad-request", "malformed request", detail)


def problem_of(exc: SupervisorError) -> ApiProblem:
    """The problem answer to a refusal of the supervisor (its detail as is)."""
    detail = exc.detail
    if isinstance(exc, UnknownKeep):
        return ApiProblem(404, "not-found", "no such Keep", detail)
    if isinstance(exc, NoSimChip):
        return ApiProblem(404, "not-found", "no sim chip", detail)
    if isinstance(exc, NoSuchCollateral):
        return ApiProblem(404, "not-found", "no such collateral", detail)
    if isinstance(exc, KeepNotRunning):
        return ApiProblem(409, "conflict", "Keep not running", detail)
    if isinstance(exc, AlreadyConnected):
        return ApiProblem(409, "conflict", "already connected", detail)
    if isinstance(exc, NoStagingArea):
        return ApiProblem(409, "conflict", "no staging area", detail)
    if isinstance(exc, PackageTooLarge):
        return ApiProblem(413, "too-large", "package too large", detail)
    if isinstance(exc, QuotaExceeded):
        return ApiProblem(429, "quota-exceeded", "Keep quota exceeded", detail)
    if isinstance(exc, PublishingDisabled):
        return ApiProblem(422, "publishing-disabled", "cannot publish ports", detail)
    if isinstance(exc, PortsExhausted):
        return ApiProblem(503, "ports-exhausted", "no port free to publish", detail)
    if isinstance(exc, LoaderFailed):
        return ApiProblem(500, "loader-failed", "cannot start a Keep", detail)
    if isinstance(exc, StagingFailed):
        return ApiProblem(500, "staging-failed", "cannot stage the package", detail)
    raise TypeError(f"no problem type for {type(exc).__name__}")  # a refusal added without its answer
