"""Expected TDX RTMR values of a TD that TDVF boots by QEMU direct kernel boot
(ADR 0017).

A TD's launch is recorded in two kinds of register (Intel TDX Module base
spec; UEFI 2.10 section 38.4.1 for the mapping to the CC event log's MR
index): MRTD (the TDX module measures every page the VMM adds before the TD
starts: the TDVF image) and RTMR[0..3] (run-time registers the guest extends:
``RTMR[i] = SHA-384(RTMR[i] || digest)``, each extension recorded in the CC
event log, CCEL). This module computes the RTMRs that depend only on the
kernel, initrd and command line QEMU is given, by writing down the events
TDVF (edk2's OVMF TDX build) and the Linux EFI stub extend in that boot,
in order, and replaying them:

RTMR[1] (CC MR index 2; PCRs 2-6 map to it: edk2
OvmfPkg/IntelTdx/TdxMeasurementLib/TdxMeasurementCommon.c
``TdxMeasurementMapPcrToMrIndex``)

1. ``EV_EFI_BOOT_SERVICES_APPLICATION``, PCR 4: the PE/COFF Authenticode
   SHA-384 of the kernel image as TDVF loads it. OvmfPkg's
   PlatformBootManagerLib ``TryRunningQemuKernel`` calls
   ``QemuLoadKernelImage`` (X86QemuLoadImageLib), whose ``LoadImage`` runs
   DxeTpm2MeasureBootLib ``Tcg2MeasurePeImage``; the digest is computed by
   OvmfPkg/Tcg/TdTcg2Dxe/MeasureBootPeCoff.c ``MeasurePeImageAndExtend``
   (:func:`authenticode_digest` is that algorithm).
2. ``EV_EFI_ACTION`` "Calling EFI Application from Boot Option", PCR 4, and
3. ``EV_SEPARATOR`` 00000000 to RTMR[1]: TdTcg2Dxe.c ``OnReadyToBoot``
   (first boot attempt), signalled by ``TryRunningQemuKernel`` after
   LoadImage and before StartImage.
4. ``EV_EFI_ACTION`` "Exit Boot Services Invocation" and
5. "Exit Boot Services Returned with Success", PCR 5: TdTcg2Dxe.c
   ``OnExitBootServices``, when the kernel's EFI stub exits boot services.
   (If the stub's first ExitBootServices call fails because the memory map
   changed, DxeMain signals the failure group and TdTcg2Dxe
   ``OnExitBootServicesFailed`` logs "Exit Boot Services Returned with
   Failure" first; the stub retries. That boot's RTMR[1] differs: a rare,
   non-deterministic event no offline value covers.)

RTMR[2] (CC MR index 3; PCRs 8-15), extended by the Linux EFI stub through
the EFI_CC_MEASUREMENT_PROTOCOL (Linux 6.9 and later: mainline commit
ac93cbfc2a2c "efi/libstub: Measure into CC protocol if TCG2 protocol is
absent"; before it the stub measured through TCG2 only, which TDVF does not
provide, and RTMR[2] stays zero):

1. ``EV_EVENT_TAG`` 0x8F3B22ED "LOADED_IMAGE::LoadOptions", PCR 9: the
   image's LoadOptions bytes as given (drivers/firmware/efi/libstub/
   efi-stub-helper.c ``efi_convert_cmdline``, measured only if
   LoadOptionsSize > 0). X86QemuLoadImageLib builds them from QEMU's
   command line: each byte widened to one UTF-16 unit (BasePrintLib ``%a``),
   with "initrd=initrd " in front (edk2-stable202508 and later, commit
   a2ac0fea49) or " initrd=initrd" behind (earlier) when there is an
   initrd, and a UTF-16 NUL.
2. ``EV_EVENT_TAG`` 0x8F3B22EC "Linux initrd", PCR 9: the initrd bytes as
   loaded through the LINUX_EFI_INITRD_MEDIA_GUID LoadFile2 device path that
   QemuKernelLoaderFsDxe installs (``efi_load_initrd``; not if the command
   line says ``noinitrd``).

The digest of each event is SHA-384 of the bytes named; the event data
logged beside it (the tagged-event structure, the action string) is not
hashed. RTMRs are extended by the TD's own firmware and kernel: they mean
something only if MRTD pins that firmware (a TDVF of the host's choosing
could extend these very digests and boot something else), see ADR 0017.

What the kernel bytes are: QEMU x86_load_linux (hw/i386/x86-common.c)
patches the bzImage setup header (loader type, heap end, command line and
initrd address) in the copy it gives the firmware, except for confidential
guests from QEMU 10.2 (Xiaoyao Li's patch testing ``machine->cgs`` instead
of ``sev_enabled()``, lore 20250814092111.2353598-1-xiaoyao.li@intel.com,
"Applied for 10.2"); the series that added ``-shim`` (QEMU 10.0, as edk2's
X86QemuLoadImageLib message says) also passes the unpatched kernel as fw_cfg
file "etc/boot/kernel" (lore 20240905141211.1253307-5-kraxel@redhat.com),
which QemuKernelLoaderFsDxe loads first from edk2-stable202502 (commit
20df7c42bd, "named blobs"). So the measured kernel
is the file as given with QEMU >= 10.2, or QEMU >= 10.0 and a TDVF from
edk2-stable202502 on; with older pairs pass :class:`QemuHeaderPatch` (the
patch depends on the guest memory size: Phala's dstack-mr
``dstack-mr/src/kernel.rs`` ``patch_kernel`` does the same).

Not computable here (:data:`NOT_COMPUTABLE`): MRTD and RTMR[0] depend on the
TDVF binary and the VM configuration; RTMR[3] is extended only by software
inside the TD.

Reads no files: callers pass bytes. Bad inputs raise
:class:`stockade.errors.ImageError`; a malformed event log
:class:`stockade.errors.MalformedEvidence`.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from stockade.errors import ImageError, MalformedEvidence

DIGEST_SIZE = 48
ZERO = bytes(DIGEST_SIZE)

# TCG PC Client Platform Firmware Profile, section 10.4.1 (event types).
EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_EVENT_TAG = 0x00000006
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_ACTION = 0x80000007

# drivers/firmware/efi/libstub/efistub.h
INITRD_EVENT_TAG_ID = 0x8F3B22EC
LOAD_OPTIONS_EVENT_TAG_ID = 0x8F3B22ED

# MdePkg/Include/Guid/... EFI_CALLING_EFI_APPLICATION etc. (the strings
# TdTcg2Dxe measures, without NUL: TdMeasureAction hashes AsciiStrLen bytes).
CALLING_EFI_APPLICATION = b"Calling EFI Application from Boot Option"
EXIT_BOOT_SERVICES_INVOCATION = b"Exit Boot Services Invocation"
EXIT_BOOT_SERVICES_SUCCEEDED = b"Exit Boot Services Returned with Success"
SEPARATOR_DATA = b"\x00\x00\x00\x00"

#: The Linux release from which the EFI stub measures into the CC
#: measurement protocol (commit ac93cbfc2a2c, merged for 6.9).
STUB_CC_MEASUREMENT_SINCE = (6, 9)

#: What the RTMRs of such a TD hold that this module cannot compute, and why.
NOT_COMPUTABLE: dict[str, str] = {
    "mrtd": (
        "MRTD measures the TDVF image pages the VMM adds (TDH.MEM.PAGE.ADD/TDH.MR.EXTEND of the "
        "sections its TDX metadata marks MR_EXTEND): it needs the exact TDVF binary, and QEMU's "
        "single- or two-pass page add; no TDVF binary with a published MRTD is available here"
    ),
    "rtmr0": (
        "RTMR[0] holds TDVF's configuration: the TD HOB (guest memory layout: memory size), the "
        "configuration firmware volume (UEFI variables, Secure Boot keys), the boot variables and "
        "QEMU's ACPI tables (etc/acpi/tables, rsdp, table-loader: vCPU count, devices); it needs "
        "the TDVF build and the exact QEMU command line, or an event log of a boot to replay"
    ),
    "rtmr3": "RTMR[3] is not extended at boot; only software inside the TD extends it",
}


def sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def extend(register: bytes, digest: bytes) -> bytes:
    """One RTMR extension: SHA-384(register || digest) (TDX module
    TDG.MR.RTMR.EXTEND; TdTcg2Dxe ``TdxMeasurementHashAndExtendToRtmr``)."""
    if len(register) != DIGEST_SIZE or len(digest) != DIGEST_SIZE:
        raise ImageError(
            f"an RTMR extension takes two {DIGEST_SIZE}-byte values, got {len(register)} and {len(digest)}"
        )
    return sha384(register + digest)


def replay(digests: Iterable[bytes]) -> bytes:
    """The RTMR value after extending ``digests`` in order, from zero."""
    value = ZERO
    for digest in digests:
        value = extend(value, digest)
    return value


# --------------------------------------------------------------------------
# PE/COFF Authenticode digest (PE format spec, "Calculating the PE Image
# Hash"; edk2 OvmfPkg/Tcg/TdTcg2Dxe/MeasureBootPeCoff.c MeasurePeImageAndExtend
# steps 1-17, which this follows: no zero padding to 8 bytes is hashed).

_PE32 = 0x10B
_PE32_PLUS = 0x20B
_SECURITY_DIRECTORY = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY
_SECTION_HEADER_SIZE = 40
_HASHES = ("sha256", "sha384")


def _u16(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<H", data, offset)[0])


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])


def authenticode_digest(image: bytes, hash_name: str = "sha384", *, what: str = "kernel") -> bytes:
    """The Authenticode digest of a PE/COFF image: the header without its
    CheckSum field and the Certificate Table directory entry, then each
    section's raw data in file order, then any data after the last section
    except the certificate table at the end. ``what`` names the input in
    errors. Raises :class:`ImageError` for anything that is not a
    well-formed PE/COFF image."""
    if hash_name not in _HASHES:
        raise ImageError(
            f"authenticode: unsupported hash {hash_name!r} (expected one of {', '.join(_HASHES)})"
        )
    size = len(image)
    if size < 0x40 or image[:2] != b"MZ":
        raise ImageError(f"{what}: not a PE/COFF image (no 'MZ' DOS header)")
    pe = _u32(image, 0x3C)
    if pe + 24 > size:
        raise ImageError(
            f"{what}: not a PE/COFF image (PE header offset {pe:#x} is beyond the file's {size} bytes)"
        )
    if image[pe : pe + 4] != b"PE\x00\x00":
        raise ImageError(f"{what}: not a PE/COFF image (no 'PE' signature at {pe:#x})")
    coff = pe + 4
    n_sections = _u16(image, coff + 2)
    optional_size = _u16(image, coff + 16)
    optional = coff + 20
    if optional_size < 2 or optional + optional_size > size:
        raise ImageError(f"{what}: PE optional header ({optional_size} bytes at {optional:#x}) is truncated")
    magic = _u16(image, optional)
    if magic == _PE32:
        directories = 96
    elif magic == _PE32_PLUS:
        directories = 112
    else:
        raise ImageError(
            f"{what}: PE optional header magic {magic:#x} is neither PE32 (0x10b) nor PE32+ (0x20b)"
        )
    if optional_size < directories:
        raise ImageError(f"{what}: PE optional header of {optional_size} bytes has no data directories")
    n_directories = _u32(image, optional + directories - 4)  # NumberOfRvaAndSizes
    if directories + 8 * n_directories > optional_size:
        raise ImageError(
            f"{what}: {n_directories} PE data directories do not fit the {optional_size}-byte optional header"
        )
    checksum = optional + 64
    size_of_headers = _u32(image, optional + 60)
    section_table = optional + optional_size
    if section_table + _SECTION_HEADER_SIZE * n_sections > size_of_headers or size_of_headers > size:
        raise ImageError(
            f"{what}: PE SizeOfHeaders {size_of_headers:#x} does not hold the {n_sections} section headers "
            f"or exceeds the file's {size} bytes"
        )

    h = hashlib.new(hash_name)
    h.update(image[:checksum])
    if n_directories <= _SECURITY_DIRECTORY:
        cert_size = 0
        h.update(image[checksum + 4 : size_of_headers])
    else:
        cert_entry = optional + directories + 8 * _SECURITY_DIRECTORY
        cert_size = _u32(image, cert_entry + 4)
        h.update(image[checksum + 4 : cert_entry])
        h.update(image[cert_entry + 8 : size_of_headers])
    hashed = size_of_headers

    sections = []
    for i in range(n_sections):
        header = section_table + _SECTION_HEADER_SIZE * i
        raw_size, raw_pointer = struct.unpack_from("<II", image, header + 16)
        if raw_size:
            if raw_pointer + raw_size > size:
                raise ImageError(
                    f"{what}: PE section {i} ({raw_size} bytes at {raw_pointer:#x}) extends beyond the file's "
                    f"{size} bytes"
                )
            sections.append((raw_pointer, raw_size))
    for raw_pointer, raw_size in sorted(sections, key=lambda s: s[0]):  # stable, like edk2's insertion sort
        h.update(image[raw_pointer : raw_pointer + raw_size])
        hashed += raw_size

    if size > hashed:
        if size > hashed + cert_size:
            h.update(image[hashed : size - cert_size])
        elif size < hashed + cert_size:
            raise ImageError(
                f"{what}: PE certificate table ({cert_size} bytes) overlaps the sections (edk2 refuses to measure it)"
            )
    return h.digest()


# --------------------------------------------------------------------------
# The Linux boot protocol setup header (Documentation/arch/x86/boot.rst).


@dataclass(frozen=True)
class SetupHeader:
    protocol: int
    loadflags: int
    xloadflags: int
    initrd_addr_max: int
    release: str | None  # "6.12.48+deb13-cloud-amd64": first word of the kernel_version string


def setup_header(kernel: bytes) -> SetupHeader:
    """The boot-protocol fields of a bzImage; :class:`ImageError` if it is
    not one."""
    if len(kernel) < 0x1000 or kernel[0x202:0x206] != b"HdrS":
        raise ImageError("kernel: not a Linux bzImage (no 'HdrS' boot-protocol signature at 0x202)")
    protocol = _u16(kernel, 0x206)
    release = None
    version_offset = _u16(kernel, 0x20E)
    if protocol >= 0x200 and version_offset:
        start = 0x200 + version_offset
        end = kernel.find(b"\x00", start, start + 256)
        if end > start:
            words = kernel[start:end].split()
            release = words[0].decode("ascii", "replace") if words else None
    return SetupHeader(
        protocol=protocol,
        loadflags=kernel[0x211],
        xloadflags=_u16(kernel, 0x236) if protocol >= 0x20C else 0,
        initrd_addr_max=_u32(kernel, 0x22C) if protocol >= 0x203 else 0,
        release=release,
    )


def release_version(release: str | None) -> tuple[int, int] | None:
    """(major, minor) of a kernel release string, or None."""
    match = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(frozen=True)
class QemuHeaderPatch:
    """QEMU patches the bzImage setup header it hands the firmware (QEMU
    x86_load_linux, hw/i386/x86-common.c; for TDX up to QEMU 10.1, unless
    TDVF reads the unpatched "etc/boot/kernel", see the module docstring).
    The patch depends on the guest memory, so the Authenticode digest does
    too. ``memory``: the guest RAM in bytes (``-m``); ``acpi_data_size``:
    QEMU pc machines' ``pcmc->acpi_data_size`` (0x20000 + 0x8000, hw/i386/pc.c;
    dstack-mr uses the same). Assumes a q35 machine with the default
    ``max-ram-below-4g``."""

    memory: int
    acpi_data_size: int = 0x28000

    def below_4g(self) -> int:
        # hw/i386/pc_q35.c pc_q35_init: lowmem 2 GiB from 0xb0000000 of RAM up.
        lowmem = 0x80000000 if self.memory >= 0xB0000000 else 0xB0000000
        return lowmem if self.memory >= lowmem else self.memory

    def apply(self, kernel: bytes, initrd_size: int, cmdline: bytes) -> bytes:
        """``kernel`` with the setup-header fields QEMU writes."""
        header = setup_header(kernel)
        if self.memory <= self.acpi_data_size:
            raise ImageError(
                f"QEMU header patch: memory of {self.memory} bytes is not above the ACPI data size"
            )
        out = bytearray(kernel)
        protocol = header.protocol
        cmdline_size = (len(cmdline) + 16) & ~15
        if protocol < 0x202 or not header.loadflags & 0x01:  # low, or high but ancient, kernel
            real_addr, cmdline_addr = 0x90000, 0x9A000 - cmdline_size
        else:
            real_addr, cmdline_addr = 0x10000, 0x20000
        if protocol >= 0x20C and header.xloadflags & 0x40:  # XLF_CAN_BE_LOADED_ABOVE_4G
            initrd_max = 0xFFFFFFFF
        elif protocol >= 0x203:
            initrd_max = header.initrd_addr_max
        else:
            initrd_max = 0x37FFFFFF
        available = self.below_4g() - self.acpi_data_size
        if initrd_max >= available:
            initrd_max = available - 1
        if protocol >= 0x202:
            struct.pack_into("<I", out, 0x228, cmdline_addr)
        else:
            struct.pack_into("<HH", out, 0x20, 0xA33F, cmdline_addr - real_addr)
        mode = _vga_mode(cmdline)
        if mode is not None:
            struct.pack_into("<H", out, 0x1FA, mode)
        if protocol >= 0x200:
            out[0x210] = 0xB0  # type_of_loader: QEMU
        if protocol >= 0x201:
            out[0x211] |= 0x80  # CAN_USE_HEAP
            struct.pack_into("<H", out, 0x224, (cmdline_addr - real_addr - 0x200) & 0xFFFF)
        if initrd_size:
            if protocol < 0x200:
                raise ImageError("kernel: boot protocol older than 2.00 cannot take an initrd")
            if initrd_size >= initrd_max:
                raise ImageError(
                    f"initrd: {initrd_size} bytes do not fit below QEMU's initrd limit {initrd_max:#x}"
                )
            struct.pack_into("<II", out, 0x218, (initrd_max - initrd_size) & ~4095, initrd_size)
        return bytes(out)


def _vga_mode(cmdline: bytes) -> int | None:
    """QEMU's ``vga=`` handling in x86_load_linux (it writes vid_mode)."""
    at = cmdline.find(b"vga=")
    if at < 0:
        return None
    value = cmdline[at + 4 :]
    for word, mode in ((b"normal", 0xFFFF), (b"ext", 0xFFFE), (b"ask", 0xFFFD)):
        if value.startswith(word):
            return mode
    match = re.match(rb"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)(?=$| )", value)
    if match is None:
        raise ImageError("command line: invalid 'vga=' parameter (QEMU refuses it)")
    digits = match.group(1)
    # strtoul base 0: 0x hex, leading 0 octal, else decimal; QEMU stores 16 bits.
    base = 16 if digits[:2].lower() == b"0x" else 8 if digits.startswith(b"0") else 10
    number = int(digits[2:] if base == 16 else digits, base)
    if number > 0xFFFFFFFF:
        raise ImageError("command line: 'vga=' value out of range (QEMU refuses it)")
    return number & 0xFFFF


