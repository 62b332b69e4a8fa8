"""The SEV-SNP parser and verifier against real reports and certificates that
nobody here wrote (tests/data/vectors, see its README.md), field by field
against each sample's expected.json."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import pytest

from snp_support import (
    COMMON_AMD,
    VERIFY_AT,
    Sample,
    common_chain,
    report_samples,
    sample,
    samples,
)
from stockade.errors import MalformedEvidence, VerificationFailed
from stockade.evidence.pki import der_of, fingerprint, load_der, serial
from stockade.evidence.snp.abi import AttestationReport, Product, SigningKey
from stockade.evidence.snp.certs import read_extensions
from stockade.evidence.snp.verify import (
    _pss_signed_by,
    amd_anchors,
    bundled_intermediate,
    verify_report,
)

REPORTS = report_samples()
IDS = [s.name for s in REPORTS]

EXPECTED_SAMPLES = {
    "extra-turin-vcek-virtee",
    "genoa-v3-azure-trustee",
    "milan-v2-go-sev-guest",
    "milan-v2-idblock-trustee",
    "milan-v3-azure-trustee",
    "milan-v3-oak",
    "milan-v3-vlek-aws-trustee",
    "turin-v5-oak",
}


def test_all_vectors_were_copied() -> None:
    assert {s.name for s in samples()} == EXPECTED_SAMPLES
    assert len(REPORTS) == 7
    for s in samples():
        for name in s.expected.get("files", ["ask_ark.pem", "vcek.der", "expected.json"]):
            assert (s.path / name).is_file(), f"{s.name}/{name}"
        assert s.expected["sources"], s.name
        for src in s.expected["sources"]:
            assert src["license"] == "Apache-2.0"
    assert sorted(p.name for p in COMMON_AMD.iterdir()) == [
        "ask_ark_genoa.pem",
        "ask_ark_milan.pem",
        "ask_ark_turin.pem",
        "asvk_ark_genoa_vlek.pem",
        "asvk_ark_milan_vlek.pem",
        "asvk_ark_turin_vlek.pem",
    ]


@pytest.mark.parametrize("product", list(Product))
def test_bundled_roots_equal_the_vectors_common_chains(product: Product) -> None:
    """The ARKs and intermediates shipped in the package are byte-identical
    to go-sev-guest's copies in the vectors collection."""
    name = product.value.lower()
    ask_ark = common_chain(f"ask_ark_{name}.pem")
    asvk_ark = common_chain(f"asvk_ark_{name}_vlek.pem")
    anchor = next(a for a in amd_anchors() if a.product is product)
    assert anchor.platform == "snp"
    assert anchor.ark_der == der_of(ask_ark[-1]) == der_of(asvk_ark[-1])
    assert bundled_intermediate(product, SigningKey.VCEK) == der_of(ask_ark[0])
    assert bundled_intermediate(product, SigningKey.VLEK) == der_of(asvk_ark[0])
    assert ask_ark[0].subject.rfc4514_string().startswith(f"CN=SEV-{product.value},")
    assert asvk_ark[0].subject.rfc4514_string().startswith(f"CN=SEV-VLEK-{product.value},")


# --- parsing -------------------------------------------------------------------

_BYTES_FIELDS = {
    "family_id",
    "image_id",
    "report_data",
    "measurement",
    "host_data",
    "id_key_digest",
    "author_key_digest",
    "report_id",
    "report_id_ma",
    "chip_id",
}
_INT_FIELDS = {"version", "guest_svn", "vmpl", "signature_algo", "cpuid_fam_id", "cpuid_mod_id", "cpuid_step"}
_TCB_FIELDS = {"current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"}


def _actual(report: AttestationReport, key: str) -> Any:
    """The parsed value of expected.json "fields"[key], in that file's format."""
    if key in _BYTES_FIELDS:
        return getattr(report, key).hex()
    if key in _INT_FIELDS:
        return getattr(report, key)
    if key in _TCB_FIELDS:
        return getattr(report, key).hex()
    if key == "policy":
        return hex(report.policy.raw)
    if key == "platform_info":
        return hex(report.platform_info)
    if key == "key_info(0x48)":
        return hex(report.author_key_en | report.mask_chip_key << 1 | report.signing_key << 2)
    if key == "current_version(major.minor.build)":
        return ".".join(map(str, report.current_version))
    if key == "committed_version(major.minor.build)":
        return ".".join(map(str, report.committed_version))
    if key in ("launch_mit_vector", "current_mit_vector"):
        value = getattr(report, key)
        return None if value is None else value.to_bytes(8, "little").hex()
    if key == "signature_r_le":
        return report.sig_r.to_bytes(72, "little").hex()
    if key == "signature_s_le":
        return report.sig_s.to_bytes(72, "little").hex()
    raise AssertionError(f"expected.json field {key!r} is not mapped by this test")


