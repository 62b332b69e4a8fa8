"""One test per check of the Intel DCAP verifier: each makes exactly that
check fail (real vectors where real data can, otherwise the fake Intel PKI of
stockade.testing.intel, re-signing everything else correctly) and asserts
the exception class and message."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from intel_support import sample, shared_pck, shared_pki
from stockade.errors import CollateralUnavailable, MalformedEvidence, StockadeError, VerificationFailed
from stockade.evidence.intel.abi import Quote, pem_encode
from stockade.evidence.intel.verify import Collateral, VerifiedQuote, verify_quote
from stockade.testing.intel import (
    FakeIntelPki,
    PckSpec,
    QuoteParts,
    default_qe_report,
    default_td_body,
    fake_name,
    raw_public,
    raw_sign,
    resign,
    signed_body,
)

REAL = "v4-b0c06f-dcap-qvl"  # TDX v4 with full collateral, verify_at 2025-06-20
REAL_SGX = "v3-00a067-dcap-qvl"


@dataclass
class Case:
    tee: str
    pki: FakeIntelPki
    parts: QuoteParts
    collateral: Collateral

    def verify(
        self, quote: bytes | None = None, collateral: Collateral | None = None, **kw: Any
    ) -> VerifiedQuote:
        return verify_quote(
            self.parts.to_bytes() if quote is None else quote,
            self.collateral if collateral is None else collateral,
            kw.pop("at", self.pki.now),
            root_der=kw.pop("root_der", self.pki.root_der),
            **kw,
        )

    def tcb_info(self, **overrides: Any) -> Collateral:
        info = self.pki.tcb_info_json(self.tee, shared_pck().spec, **overrides)
        return replace(self.collateral, tcb_info=self.pki.sign_tcb_info(info))

    def qe_identity(self, **overrides: Any) -> Collateral:
        identity = self.pki.qe_identity_json(self.tee, **overrides)
        return replace(self.collateral, qe_identity=self.pki.sign_qe_identity(identity))


@pytest.fixture(params=["tdx", "sgx"])
def case(request: pytest.FixtureRequest) -> Case:
    pki, pck = shared_pki(), shared_pck()
    return Case(request.param, pki, pki.quote_parts(request.param, pck), pki.collateral(request.param, pck))


def real(name: str = REAL, **kw: Any) -> VerifiedQuote:
    s = sample(name)
    return verify_quote(
        kw.pop("quote", s.quote), kw.pop("collateral", s.collateral), kw.pop("at", s.verify_at), **kw
    )


def test_baselines_verify(case: Case) -> None:
    """Every negative below starts from one of these, which verify."""
    assert case.verify().claims.platform == case.tee
    assert real().claims.platform == "tdx"
    assert real(REAL_SGX).claims.platform == "sgx"


# --- PCK chain ------------------------------------------------------------------------------


def test_wrong_root() -> None:
    """A real quote against a root that is not Intel's."""
    with pytest.raises(VerificationFailed, match="PCK chain does not end in the trusted Intel SGX Root CA"):
        real(root_der=shared_pki().root_der)


def test_chain_from_another_pki_with_the_same_names(case: Case) -> None:
    """A lookalike PKI (same subject names, other keys) passes no signature."""
    other = FakeIntelPki()
    pck = other.pck()
    parts = other.quote_parts(case.tee, pck)
    parts = parts.replace(pck_chain_pem=other.pck_chain_pem(pck, root_der=case.pki.root_der))
    with pytest.raises(VerificationFailed, match="PCK CA certificate signature does not verify"):
        case.verify(parts.to_bytes())


def test_pck_not_signed_by_its_ca(case: Case) -> None:
    pki = case.pki
    key = ec.generate_private_key(ec.SECP256R1())
    forged = pki.certificate(fake_name("Intel SGX PCK Certificate"), pki.ca_names["platform"], key, key)
    parts = case.parts.replace(
        pck_chain_pem=pem_encode(forged) + pem_encode(pki.ca_ders["platform"]) + pem_encode(pki.root_der)
    )
    with pytest.raises(VerificationFailed, match="PCK certificate signature does not verify"):
        case.verify(parts.to_bytes())


