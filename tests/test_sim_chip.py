"""The sim chip as ensure_chip generates it (ARK -> ASK -> VCEK, built like
AMD's), and the sim PSP's reports through the one SNP verifier."""

from __future__ import annotations

import json
import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from snp_support import VERIFY_AT, sample
from stockade.errors import VerificationFailed
from stockade.evidence.pki import fingerprint, load_der
from stockade.evidence.sim import chip as simchip
from stockade.evidence.sim.channel import ReportRequest, ReportResponse
from stockade.evidence.sim.psp import SimPsp
from stockade.evidence.snp.abi import AttestationReport, Product, SigningKey
from stockade.evidence.snp.certs import read_extensions
from stockade.evidence.snp.verify import TrustAnchor, amd_anchors, verify_report

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
MEASUREMENT = bytes.fromhex("ab" * 48)
HOST_DATA = bytes.fromhex("cd" * 32)
REPORT_DATA = bytes(range(64))


def chip_dir(state_dir: Path) -> Path:
    return simchip.sim_dir(state_dir) / "chip"


def cert(state_dir: Path, name: str) -> x509.Certificate:
    return load_der((chip_dir(state_dir) / f"{name}.der").read_bytes(), name)


def assert_pss_sha384(child: x509.Certificate, issuer: x509.Certificate) -> None:
    assert child.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS
    assert isinstance(child.signature_hash_algorithm, hashes.SHA384)
    params = child.signature_algorithm_parameters
    assert isinstance(params, padding.PSS)
    assert params._salt_length == 48
    assert isinstance(params.mgf, padding.MGF1)
    assert isinstance(params.mgf._algorithm, hashes.SHA384)
    assert child.issuer == issuer.subject
    key = issuer.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(child.signature, child.tbs_certificate_bytes, PSS, hashes.SHA384())


def test_ark_is_self_signed_rsa4096_pss(state_dir: Path) -> None:
    ark = cert(state_dir, "ark")
    key = ark.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 4096
    assert ark.subject == ark.issuer
    assert_pss_sha384(ark, ark)
    bc = ark.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    assert "NO HARDWARE PROTECTION" in ark.subject.rfc4514_string()


def test_ask_is_signed_by_ark(state_dir: Path) -> None:
    ark, ask = cert(state_dir, "ark"), cert(state_dir, "ask")
    key = ask.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 4096
    assert_pss_sha384(ask, ark)
    assert ask.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_vcek_is_p384_signed_by_ask_with_amd_extensions(state_dir: Path) -> None:
    ask, vcek = cert(state_dir, "ask"), cert(state_dir, "vcek")
    key = vcek.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp384r1"
    assert_pss_sha384(vcek, ask)
    assert vcek.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "SEV-VCEK"
    ext = read_extensions(vcek)
    chip = simchip.load_chip(state_dir)
    info = json.loads((chip_dir(state_dir) / "chip.json").read_text())
    assert ext.product_name == "Milan-B0" == simchip.PRODUCT_NAME == info["product"]
    assert ext.product is Product.MILAN
    assert ext.tcb == simchip.TCB == info["tcb"]
    assert ext.hwid == chip.chip_id == bytes.fromhex(info["chip_id"])
    assert len(chip.chip_id) == 64
    assert ext.csp_id is None
    # The VCEK private key on disk is the key of the certificate.
    assert chip.vcek_key.public_key().public_numbers() == key.public_numbers()


def test_validity_windows_cover_now(state_dir: Path) -> None:
    now = datetime.now().astimezone()
    for name in ("ark", "ask", "vcek"):
        c = cert(state_dir, name)
        assert c.not_valid_before_utc < now < c.not_valid_after_utc, name
    assert cert(state_dir, "vcek").not_valid_after_utc - now > timedelta(days=365 * 6)


def test_key_files_are_private(state_dir: Path) -> None:
    directory = chip_dir(state_dir)
    keys = sorted(p.name for p in directory.glob("*.key"))
    assert keys == ["ark.key", "ask.key", "vcek.key"]
    for name in keys:
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0
    # Each key belongs to its certificate.
    for name in ("ark", "ask"):
        key = serialization.load_pem_private_key((directory / f"{name}.key").read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        pub = cert(state_dir, name).public_key()
        assert isinstance(pub, rsa.RSAPublicKey)
        assert key.public_key().public_numbers() == pub.public_numbers()


def test_ensure_chip_is_idempotent(state_dir: Path) -> None:
    directory = chip_dir(state_dir)

    def snapshot() -> dict[str, tuple[bytes, int]]:
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}

    before = snapshot()
    assert simchip.ensure_chip(state_dir) is False
    assert simchip.ensure_chip(state_dir) is False
    assert snapshot() == before
    assert simchip.sim_root(state_dir) == before["ark.der"][0]
    simchip.check_chip(state_dir)
    # No leftover temporary chip directories.
    assert [p.name for p in simchip.sim_dir(state_dir).iterdir() if p.name.startswith(".chip-")] == []