# --------------------------------------------------------------------------
# The expected event log.


@dataclass(frozen=True)
class TdvfEvents:
    """Assumptions about the TDVF build (edk2 OVMF, IntelTdxX64 or OvmfPkgX64
    with CC measurement) that the RTMR[1]/[2] events depend on.

    ``initrd_option``: where X86QemuLoadImageLib puts "initrd=initrd" in the
    LoadOptions: ``"prefix"`` (edk2-stable202508 and later) or ``"suffix"``
    (earlier releases). The boot-service action events of RTMR[1] are the same
    in every TdTcg2Dxe release; PCI option ROMs (EV_EFI_BOOT_SERVICES_DRIVER,
    PCR 2) would add events to RTMR[1]: the QEMU configuration must load none.
    No vTPM: with a TCG2 protocol the EFI stub measures into it, not RTMR[2].
    """

    initrd_option: Literal["prefix", "suffix"] = "prefix"


#: edk2 from edk2-stable202508 on.
EDK2_TDVF = TdvfEvents()
#: edk2 releases before edk2-stable202508 (" initrd=initrd" appended).
EDK2_TDVF_BEFORE_202508 = TdvfEvents(initrd_option="suffix")


@dataclass(frozen=True)
class Event:
    """One expected extension: the RTMR, the TCG event type, the SHA-384
    digest extended and what was hashed."""

    rtmr: int
    event_type: int
    digest: bytes
    description: str


