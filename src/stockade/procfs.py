"""The one reader of Linux ``/proc`` process files (bottom layer).

Both the untrusted host (registry, fork server, keep manager) and the Keep
(zygote, session) read ``/proc/<pid>/stat`` and ``/proc/<pid>/status``; this
module is the only place that parses them, with one error handling: a
process that is gone, unreadable or a file that does not parse gives
``None`` (the callers decide what "unknown" means), never an exception.

It imports nothing of stockade (import-linter contract in pyproject.toml),
so that every layer may import it; the Keep measures it like its other
modules (stockade.measure.keep_modules).

Formats, proc(5) (https://man7.org/linux/man-pages/man5/proc_pid_stat.5.html,
https://man7.org/linux/man-pages/man5/proc_pid_status.5.html):

* ``stat`` is one line ``pid (comm) state ppid ...``; ``comm`` may contain
  spaces and parentheses, so the fields are split after the *last* ``)``.
  Field 3 is the state (``Z`` zombie, ``X``/``x`` dead), field 22 the start
  time in clock ticks after boot.
* ``status`` is ``Key:<whitespace>value [unit]`` lines (``Threads``,
  ``VmHWM`` in kB, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["PROC", "is_alive", "read_stat", "start_time", "status_number", "thread_state"]

PROC: Final = Path("/proc")

#: Index of field 22 (starttime) in the fields after comm (field 3 is index 0).
_STARTTIME: Final = 22 - 3
#: States of a process that has exited (proc(5): zombie, dead).
_ENDED_STATES: Final = frozenset({"Z", "X", "x"})
#: Larger than any stat or status file the kernel writes (a few KiB).
_MAX_READ: Final = 1 << 16


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(_MAX_READ)
    except OSError:  # no such process, permission, not a directory, ...
        return None


def read_stat(pid: int | str, *, proc: Path = PROC) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (after the parenthesised comm), or
    None if there is no such process or the file does not parse."""
    if isinstance(pid, int) and pid <= 0:
        return None
    raw = _read(proc / str(pid) / "stat")
    if raw is None:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    head, sep, rest = raw.rpartition(b")")
    if not sep or b"(" not in head:
        return None
    return rest.decode("ascii", "replace").split()


def start_time(pid: int | str, *, proc: Path = PROC) -> int | None:
    """Start time of process ``pid`` in clock ticks after boot (field 22 of
    ``/proc/<pid>/stat``), or None if there is no such process."""
    fields = read_stat(pid, proc=proc)
    if fields is None or len(fields) <= _STARTTIME:
        return None
    try:
        return int(fields[_STARTTIME])
    except ValueError:
        return None


def thread_state(tid: int, *, proc: Path = PROC) -> str | None:
    """State letter (field 3 of ``/proc/self/task/<tid>/stat``: ``R``
    running or runnable, ``S`` sleeping, ``D`` waiting in uninterruptible
    I/O, ...) of thread ``tid`` of this process, or None if it is gone."""
    fields = read_stat(f"self/task/{tid}", proc=proc)
    return fields[0] if fields else None


def is_alive(pid: int, recorded_start_time: int | None, *, proc: Path = PROC) -> bool:
    """True if ``pid`` is a live (not zombie) process started at
    ``recorded_start_time``.

    An unknown recorded start time never matches: without it a reused pid
    cannot be told from the original process, and adopting a stranger is
    worse than reporting a process lost.
    """
    if recorded_start_time is None or pid <= 0:
        return False
    fields = read_stat(pid, proc=proc)
    if fields is None or len(fields) <= _STARTTIME:
        return False
    if fields[0] in _ENDED_STATES:
        return False
    try:
        return int(fields[_STARTTIME]) == recorded_start_time
    except ValueError:
        return False


def status_number(key: str, pid: int | str = "self", *, proc: Path = PROC) -> int | None:
    """The first number of the ``key:`` line of ``/proc/<pid>/status``
    (``Threads``, ``VmHWM`` in KiB, ...), or None if absent or unreadable."""
    raw = _read(proc / str(pid) / "status")
    if raw is None:
        return None
    prefix = key + ":"
    for line in raw.decode("ascii", "replace").splitlines():
        if line.startswith(prefix):
            value = line[len(prefix) :].split()
            if value and value[0].isdigit():
                return int(value[0])
            return None
    return None


def cpu_seconds(pid: int | str, *, proc: Path = PROC) -> float:
    """User plus system CPU time of ``pid`` in seconds (/proc/PID/stat
    utime and stime, proc(5)); 0.0 when it is gone."""
    fields = read_stat(pid, proc=proc)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int | str, *, proc: Path = PROC) -> dict[str, float] | None:
    """RSS, PSS and USS of ``pid`` in MiB (/proc/PID/smaps_rollup, proc(5)),
    None when it is gone or unreadable."""
    data = _read(proc / str(pid) / "smaps_rollup")
    if data is None:
        return None
    kib: dict[str, int] = {}
    for line in data.decode("ascii", "replace").splitlines()[1:]:
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            kib[key.strip()] = int(parts[0])
    if "Rss" not in kib:
        return None
    return {
        "rss": kib["Rss"] / 1024,
        "pss": kib.get("Pss", 0) / 1024,
        "uss": (kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)) / 1024,
    }
