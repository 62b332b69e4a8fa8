"""SEV-SNP ATTESTATION_REPORT layout: the only place that knows offsets.

Source: AMD "SEV Secure Nested Paging Firmware ABI Specification" (pub.
56860), table "ATTESTATION_REPORT Structure" (report versions 2, 3 and 5;
version 3 adds the CPUID fields at 0x188-0x18A, version 5 the mitigation
vectors at 0x1F8/0x200), "TCB_VERSION Structure" (Turin layout differs), and
"Guest Policy Structure". The signature (ECDSA P-384 with SHA-384, r and s as
72-byte little-endian integers) covers bytes 0x000-0x29F.

``AttestationReport.from_bytes`` parses every field, checks that every
reserved field is zero and rejects unknown versions and algorithms;
``to_bytes`` returns exactly the bytes that were parsed (round trip).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

from stockade.errors import MalformedEvidence

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIG_COMPONENT = 72
SUPPORTED_VERSIONS = (2, 3, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1


class Product(enum.Enum):
    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"


class SigningKey(enum.IntEnum):
    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION value; its byte layout depends on the product."""

    raw: int

    def components(self, product: Product) -> dict[str, int]:
        b = self.raw.to_bytes(8, "little")
        if product is Product.TURIN:
            return {"fmc": b[0], "bootloader": b[1], "tee": b[2], "snp": b[3], "microcode": b[7]}
        return {"bootloader": b[0], "tee": b[1], "snp": b[6], "microcode": b[7]}

    def reserved_ok(self, product: Product) -> bool:
        b = self.raw.to_bytes(8, "little")
        reserved = b[4:7] if product is Product.TURIN else b[2:6]
        return not any(reserved)

    @classmethod
    def from_components(cls, product: Product, **parts: int) -> TcbVersion:
        b = bytearray(8)
        if product is Product.TURIN:
            b[0], b[1], b[2], b[3] = parts["fmc"], parts["bootloader"], parts["tee"], parts["snp"]
        else:
            b[0], b[1], b[6] = parts["bootloader"], parts["tee"], parts["snp"]
        b[7] = parts["microcode"]
        return cls(int.from_bytes(b, "little"))

    def hex(self) -> str:
        """Hex of the 8 bytes in report order (bootloader/fmc byte first)."""
        return self.raw.to_bytes(8, "little").hex()


#: Guest policy flags: claims.policy_flags name -> (bit, name in AMD SEV-SNP
#: ABI spec pub. 56860, "Guest Policy Structure"). Policy explanations use
#: this table too (policy/rules.py).
POLICY_BITS: dict[str, tuple[int, str]] = {
    "smt_allowed": (16, "SMT"),
    "migrate_ma": (18, "MIGRATE_MA"),
    "debug": (19, "DEBUG"),
    "single_socket": (20, "SINGLE_SOCKET"),
    "cxl_allowed": (21, "CXL_ALLOW"),
    "mem_aes_256_xts": (22, "MEM_AES_256_XTS"),
    "rapl_disabled": (23, "RAPL_DIS"),
    "ciphertext_hiding": (24, "CIPHERTEXT_HIDING"),
    "page_swap_disabled": (25, "PAGE_SWAP_DISABLE"),
}


@dataclass(frozen=True)
class GuestPolicy:
    """The guest policy (ABI spec "Guest Policy Structure")."""

    raw: int

    abi_minor = property(lambda self: self.raw & 0xFF)
    abi_major = property(lambda self: (self.raw >> 8) & 0xFF)
    smt_allowed = property(lambda self: bool(self.raw >> 16 & 1))
    migrate_ma = property(lambda self: bool(self.raw >> 18 & 1))
    debug = property(lambda self: bool(self.raw >> 19 & 1))
    single_socket = property(lambda self: bool(self.raw >> 20 & 1))
    cxl_allowed = property(lambda self: bool(self.raw >> 21 & 1))
    mem_aes_256_xts = property(lambda self: bool(self.raw >> 22 & 1))
    rapl_disabled = property(lambda self: bool(self.raw >> 23 & 1))
    ciphertext_hiding = property(lambda self: bool(self.raw >> 24 & 1))
    page_swap_disabled = property(lambda self: bool(self.raw >> 25 & 1))

    def flags(self) -> dict[str, bool]:
        return {name: bool(self.raw >> bit & 1) for name, (bit, _) in POLICY_BITS.items()}


