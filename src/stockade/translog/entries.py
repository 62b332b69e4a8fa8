"""Typed log entries: what a leaf of the transparency log holds.

Each entry is one canonical CBOR map (RFC 8949 section 4.2.1 core
deterministic encoding, as cbor2 ``canonical=True`` writes it) with a
version ``v`` and a ``kind``; docs/protocol.cddl (``log-entry``) is the
schema. The leaf hash covers exactly these bytes, so decoding is strict:
exactly the keys of the kind, the right types and sizes, and the canonical
encoding (one entry has one encoding, so one leaf hash).

- ``certificate``: a DER X.509 certificate (the steward's issuance);
- ``refusal-digest``: the SHA-256 of a refusal the steward explained
  (the refusal itself may hold what should not be public);
- ``package-signature``: a package's content digest, the raw Ed25519 key
  that signed it, the signed role and the signature (docs/package.md), so
  anyone holding the entry can check the signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import cbor2

from stockade.errors import MalformedLogData

VERSION = 1
#: The largest entry the log stores (a certificate carrying evidence in an
#: extension is tens of KB; docs/transparency-log.md).
MAX_ENTRY = 1 << 20
ROLES = ("author", "reviewer")
SIG_ALG = "Ed25519"


@dataclass(frozen=True)
class CertificateEntry:
    KIND: ClassVar[str] = "certificate"
    der: bytes

    def body(self) -> dict[str, Any]:
        return {"der": self.der}


@dataclass(frozen=True)
class RefusalDigestEntry:
    KIND: ClassVar[str] = "refusal-digest"
    digest: bytes

    def body(self) -> dict[str, Any]:
        return {"digest": self.digest}


@dataclass(frozen=True)
class PackageSignatureEntry:
    KIND: ClassVar[str] = "package-signature"
    package_digest: bytes
    signer_key: bytes
    role: str
    sig: bytes
    alg: str = SIG_ALG

    def body(self) -> dict[str, Any]:
        return {
            "package-digest": self.package_digest,
            "signer-key": self.signer_key,
            "role": self.role,
            "alg": self.alg,
            "sig": self.sig,
        }


LogEntry = CertificateEntry | RefusalDigestEntry | PackageSignatureEntry
KINDS: dict[str, type[LogEntry]] = {
    cls.KIND: cls for cls in (CertificateEntry, RefusalDigestEntry, PackageSignatureEntry)
}


_FIELDS: dict[str, tuple[str, ...]] = {
    "certificate": ("der",),
    "refusal-digest": ("digest",),
    "package-signature": ("package-digest", "signer-key", "role", "alg", "sig"),
}


def _bstr(m: dict[str, Any], key: str, size: int | None, where: str) -> bytes:
    value = m[key]
    if not isinstance(value, bytes):
        raise MalformedLogData(f"{where}: {key} is a {type(value).__name__}, expected a byte string")
    if size is not None and len(value) != size:
        raise MalformedLogData(f"{where}: {key} is {len(value)} bytes, expected {size}")
    return value


def _check(entry: LogEntry) -> LogEntry:
    """Shape checks shared by encoding and decoding."""
    where = f"{entry.KIND} entry"
    if isinstance(entry, CertificateEntry):
        if not isinstance(entry.der, bytes) or not entry.der:
            raise MalformedLogData(f"{where}: der must be a non-empty byte string")
    elif isinstance(entry, RefusalDigestEntry):
        _bstr({"digest": entry.digest}, "digest", 32, where)
    else:
        _bstr({"package-digest": entry.package_digest}, "package-digest", 32, where)
        _bstr({"signer-key": entry.signer_key}, "signer-key", 32, where)
        _bstr({"sig": entry.sig}, "sig", 64, where)
        if entry.role not in ROLES:
            raise MalformedLogData(f"{where}: role {entry.role!r} is not one of {', '.join(ROLES)}")
        if entry.alg != SIG_ALG:
            raise MalformedLogData(f"{where}: alg {entry.alg!r} is not {SIG_ALG}")
    return entry


def encode_entry(entry: LogEntry) -> bytes:
    """The canonical CBOR bytes of ``entry`` (what its leaf hash covers)."""
    data = bytes(cbor2.dumps({"v": VERSION, "kind": _check(entry).KIND, **entry.body()}, canonical=True))
    if len(data) > MAX_ENTRY:
        raise MalformedLogData(f"log entry of {len(data)} bytes exceeds the limit of {MAX_ENTRY}")
    return data


def decode_entry(data: bytes) -> LogEntry:
    """Parse entry bytes strictly (module docstring); raise MalformedLogData."""
    if len(data) > MAX_ENTRY:
        raise MalformedLogData(f"log entry of {len(data)} bytes exceeds the limit of {MAX_ENTRY}")
    try:
        m = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedLogData(f"log entry is not CBOR: {exc}") from None
    if not isinstance(m, dict):
        raise MalformedLogData(f"log entry is a CBOR {type(m).__name__}, expected a map")
    if m.get("v") != VERSION:
        raise MalformedLogData(f"log entry version {m.get('v')!r}, expected {VERSION}")
    kind = m.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MalformedLogData(f"log entry kind {kind!r} is not one of {', '.join(KINDS)}")
    where = f"{kind} entry"
    fields = _FIELDS[cls.KIND]
    if set(m) != {"v", "kind", *fields}:
        raise MalformedLogData(
            f"{where}: keys {sorted(map(str, m))}, expected {sorted(['v', 'kind', *fields])}"
        )
    entry: LogEntry
    if cls is CertificateEntry:
        entry = CertificateEntry(_bstr(m, "der", None, where))
    elif cls is RefusalDigestEntry:
        entry = RefusalDigestEntry(_bstr(m, "digest", None, where))
    else:
        for key in ("role", "alg"):
            if not isinstance(m[key], str):
                raise MalformedLogData(f"{where}: {key} is a {type(m[key]).__name__}, expected text")
        entry = PackageSignatureEntry(
            package_digest=_bstr(m, "package-digest", None, where),
            signer_key=_bstr(m, "signer-key", None, where),
            role=m["role"],
            sig=_bstr(m, "sig", None, where),
            alg=m["alg"],
        )
    if encode_entry(entry) != data:
        raise MalformedLogData(f"{where}: not in canonical CBOR encoding")
    return entry


def describe(entry: LogEntry) -> dict[str, Any]:
    """A JSON-ready view of ``entry`` (byte strings as hex)."""
    return {
        "kind": entry.KIND,
        **{k: v.hex() if isinstance(v, bytes) else v for k, v in entry.body().items()},
    }
