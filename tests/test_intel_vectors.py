"""The Intel DCAP parser and verifier against real TDX and SGX quotes and
collateral that nobody here wrote (tests/data/vectors, see its README.md),
field by field against each sample's expected.json, at its verify_at."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from cryptography import x509

from intel_support import COLLECTED, COMMON_INTEL, Sample, sample, samples, with_collateral
from stockade.errors import CollateralUnavailable, MalformedEvidence, VerificationFailed
from stockade.evidence import registry
from stockade.evidence.intel import detect_quote, verify_quote_files
from stockade.evidence.intel.abi import Quote, TeeType
from stockade.evidence.intel.pck import read_sgx_extension
from stockade.evidence.intel.tcb import TcbLevelNotSupported, TcbStatus
from stockade.evidence.intel.verify import check_quote, intel_root_der, verify_quote
from stockade.evidence.pki import load_der
from stockade.evidence.registry import VerifiedEvidence
from stockade.evidence.sgx.abi import EnclaveReport
from stockade.evidence.tdx.abi import TdReport

ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
ALL = samples()
IDS = [f"{s.tee}/{s.name}" for s in ALL]
WITH_COLLATERAL = with_collateral()
WC_IDS = [f"{s.tee}/{s.name}" for s in WITH_COLLATERAL]


def parse(s: Sample) -> Quote:
    return Quote.from_bytes(s.quote, allow_trailing=s.trailing_nonzero)


def verify(s: Sample, **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("allow_trailing", s.trailing_nonzero)
    kw.setdefault("check_revocation", s.has_crls)
    return verify_quote(s.quote, s.collateral, kw.pop("at", s.verify_at), **kw)  # type: ignore[arg-type]


def test_bundled_root_is_the_vectors_root() -> None:
    root = intel_root_der()
    assert hashlib.sha256(root).hexdigest() == ROOT_SHA256
    assert root == (COMMON_INTEL / "intel_sgx_root_ca.der").read_bytes()


def test_all_samples_present() -> None:
    assert len(samples("tdx")) == 8 and len(samples("sgx")) == 2
    assert len(WITH_COLLATERAL) == 9


# --- parsing, field by field ----------------------------------------------------------


@pytest.mark.parametrize("s", ALL, ids=IDS)
def test_header_and_layout(s: Sample) -> None:
    q = parse(s)
    h, e = q.header, s.expected["header"]
    assert (h.version, h.att_key_type, int(h.tee_type), h.qe_svn, h.pce_svn) == (
        e["version"],
        e["att_key_type"],
        e["tee_type"],
        e["qe_svn"],
        e["pce_svn"],
    )
    assert (h.qe_vendor_id.hex(), h.user_data.hex()) == (e["qe_vendor_id"], e["user_data"])
    assert s.expected["quote_version"] == q.version
    assert s.expected["body_type"] == {1: "sgx_report", 2: "td_report10", 3: "td_report15"}[q.body_type]
    sig = s.expected["signature_data"]
    assert len(q.quote_bytes) - len(q.signed_bytes) - 4 == sig["signature_data_len_field"]
    assert len(q.trailing) == sig["bytes_after_signature_data"]
    assert q.attestation_key.hex() == sig["attestation_key_xy"]
    assert q.signature.hex() == sig["ak_signature_rs"]
    assert q.qe_auth_data.hex() == sig["qe_auth_data"]
    assert sig["certification_data_type"] == 5
    assert q.to_bytes() == s.quote
    assert detect_quote(s.quote) == s.tee


@pytest.mark.parametrize("s", [s for s in ALL if s.tee == "tdx"], ids=[i for i in IDS if i.startswith("tdx")])
def test_td_report_fields(s: Sample) -> None:
    body = parse(s).body
    assert isinstance(body, TdReport)
    for name, value in s.expected["body"].items():
        assert getattr(body, name).hex() == value, name
    decoded = s.expected["decoded"]
    flags = body.attribute_flags()
    assert {k: flags[k] for k in decoded["td_attributes"]} == decoded["td_attributes"]
    assert list(body.tee_tcb_svn) == decoded["tee_tcb_svn_bytes"]
    assert body.module_major == decoded["tdx_module_major_version(tee_tcb_svn[1])"]
    assert body.module_svn == decoded["tdx_module_svn(tee_tcb_svn[0])"]
    assert body.is_v15 == (s.expected["body_type"] == "td_report15")


@pytest.mark.parametrize("s", samples("sgx"), ids=[i for i in IDS if i.startswith("sgx")])
def test_enclave_report_fields(s: Sample) -> None:
    body = parse(s).body
    assert isinstance(body, EnclaveReport)
    for name, value in s.expected["body"].items():
        got = getattr(body, name)
        assert (got.hex() if isinstance(got, bytes) else got) == value, name
    decoded = s.expected["decoded"]
    flags = body.attribute_flags()
    assert {k: flags[k] for k in decoded["sgx_attributes_flags"]} == decoded["sgx_attributes_flags"]
    assert body.xfrm.to_bytes(8, "little").hex() == decoded["xfrm"]


@pytest.mark.parametrize("s", ALL, ids=IDS)
def test_qe_report_and_pck(s: Sample) -> None:
    q = parse(s)
    for name, value in s.expected["qe_report"].items():
        got = getattr(q.qe_report, name)
        assert (got.hex() if isinstance(got, bytes) else got) == value, name
    assert len(q.pck_chain) == len(s.expected["pck_chain"]) == 3
    for der, exp in zip(q.pck_chain, s.expected["pck_chain"], strict=True):
        cert = load_der(der, "test")
        assert sorted(cert.subject.rfc4514_string().split(",")) == sorted(exp["subject"].split(","))
        assert hex(cert.serial_number) == exp["serial"]
        assert str(cert.not_valid_before_utc) == exp["not_before"]
        assert str(cert.not_valid_after_utc) == exp["not_after"]
    assert q.pck_chain[2] == intel_root_der()
    ext = read_sgx_extension(x509.load_der_x509_certificate(q.pck_chain[0]))
    e = s.expected["pck_extensions"]
    assert (ext.fmspc.hex(), ext.pce_id.hex(), ext.ppid.hex(), ext.cpu_svn.hex()) == (
        e["fmspc"],
        e["pceid"],
        e["ppid"],
        e["cpusvn"],
    )
    assert (ext.pce_svn, list(ext.tcb_components), ext.sgx_type) == (
        e["pcesvn"],
        e["sgx_tcb_comps"],
        e["sgx_type"],
    )


# --- verification at verify_at ---------------------------------------------------------


@pytest.mark.parametrize("s", ALL, ids=IDS)
def test_quote_checks_without_collateral(s: Sample) -> None:
    """What every sample's collector checked: AK signature, QE report
    signature, QE binding, PCK chain to the Intel root (at a time inside the
    PCK's validity)."""
    assert all(s.expected["checks_performed_by_collector"].values())
    leaf = load_der(parse(s).pck_chain[0], "pck")
    at = s.verify_at if s.has_collateral else leaf.not_valid_before_utc + timedelta(days=1)
    checked = check_quote(s.quote, at, allow_trailing=s.trailing_nonzero)
    assert checked.root_fingerprint == ROOT_SHA256
    assert checked.pck.fmspc.hex() == s.expected["pck_extensions"]["fmspc"]


@pytest.mark.parametrize("s", WITH_COLLATERAL, ids=WC_IDS)
def test_verdict_at_verify_at(s: Sample) -> None:
    r = s.results
    if s.expect_not_supported:
        with pytest.raises(TcbLevelNotSupported, match="TCB level not supported") as info:
            verify(s)
        assert info.value.qe_status is TcbStatus(r["qe_eval"]["qe_tcb_status"])
        if "tdx_module_status" in r["tcb_eval"]:
            assert info.value.module_id == r["tcb_eval"]["tdx_module_identity"]
            assert info.value.module_status is TcbStatus(r["tcb_eval"]["tdx_module_status"])
        return
    v = verify(s)
    assert v.tcb_status is TcbStatus(s.overall)
    assert v.tcb.platform_status.value == r["tcb_eval"]["platform_tcb_status"]
    assert v.tcb.tcb_date.isoformat().replace("+00:00", "Z") == r["tcb_eval"]["platform_tcb_date"]
    assert list(v.advisory_ids) == r["tcb_eval"]["advisoryIDs"]
    assert v.tcb.qe_status.value == r["qe_eval"]["qe_tcb_status"]
    assert v.tcb.module_id == r["tcb_eval"].get("tdx_module_identity")
    module = r["tcb_eval"].get("tdx_module_status")
    assert (v.tcb.module_status.value if v.tcb.module_status else None) == module
    assert v.tcb_info_evaluation_number == r["tcbinfo"]["tcbEvaluationDataNumber"]
    assert v.qe_identity_evaluation_number == r["qeidentity"]["tcbEvaluationDataNumber"]
    assert v.revocation_checked is s.has_crls
    if s.has_crls:
        assert r["pck_revoked"] is False and r["intermediate_revoked"] is False


VERIFYING = [s for s in WITH_COLLATERAL if not s.expect_not_supported]


@pytest.mark.parametrize("s", VERIFYING, ids=[f"{s.tee}/{s.name}" for s in VERIFYING])
def test_claims(s: Sample) -> None:
    """The normalized claims of the seven samples that verify (the other two
    fail on their TCB level and give none)."""
    c = verify(s).claims
    body, pck = s.expected["body"], s.expected["pck_extensions"]
    assert c.platform == s.tee and c.hardware_protected
    assert c.tcb_status == s.overall
    assert list(c.advisory_ids) == s.results["tcb_eval"]["advisoryIDs"]
    assert c.fmspc == pck["fmspc"]
    assert c.root_fingerprint == ROOT_SHA256
    assert c.report_data.hex() == body["report_data"]
    assert c.chip_id.hex() == pck["ppid"]
    assert c.verified_at == s.verify_at and c.report_version == s.expected["quote_version"]
    regs = dict(c.registers)
    tcb = dict(c.tcb)
    assert tcb["pce_svn"] == pck["pcesvn"]
    assert [tcb[f"sgx_tcb_comp{i:02d}"] for i in range(1, 17)] == pck["sgx_tcb_comps"]
    assert tcb["qe_svn"] == s.expected["qe_report"]["isv_svn"]
    if s.tee == "tdx":
        assert c.measurement.hex() == body["mr_td"] == regs["mrtd"].hex()
        for i in range(4):
            assert regs[f"rtmr{i}"].hex() == body[f"rtmr{i}"]
        assert regs["mrseam"].hex() == body["mr_seam"]
        assert regs["mrsignerseam"].hex() == body["mr_signer_seam"]
        assert regs["xfam"].hex() == body["xfam"]
        assert regs["td_attributes"].hex() == body["td_attributes"]
        assert c.debug is s.expected["decoded"]["td_attributes"]["debug"]
        assert dict(c.policy_flags)["debug"] is c.debug
        assert [tcb[f"tee_tcb_svn_{i:02d}"] for i in range(16)] == s.expected["decoded"]["tee_tcb_svn_bytes"]
        assert c.host_data.hex() == body["mr_config_id"]
    else:
        assert c.measurement.hex() == body["mr_enclave"] == regs["mrenclave"].hex()
        assert regs["mrsigner"].hex() == body["mr_signer"]
        assert (tcb["isv_prod_id"], tcb["isv_svn"]) == (body["isv_prod_id"], body["isv_svn"])
        assert regs["attributes"].hex() == body["attributes"]
        assert c.debug is s.expected["decoded"]["sgx_attributes_flags"]["debug"]
    c.to_json()  # serialisable


def test_debug_flags_of_real_data() -> None:
    """The README's policy-relevant flags: a DEBUG TD and a DEBUG enclave."""
    assert verify(sample("v4-50806f-trustee")).claims.debug is True
    assert verify(sample("v4-azure-trustee")).claims.debug is False
    assert verify(sample("v3-00a067-dcap-qvl")).claims.debug is False
    occlum = parse(sample("v3-00606a-occlum-trustee")).body
    assert isinstance(occlum, EnclaveReport) and occlum.debug is True


@pytest.mark.parametrize("s", WITH_COLLATERAL, ids=WC_IDS)
def test_files_api_gives_the_same_verdict(s: Sample) -> None:
    """verify_quote_files (what the CLI calls) on the sample's collateral dir."""
    kw = {"allow_trailing": s.trailing_nonzero, "check_revocation": s.has_crls}
    if s.expect_not_supported:
        with pytest.raises(TcbLevelNotSupported):
            verify_quote_files(s.quote, s.path / "collateral", s.verify_at, **kw)
    else:
        assert (
            verify_quote_files(s.quote, s.path / "collateral", s.verify_at, **kw).tcb_status.value
            == s.overall
        )


def test_platform_specific_entry_points() -> None:
    """The TDX and SGX halves of the one DCAP verifier, as the registry
    finds them (docs/adr/0014-one-evidence-core.md): each refuses the other
    TEE's quotes."""

    def verify_as(tee: str, s: Sample) -> VerifiedEvidence:
        return registry.verify(
            registry.Evidence(tee, s.quote),
            registry.Trust(),
            s.verify_at,
            registry.Collateral(intel=s.collateral),
        )

    tdx, sgx = sample("v4-b0c06f-dcap-qvl"), sample("v3-00a067-dcap-qvl")
    assert verify_as("tdx", tdx).claims.platform == "tdx"
    assert verify_as("sgx", sgx).claims.platform == "sgx"
    with pytest.raises(VerificationFailed, match="expected a SGX quote, got TDX"):
        verify_as("sgx", tdx)
    with pytest.raises(VerificationFailed, match="expected a TDX quote, got SGX"):
        verify_as("tdx", sgx)


# --- trailing bytes (docs/adr/0006, "Trailing bytes") ---------------------------------


def test_zero_padding_is_accepted_and_reported() -> None:
    s = sample("v4-gcp-cos-go-tdx-guest")
    q = Quote.from_bytes(s.quote)
    assert len(q.trailing) == 3065 and not any(q.trailing)
    assert len(q.quote_bytes) == len(s.quote) - 3065
    assert verify(s).quote.trailing == q.trailing


def test_non_zero_trailing_bytes_are_refused_unless_allowed() -> None:
    """go-tdx-guest appended "\\nextra bytes(only for testing purpose)\\n"
    (39 bytes) to a real quote. They are outside every length field and
    every signature: refused by default, accepted and reported with
    allow_trailing=True, and then the sample's real verdict appears."""
    s = sample("v4-spr-e4-go-tdx-guest")
    with pytest.raises(MalformedEvidence, match="39 bytes after the quote's signature data, not all zero"):
        Quote.from_bytes(s.quote)
    with pytest.raises(MalformedEvidence, match="39 bytes after"):
        verify(s, allow_trailing=False)
    q = Quote.from_bytes(s.quote, allow_trailing=True)
    assert q.trailing == b"\nextra bytes(only for testing purpose)\n"
    with pytest.raises(TcbLevelNotSupported):
        verify(s, allow_trailing=True)
    # Without the appended bytes it is an ordinary quote.
    assert Quote.from_bytes(q.quote_bytes).trailing == b""
    with pytest.raises(TcbLevelNotSupported):
        verify_quote(q.quote_bytes, s.collateral, s.verify_at)


# --- time --------------------------------------------------------------------------------


@pytest.mark.parametrize("s", WITH_COLLATERAL, ids=WC_IDS)
def test_collateral_has_expired_by_collection_time(s: Sample) -> None:
    """At the collection date every sample's collateral has expired; the
    2023 samples also meet their expired (2018-2025) TCB Signing certificate."""
    with pytest.raises(VerificationFailed, match="expired") as info:
        verify(s, at=COLLECTED)
    if s.verify_at.year == 2023:
        assert "TCB Signing certificate expired" in str(info.value)


def test_renewed_tcb_signing_certificate() -> None:
    """Same key and serial, two validity windows: both verify the 2025
    collateral's signature, and only the renewed one is valid in Oct 2025."""
    from dataclasses import replace

    s = sample("v4-00a06d08-trustee")
    old = (COMMON_INTEL / "tcb_signing_chain_valid_2018-05-21_to_2025-05-21.pem").read_bytes()
    new = (COMMON_INTEL / "tcb_signing_chain_valid_2025-05-06_to_2032-05-06.pem").read_bytes()
    assert s.collateral.tcb_signing_chain == new
    with pytest.raises(VerificationFailed, match="TCB Signing certificate expired at 2025-05-21"):
        verify_quote(
            s.quote, replace(s.collateral, tcb_signing_chain=old), s.verify_at, check_revocation=False
        )
    s2 = sample("v4-azure-trustee")  # verify_at 2025-05-28: only the renewed one is valid too
    assert verify_quote(s2.quote, replace(s2.collateral, tcb_signing_chain=new), s2.verify_at).tcb_status


def test_revocation_needs_crls_unless_told_otherwise() -> None:
    s = sample("v4-00a06d08-trustee")  # no CRL valid in Oct 2025 was found
    with pytest.raises(CollateralUnavailable, match="no root CA CRL and no PCK CRL"):
        verify(s, check_revocation=True)
    v = verify(s, check_revocation=False)
    assert v.revocation_checked is False and v.tcb_status is TcbStatus.OUT_OF_DATE


def test_tee_type_of_quotes() -> None:
    assert {parse(s).tee_type for s in samples("tdx")} == {TeeType.TDX}
    assert {parse(s).tee_type for s in samples("sgx")} == {TeeType.SGX}
