"""The Keep's ephemeral TLS identity: a key born in the Keep, and a
self-signed certificate for it that carries the attestation evidence.

The private key never leaves this process's memory (no file, no argument,
no environment variable). The certificate is self-signed only so that TLS
stacks accept its shape: trust in it comes from the evidence, whose report
data binds the client's nonce and this certificate's public key.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stockade.wire.evidence import EVIDENCE_OID, EvidenceBundle, extension_value


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def spki_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certificate(
    key: ec.EllipticCurvePrivateKey, bundle: EvidenceBundle, now: datetime | None = None
) -> x509.Certificate:
    now = now or datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"stockade keep ({bundle.platform})")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(EVIDENCE_OID), extension_value(bundle)),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
