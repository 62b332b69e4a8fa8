"""The expected SEV-SNP launch digest of a guest, computed offline (ADR 0016).

An SNP guest's ``MEASUREMENT`` is the launch digest the AMD security
processor builds while the hypervisor adds pages with SNP_LAUNCH_UPDATE:
a SHA-384 chain over one PAGE_INFO structure per page (AMD SEV Secure Nested
Paging Firmware ABI Specification, pub. 56860, "PAGE_INFO"). For a QEMU
guest with an AmdSev OVMF and direct kernel boot (``kernel-hashes=on``) the
pages are, in order:

1. the OVMF image, mapped to end at 4 GiB, as normal pages (or a given
   ``ovmf_hash``: the digest after those pages, for a known firmware);
2. the sections OVMF's SEV metadata declares (``OVMF_SEV_META_DATA_GUID`` in
   its GUIDed footer table): zero pages, the secrets page, the CPUID page,
   and the page holding the SEV hashes table (SHA-256 of the kernel, initrd
   and command line, at the address of ``SEV_HASH_TABLE_RV_GUID``), or zero
   pages there without direct boot;
3. one VMSA per vCPU: the initial register state, which depends on the VMM,
   the vCPU type's CPUID signature (in RDX) and the guest features
   (``SEV_FEATURES``).

The computation is VirTEE's ``sev-snp-measure`` (pinned exactly in
pyproject.toml; https://github.com/virtee/sev-snp-measure,
sevsnpmeasure/guest.py ``snp_calc_launch_digest``), tested against its
published values (tests/test_snp_measure.py). This module checks every input
first, so that a bad one is an :class:`~stockade.errors.ImageError` with one
specific line instead of a traceback from the library.

Not computed here: an ID block and its authentication (they are not part of
MEASUREMENT), IGVM/SVSM launches, and VMSAs of VMMs other than the library's
(QEMU, ec2, gce).
"""

from __future__ import annotations

import ctypes
import hashlib
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stockade.errors import ImageError

if TYPE_CHECKING:
    from sevsnpmeasure.ovmf import OVMF

#: Length of a launch digest (SHA-384), and of an ``ovmf_hash``.
DIGEST_SIZE = 48
PAGE_SIZE = 4096
#: KVM's largest vCPU count on x86 (KVM_MAX_VCPUS, 4096 since Linux 6.1,
#: arch/x86/include/asm/kvm_host.h); a bound, so a typo cannot make us
#: hash for minutes.
MAX_VCPUS = 4096
#: SEV_FEATURES is a 64-bit VMSA field (APM Vol. 2, Table B-4, offset 3B0h).
MAX_GUEST_FEATURES = (1 << 64) - 1
#: Our bound on an OVMF file: OVMF is mapped to end at 4 GiB (so it must be
#: well below that, or its GPAs go negative); edk2's AmdSev builds are 4 MiB.
#: A larger file is not an OVMF image, and is refused before it is read.
MAX_OVMF_SIZE = 128 << 20
#: The VMM types whose initial VMSA the library knows (sevsnpmeasure/vmm_types.py).
VMM_TYPES = ("QEMU", "ec2", "gce")
#: The files of a Keep image directory that direct boot measures.
IMAGE_KERNEL, IMAGE_INITRD, IMAGE_CMDLINE = "vmlinuz", "initrd.img", "cmdline"


def vcpu_types() -> list[str]:
    """The vCPU type names QEMU knows and the library has a CPUID signature for."""
    from sevsnpmeasure.vcpu_types import CPU_SIGS

    return list(CPU_SIGS)


def vcpu_signature(vcpu_type: str) -> int:
    """The CPUID Fn0000_0001_EAX signature of a QEMU vCPU type ("EPYC-v4",
    "EPYC-Milan", ...): what the VMSA's RDX holds at reset."""
    from sevsnpmeasure.vcpu_types import CPU_SIGS

    try:
        signature: int = CPU_SIGS[vcpu_type]
    except KeyError:
        raise ImageError(f"unknown vCPU type {vcpu_type!r}; known: {', '.join(CPU_SIGS)}") from None
    return signature


def parse_hex(text: str, what: str, size: int | None = None) -> bytes:
    """Bytes from hex (upper or lower case, optional ``0x``); ``size`` bytes if given."""
    digits = text.strip()
    if digits[:2].lower() == "0x":
        digits = digits[2:]
    try:
        value = bytes.fromhex(digits)
    except ValueError:
        raise ImageError(f"{what}: not hexadecimal: {text[:120]!r}") from None
    if size is not None and len(value) != size:
        raise ImageError(
            f"{what}: expected {size} bytes ({2 * size} hex digits), got {len(value)} bytes ({len(digits)} hex digits)"
        )
    return value


