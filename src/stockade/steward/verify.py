"""Checking a peer's workload certificate: :func:`verify_workload_certificate`
(chain to the steward CA, validity at an explicit time, the profile of
:mod:`stockade.steward.profile` parsed strictly). No I/O. Success returns
a :class:`WorkloadIdentity`, which only this module constructs; anything
else raises :class:`stockade.errors.WorkloadCertificateInvalid` (exit 110)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from stockade.errors import WorkloadCertificateInvalid
from stockade.steward import _der
from stockade.steward.ca import fingerprint
from stockade.steward.profile import (
    EKU,
    KEY_USAGE,
    MAX_LIFETIME,
    OID_MEASUREMENT,
    OID_PLATFORM,
    OID_SIGNER_KEYS,
    PROFILE_EXTENSIONS,
    URI_PREFIX,
    URI_RE,
    check_claims,
    check_public_key,
)

_VERIFIED = object()
Invalid = WorkloadCertificateInvalid


@dataclass(frozen=True)
class WorkloadIdentity:
    """A workload certificate that verified under the steward CA at
    ``verified_at``. Only :func:`verify_workload_certificate` constructs it."""

    package_digest: bytes
    platform: str
    measurement: bytes
    signer_keys: tuple[bytes, ...]
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    public_key_der: bytes
    ca_fingerprint: str
    verified_at: dt.datetime
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _VERIFIED:
            raise TypeError("WorkloadIdentity is constructed by verify_workload_certificate only")

    @property
    def uri(self) -> str:
        return URI_PREFIX + self.package_digest.hex()


def _ext(
    exts: x509.Extensions, oid: x509.ObjectIdentifier, critical: bool, name: str
) -> x509.Extension[x509.ExtensionType]:
    try:
        ext = exts.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        raise Invalid(f"workload certificate: no {name} extension") from None
    if ext.critical != critical:
        raise Invalid(f"workload certificate: {name} must be {'critical' if critical else 'non-critical'}")
    return ext


def _raw(exts: x509.Extensions, oid: x509.ObjectIdentifier, name: str) -> bytes:
    value = _ext(exts, oid, False, name).value
    if not isinstance(
        value, x509.UnrecognizedExtension
    ):  # pragma: no cover - our OIDs are unknown to cryptography
        raise Invalid(f"workload certificate: {name} is not an opaque extension")
    return value.value


def _parse_workload(exts: x509.Extensions) -> tuple[str, bytes, tuple[bytes, ...]]:
    try:
        platform_raw = _der.only(_raw(exts, OID_PLATFORM, "platform"), _der.UTF8STRING)
        platform = platform_raw.decode("ascii")
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid(f"workload certificate: malformed platform extension ({exc})") from None
    try:
        measurement = _der.only(_raw(exts, OID_MEASUREMENT, "measurement"), _der.OCTET_STRING)
    except ValueError as exc:
        raise Invalid(f"workload certificate: malformed measurement extension ({exc})") from None
    try:
        keys = tuple(_der.sequence_of(_raw(exts, OID_SIGNER_KEYS, "signer keys"), _der.OCTET_STRING))
    except ValueError as exc:
        raise Invalid(f"workload certificate: malformed signer keys extension ({exc})") from None
    return platform, measurement, keys


def _check_ca(ca: x509.Certificate, now: dt.datetime) -> None:
    if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
        raise Invalid(f"the steward CA certificate is not valid at {now.isoformat()}")
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        raise Invalid("the steward CA certificate has no basicConstraints") from None
    if not bc.ca:
        raise Invalid("the steward CA certificate is not a CA certificate")


def verify_workload_certificate(
    cert_chain: Sequence[x509.Certificate], ca: x509.Certificate, now: dt.datetime
) -> WorkloadIdentity:
    """Verify the peer's ``cert_chain`` (leaf first; the CA certificate may
    follow, nothing else: the CA issues directly, pathlen 0) against the
    trusted steward ``ca`` at ``now``, and parse the profile strictly."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if not cert_chain:
        raise Invalid("no workload certificate given")
    leaf, rest = cert_chain[0], cert_chain[1:]
    ca_der = ca.public_bytes(serialization.Encoding.DER)
    if any(c.public_bytes(serialization.Encoding.DER) != ca_der for c in rest):
        raise Invalid("the chain holds a certificate other than the steward CA (no intermediates)")
    _check_ca(ca, now)
    if leaf.version != x509.Version.v3:
        raise Invalid("workload certificate: X.509 v3 expected")
    if leaf.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
        raise Invalid(
            f"workload certificate: signature algorithm {leaf.signature_algorithm_oid.dotted_string}, "
            "ecdsa-with-SHA384 expected"
        )
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise Invalid(
            f"workload certificate was not issued by the steward CA {fingerprint(ca)[:16]}…"
        ) from None
    if now < leaf.not_valid_before_utc:
        raise Invalid(f"workload certificate is not valid before {leaf.not_valid_before_utc.isoformat()}")
    if now > leaf.not_valid_after_utc:
        raise Invalid(f"workload certificate expired at {leaf.not_valid_after_utc.isoformat()}")
    if leaf.not_valid_after_utc - leaf.not_valid_before_utc > MAX_LIFETIME:
        raise Invalid(f"workload certificate lifetime exceeds the profile's {MAX_LIFETIME}")
    try:
        public = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise Invalid("workload certificate: its public key does not parse") from None
    check_public_key(public, Invalid, "workload certificate")
    try:
        exts = leaf.extensions
    except ValueError as exc:
        raise Invalid(f"workload certificate: extensions do not parse ({exc})") from None
    unknown = sorted(e.oid.dotted_string for e in exts if e.oid not in PROFILE_EXTENSIONS)
    if unknown:
        raise Invalid(f"workload certificate: extension(s) {', '.join(unknown)} are not in the profile")
    bc = _ext(exts, ExtensionOID.BASIC_CONSTRAINTS, True, "basicConstraints").value
    if not isinstance(bc, x509.BasicConstraints) or bc.ca:
        raise Invalid("workload certificate: basicConstraints must say CA:false")
    if _ext(exts, ExtensionOID.KEY_USAGE, True, "keyUsage").value != KEY_USAGE:
        raise Invalid("workload certificate: keyUsage must be digitalSignature only")
    eku = _ext(exts, ExtensionOID.EXTENDED_KEY_USAGE, False, "extendedKeyUsage").value
    if not isinstance(eku, x509.ExtendedKeyUsage) or sorted(o.dotted_string for o in eku) != sorted(
        o.dotted_string for o in EKU
    ):
        raise Invalid("workload certificate: extendedKeyUsage must be serverAuth and clientAuth")
    aki = _ext(exts, ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False, "authorityKeyIdentifier").value
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca.public_key()).digest
    if not isinstance(aki, x509.AuthorityKeyIdentifier) or aki.key_identifier != ca_ski:
        raise Invalid("workload certificate: authorityKeyIdentifier does not name the steward CA's key")
    ski = _ext(exts, ExtensionOID.SUBJECT_KEY_IDENTIFIER, False, "subjectKeyIdentifier").value
    if ski != x509.SubjectKeyIdentifier.from_public_key(public):
        raise Invalid("workload certificate: subjectKeyIdentifier does not match its key")
    san = _ext(exts, ExtensionOID.SUBJECT_ALTERNATIVE_NAME, False, "subjectAltName").value
    names = list(san) if isinstance(san, x509.SubjectAlternativeName) else []
    if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
        raise Invalid("workload certificate: subjectAltName must be exactly one URI")
    match = URI_RE.fullmatch(names[0].value)
    if match is None:
        raise Invalid(f"workload certificate: SAN URI is not {URI_PREFIX}<64 hex digits>")
    digest = bytes.fromhex(match.group(1))
    platform, measurement, keys = _parse_workload(exts)
    check_claims(digest, platform, measurement, keys, Invalid)
    return WorkloadIdentity(
        package_digest=digest,
        platform=platform,
        measurement=measurement,
        signer_keys=keys,
        serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        public_key_der=public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        ca_fingerprint=fingerprint(ca),
        verified_at=now,
        _token=_VERIFIED,
    )
