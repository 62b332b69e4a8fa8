"""Intel DCAP ECDSA quote layout (v3, v4, v5): the only place that knows it.

Sources: Intel "SGX ECDSA Quote Library API" (quote v3, appendix "Quote
Format"), Intel "TDX DCAP Quoting Library API" (quote v4 and v5, appendix
"TD Quote Format"), and Intel's Quote Verification Library (QVL,
``QuoteVerification/Quote.cpp``) for which combinations are valid:

* header (48 bytes): version u16, attestation key type u16 (2 = ECDSA
  P-256, the only one supported), TEE type u32 (0 = SGX, 0x81 = TDX; must
  be 0 in v3), QE SVN u16, PCE SVN u16, QE vendor ID (16, must be Intel's),
  user data (20);
* v3/v4: the body follows (SGX report 384 bytes, or TD report 1.0 584
  bytes); v5: body type u16 (1 SGX, 2 TD 1.0, 3 TD 1.5) and body size u32,
  then the body;
* signature data length u32, then the signature data: ECDSA signature
  (r||s, 64) over header..body, attestation key (x||y, 64), then
  - v3: QE report (384), its signature (64), QE authentication data (u16
    size + bytes), certification data (u16 type, u32 size, bytes);
  - v4/v5: certification data of type 6 whose bytes are the QE report
    certification data: QE report, its signature, QE authentication data and
    the inner certification data;
* the (inner) certification data must be type 5: the PCK certificate chain
  as PEM (leaf, intermediate CA, root), optionally followed by one NUL.

Parsing is exact: every length must be consumed by its structure. Bytes after
the signature data are not part of the quote. Zero padding there (quote
buffers are fixed-size) is accepted and kept in ``Quote.trailing``; non-zero
trailing bytes are rejected unless the caller passes ``allow_trailing=True``
(evidence/intel/README.md, "Trailing bytes").
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import struct
from dataclasses import dataclass

from stockade.errors import MalformedEvidence
from stockade.evidence.sgx.abi import REPORT_BODY_SIZE, EnclaveReport
from stockade.evidence.tdx.abi import TD_REPORT10_SIZE, TD_REPORT15_SIZE, TdReport

HEADER_SIZE = 48
SUPPORTED_VERSIONS = (3, 4, 5)
ATT_KEY_ECDSA_P256 = 2
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6
SIG_SIZE = 64
KEY_SIZE = 64


class TeeType(enum.IntEnum):
    SGX = 0x00
    TDX = 0x81


class BodyType(enum.IntEnum):
    SGX_REPORT = 1
    TD_REPORT10 = 2
    TD_REPORT15 = 3


_BODY_SIZES = {
    BodyType.SGX_REPORT: REPORT_BODY_SIZE,
    BodyType.TD_REPORT10: TD_REPORT10_SIZE,
    BodyType.TD_REPORT15: TD_REPORT15_SIZE,
}


@dataclass(frozen=True)
class QuoteHeader:
    raw: bytes
    version: int
    att_key_type: int
    tee_type: TeeType
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> QuoteHeader:
        if len(data) != HEADER_SIZE:
            raise MalformedEvidence(f"quote header must be {HEADER_SIZE} bytes, got {len(data)}")
        version, key_type, tee, qe_svn, pce_svn = struct.unpack_from("<HHIHH", data, 0)
        if version not in SUPPORTED_VERSIONS:
            raise MalformedEvidence(f"unsupported quote version {version} (supported: 3, 4, 5)")
        if key_type != ATT_KEY_ECDSA_P256:
            raise MalformedEvidence(
                f"unsupported attestation key type {key_type} (supported: 2, ECDSA P-256)"
            )
        try:
            tee_type = TeeType(tee)
        except ValueError:
            raise MalformedEvidence(f"unknown TEE type 0x{tee:x} (known: 0x0 SGX, 0x81 TDX)") from None
        if version == 3 and tee_type is not TeeType.SGX:
            raise MalformedEvidence("quote version 3 is SGX only, but the TEE type is TDX")
        vendor = bytes(data[12:28])
        if vendor != INTEL_QE_VENDOR_ID:
            raise MalformedEvidence(
                f"QE vendor ID {vendor.hex()} is not Intel's ({INTEL_QE_VENDOR_ID.hex()})"
            )
        return cls(
            raw=bytes(data),
            version=version,
            att_key_type=key_type,
            tee_type=tee_type,
            qe_svn=qe_svn,
            pce_svn=pce_svn,
            qe_vendor_id=vendor,
            user_data=bytes(data[28:48]),
        )


class _Reader:
    """Bounded little-endian reader; every overrun is MalformedEvidence."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise MalformedEvidence(
                f"{self.what}: {field} needs {n} bytes but {len(self.data) - self.pos} remain"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, field: str) -> int:
        return int(struct.unpack("<H", self.take(2, field))[0])

    def u32(self, field: str) -> int:
        return int(struct.unpack("<I", self.take(4, field))[0])

    def done(self) -> None:
        if self.pos != len(self.data):
            raise MalformedEvidence(f"{self.what}: {len(self.data) - self.pos} unexpected bytes at the end")