@pytest.fixture(scope="module")
def psp(state_dir: Path) -> SimPsp:
    return SimPsp(simchip.load_chip(state_dir), measurement=MEASUREMENT, host_data=HOST_DATA)


def test_sim_psp_report_verifies_with_the_sim_root(state_dir: Path, psp: SimPsp) -> None:
    response = psp.report(ReportRequest(report_data=REPORT_DATA, vmpl=2))
    certs = dict(response.certs)
    assert certs["ark"] == simchip.sim_root(state_dir)
    anchor = TrustAnchor("sim", Product.MILAN, simchip.sim_root(state_dir))
    result = verify_report(
        response.report, certs["vcek"], certs["ask"], [anchor], datetime.now().astimezone()
    )
    claims = result.claims
    assert claims.platform == "sim"
    assert not claims.hardware_protected
    assert claims.to_json()["hardware_protection"] is False
    assert claims.report_data == REPORT_DATA
    assert claims.measurement == MEASUREMENT
    assert claims.host_data == HOST_DATA
    assert claims.vmpl == 2
    assert (claims.product, claims.signer) == ("Milan", "VCEK")
    assert dict(claims.tcb) == simchip.TCB
    assert claims.chip_id == psp.chip.chip_id
    assert claims.firmware == "1.55.29"
    assert claims.report_version == 3
    assert claims.debug is False
    assert claims.root_fingerprint == fingerprint(cert(state_dir, "ark"))

    report = result.report
    assert report.signing_key is SigningKey.VCEK
    assert report.policy.raw == 0x30000
    assert (report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step) == simchip.CPUID
    assert report.current_tcb == report.reported_tcb == report.committed_tcb == report.launch_tcb
    assert report.report_id == psp.report_id
    assert report.report_id_ma == b"\xff" * 32
    assert AttestationReport.from_bytes(response.report).to_bytes() == response.report


def test_sim_psp_reports_differ_only_in_report_data_and_signature(psp: SimPsp) -> None:
    a = psp.report(ReportRequest(report_data=bytes(64))).report
    b = psp.report(ReportRequest(report_data=b"\x01" * 64)).report
    diff = {i for i in range(len(a)) if a[i] != b[i]}
    assert diff
    assert all(0x050 <= i < 0x090 or 0x2A0 <= i < 0x330 for i in diff)


def test_sim_psp_response_survives_cbor(psp: SimPsp) -> None:
    response = psp.report(ReportRequest(report_data=REPORT_DATA))
    again = ReportResponse.from_cbor(response.to_cbor())
    assert again.report == response.report
    assert dict(again.certs) == dict(response.certs)


def test_sim_report_is_refused_by_amd_roots(psp: SimPsp) -> None:
    response = psp.report(ReportRequest(report_data=REPORT_DATA))
    certs = dict(response.certs)
    with pytest.raises(VerificationFailed, match=r"no trusted root") as info:
        verify_report(
            response.report, certs["vcek"], certs["ask"], amd_anchors(), datetime.now().astimezone()
        )
    assert "ARK-Sim-Milan" in str(info.value)


def test_sim_and_amd_roots_trusted_together(state_dir: Path, psp: SimPsp) -> None:
    """Both a sim and AMD's Milan root trusted at once: each report verifies
    under its own root and reports its own platform, in either order."""
    sim_anchor = TrustAnchor("sim", Product.MILAN, simchip.sim_root(state_dir))
    response = psp.report(ReportRequest(report_data=REPORT_DATA))
    certs = dict(response.certs)
    oak = sample("milan-v3-oak")
    for anchors in ([*amd_anchors(), sim_anchor], [sim_anchor, *amd_anchors()]):
        sim_claims = verify_report(
            response.report, certs["vcek"], certs["ask"], anchors, datetime.now().astimezone()
        ).claims
        assert sim_claims.platform == "sim"
        real_claims = verify_report(oak.report, oak.vcek_der, oak.ask_der, anchors, VERIFY_AT).claims
        assert real_claims.platform == "snp"
        assert real_claims.root_fingerprint != sim_claims.root_fingerprint


def test_sim_report_with_a_real_vcek_is_refused(psp: SimPsp) -> None:
    """Real AMD certificates do not endorse the sim chip's key."""
    response = psp.report(ReportRequest(report_data=REPORT_DATA))
    oak = sample("milan-v3-oak")
    with pytest.raises(VerificationFailed, match=r"VCEK hwID does not match the report CHIP_ID"):
        verify_report(response.report, oak.vcek_der, oak.ask_der, amd_anchors(), VERIFY_AT)
