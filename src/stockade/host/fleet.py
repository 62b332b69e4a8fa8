"""Fleet registration of a keep manager (``stockade host serve --fleet``).

The :class:`Registrar` keeps this host's :class:`~stockade.fleet.record.HostRecord`
in the fleet directory (etcd, stockade.fleet) under a lease:

* it grants a lease of ``ttl`` seconds and writes ``hosts/<id>`` attached
  to it; every ``ttl / 3`` seconds it refreshes the lease and reads
  ``drain/<id>``, and writes the record again when its load, drain mark or
  free memory changed, or at least every ``RECORD_EVERY_S`` seconds (every
  put is an etcd revision, kept until compaction; a lease keep-alive is
  not);
* when the lease is gone (expired while etcd or this host was stuck, or etcd
  lost it) it grants a new one and registers again;
* when etcd cannot be reached it retries with exponential backoff and
  jitter (:func:`backoff`), logs that at most once per ``LOG_EVERY_S``
  seconds, and counts it in ``/metrics`` (``stockade_fleet_registered``,
  ``stockade_fleet_errors_total``, ``stockade_fleet_last_refresh_seconds``);
* a clean stop revokes the lease (the entry is gone at once); a crash lets
  the lease expire (the entry is gone within ``ttl``).

Registration never stops the manager from serving: it runs as an asyncio
task whose etcd calls (etcd3gw is synchronous) run in worker threads
(``anyio.to_thread``); nothing it does can fail the server. A drained host
(an operator wrote ``drain/<id>``) keeps serving its Keeps and direct
deploys; it only says so (``drained`` in its record and :class:`FleetStatus`),
and placement skips it.

Nothing secret is written to the fleet: no token, no token hash, no Keep id
or owner. The record is a placement hint; clients verify every Keep by its
attestation (docs/fleet.md, docs/threat-model.md "The fleet").

The host id is stable per state directory: ``<state>/fleet-id`` is written
once (unless ``--fleet-id`` names one).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import secrets
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import anyio.to_thread

from stockade.errors import FleetError, UsageError
from stockade.fleet.etcd import Etcd, FleetConfig
from stockade.fleet.record import HostRecord, Offer, check_host_id, parse_label_options, parse_record
from stockade.host.manager.status import FleetMembership

log = logging.getLogger("stockade.host.fleet")

#: Default lease TTL (``--fleet-ttl``): a crashed host leaves placement
#: within this long; the record is refreshed every TTL / 3.
DEFAULT_TTL_S: Final = 10
#: An unchanged record is re-written at least this often (``refreshed``
#: stays current for ``fleet ls``); a changed one at the next refresh.
RECORD_EVERY_S: Final = 15.0
#: Backoff between retries while etcd cannot be reached (seconds).
BACKOFF_MIN_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
#: At most one log line about etcd being unreachable per this many seconds.
LOG_EVERY_S: Final = 30.0
#: How long a clean stop waits for etcd to revoke the lease.
REVOKE_TIMEOUT_S: Final = 3.0
ID_FILE: Final = "fleet-id"

#: The platform each backend's evidence claims (as the client's policy
#: names it: stockade.wire.platform; vm Keeps are sim-signed).
BACKEND_PLATFORM: Final = {
    "sim": "sim",
    "sim-snp": "sim",
    "sim-tdx": "sim-tdx",
    "vm": "sim",
    "snp": "snp",
    "tdx": "tdx",
}


def backoff(failures: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures (>= 1):
    exponential from BACKOFF_MIN_S, capped at BACKOFF_MAX_S, with "full
    jitter" on the upper half so that many hosts coming back after an etcd
    outage do not retry in step (AWS Architecture Blog, "Exponential
    Backoff And Jitter", 2015)."""
    cap = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2.0 ** min(max(failures - 1, 0), 16))
    jitter = rng.random() if rng is not None else random.random()
    return cap * (0.5 + 0.5 * jitter)


# -- what the host advertises ----------------------------------------------


def host_id(state_dir: Path, given: str | None = None) -> str:
    """``given`` (checked), or the id stored in ``<state>/fleet-id``,
    created once from the host name and a random suffix."""
    if given is not None:
        try:
            return check_host_id(given)
        except FleetError as exc:
            raise UsageError(f"--fleet-id: {exc.detail}") from None
    path = state_dir / ID_FILE
    with contextlib.suppress(FileNotFoundError):
        stored = path.read_text(encoding="utf-8").strip()
        try:
            return check_host_id(stored)
        except FleetError as exc:
            raise UsageError(f"{path}: {exc.detail} (remove it to get a new id)") from None
    stem = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:40] or "host"
    new = check_host_id(f"{stem}-{secrets.token_hex(3)}")
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(new + "\n", encoding="utf-8")
    return new