def parse_guest_features(text: str) -> int:
    """A guest features value (``SEV_FEATURES``, 64 bits) from hex, ``0x`` optional."""
    digits = text.strip()
    if digits[:2].lower() == "0x":
        digits = digits[2:]
    if not digits or len(digits) > 16 or any(c not in string.hexdigits for c in digits):
        raise ImageError(f"guest features: expected a 64-bit hex value such as 0x1, got {text[:40]!r}")
    return int(digits, 16)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def _ovmf(path: Path) -> OVMF:
    """The library's parse of OVMF's footer table and SEV metadata, checked
    for everything the launch digest needs from them."""
    from sevsnpmeasure.ovmf import OVMF

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"OVMF: cannot read {path}: {exc.strerror or exc}") from None
    if size > MAX_OVMF_SIZE:
        raise ImageError(f"OVMF {path}: {size} bytes, larger than {MAX_OVMF_SIZE} bytes: not an OVMF image")
    data = _read(path, "OVMF")
    if not data or len(data) % PAGE_SIZE:
        raise ImageError(f"OVMF {path}: size {len(data)} is not a positive multiple of {PAGE_SIZE} bytes")
    try:
        ovmf = OVMF(str(path))
    except OSError as exc:
        raise ImageError(f"OVMF: cannot read {path}: {exc.strerror or exc}") from None
    except (RuntimeError, ValueError) as exc:  # bad metadata signature/version, truncated table
        raise ImageError(f"OVMF {path}: malformed GUIDed footer table or SEV metadata: {exc}") from None
    items = ovmf.metadata_items()
    if not items:
        raise ImageError(
            f"OVMF {path}: no SEV metadata (OVMF_SEV_META_DATA_GUID): not an SEV-SNP capable OVMF build"
        )
    for item in items:
        try:
            item.section_type()
        except ValueError:
            raise ImageError(
                f"OVMF {path}: SEV metadata section of unknown type {item.section_type_int:#x} at GPA {item.gpa:#x}"
            ) from None
        if item.gpa % PAGE_SIZE or item.size % PAGE_SIZE:
            raise ImageError(
                f"OVMF {path}: SEV metadata section at GPA {item.gpa:#x}, size {item.size:#x} is not page aligned"
            )
    if not _has_entry(ovmf, ovmf.SEV_ES_RESET_BLOCK_GUID):
        raise ImageError(f"OVMF {path}: no SEV-ES reset block (SEV_ES_RESET_BLOCK_GUID) in its footer table")
    return ovmf


def _has_entry(ovmf: OVMF, guid: str) -> bool:
    try:
        ovmf.table_item(guid)
    except KeyError:
        return False
    return True


def _check_kernel_hashes(ovmf: OVMF, path: Path) -> None:
    """Direct boot needs OVMF's hashes-table page: a SNP_KERNEL_HASHES
    metadata section and the table's address (SEV_HASH_TABLE_RV_GUID)."""
    from sevsnpmeasure.ovmf import SectionType
    from sevsnpmeasure.sev_hashes import PaddedSevHashTable

    sections = [s for s in ovmf.metadata_items() if s.section_type() == SectionType.SNP_KERNEL_HASHES]
    if not sections:
        raise ImageError(
            f"OVMF {path}: its SEV metadata has no SNP_KERNEL_HASHES section: it cannot measure a kernel, "
            "initrd and command line (use an OvmfPkg/AmdSev/AmdSevX64.dsc build)"
        )
    if not _has_entry(ovmf, ovmf.SEV_HASH_TABLE_RV_GUID) or ovmf.sev_hashes_table_gpa() == 0:
        raise ImageError(
            f"OVMF {path}: no SEV hashes table address (SEV_HASH_TABLE_RV_GUID) in its footer table"
        )
    offset = ovmf.sev_hashes_table_gpa() % PAGE_SIZE
    for s in sections:
        if s.size != PAGE_SIZE or offset + ctypes.sizeof(PaddedSevHashTable) > PAGE_SIZE:
            raise ImageError(
                f"OVMF {path}: the SNP_KERNEL_HASHES section (GPA {s.gpa:#x}, size {s.size:#x}) cannot hold "
                f"the hashes table at offset {offset:#x}"
            )


