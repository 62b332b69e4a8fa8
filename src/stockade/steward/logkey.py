"""The steward log's key, certified by the steward CA (docs/steward.md,
"The log key").

The steward signs its transparency log's tree heads with a log key of its
own (stockade.translog: Ed25519 in a file next to a file CA key; ECDSA
P-256 generated in the same PKCS#11 token as a token CA key). The CA
issues one *log certificate* for that key, so that whoever pins the CA
certificate pins the log key too, without a second file to distribute:

- subject ``O=stockade, CN=<CA name> log``, issuer the CA, validity the CA's;
- basicConstraints CA:false (critical); keyUsage digitalSignature (critical);
- extendedKeyUsage exactly ``2.25.233289035712724087834608874223734060195.4``
  (stockade transparency-log signing): neither serverAuth nor clientAuth,
  so the certificate is no TLS certificate; no SAN, so
  :func:`stockade.steward.verify.verify_workload_certificate` refuses it
  as a workload certificate;
- subjectKeyIdentifier, authorityKeyIdentifier (the CA's).

``GET /v1/ca`` serves it; :func:`log_key_from_certificate` checks it
under the pinned CA and returns the :class:`stockade.translog.LogKey`.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID

from stockade.errors import LogProofError, MalformedLogData
from stockade.steward.ca import CertificateAuthority, build_certificate
from stockade.steward.profile import KEY_USAGE, STOCKADE_ARC
from stockade.translog.treehead import LogKey

OID_LOG_SIGNING = x509.ObjectIdentifier(f"{STOCKADE_ARC}.4")


def issue_log_certificate(ca: CertificateAuthority, log_key: LogKey, now: dt.datetime) -> x509.Certificate:
    """The log certificate (module docstring) for ``log_key``."""
    public = serialization.load_der_public_key(log_key.spki)
    names = ca.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else "stockade steward"
    cn = f"{value if isinstance(value, str) else 'stockade steward'} log"[:64]
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stockade"),
                    x509.NameAttribute(NameOID.COMMON_NAME, str(cn)),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(public)  # type: ignore[arg-type]  # Ed25519 or P-256 (LogKey admits only these)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - dt.timedelta(minutes=5), ca.certificate.not_valid_before_utc))
        .not_valid_after(ca.certificate.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(KEY_USAGE, critical=True)  # digitalSignature only
        .add_extension(x509.ExtendedKeyUsage([OID_LOG_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)  # type: ignore[arg-type]
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    return build_certificate(builder, ca.signer)


def log_key_from_certificate(cert_der: bytes, ca: x509.Certificate, now: dt.datetime) -> LogKey:
    """The log key of a log certificate that the pinned ``ca`` issued and
    that is valid at ``now``; LogProofError otherwise."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError:
        raise MalformedLogData("log certificate: not a DER X.509 certificate") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise LogProofError("log certificate: not issued by the pinned steward CA") from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise LogProofError(f"log certificate: not valid at {now.isoformat()}")
    try:
        eku = cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        raise LogProofError("log certificate: no extendedKeyUsage or basicConstraints") from None
    if not isinstance(eku, x509.ExtendedKeyUsage) or list(eku) != [OID_LOG_SIGNING] or bc.ca:
        raise LogProofError("log certificate: not a stockade transparency-log signing certificate")
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return LogKey.from_der(spki)
