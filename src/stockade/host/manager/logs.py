"""The keep manager's reading of Keep logs (host-side stderr files the
loader writes): ranges for ``GET /v1/keeps/{id}/logs``, and the count of
attestation reports a sim PSP process says it signed (for /metrics)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

#: A log response holds at most this many bytes (the newest, unless an offset
#: is asked for), and ``tail`` at most this many lines.
MAX_LOG_BYTES: Final = 1 << 20
MAX_TAIL_LINES: Final = 100_000

#: The last line a sim PSP process writes to the Keep's log
#: (stockade.evidence.sim.psp.SERVED_LINE; host code may not import it).
_PSP_SERVED = re.compile(rb"^sim PSP: served (\d{1,9}) report\(s\)$", re.MULTILINE)


def read_log(path: Path, tail: int | None, offset: int | None) -> tuple[bytes, int, int]:
    """(bytes, offset of the first byte, file size) of a Keep log: from
    ``offset`` on, else the last ``tail`` lines, else all, each capped at
    MAX_LOG_BYTES (from the end: whole lines only). A missing file is empty."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return b"", 0, 0
    with f:
        size = os.fstat(f.fileno()).st_size
        if offset is not None:
            start = min(offset, size)
            f.seek(start)
            return f.read(min(MAX_LOG_BYTES, size - start)), start, size
        start = max(0, size - MAX_LOG_BYTES)
        f.seek(start)
        data = f.read(size - start)
    if start > 0:  # drop the partial first line
        cut = data.find(b"\n") + 1
        data, start = data[cut:], start + cut
    if tail is not None:
        cut = _tail_start(data, tail)
        data, start = data[cut:], start + cut
    return data, start, size


def _tail_start(data: bytes, lines: int) -> int:
    """Index in ``data`` where its last ``lines`` lines start (a last line
    without a newline counts)."""
    if lines == 0:
        return len(data)
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        newline = data.rfind(b"\n", 0, end)
        if newline < 0:
            return 0
        end = newline
    return end + 1


def reports_served(log_path: Path) -> int:
    """Reports the Keep's sim PSP process says it signed (its last such line)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read()
    except OSError:
        return 0
    found = _PSP_SERVED.findall(tail)
    return int(found[-1]) if found else 0