def test_chain_length(case: Case) -> None:
    pki = case.pki
    two = pem_encode(shared_pck().der) + pem_encode(pki.ca_ders["platform"])
    with pytest.raises(VerificationFailed, match="PCK chain has 2 certificates"):
        case.verify(case.parts.replace(pck_chain_pem=two).to_bytes())


def test_pck_common_name(case: Case) -> None:
    pki = case.pki
    pck = pki.pck(cn="Intel SGX PCK Imposter")
    with pytest.raises(VerificationFailed, match="PCK certificate subject CN is 'Intel SGX PCK Imposter'"):
        case.verify(pki.quote(case.tee, pck), pki.collateral(case.tee, pck))


@pytest.mark.parametrize("when", ["before", "after"])
def test_pck_validity(case: Case, when: str) -> None:
    pki = case.pki
    if when == "before":
        pck = pki.pck(not_before=pki.now + timedelta(hours=1))
        match = "PCK certificate is not yet valid"
    else:
        pck = pki.pck(not_after=pki.now - timedelta(hours=1))
        match = "PCK certificate expired"
    with pytest.raises(VerificationFailed, match=match):
        case.verify(pki.quote(case.tee, pck), pki.collateral(case.tee, pck))


def test_pck_that_is_a_ca_or_has_unknown_critical_extensions(case: Case) -> None:
    from cryptography import x509

    from stockade.evidence.intel.pck import SGX_EXTENSION_OID

    pki, pck = case.pki, shared_pck()
    name, issuer = fake_name("Intel SGX PCK Certificate"), pki.ca_names["platform"]
    sgx = ((SGX_EXTENSION_OID, pck.spec.extension()),)
    as_ca = pki.certificate(name, issuer, pck.key, pki.platform_ca_key, ca=True, extensions=sgx)
    odd = pki.certificate(
        name,
        issuer,
        pck.key,
        pki.platform_ca_key,
        extensions=sgx,
        critical_extensions=((x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"),),
    )
    for der, match in ((as_ca, "PCK certificate is a CA"), (odd, "unknown critical extension 1.2.3.4")):
        chain = pem_encode(der) + pem_encode(pki.ca_ders["platform"]) + pem_encode(pki.root_der)
        with pytest.raises(VerificationFailed, match=match):
            case.verify(case.parts.replace(pck_chain_pem=chain).to_bytes())


def test_pck_without_sgx_extension(case: Case) -> None:
    pki = case.pki
    der = pki.certificate(
        fake_name("Intel SGX PCK Certificate"),
        pki.ca_names["platform"],
        shared_pck().key,
        pki.platform_ca_key,
    )
    chain = pem_encode(der) + pem_encode(pki.ca_ders["platform"]) + pem_encode(pki.root_der)
    with pytest.raises(MalformedEvidence, match="lacks the SGX extension"):
        case.verify(case.parts.replace(pck_chain_pem=chain).to_bytes())


# --- revocation ---------------------------------------------------------------------------------


def test_revoked_pck(case: Case) -> None:
    pck = shared_pck()
    collateral = replace(case.collateral, pck_crl=case.pki.crl("platform", (12345, pck.serial)))
    with pytest.raises(
        VerificationFailed, match=r"PCK certificate \(serial 0x[0-9a-f]+\) is revoked by the PCK CRL"
    ):
        case.verify(collateral=collateral)


def test_revoked_pck_ca(case: Case) -> None:
    from cryptography import x509

    serial = x509.load_der_x509_certificate(case.pki.ca_ders["platform"]).serial_number
    collateral = replace(case.collateral, root_ca_crl=case.pki.crl("root", (serial,)))
    with pytest.raises(VerificationFailed, match="PCK CA certificate is revoked by the root CA CRL"):
        case.verify(collateral=collateral)


def test_revoked_tcb_signing_certificate(case: Case) -> None:
    from cryptography import x509

    serial = x509.load_der_x509_certificate(case.pki.tcb_signing_der).serial_number
    collateral = replace(case.collateral, root_ca_crl=case.pki.crl("root", (serial,)))
    with pytest.raises(VerificationFailed, match="TCB Signing certificate is revoked by the root CA CRL"):
        case.verify(collateral=collateral)


def test_pck_crl_of_the_other_ca(case: Case) -> None:
    collateral = replace(case.collateral, pck_crl=case.pki.crl("processor"))
    with pytest.raises(VerificationFailed, match=r"PCK CRL is issued by .*Processor CA.*, not .*Platform CA"):
        case.verify(collateral=collateral)


def test_crl_signed_by_another_key(case: Case) -> None:
    other = FakeIntelPki()
    with pytest.raises(VerificationFailed, match="root CA CRL signature does not verify"):
        case.verify(collateral=replace(case.collateral, root_ca_crl=other.crl("root")))
    with pytest.raises(VerificationFailed, match="PCK CRL signature does not verify"):
        case.verify(collateral=replace(case.collateral, pck_crl=other.crl("platform")))


@pytest.mark.parametrize("which", ["root", "platform"])
def test_crl_validity(case: Case, which: str) -> None:
    field = "root_ca_crl" if which == "root" else "pck_crl"
    what = "root CA CRL" if which == "root" else "PCK CRL"
    stale = case.pki.crl(which, this_update=case.pki.now - timedelta(days=40))
    with pytest.raises(VerificationFailed, match=f"{what} expired"):
        case.verify(collateral=replace(case.collateral, **{field: stale}))
    future = case.pki.crl(which, this_update=case.pki.now + timedelta(days=1))
    with pytest.raises(VerificationFailed, match=f"{what} is not yet valid"):
        case.verify(collateral=replace(case.collateral, **{field: future}))


def test_missing_crls(case: Case) -> None:
    with pytest.raises(CollateralUnavailable, match="no PCK CRL in the collateral"):
        case.verify(collateral=replace(case.collateral, pck_crl=None))
    with pytest.raises(CollateralUnavailable, match="no root CA CRL in the collateral"):
        case.verify(collateral=replace(case.collateral, root_ca_crl=None))
    v = case.verify(
        collateral=replace(case.collateral, pck_crl=None, root_ca_crl=None), check_revocation=False
    )
    assert v.revocation_checked is False


def test_garbage_crl(case: Case) -> None:
    with pytest.raises(MalformedEvidence, match="PCK CRL: not a valid CRL"):
        case.verify(collateral=replace(case.collateral, pck_crl=b"\x30\x03\x02\x01\x00"))


# --- TCB Signing chain ----------------------------------------------------------------------------


def test_tcb_signing_certificate_from_another_pki(case: Case) -> None:
    other = FakeIntelPki()
    chain = pem_encode(other.tcb_signing_der) + pem_encode(case.pki.root_der)
    with pytest.raises(VerificationFailed, match="TCB Signing certificate signature does not verify"):
        case.verify(collateral=replace(case.collateral, tcb_signing_chain=chain))


def test_tcb_signing_chain_with_another_root(case: Case) -> None:
    other = FakeIntelPki()
    chain = pem_encode(case.pki.tcb_signing_der) + pem_encode(other.root_der)
    with pytest.raises(
        VerificationFailed,
        match="TCB signing chain must be the TCB Signing certificate, then the trusted root",
    ):
        case.verify(collateral=replace(case.collateral, tcb_signing_chain=chain))


def test_tcb_signing_common_name(case: Case) -> None:
    """A PCK CA certificate is signed by the root too, but is not the TCB signer."""
    chain = pem_encode(case.pki.ca_ders["platform"])
    with pytest.raises(
        VerificationFailed, match="TCB Signing certificate subject CN is 'Intel SGX PCK Platform CA'"
    ):
        case.verify(collateral=replace(case.collateral, tcb_signing_chain=chain))


def test_expired_tcb_signing_certificate() -> None:
    """The 2018-2025 TCB Signing certificate, real, at a 2025-10 time."""
    from intel_support import COMMON_INTEL

    s = sample("v4-00a06d08-trustee")
    old = (COMMON_INTEL / "tcb_signing_chain_valid_2018-05-21_to_2025-05-21.pem").read_bytes()
    with pytest.raises(VerificationFailed, match="TCB Signing certificate expired"):
        real(s.name, collateral=replace(s.collateral, tcb_signing_chain=old), check_revocation=False)


def test_garbage_tcb_signing_chain(case: Case) -> None:
    with pytest.raises(MalformedEvidence, match="TCB signing chain: not a valid PEM certificate list"):
        case.verify(collateral=replace(case.collateral, tcb_signing_chain=b"not pem"))


# --- TCB info -----------------------------------------------------------------------------------


def test_tcb_info_signed_by_another_key(case: Case) -> None:
    info = case.pki.tcb_info_json(case.tee, shared_pck().spec)
    bad = signed_body("tcbInfo", info, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(VerificationFailed, match=r"TCB info signature .* does not verify"):
        case.verify(collateral=replace(case.collateral, tcb_info=bad))


def test_tcb_info_signature_covers_the_exact_bytes() -> None:
    """Real TCB info with the same JSON value but other bytes (spaces after
    the separators): refused, because the signature covers the bytes."""
    s = sample(REAL)
    body = s.collateral.tcb_info
    inner = body[len(b'{"tcbInfo":') : body.rindex(b',"signature"')]
    spaced = json.dumps(json.loads(inner)).encode()
    assert json.loads(spaced) == json.loads(inner) and spaced != inner
    forged = body.replace(inner, spaced)
    with pytest.raises(VerificationFailed, match=r"TCB info signature .* does not verify"):
        real(collateral=replace(s.collateral, tcb_info=forged))


def test_expired_tcb_info(case: Case) -> None:
    """Real: one second after its nextUpdate the TCB info is refused; fake:
    an old one, and one issued after the verification time."""
    s = sample(REAL)
    with pytest.raises(VerificationFailed, match="TCB info expired at 2025-07-19T10:16:03"):
        real(
            at=s.verify_at.replace(month=7, day=19, hour=10, minute=16, second=4),
            collateral=replace(s.collateral, pck_crl=None, root_ca_crl=None),
            check_revocation=False,
        )
    old = case.tcb_info(issue=case.pki.now - timedelta(days=40))
    with pytest.raises(VerificationFailed, match="TCB info expired"):
        case.verify(collateral=old)
    future = case.tcb_info(issue=case.pki.now + timedelta(minutes=1))
    with pytest.raises(VerificationFailed, match="TCB info is not yet valid"):
        case.verify(collateral=future)


def test_tcb_info_for_another_fmspc(case: Case) -> None:
    collateral = case.tcb_info(fmspc=bytes.fromhex("00806f050000"))
    with pytest.raises(
        VerificationFailed, match="TCB info is for FMSPC 00806f050000, the PCK certificate says 00906ed50000"
    ):
        case.verify(collateral=collateral)


def test_tcb_info_for_another_pce_id(case: Case) -> None:
    spec = replace(shared_pck().spec, pce_id=b"\x00\x01")
    info = case.pki.tcb_info_json(case.tee, spec)
    with pytest.raises(
        VerificationFailed, match="TCB info is for PCE-ID 0001, the PCK certificate says 0000"
    ):
        case.verify(collateral=replace(case.collateral, tcb_info=case.pki.sign_tcb_info(info)))


def test_tcb_info_for_the_other_tee(case: Case) -> None:
    other = "sgx" if case.tee == "tdx" else "tdx"
    info = case.pki.tcb_info_json(other, shared_pck().spec)
    with pytest.raises(
        VerificationFailed, match=f"TCB info is for {other.upper()}, the quote is {case.tee.upper()}"
    ):
        case.verify(collateral=replace(case.collateral, tcb_info=case.pki.sign_tcb_info(info)))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"version": 2}, "unsupported version 2"),
        ({"tcbType": 1}, "unsupported tcbType 1"),
        ({"id": "XYZ"}, "unknown id 'XYZ'"),
        ({"pceId": "00G0"}, "pceId: expected 2 bytes of hex"),
        ({"issueDate": "2026-01-15"}, "issueDate: expected an ISO 8601 UTC time"),
        ({"tcbLevels": []}, "no tcbLevels"),
        ({"tcbEvaluationDataNumber": True}, "tcbEvaluationDataNumber: expected an integer"),
    ],
)
def test_malformed_tcb_info(case: Case, override: dict[str, Any], match: str) -> None:
    with pytest.raises(MalformedEvidence, match=match):
        case.verify(collateral=case.tcb_info(**override))


