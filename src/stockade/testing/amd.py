"""A fake AMD PKI for tests: ARK -> ASK -> VCEK and ARK -> ASVK -> VLEK for
any product, signed reports, and CRLs. Public: test your own policies and
collateral handling with it; nothing here is AMD's, nothing here protects.

The certificates are built like AMD's (same builders as the sim chip,
stockade.evidence.sim.chip): RSA-4096 ARK/ASK/ASVK signing with RSASSA-PSS
SHA-384 (salt 48), ECDSA P-384 VCEK/VLEK keys, AMD's VCEK extensions in KDS
order (productName, SPLs, 64-byte hwID; on Turin fmcSPL and an 8-byte hwID;
csp_id on a VLEK), subject names like AMD's ("ARK-Milan", "SEV-Milan",
"SEV-VLEK-Milan", "SEV-VCEK") but with the organization
``FAKE_ORG``, so that a fake chain can never pass for AMD's under
``amd_anchors()``. Trust it with :meth:`FakeAmdPki.anchor`.

Differences from AMD, deliberate: serial numbers are random and positive
(pyca/cryptography refuses to build serial 0, which AMD's VCEKs carry); the
intermediates carry no CRL distribution point.

Key size, decided: always RSA-4096, as AMD's. A verifier may legitimately
insist on 4096-bit roots, and a fake that a strict verifier refuses would
test nothing. Generating one takes 0.3-2 s, so by default every
:class:`FakeAmdPki` in a process uses the same three keys
(:func:`shared_keys`, generated once): the fake Milan ARK and the fake Genoa
ARK then differ in name but not in key. Pass ``keys=FakeKeys.generate()``
when a test needs roots that differ in key too (cross-product key confusion).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from stockade.evidence.pki import der_of, load_der, serial
from stockade.evidence.sim import chip as builders
from stockade.evidence.snp.abi import (
    SIGNED_SIZE,
    Product,
    ReportFields,
    SigningKey,
    TcbVersion,
    with_signature,
)
from stockade.evidence.snp.verify import HWID_LENGTH, TrustAnchor

FAKE_ORG = "Fake AMD (stockade.testing) - NOT AMD"

#: CPUID family, model, stepping of one part of each product (as in real reports).
CPUID = {
    Product.MILAN: (0x19, 0x01, 0x01),
    Product.GENOA: (0x19, 0x11, 0x01),
    Product.TURIN: (0x1A, 0x02, 0x01),
}
#: productName of a VCEK as KDS issues them (tests/data vectors); a VLEK's
#: is the bare product name.
VCEK_PRODUCT_NAME = {Product.MILAN: "Milan-B0", Product.GENOA: "Genoa", Product.TURIN: "Turin"}
#: A realistic TCB per product (that of the real vectors).
DEFAULT_TCB: dict[Product, dict[str, int]] = {
    Product.MILAN: {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219},
    Product.GENOA: {"bootloader": 10, "tee": 0, "snp": 23, "microcode": 84},
    Product.TURIN: {"fmc": 0, "bootloader": 1, "tee": 0, "snp": 2, "microcode": 71},
}
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@dataclass(frozen=True)
class FakeKeys:
    """The RSA-4096 keys of a fake PKI's CAs."""

    ark: rsa.RSAPrivateKey
    ask: rsa.RSAPrivateKey
    asvk: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> FakeKeys:
        """Three fresh RSA-4096 keys (takes seconds)."""
        return cls(*(rsa.generate_private_key(public_exponent=65537, key_size=4096) for _ in range(3)))


@functools.lru_cache(maxsize=1)
def shared_keys() -> FakeKeys:
    """The process-wide keys every FakeAmdPki uses by default."""
    return FakeKeys.generate()


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, FAKE_ORG),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        ]
    )


def _tcb_version(product: Product, tcb: dict[str, int]) -> TcbVersion:
    return TcbVersion.from_components(product, **tcb)


@dataclass(frozen=True)
class FakeEndorsement:
    """A VCEK or VLEK: its private key, its certificate, and what a report
    signed with it must say (TCB, CHIP_ID)."""

    product: Product
    signer: SigningKey
    key: ec.EllipticCurvePrivateKey
    der: bytes
    tcb: dict[str, int] = field(hash=False)
    chip_id: bytes  # 64 bytes as in a report (zero for a VLEK)

    @property
    def certificate(self) -> x509.Certificate:
        return load_der(self.der, "fake endorsement certificate")

    @property
    def serial(self) -> int:
        return serial(self.certificate)

    @property
    def reported_tcb(self) -> TcbVersion:
        return _tcb_version(self.product, self.tcb)

    @property
    def hwid(self) -> bytes:
        return self.chip_id[: HWID_LENGTH[self.product]]


