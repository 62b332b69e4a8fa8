"""Claims that a policy can evaluate but that nothing verified.

:class:`UnverifiedClaims` is what ``stockade policy check --claims FILE``
reads: a claims document (``VerifiedClaims.to_json()``, or the
``attestation`` object of ``stockade run --json``). It has the fields of
:class:`~stockade.evidence.claims.VerifiedClaims` but is a different type:
:func:`stockade.policy.evaluate` accepts either and labels a decision on
unverified claims as such (``Decision.claims_verified`` False, and a note);
:func:`stockade.policy.appraise`, which the client calls before it trusts a
Keep, and the EAR (an appraisal of verified evidence) refuse them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from stockade.errors import UsageError
from stockade.evidence.claims import SIM_PLATFORMS, VerifiedClaims, claims_json

#: The note on every decision about unverified claims.
NOT_VERIFIED_NOTE = (
    "claims NOT verified: read from a document, not from evidence; this decision vouches for nothing"
)


@dataclass(frozen=True)
class UnverifiedClaims:
    """The fields of :class:`VerifiedClaims` (same names, types and
    meaning), from a document that no verifier checked."""

    platform: str
    product: str
    signer: str
    measurement: bytes
    report_data: bytes
    host_data: bytes
    debug: bool
    vmpl: int | None
    chip_id: bytes
    tcb: tuple[tuple[str, int], ...]
    firmware: str
    policy_flags: tuple[tuple[str, bool], ...]
    report_version: int
    root_fingerprint: str
    verified_at: datetime
    registers: tuple[tuple[str, bytes], ...] = ()
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    fmspc: str | None = None
    collateral_issued: datetime | None = None
    collateral_next_update: datetime | None = None

    @property
    def hardware_protected(self) -> bool:
        return self.platform not in SIM_PLATFORMS

    def to_json(self) -> dict[str, Any]:
        """The same document as ``VerifiedClaims.to_json()``."""
        return claims_json(self)

    @classmethod
    def from_json(cls, doc: Any, source: str = "claims") -> UnverifiedClaims:
        """Claims from a claims document (the inverse of ``to_json``).
        Raises UsageError naming the key for malformed documents."""
        return _from_json(doc, source)


#: What a policy evaluates.
Claims: TypeAlias = VerifiedClaims | UnverifiedClaims


_JSON_KEYS = {
    "platform",
    "hardware_protection",
    "product",
    "signer",
    "measurement",
    "report_data",
    "host_data",
    "debug",
    "vmpl",
    "chip_id",
    "tcb",
    "firmware",
    "policy_flags",
    "report_version",
    "root_sha256",
    "verified_at",
    "registers",
    "tcb_status",
    "advisory_ids",
    "fmspc",
    "collateral_issued",
    "collateral_next_update",
    "checks",  # stockade run --json adds the list of checks performed
}
_OPTIONAL = {
    "registers",
    "tcb_status",
    "advisory_ids",
    "fmspc",
    "hardware_protection",
    "checks",
    "collateral_issued",
    "collateral_next_update",
}


def _from_json(doc: Any, source: str) -> UnverifiedClaims:
    if isinstance(doc, dict) and isinstance(doc.get("attestation"), dict):
        doc = doc["attestation"]
    if not isinstance(doc, dict):
        raise UsageError(f"{source}: expected a JSON object of claims")
    unknown = sorted(set(doc) - _JSON_KEYS)
    if unknown:
        raise UsageError(f"{source}: unknown claim key(s): {', '.join(unknown)}")
    missing = sorted(_JSON_KEYS - _OPTIONAL - set(doc))
    if missing:
        raise UsageError(f"{source}: missing claim key(s): {', '.join(missing)}")

    def typed(key: str, kind: type | tuple[type, ...]) -> Any:
        value = doc[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UsageError(f"{source}: {key}: wrong type {type(value).__name__}")
        return value

    def hexbytes(key: str, value: Any) -> bytes:
        try:
            return bytes.fromhex(value)
        except (TypeError, ValueError):
            raise UsageError(f"{source}: {key}: not hex") from None

    try:
        verified_at = datetime.fromisoformat(typed("verified_at", str))
    except ValueError:
        raise UsageError(f"{source}: verified_at: not an ISO 8601 time") from None
    if verified_at.tzinfo is None:
        raise UsageError(f"{source}: verified_at: needs a time zone")
    dates: dict[str, datetime | None] = {}
    for key in ("collateral_issued", "collateral_next_update"):
        value = doc.get(key)
        if value is None:
            dates[key] = None
            continue
        if not isinstance(value, str):
            raise UsageError(f"{source}: {key}: expected an ISO 8601 time or null")
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise UsageError(f"{source}: {key}: not an ISO 8601 time") from None
        if when.tzinfo is None:
            raise UsageError(f"{source}: {key}: needs a time zone")
        dates[key] = when
    tcb = typed("tcb", dict)
    flags = typed("policy_flags", dict)
    registers = doc.get("registers")
    registers = {} if registers is None else registers
    if not isinstance(registers, dict):
        raise UsageError(f"{source}: registers: expected an object")
    vmpl = doc["vmpl"]
    if vmpl is not None and (isinstance(vmpl, bool) or not isinstance(vmpl, int)):
        raise UsageError(f"{source}: vmpl: expected an integer or null")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in tcb.values()):
        raise UsageError(f"{source}: tcb: expected integer values")
    if not all(isinstance(v, bool) for v in flags.values()):
        raise UsageError(f"{source}: policy_flags: expected true/false values")
    advisories = doc.get("advisory_ids")
    advisories = [] if advisories is None else advisories
    if not isinstance(advisories, list) or not all(isinstance(a, str) for a in advisories):
        raise UsageError(f"{source}: advisory_ids: expected a list of strings")
    for key in ("tcb_status", "fmspc"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise UsageError(f"{source}: {key}: expected a string or null")
    return UnverifiedClaims(
        platform=typed("platform", str),
        product=typed("product", str),
        signer=typed("signer", str),
        measurement=hexbytes("measurement", doc["measurement"]),
        report_data=hexbytes("report_data", doc["report_data"]),
        host_data=hexbytes("host_data", doc["host_data"]),
        debug=typed("debug", bool),
        vmpl=vmpl,
        chip_id=hexbytes("chip_id", doc["chip_id"]),
        tcb=tuple(tcb.items()),
        firmware=typed("firmware", str),
        policy_flags=tuple(flags.items()),
        report_version=typed("report_version", int),
        root_fingerprint=typed("root_sha256", str),
        verified_at=verified_at,
        registers=tuple((k, hexbytes(f"registers.{k}", v)) for k, v in registers.items()),
        tcb_status=doc.get("tcb_status"),
        advisory_ids=tuple(advisories),
        fmspc=doc.get("fmspc"),
        collateral_issued=dates["collateral_issued"],
        collateral_next_update=dates["collateral_next_update"],
    )
