"""The one configfs-tsm client (Linux >= 6.7,
Documentation/ABI/testing/configfs-tsm), used by the SNP and TDX attesters,
and the one guest-interface error class of every attester.

``mkdir <root>/<name>`` creates a private report entry; ``provider`` names
the TSM (``sev_guest``, ``tdx_guest``); optional attributes such as
``privlevel`` are written first; writing ``inblob`` sets the report data;
reading ``outblob`` returns the report or quote, ``auxblob`` the provider's
auxiliary data (SNP: the GHCB certificate table; optional: "visibility
depends on TSM"). ``generation`` counts writes to the entry: it must have
grown by exactly our writes, else another writer touched the entry between
our write and our read and the result may answer someone else's inblob (the
ABI file's own advice). A conflict is retried with a fresh entry a few
times, then refused. ``rmdir`` releases the entry.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Protocol

from stockade.errors import StockadeError

#: configfs-tsm report directory (Documentation/ABI/testing/configfs-tsm).
TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")


class GuestInterfaceError(StockadeError):
    """The TEE's guest attestation interface (configfs-tsm, /dev/sev-guest,
    Gramine's /dev/attestation) is absent here, or it failed.

    Shares the generic exit code and problem type of StockadeError: it is
    met by the Keep (on the host's logs), not by a deploying client.
    """

    title = "TEE guest interface error"


class TsmEntryUnavailable(GuestInterfaceError):
    """No configfs-tsm report entry could be created (no permission, no TSM
    provider registered); an attester may fall back to another interface."""


class TsmFiles(Protocol):
    """The file operations the configfs-tsm client needs; an OSError is
    turned into GuestInterfaceError here (an implementation may raise
    GuestInterfaceError itself)."""

    def mkdir(self, path: Path) -> None: ...
    def rmdir(self, path: Path) -> None: ...
    def read(self, path: Path) -> bytes: ...
    def write(self, path: Path, data: bytes) -> None: ...


class OsConfigfs:
    """Plain system calls. Attributes are opened without O_CREAT, so a
    missing attribute fails instead of being created; a configfs binary
    attribute takes the bytes written before close as one value."""

    def is_dir(self, path: Path) -> bool:
        return path.is_dir()

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


class _GenerationChanged(Exception):
    def __init__(self, expected: int, found: int) -> None:
        super().__init__(f"generation {found}, expected {expected}")
        self.expected, self.found = expected, found


def _read_attr(fs: TsmFiles, path: Path) -> bytes:
    try:
        return fs.read(path)
    except FileNotFoundError:
        raise GuestInterfaceError(
            f"{path} does not exist: not a configfs-tsm report entry (Linux >= 6.7)"
        ) from None
    except OSError as exc:
        raise GuestInterfaceError(f"reading {path} failed: {exc.strerror} (errno {exc.errno})") from None


def _read_int(fs: TsmFiles, path: Path) -> int:
    text = _read_attr(fs, path).decode("ascii", "replace").strip()
    if not text.isdigit():
        raise GuestInterfaceError(f"{path} holds {text[:20]!r}, not a number")
    return int(text)


def _write_attr(fs: TsmFiles, path: Path, data: bytes) -> None:
    try:
        fs.write(path, data)
    except FileNotFoundError:
        raise GuestInterfaceError(f"{path} does not exist: this TSM does not offer it") from None
    except OSError as exc:
        raise GuestInterfaceError(f"writing {path} failed: {exc.strerror} (errno {exc.errno})") from None


def _once(
    fs: TsmFiles,
    root: Path,
    provider: str,
    inblob: bytes,
    attributes: tuple[tuple[str, bytes], ...],
    auxblob: bool,
    not_this: str,
) -> tuple[bytes, bytes]:
    entry = root / f"stockade-{os.getpid()}-{secrets.token_hex(8)}"
    try:
        fs.mkdir(entry)
    except OSError as exc:
        raise TsmEntryUnavailable(f"cannot create {entry}: {exc.strerror} (errno {exc.errno})") from None
    try:
        found = _read_attr(fs, entry / "provider").decode("ascii", "replace").strip()
        if found != provider:
            raise GuestInterfaceError(f"configfs-tsm provider is {found!r}, not {provider!r}: {not_this}")
        before = _read_int(fs, entry / "generation")
        writes = 0
        for name, value in attributes:
            _write_attr(fs, entry / name, value)
            writes += 1
        _write_attr(fs, entry / "inblob", inblob)
        writes += 1
        outblob = _read_attr(fs, entry / "outblob")
        aux = b""
        if auxblob:
            try:
                aux = fs.read(entry / "auxblob")
            except FileNotFoundError:
                aux = b""  # optional (ABI: "visibility depends on TSM")
            except OSError as exc:
                raise GuestInterfaceError(
                    f"reading {entry / 'auxblob'} failed: {exc.strerror} (errno {exc.errno})"
                ) from None
        after = _read_int(fs, entry / "generation")
        if after != before + writes:
            raise _GenerationChanged(before + writes, after)
        return outblob, aux
    finally:
        # A leftover entry holds only the (public) report data and report.
        with contextlib.suppress(OSError, GuestInterfaceError):
            fs.rmdir(entry)


def tsm_report(
    fs: TsmFiles,
    root: Path,
    provider: str,
    inblob: bytes,
    *,
    attributes: tuple[tuple[str, bytes], ...] = (),
    auxblob: bool = False,
    attempts: int = 3,
    not_this: str = "",
) -> tuple[bytes, bytes]:
    """(outblob, auxblob) from a private configfs-tsm entry under ``root``
    whose provider is ``provider`` and whose generation grew by exactly our
    writes (``attributes`` first, then ``inblob``). ``not_this`` ends the
    message when the provider is another one (e.g. "this is not an SEV-SNP
    guest"). Raises TsmEntryUnavailable when no entry can be created."""
    last: _GenerationChanged | None = None
    for _ in range(attempts):
        try:
            return _once(fs, root, provider, inblob, attributes, auxblob, not_this)
        except _GenerationChanged as exc:
            last = exc
    assert last is not None
    raise GuestInterfaceError(
        f"configfs-tsm entries under {root} kept changing under concurrent writers: written by "
        f"someone else during each of {attempts} attempts (last: generation {last.found}, expected "
        f"{last.expected}); refusing the report"
    )


__all__ = [
    "TSM_REPORT_ROOT",
    "GuestInterfaceError",
    "OsConfigfs",
    "TsmEntryUnavailable",
    "TsmFiles",
    "tsm_report",
]