# (name, offset, struct format or byte length). The single table of offsets.
_U32, _U64 = "<I", "<Q"
_FIELDS: tuple[tuple[str, int, str | int], ...] = (
    ("version", 0x000, _U32),
    ("guest_svn", 0x004, _U32),
    ("policy", 0x008, _U64),
    ("family_id", 0x010, 16),
    ("image_id", 0x020, 16),
    ("vmpl", 0x030, _U32),
    ("signature_algo", 0x034, _U32),
    ("current_tcb", 0x038, _U64),
    ("platform_info", 0x040, _U64),
    ("key_info", 0x048, _U32),
    ("report_data", 0x050, 64),
    ("measurement", 0x090, 48),
    ("host_data", 0x0C0, 32),
    ("id_key_digest", 0x0E0, 48),
    ("author_key_digest", 0x110, 48),
    ("report_id", 0x140, 32),
    ("report_id_ma", 0x160, 32),
    ("reported_tcb", 0x180, _U64),
    ("cpuid_fam_id", 0x188, "<B"),
    ("cpuid_mod_id", 0x189, "<B"),
    ("cpuid_step", 0x18A, "<B"),
    ("chip_id", 0x1A0, 64),
    ("committed_tcb", 0x1E0, _U64),
    ("current_build", 0x1E8, "<B"),
    ("current_minor", 0x1E9, "<B"),
    ("current_major", 0x1EA, "<B"),
    ("committed_build", 0x1EC, "<B"),
    ("committed_minor", 0x1ED, "<B"),
    ("committed_major", 0x1EE, "<B"),
    ("launch_tcb", 0x1F0, _U64),
    ("launch_mit_vector", 0x1F8, _U64),
    ("current_mit_vector", 0x200, _U64),
    ("sig_r", 0x2A0, SIG_COMPONENT),
    ("sig_s", 0x2E8, SIG_COMPONENT),
)

#: The same table with precompiled struct readers (parsing is on the hot path
#: of verification).
_READERS: tuple[tuple[str, int, struct.Struct | int], ...] = tuple(
    (name, off, fmt if isinstance(fmt, int) else struct.Struct(fmt)) for name, off, fmt in _FIELDS
)

# Reserved ranges [start, end) per version; they must be zero.
_RESERVED_COMMON = ((0x04C, 0x050), (0x18B, 0x1A0), (0x1EB, 0x1EC), (0x1EF, 0x1F0), (0x330, 0x4A0))
_RESERVED_BY_VERSION = {
    2: (*_RESERVED_COMMON, (0x188, 0x18B), (0x1F8, 0x2A0)),
    3: (*_RESERVED_COMMON, (0x1F8, 0x2A0)),
    5: (*_RESERVED_COMMON, (0x208, 0x2A0)),
}
_KEY_INFO_RESERVED_MASK = 0xFFFFFFE0
_POLICY_RESERVED_MASK = ~((1 << 26) - 1) & 0xFFFFFFFFFFFFFFFF
_POLICY_MUST_BE_ONE = 1 << 17


