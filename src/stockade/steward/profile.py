"""The workload certificate profile (docs/steward.md, ADR 0026): what the
steward puts in the certificate it issues for a Keep's key, and the checks
on the certificate signing request (CSR).

A workload certificate:

- subject ``CN=sha256:<first 16 hex of the package digest>`` (a label for
  people; the identity is the SAN URI), issuer the CA's subject;
- a random 159-bit serial; validity ``not_before`` (explicit) to
  ``not_before + lifetime`` (default 1 h, at most 24 h);
- subjectAltName: exactly one URI ``stockade://workload/sha256/<hex digest>``;
- extendedKeyUsage serverAuth and clientAuth; keyUsage digitalSignature
  (critical); basicConstraints CA:false (critical);
- subjectKeyIdentifier (SHA-1 of the key), authorityKeyIdentifier (the CA's);
- three non-critical extensions under stockade's UUID arc
  2.25.233289035712724087834608874223734060195 (ITU-T X.667 | ISO/IEC
  9834-8: an OID 2.25.<UUID as integer> needs no registration; ADR 0026):
  ``.1`` platform (UTF8String), ``.2`` measurement (OCTET STRING),
  ``.3`` signer keys (SEQUENCE OF OCTET STRING, raw Ed25519 keys, sorted,
  no duplicates). The ASN.1 is in docs/steward.md.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from stockade.errors import CertificateRequestRefused, UsageError
from stockade.steward import _der
from stockade.steward.ca import CertificateAuthority, build_certificate

#: stockade's OID arc: 2.25.<UUID af81d57e-3f64-4299-8ae8-b7b8bab774a3 as an integer>.
STOCKADE_ARC = "2.25.233289035712724087834608874223734060195"
OID_PLATFORM = x509.ObjectIdentifier(f"{STOCKADE_ARC}.1")
OID_MEASUREMENT = x509.ObjectIdentifier(f"{STOCKADE_ARC}.2")
OID_SIGNER_KEYS = x509.ObjectIdentifier(f"{STOCKADE_ARC}.3")
WORKLOAD_OIDS = (OID_PLATFORM, OID_MEASUREMENT, OID_SIGNER_KEYS)

URI_PREFIX = "stockade://workload/sha256/"
URI_RE = re.compile(r"stockade://workload/sha256/([0-9a-f]{64})")
DEFAULT_LIFETIME = dt.timedelta(hours=1)
MAX_LIFETIME = dt.timedelta(hours=24)

PLATFORM_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
MAX_MEASUREMENT = 64
SIGNER_KEY_SIZE = 32
MAX_SIGNER_KEYS = 16

#: Extensions a workload certificate carries; a CSR may request only these
#: (the steward sets every value itself and ignores the requested ones).
PROFILE_EXTENSIONS = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        *WORKLOAD_OIDS,
    }
)
#: PKCS#9 extensionRequest (RFC 2985 section 5.4.2): the only CSR attribute accepted.
EXTENSION_REQUEST = x509.ObjectIdentifier("1.2.840.113549.1.9.14")
EKU = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class VerifiedWorkloadClaims:
    """What the steward's appraisal VERIFIED about a Keep's workload: the
    only input to :func:`issue`. It must come out of verification (the
    evidence and workload identity checked by the verifier core and the
    steward policy; *planned*, issue 17), never from the request as sent.
    Until the appraisal exists, callers construct it and answer for that."""

    package_digest: bytes
    platform: str
    measurement: bytes
    signer_keys: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        check_claims(self.package_digest, self.platform, self.measurement, self.signer_keys, ValueError)

    @property
    def uri(self) -> str:
        return URI_PREFIX + self.package_digest.hex()


def check_claims(
    digest: bytes, platform: str, measurement: bytes, keys: tuple[bytes, ...], error: type[Exception]
) -> None:
    """The profile's limits on the claims (one check for issuing and verifying)."""
    if len(digest) != 32:
        raise error(f"package digest: 32 bytes (SHA-256) expected, got {len(digest)}")
    if not PLATFORM_RE.fullmatch(platform):
        raise error(f"platform {platform!r}: 1-32 characters of a-z, 0-9 and '-' expected")
    if not 1 <= len(measurement) <= MAX_MEASUREMENT:
        raise error(f"measurement: 1 to {MAX_MEASUREMENT} bytes expected, got {len(measurement)}")
    if len(keys) > MAX_SIGNER_KEYS:
        raise error(f"signer keys: at most {MAX_SIGNER_KEYS}, got {len(keys)}")
    if any(len(k) != SIGNER_KEY_SIZE for k in keys):
        raise error(f"signer keys: raw Ed25519 keys of {SIGNER_KEY_SIZE} bytes expected")
    if list(keys) != sorted(set(keys)):
        raise error("signer keys: sorted and without duplicates expected")


