"""A fake Intel DCAP PKI: roots, PCK certificates, signed collateral and
quotes (TDX v4/v5, SGX v3/v4/v5) that verify against the fake root.

One implementation for two users: the tests (``stockade.testing.intel``
re-exports it) and the sim TDX chip (``stockade.evidence.sim.tdx_chip``,
whose organisation name says NO HARDWARE PROTECTION).

:class:`FakeIntelPki` issues, with fresh P-256 keys, everything Intel's
services would: an "Intel SGX Root CA" (self-signed), the PCK Platform and
Processor CAs, the TCB Signing certificate, PCK certificates with the SGX
extension, root CA and PCK CRLs, PCS-shaped TCB info and QE identity bodies
signed over their exact bytes, and quotes whose QE report the PCK key signs
and whose body a fresh attestation key signs. Every part can be varied one at
a time, so each check of the verifier can be made to fail alone.

The subject names read like Intel's (the verifier checks CNs) but the
organisation says "stockade test" (or the sim chip's), and none of it chains
to Intel's real root: pass ``root_der=pki.root_der`` to the verifier.
NOTHING HERE IS INTEL'S; these objects exist for tests and for the sim.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from stockade.evidence.intel.abi import BodyType, TeeType, build_quote, header_bytes, pem_encode
from stockade.evidence.intel.pck import SGX_EXTENSION_OID
from stockade.evidence.intel.verify import Collateral
from stockade.evidence.sgx import abi as sgx_abi
from stockade.evidence.tdx import abi as tdx_abi

FAKE_ORG = "stockade test (not Intel)"
#: The QE's MRSIGNER in fake QE reports and identities (not Intel's).
QE_MRSIGNER = hashlib.sha256(b"stockade fake QE signer").digest()
QE_AUTH_DATA = bytes(range(32))
_PPID = bytes(range(16))


def fake_name(cn: str, org: str = FAKE_ORG) -> x509.Name:
    """A subject name with an Intel-like CN and the fake organisation."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def raw_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256/SHA-256 signature as raw r||s (64 bytes), as DCAP has it."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    """x||y (64 bytes) of ``key``'s public point."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# --- the SGX extension (DER written by hand; pyca has no encoder for it) -------


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + value


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        rest = arc
        chunk = [rest & 0x7F]
        rest >>= 7
        while rest:
            chunk.append(0x80 | rest & 0x7F)
            rest >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _uint(tag: int, value: int) -> bytes:
    return _tlv(tag, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big"))


_ARC = "1.2.840.113741.1.13.1"


def _pair(arc: str, value: bytes) -> bytes:
    return _tlv(0x30, _oid(f"{_ARC}.{arc}") + value)


@dataclass(frozen=True)
class PckSpec:
    """What a fake PCK certificate says about its platform."""

    fmspc: bytes = bytes.fromhex("00906ed50000")
    pce_id: bytes = bytes(2)
    tcb_components: tuple[int, ...] = (5, 5, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
    pce_svn: int = 13
    cpu_svn: bytes | None = None  # default: the components as bytes
    ppid: bytes = _PPID
    sgx_type: int = 1
    platform_fields: bool = True  # PlatformInstanceID and Configuration (Platform CA)

    def extension(self) -> bytes:
        comps = b"".join(_pair(f"2.{i + 1}", _uint(0x02, v)) for i, v in enumerate(self.tcb_components))
        cpu = self.cpu_svn if self.cpu_svn is not None else bytes(self.tcb_components)
        tcb = comps + _pair("2.17", _uint(0x02, self.pce_svn)) + _pair("2.18", _tlv(0x04, cpu))
        items = (
            _pair("1", _tlv(0x04, self.ppid))
            + _pair("2", _tlv(0x30, tcb))
            + _pair("3", _tlv(0x04, self.pce_id))
            + _pair("4", _tlv(0x04, self.fmspc))
            + _pair("5", _uint(0x0A, self.sgx_type))
        )
        if self.platform_fields:
            config = b"".join(_pair(f"7.{i}", _tlv(0x01, b"\xff")) for i in (1, 2, 3))
            items += _pair("6", _tlv(0x04, bytes(16))) + _pair("7", _tlv(0x30, config))
        return _tlv(0x30, items)


@dataclass(frozen=True)
class FakePck:
    key: ec.EllipticCurvePrivateKey
    der: bytes
    ca: str  # "platform" or "processor"
    spec: PckSpec

    @property
    def serial(self) -> int:
        return x509.load_der_x509_certificate(self.der).serial_number


@dataclass(frozen=True)
class Level:
    """One TCB level for :meth:`FakeIntelPki.tcb_info`."""

    sgx: tuple[int, ...]
    pce_svn: int
    status: str = "UpToDate"
    tdx: tuple[int, ...] | None = None
    date: str = "2024-03-13T00:00:00Z"
    advisories: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        tcb: dict[str, Any] = {
            "sgxtcbcomponents": [{"svn": v} for v in self.sgx],
            "pcesvn": self.pce_svn,
        }
        if self.tdx is not None:
            tcb["tdxtcbcomponents"] = [{"svn": v} for v in self.tdx]
        out: dict[str, Any] = {"tcb": tcb, "tcbDate": self.date, "tcbStatus": self.status}
        if self.advisories:
            out["advisoryIDs"] = list(self.advisories)
        return out


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signed_body(name: str, inner: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> bytes:
    """A PCS response body: ``{"<name>": <inner>, "signature": "<hex>"}``
    with the signature over the inner object's exact (compact) bytes."""
    inner_bytes = json.dumps(inner, separators=(",", ":")).encode()
    sig = raw_sign(key, inner_bytes)
    return b'{"' + name.encode() + b'":' + inner_bytes + b',"signature":"' + sig.hex().encode() + b'"}'


