"""The ``.stockade`` package file: one CBOR map in deterministic encoding
(docs/package.md has the CDDL)::

    {"v": 1, "manifest": {...}, "files": {path: bytes}, "signatures": [...]}

The content digest is SHA-256 over the deterministic CBOR encoding of the
map without ``"signatures"``. Reading is strict: the bytes must be exactly
the deterministic encoding of what they decode to, so a package has one
byte representation and the digest is computed over bytes that can only
mean one thing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from stockade.errors import ProtocolError, UsageError, WorkloadRejected
from stockade.package.manifest import Manifest, ManifestError, is_normal_path, load_toml, normalize_path
from stockade.wire.messages import loads_strict

FORMAT_VERSION = 1
MANIFEST_NAME = "Stockade.toml"
WASM_MAGIC = b"\x00asm\x01\x00\x00\x00"
#: Preamble of a component (component model, Binary.md: ``magic version
#: layer`` with version 0x0d 0x00 and layer 0x01 0x00; a core module is
#: version 0x01 0x00, layer 0x00 0x00:
#: https://github.com/WebAssembly/component-model/blob/main/design/mvp/Binary.md).
COMPONENT_MAGIC = b"\x00asm\x0d\x00\x01\x00"
ROLES = ("author", "reviewer")
SIG_ALG = "Ed25519"
_TOP = ("v", "manifest", "files", "signatures")
_SIG_KEYS = ("alg", "kid", "role", "sig")


def is_component(wasm: bytes) -> bool:
    """Whether ``wasm`` starts with a component's preamble (layer 1), not a
    core module's (layer 0)."""
    return wasm.startswith(COMPONENT_MAGIC)


def check_module_bytes(wasm: bytes) -> None:
    """Cheap structural checks before compiling (clear errors for common
    mistakes): a core module (version 1, layer 0) or a component (layer 1,
    version 0x0d)."""
    if len(wasm) < 8 or wasm[:4] != WASM_MAGIC[:4]:
        raise WorkloadRejected("not a WebAssembly module (missing the \\0asm magic number)")
    if wasm[4:8] == WASM_MAGIC[4:] or wasm[4:8] == COMPONENT_MAGIC[4:]:
        return
    version, layer = int.from_bytes(wasm[4:6], "little"), int.from_bytes(wasm[6:8], "little")
    if layer == 1:
        raise WorkloadRejected(
            f"unsupported WebAssembly component version 0x{version:04x} (expected 0x000d, "
            "the component model's binary format that wasmtime reads)"
        )
    raise WorkloadRejected(
        f"unsupported WebAssembly binary version {wasm[4:8].hex()} "
        "(expected a core module, version 1 layer 0, or a component, version 0x0d layer 1)"
    )


def _canonical(value: Any) -> bytes:
    return bytes(cbor2.dumps(value, canonical=True))


def content_digest(manifest: dict[str, Any], files: dict[str, bytes]) -> bytes:
    """SHA-256 over the deterministic CBOR of {"v", "manifest", "files"}."""
    return hashlib.sha256(_canonical({"v": FORMAT_VERSION, "manifest": manifest, "files": files})).digest()


#: Keys of a signature's ``log`` map (docs/package.md, "Signatures in the log").
_LOG_KEYS = ("index", "inclusion", "key", "tree-head")
#: An RFC 9162 inclusion proof has at most one hash per tree level: 64 for
#: every tree of fewer than 2**64 entries.
MAX_LOG_PROOF = 64
#: A signed tree head is ~150 bytes (Ed25519) or ~160 (ECDSA P-256); a log
#: key's SubjectPublicKeyInfo 44 (Ed25519) or 91 bytes (P-256).
MAX_LOG_TREE_HEAD = 1024
MAX_LOG_KEY = 256


@dataclass(frozen=True)
class SignatureLog:
    """Where a signature is in a transparency log, as ``stockade package
    sign --log`` stored it next to the signature: the entry's ``index``,
    the signed tree head (CBOR, as stockade.translog serialises it), the
    RFC 9162 inclusion proof for ``index`` in that tree, and the log's
    public key (SubjectPublicKeyInfo DER; its SHA-256 is the log ID a
    policy pins). Parsing checks the shape only; the proof is verified by
    :mod:`stockade.package.logproof` against pinned log IDs."""

    index: int
    tree_head: bytes
    inclusion: tuple[bytes, ...]
    key: bytes

    def to_map(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "inclusion": list(self.inclusion),
            "key": self.key,
            "tree-head": self.tree_head,
        }

    @classmethod
    def from_map(cls, m: Any, where: str) -> SignatureLog:
        where = f"{where}.log"
        if not isinstance(m, dict) or set(m) != set(_LOG_KEYS):
            raise WorkloadRejected(f"{where}: expected a map with exactly the keys {', '.join(_LOG_KEYS)}")
        index, proof = m["index"], m["inclusion"]
        if type(index) is not int or index < 0:
            raise WorkloadRejected(f"{where}: index must be an unsigned integer")
        if (
            not isinstance(proof, list)
            or len(proof) > MAX_LOG_PROOF
            or not all(isinstance(h, bytes) and len(h) == 32 for h in proof)
        ):
            raise WorkloadRejected(f"{where}: inclusion must be at most {MAX_LOG_PROOF} 32-byte hashes")
        for key, limit in (("tree-head", MAX_LOG_TREE_HEAD), ("key", MAX_LOG_KEY)):
            if not isinstance(m[key], bytes) or not 0 < len(m[key]) <= limit:
                raise WorkloadRejected(f"{where}: {key} must be a byte string of 1 to {limit} bytes")
        return cls(index=index, tree_head=m["tree-head"], inclusion=tuple(proof), key=m["key"])