def load_options(append: str, initrd: bool, firmware: TdvfEvents = EDK2_TDVF) -> bytes:
    """The LoadOptions bytes X86QemuLoadImageLib gives the kernel image (the
    EFI stub measures these): QEMU's command line, each byte widened to a
    UTF-16 unit, "initrd=initrd" placed as ``firmware`` says, NUL-terminated.
    Empty when there is neither a command line nor an initrd."""
    raw = append.encode("utf-8")
    if b"\x00" in raw:
        raise ImageError("command line: contains a NUL byte (QEMU would cut it there)")
    if initrd:
        text = b"initrd=initrd " + raw if firmware.initrd_option == "prefix" else raw + b" initrd=initrd"
    else:
        text = raw
    if not text:
        return b""
    # BasePrintLib %a: each CHAR8 zero-extended to a CHAR16 (not UTF-8 decoding).
    return b"".join(bytes((b, 0)) for b in text) + b"\x00\x00"


def stub_measures(kernel: bytes) -> bool | None:
    """Whether this kernel's EFI stub extends RTMR[2] (Linux >= 6.9), from
    its release string; None if the release cannot be read."""
    version = release_version(setup_header(kernel).release)
    return None if version is None else version >= STUB_CC_MEASUREMENT_SINCE


def tdx_events(
    kernel: bytes,
    initrd: bytes | None,
    append: str,
    *,
    firmware_events: TdvfEvents = EDK2_TDVF,
    qemu_header_patch: QemuHeaderPatch | None = None,
    kernel_measures: bool | None = None,
) -> list[Event]:
    """The RTMR[1] and RTMR[2] events of the boot, in order.

    ``kernel_measures``: whether the kernel's EFI stub extends RTMR[2]; None
    reads it from the kernel's release (>= 6.9) and raises :class:`ImageError`
    if that is not possible or the kernel is older (RTMR[2] would then not
    cover the command line and initrd: pass False to compute it anyway)."""
    header = setup_header(kernel)
    initrd = initrd or None
    if kernel_measures is None:
        version = release_version(header.release)
        if version is None:
            raise ImageError(
                "kernel: cannot read its release, so cannot tell whether its EFI stub measures the command line "
                "and initrd into RTMR[2] (Linux >= 6.9 does); say so explicitly"
            )
        if version < STUB_CC_MEASUREMENT_SINCE:
            raise ImageError(
                f"kernel {header.release}: its EFI stub measures the command line and initrd into RTMR[2] only from "
                "Linux 6.9 (CC measurement protocol); with this kernel RTMR[2] stays zero and does not cover them"
            )
        kernel_measures = True
    cmdline = append.encode("utf-8")
    image = (
        kernel if qemu_header_patch is None else qemu_header_patch.apply(kernel, len(initrd or b""), cmdline)
    )
    events = [
        Event(
            1,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            authenticode_digest(image),
            "kernel PE/COFF image (Authenticode SHA-384)"
            + (", setup header as QEMU patches it" if qemu_header_patch else ""),
        ),
        Event(1, EV_EFI_ACTION, sha384(CALLING_EFI_APPLICATION), CALLING_EFI_APPLICATION.decode()),
        Event(1, EV_SEPARATOR, sha384(SEPARATOR_DATA), "separator"),
        Event(
            1, EV_EFI_ACTION, sha384(EXIT_BOOT_SERVICES_INVOCATION), EXIT_BOOT_SERVICES_INVOCATION.decode()
        ),
        Event(1, EV_EFI_ACTION, sha384(EXIT_BOOT_SERVICES_SUCCEEDED), EXIT_BOOT_SERVICES_SUCCEEDED.decode()),
    ]
    if kernel_measures:
        options = load_options(append, initrd is not None, firmware_events)
        rtmr2 = []
        if options:
            rtmr2.append(
                Event(2, EV_EVENT_TAG, sha384(options), "LOADED_IMAGE::LoadOptions (kernel command line)")
            )
        if initrd is not None and "noinitrd" not in append.split():
            rtmr2.append(Event(2, EV_EVENT_TAG, sha384(initrd), "Linux initrd"))
        # The stub converts the command line (efi_pe_entry) before it loads
        # the initrd (efi_stub_entry), and ExitBootServices comes last, but
        # RTMR[1] and RTMR[2] are separate registers: only the order within
        # each one matters.
        events.extend(rtmr2)
    return events


