"""CRLs in SNP verification, and the stricter endorsement checks (hwID length
per product, productName agreeing with the report, REPORTED_TCB reserved
bytes). One check per test, as in test_snp_negative.py: real vectors where
real data can, otherwise the fake AMD PKI of stockade.testing.amd."""

from __future__ import annotations

import dataclasses
import struct
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from snp_support import PSS, VERIFY_AT, patch, report_samples, sample
from stockade.errors import CollateralUnavailable, MalformedEvidence, VerificationFailed
from stockade.evidence.pki import serial
from stockade.evidence.snp.abi import Product, SigningKey, TcbVersion
from stockade.evidence.snp.verify import VerifiedReport, amd_anchors, verify_report
from stockade.testing.amd import FakeAmdPki, FakeEndorsement

OAK = "milan-v3-oak"
_OTHER_KEY: list[rsa.RSAPrivateKey] = []


def other_rsa_key() -> rsa.RSAPrivateKey:
    """An RSA key that is not the fake ARK's (2048 bits: only its signature
    has to fail, and it is generated once)."""
    if not _OTHER_KEY:
        _OTHER_KEY.append(rsa.generate_private_key(65537, 2048))
    return _OTHER_KEY[0]


@pytest.fixture(scope="module")
def genoa() -> FakeAmdPki:
    return FakeAmdPki(Product.GENOA)


@pytest.fixture(scope="module")
def vcek(milan: FakeAmdPki) -> FakeEndorsement:
    return milan.vcek()


def fake_verify(
    pki: FakeAmdPki, e: FakeEndorsement, report: bytes | None = None, **kw: Any
) -> VerifiedReport:
    return verify_report(
        pki.report(e) if report is None else report,
        kw.pop("endorsement", e.der),
        kw.pop("intermediate", pki.intermediate_der(e.signer)),
        kw.pop("anchors", [pki.anchor()]),
        kw.pop("at", pki.now),
        **kw,
    )


def real_verify(name: str, **kw: Any) -> VerifiedReport:
    s = sample(name)
    return verify_report(s.report, s.vcek_der, s.ask_der, amd_anchors(), kw.pop("at", VERIFY_AT), **kw)


# --- without CRLs nothing changes ----------------------------------------------------------


@pytest.mark.parametrize("s", report_samples(), ids=lambda s: s.name)
def test_real_reports_still_verify_without_crls(s: Any) -> None:
    result = verify_report(s.report, s.vcek_der, s.ask_der, amd_anchors(), VERIFY_AT)
    assert (result.crl_issuers, result.revocation_checked) == ((), False)
    # CRLs of other chains are not this chain's: ignored.
    with_other = verify_report(
        s.report, s.vcek_der, s.ask_der, amd_anchors(), VERIFY_AT, crls=[FakeAmdPki(s.product).crl()]
    )
    assert with_other.claims == result.claims
    assert with_other.crl_issuers == ()


def test_require_crl_without_one_is_collateral_unavailable() -> None:
    with pytest.raises(
        CollateralUnavailable,
        match=r"^no CRL issued by CN=ARK-Milan,.* was given and the verification requires one$",
    ):
        real_verify(OAK, require_crl=True)
    assert CollateralUnavailable.exit_code == 114


# --- CRLs that pass ---------------------------------------------------------------------------


