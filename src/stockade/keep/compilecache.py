"""The Keep's sealed compile cache (ADR 0023).

Compiling a large module is most of a run (the 26 MB CPython module takes
seconds in Cranelift); wasmtime can serialize the compiled code and load it
back in milliseconds. But ``Module.deserialize`` trusts its input: the bytes
are native code that wasmtime maps and runs, with no check that wasmtime
made them (wasmtime docs, ``Module::deserialize`` is ``unsafe``: "the
bytes must have been produced by a compatible ``serialize``"). Host storage
is the host's, so an entry is used only if it authenticates under a key only
this Keep (a Keep with the same launch measurement on the same chip) can
derive: the platform's sealing key (sim PSP or SEV-SNP MSG_KEY_REQ; TDX has
none, so a TDX Keep caches nothing).

An entry (one file ``<dir>/<key id>/<name>.sealed``):

* ``name`` = HMAC-SHA256(name key, tuple): the tuple is the module's
  SHA-256, its kind (module or component), the wasmtime version, the engine
  configuration fingerprint and the host (architecture and CPU features); a
  keyed name, so that the host does not learn which module ran from the
  file name. ``key id`` separates the entries of different sealing keys
  (different Keep runtimes) in the same directory;
* content: a versioned header (``MAGIC``, format version, 12-byte random
  nonce) then AES-256-GCM (cryptography's AESGCM) over the tuple again and
  wasmtime's serialized code, with AAD = the header and the expected tuple.
  A tampered, truncated or foreign entry (another module's, another key's,
  another engine's) fails authentication; the tuple inside is compared too.

Any failure discards the entry (it is removed, logged with its reason,
counted) and the module is compiled again: the bytes reach
``Module.deserialize`` only after they authenticated. Writes go to a
temporary file renamed into place (atomic: concurrent Keeps see a whole
entry or none; the last writer of the same entry wins, and both are
valid). The directory is bounded (``max_bytes``): after a write, the least
recently used entries (by modification time, refreshed on each hit) go
first. What the host can still do: delete, replace or roll back entries,
which costs a recompile and never runs other code (docs/threat-model.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: First bytes of every entry; the next byte is the format version.
MAGIC = b"STKCC"
FORMAT_VERSION = 1
HEADER = struct.Struct(">5sB12s")
TAG_SIZE = 16
SUFFIX = ".sealed"
TMP_PREFIX = ".tmp-"
#: Default bound on all entries in a cache directory.
DEFAULT_MAX_BYTES = 2 << 30
#: Largest entry written or read (a loader's RLIMIT_FSIZE is 256 MiB).
MAX_ENTRY_BYTES = 192 << 20
#: A temporary file older than this belongs to a writer that died.
STALE_TMP_S = 3600.0
#: Labels of the keys derived from the sealing key (HKDF-SHA256, RFC 5869).
_ENC_LABEL = b"stockade compile cache v1: encryption"
_NAME_LABEL = b"stockade compile cache v1: names"


@dataclass(frozen=True)
class EntryKey:
    """What an entry was made for; every field must match to use it."""

    module_sha256: bytes
    kind: str
    wasmtime: str
    engine: str
    host: str

    def encode(self) -> bytes:
        """Canonical bytes: each field length-prefixed (no ambiguity)."""
        parts = [
            self.module_sha256,
            *(s.encode() for s in (self.kind, self.wasmtime, self.engine, self.host)),
        ]
        return b"".join(struct.pack(">H", len(p)) + p for p in parts)


def host_fingerprint(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The architecture and a digest of the CPU feature flags (wasmtime
    compiles for the features it detects; it checks them again when it
    deserializes)."""
    flags = ""
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.partition(":")[2].split()))
                break
    return f"{os.uname().machine}-linux/{hashlib.sha256(flags.encode()).hexdigest()[:32]}"