@pytest.mark.parametrize("s", REPORTS, ids=IDS)
def test_every_expected_field_parses(s: Sample) -> None:
    report = AttestationReport.from_bytes(s.report)
    fields = s.expected["fields"]
    assert len(fields) >= 25
    mismatches = {k: (v, _actual(report, k)) for k, v in fields.items() if _actual(report, k) != v}
    assert not mismatches
    assert report.version == s.expected["report_version"]
    # Fields a version does not have are None, never a misread of reserved bytes.
    if report.version == 2:
        assert "cpuid_fam_id" not in fields
        assert (report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step) == (None, None, None)
    if report.version < 5:
        assert "launch_mit_vector" not in fields
        assert report.launch_mit_vector is None
        assert report.current_mit_vector is None


@pytest.mark.parametrize("s", REPORTS, ids=IDS)
def test_decoded_policy_key_info_and_tcb(s: Sample) -> None:
    report = AttestationReport.from_bytes(s.report)
    decoded = s.expected["decoded"]
    pol = decoded["policy"]
    assert report.policy.abi_minor == pol["abi_minor"]
    assert report.policy.abi_major == pol["abi_major"]
    assert bool(report.policy.raw >> 17 & 1) is pol["reserved_bit17_must_be_1"] is True
    assert report.policy.flags() == {
        "smt_allowed": pol["smt_allowed"],
        "migrate_ma": pol["migrate_ma_allowed"],
        "debug": pol["debug_allowed"],
        "single_socket": pol["single_socket_required"],
        "cxl_allowed": pol["cxl_allowed"],
        "mem_aes_256_xts": pol["mem_aes_256_xts"],
        "rapl_disabled": pol["rapl_dis"],
        "ciphertext_hiding": pol["ciphertext_hiding"],
        "page_swap_disabled": pol["page_swap_disable"],
    }
    ki = decoded["key_info"]
    assert report.author_key_en is ki["author_key_en"]
    assert report.mask_chip_key is ki["mask_chip_key"]
    assert report.signing_key.name == ki["signing_key"] == s.expected["endorsement_key"]
    product = report.product(s.product)
    assert product is s.product
    for name in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        tcb = getattr(report, name)
        assert tcb.components(product) == decoded[name], name
        assert tcb.reserved_ok(product), name


@pytest.mark.parametrize("s", REPORTS, ids=IDS)
def test_round_trip_is_byte_exact(s: Sample) -> None:
    report = AttestationReport.from_bytes(s.report)
    assert report.to_bytes() == s.report
    assert report.signed_bytes == s.report[:0x2A0]
    assert AttestationReport.from_bytes(bytearray(s.report)) == report  # type: ignore[arg-type]
    assert AttestationReport.from_bytes(memoryview(s.report)).to_bytes() == s.report  # type: ignore[arg-type]


@pytest.mark.parametrize("s", REPORTS, ids=IDS)
def test_product_from_cpuid_or_certificate(s: Sample) -> None:
    report = AttestationReport.from_bytes(s.report)
    if report.version == 2:
        with pytest.raises(MalformedEvidence, match=r"has no CPUID fields and no product hint"):
            report.product(None)
        assert report.product(Product.GENOA) is Product.GENOA  # v2: the hint is all there is
    else:
        assert report.product(None) is s.product
        other = Product.GENOA if s.product is not Product.GENOA else Product.MILAN
        with pytest.raises(MalformedEvidence, match=rf"CPUID says {s.product.value} but the endorsement"):
            report.product(other)


# --- certificates ----------------------------------------------------------------


