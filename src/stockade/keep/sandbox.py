"""The Keep's private disk: a size-limited tmpfs no other process sees.

The workload's files, its ``/secrets`` and every file it writes live here.
First thing in the Keep process, while it is still single-threaded
(``unshare(CLONE_NEWUSER)`` refuses a threaded caller, and the mount
namespace of a threaded caller would be its calling thread's alone), the
Keep enters a private mount namespace (with a user namespace mapping its own
uid to root when it is not root), makes every mount private so that nothing
propagates back to the host's namespace, and mounts a tmpfs on a directory
of its scratch area. When the client's limits arrive, the tmpfs is
remounted with ``size=`` the disk limit: the kernel refuses writes past it
(ENOSPC). The tmpfs vanishes with the namespace when the Keep ends, however
it ends (``os._exit``, SIGKILL): nothing the workload wrote, no secret,
outlives it on host storage. The directory the host sees stays empty.

Where namespaces are unavailable (a kernel or container that forbids
unprivileged user namespaces, seccomp), the Keep falls back to a plain
directory in its scratch area, bounded more weakly: RLIMIT_FSIZE caps each
file at the limit, a monitor thread sums the directory every
``MONITOR_INTERVAL_S`` and stops the workload past the limit (so the
overshoot is what it writes in one interval), and the directory is removed
on every exit path the Keep controls (not on SIGKILL: the loader removes the
scratch area, and sweeps stale ones at start). The Keep logs which mode it
runs in on its host-side log; ``stockade host check`` shows whether this
host gives the private tmpfs.

Sources: unshare(2), mount(2) (MS_REC|MS_PRIVATE, MS_REMOUNT), tmpfs(5)
(``size``, ``nr_inodes``), user_namespaces(7) (uid_map, setgroups "deny").
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
_TMPFS_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC

#: Name of the private mount point inside the Keep's scratch directory.
PRIVATE_NAME = "private"
#: How often the fallback monitor sums the workload's files.
MONITOR_INTERVAL_S = 0.05
#: Size of the tmpfs before the client's limit is known (nothing is written
#: to it before then).
INITIAL_SIZE = 1 << 20


#: Largest tmpfs size the Keep asks for: tmpfs rounds ``size=`` up to whole
#: pages, and a value near 2**64 wraps to 0, which tmpfs reads as no limit.
MAX_SIZE = 1 << 62


def inodes_for(disk_bytes: int) -> int:
    """Inode limit of the tmpfs: each inode costs kernel memory, so empty
    files are bounded too (one per 8 KiB of the limit, at least 1024)."""
    return max(1024, disk_bytes // 8192)


class SandboxUnavailable(Exception):
    """The private mount namespace could not be set up (the reason)."""


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SandboxUnavailable(f"{what}: {os.strerror(err)}")


def _mount(
    libc: Any, source: bytes | None, target: bytes, fstype: bytes | None, flags: int, data: bytes | None
) -> None:
    _check(libc.mount(source, target, fstype, ctypes.c_ulong(flags), data), f"mount {target.decode()}")


def _tmpfs_options(size: int) -> bytes:
    size = min(size, MAX_SIZE)
    return f"size={size},nr_inodes={inodes_for(size)},mode=0700".encode()


def _enter_namespace(libc: Any, mountpoint: Path) -> None:
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    else:
        _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
        try:
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
            Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
        except OSError as exc:
            raise SandboxUnavailable(f"user namespace id maps: {exc.strerror}") from None
    _mount(libc, None, b"/", None, MS_REC | MS_PRIVATE, None)
    _mount(libc, b"stockade-keep", bytes(mountpoint), b"tmpfs", _TMPFS_FLAGS, _tmpfs_options(INITIAL_SIZE))


@dataclass
class Sandbox:
    """Where the workload's files go, and how their size is bounded."""

    root: Path
    private: bool  # True: a tmpfs in the Keep's own mount namespace
    reason: str = ""  # why not private
    limit: int | None = None
    #: Inside a VM Keep: the guest RAM the workload's memory and disk (a
    #: tmpfs, also RAM) may use together (stockade.keep.vmguest.ram_budget);
    #: None in a process Keep.
    ram_budget: int | None = None
    _libc: Any = field(default=None, repr=False)
    _owned_dir: bool = field(default=False, repr=False)

    @property
    def mode(self) -> str:
        if self.private:
            return "private tmpfs (kernel-enforced size)"
        return f"FALLBACK directory (RLIMIT_FSIZE and a monitor, weaker): {self.reason}"

    def set_limit(self, disk_bytes: int) -> None:
        """Apply the client's disk limit (before any workload file exists)."""
        self.limit = disk_bytes
        if self.private:
            _mount(
                self._libc,
                None,
                bytes(self.root),
                None,
                MS_REMOUNT | _TMPFS_FLAGS,
                _tmpfs_options(disk_bytes),
            )
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        cap = disk_bytes if hard == resource.RLIM_INFINITY else min(disk_bytes, hard)
        if soft == resource.RLIM_INFINITY or soft > cap:
            resource.setrlimit(resource.RLIMIT_FSIZE, (cap, hard))

    def usage(self) -> tuple[int, bool]:
        """(bytes in use, True when no inode is left)."""
        if self.private:
            st = os.statvfs(self.root)
            return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files > 0 and st.f_ffree == 0
        return tree_size(self.root), False

    def monitor(self, interval: float, on_over: Callable[[], None], stop: threading.Event) -> None:
        """Fallback mode: call ``on_over`` once the files exceed the limit."""
        if self.private or self.limit is None:
            return
        limit = self.limit

        def watch() -> None:
            while not stop.wait(interval):
                if tree_size(self.root) > limit:
                    on_over()
                    return

        threading.Thread(target=watch, daemon=True, name="disk-monitor").start()

    def cleanup(self) -> None:
        """Remove what the workload left (the fallback directory lives on
        host storage; a tmpfs dies with the namespace anyway)."""
        for child in list(self.root.iterdir()) if self.root.is_dir() else []:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()
        if self._owned_dir:
            with contextlib.suppress(OSError):
                self.root.rmdir()


def tree_size(root: Path) -> int:
    """Bytes allocated by the files below ``root`` (best effort)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*filenames, *dirnames):
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                total += max(st.st_size, st.st_blocks * 512)
    return total


def enter(scratch: Path | None, namespaces: bool = True) -> Sandbox:
    """Set up the Keep's private disk; call before any thread starts.
    ``namespaces=False`` takes the fallback (what a host without user
    namespaces gives)."""
    owned = scratch is None
    if scratch is None:
        mountpoint = Path(tempfile.mkdtemp(prefix="stockade-private-"))
    else:
        mountpoint = scratch / PRIVATE_NAME
        mountpoint.mkdir(mode=0o700, exist_ok=True)
    if not namespaces:
        return Sandbox(mountpoint, False, "namespaces disabled", _owned_dir=owned)
    libc = _libc()
    try:
        _enter_namespace(libc, mountpoint)
    except SandboxUnavailable as exc:
        return Sandbox(mountpoint, False, str(exc), _libc=libc, _owned_dir=owned)
    return Sandbox(mountpoint, True, _libc=libc, _owned_dir=owned)