#: TD QE / QE identity values of the fake QE (attributes 0x11: INIT|PROVISIONKEY... as Intel's).
QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")
QE_ATTRIBUTES_MASK = bytes.fromhex("fbffffffffffffff0000000000000000")
QE_PROD_ID = {"sgx": 1, "tdx": 2}


def default_td_body(
    *,
    report_data: bytes = bytes(64),
    tee_tcb_svn: bytes = bytes.fromhex("05010200000000000000000000000000"),
    v15: bool = False,
    **fields: bytes,
) -> bytes:
    body = bytes(tdx_abi.TD_REPORT15_SIZE if v15 else tdx_abi.TD_REPORT10_SIZE)
    defaults: dict[str, bytes] = {
        "tee_tcb_svn": tee_tcb_svn,
        "mr_seam": hashlib.sha384(b"fake TDX module").digest(),
        "td_attributes": bytes.fromhex("0000001000000000"),
        "xfam": bytes.fromhex("e702060000000000"),
        "mr_td": hashlib.sha384(b"fake TD").digest(),
        "report_data": report_data,
    }
    if v15:
        defaults["tee_tcb_svn2"] = tee_tcb_svn
    defaults.update(fields)
    return tdx_abi.with_fields(body, **defaults)


def default_enclave_body(*, report_data: bytes = bytes(64), **fields: bytes | int) -> bytes:
    defaults: dict[str, bytes | int] = {
        "cpu_svn": bytes(16),
        "attributes": bytes.fromhex("0500000000000000e700000000000000"),
        "mr_enclave": hashlib.sha256(b"fake enclave").digest(),
        "mr_signer": hashlib.sha256(b"fake enclave signer").digest(),
        "report_data": report_data,
    }
    defaults.update(fields)
    return sgx_abi.with_fields(bytes(sgx_abi.REPORT_BODY_SIZE), **defaults)


def default_qe_report(
    tee: str, ak_xy: bytes, auth: bytes = QE_AUTH_DATA, *, isv_svn: int = 8, **fields: bytes | int
) -> bytes:
    values: dict[str, bytes | int] = {
        "cpu_svn": bytes(16),
        "attributes": QE_ATTRIBUTES,
        "mr_enclave": hashlib.sha256(b"fake QE").digest(),
        "mr_signer": QE_MRSIGNER,
        "isv_prod_id": QE_PROD_ID[tee],
        "isv_svn": isv_svn,
        "report_data": hashlib.sha256(ak_xy + auth).digest() + bytes(32),
    }
    values.update(fields)
    return sgx_abi.with_fields(bytes(sgx_abi.REPORT_BODY_SIZE), **values)