def default_api_url(listen_host: str, port: int, tls: bool) -> str:
    """The URL clients should use, from ``--listen``: a wildcard address is
    replaced by this machine's fully qualified name."""
    host = listen_host
    if host in ("", "0.0.0.0", "::", "[::]"):  # noqa: S104 - a comparison, not a bind
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def tls_sha256(cert_file: Path) -> str:
    """SHA-256 (hex) of the DER of the first certificate in a PEM file."""
    try:
        pem = cert_file.read_text(encoding="ascii")
        start = pem.index("-----BEGIN CERTIFICATE-----")
        end = pem.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
        der = ssl.PEM_cert_to_DER_cert(pem[start:end])
    except (OSError, ValueError) as exc:
        raise UsageError(f"--tls-cert {cert_file}: no PEM certificate ({exc})") from None
    return hashlib.sha256(der).hexdigest()


def free_memory_mib(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemAvailable of /proc/meminfo in MiB (proc(5): "an estimate of how
    much memory is available for starting new applications"), 0 when
    unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in meminfo.read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024  # kB
    return 0


def parse_labels(items: tuple[str, ...]) -> dict[str, str]:
    """``--fleet-label k=v`` values into a dict (checked as a record is)."""
    return dict(parse_label_options("--fleet-label", items))


def offers_of(backends: tuple[str, ...], measurements: dict[str, bytes]) -> tuple[Offer, ...]:
    """One offer per backend: its platform and the Keep measurement the
    host expects (hex; empty where it cannot predict it)."""
    return tuple(
        Offer(backend, BACKEND_PLATFORM[backend], measurements.get(backend, b"").hex())
        for backend in backends
    )


def check_record(record: HostRecord) -> HostRecord:
    """``record`` if a reader would accept it (UsageError naming the
    problem otherwise: a bad label or URL is the operator's to fix)."""
    try:
        parse_record(record.to_json())
    except FleetError as exc:
        raise UsageError(f"--fleet: this host's record would be refused by readers: {exc.detail}") from None
    return record


# -- state shown to the API and /metrics -----------------------------------


@dataclass
class FleetStatus:
    """This host's fleet membership, for ``/metrics`` and the status API
    (``GET /v1/host``'s ``fleet`` field). No credentials in it."""

    host_id: str
    etcd_url: str
    #: The lease is alive and the record was written at the last attempt.
    member: bool = False
    #: Unix time of the last successful refresh (None: never).
    last_refresh: float | None = None
    #: The last failure (one line, names etcd; "" after a success).
    last_error: str = ""
    drained: bool = False
    errors: int = 0
    registrations: int = 0
    ttl: int = DEFAULT_TTL_S

    def to_json(self) -> dict[str, object]:
        return {
            "member": self.member,
            "host_id": self.host_id,
            "etcd": self.etcd_url,
            "last_refresh": self.last_refresh,
            "last_error": self.last_error,
            "drained": self.drained,
            "ttl": self.ttl,
        }


@dataclass
class Registrar:
    """Keeps one host's record in the fleet (module docstring)."""

    config: FleetConfig
    record: HostRecord
    #: Keeps in a non-final state on this host, read at every refresh (in a
    #: worker thread: it may read the registry); create_app sets it.
    load: Callable[[], int] = lambda: 0
    ttl: int = DEFAULT_TTL_S
    etcd: Etcd | None = None
    status: FleetStatus = field(init=False)
    _lease: int = field(default=0, init=False)
    _written: HostRecord | None = field(default=None, init=False)
    _written_at: float = field(default=0.0, init=False)
    _failures: int = field(default=0, init=False)
    _last_log: float = field(default=-1e9, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _stop: asyncio.Event | None = field(default=None, init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not 2 <= self.ttl <= 3600:
            raise UsageError(f"--fleet-ttl {self.ttl}: expected 2 to 3600 seconds")
        if self.etcd is None:
            self.etcd = Etcd(self.config)
        self.status = FleetStatus(self.record.id, self.config.url, ttl=self.ttl)

    @property
    def interval(self) -> float:
        return self.ttl / 3

    @property
    def record_every(self) -> float:
        """The longest time between two writes of an unchanged record."""
        return max(RECORD_EVERY_S, float(self.ttl))

    # -- one step, synchronous (runs in a worker thread) -------------------

    def _due(self, rec: HostRecord, fresh_lease: bool) -> bool:
        """Whether ``rec`` must be written now: a new lease, a change of
        load or drain mark, free memory moved by more than a tenth (or 256
        MiB), or the last write is RECORD_EVERY_S old. Every put is a new
        etcd revision kept until compaction; a keep-alive is not (bench/README.md)."""
        last = self._written
        if fresh_lease or last is None or time.monotonic() - self._written_at >= self.record_every:
            return True
        moved = abs(rec.free_memory_mib - last.free_memory_mib) > max(256, last.free_memory_mib // 10)
        return rec.keeps_running != last.keeps_running or rec.drained != last.drained or moved

    def refresh_once(self) -> None:
        """Grant a lease if there is none (or it expired), refresh it
        otherwise, read the drain mark, and write the record under the
        lease when it is due (:meth:`_due`). FleetError when etcd cannot be
        reached or refuses."""
        etcd = self.etcd
        assert etcd is not None
        if self._lease and etcd.keepalive(self._lease) <= 0:
            log.warning("fleet: lease %x expired; registering again", self._lease)
            self._lease = 0
        drained = etcd.get(etcd.key("drain", self.record.id)) is not None
        if drained != self.status.drained:
            log.info("fleet: host %s %s", self.record.id, "drained" if drained else "no longer drained")
        self.status.drained = drained
        fresh = not self._lease
        if fresh:
            self._lease = etcd.grant(self.ttl)
            self.status.registrations += 1
            log.info(
                "fleet: registered as %s at %s (lease %x, ttl %d s)",
                self.record.id,
                self.config.url,
                self._lease,
                self.ttl,
            )
        rec = replace(
            self.record,
            keeps_running=max(0, self.load()),
            free_memory_mib=free_memory_mib(),
            refreshed=time.time(),
            drained=drained,
        )
        if self._due(rec, fresh):
            etcd.put(etcd.key("hosts", self.record.id), rec.to_json(), self._lease)
            self._written, self._written_at = rec, time.monotonic()

    def revoke(self) -> None:
        """Revoke the lease (the record goes with it); errors are logged."""
        lease, self._lease = self._lease, 0
        self.status.member = False
        if not lease:
            return
        assert self.etcd is not None
        try:
            self.etcd.revoke(lease)
            log.info("fleet: left the fleet (lease %x revoked)", lease)
        except FleetError as exc:
            log.warning("fleet: could not revoke lease %x; it expires within %d s: %s", lease, self.ttl, exc)

    # -- the task ----------------------------------------------------------

    def _failed(self, exc: FleetError) -> float:
        self._failures += 1
        st = self.status
        st.member = False
        st.errors += 1
        st.last_error = exc.detail
        if "lease" in exc.detail.lower() and "not found" in exc.detail.lower():
            self._lease = 0  # etcd lost the lease (restored from an older snapshot...): register again
        now = time.monotonic()
        wait = backoff(self._failures)
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning(
                "fleet: cannot register with etcd (%d failure(s) so far; serving on without the fleet; "
                "next try in %.1f s): %s",
                st.errors,
                wait,
                exc.detail,
            )
        return wait

    async def run(self) -> None:
        """Refresh until :meth:`begin_shutdown` / :meth:`stop`; never raises
        (but CancelledError)."""
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                await anyio.to_thread.run_sync(self.refresh_once)
            except FleetError as exc:
                wait = self._failed(exc)
            except Exception as exc:  # never let the fleet take the server down
                log.exception("fleet: unexpected error in the registrar")
                wait = self._failed(FleetError(f"internal error: {type(exc).__name__}"))
            else:
                if self._failures:
                    log.info("fleet: etcd reachable again after %d failure(s)", self._failures)
                self._failures = 0
                self.status.member = True
                self.status.last_refresh = time.time()
                self.status.last_error = ""
                wait = self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)
        await anyio.to_thread.run_sync(self.revoke)

    def membership(self) -> FleetMembership:
        """This host's membership for ``GET /v1/host`` (no credentials:
        status.py strips user information from URLs and errors)."""
        st = self.status
        if self._task is None and st.registrations:
            state = "stopped"
        elif st.member:
            state = "draining" if st.drained else "registered"
        else:
            state = "retrying"
        return FleetMembership(
            host_id=self.record.id,
            endpoints=tuple(str(e) for e in self.config.endpoints),
            state=state,
            lease_ttl_s=self.ttl,
            last_refresh=None if st.last_refresh is None else datetime.fromtimestamp(st.last_refresh, UTC),
            last_error=st.last_error or None,
            labels=dict(self.record.labels),
            api_url=self.record.api_url,
        )

    def start(self) -> None:
        """Start the task on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._task = self._loop.create_task(self.run(), name="fleet-registrar")

    def begin_shutdown(self) -> None:
        """Leave the fleet now (safe from a signal handler): the task
        revokes the lease and ends."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)

    async def stop(self) -> None:
        """Revoke the lease and end the task (bounded)."""
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), REVOKE_TIMEOUT_S + self.config.timeout)
        except TimeoutError:
            self._task.cancel()
            log.warning("fleet: the lease was not revoked in time; it expires within %d s", self.ttl)
        self._task = None