_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----\n"
_PEM_END = b"-----END CERTIFICATE-----\n"


def pem_encode(der: bytes) -> bytes:
    b64 = base64.b64encode(der)
    lines = b"".join(b64[i : i + 64] + b"\n" for i in range(0, len(b64), 64))
    return _PEM_BEGIN + lines + _PEM_END


@functools.lru_cache(maxsize=128)
def parse_pem_chain(data: bytes, what: str) -> tuple[bytes, ...]:
    """The DER certificates of a canonical PEM list (64-character lines,
    ``\\n`` line ends, nothing between blocks), optionally followed by one
    NUL (the C string terminator Intel's QE writes). Anything else is
    rejected, so no byte of the certification data is ignored. Cached by
    the exact bytes: a platform sends the same chain in every quote."""
    body = data[:-1] if data.endswith(b"\x00") else data
    ders: list[bytes] = []
    pos = 0
    while pos < len(body):
        if not body.startswith(_PEM_BEGIN, pos):
            raise MalformedEvidence(f"{what}: expected a PEM certificate at byte {pos}")
        end = body.find(_PEM_END, pos)
        if end < 0:
            raise MalformedEvidence(f"{what}: unterminated PEM certificate at byte {pos}")
        b64 = body[pos + len(_PEM_BEGIN) : end].replace(b"\n", b"")
        try:
            der = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedEvidence(f"{what}: bad base64 in the PEM certificate at byte {pos}") from None
        block = pem_encode(der)
        if body[pos : pos + len(block)] != block:
            raise MalformedEvidence(f"{what}: PEM certificate at byte {pos} is not canonically encoded")
        ders.append(der)
        pos += len(block)
    if not ders:
        raise MalformedEvidence(f"{what}: no certificate")
    return tuple(ders)