def _rdns(text: str) -> set[str]:
    return set(text.split(","))


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize("s", samples(), ids=[s.name for s in samples()])
def test_endorsement_certificate_facts(s: Sample) -> None:
    exp = s.expected["vcek"]
    cert = load_der(s.vcek_der, s.name)
    assert _rdns(cert.subject.rfc4514_string()) == _rdns(exp["subject"])
    if "issuer" in exp:
        assert _rdns(cert.issuer.rfc4514_string()) == _rdns(exp["issuer"])
    if "serial" in exp:
        assert serial(cert) == exp["serial"] == 0  # AMD's serial-0 certificates load
    assert cert.not_valid_before_utc == _utc(exp["not_before"])
    assert cert.not_valid_after_utc == _utc(exp["not_after"])
    if "ask_subject" in s.expected:
        assert _rdns(s.chain[0].subject.rfc4514_string()) == _rdns(s.expected["ask_subject"])
        assert _rdns(s.ark.subject.rfc4514_string()) == _rdns(s.expected["ark_subject"])

    ext = read_extensions(cert)
    amd = exp["amd_extensions"]
    assert ext.product_name == amd["productName"]
    assert ext.product is s.product
    want_tcb = {
        "bootloader": amd["blSPL"],
        "tee": amd["teeSPL"],
        "snp": amd["snpSPL"],
        "microcode": amd["ucodeSPL"],
    }
    if "fmcSPL" in amd:
        want_tcb["fmc"] = amd["fmcSPL"]
    assert ext.tcb == want_tcb
    if "hwID" in amd:
        assert amd["hwID_encoding"] == "raw bytes"
        assert ext.hwid is not None
        assert ext.hwid.hex() == amd["hwID"]
        assert len(ext.hwid) == (8 if s.product is Product.TURIN else 64)
        assert ext.csp_id is None
    else:
        assert ext.hwid is None
        assert ext.csp_id == amd["csp_id"]


def test_turin_vcek_extensions_and_chain() -> None:
    """virtee/sev's Turin VCEK: fmcSPL present, 8-byte hwID, and its
    VCEK -> ASK -> ARK chain verifies under AMD's bundled Turin root."""
    s = sample("extra-turin-vcek-virtee")
    ext = read_extensions(load_der(s.vcek_der, s.name))
    assert ext.product is Product.TURIN
    assert ext.tcb == {"fmc": 0, "bootloader": 0, "tee": 0, "snp": 0, "microcode": 9}
    assert ext.hwid == bytes.fromhex("1e550a8ee5cf9f4d")
    assert len(ext.hwid) == 8

    ask_der, ark_der = der_of(s.chain[0]), der_of(s.ark)
    turin = next(a for a in amd_anchors() if a.product is Product.TURIN)
    assert ark_der == turin.ark_der
    assert ask_der == bundled_intermediate(Product.TURIN, SigningKey.VCEK)
    _pss_signed_by(ark_der, ark_der, "Turin ARK")
    _pss_signed_by(ask_der, ark_der, "Turin ASK")
    _pss_signed_by(s.vcek_der, ask_der, "Turin VCEK")
    # ... and not under another product's ASK.
    milan_ask = bundled_intermediate(Product.MILAN, SigningKey.VCEK)
    with pytest.raises(VerificationFailed, match=r"issuer CN=SEV-Turin.* is not CN=SEV-Milan"):
        _pss_signed_by(s.vcek_der, milan_ask, "Turin VCEK")


def test_turin_vcek_of_another_chip_fails_the_real_turin_report() -> None:
    """Public path for the virtee Turin VCEK: a valid chain, but its TCB is not
    the Oak Turin report's, so verify_report refuses on TCB, not on the chain."""
    report = sample("turin-v5-oak")
    virtee = sample("extra-turin-vcek-virtee")
    with pytest.raises(VerificationFailed, match=r"endorsement TCB does not match REPORTED_TCB \(bootloader"):
        verify_report(report.report, virtee.vcek_der, virtee.ask_der, amd_anchors(), VERIFY_AT)


@pytest.mark.parametrize(
    "name", ["synthetic_invalid_vcek_legacy_hwid.der", "synthetic_invalid_vcek_octetstring_hwid.der"]
)
def test_synthetic_invalid_vceks_parse_but_fail_the_chain(name: str) -> None:
    s = sample("milan-v2-idblock-trustee")
    der_bytes = (s.path / name).read_bytes()
    cert = load_der(der_bytes, name)
    ext = read_extensions(cert)
    assert ext.product is Product.MILAN
    fake = bytes(range(64))
    assert ext.hwid == (fake if "legacy" in name else b"\x04\x40" + fake)
    with pytest.raises(VerificationFailed, match=r"signature does not verify under CN=SEV-Milan"):
        _pss_signed_by(der_bytes, s.ask_der, name)
    with pytest.raises(
        VerificationFailed, match=r"endorsement certificate \(VCEK/VLEK\) signature does not verify"
    ):
        verify_report(s.report, der_bytes, s.ask_der, amd_anchors(), VERIFY_AT)


# --- verification ----------------------------------------------------------------