def tdx_rtmrs(
    kernel: bytes,
    initrd: bytes | None,
    append: str,
    *,
    firmware_events: TdvfEvents = EDK2_TDVF,
    qemu_header_patch: QemuHeaderPatch | None = None,
    kernel_measures: bool | None = None,
) -> dict[int, bytes]:
    """The expected RTMR[1] and RTMR[2] of a TD booted by TDVF from QEMU's
    ``-kernel``/``-initrd``/``-append``: {1: value, 2: value}. See
    :func:`tdx_events` for the arguments and the module docstring for the
    events and the assumptions."""
    events = tdx_events(
        kernel,
        initrd,
        append,
        firmware_events=firmware_events,
        qemu_header_patch=qemu_header_patch,
        kernel_measures=kernel_measures,
    )
    return {i: replay(e.digest for e in events if e.rtmr == i) for i in (1, 2)}


# --------------------------------------------------------------------------
# Replaying a CC event log (CCEL): TCG PC Client PFP "crypto agile" format,
# the first event a TCG_PCClientPCREvent carrying the Spec ID Event03, then
# TCG_PCR_EVENT2 records whose index is the CC MR index (1-4: RTMR[0-3];
# UEFI 2.10 section 38.4.1), padded with 0xFF to the end of the log area.

_TPM_ALG_SHA384 = 0x000C
_SPEC_ID = b"Spec ID Event03\x00"