def _hkdf(key: bytes, label: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(key)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    #: reason -> entries discarded for it.
    discarded: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        gone = ", ".join(f"{n} {why}" for why, n in sorted(self.discarded.items())) or "none"
        return f"{self.hits} hit(s), {self.misses} miss(es), {self.stored} stored, discarded: {gone}"


class CompileCache:
    """Sealed entries under ``directory`` (host storage), keyed by
    ``sealing_key`` (32 bytes, from the platform; never stored)."""

    def __init__(
        self,
        directory: Path,
        sealing_key: bytes,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        log: Callable[[str], None] = lambda _m: None,
    ) -> None:
        if len(sealing_key) != 32:
            raise ValueError("the sealing key must be 32 bytes")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(_hkdf(sealing_key, _ENC_LABEL))
        self._name_key = _hkdf(sealing_key, _NAME_LABEL)
        self.base = directory
        self.dir = directory / hmac.new(self._name_key, b"key id", hashlib.sha256).hexdigest()[:32]
        self.max_bytes = max_bytes
        #: Where the cache's log lines go (the Keep's host-side log).
        self.log = log
        self.stats = CacheStats()

    def path_for(self, key: EntryKey) -> Path:
        name = hmac.new(self._name_key, key.encode(), hashlib.sha256).hexdigest()
        return self.dir / f"{name}{SUFFIX}"

    @staticmethod
    def _header(nonce: bytes) -> bytes:
        return HEADER.pack(MAGIC, FORMAT_VERSION, nonce)

    def seal(self, key: EntryKey, serialized: bytes) -> bytes:
        """The bytes of an entry for ``key``."""
        nonce = os.urandom(12)
        header = self._header(nonce)
        tuple_bytes = key.encode()
        plain = struct.pack(">I", len(tuple_bytes)) + tuple_bytes + serialized
        return header + self._aead.encrypt(nonce, plain, header + tuple_bytes)

    def unseal(self, key: EntryKey, data: bytes) -> bytes:
        """The serialized code inside an entry for ``key``; raises
        :class:`Discard` (with the reason) for anything else."""
        from cryptography.exceptions import InvalidTag

        if len(data) < HEADER.size + TAG_SIZE:
            raise Discard("truncated")
        magic, version, nonce = HEADER.unpack_from(data)
        if magic != MAGIC or version != FORMAT_VERSION:
            raise Discard("not an entry of this format")
        tuple_bytes = key.encode()
        try:
            # A view, not a copy, of the ciphertext (entries are tens of MB).
            plain = self._aead.decrypt(
                nonce, memoryview(data)[HEADER.size :], data[: HEADER.size] + tuple_bytes
            )
        except InvalidTag:
            raise Discard("authentication failed") from None
        (size,) = struct.unpack_from(">I", plain)
        if plain[4 : 4 + size] != tuple_bytes:  # pragma: no cover - the AAD already binds it
            raise Discard("made for another module, engine or host")
        return plain[4 + size :]

    def load(self, key: EntryKey) -> bytes | None:
        """Authenticated serialized code for ``key``, or None (a miss, or an
        entry discarded)."""
        path = self.path_for(key)
        try:
            data = _read_regular(path, MAX_ENTRY_BYTES)
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except _NotRegular:
            self.discard(key, f"not a regular file of at most {MAX_ENTRY_BYTES} bytes")
            return None
        except OSError as exc:
            self.discard(key, f"unreadable ({os.strerror(exc.errno) if exc.errno else type(exc).__name__})")
            return None
        try:
            serialized = self.unseal(key, data)
        except Discard as why:
            self.discard(key, str(why))
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently used goes first
        self.stats.hits += 1
        return serialized

    def discard(self, key: EntryKey, reason: str) -> None:
        """Remove the entry for ``key`` (counted, logged) so that the next
        compile replaces it."""
        self.stats.discarded[reason] = self.stats.discarded.get(reason, 0) + 1
        self.stats.misses += 1
        self.log(f"compile cache: entry discarded ({reason}); compiling the module")
        with contextlib.suppress(OSError):
            os.unlink(self.path_for(key))

    def store(self, key: EntryKey, serialized: bytes) -> bool:
        """Write the entry for ``key`` (temporary file, then rename), then
        evict past ``max_bytes``. False when it was not written (too large,
        or the host's storage refused: a cache never fails a run)."""
        sealed = self.seal(key, serialized)
        if len(sealed) > min(MAX_ENTRY_BYTES, self.max_bytes):
            self.log(f"compile cache: entry of {len(sealed)} bytes not stored (larger than the cap)")
            return False
        tmp = self.dir / f"{TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(sealed)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, self.path_for(key))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self.log(f"compile cache: entry not stored ({exc.strerror or type(exc).__name__})")
            return False
        self.stats.stored += 1
        self.evict()
        return True

    def evict(self) -> list[Path]:
        """Remove the least recently used entries of every key under the
        base directory until they fit ``max_bytes`` (and temporary files of
        writers that died). Races with other Keeps are harmless: a removed
        entry is a miss."""
        entries: list[tuple[float, int, Path]] = []
        removed: list[Path] = []
        now = time.time()
        with contextlib.suppress(OSError):
            for sub in os.scandir(self.base):
                if not sub.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(OSError):
                    for entry in os.scandir(sub.path):
                        st = entry.stat(follow_symlinks=False)
                        if not stat.S_ISREG(st.st_mode):
                            continue
                        if entry.name.startswith(TMP_PREFIX):
                            if now - st.st_mtime > STALE_TMP_S:
                                with contextlib.suppress(OSError):
                                    os.unlink(entry.path)
                            continue
                        if entry.name.endswith(SUFFIX):
                            entries.append((st.st_mtime, st.st_size, Path(entry.path)))
        total = sum(size for _, size, _ in entries)
        for _mtime, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
            total -= size
        return removed


class Discard(Exception):
    """An entry that must not be used; the message is the reason."""


class _NotRegular(Exception):
    pass


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file (no symbolic link followed, no FIFO or
    device opened for long, at most ``limit`` bytes)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise _NotRegular(path.name)
        chunks = []
        left = st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