class FakeAmdPki:
    """A fake ARK with its ASK (VCEK signer) and ASVK (VLEK signer) for one
    product. Certificates are valid from a day before ``now`` for ``years``."""

    def __init__(
        self,
        product: Product = Product.MILAN,
        *,
        keys: FakeKeys | None = None,
        now: datetime | None = None,
        years: int = 25,
        platform: str = "snp",
    ) -> None:
        self.product = product
        self.keys = keys or shared_keys()
        self.platform = platform
        self.now = now or datetime.now(UTC)
        not_before, not_after = self.now - timedelta(days=1), self.now + timedelta(days=365 * years)
        p = product.value
        self.ark_name, self.ask_name, self.asvk_name = (
            _name(f"ARK-{p}"),
            _name(f"SEV-{p}"),
            _name(f"SEV-VLEK-{p}"),
        )
        k = self.keys
        ark = builders.ca_certificate(
            self.ark_name, self.ark_name, k.ark.public_key(), k.ark, not_before, not_after
        )
        ask = builders.ca_certificate(
            self.ask_name, self.ark_name, k.ask.public_key(), k.ark, not_before, not_after
        )
        asvk = builders.ca_certificate(
            self.asvk_name, self.ark_name, k.asvk.public_key(), k.ark, not_before, not_after
        )
        self.ark_der, self.ask_der, self.asvk_der = der_of(ark), der_of(ask), der_of(asvk)

    # --- chain ---

    def anchor(self) -> TrustAnchor:
        """This fake ARK as a trust anchor (platform "snp" by default, so
        that policies written for real hardware can be exercised)."""
        return TrustAnchor(self.platform, self.product, self.ark_der)

    def intermediate_der(self, signer: SigningKey = SigningKey.VCEK) -> bytes:
        return self.ask_der if signer is SigningKey.VCEK else self.asvk_der

    def cert_chain_pem(self, signer: SigningKey = SigningKey.VCEK) -> bytes:
        """Intermediate then ARK, PEM: what KDS serves at .../cert_chain."""
        pem = b""
        for der in (self.intermediate_der(signer), self.ark_der):
            pem += load_der(der, "fake CA").public_bytes(serialization.Encoding.PEM)
        return pem

    # --- endorsement keys ---

    def _endorsement(
        self,
        signer: SigningKey,
        *,
        tcb: dict[str, int] | None,
        key: ec.EllipticCurvePrivateKey | None,
        product_name: str,
        hwid: bytes | None,
        csp_id: str | None,
        not_before: datetime | None,
        not_after: datetime | None,
        serial_number: int | None,
    ) -> FakeEndorsement:
        tcb = dict(DEFAULT_TCB[self.product] if tcb is None else tcb)
        key = key or ec.generate_private_key(ec.SECP384R1())
        issuer, issuer_key = (
            (self.ask_name, self.keys.ask) if signer is SigningKey.VCEK else (self.asvk_name, self.keys.asvk)
        )
        cn = "SEV-VCEK" if signer is SigningKey.VCEK else "SEV-VLEK"
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, FAKE_ORG),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            ]
        )
        cert = builders.endorsement_certificate(
            subject,
            issuer,
            key.public_key(),
            issuer_key,
            not_before or self.now - timedelta(days=1),
            not_after or self.now + timedelta(days=365 * 7),
            builders.endorsement_extensions(
                product_name,
                tcb,
                hwid=hwid,
                csp_id=csp_id,
                reserved_spls=(5, 6, 7) if self.product is Product.TURIN else (4, 5, 6, 7),
            ),
            serial=serial_number,
        )
        chip_id = bytes(64) if hwid is None else hwid + bytes(64 - len(hwid))
        return FakeEndorsement(self.product, signer, key, der_of(cert), tcb, chip_id)

    def vcek(
        self,
        *,
        hwid: bytes | None = None,
        tcb: dict[str, int] | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        product_name: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        serial_number: int | None = None,
    ) -> FakeEndorsement:
        """A VCEK for chip ``hwid`` (random by default; 64 bytes, 8 on Turin)
        at ``tcb`` (DEFAULT_TCB of the product by default; Turin's has "fmc")."""
        if hwid is None:
            hwid = secrets.token_bytes(HWID_LENGTH[self.product])
        if len(hwid) > 64:
            raise ValueError("a hwID is at most 64 bytes")
        return self._endorsement(
            SigningKey.VCEK,
            tcb=tcb,
            key=key,
            product_name=product_name or VCEK_PRODUCT_NAME[self.product],
            hwid=hwid,
            csp_id=None,
            not_before=not_before,
            not_after=not_after,
            serial_number=serial_number,
        )

    def vlek(
        self,
        *,
        csp_id: str = "fake-csp.example",
        tcb: dict[str, int] | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        product_name: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        serial_number: int | None = None,
    ) -> FakeEndorsement:
        """A VLEK (issued by the ASVK to a cloud provider ``csp_id``)."""
        return self._endorsement(
            SigningKey.VLEK,
            tcb=tcb,
            key=key,
            product_name=product_name or self.product.value,
            hwid=None,
            csp_id=csp_id,
            not_before=not_before,
            not_after=not_after,
            serial_number=serial_number,
        )

    # --- reports ---

    def report(self, endorsement: FakeEndorsement, **fields: Any) -> bytes:
        """A signed ATTESTATION_REPORT (version 3; 5 on Turin) from this
        product's CPU, with the endorsement's TCB as every TCB field and its
        CHIP_ID; any ReportFields field can be overridden."""
        tcb = endorsement.reported_tcb.raw
        fam, model, step = CPUID[self.product]
        base = ReportFields(
            version=5 if self.product is Product.TURIN else 3,
            policy=0x30000,
            current_tcb=tcb,
            reported_tcb=tcb,
            committed_tcb=tcb,
            launch_tcb=tcb,
            platform_info=0x1,
            key_info=int(endorsement.signer) << 2,
            report_id=secrets.token_bytes(32),
            cpuid_fam_id=fam,
            cpuid_mod_id=model,
            cpuid_step=step,
            chip_id=endorsement.chip_id,
            current_major=1,
            current_minor=55,
            current_build=1,
            committed_major=1,
            committed_minor=55,
            committed_build=1,
        )
        return self.sign(replace(base, **fields).unsigned_bytes(), endorsement)

    @staticmethod
    def sign(report: bytes, endorsement: FakeEndorsement | ec.EllipticCurvePrivateKey) -> bytes:
        """``report`` with its signature replaced by one over bytes 0x000-0x29F."""
        key = endorsement.key if isinstance(endorsement, FakeEndorsement) else endorsement
        r, s = decode_dss_signature(key.sign(report[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384())))
        return with_signature(report, r, s)

    # --- CRLs ---

    def crl(
        self,
        revoked: Iterable[bytes | x509.Certificate | FakeEndorsement | int] = (),
        *,
        issuer: SigningKey | None = None,
        this_update: datetime | None = None,
        next_update: datetime | None = None,
        number: int = 1,
        key: rsa.RSAPrivateKey | None = None,
        pss: bool = True,
        revoked_at: datetime | None = None,
    ) -> bytes:
        """A DER CRL, by default issued and signed by the ARK as AMD's KDS
        CRLs are (``issuer=SigningKey.VCEK``/``VLEK``: by the ASK/ASVK).

        ``revoked``: certificates (DER, parsed, or FakeEndorsement) or bare
        serials (of certificates of the CRL issuer). A certificate not issued
        by the CRL issuer gets an indirect entry naming its issuer
        (certificateIssuer, RFC 5280 5.3.3), e.g. a VCEK in the ARK's CRL.
        ``key``/``pss``: sign with another key, or with PKCS#1 v1.5 (tests
        of bad signatures)."""
        if issuer is None:
            name, signing_key = self.ark_name, self.keys.ark
        elif issuer is SigningKey.VCEK:
            name, signing_key = self.ask_name, self.keys.ask
        else:
            name, signing_key = self.asvk_name, self.keys.asvk
        now = self.now
        this_update = this_update or now - timedelta(hours=1)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(name)
            .last_update(this_update)
            .next_update(next_update or this_update + timedelta(days=7))
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        indirect = False
        for item in revoked:
            entry = x509.RevokedCertificateBuilder().revocation_date(revoked_at or this_update)
            if isinstance(item, int):
                entry = entry.serial_number(item)
            else:
                if isinstance(item, FakeEndorsement):
                    cert = item.certificate
                elif isinstance(item, bytes):
                    cert = load_der(item, "certificate to revoke")
                else:
                    cert = item
                entry = entry.serial_number(serial(cert))
                if cert.issuer != name:
                    indirect = True
                    entry = entry.add_extension(
                        x509.CertificateIssuer([x509.DirectoryName(cert.issuer)]), critical=True
                    )
            builder = builder.add_revoked_certificate(entry.build())
        if indirect:
            builder = builder.add_extension(
                x509.IssuingDistributionPoint(
                    full_name=None,
                    relative_name=None,
                    only_contains_user_certs=False,
                    only_contains_ca_certs=False,
                    only_some_reasons=None,
                    indirect_crl=True,
                    only_contains_attribute_certs=False,
                ),
                critical=True,
            )
        signer = key or signing_key
        crl = (
            builder.sign(signer, hashes.SHA384(), rsa_padding=_PSS)
            if pss
            else builder.sign(signer, hashes.SHA384())
        )
        return crl.public_bytes(serialization.Encoding.DER)


__all__ = [
    "CPUID",
    "DEFAULT_TCB",
    "FAKE_ORG",
    "VCEK_PRODUCT_NAME",
    "FakeAmdPki",
    "FakeEndorsement",
    "FakeKeys",
    "shared_keys",
]
