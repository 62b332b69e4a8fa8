"""Per-Keep cgroup v2 limits (memory.max, pids.max), when the host allows it.

The keep manager needs a *delegated* cgroup v2 subtree: its own cgroup
(``/proc/self/cgroup``, line ``0::/PATH``) on the unified hierarchy, writable
by the manager's user, with the ``memory`` and ``pids`` controllers available
(a systemd unit with ``Delegate=memory pids``; see
contrib/stockade-host.service). cgroup v2 forbids processes in a cgroup that
hands controllers to its children, so :meth:`Cgroups.setup` moves the manager
into a ``manager`` leaf first, then enables the controllers and creates a
``keeps`` subtree; each Keep gets ``keeps/keep-<id>`` with its limits.

Anything else (cgroup v1 or hybrid hierarchies, no delegation, a read-only
/sys/fs/cgroup in a container) is detected by :func:`detect` and reported
with a reason; the manager then runs Keeps with rlimits only and logs why.
Host code: stdlib only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids")
DEFAULT_ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(Exception):
    """cgroup v2 limits cannot be used here; the message says why."""


@dataclass(frozen=True)
class Cgroups:
    """A prepared delegated subtree: ``base`` holds ``manager`` and ``keeps``."""

    base: Path

    @property
    def keeps(self) -> Path:
        return self.base / "keeps"

    def create(self, keep_id: str, memory_max: int | None, pids_max: int | None) -> Path:
        """Make the cgroup of one Keep and set its limits; returns its path
        (the Keep process joins it by writing to its ``cgroup.procs``)."""
        if not keep_id.isalnum() or not keep_id.isascii():
            raise ValueError(f"bad Keep id {keep_id!r}")
        path = self.keeps / f"keep-{keep_id}"
        path.mkdir(exist_ok=True)
        try:
            if memory_max is not None:
                (path / "memory.max").write_text(f"{memory_max}\n")
                with contextlib.suppress(OSError):  # absent without swap accounting
                    (path / "memory.swap.max").write_text("0\n")
            if pids_max is not None:
                (path / "pids.max").write_text(f"{pids_max}\n")
        except OSError:
            self.remove(path)
            raise
        return path

    @staticmethod
    def remove(path: Path) -> None:
        """Remove a Keep's cgroup once its processes are gone (best effort)."""
        with contextlib.suppress(OSError):
            path.rmdir()


def own_cgroup(proc_self_cgroup: str) -> str | None:
    """The unified-hierarchy path from /proc/self/cgroup text, or None."""
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "" and path.startswith("/"):
            return path
    return None


def detect(
    root: Path = DEFAULT_ROOT,
    proc_self_cgroup: str | None = None,
    access: Callable[[Path, int], bool] = os.access,
) -> Path:
    """The manager's own cgroup directory if it can be delegated to Keeps;
    raises :class:`CgroupUnavailable` with the reason otherwise."""
    if not (root / "cgroup.controllers").is_file():
        raise CgroupUnavailable(f"no cgroup v2 unified hierarchy at {root} (cgroup v1 or hybrid)")
    if proc_self_cgroup is None:
        try:
            proc_self_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError as exc:
            raise CgroupUnavailable(f"cannot read /proc/self/cgroup: {exc.strerror}") from None
    rel = own_cgroup(proc_self_cgroup)
    if rel is None:
        raise CgroupUnavailable("this process is not on the cgroup v2 unified hierarchy")
    base = root / rel.lstrip("/")
    try:
        available = (base / "cgroup.controllers").read_text().split()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read {base}/cgroup.controllers: {exc.strerror}") from None
    missing = [c for c in CONTROLLERS if c not in available]
    if missing:
        raise CgroupUnavailable(f"controller(s) {', '.join(missing)} not delegated to {base}")
    if not access(base, os.W_OK) or not access(base / "cgroup.procs", os.W_OK):
        raise CgroupUnavailable(f"{base} is not writable by this user (no delegation)")
    return base


def setup(base: Path, pid: int | None = None) -> Cgroups:
    """Move process ``pid`` (default: this one) into ``base/manager`` and
    enable the controllers for ``base/keeps``. Call before starting any
    other process of the manager (they stay where they are)."""
    try:
        manager = base / "manager"
        manager.mkdir(exist_ok=True)
        (manager / "cgroup.procs").write_text(f"{pid or os.getpid()}\n")
        enable = " ".join(f"+{c}" for c in CONTROLLERS) + "\n"
        (base / "cgroup.subtree_control").write_text(enable)
        keeps = base / "keeps"
        keeps.mkdir(exist_ok=True)
        (keeps / "cgroup.subtree_control").write_text(enable)
    except OSError as exc:
        raise CgroupUnavailable(
            f"cannot prepare the delegated cgroup {base}: {exc.strerror or type(exc).__name__}"
        ) from None
    return Cgroups(base)