# --- QE identity ---------------------------------------------------------------------------------


def test_qe_identity_signed_by_another_key(case: Case) -> None:
    identity = case.pki.qe_identity_json(case.tee)
    bad = signed_body("enclaveIdentity", identity, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(VerificationFailed, match=r"QE identity signature .* does not verify"):
        case.verify(collateral=replace(case.collateral, qe_identity=bad))


def test_expired_qe_identity(case: Case) -> None:
    with pytest.raises(VerificationFailed, match="QE identity expired"):
        case.verify(collateral=case.qe_identity(issue=case.pki.now - timedelta(days=31)))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"mrsigner": "AB" * 32}, "QE identity mismatch: MRSIGNER"),
        ({"isvprodid": 7}, "QE identity mismatch: ISVPRODID 1|2 is not 7"),
        ({"miscselect": "01000000"}, "QE identity mismatch: MISCSELECT"),
        ({"attributes": "13000000000000000000000000000000"}, "QE identity mismatch: ATTRIBUTES"),
    ],
)
def test_qe_identity_mismatch(case: Case, override: dict[str, Any], match: str) -> None:
    with pytest.raises(VerificationFailed, match=match):
        case.verify(collateral=case.qe_identity(**override))


def test_qe_identity_for_the_other_tee() -> None:
    """Real: the SGX QE identity with a TDX quote (same TCB signer, valid
    times overlap) is the wrong enclave identity."""
    tdx, sgx = sample(REAL), sample(REAL_SGX)
    with pytest.raises(
        VerificationFailed, match="QE identity mismatch: identity is 'QE', a TDX quote needs 'TD_QE'"
    ):
        real(collateral=replace(tdx.collateral, qe_identity=sgx.collateral.qe_identity))


