"""The one on-disk collateral cache of every platform (AMD KDS, Intel PCS).

An entry is found by a key: a URL (stored under the SHA-256 of the URL, as
the KDS fetcher keys its responses) or a relative file name (stored under
that name, for layouts a person reads, as the PCS cache's
``tdx/<FMSPC>/tcb_info.json``). Writes are atomic (temporary file in the
same directory, fsync, rename), so readers see a whole old or a whole new
entry, and the directory is private (0700). Expiry comes from the collateral
itself: :meth:`CollateralCache.fresh` serves an entry only while the
``next_update`` read from its own bytes (a CRL's nextUpdate, TCB info's
nextUpdate) is after ``now``; an entry that does not parse is a miss.
Nothing here verifies a signature: verification does, at verification time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from stockade.errors import MalformedEvidence


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` by rename (never rewritten in place)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class CollateralCache:
    """A directory of collateral entries (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        if "://" in key:
            return self.directory / (hashlib.sha256(key.encode()).hexdigest() + ".bin")
        relative = Path(key)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"cache key {key!r} is not a relative name inside the cache")
        return self.directory / relative

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path(key), data)

    def discard(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def fresh(self, key: str, next_update: Callable[[bytes], datetime], now: datetime) -> bytes | None:
        """The cached entry while its own next update is after ``now``; None
        when absent, expired or unparsable."""
        data = self.get(key)
        if data is None:
            return None
        try:
            return data if next_update(data) > now else None
        except MalformedEvidence:
            return None


__all__ = ["CollateralCache", "write_atomic"]
