"""Canaries for the adversarial suite: unique random strings that tests use
as secrets and stdin, and the sweep that searches the host for them
(conftest.py runs it after every test of tests/adversarial/; the module
docstring there says where and how)."""

from __future__ import annotations

import base64
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_FILES = 20_000
PROC_INTERVAL_S = 0.5
#: ctime resolution and clock skew between the test and the file system.
SLACK_S = 2.0


def encodings(canary: bytes) -> list[bytes]:
    """The forms a canary is searched in: raw, hex (both cases), and base64
    / base64url at each of the three alignments it can have inside a longer
    base64 text (the stable middle part)."""
    forms = [canary, canary.hex().encode(), canary.hex().upper().encode()]
    for pad in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\0" * pad + canary)
            forms.append(text[4 if pad else 0 : -4])
    return forms


@dataclass
class Finding:
    where: str
    label: str
    form: str

    def __str__(self) -> str:
        return f"canary {self.label!r} ({self.form}) found in {self.where}"


@dataclass
class Canaries:
    """Canaries of one test, and where to look for them."""

    started: float = field(default_factory=time.time)
    values: dict[bytes, str] = field(default_factory=dict)
    dirs: list[Path] = field(default_factory=list)
    allowed_pids: set[int] = field(default_factory=set)
    client_files: set[str] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)
    _forms: list[tuple[bytes, str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None

    def new(self, label: str = "secret") -> bytes:
        """A fresh canary (ASCII, 48 characters) to use as a secret or stdin."""
        value = f"canary-{label}-{secrets.token_hex(16)}".encode()
        with self._lock:
            self.values[value] = label
            for i, form in enumerate(encodings(value)):
                kind = "raw" if i == 0 else "hex" if i < 3 else "base64"
                self._forms.append((form, label, kind))
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_proc, daemon=True, name="canary-proc")
            self._watcher.start()
        return value

    def sweep_dir(self, path: Path | str) -> None:
        """Also sweep ``path`` (recursively) after the test."""
        self.dirs.append(Path(path))

    def client_file(self, path: Path, label: str = "secret") -> tuple[Path, bytes]:
        """Write a fresh canary to ``path``, a file of the *client* (e.g. for
        ``--secret NAME=@FILE``): the one place it may be found. Returns the
        path and the canary."""
        value = self.new(label)
        path.write_bytes(value)
        self.client_files.add(os.path.realpath(path))
        return path, value

    def allow_pid(self, pid: int) -> None:
        """Process ``pid`` may hold canaries in its cmdline/environ."""
        self.allowed_pids.add(pid)

    # ------------------------------------------------------------ searching

    def _scan(self, data: bytes, where: str) -> None:
        with self._lock:
            forms = list(self._forms)
        for form, label, kind in forms:
            if form in data:
                finding = Finding(where, label, kind)
                with self._lock:
                    if str(finding) not in map(str, self.findings):
                        self.findings.append(finding)

    def scan_tree(self, root: Path) -> None:
        """Files under ``root`` (or ``root`` itself if it is a file)."""
        if root.is_file() and not root.is_symlink():
            self._scan_file(str(root))
            return
        if not root.is_dir():
            return
        count = 0
        # onerror: directories of another user, or that vanish, are skipped.
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
            for name in filenames:
                count += 1
                if count > MAX_FILES:
                    return
                path = os.path.join(dirpath, name)
                self._scan_file(path)
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]

    def _scan_file(self, path: str) -> None:
        if self.client_files and os.path.realpath(path) in self.client_files:
            return
        try:
            st = os.lstat(path)
            if not os.path.isfile(path) or os.path.islink(path):
                return
            if max(st.st_ctime, st.st_mtime) < self.started - SLACK_S or st.st_size > MAX_FILE_BYTES:
                return
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES)
        except OSError:
            return
        self._scan(data, path)

    def scan_proc(self) -> None:
        try:
            pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return
        for pid in pids:
            if pid in self.allowed_pids:
                continue
            for what in ("cmdline", "environ"):
                try:
                    with open(f"/proc/{pid}/{what}", "rb") as f:
                        data = f.read()
                except OSError:  # gone, or another user's process
                    continue
                self._scan(data, f"/proc/{pid}/{what}")

    def _watch_proc(self) -> None:
        while not self._stop.wait(PROC_INTERVAL_S):
            self.scan_proc()

    def sweep(self, extra: list[Path]) -> list[Finding]:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        if not self.values:
            return []
        roots = {Path("/dev/shm"), Path("/tmp"), Path(os.environ.get("TMPDIR", "/tmp")), *self.dirs, *extra}
        for root in sorted(roots):
            self.scan_tree(root)
        self.scan_proc()
        return self.findings
