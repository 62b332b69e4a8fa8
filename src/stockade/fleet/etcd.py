"""A small etcd v3 client for the fleet directory, over OpenStack's
``etcd3gw`` (etcd's gRPC gateway, JSON over HTTP: ``/v3/kv/range``,
``/v3/lease/grant``... as documented in etcd's API reference,
https://etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/).

What this module adds to etcd3gw: ``etcd://`` / ``etcds://`` URLs with
several endpoints (the client fails over to the next one when an endpoint
cannot be reached), TLS options, user/password authentication (etcd's
``/v3/auth/authenticate``; the token goes in the ``Authorization`` header,
and is renewed once when etcd says it expired), no proxy settings from the
environment (etcd is reached directly), explicit timeouts, and one error
class: every failure is a :class:`~stockade.errors.FleetError` whose
message names etcd and the endpoints tried, never a password.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from stockade.errors import FleetError, UsageError

if TYPE_CHECKING:
    import etcd3gw

T = TypeVar("T")

#: etcd's client port (IANA).
DEFAULT_PORT = 2379
#: Seconds for one etcd request: the fleet must never hold a deploy up for
#: long; a slow etcd is treated as an unreachable one.
DEFAULT_TIMEOUT_S = 3.0
#: The prefix under which stockade keeps its keys (``--fleet-prefix``).
DEFAULT_PREFIX = "/stockade/v1/"
#: The environment variable that may carry the etcd password (the
#: ``--etcd-password-file`` option is the other way; never argv).
PASSWORD_ENV = "STOCKADE_ETCD_PASSWORD"  # noqa: S105 - a variable name, not a password

_SCHEMES = {"etcd": "http", "http": "http", "etcds": "https", "https": "https"}


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # "http" or "https"
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}://{host}:{self.port}"


@dataclass(frozen=True)
class FleetConfig:
    """Where the fleet directory is and how to reach it."""

    endpoints: tuple[Endpoint, ...]
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    prefix: str = DEFAULT_PREFIX
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def url(self) -> str:
        """The endpoints as one display string (no credentials)."""
        return ",".join(str(e) for e in self.endpoints)


def parse_endpoints(url: str) -> tuple[Endpoint, ...]:
    """``etcd://h1:2379,h2:2379`` (or ``etcds://`` for TLS; ``http(s)://``
    also accepted) into endpoints. Several URLs may also be given comma
    separated, each with its own scheme."""
    endpoints: list[Endpoint] = []
    scheme = ""
    for item in (p.strip() for p in url.split(",")):
        if not item:
            raise UsageError(f"--fleet {url!r}: an empty endpoint")
        part = item
        if "://" in item:
            scheme, _, part = item.partition("://")
        if scheme not in _SCHEMES:
            raise UsageError(
                f"--fleet {url!r}: expected etcd://HOST[:PORT][,HOST[:PORT]...] (or etcds:// for TLS)"
            )
        try:
            split = urlsplit(f"//{part}")
            port = split.port or DEFAULT_PORT
        except ValueError as exc:
            raise UsageError(f"--fleet {url!r}: {exc}") from None
        if not split.hostname or split.path not in ("", "/") or split.username or split.query:
            raise UsageError(
                f"--fleet {url!r}: {part!r} is not HOST[:PORT] (credentials go in --etcd-user and a password file)"
            )
        endpoints.append(Endpoint(_SCHEMES[scheme], split.hostname, port))
    return tuple(endpoints)


def read_password(password_file: Path | None) -> str | None:
    """The etcd password from ``password_file`` (first line) or
    ``$STOCKADE_ETCD_PASSWORD``; never from the command line."""
    if password_file is not None:
        try:
            return password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise UsageError(
                f"--etcd-password-file {password_file}: cannot read a password ({exc})"
            ) from None
    return os.environ.get(PASSWORD_ENV) or None


def _message(exc: BaseException) -> str:
    """A one-line reason from an etcd3gw/requests exception: etcd's own
    error text (``{"error": ..., "code": ...}`` from the gateway) where
    there is one."""
    detail = getattr(exc, "detail_text", None)
    text = ""
    if isinstance(detail, str) and detail:
        try:
            doc = json.loads(detail)
            text = str(doc.get("error") or doc.get("message") or "") if isinstance(doc, dict) else ""
        except ValueError:
            text = detail
    text = text or " ".join(str(a) for a in getattr(exc, "args", ()) if a) or type(exc).__name__
    return " ".join(text.split())[:200]


class Etcd:
    """The fleet's view of etcd: the few calls the registrar, placement and
    the ``fleet`` commands make, with failover and one error class."""

    def __init__(self, config: FleetConfig) -> None:
        if not config.endpoints:
            raise UsageError("--fleet: no etcd endpoint")
        self.config = config
        self._current = 0
        self._clients: dict[int, etcd3gw.Etcd3Client] = {}
        self._token: str | None = None

    # -- plumbing --------------------------------------------------------

    def _client(self, index: int) -> etcd3gw.Etcd3Client:
        client = self._clients.get(index)
        if client is None:
            import requests
            from etcd3gw.client import Etcd3Client

            cfg, ep = self.config, self.config.endpoints[index]
            session = requests.Session()
            session.trust_env = False  # no HTTP(S)_PROXY, no .netrc: etcd is reached directly
            if ep.protocol == "https":
                session.verify = str(cfg.ca_cert) if cfg.ca_cert else True
                if cfg.client_cert and cfg.client_key:
                    session.cert = (str(cfg.client_cert), str(cfg.client_key))
            client = Etcd3Client(
                host=ep.host,
                port=ep.port,
                protocol=ep.protocol,
                timeout=cfg.timeout,
                api_path="/v3/",
                session=session,
            )
            self._clients[index] = client
        return client

    def _authenticate(self, client: etcd3gw.Etcd3Client) -> None:
        cfg = self.config
        if cfg.user is None:
            return
        if cfg.password is None:
            raise UsageError(
                f"--etcd-user {cfg.user}: no password (use --etcd-password-file or ${PASSWORD_ENV})"
            )
        result = client.post(
            client.get_url("/auth/authenticate"), json={"name": cfg.user, "password": cfg.password}
        )
        token = result.get("token") if isinstance(result, dict) else None
        if not isinstance(token, str) or not token:
            raise FleetError(f"etcd at {client.base_url} did not return an authentication token")
        client.session.headers["Authorization"] = token

    def _call(self, what: str, fn: Callable[[etcd3gw.Etcd3Client], T]) -> T:
        """Run ``fn`` against the current endpoint, failing over to the
        others when one cannot be reached; FleetError when none answers."""
        from etcd3gw import exceptions as etcd_exc

        reasons: list[str] = []
        count = len(self.config.endpoints)
        for step in range(count):
            index = (self._current + step) % count
            client = self._client(index)
            try:
                if self.config.user is not None and "Authorization" not in client.session.headers:
                    self._authenticate(client)
                try:
                    result = fn(client)
                except etcd_exc.Etcd3Exception as exc:
                    if self.config.user is None or "token" not in _message(exc).lower():
                        raise
                    client.session.headers.pop("Authorization", None)  # expired token: once more
                    self._authenticate(client)
                    result = fn(client)
            except (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError) as exc:
                reasons.append(f"{client.base_url}: {_message(exc)}")
                continue
            except etcd_exc.Etcd3Exception as exc:
                raise FleetError(f"etcd at {client.base_url} refused to {what}: {_message(exc)}") from None
            except (
                OSError,
                ValueError,
            ) as exc:  # requests' SSL/JSON errors are OSError/ValueError subclasses
                reasons.append(f"{client.base_url}: {_message(exc)}")
                continue
            self._current = index
            return result
        raise FleetError(f"etcd cannot be reached to {what} ({'; '.join(reasons)})")

    # -- the calls the fleet makes ----------------------------------------

    def key(self, *parts: str) -> str:
        """A key under the fleet's prefix."""
        return self.config.prefix + "/".join(parts)

    def get_prefix(self, prefix: str) -> list[tuple[str, bytes, int]]:
        """(key, value, lease id) of every key under ``prefix`` (a full
        key prefix, see :meth:`key`), sorted by key."""

        def run(client: etcd3gw.Etcd3Client) -> list[tuple[str, bytes, int]]:
            rows = []
            for value, meta in client.get_prefix(prefix, sort_order="ascend", sort_target="key"):
                key = meta.get("key", b"")
                rows.append(
                    (
                        key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key),
                        value,
                        int(meta.get("lease", 0) or 0),
                    )
                )
            return rows

        return self._call("read the fleet", run)

    def get(self, key: str) -> bytes | None:
        """The value of one key, or None."""
        values = self._call("read the fleet", lambda c: c.get(key))
        return values[0] if values else None

    def put(self, key: str, value: bytes, lease_id: int | None = None) -> None:
        from etcd3gw.lease import Lease

        def run(client: etcd3gw.Etcd3Client) -> None:
            client.put(key, value, lease=Lease(lease_id, client) if lease_id else None)

        self._call("write to the fleet", run)

    def delete(self, key: str) -> bool:
        return bool(self._call("delete from the fleet", lambda c: c.delete(key)))

    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        return self._call("grant a lease", lambda c: c.lease(ttl).id)

    def keepalive(self, lease_id: int) -> int:
        """Refresh a lease: its new TTL, or -1 when it had expired."""
        from etcd3gw.lease import Lease

        return self._call("refresh a lease", lambda c: Lease(lease_id, c).refresh())

    def revoke(self, lease_id: int) -> None:
        """Revoke a lease (its keys are deleted with it)."""
        from etcd3gw.lease import Lease

        self._call("revoke a lease", lambda c: Lease(lease_id, c).revoke())
