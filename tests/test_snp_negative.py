"""One test per check of the SEV-SNP verifier: each makes exactly that check
fail (real vectors where real data can, otherwise the sim chain re-signed
with the sim chip's own keys) and asserts the exception class and message."""

from __future__ import annotations

import struct
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from snp_support import VERIFY_AT, SimKeys, patch, sample, sign
from stockade.errors import MalformedEvidence, StockadeError, VerificationFailed
from stockade.evidence.pki import der_of, load_der
from stockade.evidence.sim.channel import ReportRequest
from stockade.evidence.sim.psp import SimPsp
from stockade.evidence.snp.abi import AttestationReport, Product, SigningKey, TcbVersion
from stockade.evidence.snp.certs import OID_PRODUCT_NAME
from stockade.evidence.snp.verify import (
    TrustAnchor,
    VerifiedReport,
    amd_anchors,
    bundled_intermediate,
    verify_report,
)

OAK = "milan-v3-oak"  # a Milan v3 VCEK report valid 2025-01-15 .. 2032-01-15
MEASUREMENT = bytes(range(48))
REPORT_DATA = bytes(range(64, 128))


@pytest.fixture(scope="module")
def sim(state_dir: Path) -> SimKeys:
    return SimKeys(state_dir)


@pytest.fixture(scope="module")
def sim_report(sim: SimKeys) -> bytes:
    psp = SimPsp(sim.chip, measurement=MEASUREMENT)
    return psp.report(ReportRequest(report_data=REPORT_DATA)).report


def sim_verify(
    sim: SimKeys, report: bytes, vcek: bytes | None = None, ask: bytes | None = None, **kw: Any
) -> VerifiedReport:
    at = kw.pop("at", None) or datetime.now().astimezone()
    return verify_report(
        report,
        sim.chip.vcek_der if vcek is None else vcek,
        sim.chip.ask_der if ask is None else ask,
        kw.pop("anchors", None) or [sim.anchor],
        at,
        **kw,
    )


def real_verify(name: str, **kw: Any) -> VerifiedReport:
    s = sample(name)
    return verify_report(
        kw.pop("report", s.report),
        kw.pop("vcek", s.vcek_der),
        kw.pop("ask", s.ask_der),
        kw.pop("anchors", amd_anchors()),
        kw.pop("at", VERIFY_AT),
        **kw,
    )


def test_baselines_verify(sim: SimKeys, sim_report: bytes) -> None:
    """Every negative below starts from one of these, which verify."""
    assert real_verify(OAK).claims.platform == "snp"
    claims = sim_verify(sim, sim_report).claims
    assert (claims.platform, claims.measurement, claims.report_data) == ("sim", MEASUREMENT, REPORT_DATA)
    # A sim report re-signed unchanged still verifies: the helper signs correctly.
    assert sim_verify(sim, sign(sim_report, sim.vcek_key)).claims.report_data == REPORT_DATA


# --- roots and chain ---------------------------------------------------------------


def test_wrong_product_root() -> None:
    genoa_only = [a for a in amd_anchors() if a.product is Product.GENOA]
    with pytest.raises(VerificationFailed, match=r"^no trusted root for product Milan$"):
        real_verify(OAK, anchors=genoa_only)
    with pytest.raises(VerificationFailed, match=r"^no trusted root for product Milan$"):
        real_verify(OAK, anchors=[])


def test_ask_of_another_product() -> None:
    genoa_ask = bundled_intermediate(Product.GENOA, SigningKey.VCEK)
    with pytest.raises(
        VerificationFailed,
        match=r"no trusted root for product Milan issued the intermediate certificate \(its issuer is CN=ARK-Genoa",
    ):
        real_verify(OAK, ask=genoa_ask)


def test_endorsement_not_issued_by_the_intermediate() -> None:
    """A Milan VCEK presented with the Milan ASVK (which does chain to ARK-Milan)."""
    asvk = bundled_intermediate(Product.MILAN, SigningKey.VLEK)
    with pytest.raises(
        VerificationFailed,
        match=r"endorsement certificate \(VCEK/VLEK\) issuer CN=SEV-Milan,.* is not CN=SEV-VLEK-Milan",
    ):
        real_verify(OAK, ask=asvk)


