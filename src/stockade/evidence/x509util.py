"""Certificate loading, and the validity-at-a-time check, shared by the
verifiers.

AMD's ARK, ASK and VCEK certificates carry serial number 0, which RFC 5280
forbids; pyca/cryptography (46-50) loads them with a
CryptographyDeprecationWarning and announces that a future release will
refuse them (docs/adr/0003-amd-serial-zero-certificates.md). Every load goes
through here so the warning is suppressed in one place and a refusal shows
up as one clear MalformedEvidence.

pyca/cryptography parses names, version, extensions and the public key
lazily, on first access, and raises there (ValueError, InvalidVersion,
DuplicateExtension, UnsupportedAlgorithm). The loaders touch all of them, so
a certificate that loads here has no parse error left for a later access.

Parsed certificates are cached by their exact DER bytes (and fingerprints
by certificate identity): a pyca Certificate is immutable, so a cache hit
returns the very object an uncached load would have built from those bytes.
A failed load is not cached; it fails again, with the caller's label.
Verifying one SNP report loads the same few AMD certificates every time, and
their parse cost several times the report's own checks (bench/README.md).
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning

from stockade.errors import MalformedEvidence, VerificationFailed

#: Everything pyca/cryptography raises, eagerly or on first access, for a
#: certificate or CRL that does not parse. ``x509.InvalidVersion`` is not a
#: ValueError: a CRL with a bad version field once escaped the Intel verifier
#: as a traceback this way (issue 13). Every parse goes through these.
PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)
_PARSE_ERRORS = PARSE_ERRORS


def _parse_lazy_parts(cert: x509.Certificate) -> None:
    _ = cert.serial_number  # the serial-0 warning is emitted lazily, on access
    _ = cert.version, cert.issuer, cert.subject, cert.extensions
    _ = cert.not_valid_before_utc, cert.not_valid_after_utc, cert.signature_algorithm_oid
    cert.public_key()


#: Distinct certificates kept parsed; a verifier meets a handful (roots,
#: intermediates, the endorsement keys of the chips it talks to).
CACHE_SIZE = 256


@functools.lru_cache(maxsize=CACHE_SIZE)
def _load_der_cached(der: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        cert = x509.load_der_x509_certificate(der)
        _parse_lazy_parts(cert)
        return cert


def load_der(der: bytes, what: str) -> x509.Certificate:
    """The certificate in ``der``, every part parsed; cached by the bytes."""
    try:
        return _load_der_cached(bytes(der))
    except _PARSE_ERRORS as exc:
        raise MalformedEvidence(f"{what}: not a valid DER certificate ({exc})") from None


def load_pem_chain(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            certs = x509.load_pem_x509_certificates(pem)
            for cert in certs:
                _parse_lazy_parts(cert)
            return certs
    except _PARSE_ERRORS as exc:
        raise MalformedEvidence(f"{what}: not a valid PEM certificate list ({exc})") from None


def load_crl(data: bytes, what: str) -> x509.CertificateRevocationList:
    """A CRL (DER, or PEM when it starts like PEM) with its issuer, dates,
    signature algorithm, extensions and entries parsed; any parse error is
    MalformedEvidence naming ``what``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            crl = (
                x509.load_pem_x509_crl(data)
                if data.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_crl(data)
            )
            _ = crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.extensions
            _ = crl.signature_algorithm_oid, crl.signature, crl.tbs_certlist_bytes
            for entry in crl:
                _ = entry.serial_number, entry.revocation_date_utc, entry.extensions
            return crl
    except PARSE_ERRORS as exc:
        raise MalformedEvidence(f"{what}: not a valid CRL ({exc})") from None


def der_of(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


class CertKey:
    """Cache key for a certificate by identity. The key holds the certificate,
    so its id cannot be reused by another object while the cache entry lives.

    pyca hashes a Certificate by re-encoding it (~8 us); load_der returns the
    same object for the same bytes while they are cached, so identity is the
    cheap and exact key for values computed from a certificate."""

    __slots__ = ("cert",)

    def __init__(self, cert: x509.Certificate) -> None:
        self.cert = cert

    def __hash__(self) -> int:
        return id(self.cert)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CertKey) and other.cert is self.cert


@functools.lru_cache(maxsize=CACHE_SIZE)
def _fingerprint(key: CertKey) -> str:
    return hashlib.sha256(der_of(key.cert)).hexdigest()


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex (re-encoding costs ~25 us: cached)."""
    return _fingerprint(CertKey(cert))


def serial(cert: x509.Certificate) -> int:
    """The serial number, without the serial-0 warning reaching users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return cert.serial_number


def check_window(what: str, at: datetime, start: datetime, end: datetime, start_label: str) -> None:
    """VerificationFailed unless ``start <= at <= end``; ``start_label``
    names the start in the message ("from" for a certificate's notBefore,
    "thisUpdate" for a CRL)."""
    if at < start:
        raise VerificationFailed(
            f"{what} is not yet valid at {at.isoformat()} ({start_label} {start.isoformat()})"
        )
    if at > end:
        raise VerificationFailed(f"{what} expired at {end.isoformat()} (checked at {at.isoformat()})")


def check_validity(cert: x509.Certificate, what: str, at: datetime) -> None:
    """VerificationFailed unless ``at`` is inside the certificate's validity."""
    check_window(what, at, cert.not_valid_before_utc, cert.not_valid_after_utc, "from")
