"""What ``GET /v1/host`` answers: this host's facts and its fleet membership.

The document (docs/host-api.cddl ``host-document``) holds the manager's
version, the backends it runs, its clock, and ``fleet``: null when the host
is in no fleet, else a :class:`FleetMembership`. The fleet registration
(``stockade host serve --fleet``) fills it by passing ``create_app`` a
callable that returns its current :class:`FleetMembership` (or None); the
manager calls it on each authenticated ``GET /v1/host``, in the event
loop, so it must be cheap, must not block and must not raise: return a
snapshot that the registration task keeps up to date.

Everything here is read by the status page (``/ui``) and by any token
holder: it must never carry a secret. Endpoint URLs lose any user
information (``user:password@``), query and fragment, and URLs inside the
last error lose their user information too, whatever the caller passed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import stockade

#: The states a fleet registration reports (docs/host-api.md, "GET /v1/host").
FLEET_STATES: Final = ("registered", "retrying", "draining", "stopped")
MAX_LABELS: Final = 32
MAX_TEXT: Final = 256
_URL_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def _one_line(text: str) -> str:
    """``text`` on one line, at most MAX_TEXT characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_TEXT else flat[: MAX_TEXT - 3] + "..."


def public_endpoint(url: str) -> str:
    """``url`` without user information, query or fragment (an etcd
    endpoint given as ``etcd://user:pw@host:2379`` shows as
    ``etcd://host:2379``)."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        return _one_line(_URL_USERINFO.sub(r"\1", url))
    host = parts.netloc.rpartition("@")[2]
    return _one_line(urlunsplit((parts.scheme, host, parts.path, "", "")))


def _iso(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("fleet timestamps must be timezone-aware")
    return when.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class FleetMembership:
    """The host's fleet registration as the fleet code sees it now.

    ``host_id``: the id it registered under; ``endpoints``: the etcd
    endpoints; ``state``: one of FLEET_STATES (``retrying``: the last
    registration or lease refresh failed and it retries with backoff);
    ``lease_ttl_s``: the lease's time to live; ``last_refresh``: the last
    successful registration or keep-alive (aware datetime); ``last_error``:
    why the last attempt failed (one line, no secret); ``labels``: the
    host labels it registered (placement filters on them); ``api_url``: the
    API URL it advertises to clients.
    """

    host_id: str
    endpoints: tuple[str, ...]
    state: str
    lease_ttl_s: int | None = None
    last_refresh: datetime | None = None
    last_error: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    api_url: str | None = None

    def __post_init__(self) -> None:
        if self.state not in FLEET_STATES:
            raise ValueError(f"fleet state {self.state!r} is not one of {', '.join(FLEET_STATES)}")
        if not self.endpoints:
            raise ValueError("a fleet membership names at least one endpoint")
        if self.lease_ttl_s is not None and self.lease_ttl_s <= 0:
            raise ValueError("lease_ttl_s must be positive")
        if len(self.labels) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels")

    def to_document(self) -> dict[str, Any]:
        """The ``fleet-membership`` map (docs/host-api.cddl)."""
        doc: dict[str, Any] = {
            "host_id": _one_line(self.host_id),
            "endpoints": [public_endpoint(e) for e in self.endpoints],
            "state": self.state,
            "labels": {_one_line(str(k)): _one_line(str(v)) for k, v in self.labels.items()},
        }
        if self.api_url is not None:
            doc["api_url"] = public_endpoint(self.api_url)
        if self.lease_ttl_s is not None:
            doc["lease_ttl_s"] = self.lease_ttl_s
        if self.last_refresh is not None:
            doc["last_refresh"] = _iso(self.last_refresh)
        if self.last_error is not None:
            doc["last_error"] = _one_line(_URL_USERINFO.sub(r"\1", self.last_error))
        return doc


#: What create_app takes to learn the host's fleet membership (None: in no fleet).
FleetSource = Callable[[], FleetMembership | None]


def no_fleet() -> FleetMembership | None:
    return None


class HostStatus:
    """The facts ``GET /v1/host`` reports for one manager app."""

    def __init__(
        self,
        backends: tuple[str, ...],
        fleet: FleetSource = no_fleet,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.backends = backends
        self.fleet = fleet
        self.clock = clock

    def document(self) -> dict[str, Any]:
        """The ``host-document`` map (docs/host-api.cddl)."""
        membership = self.fleet()
        return {
            "version": stockade.__version__,
            "backends": list(self.backends),
            "now": _iso(self.clock()),
            "fleet": None if membership is None else membership.to_document(),
        }