@dataclass(frozen=True)
class LoggedEvent:
    mr_index: int  # CC MR index: 0 MRTD, 1-4 RTMR[0-3]
    event_type: int
    digest: bytes  # the SHA-384 digest
    data: bytes


def parse_cc_event_log(log: bytes) -> list[LoggedEvent]:
    """The events of a CCEL event log area; :class:`MalformedEvidence` if it
    is not one."""

    def need(offset: int, n: int, what: str) -> None:
        if offset + n > len(log):
            raise MalformedEvidence(
                f"CC event log: {what} at offset {offset:#x} runs past the end ({len(log)} bytes)"
            )

    need(0, 32, "first event")
    _, event_type = struct.unpack_from("<II", log, 0)
    size = _u32(log, 28)
    need(32, size, "Spec ID event")
    spec = log[32 : 32 + size]
    if event_type != EV_NO_ACTION or not spec.startswith(_SPEC_ID) or len(spec) < 28:
        raise MalformedEvidence("CC event log: the first event is not a TCG Spec ID Event03")
    n_algorithms = _u32(spec, 24)
    if 28 + 4 * n_algorithms > len(spec):
        raise MalformedEvidence("CC event log: Spec ID event lists more algorithms than it holds")
    sizes = dict(struct.unpack_from("<HH", spec, 28 + 4 * i) for i in range(n_algorithms))
    if sizes.get(_TPM_ALG_SHA384) != DIGEST_SIZE:
        raise MalformedEvidence("CC event log: SHA-384 is not among the Spec ID event's algorithms")
    events = []
    offset = 32 + size
    while offset + 8 <= len(log):
        mr_index, event_type = struct.unpack_from("<II", log, offset)
        if mr_index == 0xFFFFFFFF:  # the unused, 0xFF-filled rest of the area
            break
        need(offset, 12, "event header")
        count = _u32(log, offset + 8)
        at = offset + 12
        digest = None
        for _ in range(count):
            need(at, 2, "digest algorithm")
            algorithm = _u16(log, at)
            if algorithm not in sizes:
                raise MalformedEvidence(
                    f"CC event log: digest algorithm {algorithm:#x} at {at:#x} is not declared"
                )
            need(at + 2, sizes[algorithm], "digest")
            if algorithm == _TPM_ALG_SHA384:
                digest = log[at + 2 : at + 2 + DIGEST_SIZE]
            at += 2 + sizes[algorithm]
        need(at, 4, "event size")
        data_size = _u32(log, at)
        need(at + 4, data_size, "event data")
        if digest is None:
            raise MalformedEvidence(f"CC event log: event at {offset:#x} has no SHA-384 digest")
        if mr_index > 4:
            raise MalformedEvidence(
                f"CC event log: event at {offset:#x} names MR index {mr_index} (0-4 exist)"
            )
        events.append(LoggedEvent(mr_index, event_type, digest, log[at + 4 : at + 4 + data_size]))
        offset = at + 4 + data_size
    return events


