"""The host record: what a keep manager advertises in the fleet directory,
and the keys the fleet uses.

Keys, under the configured prefix (default ``/stockade/v1/``):

* ``hosts/<id>``: the host record (JSON below), attached to the host's
  lease: a host that stops refreshing it disappears when the lease expires;
  a clean stop revokes the lease.
* ``drain/<id>``: present when an operator drained the host (``stockade
  fleet drain``): no new placements; no lease (it survives restarts).

A record is untrusted input for every reader: :func:`parse_record` checks
every field's type, size and range and raises on anything else, so that a
hostile or broken entry can only be skipped (with a reason), never crash a
reader or smuggle in odd strings. Nothing in a record is trusted for
security: the measurement and platform a host advertises are only hints for
placement; the attestation of the Keep still decides.

No tokens and no token hashes are ever written to the fleet (issue 16).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from stockade.errors import FleetError, UsageError

if TYPE_CHECKING:
    from stockade.fleet.etcd import Etcd

RECORD_VERSION: Final = 1
#: Upper bound of one record's JSON (etcd allows 1.5 MiB values; a host
#: needs a few hundred bytes).
MAX_RECORD_BYTES: Final = 16 * 1024
MAX_OFFERS: Final = 16
MAX_LABELS: Final = 32
HOST_ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_LABEL_KEY_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
_LABEL_VALUE_RE: Final = re.compile(r"^[A-Za-z0-9._:/=+-]{0,63}$")
_NAME_RE: Final = re.compile(r"^[a-z0-9-]{1,16}$")
_HEX_RE: Final = re.compile(r"^[0-9a-f]{0,192}$")
_VERSION_RE: Final = re.compile(r"^[A-Za-z0-9.+_-]{1,64}$")


def parse_label_options(option: str, items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` values of a repeatable label option (``--fleet-label``
    of a host, ``--host-label`` of a deploy) into (key, value) pairs, in
    order; UsageError naming ``option`` for one without ``=`` or key."""
    labels = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} {item[:80]!r}: expected KEY=VALUE")
        labels.append((key, value))
    return tuple(labels)


def hosts_prefix(prefix: str) -> str:
    return f"{prefix}hosts/"


def drain_prefix(prefix: str) -> str:
    return f"{prefix}drain/"


def check_host_id(host_id: str) -> str:
    if not HOST_ID_RE.fullmatch(host_id):
        raise FleetError(
            f"host id {host_id[:80]!r}: expected 1-63 of a-z 0-9 . _ - (starting with a letter or digit)"
        )
    return host_id


@dataclass(frozen=True)
class Offer:
    """One backend a host offers: the platform its Keeps' evidence claims
    and the Keep launch measurement the host expects them to report (hex;
    empty when the host cannot predict it, e.g. real hardware firmware it
    does not know)."""

    backend: str
    platform: str
    measurement: str = ""


@dataclass(frozen=True)
class HostRecord:
    id: str
    api_url: str
    version: str
    offers: tuple[Offer, ...]
    #: SHA-256 (hex) of the manager API's TLS certificate (DER), or "" for
    #: plain http: a client may pin it; it protects the token, not the Keep.
    api_tls_sha256: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    #: Keeps the host's tokens may run at once in total (None: unbounded).
    max_keeps: int | None = None
    free_memory_mib: int = 0
    keeps_running: int = 0
    #: Unix times as the host's clock says (informative only).
    started: float = 0.0
    refreshed: float = 0.0
    #: The host saw its drain mark at its last refresh (informative: readers
    #: go by the ``drain/<id>`` key itself).
    drained: bool = False

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(o.backend for o in self.offers)

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(o.platform for o in self.offers))

    def to_json(self) -> bytes:
        doc = {"v": RECORD_VERSION, **asdict(self)}
        doc["offers"] = [asdict(o) for o in self.offers]
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        if len(data) > MAX_RECORD_BYTES:
            raise FleetError(f"host record of {len(data)} bytes exceeds {MAX_RECORD_BYTES}")
        return data


def _str(doc: dict[str, Any], key: str, pattern: re.Pattern[str], default: str | None = None) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise FleetError(f"field {key!r} is malformed")
    return value


def _int(doc: dict[str, Any], key: str, *, default: int | None = 0, optional: bool = False) -> int | None:
    value = doc.get(key, default)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise FleetError(f"field {key!r} is not a non-negative integer")
    return value


