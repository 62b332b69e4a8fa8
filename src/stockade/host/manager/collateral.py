"""The collateral a keep manager serves its clients (host pre-provisioning):
the files of ``<state dir>/collateral``, filled on the host with ``stockade
collateral fetch --state-dir ...`` (or ``--cache``), served read-only by
name, as bytes, never parsed here (the host does not import evidence code;
docs/host-api.md "Collateral").

The host is untrusted: a client verifies what it gets here like collateral
from anywhere else, at use. What this module guarantees is only that it
serves regular files inside the directory: names are
:func:`stockade.wire.collateral.valid_name`, symbolic links are neither
followed nor listed, a resolved path must stay inside the directory, and
files larger than MAX_FILE_BYTES are left out.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from stockade.wire.collateral import MAX_FILE_BYTES, MAX_FILES, valid_name


@dataclass(frozen=True)
class ServedFile:
    name: str
    size: int
    sha256: bytes


class NotServed(Exception):
    """No such file, or not one this host serves."""


def _read(root: Path, name: str) -> bytes:
    if not valid_name(name):
        raise NotServed(f"{name!r} is not a collateral file name")
    real_root = os.path.realpath(root)
    path = os.path.join(real_root, *name.split("/"))
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise NotServed(f"{name} is not in this host's collateral")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
            raise NotServed(f"this host has no collateral file {name}") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            raise NotServed(f"this host does not serve {name}")
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise NotServed(f"this host does not serve {name}")
    return data


def read_file(root: Path, name: str) -> bytes:
    """The bytes of collateral file ``name`` under ``root``; NotServed
    when there is no such (servable) file."""
    return _read(root, name)


def list_files(root: Path) -> list[ServedFile]:
    """The servable files under ``root`` (at most MAX_FILES), by name."""
    found: list[ServedFile] = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):  # never descends into symlinked directories
        dirnames.sort()
        for fn in sorted(filenames):
            name = Path(dirpath, fn).relative_to(root).as_posix()
            if not valid_name(name):
                continue
            try:
                data = _read(root, name)
            except (NotServed, OSError):
                continue
            found.append(ServedFile(name, len(data), hashlib.sha256(data).digest()))
            if len(found) >= MAX_FILES:
                return found
    return found


__all__ = ["NotServed", "ServedFile", "list_files", "read_file"]