@pytest.mark.parametrize("s", REPORTS, ids=IDS)
def test_verify_report_accepts_real_evidence(s: Sample) -> None:
    for cert in (load_der(s.vcek_der, s.name), s.chain[0], s.ark):
        assert cert.not_valid_before_utc <= VERIFY_AT <= cert.not_valid_after_utc
    result = verify_report(s.report, s.vcek_der, s.ask_der, amd_anchors(), VERIFY_AT)
    fields, decoded = s.expected["fields"], s.expected["decoded"]
    claims = result.claims
    assert result.product is s.product
    assert result.report.raw == s.report
    assert claims.platform == "snp"
    assert claims.hardware_protected
    assert claims.product == s.expected["product"]
    assert claims.signer == s.expected["endorsement_key"]
    assert dict(claims.tcb) == decoded["reported_tcb"]
    assert list(dict(claims.tcb)) == list(decoded["reported_tcb"])  # same order too
    assert claims.debug is decoded["policy"]["debug_allowed"]
    assert claims.debug is (s.name == "milan-v2-go-sev-guest")
    assert claims.vmpl == fields["vmpl"]
    assert claims.measurement.hex() == fields["measurement"]
    assert claims.report_data.hex() == fields["report_data"]
    assert claims.host_data.hex() == fields["host_data"]
    assert claims.chip_id.hex() == fields["chip_id"]
    assert claims.firmware == fields["current_version(major.minor.build)"]
    assert claims.report_version == s.expected["report_version"]
    assert claims.root_fingerprint == fingerprint(s.ark) == hashlib.sha256(der_of(s.ark)).hexdigest()
    assert claims.verified_at == VERIFY_AT
    assert dict(claims.policy_flags)["debug"] is claims.debug
    assert result.endorsement.tcb == dict(claims.tcb)
    as_json = claims.to_json()
    assert as_json["platform"] == "snp"
    assert as_json["hardware_protection"] is True
    assert as_json["tcb"] == decoded["reported_tcb"]


def test_vlek_report_claims() -> None:
    s = sample("milan-v3-vlek-aws-trustee")
    claims = verify_report(s.report, s.vcek_der, s.ask_der, amd_anchors(), VERIFY_AT).claims
    assert (claims.signer, claims.vmpl) == ("VLEK", 1)
    assert claims.chip_id == bytes(64)
    # The VLEK chain is ASVK -> ARK-Milan, the same root as the VCEK chains.
    assert s.chain[0].subject.rfc4514_string().startswith("CN=SEV-VLEK-Milan,")


def test_current_tcb_differs_from_reported_tcb_and_reported_is_checked() -> None:
    """trustee's id-block report: CURRENT_TCB (ucode 0xce) != REPORTED_TCB
    (ucode 0x73); the VCEK matches REPORTED_TCB and that is what verifies."""
    s = sample("milan-v2-idblock-trustee")
    result = verify_report(s.report, s.vcek_der, s.ask_der, amd_anchors(), VERIFY_AT)
    assert result.report.current_tcb != result.report.reported_tcb
    assert dict(result.claims.tcb)["microcode"] == 0x73
    assert result.report.current_tcb.components(Product.MILAN)["microcode"] == 0xCE
    assert result.report.guest_svn == 4
    assert result.report.family_id == bytes([1]) + bytes(15)
    assert result.report.image_id == bytes([2]) + bytes(15)


@pytest.mark.parametrize("s", [s for s in REPORTS if s.expected["report_version"] == 2], ids=lambda s: s.name)
def test_v2_reports_take_the_product_from_the_vcek(s: Sample) -> None:
    without_hint = verify_report(s.report, s.vcek_der, s.ask_der, amd_anchors(), VERIFY_AT)
    assert without_hint.product is Product.MILAN
    assert read_extensions(load_der(s.vcek_der, s.name)).product_name == "Milan-B0"
    with_hint = verify_report(s.report, s.vcek_der, s.ask_der, amd_anchors(), VERIFY_AT, Product.MILAN)
    assert with_hint.claims == without_hint.claims
    # A wrong hint selects the wrong root: refused, never silently accepted.
    with pytest.raises(
        VerificationFailed, match=r"no trusted root for product Genoa issued the intermediate"
    ):
        verify_report(s.report, s.vcek_der, s.ask_der, amd_anchors(), VERIFY_AT, Product.GENOA)


@pytest.mark.parametrize("s", REPORTS, ids=IDS)
def test_anchor_order_and_extra_anchors_do_not_matter(s: Sample) -> None:
    """Several roots may be trusted for one product: the verifier picks the
    one that issued the intermediate, whatever the order."""
    base = verify_report(s.report, s.vcek_der, s.ask_der, amd_anchors(), VERIFY_AT).claims
    again = verify_report(s.report, s.vcek_der, s.ask_der, reversed(amd_anchors()), VERIFY_AT).claims
    assert again == base
    only = [a for a in amd_anchors() if a.product is s.product]
    assert verify_report(s.report, s.vcek_der, s.ask_der, iter(only), VERIFY_AT).claims == base
