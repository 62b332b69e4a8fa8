"""SGX REPORT body layout (384 bytes): the only place that knows its offsets.

Source: Intel SDM Vol. 3D, "REPORT" (Table 38-21, REPORTBODY), and Intel
"SGX ECDSA Quote Library API" / "TDX DCAP Quoting Library API", appendix
"Enclave Report Body" (the body of an SGX quote, and the QE report inside
every DCAP quote, SGX and TDX alike). Integers are little-endian.

``EnclaveReport.from_bytes`` checks that the four reserved ranges are zero;
``to_bytes`` returns exactly the bytes that were parsed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from stockade.errors import MalformedEvidence

REPORT_BODY_SIZE = 384

# (name, offset, length); integers are decoded separately below.
_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("cpu_svn", 0, 16),
    ("misc_select", 16, 4),
    ("isv_ext_prod_id", 32, 16),
    ("attributes", 48, 16),
    ("mr_enclave", 64, 32),
    ("mr_signer", 128, 32),
    ("config_id", 192, 64),
    ("isv_prod_id", 256, 2),
    ("isv_svn", 258, 2),
    ("config_svn", 260, 2),
    ("isv_family_id", 304, 16),
    ("report_data", 320, 64),
)
FIELD_SPANS = {name: (off, off + n) for name, off, n in _FIELDS}
_RESERVED = ((20, 32), (96, 128), (160, 192), (262, 304))

#: SECS ATTRIBUTES.FLAGS bits (Intel SDM Vol. 3D, "ATTRIBUTES"):
#: claims.policy_flags name -> (bit, spec name). Policy explanations use
#: this table too (policy/rules.py).
ATTRIBUTE_FLAG_BITS: dict[str, tuple[int, str]] = {
    "init": (0, "INIT"),
    "debug": (1, "DEBUG"),
    "mode64bit": (2, "MODE64BIT"),
    "provisionkey": (4, "PROVISIONKEY"),
    "einittokenkey": (5, "EINITTOKENKEY"),
    "cet": (6, "CET"),
    "kss": (7, "KSS"),
    "aexnotify": (10, "AEXNOTIFY"),
}


@dataclass(frozen=True)
class EnclaveReport:
    """A parsed SGX report body; ``raw`` keeps the exact 384 received bytes."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: bytes  # 16 bytes: FLAGS (u64 LE) then XFRM (u64 LE)
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "SGX report body") -> EnclaveReport:
        data = bytes(data)
        if len(data) != REPORT_BODY_SIZE:
            raise MalformedEvidence(f"{what} must be {REPORT_BODY_SIZE} bytes, got {len(data)}")
        for start, end in _RESERVED:
            if any(data[start:end]):
                raise MalformedEvidence(f"{what} reserved bytes {start}-{end - 1} are not zero")
        f = {name: data[off : off + n] for name, off, n in _FIELDS}
        return cls(
            raw=data,
            cpu_svn=f["cpu_svn"],
            misc_select=struct.unpack("<I", f["misc_select"])[0],
            isv_ext_prod_id=f["isv_ext_prod_id"],
            attributes=f["attributes"],
            mr_enclave=f["mr_enclave"],
            mr_signer=f["mr_signer"],
            config_id=f["config_id"],
            isv_prod_id=struct.unpack("<H", f["isv_prod_id"])[0],
            isv_svn=struct.unpack("<H", f["isv_svn"])[0],
            config_svn=struct.unpack("<H", f["config_svn"])[0],
            isv_family_id=f["isv_family_id"],
            report_data=f["report_data"],
        )

    def to_bytes(self) -> bytes:
        return self.raw

    @property
    def misc_select_bytes(self) -> bytes:
        return self.raw[16:20]

    @property
    def flags(self) -> int:
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def xfrm(self) -> int:
        return int.from_bytes(self.attributes[8:], "little")

    @property
    def debug(self) -> bool:
        return bool(self.flags >> ATTRIBUTE_FLAG_BITS["debug"][0] & 1)

    def attribute_flags(self) -> dict[str, bool]:
        return {name: bool(self.flags >> bit & 1) for name, (bit, _) in ATTRIBUTE_FLAG_BITS.items()}


def with_fields(body: bytes, **fields: bytes | int) -> bytes:
    """``body`` (384 bytes) with named fields replaced (bytes of the exact
    length, or an int for the little-endian integer fields). For building
    test reports; verification never re-serialises."""
    buf = bytearray(body)
    for name, value in fields.items():
        start, end = FIELD_SPANS[name]
        raw = value.to_bytes(end - start, "little") if isinstance(value, int) else value
        if len(raw) != end - start:
            raise ValueError(f"{name} must be {end - start} bytes")
        buf[start:end] = raw
    return bytes(buf)