@dataclass(frozen=True)
class BootInputs:
    """The direct-boot inputs of a Keep image directory."""

    kernel: Path
    initrd: Path
    append: str


def image_boot_inputs(image: Path) -> BootInputs:
    """Kernel, initrd and command line of a Keep image directory (files
    ``vmlinuz``, ``initrd.img`` and ``cmdline``: UTF-8, one line, no trailing
    newline), exactly as the loader passes them to QEMU."""
    if not image.is_dir():
        raise ImageError(f"image {image}: not a directory")
    kernel, initrd = image / IMAGE_KERNEL, image / IMAGE_INITRD
    for f in (kernel, initrd):
        if not f.is_file():
            raise ImageError(f"image {image}: no file {f.name}")
    raw = _read(image / IMAGE_CMDLINE, f"image {image}")
    try:
        append = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImageError(f"image {image}: {IMAGE_CMDLINE} is not UTF-8 (byte {exc.start})") from None
    check_append(append, f"image {image}: {IMAGE_CMDLINE}")
    return BootInputs(kernel, initrd, append)


def check_append(append: str, what: str = "kernel command line") -> None:
    """A command line QEMU can pass: one line, no NUL (the hashes table
    measures its UTF-8 bytes and a terminating NUL)."""
    for ch, name in (("\x00", "a NUL"), ("\n", "a line break"), ("\r", "a carriage return")):
        if ch in append:
            raise ImageError(f"{what}: contains {name} at character {append.index(ch)}; it must be one line")
    try:
        append.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ImageError(f"{what}: not encodable as UTF-8 at character {exc.start}") from None


def sev_hashes_table(kernel: Path, initrd: Path | None, append: str | None) -> bytes:
    """The SEV hashes table QEMU (``kernel-hashes=on``) puts in OVMF's
    hashes-table page for this kernel, initrd and command line: GUIDed
    SHA-256 entries of the command line (UTF-8 and a NUL), the initrd and the
    kernel, padded to 16 bytes (QEMU target/i386/sev.c; sevsnpmeasure
    ``SevHashes.construct_table``). For a loader that binds a measurement to
    the exact boot files without SNP hardware."""
    import hashlib

    if append is not None:
        check_append(append)
    _read_check(kernel, "kernel")
    if initrd is not None:
        _read_check(initrd, "initrd")
    try:
        with open(kernel, "rb") as f:
            kernel_sha256 = hashlib.file_digest(f, "sha256").digest()
        if initrd is not None:
            with open(initrd, "rb") as f:
                initrd_sha256 = hashlib.file_digest(f, "sha256").digest()
        else:
            initrd_sha256 = hashlib.sha256(b"").digest()
    except OSError as exc:
        raise ImageError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
    return sev_hashes_table_of(kernel_sha256, initrd_sha256, append)


#: GUIDs of the SEV hashes table (QEMU target/i386/sev.c, OVMF
#: OvmfPkg/Library/BlobVerifierLib/BlobVerifierSevHashes.c).
_TABLE_GUID = "9438d606-4f22-4cc9-b479-a793d411fd21"
_KERNEL_GUID = "4de79437-abd2-427f-b835-d5b172d2045b"
_INITRD_GUID = "44baf731-3a2f-4bd7-9af1-41e29169781d"
_CMDLINE_GUID = "97d02dd8-bd20-4c94-aa78-e7714d36ab2a"


def sev_hashes_table_of(kernel_sha256: bytes, initrd_sha256: bytes, append: str | None) -> bytes:
    """:func:`sev_hashes_table` from the SHA-256 digests of the kernel and
    the initrd (e.g. those an image manifest names, once checked): the
    table is a header (GUID, little-endian u16 length) and three entries
    (GUID, u16 length 50, the 32-byte digest) in the order command line,
    initrd, kernel, zero-padded to a multiple of 16 bytes. The command line
    is hashed with its terminating NUL; no command line is one NUL."""
    import hashlib
    import struct
    import uuid

    if len(kernel_sha256) != 32 or len(initrd_sha256) != 32:
        raise ImageError("kernel and initrd digests must be 32-byte SHA-256 values")
    if append is not None:
        check_append(append)
    cmdline_sha256 = hashlib.sha256((append or "").encode() + b"\0").digest()

    def entry(guid: str, digest: bytes) -> bytes:
        return uuid.UUID(guid).bytes_le + struct.pack("<H", 16 + 2 + 32) + digest

    body = (
        entry(_CMDLINE_GUID, cmdline_sha256)
        + entry(_INITRD_GUID, initrd_sha256)
        + entry(_KERNEL_GUID, kernel_sha256)
    )
    table = uuid.UUID(_TABLE_GUID).bytes_le + struct.pack("<H", 16 + 2 + len(body)) + body
    return table + bytes(-len(table) % 16)