@dataclass(frozen=True)
class Signature:
    """One detached signature entry (docs/package.md). ``kid`` is the
    SHA-256 hex of the signer's raw 32-byte Ed25519 public key. ``log``,
    when present, says where the signature is in a transparency log; it is
    outside the signed bytes and, like every signature, outside the
    content digest."""

    alg: str
    kid: str
    role: str
    sig: bytes
    log: SignatureLog | None = None

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {"alg": self.alg, "kid": self.kid, "role": self.role, "sig": self.sig}
        if self.log is not None:
            m["log"] = self.log.to_map()
        return m

    @classmethod
    def from_map(cls, m: Any, index: int) -> Signature:
        where = f"package: signatures[{index}]"
        if not isinstance(m, dict) or set(m) - {"log"} != set(_SIG_KEYS):
            raise WorkloadRejected(
                f"{where}: expected a map with exactly the keys {', '.join(_SIG_KEYS)} (and optionally log)"
            )
        if m["alg"] != SIG_ALG:
            raise WorkloadRejected(f"{where}: unsupported alg {m['alg']!r} (expected {SIG_ALG!r})")
        kid = m["kid"]
        if not isinstance(kid, str) or len(kid) != 64 or any(c not in "0123456789abcdef" for c in kid):
            raise WorkloadRejected(f"{where}: kid must be 64 lowercase hex digits")
        if m["role"] not in ROLES:
            raise WorkloadRejected(f"{where}: role {m['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m["sig"], bytes) or len(m["sig"]) != 64:
            raise WorkloadRejected(f"{where}: sig must be a 64-byte Ed25519 signature")
        log = SignatureLog.from_map(m["log"], where) if "log" in m else None
        return cls(alg=m["alg"], kid=kid, role=m["role"], sig=m["sig"], log=log)


@dataclass(frozen=True)
class Package:
    """A parsed package. ``files`` maps normalized paths to contents (the
    entry included), in canonical order; ``digest`` is the content digest
    computed from the received bytes' content; ``signatures`` are sorted by
    kid. Parsing does not check signatures: see ``verify_signatures``."""

    manifest: Manifest
    files: tuple[tuple[str, bytes], ...]
    digest: bytes
    signatures: tuple[Signature, ...]

    @property
    def entry_bytes(self) -> bytes:
        return dict(self.files)[self.manifest.entry]

    @classmethod
    def from_bytes(cls, data: bytes) -> Package:
        """Parse and check a package; WorkloadRejected says what is wrong."""
        try:
            top = loads_strict(data, "package")
        except ProtocolError as exc:
            raise WorkloadRejected(_diagnose(data) or exc.detail) from None
        if not isinstance(top, dict):
            raise WorkloadRejected("package: expected a CBOR map")
        if set(top) != set(_TOP):
            raise WorkloadRejected(
                f"package: expected exactly the keys {', '.join(_TOP)}, got {sorted(top, key=repr)}"
            )
        if type(top["v"]) is not int or top["v"] != FORMAT_VERSION:
            raise WorkloadRejected(f"package: unsupported format version {top['v']!r} (expected 1)")
        raw_manifest, raw_files, raw_sigs = top["manifest"], top["files"], top["signatures"]
        try:
            manifest = Manifest.from_map(raw_manifest)
        except ManifestError as exc:
            raise WorkloadRejected(f"package: manifest: {exc}") from None
        if manifest.to_map() != raw_manifest:
            raise WorkloadRejected("package: manifest is not in normalized form (re-build the package)")
        if not isinstance(raw_files, dict):
            raise WorkloadRejected("package: files must be a map of path to bytes")
        for path, content in raw_files.items():
            if not isinstance(path, str) or not is_normal_path(path):
                raise WorkloadRejected(f"package: file path {path!r} is not a normalized relative POSIX path")
            if not isinstance(content, bytes):
                raise WorkloadRejected(f"package: file {path!r} is not a byte string")
        _check_tree(raw_files)
        _check_files_match(manifest, raw_files)
        if not isinstance(raw_sigs, list):
            raise WorkloadRejected("package: signatures must be an array")
        sigs = tuple(Signature.from_map(s, i) for i, s in enumerate(raw_sigs))
        kids = [s.kid for s in sigs]
        if kids != sorted(set(kids)):
            raise WorkloadRejected("package: signatures must be sorted by kid, one per kid")
        return cls(
            manifest=manifest,
            files=tuple(raw_files.items()),
            digest=content_digest(raw_manifest, raw_files),
            signatures=sigs,
        )

    def to_bytes(self) -> bytes:
        return encode(self.manifest, dict(self.files), self.signatures)


def encode(manifest: Manifest, files: dict[str, bytes], signatures: tuple[Signature, ...] = ()) -> bytes:
    sigs = sorted(signatures, key=lambda s: s.kid)
    return _canonical(
        {
            "v": FORMAT_VERSION,
            "manifest": manifest.to_map(),
            "files": files,
            "signatures": [s.to_map() for s in sigs],
        }
    )


def _check_tree(files: dict[str, bytes]) -> None:
    paths = set(files)
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in paths:
                raise WorkloadRejected(f"package: {prefix!r} is a file but {path!r} uses it as a directory")


def _check_files_match(manifest: Manifest, files: dict[str, bytes]) -> None:
    if manifest.entry not in files:
        raise WorkloadRejected(
            f"package: the manifest's entry {manifest.entry!r} is not a file in the package"
        )
    entry = files[manifest.entry]
    if not (entry.startswith(WASM_MAGIC) or is_component(entry)):
        raise WorkloadRejected(
            f"package: entry {manifest.entry!r} is not a WebAssembly module or component (no \\0asm "
            "header of a version 1 module or of a version 0x0d layer 1 component)"
        )
    if manifest.entry in manifest.files:
        raise WorkloadRejected(f"package: manifest files must not list the entry {manifest.entry!r}")
    listed = set(manifest.files) | {manifest.entry}
    for path in sorted(listed - set(files)):
        raise WorkloadRejected(f"package: the manifest lists {path!r} but the package has no such file")
    for path in sorted(set(files) - listed):
        raise WorkloadRejected(f"package: file {path!r} is in the package but not in the manifest")
    if list(manifest.files) != sorted(manifest.files) or len(set(manifest.files)) != len(manifest.files):
        raise WorkloadRejected("package: manifest files must be sorted and unique")


def _diagnose(data: bytes) -> str | None:
    """A specific reason for bytes that the strict decoder refused: trailing
    bytes, or a map (files, most likely) whose keys are out of canonical order."""
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except Exception:
        return None
    if fp.tell() != len(data):
        return f"package: {len(data) - fp.tell()} trailing byte(s) after the package"
    return _unordered(value, "package")


def _unordered(value: Any, where: str) -> str | None:
    if isinstance(value, dict):
        try:
            keys = list(value)
            if keys != sorted(keys, key=_canonical_key):
                name = "file paths" if where == "package.files" else "map keys"
                return f"{where}: {name} are not in canonical (deterministic CBOR) order"
        except Exception:
            return None
        for k, v in value.items():
            found = _unordered(v, f"{where}.{k}")
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _unordered(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _canonical_key(key: Any) -> tuple[int, bytes]:
    enc = _canonical(key)
    return (len(enc), enc)


def _collect(root: Path, rel: str, out: dict[str, bytes]) -> None:
    src = root / rel
    real_root = root.resolve()
    try:
        src.resolve().relative_to(real_root)
    except ValueError:
        raise UsageError(f"{rel!r} resolves outside {root}") from None
    if src.is_dir():
        for child in sorted(src.rglob("*")):
            if child.is_dir():
                continue
            _collect(root, child.relative_to(root).as_posix(), out)
        return
    if not src.is_file():
        raise UsageError(f"{root / MANIFEST_NAME}: {rel!r} does not exist or is not a regular file")
    out[normalize_path(rel, "files")] = src.read_bytes()


def build(directory: Path) -> bytes:
    """Build a package from ``directory/Stockade.toml`` (no signatures).
    The result depends only on the manifest and the files' contents, never
    on timestamps, permissions, directory order or the directory's name."""
    manifest = load_toml(directory / MANIFEST_NAME)
    files: dict[str, bytes] = {}
    try:
        _collect(directory, manifest.entry, files)
        for rel in manifest.files:
            _collect(directory, rel, files)
    except ManifestError as exc:
        raise UsageError(f"{directory / MANIFEST_NAME}: {exc}") from None
    listed = tuple(sorted(p for p in files if p != manifest.entry))
    manifest = dataclasses.replace(manifest, files=listed)
    try:
        _check_tree(files)
        _check_files_match(manifest, files)
    except WorkloadRejected as exc:
        raise UsageError(f"{directory / MANIFEST_NAME}: {exc.detail.removeprefix('package: ')}") from None
    ordered = {k: files[k] for k in sorted(files, key=_canonical_key)}
    return encode(manifest, ordered)


#: Entry path of the package a bare module is wrapped in.
MODULE_ENTRY = "main.wasm"


def wrap_module(wasm: bytes, name: str = "module") -> Package:
    """An unsigned package holding only ``wasm`` (version "0", entry
    main.wasm), with its content digest: how a bare module is deployed."""
    check_module_bytes(wasm)
    manifest = Manifest(name=name or "module", version="0", entry=MODULE_ENTRY)
    files = {MODULE_ENTRY: wasm}
    return Package(manifest, tuple(files.items()), content_digest(manifest.to_map(), files), ())