def test_intermediate_signature_by_another_key_with_the_root_name(sim: SimKeys, sim_report: bytes) -> None:
    rogue_root_key = rsa.generate_private_key(65537, 2048)
    forged_ask = sim.ca(sim.ask.subject, sim.ark.subject, sim.ask_key.public_key(), rogue_root_key)
    with pytest.raises(
        VerificationFailed,
        match=r"intermediate certificate \(ASK/ASVK\) signature does not verify under .*CN=ARK-Sim-Milan",
    ):
        sim_verify(sim, sim_report, ask=forged_ask)


def test_endorsement_signature_by_another_key_with_the_ask_name(sim: SimKeys, sim_report: bytes) -> None:
    rogue_ask_key = rsa.generate_private_key(65537, 2048)
    forged_vcek = sim.vcek(issuer_key=rogue_ask_key)
    with pytest.raises(
        VerificationFailed,
        match=r"endorsement certificate \(VCEK/VLEK\) signature does not verify under .*CN=SEV-Sim-Milan",
    ):
        sim_verify(sim, sim_report, vcek=forged_vcek)


def test_trusted_root_that_is_not_self_signed(sim: SimKeys, sim_report: bytes) -> None:
    other_key = rsa.generate_private_key(65537, 2048)
    # Same name and key as the sim ARK, but the self-signature is by another key.
    broken_root = sim.ca(sim.ark.subject, sim.ark.subject, sim.ark_key.public_key(), other_key)
    with pytest.raises(VerificationFailed, match=r"Milan root \(self-signature\) signature does not verify"):
        sim_verify(sim, sim_report, anchors=[TrustAnchor("sim", Product.MILAN, broken_root)])


def test_certificate_not_signed_with_pss(sim: SimKeys, sim_report: bytes) -> None:
    with pytest.raises(
        VerificationFailed, match=r"endorsement certificate \(VCEK/VLEK\) is not signed with RSASSA-PSS"
    ):
        sim_verify(sim, sim_report, vcek=sim.vcek(pss=False))


def test_sim_report_refused_under_amd_roots(sim: SimKeys, sim_report: bytes) -> None:
    with pytest.raises(
        VerificationFailed, match=r"no trusted root for product Milan issued the intermediate"
    ):
        sim_verify(sim, sim_report, anchors=amd_anchors())


# --- validity period -----------------------------------------------------------------


def test_expired_endorsement() -> None:
    vcek = load_der(sample(OAK).vcek_der, OAK)
    at = vcek.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(VerificationFailed, match=r"^endorsement certificate expired at 2032-01-15T21:21:54"):
        real_verify(OAK, at=at)
    assert real_verify(OAK, at=vcek.not_valid_after_utc).claims.verified_at == vcek.not_valid_after_utc


def test_expired_vlek_today() -> None:
    """The AWS VLEK was valid for a year only (until 2025-12-10)."""
    with pytest.raises(VerificationFailed, match=r"^endorsement certificate expired at 2025-12-10T22:14:21"):
        real_verify("milan-v3-vlek-aws-trustee", at=datetime.fromisoformat("2026-01-01T00:00:00+00:00"))


def test_endorsement_not_yet_valid() -> None:
    vcek = load_der(sample(OAK).vcek_der, OAK)
    at = vcek.not_valid_before_utc - timedelta(seconds=1)
    with pytest.raises(
        VerificationFailed, match=r"^endorsement certificate is not yet valid at 2025-01-15T21:21:53"
    ):
        real_verify(OAK, at=at)
    assert real_verify(OAK, at=vcek.not_valid_before_utc).claims.product == "Milan"


def test_root_not_yet_valid(sim: SimKeys, sim_report: bytes) -> None:
    at = sim.ark.not_valid_before_utc - timedelta(days=1)
    with pytest.raises(VerificationFailed, match=r"^root is not yet valid at"):
        sim_verify(sim, sim_report, at=at)


