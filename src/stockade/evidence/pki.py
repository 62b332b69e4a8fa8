"""The one PKI module of the verifiers (SNP, TDX, SGX, sim): certificate
loading with a labelled error, ``signed_by`` with the algorithm pinned, CRL
loading and checking (issuer, signature, window, entries) with one set of
parse errors, validity windows, fingerprints and PEM chains.

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

import enum
import functools
import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
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


def _load_crl_object(data: bytes) -> x509.CertificateRevocationList:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)


#: CRL extensions understood here; any other critical one makes a CRL unusable
#: (RFC 5280 5.2). A delta CRL (DeltaCRLIndicator) is refused: AMD's KDS and
#: Intel's PCS serve full CRLs.
_KNOWN_CRL_EXTENSIONS = {
    x509.oid.ExtensionOID.CRL_NUMBER,
    x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    x509.oid.ExtensionOID.ISSUING_DISTRIBUTION_POINT,
}


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: load_crl caches one per bytes
class Crl:
    """A CRL with every part parsed: its exact bytes (the signature is checked
    over them by :func:`crl_signed_by`), issuer, window and entries."""

    data: bytes
    issuer: x509.Name
    this_update: datetime
    next_update: datetime
    #: (certificate issuer, serial, revocation date) of every entry.
    entries: tuple[tuple[x509.Name, int, datetime], ...]

    def revoked(self, cert: x509.Certificate) -> datetime | None:
        """When ``cert`` was revoked by this CRL, or None. An entry names a
        certificate by its serial AND its certificate issuer (the CRL
        issuer, or the certificateIssuer of an indirect entry), as RFC 5280
        5.3.3 defines: a serial alone is not enough (every AMD VCEK has
        serial 0)."""
        for issuer, when in self._by_serial().get(serial(cert), ()):
            if issuer == cert.issuer:
                return when
        return None

    def _by_serial(self) -> dict[int, tuple[tuple[x509.Name, datetime], ...]]:
        index = self.__dict__.get("_index")
        if index is None:
            grouped: dict[int, list[tuple[x509.Name, datetime]]] = {}
            for issuer, number, when in self.entries:
                grouped.setdefault(number, []).append((issuer, when))
            index = {k: tuple(v) for k, v in grouped.items()}
            object.__setattr__(self, "_index", index)  # a cache of the frozen entries
        return index


def _crl_entries(crl: x509.CertificateRevocationList) -> Iterator[tuple[x509.Name, int, datetime]]:
    """Entries with their certificate issuer: the CRL issuer, or for an
    indirect CRL the entry's certificateIssuer extension, which carries over
    to the following entries (RFC 5280 5.3.3)."""
    issuer = crl.issuer
    for entry in crl:
        try:
            ext = entry.extensions.get_extension_for_class(x509.CertificateIssuer)
        except x509.ExtensionNotFound:
            pass
        else:
            names = [n.value for n in ext.value if isinstance(n, x509.DirectoryName)]
            if len(names) != 1:
                raise MalformedEvidence("CRL entry certificateIssuer is not one directory name")
            issuer = names[0]
        for e in entry.extensions:
            if e.critical and e.oid != x509.oid.CRLEntryExtensionOID.CERTIFICATE_ISSUER:
                raise MalformedEvidence(
                    f"CRL entry has an unsupported critical extension {e.oid.dotted_string}"
                )
        yield issuer, entry.serial_number, entry.revocation_date_utc


@functools.lru_cache(maxsize=64)
def _load_crl_cached(data: bytes, what: str) -> Crl:
    try:
        crl = _load_crl_object(data)
        for ext in crl.extensions:
            if ext.oid == x509.oid.ExtensionOID.DELTA_CRL_INDICATOR:
                raise MalformedEvidence(f"{what} is a delta CRL; a full CRL is needed")
            if ext.critical and ext.oid not in _KNOWN_CRL_EXTENSIONS:
                raise MalformedEvidence(
                    f"{what} has an unsupported critical extension {ext.oid.dotted_string}"
                )
            idp = ext.value
            if isinstance(idp, x509.IssuingDistributionPoint) and (
                idp.only_some_reasons or idp.only_contains_attribute_certs
            ):
                raise MalformedEvidence(f"{what} covers only some reasons or attribute certificates")
        next_update = crl.next_update_utc
        if next_update is None:
            raise MalformedEvidence(f"{what} has no nextUpdate (RFC 5280 requires one)")
        _ = crl.signature_algorithm_oid, crl.signature, crl.tbs_certlist_bytes
        return Crl(
            data=data,
            issuer=crl.issuer,
            this_update=crl.last_update_utc,
            next_update=next_update,
            entries=tuple(_crl_entries(crl)),
        )
    except PARSE_ERRORS as exc:
        raise MalformedEvidence(f"{what}: not a valid CRL ({exc})") from None


def load_crl(data: bytes, what: str) -> Crl:
    """A CRL (DER, or PEM when it starts like PEM) with its issuer, dates,
    signature algorithm, extensions and entries parsed, and only extensions
    this module processes critical; any parse error is MalformedEvidence
    naming ``what``. Cached by the bytes."""
    return _load_crl_cached(bytes(data), what)


class SigAlg(enum.Enum):
    """A signature algorithm pinned by a verifier: the one its PKI uses, and
    no other (a certificate or CRL naming another algorithm is refused)."""

    #: AMD's ARK/ASK/VCEK chain and KDS CRLs (pub. 57230): RSASSA-PSS,
    #: SHA-384, MGF1-SHA-384, salt 48.
    RSA_PSS_SHA384 = "rsassa-pss-sha384"
    #: Intel's SGX/TDX PKI (PCK chain, TCB Signing, CRLs): ecdsa-with-SHA256 on P-256.
    ECDSA_P256_SHA256 = "ecdsa-p256-sha256"

    @property
    def oid(self) -> x509.ObjectIdentifier:
        if self is SigAlg.RSA_PSS_SHA384:
            return x509.oid.SignatureAlgorithmOID.RSASSA_PSS
        return x509.oid.SignatureAlgorithmOID.ECDSA_WITH_SHA256

    @property
    def label(self) -> str:
        return "RSASSA-PSS" if self is SigAlg.RSA_PSS_SHA384 else "ecdsa-with-SHA256"


def _verify_pinned(key: object, signature: bytes, data: bytes, algorithm: SigAlg, issuer_what: str) -> None:
    """InvalidSignature unless ``signature`` over ``data`` verifies with
    ``key`` under exactly ``algorithm``; VerificationFailed if the key is of
    another kind."""
    if algorithm is SigAlg.RSA_PSS_SHA384:
        if not isinstance(key, rsa.RSAPublicKey):
            raise VerificationFailed(f"{issuer_what} does not have an RSA key")
        key.verify(
            signature,
            data,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
            hashes.SHA384(),
        )
        return
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise VerificationFailed(f"{issuer_what} does not have a P-256 key")
    key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


@functools.lru_cache(maxsize=256)
def _signed_by_cached(child: CertKey, issuer: CertKey, algorithm: SigAlg, what: str) -> None:
    c, i = child.cert, issuer.cert
    if c.signature_algorithm_oid != algorithm.oid:
        raise VerificationFailed(f"{what} is not signed with {algorithm.label}")
    if c.issuer != i.subject:
        raise VerificationFailed(
            f"{what} issuer {c.issuer.rfc4514_string()} is not {i.subject.rfc4514_string()}"
        )
    if algorithm is SigAlg.ECDSA_P256_SHA256:
        # pyca's own check (issuer name, key type, signature with the
        # certificate's declared algorithm, here pinned above); for
        # RSASSA-PSS the salt length is pinned too, so that case is explicit.
        key = i.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise VerificationFailed(f"issuer of {what} does not have a P-256 key")
        try:
            c.verify_directly_issued_by(i)
        except (InvalidSignature, ValueError, TypeError):
            raise VerificationFailed(
                f"{what} signature does not verify under {i.subject.rfc4514_string()}"
            ) from None
        return
    try:
        _verify_pinned(i.public_key(), c.signature, c.tbs_certificate_bytes, algorithm, f"issuer of {what}")
    except InvalidSignature:
        raise VerificationFailed(
            f"{what} signature does not verify under {i.subject.rfc4514_string()}"
        ) from None


def signed_by(child: x509.Certificate, issuer: x509.Certificate, algorithm: SigAlg, what: str) -> None:
    """VerificationFailed unless ``child`` names ``issuer`` as its issuer and
    carries a valid signature by it under exactly ``algorithm``. Cached by
    certificate identity (load_der returns one object per DER while cached)."""
    _signed_by_cached(CertKey(child), CertKey(issuer), algorithm, what)


@functools.lru_cache(maxsize=64)
def _crl_signed_by_cached(crl: Crl, issuer: CertKey, algorithm: SigAlg, what: str) -> None:
    name = issuer.cert.subject.rfc4514_string()
    if crl.issuer != issuer.cert.subject:
        raise VerificationFailed(f"{what} is issued by {crl.issuer.rfc4514_string()}, not {name}")
    parsed = _load_crl_object(crl.data)
    if parsed.signature_algorithm_oid != algorithm.oid:
        raise VerificationFailed(f"{what} of {name} is not signed with {algorithm.label}")
    try:
        _verify_pinned(
            issuer.cert.public_key(),
            parsed.signature,
            parsed.tbs_certlist_bytes,
            algorithm,
            f"issuer of {what}",
        )
    except InvalidSignature:
        raise VerificationFailed(f"{what} signature does not verify under {name}") from None


def crl_signed_by(crl: Crl, issuer: x509.Certificate, algorithm: SigAlg, what: str) -> None:
    """VerificationFailed unless ``crl`` is issued by ``issuer`` and signed
    by it under exactly ``algorithm``."""
    _crl_signed_by_cached(crl, CertKey(issuer), algorithm, what)


def check_crl(crl: Crl, issuer: x509.Certificate, algorithm: SigAlg, what: str, at: datetime) -> None:
    """Issuer, signature and window (thisUpdate <= at <= nextUpdate) of a CRL."""
    crl_signed_by(crl, issuer, algorithm, what)
    check_window(what, at, crl.this_update, crl.next_update, "thisUpdate")


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


@functools.lru_cache(maxsize=CACHE_SIZE)
def _serial(key: CertKey) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return key.cert.serial_number


def serial(cert: x509.Certificate) -> int:
    """The serial number, without the serial-0 warning reaching users
    (catching warnings costs microseconds: cached by certificate)."""
    return _serial(CertKey(cert))


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


def cache_clear() -> None:
    """Empty every cache of this module (benchmarks measure a cold start)."""
    for cached in (
        _load_der_cached,
        _load_crl_cached,
        _signed_by_cached,
        _crl_signed_by_cached,
        _fingerprint,
        _serial,
    ):
        cached.cache_clear()
