"""evidence/pki.py, the one PKI module: the pinned signature algorithm, CRL
loading and checking the same for every platform, and the one collateral
cache's key rule (evidence/collateral.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stockade.errors import MalformedEvidence, VerificationFailed
from stockade.evidence import pki
from stockade.evidence.collateral import CollateralCache
from stockade.evidence.pki import SigAlg

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    signer: ec.EllipticCurvePrivateKey,
    digest: hashes.HashAlgorithm,
    serial: int = 7,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(signer, digest)
    )


def _crl(
    issuer: str,
    signer: ec.EllipticCurvePrivateKey,
    digest: hashes.HashAlgorithm,
    serials: tuple[int, ...] = (),
    *,
    delta: bool = False,
) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_name(issuer))
        .last_update(NOW - timedelta(hours=1))
        .next_update(NOW + timedelta(days=1))
    )
    for s in serials:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(s)
            .revocation_date(NOW - timedelta(hours=2))
            .build()
        )
    if delta:
        b = b.add_extension(x509.DeltaCRLIndicator(1), critical=True)
    return b.sign(signer, digest).public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {
        "ca": ec.generate_private_key(ec.SECP256R1()),
        "leaf": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
    }


def test_signed_by_accepts_the_pinned_algorithm(keys: dict[str, ec.EllipticCurvePrivateKey]) -> None:
    ca = _cert("CA", keys["ca"], "CA", keys["ca"], hashes.SHA256())
    leaf = _cert("Leaf", keys["leaf"], "CA", keys["ca"], hashes.SHA256())
    pki.signed_by(leaf, ca, SigAlg.ECDSA_P256_SHA256, "leaf")
    with pytest.raises(VerificationFailed, match=r"^leaf is not signed with RSASSA-PSS$"):
        pki.signed_by(leaf, ca, SigAlg.RSA_PSS_SHA384, "leaf")


def test_signed_by_refuses_another_hash_or_curve(keys: dict[str, ec.EllipticCurvePrivateKey]) -> None:
    ca = _cert("CA", keys["ca"], "CA", keys["ca"], hashes.SHA256())
    sha384 = _cert("Leaf", keys["leaf"], "CA", keys["ca"], hashes.SHA384())  # a valid signature, another hash
    assert sha384.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.ECDSA_WITH_SHA384
    with pytest.raises(VerificationFailed, match=r"^leaf is not signed with ecdsa-with-SHA256$"):
        pki.signed_by(sha384, ca, SigAlg.ECDSA_P256_SHA256, "leaf")
    big_ca = _cert("Big CA", keys["p384"], "Big CA", keys["p384"], hashes.SHA256())
    leaf = _cert("Leaf", keys["leaf"], "Big CA", keys["p384"], hashes.SHA256())
    with pytest.raises(VerificationFailed, match=r"^issuer of leaf does not have a P-256 key$"):
        pki.signed_by(leaf, big_ca, SigAlg.ECDSA_P256_SHA256, "leaf")
    other = _cert("Leaf", keys["leaf"], "CA", keys["leaf"], hashes.SHA256())  # signed by the wrong key
    with pytest.raises(VerificationFailed, match=r"^leaf signature does not verify under CN=CA$"):
        pki.signed_by(other, ca, SigAlg.ECDSA_P256_SHA256, "leaf")
    stranger = _cert("Leaf", keys["leaf"], "Someone", keys["ca"], hashes.SHA256())
    with pytest.raises(VerificationFailed, match=r"^leaf issuer CN=Someone is not CN=CA$"):
        pki.signed_by(stranger, ca, SigAlg.ECDSA_P256_SHA256, "leaf")


def test_crl_checks_are_the_same_for_every_algorithm(keys: dict[str, ec.EllipticCurvePrivateKey]) -> None:
    ca = _cert("CA", keys["ca"], "CA", keys["ca"], hashes.SHA256())
    leaf = _cert("Leaf", keys["leaf"], "CA", keys["ca"], hashes.SHA256(), serial=42)
    good = pki.load_crl(_crl("CA", keys["ca"], hashes.SHA256(), (42,)), "PCK CRL")
    pki.check_crl(good, ca, SigAlg.ECDSA_P256_SHA256, "PCK CRL", NOW)
    assert good.revoked(leaf) is not None
    # Same serial, another issuer: not this certificate (RFC 5280 5.3.3).
    other = _cert("Leaf", keys["leaf"], "Other CA", keys["ca"], hashes.SHA256(), serial=42)
    assert good.revoked(other) is None
    sha384 = pki.load_crl(_crl("CA", keys["ca"], hashes.SHA384()), "PCK CRL")
    with pytest.raises(VerificationFailed, match=r"^PCK CRL of CN=CA is not signed with ecdsa-with-SHA256$"):
        pki.check_crl(sha384, ca, SigAlg.ECDSA_P256_SHA256, "PCK CRL", NOW)
    with pytest.raises(VerificationFailed, match=r"^PCK CRL expired at "):
        pki.check_crl(good, ca, SigAlg.ECDSA_P256_SHA256, "PCK CRL", NOW + timedelta(days=2))
    with pytest.raises(VerificationFailed, match=r"^PCK CRL is not yet valid at "):
        pki.check_crl(good, ca, SigAlg.ECDSA_P256_SHA256, "PCK CRL", NOW - timedelta(days=1))
    with pytest.raises(MalformedEvidence, match=r"^root CA CRL is a delta CRL; a full CRL is needed$"):
        pki.load_crl(_crl("CA", keys["ca"], hashes.SHA256(), delta=True), "root CA CRL")
    with pytest.raises(MalformedEvidence, match=r"^root CA CRL: not a valid CRL \("):
        pki.load_crl(b"-----BEGIN X509 CRL-----\nnope\n-----END X509 CRL-----\n", "root CA CRL")


def test_cache_keys_stay_inside_the_cache(tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path / "c")
    cache.put("tdx/00A06D080000/tcb_info.json", b"x")
    assert (tmp_path / "c" / "tdx" / "00A06D080000" / "tcb_info.json").read_bytes() == b"x"
    assert cache.path("https://kds/x").parent == tmp_path / "c"  # URLs are hashed
    for bad in ("../escape", "/etc/passwd", ""):
        with pytest.raises(ValueError, match="not a relative name inside the cache"):
            cache.path(bad)
