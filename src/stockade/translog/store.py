"""The log on disk: an append-only entry file, an append-only file of every
signed tree head, and the log's key, in one state directory.

Layout of ``DIR``::

    log.key      the tree-head signing key, PKCS#8 PEM, mode 0600
    log.pub      its public key, SubjectPublicKeyInfo PEM (give this to clients)
    entries      records: u32 big-endian length || entry || SHA-256(entry)
    tree-heads   records of the same shape, each a signed tree head
    lock         flock(2): one writer, or readers

Crash safety: an append writes its entry records in one ``write(2)`` to
``entries`` (opened ``O_APPEND``) and ``fsync``\\ s it, and only then signs
and appends the new tree head to ``tree-heads`` and ``fsync``\\ s that. A
crash leaves at most a torn last record in either file (a prefix of a
record, or a complete-length record whose checksum fails because its
blocks never reached the disk), and entries that no tree head covers yet.
Opening for writing cuts a torn tail, and signs a tree head for complete
entries not covered yet; so the log opens at its last complete entry.
A damaged record that is *not* the last one, a tree head that covers more
entries than the file holds, or one whose root differs from the entries'
is no crash: :class:`~stockade.errors.LogProofError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from stockade.errors import LogProofError, MalformedLogData, StockadeError, UsageError
from stockade.translog import merkle
from stockade.translog.entries import MAX_ENTRY, LogEntry, decode_entry, encode_entry
from stockade.translog.treehead import (
    ALG_ED25519,
    ConsistencyProof,
    InclusionProof,
    LogKey,
    TreeHeadSigner,
    VerifiedTreeHead,
    generate_signer,
    load_signer,
    parse_signed_tree_head,
    sign_tree_head,
    verify_tree_head,
)

KEY_FILE = "log.key"
PUB_FILE = "log.pub"
ENTRIES_FILE = "entries"
HEADS_FILE = "tree-heads"
LOCK_FILE = "lock"

_LEN = struct.Struct(">I")
_SUM = 32
#: Larger than any entry or tree head; a length above it is damage.
MAX_RECORD = MAX_ENTRY + 1024


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def record(payload: bytes) -> bytes:
    """One record of ``entries`` or ``tree-heads``."""
    return _LEN.pack(len(payload)) + payload + hashlib.sha256(payload).digest()


@dataclass(frozen=True)
class Records:
    """What :func:`read_records` found in a file."""

    payloads: list[bytes]
    #: Bytes of complete, intact records (where a torn tail is cut).
    good_length: int
    #: Bytes after them: a record torn by a crash.
    torn: int


def read_records(data: bytes, what: str) -> Records:
    """Parse records; a bad record that reaches the end of the file is a
    torn tail, one followed by more bytes is damage (LogProofError)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        rest = len(data) - pos
        if rest < _LEN.size:
            return Records(out, pos, rest)
        (n,) = _LEN.unpack_from(data, pos)
        end = pos + _LEN.size + n + _SUM
        if n > MAX_RECORD:
            # A wild length from a torn write or a flipped bit: torn only
            # if nothing could follow it, which a wild length cannot tell.
            raise LogProofError(f"{what}: record at byte {pos} claims {n} bytes, more than {MAX_RECORD}")
        if end > len(data):
            return Records(out, pos, rest)  # a prefix of a record: a torn append
        payload = data[pos + _LEN.size : pos + _LEN.size + n]
        if hashlib.sha256(payload).digest() != data[end - _SUM : end]:
            if end == len(data) or not any(memoryview(data)[pos:]):
                # The last record, or blocks allocated but never written
                # (zeros) up to the end of the file: a torn append.
                return Records(out, pos, rest)
            raise LogProofError(f"{what}: record {len(out)} at byte {pos} fails its checksum (damaged)")
        out.append(payload)
        pos = end
    return Records(out, pos, 0)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LogWriteFailed(StockadeError):
    """Writing a log file failed (disk full, I/O error): exit 1. The log
    object that met it refuses further appends; reopening recovers (a torn
    record is cut, as after a crash)."""

    title = "transparency log write failed"