def _time(doc: dict[str, Any], key: str) -> float:
    value = doc.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise FleetError(f"field {key!r} is not a time")
    return float(value)


def _url(value: object) -> str:
    if not isinstance(value, str) or len(value) > 512:
        raise FleetError("field 'api_url' is malformed")
    try:
        split = urlsplit(value)
        split.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise FleetError("field 'api_url' is malformed") from None
    if (
        split.scheme not in ("http", "https")
        or not split.hostname
        or split.username
        or split.query
        or split.fragment
    ):
        raise FleetError("field 'api_url' is not an http(s)://HOST[:PORT] URL")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise FleetError("field 'api_url' is malformed")
    return value.rstrip("/")


def parse_record(data: bytes) -> HostRecord:
    """A host record from fleet bytes; FleetError on anything malformed."""
    if len(data) > MAX_RECORD_BYTES:
        raise FleetError(f"record of {len(data)} bytes exceeds {MAX_RECORD_BYTES}")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise FleetError("record is not JSON") from None
    if not isinstance(doc, dict):
        raise FleetError("record is not a JSON object")
    if doc.get("v") != RECORD_VERSION:
        raise FleetError(f"record version {str(doc.get('v'))[:20]!r} is not {RECORD_VERSION}")
    offers_doc = doc.get("offers")
    if not isinstance(offers_doc, list) or not 0 < len(offers_doc) <= MAX_OFFERS:
        raise FleetError(f"field 'offers' is not a list of 1 to {MAX_OFFERS} offers")
    offers = []
    for item in offers_doc:
        if not isinstance(item, dict):
            raise FleetError("an offer is not an object")
        offers.append(
            Offer(
                backend=_str(item, "backend", _NAME_RE),
                platform=_str(item, "platform", _NAME_RE),
                measurement=_str(item, "measurement", _HEX_RE, ""),
            )
        )
    labels = doc.get("labels", {})
    if (
        not isinstance(labels, dict)
        or len(labels) > MAX_LABELS
        or not all(
            isinstance(k, str)
            and _LABEL_KEY_RE.fullmatch(k)
            and isinstance(v, str)
            and _LABEL_VALUE_RE.fullmatch(v)
            for k, v in labels.items()
        )
    ):
        raise FleetError("field 'labels' is malformed")
    tls = doc.get("api_tls_sha256", "")
    if not isinstance(tls, str) or not re.fullmatch(r"(?:[0-9a-f]{64})?", tls):
        raise FleetError("field 'api_tls_sha256' is not a SHA-256 in hex")
    drained = doc.get("drained", False)
    if not isinstance(drained, bool):
        raise FleetError("field 'drained' is not a boolean")
    host_id = doc.get("id")
    if not isinstance(host_id, str):
        raise FleetError("field 'id' is malformed")
    return HostRecord(
        id=check_host_id(host_id),
        api_url=_url(doc.get("api_url")),
        version=_str(doc, "version", _VERSION_RE),
        offers=tuple(offers),
        api_tls_sha256=tls,
        labels=dict(labels),
        max_keeps=_int(doc, "max_keeps", default=None, optional=True),
        free_memory_mib=_int(doc, "free_memory_mib") or 0,
        keeps_running=_int(doc, "keeps_running") or 0,
        started=_time(doc, "started"),
        refreshed=_time(doc, "refreshed"),
        drained=drained,
    )


@dataclass(frozen=True)
class FleetEntry:
    """One key under ``hosts/``: the parsed record, or why it was skipped."""

    key: str
    record: HostRecord | None
    problem: str = ""
    drained: bool = False
    lease: int = 0


def read_fleet(etcd: Etcd) -> list[FleetEntry]:
    """Every host entry of the fleet (one range read for hosts, one for
    drain marks), each parsed or with its problem."""
    prefix = etcd.config.prefix
    drained = {key.removeprefix(drain_prefix(prefix)) for key, _, _ in etcd.get_prefix(drain_prefix(prefix))}
    entries = []
    for key, value, lease in etcd.get_prefix(hosts_prefix(prefix)):
        name = key.removeprefix(hosts_prefix(prefix))
        try:
            record = parse_record(value)
            if record.id != name:
                raise FleetError(f"record names host {record.id!r} under key {name[:80]!r}")
        except FleetError as exc:
            entries.append(FleetEntry(key, None, f"malformed record: {exc.detail}", name in drained, lease))
            continue
        entries.append(FleetEntry(key, record, "", record.id in drained, lease))
    return entries