def test_masked_qe_attributes_are_ignored(case: Case) -> None:
    """Attribute bits outside attributesMask may differ (here bit 2 of byte 0)."""
    ak = ec.generate_private_key(ec.SECP256R1())
    qe = default_qe_report(
        case.tee, raw_public(ak), attributes=bytes.fromhex("15000000000000000000000000000000")
    )
    parts = case.parts.replace(
        attestation_key=raw_public(ak), qe_report=qe, qe_report_signature=raw_sign(shared_pck().key, qe)
    )
    assert case.verify(resign(parts, ak).to_bytes()).tcb_status


# --- TDX module ------------------------------------------------------------------------------------


def test_tdx_module_mrsigner_mismatch() -> None:
    pki, pck = shared_pki(), shared_pck()
    quote = pki.quote("tdx", pck, body=default_td_body(mr_signer_seam=b"\x01" * 48))
    with pytest.raises(VerificationFailed, match="TDX module mismatch: MRSIGNERSEAM 0101"):
        verify_quote(quote, pki.collateral("tdx", pck), pki.now, root_der=pki.root_der)


def test_tdx_seam_attributes_must_be_zero() -> None:
    pki, pck = shared_pki(), shared_pck()
    quote = pki.quote("tdx", pck, body=default_td_body(seam_attributes=b"\x01" + bytes(7)))
    with pytest.raises(
        VerificationFailed, match="TDX module mismatch: SEAMATTRIBUTES 0100000000000000 must be zero"
    ):
        verify_quote(quote, pki.collateral("tdx", pck), pki.now, root_der=pki.root_der)