def snp_ovmf_hash(ovmf: Path) -> bytes:
    """The launch digest after OVMF's pages alone (``sev-snp-measure --mode
    snp:ovmf-hash``): give it as ``ovmf_hash`` to skip reading a known
    firmware again."""
    from sevsnpmeasure.guest import calc_snp_ovmf_hash

    _ovmf(ovmf)
    digest: bytes = calc_snp_ovmf_hash(str(ovmf))
    return digest


def snp_launch_digest(
    ovmf: Path,
    *,
    kernel: Path | None,
    initrd: Path | None,
    append: str | None,
    vcpus: int,
    vcpu_type: str,
    guest_features: int = 0x1,
    ovmf_hash: bytes | None = None,
    vmm_type: str = "QEMU",
) -> bytes:
    """The 48-byte SEV-SNP launch digest (report ``MEASUREMENT``) of a guest
    started with this OVMF, direct-boot kernel, initrd and command line
    (QEMU ``kernel-hashes=on``; ``kernel`` None: no direct boot), ``vcpus``
    vCPUs of QEMU type ``vcpu_type`` and these guest features.

    ``append`` None and ``""`` measure the same (QEMU hashes the empty
    command line as one NUL byte); ``initrd`` None measures an empty initrd.
    Raises :class:`ImageError` for every bad input."""
    from sevsnpmeasure.guest import snp_calc_launch_digest
    from sevsnpmeasure.vmm_types import VMMType

    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= MAX_VCPUS:
        raise ImageError(f"vCPUs: expected an integer from 1 to {MAX_VCPUS}, got {vcpus!r}")
    if isinstance(guest_features, bool) or not isinstance(guest_features, int):
        raise ImageError(f"guest features: expected an integer, got {guest_features!r}")
    if not 0 <= guest_features <= MAX_GUEST_FEATURES:
        raise ImageError(f"guest features: {guest_features:#x} does not fit the 64-bit SEV_FEATURES field")
    if vmm_type not in VMM_TYPES:
        raise ImageError(f"unknown VMM type {vmm_type!r}; known: {', '.join(VMM_TYPES)}")
    signature = vcpu_signature(vcpu_type)
    if ovmf_hash is not None and len(ovmf_hash) != DIGEST_SIZE:
        raise ImageError(f"OVMF hash: expected {DIGEST_SIZE} bytes, got {len(ovmf_hash)}")
    if kernel is None and (initrd is not None or append is not None):
        raise ImageError("an initrd or a command line is measured only with a kernel (direct boot)")
    if append is not None:
        check_append(append)
    parsed = _ovmf(ovmf)
    if kernel is not None:
        _check_kernel_hashes(parsed, ovmf)
        _read_check(kernel, "kernel")
        if initrd is not None:
            _read_check(initrd, "initrd")
    try:
        digest = snp_calc_launch_digest(
            vcpus,
            signature,
            str(ovmf),
            str(kernel) if kernel is not None else None,
            str(initrd) if initrd is not None else None,
            append,
            guest_features,
            ovmf_hash.hex() if ovmf_hash is not None else "",
            VMMType[vmm_type],
        )
    except OSError as exc:
        raise ImageError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
    except (RuntimeError, ValueError, AssertionError) as exc:  # checked above; never expected
        raise ImageError(f"SEV-SNP launch digest: {type(exc).__name__}: {exc}") from None
    if not isinstance(digest, bytes) or len(digest) != DIGEST_SIZE:
        raise ImageError(f"SEV-SNP launch digest: expected {DIGEST_SIZE} bytes from sev-snp-measure")
    return digest


def _read_check(path: Path, what: str) -> None:
    """Fail early, with our message, on a file the library could not open."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ImageError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if path.is_dir():
        raise ImageError(f"{what}: {path} is a directory")


def file_sha256(path: Path, what: str) -> str:
    """SHA-256 (hex) of a file, for reports of what was measured."""
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        raise ImageError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    return h.hexdigest()