def replay_cc_event_log(log: bytes | Sequence[LoggedEvent]) -> dict[int, bytes]:
    """RTMR[0-3] as the events of a CC event log extend them from zero
    (EV_NO_ACTION events are not extended; MRTD is not an RTMR)."""
    events = parse_cc_event_log(log) if isinstance(log, bytes) else log
    return {
        rtmr: replay(e.digest for e in events if e.mr_index == rtmr + 1 and e.event_type != EV_NO_ACTION)
        for rtmr in range(4)
    }


@dataclass(frozen=True)
class LogComparison:
    """A real boot's CC event log against the expected events: the RTMRs the
    log replays to, the expected RTMR[1]/[2] events the log lacks, and the
    RTMR[1]/[2] events of the log that were not expected (matched by register
    and digest)."""

    replayed: dict[int, bytes]
    missing: list[Event]
    unexpected: list[LoggedEvent]


def compare_event_log(expected: Sequence[Event], log: bytes) -> LogComparison:
    """Compare the events of ``log`` (a CCEL) in RTMR[1] and RTMR[2] with
    ``expected`` (:func:`tdx_events`); shows which assumption a boot broke
    when its RTMRs differ from the computed ones."""
    logged = parse_cc_event_log(log)
    unmatched = [e for e in logged if e.mr_index in (2, 3) and e.event_type != EV_NO_ACTION]
    missing = []
    for event in expected:
        match = next(
            (e for e in unmatched if e.mr_index == event.rtmr + 1 and e.digest == event.digest), None
        )
        if match is None:
            missing.append(event)
        else:
            unmatched.remove(match)
    return LogComparison(replay_cc_event_log(logged), missing, unmatched)
