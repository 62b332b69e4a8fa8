"""Reading and writing the command line's own files, with one-line usage
errors (exit 2) instead of tracebacks; shared by the commands that take
and write files (package, trust, log)."""

from __future__ import annotations

import os
from pathlib import Path

from stockade.errors import UsageError


def read_file(path: Path) -> bytes:
    """The bytes of ``path``; UsageError naming it when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same
    directory and a rename, so that a failed write leaves the old file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