def test_intermediate_expired(sim: SimKeys, sim_report: bytes) -> None:
    now = datetime.now().astimezone()
    short_ask = sim.ca(
        sim.ask.subject,
        sim.ark.subject,
        sim.ask_key.public_key(),
        sim.ark_key,
        not_before=now - timedelta(days=10),
        not_after=now - timedelta(days=1),
    )
    with pytest.raises(VerificationFailed, match=r"^intermediate certificate expired at"):
        sim_verify(sim, sim_report, ask=short_ask)


def test_naive_datetime_is_a_programming_error(sim: SimKeys, sim_report: bytes) -> None:
    with pytest.raises(ValueError, match=r"verification time must be timezone-aware"):
        real_verify(OAK, at=datetime(2025, 8, 1))
    with pytest.raises(ValueError, match=r"timezone-aware"):
        sim_verify(sim, sim_report, at=datetime.now())


# --- endorsement contents ------------------------------------------------------------------


def test_tcb_extension_differs_from_reported_tcb(sim: SimKeys, sim_report: bytes) -> None:
    """A VCEK for the same key and chip but another SNP SPL."""
    vcek = sim.vcek(tcb={"bootloader": 4, "tee": 0, "snp": 23, "microcode": 219})
    with pytest.raises(
        VerificationFailed,
        match=r"^endorsement TCB does not match REPORTED_TCB \(snp: certificate 23 report 24\)$",
    ):
        sim_verify(sim, sim_report, vcek=vcek)


def test_reported_tcb_differs_from_tcb_extension(sim: SimKeys, sim_report: bytes) -> None:
    """The report's REPORTED_TCB changed (microcode 220) and re-signed."""
    tcb = TcbVersion.from_components(Product.MILAN, bootloader=4, tee=0, snp=24, microcode=220)
    report = sign(patch(sim_report, 0x180, struct.pack("<Q", tcb.raw)), sim.vcek_key)
    with pytest.raises(VerificationFailed, match=r"REPORTED_TCB \(microcode: certificate 219 report 220\)$"):
        sim_verify(sim, report)


def test_current_tcb_is_not_what_is_checked(sim: SimKeys, sim_report: bytes) -> None:
    """Only REPORTED_TCB selects the VCEK: a different CURRENT_TCB verifies."""
    tcb = TcbVersion.from_components(Product.MILAN, bootloader=4, tee=0, snp=25, microcode=220)
    report = sign(patch(sim_report, 0x038, struct.pack("<Q", tcb.raw)), sim.vcek_key)
    assert dict(sim_verify(sim, report).claims.tcb)["snp"] == 24


def test_real_tcb_mismatch_turin() -> None:
    """virtee's Turin VCEK (another chip, ucode 9) with Oak's Turin report (ucode 71)."""
    virtee = sample("extra-turin-vcek-virtee")
    with pytest.raises(VerificationFailed, match=r"microcode: certificate 9 report 71"):
        real_verify("turin-v5-oak", vcek=virtee.vcek_der, ask=virtee.ask_der)


def test_hwid_differs_from_chip_id(sim: SimKeys, sim_report: bytes) -> None:
    report = sign(patch(sim_report, 0x1A0, bytes(range(64))), sim.vcek_key)
    with pytest.raises(VerificationFailed, match=r"^VCEK hwID does not match the report CHIP_ID$"):
        sim_verify(sim, report)


def test_real_hwid_mismatch() -> None:
    """Azure's and Oak's Milan hosts have the same TCB but are different chips."""
    azure = sample("milan-v3-azure-trustee")
    with pytest.raises(VerificationFailed, match=r"^VCEK hwID does not match the report CHIP_ID$"):
        real_verify(OAK, vcek=azure.vcek_der)
    with pytest.raises(VerificationFailed, match=r"^VCEK hwID does not match the report CHIP_ID$"):
        real_verify("milan-v3-azure-trustee", vcek=sample(OAK).vcek_der)