@dataclass(frozen=True)
class AttestationReport:
    """A parsed ATTESTATION_REPORT; ``raw`` keeps the exact received bytes."""

    raw: bytes
    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: SigningKey
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current_version: tuple[int, int, int]
    committed_version: tuple[int, int, int]
    launch_tcb: TcbVersion
    launch_mit_vector: int | None
    current_mit_vector: int | None
    sig_r: int
    sig_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @classmethod
    def from_bytes(cls, data: bytes) -> AttestationReport:
        data = bytes(data)
        if len(data) != REPORT_SIZE:
            raise MalformedEvidence(f"SNP report must be {REPORT_SIZE} bytes, got {len(data)}")
        f: dict[str, Any] = {}
        for name, off, reader in _READERS:
            if isinstance(reader, int):
                f[name] = data[off : off + reader]
            else:
                (f[name],) = reader.unpack_from(data, off)
        version = f["version"]
        if version not in SUPPORTED_VERSIONS:
            raise MalformedEvidence(f"unsupported SNP report version {version} (supported: 2, 3, 5)")
        if f["signature_algo"] != SIG_ALGO_ECDSA_P384_SHA384:
            raise MalformedEvidence(
                f"unsupported SNP signature algorithm {f['signature_algo']} (expected 1, ECDSA P-384)"
            )
        for start, end in _RESERVED_BY_VERSION[version]:
            if data.count(0, start, end) != end - start:
                raise MalformedEvidence(
                    f"SNP report reserved bytes 0x{start:03X}-0x{end - 1:03X} are not zero"
                )
        key_info = int(f["key_info"])
        if key_info & _KEY_INFO_RESERVED_MASK:
            raise MalformedEvidence(f"SNP report KEY_INFO reserved bits set (0x{key_info:08x})")
        try:
            signing_key = SigningKey((key_info >> 2) & 0x7)
        except ValueError:
            raise MalformedEvidence(f"SNP report signing key {(key_info >> 2) & 7} is reserved") from None
        policy = int(f["policy"])
        if policy & _POLICY_RESERVED_MASK or not policy & _POLICY_MUST_BE_ONE:
            raise MalformedEvidence(f"SNP guest policy 0x{policy:x} has invalid reserved bits")
        v3 = version >= 3
        v5 = version >= 5
        return cls(
            raw=data,
            version=version,
            guest_svn=int(f["guest_svn"]),
            policy=GuestPolicy(policy),
            family_id=bytes(f["family_id"]),
            image_id=bytes(f["image_id"]),
            vmpl=int(f["vmpl"]),
            signature_algo=int(f["signature_algo"]),
            current_tcb=TcbVersion(int(f["current_tcb"])),
            platform_info=int(f["platform_info"]),
            author_key_en=bool(key_info & 1),
            mask_chip_key=bool(key_info >> 1 & 1),
            signing_key=signing_key,
            report_data=bytes(f["report_data"]),
            measurement=bytes(f["measurement"]),
            host_data=bytes(f["host_data"]),
            id_key_digest=bytes(f["id_key_digest"]),
            author_key_digest=bytes(f["author_key_digest"]),
            report_id=bytes(f["report_id"]),
            report_id_ma=bytes(f["report_id_ma"]),
            reported_tcb=TcbVersion(int(f["reported_tcb"])),
            cpuid_fam_id=int(f["cpuid_fam_id"]) if v3 else None,
            cpuid_mod_id=int(f["cpuid_mod_id"]) if v3 else None,
            cpuid_step=int(f["cpuid_step"]) if v3 else None,
            chip_id=bytes(f["chip_id"]),
            committed_tcb=TcbVersion(int(f["committed_tcb"])),
            current_version=(f["current_major"], f["current_minor"], f["current_build"]),
            committed_version=(f["committed_major"], f["committed_minor"], f["committed_build"]),
            launch_tcb=TcbVersion(int(f["launch_tcb"])),
            launch_mit_vector=int(f["launch_mit_vector"]) if v5 else None,
            current_mit_vector=int(f["current_mit_vector"]) if v5 else None,
            sig_r=int.from_bytes(f["sig_r"], "little"),
            sig_s=int.from_bytes(f["sig_s"], "little"),
        )

    def to_bytes(self) -> bytes:
        return self.raw

    def product(self, hint: Product | None = None) -> Product:
        """The CPU product, from the CPUID fields (v3+) or an explicit hint.

        Never defaults silently: a v2 report without a hint is an error.
        """
        if self.cpuid_fam_id is not None:
            from_cpuid = product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id or 0)
            if hint is not None and hint is not from_cpuid:
                raise MalformedEvidence(
                    f"report CPUID says {from_cpuid.value} but the endorsement says {hint.value}"
                )
            return from_cpuid
        if hint is None:
            raise MalformedEvidence(
                f"SNP report version {self.version} has no CPUID fields and no product hint was given"
            )
        return hint


