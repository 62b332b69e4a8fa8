"""The client's appraisal of a Keep certificate, against genuine and tampered evidence.

Everything here goes through the real code paths, in process: the sim PSP
(``SimPsp`` with the session's sim chip) signs a real report over the
binding of a nonce and a Keep key made by ``stockade.keep.identity``; the
Keep's certificate is built by ``identity.certificate``; and the client's
``appraise`` (src/stockade/client/attest.py) judges it with the session's
sim root. Each attack changes one thing and must be refused with the right
error class and a specific message.
"""

from __future__ import annotations

import dataclasses
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stockade.binding.reportdata import report_data_for
from stockade.client.attest import Appraisal, TrustConfig, appraise
from stockade.errors import MalformedEvidence, PolicyRejected, VerificationFailed
from stockade.evidence.sim import chip as simchip
from stockade.evidence.sim.channel import ReportRequest
from stockade.evidence.sim.psp import SimPsp
from stockade.evidence.snp.abi import REPORT_SIZE
from stockade.keep import identity
from stockade.policy import default_policy, development_policy
from stockade.wire.evidence import EvidenceBundle

MEASUREMENT = bytes.fromhex("5a" * 48)


@pytest.fixture(scope="module")
def psp(state_dir: Path) -> SimPsp:
    return SimPsp(simchip.load_chip(state_dir), MEASUREMENT)


@pytest.fixture(scope="module")
def trust(state_dir: Path) -> TrustConfig:
    return TrustConfig(sim_root=simchip.sim_root(state_dir), policy=development_policy(MEASUREMENT))


@pytest.fixture(scope="module")
def foreign_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, freshly generated sim chip that the client does not trust."""
    path = tmp_path_factory.mktemp("foreign-state")
    simchip.ensure_chip(path)
    return path


def evidence(psp: SimPsp, nonce: bytes, key: ec.EllipticCurvePrivateKey) -> EvidenceBundle:
    """What the Keep's attester gets from the PSP for this nonce and key."""
    response = psp.report(ReportRequest(report_data=report_data_for(nonce, identity.spki_der(key))))
    return EvidenceBundle(platform="sim", report=response.report, certs=response.certs)


def cert_der(key: ec.EllipticCurvePrivateKey, bundle: EvidenceBundle) -> bytes:
    return identity.certificate(key, bundle).public_bytes(serialization.Encoding.DER)


def genuine(psp: SimPsp) -> tuple[bytes, bytes, ec.EllipticCurvePrivateKey, EvidenceBundle]:
    """(certificate DER, nonce, key, bundle) of an honest Keep."""
    nonce, key = secrets.token_bytes(32), identity.new_key()
    bundle = evidence(psp, nonce, key)
    return cert_der(key, bundle), nonce, key, bundle


# --------------------------------------------------------------------------- genuine


def test_genuine_certificate_is_accepted(psp: SimPsp, trust: TrustConfig, state_dir: Path) -> None:
    cert, nonce, key, _ = genuine(psp)
    appraisal = appraise(cert, nonce, trust)
    assert isinstance(appraisal, Appraisal)
    claims = appraisal.claims
    assert claims.platform == "sim"
    assert claims.to_json()["hardware_protection"] is False
    assert claims.measurement == MEASUREMENT
    assert claims.report_data == report_data_for(nonce, identity.spki_der(key))
    assert claims.chip_id == simchip.load_chip(state_dir).chip_id
    assert claims.debug is False
    assert appraisal.decision is not None
    assert any(r.rule.startswith("measurements") for r in appraisal.decision.rows)
    assert any("freshness" in c for c in appraisal.checks)


# --------------------------------------------------------------------------- one flipped byte

