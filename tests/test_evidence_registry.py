"""The one verifier interface (evidence/registry.py): detection, one verifier
per platform with the same signature, the revocation mode meaning the same on
every platform, and one-line registration of a flavour."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from intel_support import Sample, with_collateral
from snp_support import VERIFY_AT, report_samples
from stockade.client.attest import TrustConfig, verify_bundle_report
from stockade.errors import CollateralUnavailable, MalformedEvidence, VerificationFailed
from stockade.evidence import registry
from stockade.evidence.registry import Collateral, Evidence, Revocation, Trust
from stockade.evidence.snp.abi import SigningKey
from stockade.testing.amd import FakeAmdPki
from stockade.wire.evidence import EvidenceBundle
from stockade.wire.platform import PLATFORMS, Platform


def test_platform_enum_is_the_wire_strings() -> None:
    assert PLATFORMS == ("sim", "snp", "tdx", "sgx", "sim-tdx")
    assert Platform("tdx") is Platform.TDX and Platform.TDX == "tdx"
    assert not Platform.SIM.hardware_protected and Platform.SNP.hardware_protected
    assert not Platform.SIM_TDX.hardware_protected
    for name in PLATFORMS:
        assert registry.verifier_for(name) is not None


def test_sniff_tells_reports_from_quotes() -> None:
    snp = report_samples()[0]
    assert registry.sniff(snp.report) is Platform.SNP
    tdx = with_collateral("tdx")[0]
    sgx = with_collateral("sgx")[0]
    assert registry.sniff(tdx.quote) is Platform.TDX
    assert registry.sniff(sgx.quote) is Platform.SGX
    assert registry.sniff(b"") is None
    assert registry.sniff(bytes(0x4A1)) is None
    assert registry.sniff(b"\x04\x00\x02\x00" + bytes(60)) is None  # no Intel QE vendor id


def test_unknown_platform_is_malformed() -> None:
    with pytest.raises(MalformedEvidence, match="no verifier for evidence platform 'nitro'"):
        registry.verify(Evidence("nitro", b""), Trust(), VERIFY_AT, Collateral())


def test_snp_vector_through_the_registry() -> None:
    s = report_samples()[0]
    ev = Evidence(Platform.SNP, s.report, (("vcek", s.vcek_der), ("ask", s.ask_der)))
    verified = registry.verify(ev, Trust(), VERIFY_AT, Collateral())
    assert verified.kind == "sev-snp-report" and verified.claims.platform == "snp"
    assert not verified.revocation_checked and verified.checks
    with pytest.raises(CollateralUnavailable, match="no CRL issued by"):
        registry.verify(ev, Trust(), VERIFY_AT, Collateral(revocation=Revocation.REQUIRE))


@pytest.mark.parametrize("tee", ["tdx", "sgx"])
def test_intel_vectors_through_the_registry(tee: str) -> None:
    s = next(x for x in with_collateral(tee) if x.has_crls and not x.expect_not_supported)
    ev = Evidence(tee, s.quote, allow_trailing=s.trailing_nonzero)
    verified = registry.verify(
        ev, Trust(), s.verify_at, Collateral(intel=s.collateral, revocation=Revocation.REQUIRE)
    )
    assert verified.kind == f"{tee}-quote" and verified.claims.platform == tee and verified.revocation_checked
    # The other TEE's verifier refuses it.
    other = "sgx" if tee == "tdx" else "tdx"
    with pytest.raises(VerificationFailed):
        registry.verify(
            dataclasses.replace(ev, platform=other), Trust(), s.verify_at, Collateral(intel=s.collateral)
        )


def _intel_case() -> tuple[Evidence, Sample]:
    s = next(x for x in with_collateral("tdx") if x.has_crls and not x.expect_not_supported)
    return Evidence(Platform.TDX, s.quote, allow_trailing=s.trailing_nonzero), s


def test_intel_revocation_modes() -> None:
    ev, s = _intel_case()
    no_crls = dataclasses.replace(s.collateral, root_ca_crl=None, pck_crl=None)
    at = s.verify_at
    with pytest.raises(CollateralUnavailable, match="revocation cannot be checked"):
        registry.verify(ev, Trust(), at, Collateral(intel=no_crls, revocation=Revocation.REQUIRE))
    assert not registry.verify(ev, Trust(), at, Collateral(intel=no_crls)).revocation_checked
    bad = dataclasses.replace(s.collateral, pck_crl=b"not a crl")
    with pytest.raises(MalformedEvidence, match="PCK CRL: not a valid CRL"):
        registry.verify(ev, Trust(), at, Collateral(intel=bad, revocation=Revocation.IF_GIVEN))
    skipped = registry.verify(ev, Trust(), at, Collateral(intel=bad, revocation=Revocation.SKIP))
    assert not skipped.revocation_checked


def test_intel_without_collateral_says_what_is_missing() -> None:
    ev, s = _intel_case()
    with pytest.raises(CollateralUnavailable, match=r"no Intel collateral .* for the TDX quote"):
        registry.verify(ev, Trust(), s.verify_at, Collateral())


def test_snp_revocation_modes_and_one_line_registration(
    milan: FakeAmdPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flavour is one register() line: here an SNP verifier under the fake
    AMD root. A revoking CRL refuses under REQUIRE and IF_GIVEN, is not
    applied under SKIP (and the result says revocation was not checked)."""
    monkeypatch.setitem(
        registry._VERIFIERS, "fake-snp", registry.snp_verifier(Platform.SNP, lambda t: (milan.anchor(),))
    )
    vcek = milan.vcek()
    ev = Evidence("fake-snp", milan.report(vcek), (("vcek", vcek.der), ("ask", milan.intermediate_der())))
    revoking = milan.crl([vcek], issuer=SigningKey.VCEK)
    for mode in (Revocation.REQUIRE, Revocation.IF_GIVEN):
        with pytest.raises(VerificationFailed, match="is revoked since"):
            registry.verify(ev, Trust(), milan.now, Collateral(crls=(revoking,), revocation=mode))
    skipped = registry.verify(
        ev, Trust(), milan.now, Collateral(crls=(revoking,), revocation=Revocation.SKIP)
    )
    assert not skipped.revocation_checked and skipped.crl_issuers == ()
    good = milan.crl([])
    checked = registry.verify(ev, Trust(), milan.now, Collateral(crls=(good,), revocation=Revocation.REQUIRE))
    assert checked.revocation_checked
    with pytest.raises(VerificationFailed, match="expired"):
        registry.verify(ev, Trust(), milan.now + timedelta(days=365 * 30), Collateral())


def test_client_sends_tdx_bundles_to_the_intel_verifier() -> None:
    """A deploy's TDX bundle is no longer refused as "not implemented": it
    reaches the DCAP verifier, which says which collateral is missing."""
    ev, s = _intel_case()
    bundle = EvidenceBundle("tdx", ev.data)
    with pytest.raises(CollateralUnavailable, match="no Intel collateral"):
        verify_bundle_report(bundle, TrustConfig(), s.verify_at)
