"""stockade.testing.amd (fake AMD PKI) and stockade.testing.kds (fake KDS):
the public helpers behave like the real thing where it matters, and never
pass for AMD."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from stockade.errors import VerificationFailed
from stockade.evidence.pki import load_der, serial
from stockade.evidence.snp.abi import AttestationReport, Product, SigningKey
from stockade.evidence.snp.certs import read_extensions
from stockade.evidence.snp.collateral import split_cert_chain
from stockade.evidence.snp.verify import amd_anchors, verify_report
from stockade.testing.amd import (
    CPUID,
    DEFAULT_TCB,
    FAKE_ORG,
    FakeAmdPki,
    FakeKeys,
    shared_keys,
)
from stockade.testing.kds import FakeKds

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@pytest.fixture(scope="module")
def pkis() -> dict[Product, FakeAmdPki]:
    return {p: FakeAmdPki(p) for p in Product}


def assert_pss_signed(child: x509.Certificate, issuer: x509.Certificate) -> None:
    assert child.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS
    assert child.issuer == issuer.subject
    key = issuer.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(child.signature, child.tbs_certificate_bytes, PSS, hashes.SHA384())


@pytest.mark.parametrize("product", list(Product))
def test_chain_is_built_like_amds(pkis: dict[Product, FakeAmdPki], product: Product) -> None:
    pki = pkis[product]
    ark, ask, asvk = (load_der(d, "fake") for d in (pki.ark_der, pki.ask_der, pki.asvk_der))
    for ca in (ark, ask, asvk):
        key = ca.public_key()
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 4096
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert FAKE_ORG in ca.subject.rfc4514_string()
        assert_pss_signed(ca, ark)
    cn = {c: c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value for c in (ark, ask, asvk)}
    assert [cn[ark], cn[ask], cn[asvk]] == [
        f"ARK-{product.value}",
        f"SEV-{product.value}",
        f"SEV-VLEK-{product.value}",
    ]
    assert split_cert_chain(pki.cert_chain_pem()) == (pki.ask_der, pki.ark_der)
    assert split_cert_chain(pki.cert_chain_pem(SigningKey.VLEK)) == (pki.asvk_der, pki.ark_der)


@pytest.mark.parametrize("product", list(Product))
def test_vcek_and_vlek_extensions(pkis: dict[Product, FakeAmdPki], product: Product) -> None:
    pki = pkis[product]
    vcek = pki.vcek()
    cert = vcek.certificate
    assert_pss_signed(cert, load_der(pki.ask_der, "ask"))
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
    ext = read_extensions(cert)
    assert ext.product is product and ext.tcb == DEFAULT_TCB[product]
    assert ext.hwid is not None and len(ext.hwid) == (8 if product is Product.TURIN else 64)
    assert vcek.chip_id == ext.hwid + bytes(64 - len(ext.hwid))
    assert serial(cert) > 0  # AMD's are 0; pyca cannot build that
    vlek = pki.vlek(csp_id="csp.example")
    vext = read_extensions(vlek.certificate)
    assert (vext.product_name, vext.hwid, vext.csp_id) == (product.value, None, "csp.example")
    assert_pss_signed(vlek.certificate, load_der(pki.asvk_der, "asvk"))


@pytest.mark.parametrize("product", list(Product))
@pytest.mark.parametrize("signer", [SigningKey.VCEK, SigningKey.VLEK])
def test_reports_verify_under_the_fake_root_only(
    pkis: dict[Product, FakeAmdPki], product: Product, signer: SigningKey
) -> None:
    pki = pkis[product]
    e = pki.vcek() if signer is SigningKey.VCEK else pki.vlek()
    report = pki.report(e, report_data=b"\x42" * 64, vmpl=1)
    parsed = AttestationReport.from_bytes(report)
    assert (parsed.cpuid_fam_id, parsed.cpuid_mod_id, parsed.cpuid_step) == CPUID[product]
    assert parsed.version == (5 if product is Product.TURIN else 3)
    claims = verify_report(report, e.der, pki.intermediate_der(signer), [pki.anchor()], pki.now).claims
    assert (claims.platform, claims.product, claims.signer) == ("snp", product.value, signer.name)
    assert (claims.report_data, claims.vmpl, dict(claims.tcb)) == (b"\x42" * 64, 1, DEFAULT_TCB[product])
    with pytest.raises(VerificationFailed, match=r"no trusted root .* issued the intermediate"):
        verify_report(report, e.der, pki.intermediate_der(signer), amd_anchors(), pki.now)


def test_sign_and_anchor_label(pkis: dict[Product, FakeAmdPki]) -> None:
    pki = pkis[Product.MILAN]
    vcek = pki.vcek()
    report = bytearray(pki.report(vcek))
    report[0x50] ^= 1
    with pytest.raises(VerificationFailed, match=r"report signature does not verify"):
        verify_report(bytes(report), vcek.der, pki.ask_der, [pki.anchor()], pki.now)
    resigned = pki.sign(bytes(report), vcek)
    assert verify_report(resigned, vcek.der, pki.ask_der, [pki.anchor()], pki.now).claims.report_data[0] == 1
    sim_labelled = FakeAmdPki(Product.MILAN, platform="sim", now=pki.now)
    claims = verify_report(resigned, vcek.der, pki.ask_der, [sim_labelled.anchor()], pki.now).claims
    assert claims.platform == "sim" and not claims.hardware_protected


def test_keys_are_shared_per_process_unless_given(pkis: dict[Product, FakeAmdPki]) -> None:
    assert pkis[Product.MILAN].keys is pkis[Product.GENOA].keys is shared_keys()
    small = FakeKeys(*(rsa.generate_private_key(65537, 2048) for _ in range(3)))
    own = FakeAmdPki(Product.MILAN, keys=small)
    assert own.keys is small
    assert (
        load_der(own.ark_der, "ark").public_key() != load_der(pkis[Product.MILAN].ark_der, "ark").public_key()
    )


def test_crl_contents(pkis: dict[Product, FakeAmdPki]) -> None:
    pki = pkis[Product.GENOA]
    vcek = pki.vcek()
    crl = x509.load_der_x509_crl(pki.crl([pki.ask_der, vcek, 77], number=9))
    assert crl.issuer == pki.ark_name
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 9
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical and idp.value.indirect_crl
    entries = list(crl)
    assert [e.serial_number for e in entries] == [serial(load_der(pki.ask_der, "ask")), vcek.serial, 77]
    issuer_ext = entries[1].extensions.get_extension_for_class(x509.CertificateIssuer)
    assert issuer_ext.critical and list(issuer_ext.value) == [x509.DirectoryName(pki.ask_name)]
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=7)
    direct = x509.load_der_x509_crl(pki.crl([vcek], issuer=SigningKey.VCEK))
    assert direct.issuer == pki.ask_name and not next(iter(direct)).extensions
    key = load_der(pki.ask_der, "ask").public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(direct.signature, direct.tbs_certlist_bytes, PSS, hashes.SHA384())


# --- fake KDS ------------------------------------------------------------------------------------


@pytest.fixture
def kds(pkis: dict[Product, FakeAmdPki]) -> Iterator[FakeKds]:
    with FakeKds() as server:
        for pki in pkis.values():
            server.add_pki(pki)
        yield server


def test_kds_paths(kds: FakeKds, pkis: dict[Product, FakeAmdPki]) -> None:
    turin = pkis[Product.TURIN]
    chip = turin.vcek(tcb={"fmc": 1, "bootloader": 2, "tee": 0, "snp": 3, "microcode": 4})
    kds.add_vcek(chip)
    base = f"{kds.base_url}/vcek/v1/Turin/{chip.hwid.hex()}"
    with httpx.Client() as http:
        ok = http.get(f"{base}?ucodeSPL=4&snpSPL=3&blSPL=2&fmcSPL=01")  # any order, leading zeros
        assert (ok.status_code, ok.content) == (200, chip.der)
        assert http.get(f"{base}?blSPL=2&snpSPL=3&ucodeSPL=4").status_code == 404  # fmcSPL missing = 0
        assert http.get(f"{kds.base_url}/vcek/v1/Turin/{bytes(64).hex()}?blSPL=1").status_code == 400
        assert http.get(f"{base}?blSPL=256").status_code == 400
        assert http.get(f"{base}?blSPL=x").status_code == 400
        assert http.get(f"{base}?nonsense=1").status_code == 400
        assert http.get(f"{kds.base_url}/vcek/v1/Naples/cert_chain").status_code == 404
        assert http.get(f"{kds.base_url}/vcek/v1/Milan/crl").headers["content-type"] == "application/pkix-crl"
        assert http.get(f"{kds.base_url}/vlek/v1/Genoa/cert_chain").content == pkis[
            Product.GENOA
        ].cert_chain_pem(SigningKey.VLEK)
    assert kds.count("/vcek/v1/Turin/") == 6 and kds.count() == 9
    with pytest.raises(ValueError, match=r"VCEKs only"):
        kds.add_vcek(turin.vlek())


def test_kds_faults_apply_in_order_and_expire(kds: FakeKds) -> None:
    url = f"{kds.base_url}/vcek/v1/Milan/crl"
    kds.fail(429, path="/vcek/v1/Milan/crl", retry_after=5)
    kds.fail(503, path="/vcek/v1/Milan/crl")
    kds.garbage(b"junk", path="/vcek/v1/Milan/crl")
    kds.fail(404, path="/vcek/v1/Genoa/")
    with httpx.Client() as http:
        first = http.get(url)
        assert (first.status_code, first.headers["retry-after"]) == (429, "5")
        assert http.get(url).status_code == 503
        assert http.get(url).content == b"junk"
        assert http.get(url).status_code == 200
        assert http.get(f"{kds.base_url}/vcek/v1/Genoa/crl").status_code == 404
        assert http.get(f"{kds.base_url}/vcek/v1/Genoa/crl").status_code == 200
        kds.fail(500, times=None)
        assert [http.get(url).status_code for _ in range(3)] == [500, 500, 500]
        kds.clear_faults()
        assert http.get(url).status_code == 200


def test_kds_stop_cuts_delays_short(pkis: dict[Product, FakeAmdPki]) -> None:
    kds = FakeKds().start()
    kds.add_pki(pkis[Product.MILAN])
    kds.delay(30.0, times=None)
    with httpx.Client(timeout=0.1) as http, pytest.raises(httpx.ReadTimeout):
        http.get(f"{kds.base_url}/vcek/v1/Milan/crl")
    start = time.monotonic()
    kds.stop()
    assert time.monotonic() - start < 2
    with pytest.raises(RuntimeError, match=r"not started"):
        _ = kds.base_url