@dataclass(frozen=True)
class Quote:
    """A parsed DCAP quote. ``raw`` is exactly the bytes given to
    :meth:`from_bytes` (the quote plus ``trailing``)."""

    raw: bytes
    header: QuoteHeader
    body_type: BodyType
    body: EnclaveReport | TdReport
    signed_bytes: bytes  # header (+ v5 body descriptor) + body: what the AK signed
    signature: bytes  # r||s, big-endian
    attestation_key: bytes  # x||y, big-endian
    qe_report: EnclaveReport
    qe_report_signature: bytes  # r||s
    qe_auth_data: bytes
    pck_chain: tuple[bytes, ...]  # DER, leaf first, as carried in the quote
    trailing: bytes

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def tee_type(self) -> TeeType:
        return self.header.tee_type

    @property
    def quote_bytes(self) -> bytes:
        return self.raw[: len(self.raw) - len(self.trailing)]

    @classmethod
    def from_bytes(cls, data: bytes, *, allow_trailing: bool = False) -> Quote:
        data = bytes(data)
        r = _Reader(data, "quote")
        header = QuoteHeader.from_bytes(r.take(HEADER_SIZE, "header"))
        if header.version >= 5:
            raw_type = r.u16("body type")
            try:
                body_type = BodyType(raw_type)
            except ValueError:
                raise MalformedEvidence(f"unknown quote v5 body type {raw_type} (known: 1, 2, 3)") from None
            size = r.u32("body size")
            if size != _BODY_SIZES[body_type]:
                raise MalformedEvidence(
                    f"quote body type {body_type.value} must be {_BODY_SIZES[body_type]} bytes, header says {size}"
                )
            if (body_type is BodyType.SGX_REPORT) != (header.tee_type is TeeType.SGX):
                raise MalformedEvidence(
                    f"quote body type {body_type.name} does not fit TEE type {header.tee_type.name}"
                )
        else:
            body_type = BodyType.SGX_REPORT if header.tee_type is TeeType.SGX else BodyType.TD_REPORT10
        body_raw = r.take(_BODY_SIZES[body_type], "body")
        body: EnclaveReport | TdReport = (
            EnclaveReport.from_bytes(body_raw)
            if body_type is BodyType.SGX_REPORT
            else TdReport.from_bytes(body_raw)
        )
        signed = data[: r.pos]
        sig_len = r.u32("signature data length")
        sig = _Reader(r.take(sig_len, "signature data"), "quote signature data")
        signature = sig.take(SIG_SIZE, "quote signature")
        key = sig.take(KEY_SIZE, "attestation key")
        if header.version == 3:
            qe = sig
        else:
            outer_type = sig.u16("certification data type")
            if outer_type != CERT_QE_REPORT:
                raise MalformedEvidence(
                    f"quote v{header.version} certification data type must be 6 (QE report), got {outer_type}"
                )
            qe = _Reader(sig.take(sig.u32("certification data size"), "certification data"), "QE report data")
        qe_report = EnclaveReport.from_bytes(qe.take(REPORT_BODY_SIZE, "QE report"), "QE report")
        qe_sig = qe.take(SIG_SIZE, "QE report signature")
        auth = qe.take(qe.u16("QE auth data size"), "QE auth data")
        cert_type = qe.u16("certification data type")
        if cert_type != CERT_PCK_CHAIN:
            raise MalformedEvidence(
                f"unsupported certification data type {cert_type} (supported: 5, the PCK certificate chain)"
            )
        pem = qe.take(qe.u32("certification data size"), "PCK certificate chain")
        qe.done()
        sig.done()
        trailing = data[r.pos :]
        if any(trailing) and not allow_trailing:
            raise MalformedEvidence(
                f"{len(trailing)} bytes after the quote's signature data, not all zero "
                "(not part of the quote; pass allow_trailing to accept them)"
            )
        return cls(
            raw=data,
            header=header,
            body_type=body_type,
            body=body,
            signed_bytes=signed,
            signature=signature,
            attestation_key=key,
            qe_report=qe_report,
            qe_report_signature=qe_sig,
            qe_auth_data=auth,
            pck_chain=parse_pem_chain(pem, "PCK certificate chain"),
            trailing=trailing,
        )

    def to_bytes(self) -> bytes:
        return self.raw


def build_quote(
    header: bytes,
    body: bytes,
    signature: bytes,
    attestation_key: bytes,
    qe_report: bytes,
    qe_report_signature: bytes,
    qe_auth_data: bytes,
    pck_chain_pem: bytes,
    body_type: BodyType | None = None,
) -> bytes:
    """Serialise quote parts (for the fake PKI in stockade.testing and for
    tests): v3 layout when header version is 3, v4/v5 otherwise (v5 with the
    body descriptor of ``body_type``)."""
    version = struct.unpack_from("<H", header)[0]
    out = bytearray(header)
    if version >= 5:
        if body_type is None:
            raise ValueError("quote v5 needs a body type")
        out += struct.pack("<HI", body_type, len(body))
    out += body
    qe = (
        qe_report
        + qe_report_signature
        + struct.pack("<H", len(qe_auth_data))
        + qe_auth_data
        + struct.pack("<HI", CERT_PCK_CHAIN, len(pck_chain_pem))
        + pck_chain_pem
    )
    sig = signature + attestation_key
    sig += qe if version == 3 else struct.pack("<HI", CERT_QE_REPORT, len(qe)) + qe
    out += struct.pack("<I", len(sig)) + sig
    return bytes(out)


def header_bytes(
    version: int,
    tee_type: int,
    *,
    qe_svn: int = 0,
    pce_svn: int = 0,
    user_data: bytes = bytes(20),
    att_key_type: int = ATT_KEY_ECDSA_P256,
    qe_vendor_id: bytes = INTEL_QE_VENDOR_ID,
) -> bytes:
    return struct.pack("<HHIHH", version, att_key_type, tee_type, qe_svn, pce_svn) + qe_vendor_id + user_data
