"""The steward's HTTPS API as data: paths, media types, limits and the CBOR
bodies, shared by the service (:mod:`stockade.steward.service`) and its
clients (:mod:`stockade.steward.request`, ``stockade log verify
--steward``). No I/O. docs/steward-api.cddl is the schema; every body is
one CBOR map in deterministic encoding with ``v: 1``.

Errors are concise problem details (RFC 9290, CBOR: keys -1 title, -2
detail, and the problem type under stockade's tag URI, as the keep manager
answers, stockade.wire.messages). A refused certification carries, besides,
the explanation (``refusal``: rule, expected, actual, and the policy rows
when a policy decided) and where the refusal is in the log
(``refusal-digest``, ``log-index``, ``tree-head``, ``inclusion``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import cbor2

from stockade.binding.eventlog import Event, events_from_list
from stockade.errors import ProtocolError
from stockade.wire.messages import PD_DETAIL, PD_TITLE, PD_TYPE, decode_map

VERSION: Final = 1
CBOR: Final = "application/cbor"
PROBLEM: Final = "application/concise-problem-details+cbor"

CHALLENGE: Final = "/v1/challenge"
CERTIFY: Final = "/v1/certify"
CA: Final = "/v1/ca"
LOG_HEAD: Final = "/v1/log/head"
LOG_ENTRIES: Final = "/v1/log/entries"
LOG_INCLUSION: Final = "/v1/log/inclusion"
LOG_CONSISTENCY: Final = "/v1/log/consistency"

NONCE_SIZE: Final = 32
#: How long a challenge nonce may be used (milliseconds).
CHALLENGE_TTL_MS: Final = 60_000
#: The largest certify request the steward reads (an SNP evidence bundle
#: is ~6 KB with its certificates, a sim-tdx one ~40 KB with its
#: collateral; a package of many files adds ~100 bytes per event).
MAX_REQUEST: Final = 256 * 1024
#: The largest answer a client reads (a page of log entries).
MAX_RESPONSE: Final = 8 * 1024 * 1024
#: Log entries per ``GET /v1/log/entries`` page.
MAX_ENTRIES_PAGE: Final = 256

#: Problem types of refusals (a certification the steward will not make).
REFUSED: Final = "policy-rejected"


def dumps(doc: dict[str, Any]) -> bytes:
    return bytes(cbor2.dumps({"v": VERSION, **doc}, canonical=True))


def loads(data: bytes, keys: set[str], where: str) -> dict[str, Any]:
    """A body with exactly ``keys`` (and ``v``); ProtocolError otherwise."""
    m = decode_map(data, where)
    if m.get("v") != VERSION or type(m.get("v")) is not int:
        raise ProtocolError(f"{where}: version {m.get('v')!r}, expected {VERSION}")
    if set(m) != {"v", *keys}:
        raise ProtocolError(f"{where}: keys {sorted(map(str, m))}, expected {sorted(['v', *keys])}")
    return m


def bstr(m: dict[str, Any], key: str, where: str, size: int | None = None) -> bytes:
    value = m[key]
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        want = f"{size} bytes" if size is not None else "a byte string"
        raise ProtocolError(f"{where}: {key} must be {want}")
    return value


def uint(m: dict[str, Any], key: str, where: str) -> int:
    value = m[key]
    if type(value) is not int or value < 0:
        raise ProtocolError(f"{where}: {key} must be an unsigned integer")
    return value


def bstr_list(m: dict[str, Any], key: str, where: str, limit: int) -> tuple[bytes, ...]:
    value = m[key]
    if not isinstance(value, list) or len(value) > limit or not all(isinstance(v, bytes) for v in value):
        raise ProtocolError(f"{where}: {key} must be an array of at most {limit} byte strings")
    return tuple(value)


@dataclass(frozen=True)
class CertifyRequest:
    """``POST /v1/certify``: the challenge nonce, the Keep's evidence bundle
    (CBOR, stockade.wire.evidence), its event log (as in the Identity
    message) and the CSR (DER) for its service key."""

    nonce: bytes
    evidence: bytes
    events: tuple[Event, ...]
    csr: bytes

    FIELDS = frozenset({"nonce", "evidence", "events", "csr"})

    def to_cbor(self) -> bytes:
        return dumps(
            {
                "nonce": self.nonce,
                "evidence": self.evidence,
                "events": [e.to_list() for e in self.events],
                "csr": self.csr,
            }
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> CertifyRequest:
        where = "certify request"
        m = loads(data, set(cls.FIELDS), where)
        return cls(
            nonce=bstr(m, "nonce", where),
            evidence=bstr(m, "evidence", where),
            events=events_from_list(m["events"]),
            csr=bstr(m, "csr", where),
        )


@dataclass(frozen=True)
class LogPosition:
    """Where an entry is in the log: its index, the signed tree head the
    proof is for, and the RFC 9162 inclusion proof."""

    index: int
    tree_head: bytes
    inclusion: tuple[bytes, ...]

    def to_map(self) -> dict[str, Any]:
        return {"log-index": self.index, "tree-head": self.tree_head, "inclusion": list(self.inclusion)}

    @classmethod
    def from_map(cls, m: dict[str, Any], where: str) -> LogPosition:
        return cls(
            uint(m, "log-index", where),
            bstr(m, "tree-head", where),
            bstr_list(m, "inclusion", where, 128),
        )


def problem(title: str, detail: str, problem_type: str, **extra: Any) -> bytes:
    """A concise problem details document (RFC 9290) with extensions."""
    doc: dict[Any, Any] = {PD_TITLE: title, PD_DETAIL: detail, PD_TYPE: problem_type, **extra}
    return bytes(cbor2.dumps(doc, canonical=True))


def parse_problem(data: bytes) -> dict[Any, Any]:
    """A problem document; its title, detail and type must be text."""
    m = decode_map(data, "problem details")
    for key in (PD_TITLE, PD_DETAIL, PD_TYPE):
        if not isinstance(m.get(key), str):
            raise ProtocolError("problem details: title, detail and type must be text")
    return m


__all__ = [
    "CA",
    "CERTIFY",
    "CHALLENGE",
    "LOG_CONSISTENCY",
    "LOG_ENTRIES",
    "LOG_HEAD",
    "LOG_INCLUSION",
    "PD_DETAIL",
    "PD_TITLE",
    "PD_TYPE",
    "CertifyRequest",
    "LogPosition",
]
