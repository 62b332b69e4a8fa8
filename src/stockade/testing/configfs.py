"""Fake SEV-SNP guest interfaces for testing the snp attester without SNP.

:class:`FakeTsm` plays the kernel's side of configfs-tsm over a real
temporary directory. A plain directory cannot act like configfs by itself
(``mkdir`` creates no attribute files, writing ``inblob`` produces no
report, ``rmdir`` of a populated directory fails), so the attester's file
operations go through an injectable interface (``ConfigfsOps``), and
FakeTsm implements it by *delegating every read, write, mkdir and rmdir to
the real implementation* (``OsConfigfs``, plain system calls on the tree)
and adding only what the kernel would do around them: populate an entry on
mkdir, bump ``generation`` on each write, produce ``outblob``/``auxblob``
when read after a new ``inblob``, and empty the entry before rmdir. The
behaviour follows drivers/virt/coco/tsm.c (report generation on read,
``privlevel`` checked against ``privlevel_floor``) and
drivers/virt/coco/sev-guest/sev-guest.c (``inblob`` must be 64 bytes,
``auxblob`` is the GHCB certificate table).

:class:`FakeSevGuest` is a fake ``ioctl`` for /dev/sev-guest: it reads the
request structures at the addresses the attester put in them and writes the
MSG_REPORT_RSP and certificate table back, as the sev-guest driver's
``get_report``/``get_ext_report`` do.

Both sign with a :data:`Signer`, usually :func:`sim_signer` (the sim chip's
PSP), so the reports they hand out verify against the sim root. Knobs on
each fake inject the faults a real kernel or host can produce.

THE SIM CHIP GIVES NO HARDWARE PROTECTION; these fakes exist for tests.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stockade.evidence.sim.channel import ReportRequest
from stockade.evidence.sim.chip import SimChip
from stockade.evidence.sim.psp import SimPsp
from stockade.evidence.snp import attester as snp
from stockade.evidence.snp.abi import REPORT_SIZE
from stockade.evidence.snp.certtable import ARK_GUID, ASK_GUID, VCEK_GUID, VLEK_GUID, build_cert_table
from stockade.evidence.tsm import OsConfigfs

#: ``sign(report_data, vmpl) -> (report, certs)``: certs as (name, DER) pairs
#: with names "vcek", "vlek", "ask", "ark".
Signer = Callable[[bytes, int], tuple[bytes, tuple[tuple[str, bytes], ...]]]

_GUID_OF = {"vcek": VCEK_GUID, "vlek": VLEK_GUID, "ask": ASK_GUID, "ark": ARK_GUID}


def sim_signer(chip: SimChip, measurement: bytes = bytes(48)) -> Signer:
    """A signer backed by the sim PSP of ``chip`` (reports verify against the
    sim chip's ARK)."""
    psp = SimPsp(chip, measurement)

    def sign(report_data: bytes, vmpl: int) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
        response = psp.report(ReportRequest(report_data=report_data, vmpl=vmpl))
        return response.report, response.certs

    return sign


def encode_cert_table(certs: tuple[tuple[str, bytes], ...]) -> bytes:
    """The GHCB certificate table a host provisions for ``certs`` (names
    "vcek", "vlek", "ask", "ark")."""
    return build_cert_table((_GUID_OF[name], der) for name, der in certs)


def _oserror(code: int, path: Path | str) -> OSError:
    return OSError(code, os.strerror(code), str(path))


#: Offset of certs_len in struct snp_ext_report_req (after data and certs_address).
_CERTS_LEN_OFFSET = struct.calcsize("<64sI28sQ")
_READ_ONLY = {"provider", "generation", "privlevel_floor", "outblob", "auxblob"}
_WRITE_ONLY = {"inblob", "privlevel"}


@dataclass
class _Entry:
    generation: int = 0
    read_generation: int = -1
    inblob: bytes = b""
    privlevel: int = 0
    conflict: bool = False


@dataclass
class FakeTsm:
    """A fake configfs-tsm kernel rooted at ``root`` (created if missing).

    Pass it as ``fs`` to SnpAttester with ``tsm_root=fake.root``. Knobs:

    - ``provider``: what the ``provider`` attribute says.
    - ``conflicts``: for this many entries, a "concurrent writer" bumps
      ``generation`` once right after ``outblob`` is produced.
    - ``omit``: attribute names an entry lacks (as on another TSM or kernel).
    - ``outblob_hook`` / ``auxblob_hook``: rewrite the blobs the kernel hands
      out (e.g. truncate them).
    - ``mkdir_errno``: make mkdir fail with this errno (e.g. EACCES).
    - ``privlevel_floor``: the lowest ``privlevel`` accepted.
    """

    root: Path
    sign: Signer
    provider: str = snp.TSM_PROVIDER
    conflicts: int = 0
    omit: frozenset[str] = frozenset()
    outblob_hook: Callable[[bytes], bytes] | None = None
    auxblob_hook: Callable[[bytes], bytes] | None = None
    mkdir_errno: int | None = None
    privlevel_floor: int = 0
    #: (operation, attribute or entry name) of every call, in order.
    log: list[tuple[str, str]] = field(default_factory=list)
    _entries: dict[Path, _Entry] = field(default_factory=dict)
    _os: OsConfigfs = field(default_factory=OsConfigfs)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def live_entries(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir())

    # -- ConfigfsOps -----------------------------------------------------------------

    def is_dir(self, path: Path) -> bool:
        return self._os.is_dir(path)

    def mkdir(self, path: Path) -> None:
        self.log.append(("mkdir", path.name))
        if self.mkdir_errno is not None:
            raise _oserror(self.mkdir_errno, path)
        if path.parent != self.root:
            raise _oserror(errno.EPERM, path)
        self._os.mkdir(path)
        entry = _Entry()
        if self.conflicts > 0:
            self.conflicts -= 1
            entry.conflict = True
        self._entries[path] = entry
        values = {
            "provider": f"{self.provider}\n".encode(),
            "generation": b"0\n",
            "privlevel_floor": f"{self.privlevel_floor}\n".encode(),
            "privlevel": b"",
            "inblob": b"",
            "outblob": b"",
            "auxblob": b"",
        }
        for name, value in values.items():
            if name not in self.omit:
                (path / name).write_bytes(value)

    def rmdir(self, path: Path) -> None:
        self.log.append(("rmdir", path.name))
        if path in self._entries:
            for child in path.iterdir():
                child.unlink()
            del self._entries[path]
        self._os.rmdir(path)

    def write(self, path: Path, data: bytes) -> None:
        self.log.append(("write", path.name))
        entry = self._entries.get(path.parent)
        if entry is None or path.name in _READ_ONLY:
            raise _oserror(errno.EACCES if entry is not None else errno.ENOENT, path)
        if path.name == "privlevel":
            text = data.decode("ascii", "replace").strip()
            if not text.isdigit() or not self.privlevel_floor <= int(text) <= 3:
                raise _oserror(errno.EINVAL, path)
        if path.exists():
            os.truncate(path, 0)  # configfs takes each open-write-close as the whole value
        self._os.write(path, data)
        if path.name == "privlevel":
            entry.privlevel = int(data.decode().strip())
        elif path.name == "inblob":
            entry.inblob = bytes(data)
        self._bump(path.parent, entry)

    def read(self, path: Path) -> bytes:
        self.log.append(("read", path.name))
        entry = self._entries.get(path.parent)
        if entry is not None and path.name in _WRITE_ONLY:
            raise _oserror(errno.EACCES, path)
        if entry is not None and path.name in ("outblob", "auxblob") and path.exists():
            self._generate(path.parent, entry)
        return self._os.read(path)

    # -- the kernel's side -----------------------------------------------------------

    def _bump(self, directory: Path, entry: _Entry) -> None:
        entry.generation += 1
        gen = directory / "generation"
        if gen.exists():
            gen.write_bytes(f"{entry.generation}\n".encode())

    def _generate(self, directory: Path, entry: _Entry) -> None:
        if entry.read_generation == entry.generation:
            return
        if len(entry.inblob) != snp.REPORT_DATA_SIZE:  # sev_report_new: -EINVAL
            raise _oserror(errno.EINVAL, directory / "outblob")
        report, certs = self.sign(entry.inblob, entry.privlevel)
        aux = encode_cert_table(certs) if certs else b""
        if self.outblob_hook is not None:
            report = self.outblob_hook(report)
        if self.auxblob_hook is not None:
            aux = self.auxblob_hook(aux)
        (directory / "outblob").write_bytes(report)
        if (directory / "auxblob").exists():
            (directory / "auxblob").write_bytes(aux)
        entry.read_generation = entry.generation
        if entry.conflict:
            entry.conflict = False
            self._bump(directory, entry)  # someone else wrote an attribute meanwhile


@dataclass
class FakeSevGuest:
    """A fake ``ioctl`` for /dev/sev-guest (pass ``fake.ioctl`` as ``ioctl``).

    Knobs: ``certs`` (False: the host supplies no certificate table),
    ``status`` (a MSG_REPORT_RSP status, e.g. 0x16), ``fail_errno`` (the
    ioctl fails with this errno, firmware error ``fw_error``),
    ``needed_certs_len`` (pretend the host's certificates need this many
    bytes: the driver's INVALID_LEN answer).
    """

    sign: Signer
    certs: bool = True
    status: int = 0
    fail_errno: int | None = None
    fw_error: int = 0
    needed_certs_len: int | None = None
    #: (request number, VMPL, certs_len) of each call.
    calls: list[tuple[int, int, int]] = field(default_factory=list)

    def ioctl(self, fd: int, request: int, buf: bytearray) -> int:
        del fd
        version, req_addr, resp_addr, _ = snp.GUEST_REQUEST.unpack(bytes(buf))
        if version == 0 or not req_addr or not resp_addr:
            raise _oserror(errno.EINVAL, "/dev/sev-guest")
        if request == snp.SNP_GET_EXT_REPORT:
            req = ctypes.string_at(req_addr, snp.EXT_REPORT_REQ.size)
            user_data, vmpl, rsvd, certs_addr, certs_len = snp.EXT_REPORT_REQ.unpack(req)
        elif request == snp.SNP_GET_REPORT:
            req = ctypes.string_at(req_addr, snp.REPORT_REQ.size)
            user_data, vmpl, rsvd = snp.REPORT_REQ.unpack(req)
            certs_addr = certs_len = 0
        else:
            raise _oserror(errno.ENOTTY, "/dev/sev-guest")
        self.calls.append((request, vmpl, certs_len))
        if any(rsvd) or vmpl > 3:
            raise _oserror(errno.EINVAL, "/dev/sev-guest")
        if certs_len and (certs_len % 4096 or certs_len > snp.CERTS_BUFFER_SIZE):
            raise _oserror(errno.EINVAL, "/dev/sev-guest")
        if self.fail_errno is not None:
            buf[:] = snp.GUEST_REQUEST.pack(version, req_addr, resp_addr, self.fw_error)
            raise _oserror(self.fail_errno, "/dev/sev-guest")
        report, certs = self.sign(user_data, vmpl)
        table = encode_cert_table(certs) if self.certs and certs else b""
        needed = self.needed_certs_len if self.needed_certs_len is not None else len(table)
        if request == snp.SNP_GET_EXT_REPORT and certs_len and needed > certs_len:
            pages = -(-needed // 4096) * 4096
            ctypes.memmove(req_addr + _CERTS_LEN_OFFSET, pages.to_bytes(4, "little"), 4)
            buf[:] = snp.GUEST_REQUEST.pack(
                version, req_addr, resp_addr, snp.SNP_GUEST_VMM_ERR_INVALID_LEN << 32
            )
            raise _oserror(errno.EIO, "/dev/sev-guest")
        if certs_len:
            blob = table.ljust(certs_len, b"\0")
            ctypes.memmove(certs_addr, blob, certs_len)
        size = 0 if self.status else REPORT_SIZE
        body = snp.REPORT_RESP_HEADER.pack(self.status, size, bytes(24)) + (b"" if self.status else report)
        ctypes.memmove(resp_addr, body.ljust(snp.REPORT_RESP_SIZE, b"\0"), snp.REPORT_RESP_SIZE)
        return 0
