"""Keep side of the snp backend: ask the AMD Secure Processor for a report.

UNTESTED ON REAL HARDWARE. No SEV-SNP machine was available while this was
written; it is tested only against a fake configfs tree and a fake
/dev/sev-guest ioctl (stockade.testing.configfs), which follow the kernel
sources cited below. Run it on a real SNP guest before relying on it.

Inside an SNP guest Linux offers two ways to get an ATTESTATION_REPORT with
64 bytes of our report data, and this module tries them in this order:

1. configfs-tsm (Linux >= 6.7, Documentation/ABI/testing/configfs-tsm):
   ``mkdir /sys/kernel/config/tsm/report/$name``; read ``provider`` (must be
   ``sev_guest``) and ``generation``; optionally write ``privlevel`` (the
   VMPL, refused by the kernel below ``privlevel_floor``); write the 64 bytes
   to ``inblob``; read ``outblob`` (the report alone: the driver strips the
   MSG_REPORT_RSP header, drivers/virt/coco/sev-guest/sev-guest.c
   ``sev_report_new``) and ``auxblob`` (the GHCB certificate table, empty
   when the host supplies none); read ``generation`` again: it must have
   grown by exactly our writes, else another writer touched the entry
   between our write and our read and the report may answer someone else's
   inblob (the ABI file's own advice); then ``rmdir`` the entry. A private
   entry per request already avoids such races; a conflict is retried with a
   fresh entry a few times, then refused.
2. /dev/sev-guest (include/uapi/linux/sev-guest.h), when configfs-tsm is
   absent or its entry cannot be created: one ``SNP_GET_EXT_REPORT`` ioctl
   with a 16 KiB certificate buffer (the driver's maximum,
   SEV_FW_BLOB_MAX_SIZE in include/linux/psp-sev.h), or ``SNP_GET_REPORT``
   when ``certificates=False``. A failed request is not retried: the driver
   wipes the VMPCK after most firmware errors (``snp_disable_vmpck``), so no
   later request could succeed either.

A sealing key (:meth:`SnpAttester.sealing_key`, for the Keep's compile
cache, ADR 0023) comes only from /dev/sev-guest: ``SNP_GET_DERIVED_KEY``
sends MSG_KEY_REQ (SEV-SNP Firmware ABI spec, pub. 56860: ROOT_KEY_SELECT,
GUEST_FIELD_SELECT, VMPL, GUEST_SVN, TCB_VERSION) and returns MSG_KEY_RSP
(status, 32-byte key). configfs-tsm has no key interface: its ABI
(Documentation/ABI/testing/configfs-tsm-report) offers reports only.

The report is parsed (abi.AttestationReport) and must carry the requested
report data (and VMPL, when one was asked for) before it is returned; its
signature is the verifier's business, not the attester's. Certificates come
from the GHCB certificate table (GHCB spec pub. 56421, MSG_REPORT_REQ;
parsed by snp/certtable.py), whose entries are keyed by GUID; VCEK, VLEK,
ASK and ARK go into the bundle, other entries are left out.

Errors: :class:`SnpGuestError` when neither interface exists or one fails
(each message names the path and the errno); MalformedEvidence when the
bytes they return do not have the required structure.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from stockade.errors import MalformedEvidence
from stockade.evidence import tsm
from stockade.evidence.snp.abi import (
    DERIVED_KEY_SIZE,
    FIELD_ALL,
    REPORT_SIZE,
    ROOT_VCEK,
    SEALING_FIELDS,
    AttestationReport,
)
from stockade.evidence.snp.certtable import parse_cert_table
from stockade.evidence.tsm import (
    TSM_REPORT_ROOT,
    GuestInterfaceError,
    OsConfigfs,
    TsmEntryUnavailable,
    TsmFiles,
)
from stockade.wire.evidence import EvidenceBundle
from stockade.wire.platform import Platform

#: The sev-guest driver's misc device (drivers/virt/coco/sev-guest).
SEV_GUEST_DEVICE = Path("/dev/sev-guest")
#: The configfs-tsm ``provider`` of the SEV guest driver (its KBUILD_MODNAME).
TSM_PROVIDER = "sev_guest"
REPORT_DATA_SIZE = 64


#: The one guest-interface error class of every attester (evidence/tsm.py).
SnpGuestError = GuestInterfaceError


# --- certificate table --------------------------------------------------------------

_CERT_NAMES = ("ark", "ask", "vcek", "vlek")


def bundle_certs(table: bytes) -> tuple[tuple[str, bytes], ...]:
    """The VCEK, VLEK, ASK and ARK of a GHCB certificate table (parsed by
    snp/certtable.py, MalformedEvidence when malformed) as EvidenceBundle
    certs, sorted by name. Other entries (unknown GUIDs) are left out: the
    bundle names certificates, and the verifier uses only these."""
    parsed = parse_cert_table(table)
    found = ((name, getattr(parsed, name)) for name in _CERT_NAMES)
    return tuple((name, der) for name, der in found if der is not None)


# --- /dev/sev-guest ioctl ABI --------------------------------------------------------
# include/uapi/linux/sev-guest.h (checked against torvalds/linux and
# google/go-sev-guest client/linuxabi/linux_abi.go). x86-64 layout, natural
# alignment, little-endian:
#   struct snp_report_req { u8 user_data[64]; u32 vmpl; u8 rsvd[28]; }          96 bytes
#   struct snp_ext_report_req { struct snp_report_req data;                       112 bytes
#                               u64 certs_address /* @96 */; u32 certs_len /* @104 */; }
#   struct snp_guest_request_ioctl { u8 msg_version; /* 7 bytes padding */        32 bytes
#       u64 req_data; u64 resp_data;
#       union { u64 exitinfo2; struct { u32 fw_error; u32 vmm_error; }; }; }
#   struct snp_report_resp { u8 data[4000]; }  holding MSG_REPORT_RSP (SNP ABI
#       spec pub. 56860): u32 status; u32 report_size; u8 reserved[24]; report.
#   struct snp_derived_key_req { u32 root_key_select; u32 rsvd;                   32 bytes
#       u64 guest_field_select; u32 vmpl; u32 guest_svn; u64 tcb_version; }
#   struct snp_derived_key_resp { u8 data[64]; }  holding MSG_KEY_RSP (SNP ABI
#       spec pub. 56860, "MSG_KEY_RSP"): u32 status @0; u8 reserved[28];
#       u8 derived_key[32] @0x20.

REPORT_REQ = struct.Struct("<64sI28s")
EXT_REPORT_REQ = struct.Struct("<64sI28sQI4x")
GUEST_REQUEST = struct.Struct("<B7xQQQ")
REPORT_RESP_HEADER = struct.Struct("<II24s")
REPORT_RESP_SIZE = 4000
DERIVED_KEY_REQ = struct.Struct("<IIQIIQ")
KEY_RESP = struct.Struct("<I28s32s")
#: MSG_REPORT_REQ message version; the driver refuses 0.
MSG_VERSION = 1
#: Largest certificate buffer the driver accepts (SEV_FW_BLOB_MAX_SIZE); the
#: length must be a multiple of the page size.
CERTS_BUFFER_SIZE = 0x4000
#: exitinfo2 bits 63..32 (vmm_error) when the certificate buffer was too small;
#: the driver then writes the needed length back into certs_len.
SNP_GUEST_VMM_ERR_INVALID_LEN = 1
#: MSG_REPORT_RSP status values (SNP ABI spec "Status codes").
_FW_STATUS = {0x16: "INVALID_PARAM", 0x27: "INVALID_KEY"}


def _iowr(kind: str, nr: int, size: int) -> int:
    """Linux _IOWR on x86-64 (include/uapi/asm-generic/ioctl.h): dir 2 bits
    (read|write = 3) at 30, size 14 bits at 16, type 8 bits at 8, nr at 0."""
    return (3 << 30) | (size << 16) | (ord(kind) << 8) | nr


SNP_GET_REPORT = _iowr("S", 0x0, GUEST_REQUEST.size)  # 0xC0205300
SNP_GET_EXT_REPORT = _iowr("S", 0x2, GUEST_REQUEST.size)  # 0xC0205302
SNP_GET_DERIVED_KEY = _iowr("S", 0x1, GUEST_REQUEST.size)  # 0xC0205301


def encode_derived_key_req(
    field_select: int, tcb_version: int, vmpl: int = 0, guest_svn: int = 0, root_key_select: int = ROOT_VCEK
) -> bytes:
    """struct snp_derived_key_req (MSG_KEY_REQ's fields)."""
    if field_select & ~FIELD_ALL:
        raise ValueError(f"GUEST_FIELD_SELECT 0x{field_select:x} sets reserved bits")
    if not 0 <= vmpl <= 3 or root_key_select not in (0, 1):
        raise ValueError("VMPL must be 0..3 and ROOT_KEY_SELECT 0 or 1")
    return DERIVED_KEY_REQ.pack(root_key_select, 0, field_select, vmpl, guest_svn, tcb_version)


def decode_derived_key_resp(resp: bytes) -> bytes:
    """The DERIVED_KEY of a MSG_KEY_RSP (struct snp_derived_key_resp)."""
    if len(resp) != KEY_RESP.size:
        raise MalformedEvidence(f"MSG_KEY_RSP of {len(resp)} bytes, expected {KEY_RESP.size}")
    status, _reserved, key = KEY_RESP.unpack(resp)
    if status != 0:
        name = _FW_STATUS.get(status, "unknown")
        raise SnpGuestError(f"the AMD Secure Processor refused the key request: status 0x{status:x} ({name})")
    return bytes(key)


def encode_report_req(report_data: bytes, vmpl: int) -> bytes:
    """struct snp_report_req."""
    _check_request(report_data, vmpl)
    return REPORT_REQ.pack(report_data, vmpl, bytes(28))


def encode_ext_report_req(report_data: bytes, vmpl: int, certs_address: int, certs_len: int) -> bytes:
    """struct snp_ext_report_req."""
    _check_request(report_data, vmpl)
    return EXT_REPORT_REQ.pack(report_data, vmpl, bytes(28), certs_address, certs_len)


def ext_report_certs_len(req: bytes) -> int:
    """certs_len of an snp_ext_report_req (the driver updates it in place)."""
    return int(EXT_REPORT_REQ.unpack_from(req)[4])


def encode_guest_request(req_address: int, resp_address: int) -> bytes:
    """struct snp_guest_request_ioctl, exitinfo2 zero."""
    return GUEST_REQUEST.pack(MSG_VERSION, req_address, resp_address, 0)


def decode_exitinfo2(guest_request: bytes) -> tuple[int, int]:
    """(fw_error, vmm_error) of a snp_guest_request_ioctl after the call."""
    exitinfo2 = GUEST_REQUEST.unpack_from(guest_request)[3]
    return exitinfo2 & 0xFFFFFFFF, exitinfo2 >> 32


def decode_report_resp(resp: bytes) -> bytes:
    """The report inside a MSG_REPORT_RSP (struct snp_report_resp)."""
    if len(resp) < REPORT_RESP_HEADER.size:
        raise MalformedEvidence(f"MSG_REPORT_RSP of {len(resp)} bytes is shorter than its header")
    status, size, _reserved = REPORT_RESP_HEADER.unpack_from(resp)
    if status != 0:
        name = _FW_STATUS.get(status, "unknown")
        raise SnpGuestError(
            f"the AMD Secure Processor refused the report request: status 0x{status:x} ({name})"
        )
    if size != REPORT_SIZE or REPORT_RESP_HEADER.size + size > len(resp):
        raise MalformedEvidence(f"MSG_REPORT_RSP says the report has {size} bytes, expected {REPORT_SIZE}")
    return resp[REPORT_RESP_HEADER.size : REPORT_RESP_HEADER.size + size]


def _check_request(report_data: bytes, vmpl: int) -> None:
    if len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report data must be {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
    if not 0 <= vmpl <= 3:
        raise ValueError(f"VMPL must be 0..3, got {vmpl}")


#: ``ioctl(fd, request, buffer) -> int``; the default is fcntl.ioctl with the
#: buffer mutated in place (the driver writes exitinfo2 back into it).
IoctlFn = Callable[[int, int, bytearray], int]


def _fcntl_ioctl(fd: int, request: int, buf: bytearray) -> int:
    return int(fcntl.ioctl(fd, request, buf, True))


def device_report(
    device: Path,
    report_data: bytes,
    vmpl: int = 0,
    *,
    certificates: bool = True,
    ioctl: IoctlFn = _fcntl_ioctl,
) -> tuple[bytes, bytes]:
    """(report, certificate table) from /dev/sev-guest; the table is empty
    for SNP_GET_REPORT or when the host supplies no certificates."""
    certs = ctypes.create_string_buffer(CERTS_BUFFER_SIZE if certificates else 0)
    if certificates:
        req_bytes = encode_ext_report_req(report_data, vmpl, ctypes.addressof(certs), CERTS_BUFFER_SIZE)
        request, name = SNP_GET_EXT_REPORT, "SNP_GET_EXT_REPORT"
    else:
        req_bytes = encode_report_req(report_data, vmpl)
        request, name = SNP_GET_REPORT, "SNP_GET_REPORT"
    req = ctypes.create_string_buffer(req_bytes, len(req_bytes))
    resp = ctypes.create_string_buffer(REPORT_RESP_SIZE)
    guest = bytearray(encode_guest_request(ctypes.addressof(req), ctypes.addressof(resp)))

    def explain(exc: OSError, vmm_error: int) -> str | None:
        if certificates and exc.errno == errno.EIO and vmm_error == SNP_GUEST_VMM_ERR_INVALID_LEN:
            needed = ext_report_certs_len(req.raw)
            return (
                f"{name} on {device}: the host's certificates need {needed} bytes, more than the "
                f"driver's maximum of {CERTS_BUFFER_SIZE}"
            )
        return None

    _guest_ioctl(device, request, name, guest, ioctl, explain)
    report = decode_report_resp(resp.raw)
    table = certs.raw if certificates else b""
    return report, table


def _guest_ioctl(
    device: Path,
    request: int,
    name: str,
    guest: bytearray,
    ioctl: IoctlFn,
    explain: Callable[[OSError, int], str | None] = lambda exc, vmm_error: None,
) -> None:
    """One ``snp_guest_request_ioctl`` on ``device``; a failure is an
    SnpGuestError with the firmware and VMM error codes the driver wrote
    back (``explain`` may give a more specific message for a failure)."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise SnpGuestError(f"cannot open {device}: {exc.strerror} (errno {exc.errno})") from None
    try:
        ioctl(fd, request, guest)
    except OSError as exc:
        fw_error, vmm_error = decode_exitinfo2(bytes(guest))
        detail = explain(exc, vmm_error)
        raise SnpGuestError(
            detail
            or f"{name} on {device} failed: {exc.strerror} (errno {exc.errno}, "
            f"firmware error 0x{fw_error:x}, VMM error 0x{vmm_error:x})"
        ) from None
    finally:
        os.close(fd)


def device_derived_key(
    device: Path,
    field_select: int,
    tcb_version: int,
    vmpl: int = 0,
    *,
    ioctl: IoctlFn = _fcntl_ioctl,
) -> bytes:
    """A 32-byte key from /dev/sev-guest (SNP_GET_DERIVED_KEY, VCEK root).
    UNTESTED ON REAL HARDWARE: tested against the struct layout only."""
    req_bytes = encode_derived_key_req(field_select, tcb_version, vmpl)
    req = ctypes.create_string_buffer(req_bytes, len(req_bytes))
    resp = ctypes.create_string_buffer(KEY_RESP.size)
    guest = bytearray(encode_guest_request(ctypes.addressof(req), ctypes.addressof(resp)))
    _guest_ioctl(device, SNP_GET_DERIVED_KEY, "SNP_GET_DERIVED_KEY", guest, ioctl)
    key = decode_derived_key_resp(resp.raw)
    if len(key) != DERIVED_KEY_SIZE:  # pragma: no cover - the struct gives 32
        raise MalformedEvidence("MSG_KEY_RSP key is not 32 bytes")
    return key


# --- configfs-tsm --------------------------------------------------------------------


class ConfigfsOps(TsmFiles, Protocol):
    """The file operations of the configfs-tsm path (tsm.TsmFiles) and the
    check whether the tree exists (injectable so that a fake kernel can
    watch them; tsm.OsConfigfs is the real one)."""

    def is_dir(self, path: Path) -> bool: ...


def tsm_report(
    root: Path,
    report_data: bytes,
    vmpl: int | None = None,
    *,
    fs: ConfigfsOps | None = None,
    attempts: int = 3,
) -> tuple[bytes, bytes]:
    """(outblob, auxblob) from configfs-tsm (evidence/tsm.py), with
    ``privlevel`` written first when a VMPL is asked for. Raises
    TsmEntryUnavailable when no entry can be created (the caller may fall
    back to the device)."""
    _check_request(report_data, 0 if vmpl is None else vmpl)
    return tsm.tsm_report(
        fs or OsConfigfs(),
        root,
        TSM_PROVIDER,
        report_data,
        attributes=() if vmpl is None else (("privlevel", f"{vmpl}\n".encode()),),
        auxblob=True,
        attempts=attempts,
        not_this="this is not an SEV-SNP guest",
    )


# --- the attester --------------------------------------------------------------------


class SnpAttester:
    """Evidence for the snp backend (see the module docstring).

    ``tsm_root`` and ``device`` are where the kernel interfaces live (tests
    point them into a temporary tree); ``fs`` and ``ioctl`` replace the
    system calls for a fake kernel. ``vmpl``: ask for a report at this VMPL
    (needed under an SVSM; None leaves the kernel's default). ``certificates``:
    ask the device for the certificate table (SNP_GET_EXT_REPORT).
    """

    platform = Platform.SNP.value

    def __init__(
        self,
        *,
        tsm_root: Path = TSM_REPORT_ROOT,
        device: Path = SEV_GUEST_DEVICE,
        vmpl: int | None = None,
        certificates: bool = True,
        fs: ConfigfsOps | None = None,
        ioctl: IoctlFn = _fcntl_ioctl,
        attempts: int = 3,
    ) -> None:
        if vmpl is not None and not 0 <= vmpl <= 3:
            raise ValueError(f"VMPL must be 0..3, got {vmpl}")
        self.tsm_root = tsm_root
        self.device = device
        self.vmpl = vmpl
        self.certificates = certificates
        self._fs: ConfigfsOps = fs or OsConfigfs()
        self._ioctl = ioctl
        self._attempts = attempts
        #: "configfs-tsm" or "/dev/sev-guest": the interface of the last report.
        self.interface: str | None = None
        self._report: AttestationReport | None = None

    def evidence(self, report_data: bytes) -> EvidenceBundle:
        if len(report_data) != REPORT_DATA_SIZE:
            raise ValueError(f"report data must be {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
        report, table = self._raw(report_data)
        self._report = self._check(report, report_data)
        return EvidenceBundle(platform=Platform.SNP.value, report=report, certs=bundle_certs(table))

    def _raw(self, report_data: bytes) -> tuple[bytes, bytes]:
        tsm_failure = f"{self.tsm_root} does not exist"
        if self._fs.is_dir(self.tsm_root):
            try:
                result = tsm_report(
                    self.tsm_root, report_data, self.vmpl, fs=self._fs, attempts=self._attempts
                )
            except TsmEntryUnavailable as exc:
                tsm_failure = str(exc)
            else:
                self.interface = "configfs-tsm"
                return result
        if not self.device.exists():
            raise SnpGuestError(
                f"no SEV-SNP guest interface: configfs-tsm unusable ({tsm_failure}) and {self.device} "
                "does not exist (is this an SEV-SNP guest with the sev-guest driver loaded?)"
            )
        self.interface = str(self.device)
        return device_report(
            self.device,
            report_data,
            0 if self.vmpl is None else self.vmpl,
            certificates=self.certificates,
            ioctl=self._ioctl,
        )

    def sealing_key(self) -> bytes | None:
        """The Keep's sealing key: SNP_GET_DERIVED_KEY with the VCEK root,
        SEALING_FIELDS, the committed TCB of the last report and its VMPL;
        None before any report or without /dev/sev-guest (configfs-tsm
        derives no keys). UNTESTED ON REAL HARDWARE."""
        if self._report is None or not self.device.exists():
            return None
        return device_derived_key(
            self.device,
            SEALING_FIELDS,
            self._report.committed_tcb.raw,
            self._report.vmpl,
            ioctl=self._ioctl,
        )

    def _check(self, report: bytes, report_data: bytes) -> AttestationReport:
        if len(report) != REPORT_SIZE:
            raise MalformedEvidence(
                f"{self.interface} returned {len(report)} bytes, an SNP report has {REPORT_SIZE}"
            )
        parsed = AttestationReport.from_bytes(report)
        if parsed.report_data != report_data:
            raise MalformedEvidence(f"{self.interface} returned a report for other report data")
        if self.vmpl is not None and parsed.vmpl != self.vmpl:
            raise MalformedEvidence(
                f"{self.interface} returned a report at VMPL {parsed.vmpl}, not the requested {self.vmpl}"
            )
        return parsed