# (field, offset in the report, xor mask, expected error class, message fragment)
FLIPS = [
    ("version", 0x000, 0xFF, MalformedEvidence, "unsupported SNP report version"),
    ("policy-abi", 0x008, 0x01, VerificationFailed, "report signature does not verify"),
    ("policy-debug", 0x00A, 0x08, VerificationFailed, "report signature does not verify"),
    ("policy-reserved", 0x00F, 0x80, MalformedEvidence, "guest policy"),
    ("vmpl", 0x030, 0x01, VerificationFailed, "report signature does not verify"),
    ("signature-algo", 0x034, 0x02, MalformedEvidence, "signature algorithm"),
    ("key-info-signer", 0x048, 0x04, VerificationFailed, "signed by a VLEK"),
    ("report-data-first", 0x050, 0x01, VerificationFailed, "report signature does not verify"),
    ("report-data-last", 0x08F, 0x80, VerificationFailed, "report signature does not verify"),
    ("measurement", 0x090 + 17, 0x10, VerificationFailed, "report signature does not verify"),
    ("host-data", 0x0C0, 0x01, VerificationFailed, "report signature does not verify"),
    ("reported-tcb", 0x180, 0x01, VerificationFailed, "TCB does not match"),
    ("chip-id", 0x1A0 + 63, 0x01, VerificationFailed, "hwID does not match"),
    ("reserved-v3", 0x1F8, 0x01, MalformedEvidence, "reserved bytes"),
    ("last-signed-byte", 0x29F, 0x01, MalformedEvidence, "reserved bytes"),
    ("signature-r", 0x2A0, 0x01, VerificationFailed, "report signature does not verify"),
    ("signature-s", 0x2E8 + 30, 0x40, VerificationFailed, "report signature does not verify"),
    ("reserved-tail", 0x4A0 - 1, 0x01, MalformedEvidence, "reserved bytes"),
]


@pytest.mark.parametrize(("field", "offset", "mask", "error", "fragment"), FLIPS, ids=[f[0] for f in FLIPS])
def test_flipped_report_byte_is_refused(
    psp: SimPsp,
    trust: TrustConfig,
    field: str,
    offset: int,
    mask: int,
    error: type[Exception],
    fragment: str,
) -> None:
    nonce, key = secrets.token_bytes(32), identity.new_key()
    bundle = evidence(psp, nonce, key)
    report = bytearray(bundle.report)
    assert len(report) == REPORT_SIZE
    report[offset] ^= mask
    # A well-formed certificate for the same key and nonce, carrying the altered report.
    tampered = dataclasses.replace(bundle, report=bytes(report))
    with pytest.raises(error, match=fragment):
        appraise(cert_der(key, tampered), nonce, trust)
    # The untouched bundle, in an otherwise identical certificate, passes.
    appraise(cert_der(key, bundle), nonce, trust)


def test_truncated_report_is_malformed(psp: SimPsp, trust: TrustConfig) -> None:
    nonce, key = secrets.token_bytes(32), identity.new_key()
    bundle = evidence(psp, nonce, key)
    short = dataclasses.replace(bundle, report=bundle.report[:-1])
    with pytest.raises(MalformedEvidence, match=f"must be {REPORT_SIZE} bytes"):
        appraise(cert_der(key, short), nonce, trust)


# --------------------------------------------------------------------------- binding and freshness


def test_replayed_report_for_another_nonce(psp: SimPsp, trust: TrustConfig) -> None:
    # An attacker replays evidence (and its key) from an earlier session.
    cert, old_nonce, _, _ = genuine(psp)
    appraise(cert, old_nonce, trust)  # genuine in its own session
    with pytest.raises(VerificationFailed, match="nonce"):
        appraise(cert, secrets.token_bytes(32), trust)


def test_certificate_for_another_key(psp: SimPsp, trust: TrustConfig) -> None:
    # Evidence bound to key A, presented in a certificate for key B (the
    # attacker holds B and wants the client to trust it).
    nonce = secrets.token_bytes(32)
    key_a, key_b = identity.new_key(), identity.new_key()
    bundle = evidence(psp, nonce, key_a)
    appraise(cert_der(key_a, bundle), nonce, trust)
    with pytest.raises(VerificationFailed, match="certificate for another key"):
        appraise(cert_der(key_b, bundle), nonce, trust)


def test_certificate_not_self_signed(psp: SimPsp, trust: TrustConfig) -> None:
    cert, nonce, _, _ = genuine(psp)
    tampered = bytearray(cert)
    tampered[-1] ^= 0x01  # last byte of the ECDSA signature value
    with pytest.raises(VerificationFailed, match="not self-signed"):
        appraise(bytes(tampered), nonce, trust)


def test_certificate_without_evidence(trust: TrustConfig) -> None:
    key = identity.new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no evidence")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(MalformedEvidence, match="no evidence extension"):
        appraise(cert.public_bytes(serialization.Encoding.DER), secrets.token_bytes(32), trust)


def test_garbage_certificate(trust: TrustConfig) -> None:
    with pytest.raises(MalformedEvidence, match="does not parse"):
        appraise(b"\x30\x03\x02\x01\x00", secrets.token_bytes(32), trust)