def _append_file(path: Path, data: bytes) -> None:
    """Append ``data`` in one write and fsync (module docstring)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise LogWriteFailed(f"short write to {path}: {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LogWriteFailed(f"cannot append to {path}: {exc.strerror}") from None


def _truncate(path: Path, length: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, length)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LogWriteFailed(f"cannot cut the torn tail of {path}: {exc.strerror}") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path.parent}: not a transparency log state directory (no {path.name})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class Recovery:
    """What opening the log found of an interrupted append."""

    torn_entry_bytes: int = 0
    torn_head_bytes: int = 0
    #: Complete entries that no tree head covered (signed on a writable open).
    unsigned_entries: int = 0

    def __bool__(self) -> bool:
        return bool(self.torn_entry_bytes or self.torn_head_bytes or self.unsigned_entries)


@dataclass(frozen=True)
class LogReport:
    """The result of :meth:`TransparencyLog.verify`."""

    size: int
    tree_heads: int
    root: bytes
    recovery: Recovery


class TransparencyLog:
    """A log in a state directory; open with :meth:`create` or :meth:`open`
    and use as a context manager (it holds the directory's lock)."""

    def __init__(
        self,
        directory: Path,
        key: LogKey,
        signer: TreeHeadSigner | None,
        lock_fd: int,
        clock: Callable[[], int],
    ) -> None:
        self.directory = directory
        self.key = key
        self._signer = signer
        self._lock_fd: int | None = lock_fd
        self._clock = clock
        self._entries: list[bytes] = []
        self._heads: list[bytes] = []
        self._head_sizes: list[int] = []
        self.tree = merkle.MerkleTree()
        self.recovery = Recovery()
        self._failed = False

    # -- opening -------------------------------------------------------

    @staticmethod
    def _lock(directory: Path, exclusive: bool) -> int:
        try:
            fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot open the lock of {directory}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"{directory}: the log is in use by another writer") from None
        return fd

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        algorithm: str = ALG_ED25519,
        signer: TreeHeadSigner | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> TransparencyLog:
        """A new empty log with a tree head of size 0. With no ``signer``,
        a new key of ``algorithm`` is written to ``log.key``."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {directory}: {exc.strerror}") from None
        if any(directory.iterdir()):
            raise UsageError(f"{directory}: not empty; a log is created in a new or empty directory")
        lock = cls._lock(directory, exclusive=True)
        try:
            if signer is None:
                signer, pem = generate_signer(algorithm)
                fd = os.open(directory / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, pem)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            key = LogKey.from_der(signer.public_key_der())
            (directory / PUB_FILE).write_bytes(key.to_pem())
            _append_file(directory / ENTRIES_FILE, b"")
            _append_file(
                directory / HEADS_FILE, record(sign_tree_head(signer, 0, merkle.EMPTY_ROOT, clock()))
            )
            _fsync_dir(directory)
        except BaseException:
            os.close(lock)
            raise
        log = cls(directory, key, signer, lock, clock)
        log._load(writable=True)
        return log

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        writable: bool = True,
        signer: TreeHeadSigner | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> TransparencyLog:
        """Open a log. ``writable``: take the writer's lock, recover from an
        interrupted append (module docstring) and sign with ``signer`` (by
        default the key in ``log.key``). Otherwise read only: nothing is
        changed, :attr:`recovery` says what a writer would repair."""
        if not directory.is_dir():
            raise UsageError(f"{directory}: no such log state directory")
        key = LogKey.from_pem(_read(directory / PUB_FILE))
        lock = cls._lock(directory, exclusive=writable)
        try:
            if writable and signer is None:
                signer = load_signer(_read(directory / KEY_FILE))
            if signer is not None and LogKey.from_der(signer.public_key_der()) != key:
                raise LogProofError(f"{directory}: the signing key is not the one of {PUB_FILE}")
            log = cls(directory, key, signer if writable else None, lock, clock)
            log._load(writable)
        except BaseException:
            os.close(lock)
            raise
        return log

    def _load(self, writable: bool) -> None:
        d = self.directory
        entries = read_records(_read(d / ENTRIES_FILE), ENTRIES_FILE)
        heads = read_records(_read(d / HEADS_FILE), HEADS_FILE)
        if not heads.payloads:
            raise LogProofError(f"{d}: no complete signed tree head in {HEADS_FILE}")
        self._entries = entries.payloads
        self.tree = merkle.MerkleTree([merkle.leaf_hash(e) for e in self._entries])
        self._heads = heads.payloads
        self._head_sizes = []
        # Every head's size (they never go back), the latest head in full
        # (signature, root); an earlier one is checked in full when it is
        # used (tree_head_for), and all of them by verify(): an open costs
        # one signature check, not one per append ever made.
        for raw in self._heads[:-1]:
            self._head_sizes.append(self._check_size(parse_signed_tree_head(raw)[0].size))
        self._head_sizes.append(self._check_size(self._check_head(self._heads[-1]).size))
        latest = self._head_sizes[-1]
        self.recovery = Recovery(entries.torn, heads.torn, len(self._entries) - latest)
        if writable:
            if entries.torn:
                _truncate(d / ENTRIES_FILE, entries.good_length)
            if heads.torn:
                _truncate(d / HEADS_FILE, heads.good_length)
            if len(self._entries) > latest:
                self._sign_head()

    def _check_size(self, size: int) -> int:
        """A stored head's size: within the entries present, and never
        below the head before it."""
        if size > self.tree.size:
            raise LogProofError(
                f"{self.directory}: a signed tree head covers {size} entries, {ENTRIES_FILE} holds "
                f"only {self.tree.size}: signed entries were dropped"
            )
        if self._head_sizes and size < self._head_sizes[-1]:
            raise LogProofError(
                f"{self.directory}: tree head sizes go back from {self._head_sizes[-1]} to {size}"
            )
        return size

    def _check_head(self, raw: bytes) -> VerifiedTreeHead:
        """A stored head in full: its signature under the log key, and its
        root against the entries'."""
        head = verify_tree_head(raw, [self.key])
        if head.size > self.tree.size:
            raise LogProofError(
                f"{self.directory}: a signed tree head covers {head.size} entries, {ENTRIES_FILE} holds "
                f"only {self.tree.size}: signed entries were dropped"
            )
        if self.tree.root(head.size) != head.root:
            raise LogProofError(
                f"{self.directory}: the first {head.size} entries have root {self.tree.root(head.size).hex()}, "
                f"their signed tree head says {head.root.hex()}: an entry was rewritten"
            )
        return head

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> TransparencyLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- reading -------------------------------------------------------

    @property
    def size(self) -> int:
        return self.tree.size

    @property
    def tree_head(self) -> bytes:
        """The latest signed tree head."""
        return self._heads[-1]

    @property
    def signed_size(self) -> int:
        return self._head_sizes[-1]

    def tree_head_for(self, size: int) -> bytes:
        """The latest signed tree head of exactly ``size`` entries."""
        for raw, n in zip(reversed(self._heads), reversed(self._head_sizes), strict=True):
            if n == size:
                self._check_head(raw)
                return raw
        sizes = sorted(set(self._head_sizes))
        shown = ", ".join(map(str, sizes[-8:]))
        raise UsageError(f"no signed tree head of size {size} (the log signed sizes …{shown})")

    def entry(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise UsageError(f"no entry {index}: the log has {self.size} entries")
        return self._entries[index]

    def inclusion_proof(self, index: int, size: int | None = None) -> InclusionProof:
        size = self.signed_size if size is None else size
        self.entry(index)
        if size > self.size:
            raise UsageError(f"tree size {size} is larger than the log ({self.size} entries)")
        return InclusionProof(index, size, tuple(self.tree.inclusion_path(index, size)))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        new_size = self.signed_size if new_size is None else new_size
        if not 0 <= old_size <= new_size <= self.size:
            raise UsageError(
                f"sizes must satisfy 0 <= OLD <= NEW <= {self.size}, got {old_size} and {new_size}"
            )
        path = () if old_size == 0 else tuple(self.tree.consistency_path(old_size, new_size))
        return ConsistencyProof(old_size, new_size, path)

    # -- writing -------------------------------------------------------

    def _sign_head(self) -> bytes:
        if self._signer is None:
            raise UsageError(f"{self.directory}: opened read-only")
        raw = sign_tree_head(self._signer, self.size, self.tree.root(), self._clock())
        _append_file(self.directory / HEADS_FILE, record(raw))
        self._heads.append(raw)
        self._head_sizes.append(self.size)
        return raw

    def append(self, entries: Sequence[LogEntry | bytes]) -> tuple[int, bytes]:
        """Append ``entries`` (typed, or entry bytes, checked to decode),
        make them durable, then sign and store the new tree head. Returns
        the index of the first one and the new signed tree head."""
        if self._failed:
            raise LogWriteFailed(f"{self.directory}: an append failed; reopen the log to recover")
        if self._signer is None:
            raise UsageError(f"{self.directory}: opened read-only")
        if not entries:
            raise UsageError("nothing to append")
        encoded = [e if isinstance(e, bytes) else encode_entry(e) for e in entries]
        for e in encoded:
            decode_entry(e)
        first = self.size
        try:
            _append_file(self.directory / ENTRIES_FILE, b"".join(record(e) for e in encoded))
            for e in encoded:
                self._entries.append(e)
                self.tree.append(merkle.leaf_hash(e))
            return first, self._sign_head()
        except BaseException:
            # The files may now end in a torn record, or hold entries with
            # no head: this object must not write after them. Reopening
            # recovers as after a crash.
            self._signer = None
            self._failed = True
            raise

    # -- checking ------------------------------------------------------

    def verify(self) -> LogReport:
        """Re-read both files and recompute everything: every record's
        checksum, every entry's encoding, every tree head's signature and
        root, sizes that never go back. Raise on the first mismatch."""
        d = self.directory
        entries = read_records(_read(d / ENTRIES_FILE), ENTRIES_FILE)
        heads = read_records(_read(d / HEADS_FILE), HEADS_FILE)
        for i, e in enumerate(entries.payloads):
            try:
                decode_entry(e)
            except MalformedLogData as exc:
                raise MalformedLogData(f"entry {i}: {exc}") from None
        checker = TransparencyLog(d, self.key, None, -1, self._clock)
        checker._entries = entries.payloads
        checker.tree = merkle.MerkleTree([merkle.leaf_hash(e) for e in entries.payloads])
        if not heads.payloads:
            raise LogProofError(f"{d}: no complete signed tree head in {HEADS_FILE}")
        for raw in heads.payloads:
            checker._head_sizes.append(checker._check_size(checker._check_head(raw).size))
        latest = checker._head_sizes[-1]
        return LogReport(
            size=latest,
            tree_heads=len(heads.payloads),
            root=checker.tree.root(latest),
            recovery=Recovery(entries.torn, heads.torn, len(entries.payloads) - latest),
        )


@contextlib.contextmanager
def opened(directory: Path, *, writable: bool = True) -> Iterator[TransparencyLog]:
    log = TransparencyLog.open(directory, writable=writable)
    try:
        yield log
    finally:
        log.close()