def test_short_hwid_is_refused_on_milan(sim: SimKeys, sim_report: bytes) -> None:
    """An 8-byte hwID (Turin style) on a Milan VCEK is refused, even when the
    report's CHIP_ID is those 8 bytes followed by zeros (Turin padding is
    covered in test_snp_crl_and_strictness.py)."""
    vcek = sim.vcek(hwid=sim.chip.chip_id[:8])
    with pytest.raises(MalformedEvidence, match=r"^VCEK hwID is 8 bytes; a Milan VCEK's is 64$"):
        sim_verify(sim, sim_report, vcek=vcek)
    padded = sign(patch(sim_report, 0x1A0, sim.chip.chip_id[:8] + bytes(56)), sim.vcek_key)
    with pytest.raises(MalformedEvidence, match=r"^VCEK hwID is 8 bytes; a Milan VCEK's is 64$"):
        sim_verify(sim, padded, vcek=vcek)


def test_vcek_without_hwid(sim: SimKeys, sim_report: bytes) -> None:
    with pytest.raises(VerificationFailed, match=r"^VCEK lacks the hwID extension$"):
        sim_verify(sim, sim_report, vcek=sim.vcek(drop_hwid=True))


def test_vlek_report_with_a_vcek_certificate() -> None:
    oak = sample(OAK)
    with pytest.raises(
        VerificationFailed, match=r"^report says it is signed by a VLEK but the certificate is SEV-VCEK$"
    ):
        real_verify("milan-v3-vlek-aws-trustee", vcek=oak.vcek_der, ask=oak.ask_der)


def test_vcek_report_with_a_vlek_certificate() -> None:
    vlek = sample("milan-v3-vlek-aws-trustee")
    with pytest.raises(
        VerificationFailed, match=r"^report says it is signed by a VCEK but the certificate is SEV-VLEK$"
    ):
        real_verify(OAK, vcek=vlek.vcek_der, ask=vlek.ask_der)


def test_sim_report_claiming_vlek(sim: SimKeys, sim_report: bytes) -> None:
    """KEY_INFO.SIGNING_KEY flipped to VLEK and re-signed by the (VCEK) key."""
    report = sign(patch(sim_report, 0x048, struct.pack("<I", 1 << 2)), sim.vcek_key)
    assert AttestationReport.from_bytes(report).signing_key is SigningKey.VLEK
    with pytest.raises(
        VerificationFailed, match=r"^report says it is signed by a VLEK but the certificate is SEV-VCEK$"
    ):
        sim_verify(sim, report)


def test_sim_vlek_certificate_for_a_vcek_report(sim: SimKeys, sim_report: bytes) -> None:
    vlek = sim.vcek(cn="SEV-VLEK", drop_hwid=True)
    with pytest.raises(
        VerificationFailed, match=r"^report says it is signed by a VCEK but the certificate is SEV-VLEK$"
    ):
        sim_verify(sim, sim_report, vcek=vlek)


def test_endorsement_key_not_p384(sim: SimKeys, sim_report: bytes) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(VerificationFailed, match=r"^endorsement key is not ECDSA P-384$"):
        sim_verify(sim, sim_report, vcek=sim.vcek(public_key=p256))


def test_endorsement_for_another_key(sim: SimKeys, sim_report: bytes) -> None:
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(
        VerificationFailed, match=r"^report signature does not verify with the endorsement key$"
    ):
        sim_verify(sim, sim_report, vcek=sim.vcek(public_key=other))


def test_endorsement_without_product_name(sim: SimKeys, sim_report: bytes) -> None:
    with pytest.raises(MalformedEvidence, match=r"lacks the productName extension"):
        sim_verify(sim, sim_report, vcek=sim.vcek(product_name=None))


def test_endorsement_with_unknown_product(sim: SimKeys, sim_report: bytes) -> None:
    with pytest.raises(MalformedEvidence, match=r"names unknown product 'Naples-B0'"):
        sim_verify(sim, sim_report, vcek=sim.vcek(product_name="Naples-B0"))