def test_missing_vcek(psp: SimPsp, trust: TrustConfig) -> None:
    nonce, key = secrets.token_bytes(32), identity.new_key()
    bundle = evidence(psp, nonce, key)
    stripped = dataclasses.replace(bundle, certs=tuple(c for c in bundle.certs if c[0] != "vcek"))
    with pytest.raises(MalformedEvidence, match="VCEK"):
        appraise(cert_der(key, stripped), nonce, trust)


# --------------------------------------------------------------------------- trust anchors


def test_untrusted_sim_root(psp: SimPsp, trust: TrustConfig, foreign_state: Path) -> None:
    # Genuine evidence from another sim chip, whose whole chain (ARK included)
    # travels in the bundle: the carried ARK must never be the trust anchor.
    foreign = SimPsp(simchip.load_chip(foreign_state), MEASUREMENT)
    nonce, key = secrets.token_bytes(32), identity.new_key()
    cert = cert_der(key, evidence(foreign, nonce, key))
    with pytest.raises(VerificationFailed, match="signature does not verify"):
        appraise(cert, nonce, trust)
    # Control: the same certificate passes when its own root is the trusted one.
    own = dataclasses.replace(trust, sim_root=simchip.sim_root(foreign_state))
    assert appraise(cert, nonce, own).claims.platform == "sim"


def test_vcek_from_another_chip(psp: SimPsp, trust: TrustConfig, foreign_state: Path) -> None:
    # Report signed by the foreign VCEK, with the foreign VCEK swapped into an
    # otherwise genuine chain (our ASK and ARK).
    foreign = SimPsp(simchip.load_chip(foreign_state), MEASUREMENT)
    nonce, key = secrets.token_bytes(32), identity.new_key()
    ours = dict(evidence(psp, nonce, key).certs)
    theirs = evidence(foreign, nonce, key)
    mixed = dataclasses.replace(
        theirs, certs=tuple(sorted({**ours, "vcek": dict(theirs.certs)["vcek"]}.items()))
    )
    with pytest.raises(VerificationFailed, match="endorsement certificate"):
        appraise(cert_der(key, mixed), nonce, trust)


def test_verification_time_outside_validity(psp: SimPsp, trust: TrustConfig) -> None:
    cert, nonce, _, _ = genuine(psp)
    late = datetime.now(UTC) + timedelta(days=365 * 30)
    with pytest.raises(VerificationFailed, match="expired"):
        appraise(cert, nonce, dataclasses.replace(trust, at=late))
    early = datetime.now(UTC) - timedelta(days=30)
    with pytest.raises(VerificationFailed, match="not yet valid"):
        appraise(cert, nonce, dataclasses.replace(trust, at=early))


# --------------------------------------------------------------------------- policy


def test_sim_is_refused_by_the_default_policy(psp: SimPsp, trust: TrustConfig) -> None:
    cert, nonce, _, _ = genuine(psp)
    with pytest.raises(PolicyRejected, match="--allow-sim"):
        appraise(cert, nonce, dataclasses.replace(trust, policy=default_policy(MEASUREMENT)))
    with pytest.raises(PolicyRejected, match="--allow-sim"):
        appraise(cert, nonce, dataclasses.replace(trust, policy=None))


def test_sim_without_a_sim_root_is_refused(psp: SimPsp, trust: TrustConfig) -> None:
    cert, nonce, _, _ = genuine(psp)
    with pytest.raises(PolicyRejected, match="no sim root"):
        appraise(cert, nonce, dataclasses.replace(trust, sim_root=None))


def test_unexpected_measurement(psp: SimPsp, trust: TrustConfig) -> None:
    cert, nonce, _, _ = genuine(psp)
    other = bytes(48)
    with pytest.raises(PolicyRejected, match=other.hex()) as info:
        appraise(cert, nonce, dataclasses.replace(trust, policy=development_policy(other)))
    assert MEASUREMENT.hex() in str(info.value)  # names expected and actual


def test_accepted_appraisal_carries_the_policy_decision(psp: SimPsp, trust: TrustConfig) -> None:
    cert, nonce, _, _ = genuine(psp)
    appraisal = appraise(cert, nonce, trust)
    assert appraisal.decision is not None and appraisal.decision.accepted
    assert any("policy" in c for c in appraisal.checks)