def encode_platform(platform: str) -> bytes:
    return _der.tlv(_der.UTF8STRING, platform.encode("ascii"))


def encode_measurement(measurement: bytes) -> bytes:
    return _der.tlv(_der.OCTET_STRING, measurement)


def encode_signer_keys(keys: tuple[bytes, ...]) -> bytes:
    return _der.tlv(_der.SEQUENCE, b"".join(_der.tlv(_der.OCTET_STRING, k) for k in keys))


def check_public_key(key: object, error: type[Exception], what: str) -> None:
    """Workload keys: ECDSA P-256 or P-384, or Ed25519."""
    if isinstance(key, Ed25519PublicKey):
        return
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
        return
    kind = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
    raise error(f"{what}: key type {kind} is not allowed (ECDSA P-256, P-384 or Ed25519)")


def check_csr(csr: x509.CertificateSigningRequest) -> None:
    """Refuse (CertificateRequestRefused) a CSR whose signature does not
    verify, whose key type is not allowed, or that requests an extension
    or attribute the profile does not set."""
    try:
        valid = csr.is_signature_valid
        public = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateRequestRefused(
            f"the CSR's key or signature algorithm is not supported: {exc}"
        ) from None
    if not valid:
        raise CertificateRequestRefused(
            "the CSR's signature does not verify: the requester did not prove it holds the key"
        )
    check_public_key(public, CertificateRequestRefused, "CSR")
    try:
        extensions = csr.extensions
        attributes = list(csr.attributes)
    except ValueError as exc:
        raise CertificateRequestRefused(f"the CSR's attributes do not parse: {exc}") from None
    for attr in attributes:
        if attr.oid != EXTENSION_REQUEST:
            raise CertificateRequestRefused(
                f"the CSR carries attribute {attr.oid.dotted_string}; only extensionRequest is accepted"
            )
    extra = sorted(e.oid.dotted_string for e in extensions if e.oid not in PROFILE_EXTENSIONS)
    if extra:
        raise CertificateRequestRefused(
            f"the CSR requests extension(s) {', '.join(extra)} that the workload profile does not set"
        )


def issue(
    ca: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    workload: VerifiedWorkloadClaims,
    *,
    not_before: dt.datetime,
    lifetime: dt.timedelta = DEFAULT_LIFETIME,
) -> x509.Certificate:
    """The workload certificate (module docstring) for ``csr``'s key."""
    if not isinstance(workload, VerifiedWorkloadClaims):
        raise TypeError("issue() takes VerifiedWorkloadClaims")
    if not_before.tzinfo is None:
        raise UsageError("not_before must be an aware datetime (UTC)")
    if not dt.timedelta(0) < lifetime <= MAX_LIFETIME:
        raise UsageError(f"certificate lifetime {lifetime} is outside (0, {MAX_LIFETIME}]")
    not_after = not_before + lifetime
    if not_after > ca.certificate.not_valid_after_utc or not_before < ca.certificate.not_valid_before_utc:
        raise UsageError("the workload certificate would outlast the CA certificate's validity")
    check_csr(csr)
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey | Ed25519PublicKey)  # check_csr
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, f"sha256:{workload.package_digest.hex()[:16]}")]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(EKU)), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(workload.uri)]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(OID_PLATFORM, encode_platform(workload.platform)), critical=False
        )
        .add_extension(
            x509.UnrecognizedExtension(OID_MEASUREMENT, encode_measurement(workload.measurement)),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(OID_SIGNER_KEYS, encode_signer_keys(workload.signer_keys)),
            critical=False,
        )
    )
    return build_certificate(builder, ca.signer)