@dataclass(frozen=True)
class QuoteParts:
    """Every part of a quote, so a test can change one and re-serialise."""

    header: bytes
    body: bytes
    body_type: BodyType
    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes

    def to_bytes(self) -> bytes:
        return build_quote(
            self.header,
            self.body,
            self.signature,
            self.attestation_key,
            self.qe_report,
            self.qe_report_signature,
            self.qe_auth_data,
            self.pck_chain_pem,
            self.body_type,
        )

    def replace(self, **changes: Any) -> QuoteParts:
        return replace(self, **changes)

    def signed_bytes(self) -> bytes:
        out = self.header
        if struct.unpack_from("<H", self.header)[0] >= 5:
            out += struct.pack("<HI", self.body_type, len(self.body))
        return out + self.body


@dataclass
class FakeIntelPki:
    """Fake Intel root, PCK CAs and TCB Signing certificate, valid from a day
    before ``now`` for ``years``; collateral is issued at ``now`` and valid
    for 30 days, so verify at :attr:`now`."""

    now: datetime = field(default_factory=lambda: datetime(2026, 1, 15, tzinfo=UTC))
    years: int = 20
    root_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    platform_ca_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    processor_ca_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    tcb_signing_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    #: Organisation in every subject name (the CNs are Intel's).
    org: str = FAKE_ORG
    #: Certificates issued earlier for these keys (DER by "root", "platform",
    #: "processor", "tcb_signing"): a PKI rebuilt from stored keys passes the
    #: stored certificates (ECDSA signatures differ each time, and clients
    #: pin the root's bytes). None: issue new ones.
    issued: dict[str, bytes] | None = None

    def __post_init__(self) -> None:
        self.not_before = self.now - timedelta(days=1)
        self.not_after = self.now + timedelta(days=365 * self.years)
        self.root_name = self.name("Intel SGX Root CA")
        self.ca_names = {
            "platform": self.name("Intel SGX PCK Platform CA"),
            "processor": self.name("Intel SGX PCK Processor CA"),
        }
        ca_keys = {"platform": self.platform_ca_key, "processor": self.processor_ca_key}
        self.ca_keys = ca_keys
        if self.issued is not None:
            self.root_der = self.issued["root"]
            self.ca_ders = {kind: self.issued[kind] for kind in self.ca_names}
            self.tcb_signing_der = self.issued["tcb_signing"]
            root = x509.load_der_x509_certificate(self.root_der)
            self.root_name = root.subject
            self.ca_names = {
                kind: x509.load_der_x509_certificate(der).subject for kind, der in self.ca_ders.items()
            }
            return
        self.root_der = self.certificate(
            self.root_name, self.root_name, self.root_key, self.root_key, ca=True
        )
        self.ca_ders = {
            kind: self.certificate(name, self.root_name, ca_keys[kind], self.root_key, ca=True)
            for kind, name in self.ca_names.items()
        }
        self.tcb_signing_der = self.certificate(
            self.name("Intel SGX TCB Signing"), self.root_name, self.tcb_signing_key, self.root_key
        )

    def issued_certificates(self) -> dict[str, bytes]:
        """The CA and TCB Signing certificates, to store and pass back as
        ``issued``."""
        return {"root": self.root_der, **self.ca_ders, "tcb_signing": self.tcb_signing_der}

    def name(self, cn: str) -> x509.Name:
        """A subject name with an Intel CN and this PKI's organisation."""
        return fake_name(cn, self.org)

    # --- certificates -------------------------------------------------------------

    def certificate(
        self,
        subject: x509.Name,
        issuer: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        signing_key: ec.EllipticCurvePrivateKey,
        *,
        ca: bool = False,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        extensions: tuple[tuple[x509.ObjectIdentifier, bytes], ...] = (),
        critical_extensions: tuple[tuple[x509.ObjectIdentifier, bytes], ...] = (),
        serial: int | None = None,
    ) -> bytes:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(not_before or self.not_before)
            .not_valid_after(not_after or self.not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=not ca,
                    content_commitment=not ca,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        for oid, value in extensions:
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
        for oid, value in critical_extensions:
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=True)
        return _der(builder.sign(signing_key, hashes.SHA256()))

    def pck(
        self,
        spec: PckSpec | None = None,
        *,
        ca: str = "platform",
        key: ec.EllipticCurvePrivateKey | None = None,
        cn: str = "Intel SGX PCK Certificate",
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        extension: bytes | None = None,
    ) -> FakePck:
        spec = spec or PckSpec(platform_fields=ca == "platform")
        key = key or _key()
        der = self.certificate(
            self.name(cn),
            self.ca_names[ca],
            key,
            self.ca_keys[ca],
            not_before=not_before,
            not_after=not_after,
            extensions=((SGX_EXTENSION_OID, spec.extension() if extension is None else extension),),
        )
        return FakePck(key=key, der=der, ca=ca, spec=spec)

    def pck_chain_pem(self, pck: FakePck, *, root_der: bytes | None = None, nul: bool = True) -> bytes:
        """Leaf, CA, root as canonical PEM with the QE's trailing NUL."""
        pem = b"".join(pem_encode(d) for d in (pck.der, self.ca_ders[pck.ca], root_der or self.root_der))
        return pem + (b"\x00" if nul else b"")

    def tcb_signing_chain(self) -> bytes:
        return pem_encode(self.tcb_signing_der) + pem_encode(self.root_der)

    # --- CRLs -----------------------------------------------------------------------

    def crl(
        self,
        issuer: str,
        revoked: tuple[int, ...] = (),
        *,
        this_update: datetime | None = None,
        next_update: datetime | None = None,
    ) -> bytes:
        """A DER CRL issued by "root", "platform" or "processor"."""
        name, key = (
            (self.root_name, self.root_key)
            if issuer == "root"
            else (self.ca_names[issuer], self.ca_keys[issuer])
        )
        this_update = this_update or self.now - timedelta(hours=1)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(name)
            .last_update(this_update)
            .next_update(next_update or this_update + timedelta(days=30))
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(self.not_before)
                .build()
            )
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    # --- collateral -----------------------------------------------------------------

    def tcb_info_json(
        self,
        tee: str,
        spec: PckSpec,
        *,
        levels: tuple[Level, ...] | None = None,
        tee_tcb_svn: bytes = bytes.fromhex("05010200000000000000000000000000"),
        module_levels: tuple[tuple[int, str], ...] = ((5, "UpToDate"),),
        module_mrsigner: bytes = bytes(48),
        issue: datetime | None = None,
        next_update: datetime | None = None,
        fmspc: bytes | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """TCB info (v3) whose one default level is exactly the PCK's TCB (and
        ``tee_tcb_svn`` for TDX) at UpToDate."""
        issue = issue or self.now - timedelta(hours=1)
        tdx = tee == "tdx"
        if levels is None:
            tdx_comps = tuple(tee_tcb_svn) if tdx else None
            levels = (Level(spec.tcb_components, spec.pce_svn, tdx=tdx_comps),)
        info: dict[str, Any] = {
            "id": "TDX" if tdx else "SGX",
            "version": 3,
            "issueDate": _iso(issue),
            "nextUpdate": _iso(next_update or issue + timedelta(days=30)),
            "fmspc": (fmspc or spec.fmspc).hex().upper(),
            "pceId": spec.pce_id.hex().upper(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
        }
        if tdx:
            module = {
                "mrsigner": module_mrsigner.hex().upper(),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            }
            info["tdxModule"] = module
            info["tdxModuleIdentities"] = [
                {
                    "id": f"TDX_{tee_tcb_svn[1]:02X}" if tee_tcb_svn[1] else "TDX_01",
                    **module,
                    "tcbLevels": [
                        {"tcb": {"isvsvn": svn}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": status}
                        for svn, status in module_levels
                    ],
                }
            ]
        info["tcbLevels"] = [lv.to_json() for lv in levels]
        info.update(overrides)
        return info

    def qe_identity_json(
        self,
        tee: str,
        *,
        levels: tuple[tuple[int, str], ...] = ((8, "UpToDate"),),
        issue: datetime | None = None,
        next_update: datetime | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        issue = issue or self.now - timedelta(hours=1)
        identity: dict[str, Any] = {
            "id": "TD_QE" if tee == "tdx" else "QE",
            "version": 2,
            "issueDate": _iso(issue),
            "nextUpdate": _iso(next_update or issue + timedelta(days=30)),
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": QE_ATTRIBUTES.hex().upper(),
            "attributesMask": QE_ATTRIBUTES_MASK.hex().upper(),
            "mrsigner": QE_MRSIGNER.hex().upper(),
            "isvprodid": QE_PROD_ID[tee],
            "tcbLevels": [
                {"tcb": {"isvsvn": svn}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": status}
                for svn, status in levels
            ],
        }
        identity.update(overrides)
        return identity

    def sign_tcb_info(self, info: dict[str, Any], key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        return signed_body("tcbInfo", info, key or self.tcb_signing_key)

    def sign_qe_identity(
        self, identity: dict[str, Any], key: ec.EllipticCurvePrivateKey | None = None
    ) -> bytes:
        return signed_body("enclaveIdentity", identity, key or self.tcb_signing_key)

    def collateral(
        self,
        tee: str,
        pck: FakePck,
        *,
        tcb_info: dict[str, Any] | None = None,
        qe_identity: dict[str, Any] | None = None,
        revoked_pcks: tuple[int, ...] = (),
        revoked_cas: tuple[int, ...] = (),
        **tcb_info_kw: Any,
    ) -> Collateral:
        return Collateral(
            tcb_info=self.sign_tcb_info(tcb_info or self.tcb_info_json(tee, pck.spec, **tcb_info_kw)),
            qe_identity=self.sign_qe_identity(qe_identity or self.qe_identity_json(tee)),
            tcb_signing_chain=self.tcb_signing_chain(),
            root_ca_crl=self.crl("root", revoked_cas),
            pck_crl=self.crl(pck.ca, revoked_pcks),
            pck_crl_issuer_chain=pem_encode(self.ca_ders[pck.ca]) + pem_encode(self.root_der),
        )

    # --- quotes -------------------------------------------------------------------------

    def quote(self, tee: str, pck: FakePck, **kw: Any) -> bytes:
        return self.quote_parts(tee, pck, **kw).to_bytes()

    def quote_parts(
        self,
        tee: str,
        pck: FakePck,
        *,
        version: int | None = None,
        body: bytes | None = None,
        body_type: BodyType | None = None,
        report_data: bytes = bytes(64),
        ak: ec.EllipticCurvePrivateKey | None = None,
        qe_auth_data: bytes = QE_AUTH_DATA,
        qe_report: bytes | None = None,
        qe_isv_svn: int = 8,
        pck_chain_pem: bytes | None = None,
        user_data: bytes = bytes(20),
    ) -> QuoteParts:
        """A consistent, correctly signed quote for ``pck``: TDX v4 (TD report
        1.0) or SGX v3 by default; v5 with ``body_type``."""
        tdx = tee == "tdx"
        version = version or (4 if tdx else 3)
        if body_type is None:
            body_type = (
                (BodyType.TD_REPORT10 if tdx else BodyType.SGX_REPORT)
                if version < 5
                else (BodyType.TD_REPORT15 if tdx else BodyType.SGX_REPORT)
            )
        if body is None:
            body = (
                default_td_body(report_data=report_data, v15=body_type is BodyType.TD_REPORT15)
                if tdx
                else default_enclave_body(report_data=report_data)
            )
        ak = ak or _key()
        ak_xy = raw_public(ak)
        header = header_bytes(
            version,
            TeeType.TDX if tdx else TeeType.SGX,
            qe_svn=qe_isv_svn,
            pce_svn=pck.spec.pce_svn,
            user_data=user_data,
        )
        qe_report = qe_report or default_qe_report(tee, ak_xy, qe_auth_data, isv_svn=qe_isv_svn)
        parts = QuoteParts(
            header=header,
            body=body,
            body_type=body_type,
            signature=b"",
            attestation_key=ak_xy,
            qe_report=qe_report,
            qe_report_signature=raw_sign(pck.key, qe_report),
            qe_auth_data=qe_auth_data,
            pck_chain_pem=pck_chain_pem if pck_chain_pem is not None else self.pck_chain_pem(pck),
        )
        return parts.replace(signature=raw_sign(ak, parts.signed_bytes()))


def resign(parts: QuoteParts, ak: ec.EllipticCurvePrivateKey) -> QuoteParts:
    """``parts`` with the quote signature made again by ``ak`` (which need
    not be the attestation key the QE certified)."""
    return parts.replace(signature=raw_sign(ak, parts.signed_bytes()))