# --- QE report, binding, quote signature --------------------------------------------------------


def test_qe_report_not_signed_by_the_pck(case: Case) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    parts = case.parts.replace(qe_report_signature=raw_sign(other, case.parts.qe_report))
    with pytest.raises(VerificationFailed, match=r"QE report signature \(by the PCK key\) does not verify"):
        case.verify(parts.to_bytes())


def test_broken_qe_report_binding(case: Case) -> None:
    """A QE report correctly signed by the PCK whose report data is not
    SHA-256(AK || auth data); and the real variant: other auth data."""
    qe = default_qe_report(case.tee, case.parts.attestation_key, b"other auth data")
    parts = case.parts.replace(qe_report=qe, qe_report_signature=raw_sign(shared_pck().key, qe))
    with pytest.raises(VerificationFailed, match="QE report data is not SHA-256"):
        case.verify(parts.to_bytes())
    with pytest.raises(VerificationFailed, match="QE report data is not SHA-256"):
        case.verify(case.parts.replace(qe_auth_data=b"\x00" * 32).to_bytes())


def test_real_qe_auth_data_changed() -> None:
    s = sample(REAL)
    q = Quote.from_bytes(s.quote)
    tampered = s.quote.replace(q.qe_auth_data, bytes(32))
    with pytest.raises(VerificationFailed, match="QE report data is not SHA-256"):
        real(quote=tampered)


