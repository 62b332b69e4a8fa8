"""Helpers for the SEV-SNP tests: the copied real vectors and a sim-chain
certificate factory.

The real vectors live in tests/data/vectors (see its README.md for their
origin). The factory issues extra certificates from the sim chip's own keys
(``<state dir>/sim/chip/*.key``) so that one check at a time can be made to
fail while every other check still passes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from evidence_support import VECTORS, VectorSample
from stockade.evidence.pki import der_of, load_der, load_pem_chain
from stockade.evidence.sim import chip as simchip
from stockade.evidence.snp import certs as amd
from stockade.evidence.snp.abi import SIGNED_SIZE, Product, with_signature
from stockade.evidence.snp.verify import TrustAnchor
from stockade.wire import der

SNP = VECTORS / "snp"
COMMON_AMD = VECTORS / "common" / "amd"

#: One instant inside the validity window of every real VCEK/VLEK, ASK/ASVK
#: and ARK in tests/data (the AWS VLEK is valid 2024-12-10 .. 2025-12-10,
#: the Turin VCEK from 2025-07-17).
VERIFY_AT = datetime(2025, 8, 1, tzinfo=UTC)

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@dataclass(frozen=True)
class Sample(VectorSample):
    """One directory of tests/data/vectors/snp."""

    @cached_property
    def report(self) -> bytes:
        return (self.path / "report.bin").read_bytes()

    @cached_property
    def vcek_der(self) -> bytes:
        return (self.path / "vcek.der").read_bytes()

    @cached_property
    def chain(self) -> list[x509.Certificate]:
        """ask_ark.pem: ASK (or ASVK) first, then the ARK (the trustee file
        has a third certificate, the Milan ASVK)."""
        return load_pem_chain((self.path / "ask_ark.pem").read_bytes(), self.name)

    @property
    def ask_der(self) -> bytes:
        return der_of(self.chain[0])

    @property
    def ark(self) -> x509.Certificate:
        arks = [c for c in self.chain if c.subject.rfc4514_string().startswith("CN=ARK-")]
        assert len(arks) == 1, self.name
        return arks[0]

    @property
    def product(self) -> Product:
        return Product(self.expected["product"])


def samples() -> list[Sample]:
    return [Sample(p) for p in sorted(SNP.iterdir()) if p.is_dir()]


def report_samples() -> list[Sample]:
    return [s for s in samples() if (s.path / "report.bin").exists()]


def sample(name: str) -> Sample:
    return Sample(SNP / name)


def common_chain(name: str) -> list[x509.Certificate]:
    return load_pem_chain((COMMON_AMD / name).read_bytes(), name)


# --- sim chain factory -------------------------------------------------------


def _load_key(path: Path) -> Any:
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


@dataclass(frozen=True)
class SimKeys:
    """The sim chip's certificates and private keys, read from its state dir."""

    state_dir: Path

    @property
    def chip_dir(self) -> Path:
        return simchip.sim_dir(self.state_dir) / "chip"

    @cached_property
    def chip(self) -> simchip.SimChip:
        return simchip.load_chip(self.state_dir)

    @cached_property
    def ark_key(self) -> rsa.RSAPrivateKey:
        key = _load_key(self.chip_dir / "ark.key")
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    @cached_property
    def ask_key(self) -> rsa.RSAPrivateKey:
        key = _load_key(self.chip_dir / "ask.key")
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    @property
    def vcek_key(self) -> ec.EllipticCurvePrivateKey:
        return self.chip.vcek_key

    @cached_property
    def ark(self) -> x509.Certificate:
        return load_der(self.chip.ark_der, "sim ARK")

    @cached_property
    def ask(self) -> x509.Certificate:
        return load_der(self.chip.ask_der, "sim ASK")

    @property
    def anchor(self) -> TrustAnchor:
        return TrustAnchor("sim", Product.MILAN, self.chip.ark_der)

    def vcek(
        self,
        *,
        tcb: dict[str, int] | None = None,
        hwid: bytes | None = None,
        product_name: str | None = simchip.PRODUCT_NAME,
        cn: str = "SEV-VCEK",
        public_key: Any = None,
        issuer: x509.Certificate | None = None,
        issuer_key: rsa.RSAPrivateKey | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        pss: bool = True,
        drop_hwid: bool = False,
        extra: Iterable[tuple[x509.ObjectIdentifier, bytes]] = (),
    ) -> bytes:
        """A VCEK-like certificate (DER) issued by the sim ASK (or ``issuer``),
        by default for the sim VCEK key and with the sim chip's values; every
        keyword changes one thing."""
        tcb = dict(simchip.TCB if tcb is None else tcb)
        hwid = self.chip.chip_id if hwid is None else hwid
        issuer = self.ask if issuer is None else issuer
        issuer_key = self.ask_key if issuer_key is None else issuer_key
        public_key = self.vcek_key.public_key() if public_key is None else public_key
        reference = load_der(self.chip.vcek_der, "sim VCEK")
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, cn),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, simchip.ORG),
                    ]
                )
            )
            .issuer_name(issuer.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or reference.not_valid_before_utc)
            .not_valid_after(not_after or reference.not_valid_after_utc)
        )
        exts: list[tuple[x509.ObjectIdentifier, bytes]] = [(amd.OID_STRUCT_VERSION, der.uint(1))]
        if product_name is not None:
            exts.append((amd.OID_PRODUCT_NAME, der.ia5(product_name)))
        for name, oid in (*amd.TCB_OIDS.items(), ("fmc", amd.OID_FMC_SPL)):
            if name in tcb:
                exts.append((oid, der.uint(tcb[name])))
        if not drop_hwid:
            exts.append((amd.OID_HWID, hwid))
        exts.extend(extra)
        for oid, value in exts:
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
        if pss:
            cert = builder.sign(issuer_key, hashes.SHA384(), rsa_padding=PSS)
        else:
            cert = builder.sign(issuer_key, hashes.SHA384())
        return der_of(cert)

    def ca(
        self,
        subject: x509.Name,
        issuer: x509.Name,
        public_key: Any,
        signing_key: rsa.RSAPrivateKey,
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> bytes:
        """An ARK/ASK-like CA certificate signed with RSASSA-PSS SHA-384."""
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - timedelta(days=1))
            .not_valid_after(not_after or now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signing_key, hashes.SHA384(), rsa_padding=PSS)
        )
        return der_of(cert)


def sign(report: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """``report`` with its signature replaced by one over its bytes 0x000-0x29F."""
    r, s = decode_dss_signature(key.sign(report[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384())))
    return with_signature(report, r, s)


def patch(report: bytes, offset: int, value: bytes) -> bytes:
    buf = bytearray(report)
    buf[offset : offset + len(value)] = value
    return bytes(buf)
