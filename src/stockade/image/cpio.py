"""A deterministic writer of "newc" cpio archives (the Linux initramfs format).

Linux reads an initramfs as cpio in the "newc" (SVR4, no CRC) format:
a 110-byte ASCII header per entry (magic ``070701`` and 13 eight-digit hex
fields), the NUL-terminated name, padding to 4 bytes, the data, padding to
4 bytes, and a last entry named ``TRAILER!!!`` (Documentation/driver-api/
early-userspace/buffer-format.rst in the kernel tree). Writing it here
rather than calling cpio(1) makes every byte ours to fix: entries in the
caller's (sorted) order, inode numbers counted from 1, owner root, one
modification time for all, no device numbers, so the same tree gives the
same archive on any machine (the ``--reproducible`` idea of GNU cpio).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One member: a regular file (``data``), a directory or a symlink
    (``target``). ``name`` is relative, without a leading slash."""

    name: str
    mode: int  # full st_mode: type bits and permissions
    data: bytes = b""

    @classmethod
    def file(cls, name: str, data: bytes, executable: bool = False) -> Entry:
        return cls(name, stat.S_IFREG | (0o755 if executable else 0o644), data)

    @classmethod
    def directory(cls, name: str) -> Entry:
        return cls(name, stat.S_IFDIR | 0o755)

    @classmethod
    def symlink(cls, name: str, target: str) -> Entry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, mode: int, nlink: int, mtime: int, size: int, namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, namesize, 0)
    return MAGIC + b"".join(b"%08x" % f for f in fields)


def write(out: BinaryIO, entries: Iterable[Entry], mtime: int = 0) -> int:
    """Write ``entries`` in the given order, then the trailer; return the
    number of bytes written. Names must be unique and their parent
    directories must come before them (the kernel creates nothing implied)."""
    written = 0
    seen: set[str] = set()
    for ino, entry in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        if entry.name in seen:
            raise ValueError(f"cpio: duplicate entry {entry.name!r}")
        if entry.name.startswith("/") or not entry.name:
            raise ValueError(f"cpio: entry names are relative and not empty: {entry.name!r}")
        seen.add(entry.name)
        is_trailer = entry.name == TRAILER
        name = entry.name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        header = _header(
            0 if is_trailer else ino,
            entry.mode,
            1 if is_trailer else nlink,
            0 if is_trailer else mtime,
            len(entry.data),
            len(name),
        )
        chunk = header + name + _pad(len(header) + len(name)) + entry.data + _pad(len(entry.data))
        out.write(chunk)
        written += len(chunk)
    return written


def read_names(data: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of each member of a newc archive, trailer excluded
    (for tests and ``stockade image`` listings)."""
    out: list[tuple[str, int, bytes]] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != MAGIC:
            raise ValueError(f"cpio: bad magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        start = pos + 110
        name = data[start : start + namesize - 1].decode()
        pos = start + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size
        pos += -pos % 4
        if name == TRAILER:
            return out
        out.append((name, mode, body))