def product_from_cpuid(family: int, model: int) -> Product:
    """Zen 3 (family 19h) models 0x00-0x0F are Milan, 0x10-0x1F and 0xA0-0xAF
    Genoa (and its Bergamo/Siena variants); Zen 5 (family 1Ah) is Turin."""
    if family == 0x19 and model <= 0x0F:
        return Product.MILAN
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return Product.GENOA
    if family == 0x1A:
        return Product.TURIN
    raise MalformedEvidence(f"unknown AMD CPU family 0x{family:02x} model 0x{model:02x}")


@dataclass(frozen=True)
class ReportFields:
    """Values for building a report (used by the sim PSP and by tests)."""

    version: int = 3
    guest_svn: int = 0
    policy: int = 0x30000
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    vmpl: int = 0
    current_tcb: int = 0
    platform_info: int = 0
    key_info: int = 0
    report_data: bytes = bytes(64)
    measurement: bytes = bytes(48)
    host_data: bytes = bytes(32)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    report_id: bytes = bytes(32)
    report_id_ma: bytes = b"\xff" * 32
    reported_tcb: int = 0
    cpuid_fam_id: int = 0
    cpuid_mod_id: int = 0
    cpuid_step: int = 0
    chip_id: bytes = bytes(64)
    committed_tcb: int = 0
    current_build: int = 0
    current_minor: int = 0
    current_major: int = 0
    committed_build: int = 0
    committed_minor: int = 0
    committed_major: int = 0
    launch_tcb: int = 0
    launch_mit_vector: int = 0
    current_mit_vector: int = 0

    def unsigned_bytes(self) -> bytes:
        """The 0x4A0-byte report with a zero signature."""
        buf = bytearray(REPORT_SIZE)
        buf[0x034:0x038] = struct.pack("<I", SIG_ALGO_ECDSA_P384_SHA384)
        for name, off, fmt in _FIELDS:
            if name in ("signature_algo", "sig_r", "sig_s"):
                continue
            value = getattr(self, name)
            if isinstance(fmt, int):
                if len(value) != fmt:
                    raise ValueError(f"{name} must be {fmt} bytes")
                buf[off : off + fmt] = value
            else:
                struct.pack_into(fmt, buf, off, value)
        return bytes(buf)


def with_signature(unsigned: bytes, r: int, s: int) -> bytes:
    buf = bytearray(unsigned)
    buf[0x2A0 : 0x2A0 + SIG_COMPONENT] = r.to_bytes(SIG_COMPONENT, "little")
    buf[0x2E8 : 0x2E8 + SIG_COMPONENT] = s.to_bytes(SIG_COMPONENT, "little")
    return bytes(buf)


# --- MSG_KEY_REQ (SEV-SNP Firmware ABI spec, pub. 56860, "MSG_KEY_REQ") -----------------

#: GUEST_FIELD_SELECT bits of MSG_KEY_REQ (table "MSG_KEY_REQ Message
#: Structure"; the same bits as go-sev-guest's and the sev crate's
#: ``GuestFieldSelect``): which guest fields the firmware mixes into the
#: derived key.
FIELD_GUEST_POLICY = 1 << 0
FIELD_IMAGE_ID = 1 << 1
FIELD_FAMILY_ID = 1 << 2
FIELD_MEASUREMENT = 1 << 3
FIELD_GUEST_SVN = 1 << 4
FIELD_TCB_VERSION = 1 << 5
#: Every bit named above; the others are reserved (must be zero).
FIELD_ALL = 0x3F
#: What a Keep mixes into its sealing key: its guest policy (a debug-enabled
#: guest gets another key), its launch measurement (another runtime gets
#: another key) and the TCB version (a key of a newer TCB is not derivable
#: after a rollback of the firmware).
SEALING_FIELDS = FIELD_GUEST_POLICY | FIELD_MEASUREMENT | FIELD_TCB_VERSION
#: ROOT_KEY_SELECT: 0 derives from the VCEK (chip- and TCB-unique), 1 from the
#: VMRK (the VM root key a migration agent provides).
ROOT_VCEK = 0
ROOT_VMRK = 1
#: Size of DERIVED_KEY in MSG_KEY_RSP.
DERIVED_KEY_SIZE = 32