def test_endorsement_product_contradicts_cpuid(sim: SimKeys, sim_report: bytes) -> None:
    with pytest.raises(
        VerificationFailed,
        match=r"^endorsement certificate is for Genoa \(productName 'Genoa'\) but the report is from a Milan$",
    ):
        sim_verify(sim, sim_report, vcek=sim.vcek(product_name="Genoa"))


def test_endorsement_missing_an_spl(sim: SimKeys, sim_report: bytes) -> None:
    with pytest.raises(MalformedEvidence, match=r"lacks the microcode SPL extension"):
        sim_verify(sim, sim_report, vcek=sim.vcek(tcb={"bootloader": 4, "tee": 0, "snp": 24}))


def test_endorsement_with_malformed_product_name(sim: SimKeys, sim_report: bytes) -> None:
    """productName as a UTF8String instead of an IA5String."""
    bad = sim.vcek(product_name=None, extra=[(OID_PRODUCT_NAME, b"\x0c\x08Milan-B0")])
    with pytest.raises(MalformedEvidence, match=r"productName: expected DER tag 0x16"):
        sim_verify(sim, sim_report, vcek=bad)


@pytest.mark.parametrize("blob", [b"", b"\x30\x00", b"not a certificate", bytes(100)])
def test_garbage_certificates(sim: SimKeys, sim_report: bytes, blob: bytes) -> None:
    with pytest.raises(MalformedEvidence, match=r"^endorsement certificate: not a valid DER certificate"):
        sim_verify(sim, sim_report, vcek=blob)
    with pytest.raises(MalformedEvidence, match=r"^intermediate certificate: not a valid DER certificate"):
        sim_verify(sim, sim_report, ask=blob)


def test_report_signature(sim: SimKeys, sim_report: bytes) -> None:
    tampered = patch(sim_report, 0x050, b"\xff")  # REPORT_DATA changed, not re-signed
    with pytest.raises(
        VerificationFailed, match=r"^report signature does not verify with the endorsement key$"
    ):
        sim_verify(sim, tampered)
    with pytest.raises(VerificationFailed, match=r"^report signature does not verify"):
        sim_verify(sim, patch(sim_report, 0x2A0, bytes(144)))  # r = s = 0


# --- report structure --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 0x2A0, 0x49F, 0x4A1, 0x1000])
def test_truncated_or_oversized_report(size: int) -> None:
    data = (sample(OAK).report * 4)[:size]
    with pytest.raises(MalformedEvidence, match=rf"^SNP report must be 1184 bytes, got {size}$"):
        AttestationReport.from_bytes(data)
    with pytest.raises(MalformedEvidence, match=r"must be 1184 bytes"):
        real_verify(OAK, report=data)


@pytest.mark.parametrize("version", [0, 1, 4, 6, 7, 0x100, 0xFFFFFFFF])
def test_unknown_version(sim: SimKeys, sim_report: bytes, version: int) -> None:
    report = sign(patch(sim_report, 0x000, struct.pack("<I", version)), sim.vcek_key)
    with pytest.raises(MalformedEvidence, match=rf"^unsupported SNP report version {version} "):
        sim_verify(sim, report)


@pytest.mark.parametrize("algo", [0, 2, 0x100, 0xFFFFFFFF])
def test_unknown_signature_algorithm(sim: SimKeys, sim_report: bytes, algo: int) -> None:
    report = sign(patch(sim_report, 0x034, struct.pack("<I", algo)), sim.vcek_key)
    with pytest.raises(MalformedEvidence, match=rf"^unsupported SNP signature algorithm {algo} "):
        sim_verify(sim, report)


# (offset, version the report is turned into, range named in the message)
RESERVED = [
    (0x04C, 3, "0x04C-0x04F"),
    (0x04F, 3, "0x04C-0x04F"),
    (0x18B, 3, "0x18B-0x19F"),
    (0x19F, 3, "0x18B-0x19F"),
    (0x188, 2, "0x188-0x18A"),  # CPUID bytes are reserved in a v2 report
    (0x1EB, 3, "0x1EB-0x1EB"),
    (0x1EF, 3, "0x1EF-0x1EF"),
    (0x1F8, 3, "0x1F8-0x29F"),  # mitigation vectors are reserved before v5
    (0x29F, 3, "0x1F8-0x29F"),
    (0x208, 5, "0x208-0x29F"),
    (0x330, 3, "0x330-0x49F"),  # after r and s inside the signature field
    (0x49F, 3, "0x330-0x49F"),
]