def test_attestation_key_swapped(case: Case) -> None:
    """The quote re-signed by an attacker's key, carried as the AK: the QE
    certified another key. Also on a real quote (its own signature left)."""
    attacker = ec.generate_private_key(ec.SECP256R1())
    parts = resign(case.parts.replace(attestation_key=raw_public(attacker)), attacker)
    with pytest.raises(VerificationFailed, match="the attestation key is not the one the QE certified"):
        case.verify(parts.to_bytes())
    s = sample(REAL)
    q = Quote.from_bytes(s.quote)
    swapped = s.quote.replace(q.attestation_key, raw_public(attacker))
    with pytest.raises(VerificationFailed, match="the attestation key is not the one the QE certified"):
        real(quote=swapped)


def test_quote_signature(case: Case) -> None:
    """Body changed after signing; and a signature by a non-AK key."""
    body = bytearray(case.parts.body)
    body[-1] ^= 1  # report data
    with pytest.raises(
        VerificationFailed, match=r"quote signature \(by the attestation key\) does not verify"
    ):
        case.verify(case.parts.replace(body=bytes(body)).to_bytes())
    with pytest.raises(VerificationFailed, match="quote signature"):
        case.verify(resign(case.parts, ec.generate_private_key(ec.SECP256R1())).to_bytes())


def test_attestation_key_not_on_the_curve(case: Case) -> None:
    bad_ak = b"\x01" * 64
    qe = default_qe_report(case.tee, bad_ak)
    parts = case.parts.replace(
        attestation_key=bad_ak, qe_report=qe, qe_report_signature=raw_sign(shared_pck().key, qe)
    )
    with pytest.raises(MalformedEvidence, match="attestation key is not a point on P-256"):
        case.verify(parts.to_bytes())


# --- the rest -------------------------------------------------------------------------------------


def test_naive_time_is_a_programming_error(case: Case) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        case.verify(at=case.pki.now.replace(tzinfo=None))


def test_pck_spec_variants_verify(case: Case) -> None:
    """Processor-CA PCKs (no platform fields) and SGX type 0 verify too."""
    pki = case.pki
    pck = pki.pck(PckSpec(sgx_type=0, platform_fields=False), ca="processor")
    v = case.verify(pki.quote(case.tee, pck), pki.collateral(case.tee, pck))
    assert (v.pck_ca, v.pck.sgx_type, v.pck.dynamic_platform, v.claims.signer) == (
        "processor",
        0,
        None,
        "PCK-Processor",
    )


def test_every_refusal_is_a_stockade_error(case: Case) -> None:
    """The exception classes used above are the project's."""
    for cls in (VerificationFailed, MalformedEvidence, CollateralUnavailable):
        assert issubclass(cls, StockadeError)