def test_empty_root_crl_verifies_and_is_recorded(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    crl_der = milan.crl()
    result = fake_verify(milan, vcek, crls=[crl_der], require_crl=True)
    assert result.revocation_checked
    assert result.crl_issuers == (milan.ark_name.rfc4514_string(),)
    plain = fake_verify(milan, vcek)
    # The same claims, except that the applied CRL dates the collateral
    # (max_collateral_age); without a CRL there is nothing to date.
    crl = x509.load_der_x509_crl(crl_der)
    assert (result.claims.collateral_issued, result.claims.collateral_next_update) == (
        crl.last_update_utc,
        crl.next_update_utc,
    )
    assert (plain.claims.collateral_issued, plain.claims.collateral_next_update) == (None, None)
    assert (
        dataclasses.replace(result.claims, collateral_issued=None, collateral_next_update=None)
        == plain.claims
    )


def test_crl_of_the_intermediate_alone_does_not_count_as_the_roots(
    milan: FakeAmdPki, vcek: FakeEndorsement
) -> None:
    ask_crl = milan.crl(issuer=SigningKey.VCEK)
    result = fake_verify(milan, vcek, crls=[ask_crl])
    assert (result.crl_issuers, result.revocation_checked) == ((milan.ask_name.rfc4514_string(),), False)
    with pytest.raises(CollateralUnavailable, match=r"no CRL issued by .*CN=ARK-Milan"):
        fake_verify(milan, vcek, crls=[ask_crl], require_crl=True)
    both = fake_verify(milan, vcek, crls=[ask_crl, milan.crl()], require_crl=True)
    assert both.crl_issuers == (milan.ark_name.rfc4514_string(), milan.ask_name.rfc4514_string())


def test_other_serials_are_not_revocations(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    unrelated = milan.vcek()
    crl = milan.crl([unrelated, 12345])
    assert fake_verify(milan, vcek, crls=[crl]).revocation_checked


def test_a_bare_serial_in_the_roots_crl_names_a_certificate_of_the_root(
    milan: FakeAmdPki, vcek: FakeEndorsement
) -> None:
    """RFC 5280: an entry without certificateIssuer names a certificate of
    the CRL issuer. AMD's VCEKs all have serial 0, so matching serials alone
    would let one ARK entry revoke every VCEK; the VCEK's serial in the ARK's
    CRL (no certificateIssuer) therefore does not revoke it."""
    crl = milan.crl([vcek.serial])
    assert fake_verify(milan, vcek, crls=[crl]).revocation_checked


# --- revoked --------------------------------------------------------------------------------------


def test_revoked_ask_in_the_roots_crl(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    ask_serial = serial(x509.load_der_x509_certificate(milan.ask_der))
    with pytest.raises(
        VerificationFailed,
        match=rf"^intermediate certificate \(ASK/ASVK\) .*CN=SEV-Milan serial 0x{ask_serial:x} is revoked since "
        r".* \(CRL of .*CN=ARK-Milan\)$",
    ):
        fake_verify(milan, vcek, crls=[milan.crl([milan.ask_der])])


def test_revoked_vcek_in_the_asks_crl(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    crl = milan.crl([vcek], issuer=SigningKey.VCEK)
    with pytest.raises(
        VerificationFailed,
        match=rf"^endorsement certificate \(VCEK/VLEK\) .*CN=SEV-VCEK serial 0x{vcek.serial:x} is revoked .*CN=SEV-Milan\)$",
    ):
        fake_verify(milan, vcek, crls=[crl])


def test_revoked_vcek_in_the_roots_indirect_crl(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    crl = milan.crl([milan.vcek(), vcek])  # both entries name the ASK as certificate issuer
    with pytest.raises(
        VerificationFailed, match=r"^endorsement certificate \(VCEK/VLEK\) .* is revoked .*ARK-Milan"
    ):
        fake_verify(milan, vcek, crls=[crl])


def test_revoked_asvk_for_a_vlek_report(milan: FakeAmdPki) -> None:
    vlek = milan.vlek()
    assert fake_verify(milan, vlek, crls=[milan.crl()]).claims.signer == "VLEK"
    with pytest.raises(
        VerificationFailed, match=r"^intermediate certificate \(ASK/ASVK\) .*CN=SEV-VLEK-Milan serial"
    ):
        fake_verify(milan, vlek, crls=[milan.crl([milan.asvk_der])])


def test_revocation_is_checked_on_every_call_despite_caches(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    """The chain signatures are cached; revocation and CRL time are not."""
    good, bad = milan.crl(), milan.crl([milan.ask_der], number=2)
    for _ in range(2):
        assert fake_verify(milan, vcek, crls=[good]).revocation_checked
        with pytest.raises(VerificationFailed, match=r"is revoked"):
            fake_verify(milan, vcek, crls=[bad])
    with pytest.raises(VerificationFailed, match=r"expired"):
        fake_verify(milan, vcek, crls=[good], at=milan.now + timedelta(days=8))


# --- CRLs that are not acceptable ------------------------------------------------------------------


def test_crl_signed_by_another_key(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    forged = milan.crl(key=other_rsa_key())
    with pytest.raises(VerificationFailed, match=r"^CRL signature does not verify under .*CN=ARK-Milan$"):
        fake_verify(milan, vcek, crls=[forged])
    forged_ask_crl = milan.crl(issuer=SigningKey.VCEK, key=other_rsa_key())
    with pytest.raises(VerificationFailed, match=r"^CRL signature does not verify under .*CN=SEV-Milan$"):
        fake_verify(milan, vcek, crls=[forged_ask_crl])


def test_crl_not_signed_with_pss(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    with pytest.raises(VerificationFailed, match=r"^CRL of .*CN=ARK-Milan is not signed with RSASSA-PSS$"):
        fake_verify(milan, vcek, crls=[milan.crl(pss=False)])


def test_forged_crl_in_amds_name_for_a_real_report() -> None:
    """A CRL claiming to be ARK-Milan's, signed by another key: refused for a
    real report under AMD's roots (and not silently ignored)."""
    ark = sample(OAK).ark
    now = VERIFY_AT
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ark.subject)
        .last_update(now - timedelta(days=1))
        .next_update(now + timedelta(days=1))
        .sign(other_rsa_key(), hashes.SHA384(), rsa_padding=PSS)
        .public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(
        VerificationFailed, match=r"^CRL signature does not verify under CN=ARK-Milan,O=Advanced Micro"
    ):
        real_verify(OAK, crls=[crl])


def test_expired_crl(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    crl = milan.crl(this_update=milan.now - timedelta(hours=20), next_update=milan.now - timedelta(hours=10))
    with pytest.raises(VerificationFailed, match=r"^CRL of .*CN=ARK-Milan expired at .* \(checked at "):
        fake_verify(milan, vcek, crls=[crl])
    # The same CRL was fine while it was current: time is the caller's.
    assert fake_verify(milan, vcek, crls=[crl], at=milan.now - timedelta(hours=15)).revocation_checked


def test_crl_not_yet_valid(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    crl = milan.crl(this_update=milan.now + timedelta(hours=1))
    with pytest.raises(VerificationFailed, match=r"^CRL of .*CN=ARK-Milan is not yet valid at "):
        fake_verify(milan, vcek, crls=[crl])


@pytest.mark.parametrize("blob", [b"", b"\x30\x00", b"not a crl", bytes(64)])
def test_malformed_crl(milan: FakeAmdPki, vcek: FakeEndorsement, blob: bytes) -> None:
    with pytest.raises(MalformedEvidence, match=r"^CRL: not a valid CRL"):
        fake_verify(milan, vcek, crls=[blob])


def test_truncated_crl(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    crl = milan.crl([milan.vcek()])
    for cut in (1, 10, len(crl) // 2, len(crl) - 1):
        with pytest.raises(MalformedEvidence, match=r"^CRL: not a valid CRL"):
            fake_verify(milan, vcek, crls=[crl[:cut]])


def test_delta_crl_is_refused(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    delta = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(milan.ark_name)
        .last_update(milan.now - timedelta(hours=1))
        .next_update(milan.now + timedelta(days=1))
        .add_extension(x509.DeltaCRLIndicator(1), critical=True)
        .sign(milan.keys.ark, hashes.SHA384(), rsa_padding=PSS)
        .public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(MalformedEvidence, match=r"^CRL is a delta CRL; a full CRL is needed$"):
        fake_verify(milan, vcek, crls=[delta])


def test_partial_crl_is_refused(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    """A CRL scoped to some revocation reasons is not the full list."""
    partial = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(milan.ark_name)
        .last_update(milan.now - timedelta(hours=1))
        .next_update(milan.now + timedelta(days=1))
        .add_extension(
            x509.IssuingDistributionPoint(
                full_name=None,
                relative_name=None,
                only_contains_user_certs=False,
                only_contains_ca_certs=False,
                only_some_reasons=frozenset({x509.ReasonFlags.key_compromise}),
                indirect_crl=False,
                only_contains_attribute_certs=False,
            ),
            critical=True,
        )
        .sign(milan.keys.ark, hashes.SHA384(), rsa_padding=PSS)
        .public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(MalformedEvidence, match=r"^CRL covers only some reasons or attribute certificates$"):
        fake_verify(milan, vcek, crls=[partial])


def test_crl_of_another_product_is_ignored(
    milan: FakeAmdPki, genoa: FakeAmdPki, vcek: FakeEndorsement
) -> None:
    result = fake_verify(milan, vcek, crls=[genoa.crl([milan.ask_der])])
    assert result.crl_issuers == ()
    with pytest.raises(CollateralUnavailable):
        fake_verify(milan, vcek, crls=[genoa.crl()], require_crl=True)


# --- hwID length per product ----------------------------------------------------------------


def test_turin_hwid_is_8_bytes_and_chip_id_zero_padded(turin: FakeAmdPki) -> None:
    vcek = turin.vcek()
    assert len(vcek.hwid) == 8 and vcek.chip_id == vcek.hwid + bytes(56)
    assert fake_verify(turin, vcek).claims.chip_id == vcek.chip_id
    report = turin.report(vcek, chip_id=vcek.hwid + bytes(55) + b"\x01")
    with pytest.raises(
        VerificationFailed, match=r"^report CHIP_ID has non-zero bytes after the 8-byte Turin hwID$"
    ):
        fake_verify(turin, vcek, report)


def test_turin_vcek_with_a_64_byte_hwid(turin: FakeAmdPki) -> None:
    vcek = turin.vcek(hwid=bytes(range(1, 65)))
    with pytest.raises(MalformedEvidence, match=r"^VCEK hwID is 64 bytes; a Turin VCEK's is 8$"):
        fake_verify(turin, vcek)


@pytest.mark.parametrize("size", [8, 32, 63])
def test_genoa_vcek_with_a_short_hwid(genoa: FakeAmdPki, size: int) -> None:
    vcek = genoa.vcek(hwid=bytes(range(1, size + 1)))
    with pytest.raises(MalformedEvidence, match=rf"^VCEK hwID is {size} bytes; a Genoa VCEK's is 64$"):
        fake_verify(genoa, vcek)


def test_real_turin_vcek_hwid_is_8_bytes() -> None:
    assert real_verify("turin-v5-oak").report.chip_id[8:] == bytes(56)


# --- productName must agree with the report ----------------------------------------------------------


def test_vcek_for_another_product_than_the_reports_cpuid(milan: FakeAmdPki) -> None:
    vcek = milan.vcek(product_name="Genoa")
    with pytest.raises(
        VerificationFailed,
        match=r"^endorsement certificate is for Genoa \(productName 'Genoa'\) but the report is from a Milan$",
    ):
        fake_verify(milan, vcek)


def test_v2_report_with_hint_and_vcek_of_another_product(milan: FakeAmdPki) -> None:
    vcek = milan.vcek(product_name="Genoa")
    v2 = milan.report(vcek, version=2, cpuid_fam_id=0, cpuid_mod_id=0, cpuid_step=0)
    with pytest.raises(
        VerificationFailed, match=r"is for Genoa \(productName 'Genoa'\) but the report is from a Milan"
    ):
        fake_verify(milan, vcek, v2, product_hint=Product.MILAN)
    # Without a hint the certificate decides the product; no Genoa root trusted.
    with pytest.raises(VerificationFailed, match=r"^no trusted root for product Genoa$"):
        fake_verify(milan, vcek, v2)


def test_v2_report_hint_and_vcek_agree(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    v2 = milan.report(vcek, version=2, cpuid_fam_id=0, cpuid_mod_id=0, cpuid_step=0)
    assert fake_verify(milan, vcek, v2, product_hint=Product.MILAN).product is Product.MILAN
    assert fake_verify(milan, vcek, v2).product is Product.MILAN


def test_vlek_for_another_product(genoa: FakeAmdPki) -> None:
    vlek = genoa.vlek(product_name="Milan")
    with pytest.raises(
        VerificationFailed, match=r"is for Milan \(productName 'Milan'\) but the report is from a Genoa"
    ):
        fake_verify(genoa, vlek)


def test_real_report_with_a_hint_that_contradicts_cpuid() -> None:
    with pytest.raises(MalformedEvidence, match=r"report CPUID says Milan"):
        real_verify(OAK, product_hint=Product.GENOA)


# --- REPORTED_TCB reserved bytes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("product", "byte"), [(Product.MILAN, 2), (Product.MILAN, 5), (Product.TURIN, 4), (Product.TURIN, 6)]
)
def test_reported_tcb_reserved_bytes(
    milan: FakeAmdPki, turin: FakeAmdPki, product: Product, byte: int
) -> None:
    pki = milan if product is Product.MILAN else turin
    vcek = pki.vcek()
    raw = bytearray(vcek.reported_tcb.raw.to_bytes(8, "little"))
    raw[byte] = 1
    tcb = TcbVersion(int.from_bytes(raw, "little"))
    assert not tcb.reserved_ok(product) and tcb.components(product) == vcek.tcb
    report = pki.report(vcek, reported_tcb=tcb.raw)
    with pytest.raises(
        MalformedEvidence,
        match=rf"^REPORTED_TCB {tcb.hex()} has non-zero reserved bytes for {product.value}$",
    ):
        fake_verify(pki, vcek, report)


def test_reserved_tcb_byte_in_a_real_report_is_refused() -> None:
    """Flipping a reserved REPORTED_TCB byte of a real report: refused (the
    signature no longer verifies either, but the structure is checked first)."""
    s = sample(OAK)
    bad = patch(s.report, 0x180 + 3, b"\x01")
    with pytest.raises(
        MalformedEvidence, match=r"^REPORTED_TCB 0400000100\w+ has non-zero reserved bytes for Milan$"
    ):
        verify_report(bad, s.vcek_der, s.ask_der, amd_anchors(), VERIFY_AT)
    assert struct.unpack_from("<Q", s.report, 0x180)[0] == 0xDB18000000000004


# --- every byte of a CRL matters ---------------------------------------------------------------------


def test_every_single_byte_change_of_a_crl_is_refused(milan: FakeAmdPki, vcek: FakeEndorsement) -> None:
    """Each byte of a root CRL (with an indirect entry) XOR 0x01, checked with
    require_crl: only our error classes come out, never another exception;
    and a change inside the signed TBSCertList never verifies (a changed
    issuer name makes the CRL someone else's: CollateralUnavailable). The
    bytes outside it (outer signatureAlgorithm, BIT STRING header) may
    verify: the signature does not cover them and they change nothing."""
    crl = milan.crl([milan.vcek()])
    parsed = x509.load_der_x509_crl(crl)
    tbs = parsed.tbs_certlist_bytes
    signed = range(crl.index(tbs), crl.index(tbs) + len(tbs))
    outcomes: dict[str, int] = {}
    for pos in range(len(crl)):
        mutated = bytearray(crl)
        mutated[pos] ^= 0x01
        try:
            fake_verify(milan, vcek, crls=[bytes(mutated)], require_crl=True)
        except (MalformedEvidence, VerificationFailed, CollateralUnavailable) as exc:
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
        else:
            assert pos not in signed, f"byte 0x{pos:x} of the signed CRL changed and it verified"
            outcomes["verified"] = outcomes.get("verified", 0) + 1
    assert (
        outcomes["MalformedEvidence"] and outcomes["VerificationFailed"] and outcomes["CollateralUnavailable"]
    )
    assert outcomes.get("verified", 0) < len(crl) - len(tbs)