@pytest.mark.parametrize(("offset", "version", "where"), RESERVED)
def test_nonzero_reserved_bytes(
    sim: SimKeys, sim_report: bytes, offset: int, version: int, where: str
) -> None:
    report = patch(sim_report, 0x000, struct.pack("<I", version))
    if version == 2:
        report = patch(report, 0x188, bytes(3))
    report = sign(report, sim.vcek_key)
    assert AttestationReport.from_bytes(report).version == version  # the baseline parses
    bad = patch(report, offset, b"\x01")
    if offset < 0x2A0:
        bad = sign(bad, sim.vcek_key)
    with pytest.raises(MalformedEvidence, match=rf"^SNP report reserved bytes {where} are not zero$"):
        sim_verify(sim, bad, product_hint=Product.MILAN)


@pytest.mark.parametrize("bit", [5, 8, 31])
def test_key_info_reserved_bits(sim: SimKeys, sim_report: bytes, bit: int) -> None:
    report = sign(patch(sim_report, 0x048, struct.pack("<I", 1 << bit)), sim.vcek_key)
    with pytest.raises(MalformedEvidence, match=r"^SNP report KEY_INFO reserved bits set"):
        sim_verify(sim, report)


@pytest.mark.parametrize("value", [2, 3, 4, 5, 6])
def test_reserved_signing_key(sim: SimKeys, sim_report: bytes, value: int) -> None:
    report = sign(patch(sim_report, 0x048, struct.pack("<I", value << 2)), sim.vcek_key)
    with pytest.raises(MalformedEvidence, match=rf"^SNP report signing key {value} is reserved$"):
        sim_verify(sim, report)


def test_unsigned_report(sim: SimKeys, sim_report: bytes) -> None:
    report = patch(sim_report, 0x048, struct.pack("<I", 7 << 2))
    assert AttestationReport.from_bytes(report).signing_key is SigningKey.NONE
    with pytest.raises(VerificationFailed, match=r"^report is unsigned \(KEY_INFO signing key = none\)$"):
        sim_verify(sim, report)
    with pytest.raises(VerificationFailed, match=r"unsigned"):
        sim_verify(sim, sign(report, sim.vcek_key))  # even with a valid signature


@pytest.mark.parametrize("policy", [0x0, 0x10000, 0x30000 | 1 << 26, 0x30000 | 1 << 63])
def test_policy_reserved_bits(sim: SimKeys, sim_report: bytes, policy: int) -> None:
    report = sign(patch(sim_report, 0x008, struct.pack("<Q", policy)), sim.vcek_key)
    with pytest.raises(
        MalformedEvidence, match=rf"^SNP guest policy 0x{policy:x} has invalid reserved bits$"
    ):
        sim_verify(sim, report)


@pytest.mark.parametrize(("family", "model"), [(0x17, 0x31), (0x19, 0x21), (0x19, 0x90), (0, 0)])
def test_unknown_cpu(sim: SimKeys, sim_report: bytes, family: int, model: int) -> None:
    report = sign(patch(sim_report, 0x188, bytes([family, model])), sim.vcek_key)
    with pytest.raises(
        MalformedEvidence, match=rf"^unknown AMD CPU family 0x{family:02x} model 0x{model:02x}$"
    ):
        sim_verify(sim, report)


def test_failures_are_stockade_errors_with_exit_codes() -> None:
    """The CLI maps these classes to distinct exit codes."""
    assert issubclass(MalformedEvidence, StockadeError)
    assert issubclass(VerificationFailed, StockadeError)
    assert MalformedEvidence.exit_code != VerificationFailed.exit_code
    assert der_of(load_der(sample(OAK).vcek_der, OAK)) == sample(OAK).vcek_der
