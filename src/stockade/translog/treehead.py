"""Signed tree heads, the log's keys, and proofs as messages.

A signed tree head (STH) says "the log had ``size`` entries with root hash
``root`` at ``time``", signed by the log's key (RFC 9162 section 4.10 has
the same content). On the wire (docs/protocol.cddl ``signed-tree-head``)::

    {v: 1, head: bstr .cbor tree-head, alg: "ed25519" / "ecdsa-p256-sha256", sig: bstr}
    tree-head = {v: 1, log: bstr .size 32, size: uint, root: bstr .size 32, time: uint}

``sig`` signs ``b"stockade-tree-head/v1\\0" || head`` (the bytes received,
never a re-serialisation); ``log`` is the SHA-256 of the log key's
SubjectPublicKeyInfo (DER), as RFC 9162's log ID names a log by its key.
``time`` is milliseconds since the Unix epoch.

The signing key is behind :class:`TreeHeadSigner`: a PEM file for now
(:class:`FileSigner`), a PKCS#11 token in the steward later. Verification
takes the trusted key(s) explicitly (:class:`LogKey`), checks that the
head's algorithm is the one of that key type (no algorithm confusion) and
returns a :class:`VerifiedTreeHead`, which only this module constructs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stockade.errors import LogProofError, MalformedLogData
from stockade.translog import merkle

VERSION = 1
SIGNED_PREFIX = b"stockade-tree-head/v1\x00"
ALG_ED25519 = "ed25519"
ALG_P256 = "ecdsa-p256-sha256"
ALGORITHMS = (ALG_ED25519, ALG_P256)
#: The longest proof path accepted: 2 * 64 hashes covers every tree of
#: fewer than 2**64 leaves (RFC 9162 proofs are O(log n)).
MAX_PATH = 128

_VERIFIED = object()


def _loads(data: bytes, what: str) -> Any:
    try:
        return cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedLogData(f"{what} is not CBOR: {exc}") from None


def _dumps(value: Any) -> bytes:
    return bytes(cbor2.dumps(value, canonical=True))


def _map(data: bytes, what: str, keys: set[str]) -> dict[str, Any]:
    m = _loads(data, what)
    if not isinstance(m, dict):
        raise MalformedLogData(f"{what} is a CBOR {type(m).__name__}, expected a map")
    if set(m) != keys:
        raise MalformedLogData(f"{what}: keys {sorted(map(str, m))}, expected {sorted(keys)}")
    if m["v"] != VERSION:
        raise MalformedLogData(f"{what}: version {m['v']!r}, expected {VERSION}")
    # One encoding per value (RFC 8949 section 4.2.1), nothing after it.
    if _dumps(m) != data:
        raise MalformedLogData(f"{what}: not in canonical CBOR encoding, or bytes after it")
    return m


def _uint(m: dict[str, Any], key: str, what: str) -> int:
    value = m[key]
    if type(value) is not int or value < 0:
        raise MalformedLogData(f"{what}: {key} must be an unsigned integer, got {value!r}")
    return value


def _hash(m: dict[str, Any], key: str, what: str) -> bytes:
    value = m[key]
    if not isinstance(value, bytes) or len(value) != merkle.HASH_SIZE:
        raise MalformedLogData(f"{what}: {key} must be a 32-byte hash")
    return value


def _path(m: dict[str, Any], what: str) -> tuple[bytes, ...]:
    path = m["path"]
    if not isinstance(path, list) or len(path) > MAX_PATH:
        raise MalformedLogData(f"{what}: path must be a list of at most {MAX_PATH} hashes")
    for i, h in enumerate(path):
        if not isinstance(h, bytes) or len(h) != merkle.HASH_SIZE:
            raise MalformedLogData(f"{what}: path[{i}] must be a 32-byte hash")
    return tuple(path)


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


class TreeHeadSigner(Protocol):
    """What signs tree heads: the file key now, a PKCS#11 key later."""

    @property
    def algorithm(self) -> str:
        """One of :data:`ALGORITHMS`."""

    def public_key_der(self) -> bytes:
        """The key's SubjectPublicKeyInfo, DER."""

    def sign(self, message: bytes) -> bytes:
        """The signature over ``message`` (ECDSA: DER-encoded)."""


def _algorithm_of(key: object) -> str:
    if isinstance(key, Ed25519PublicKey | Ed25519PrivateKey):
        return ALG_ED25519
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return ALG_P256
    raise LogProofError(f"log keys are Ed25519 or ECDSA P-256, not {type(key).__name__}")


class FileSigner:
    """A :class:`TreeHeadSigner` over an in-memory private key (read from
    a PEM file by :func:`load_signer`)."""

    def __init__(self, key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self._alg = _algorithm_of(key)

    @property
    def algorithm(self) -> str:
        return self._alg

    def public_key_der(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, message: bytes) -> bytes:
        if isinstance(self._key, Ed25519PrivateKey):
            return self._key.sign(message)
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))


def generate_signer(algorithm: str = ALG_ED25519) -> tuple[FileSigner, bytes]:
    """A new key: its signer and its PKCS#8 PEM (unencrypted; the caller
    writes it with mode 0600)."""
    key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == ALG_ED25519:
        key = Ed25519PrivateKey.generate()
    elif algorithm == ALG_P256:
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise LogProofError(f"unknown log key algorithm {algorithm!r}; one of {', '.join(ALGORITHMS)}")
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return FileSigner(key), pem


def load_signer(pem: bytes) -> FileSigner:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise MalformedLogData("log key: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise MalformedLogData(f"log key: Ed25519 or ECDSA P-256 expected, got {type(key).__name__}")
    try:
        return FileSigner(key)
    except LogProofError as exc:
        raise MalformedLogData(str(exc)) from None


@dataclass(frozen=True)
class LogKey:
    """A trusted log public key (SubjectPublicKeyInfo DER)."""

    spki: bytes
    algorithm: str
    log_id: bytes

    def __post_init__(self) -> None:
        if self.log_id != hashlib.sha256(self.spki).digest():
            raise MalformedLogData("log key: log_id is not the SHA-256 of the key's SubjectPublicKeyInfo")
        if self.algorithm not in ALGORITHMS:
            raise MalformedLogData(
                f"log key: algorithm {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}"
            )

    @classmethod
    def from_der(cls, spki: bytes) -> LogKey:
        try:
            key = serialization.load_der_public_key(spki)
        except (ValueError, TypeError):
            raise MalformedLogData("log public key: not a DER SubjectPublicKeyInfo") from None
        try:
            alg = _algorithm_of(key)
        except LogProofError as exc:
            raise MalformedLogData(f"log public key: {exc}") from None
        return cls(spki, alg, hashlib.sha256(spki).digest())

    @classmethod
    def from_pem(cls, pem: bytes) -> LogKey:
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError):
            raise MalformedLogData("log public key: not a PEM public key") from None
        return cls.from_der(
            key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def to_pem(self) -> bytes:
        return serialization.load_der_public_key(self.spki).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, sig: bytes, message: bytes) -> None:
        key = serialization.load_der_public_key(self.spki)
        try:
            if isinstance(key, Ed25519PublicKey):
                key.verify(sig, message)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
            else:  # pragma: no cover - from_der admits only these two
                raise LogProofError("unsupported log key")
        except InvalidSignature:
            raise LogProofError(
                f"tree head signature does not verify under log key {self.log_id.hex()[:16]}…"
            ) from None


# ---------------------------------------------------------------------------
# Tree heads
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeHead:
    """The signed content of a tree head."""

    log_id: bytes
    size: int
    root: bytes
    time_ms: int

    def to_cbor(self) -> bytes:
        return _dumps(
            {"v": VERSION, "log": self.log_id, "size": self.size, "root": self.root, "time": self.time_ms}
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> TreeHead:
        what = "tree head"
        m = _map(data, what, {"v", "log", "size", "root", "time"})
        head = cls(
            _hash(m, "log", what), _uint(m, "size", what), _hash(m, "root", what), _uint(m, "time", what)
        )
        if head.to_cbor() != data:
            raise MalformedLogData("tree head: not in canonical CBOR encoding")
        return head


def sign_tree_head(signer: TreeHeadSigner, size: int, root: bytes, time_ms: int) -> bytes:
    """The signed tree head (CBOR bytes) for ``size`` and ``root``."""
    log_id = hashlib.sha256(signer.public_key_der()).digest()
    head = TreeHead(log_id, size, root, time_ms).to_cbor()
    sig = signer.sign(SIGNED_PREFIX + head)
    return _dumps({"v": VERSION, "head": head, "alg": signer.algorithm, "sig": sig})


@dataclass(frozen=True)
class VerifiedTreeHead:
    """A tree head whose signature verified under a trusted log key. Only
    :func:`verify_tree_head` constructs it."""

    head: TreeHead
    key: LogKey
    raw: bytes = field(repr=False)
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _VERIFIED:
            raise TypeError("VerifiedTreeHead is constructed by verify_tree_head only")

    @property
    def size(self) -> int:
        return self.head.size

    @property
    def root(self) -> bytes:
        return self.head.root


def parse_signed_tree_head(data: bytes) -> tuple[TreeHead, str, bytes, bytes]:
    """(head, alg, sig, head bytes) of a signed tree head, unverified."""
    what = "signed tree head"
    m = _map(data, what, {"v", "head", "alg", "sig"})
    if not isinstance(m["head"], bytes) or not isinstance(m["sig"], bytes):
        raise MalformedLogData(f"{what}: head and sig must be byte strings")
    if m["alg"] not in ALGORITHMS:
        raise MalformedLogData(f"{what}: alg {m['alg']!r} is not one of {', '.join(ALGORITHMS)}")
    return TreeHead.from_cbor(m["head"]), m["alg"], m["sig"], m["head"]


def verify_tree_head(data: bytes, keys: Sequence[LogKey]) -> VerifiedTreeHead:
    """Verify a signed tree head under one of the trusted ``keys`` (chosen
    by the head's log ID); raise LogProofError or MalformedLogData."""
    if not keys:
        raise LogProofError("no trusted log key given")
    head, alg, sig, head_bytes = parse_signed_tree_head(data)
    key = next((k for k in keys if k.log_id == head.log_id), None)
    if key is None:
        raise LogProofError(
            f"tree head of log {head.log_id.hex()[:16]}…, not one of the {len(keys)} trusted log key(s)"
        )
    if alg != key.algorithm:
        raise LogProofError(f"tree head says alg {alg}, the trusted log key is {key.algorithm}")
    key.verify(sig, SIGNED_PREFIX + head_bytes)
    return VerifiedTreeHead(head, key, data, _token=_VERIFIED)


# ---------------------------------------------------------------------------
# Proofs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InclusionProof:
    """RFC 9162 inclusion proof (section 2.1.3) of leaf ``index`` in the tree of ``size``."""

    index: int
    size: int
    path: tuple[bytes, ...]

    def to_cbor(self) -> bytes:
        return _dumps(
            {"v": VERSION, "t": "inclusion", "index": self.index, "size": self.size, "path": list(self.path)}
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> InclusionProof:
        what = "inclusion proof"
        m = _map(data, what, {"v", "t", "index", "size", "path"})
        if m["t"] != "inclusion":
            raise MalformedLogData(f"{what}: t is {m['t']!r}, expected 'inclusion'")
        return cls(_uint(m, "index", what), _uint(m, "size", what), _path(m, what))

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "size": self.size, "path": [h.hex() for h in self.path]}


@dataclass(frozen=True)
class ConsistencyProof:
    """RFC 9162 consistency proof (section 2.1.4) from ``old_size`` to ``new_size``."""

    old_size: int
    new_size: int
    path: tuple[bytes, ...]

    def to_cbor(self) -> bytes:
        return _dumps(
            {
                "v": VERSION,
                "t": "consistency",
                "old": self.old_size,
                "new": self.new_size,
                "path": list(self.path),
            }
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> ConsistencyProof:
        what = "consistency proof"
        m = _map(data, what, {"v", "t", "old", "new", "path"})
        if m["t"] != "consistency":
            raise MalformedLogData(f"{what}: t is {m['t']!r}, expected 'consistency'")
        return cls(_uint(m, "old", what), _uint(m, "new", what), _path(m, what))

    def to_json(self) -> dict[str, Any]:
        return {"old_size": self.old_size, "new_size": self.new_size, "path": [h.hex() for h in self.path]}


@dataclass(frozen=True)
class VerifiedInclusion:
    """An entry proven to be leaf ``index`` of a tree whose head verified.
    Only :func:`verify_inclusion` constructs it."""

    entry: bytes
    index: int
    tree_head: VerifiedTreeHead
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _VERIFIED:
            raise TypeError("VerifiedInclusion is constructed by verify_inclusion only")


@dataclass(frozen=True)
class VerifiedConsistency:
    """The newer tree head verified and extends the older one (append-only
    between them). Only :func:`verify_consistency` constructs it."""

    old: VerifiedTreeHead
    new: VerifiedTreeHead
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _VERIFIED:
            raise TypeError("VerifiedConsistency is constructed by verify_consistency only")


def verify_inclusion(
    entry: bytes, proof: InclusionProof, tree_head: bytes, keys: Sequence[LogKey]
) -> VerifiedInclusion:
    """Verify ``tree_head`` under ``keys``, then that ``proof`` puts
    ``entry`` (its bytes) in that tree (RFC 9162 section 2.1.3.2)."""
    head = verify_tree_head(tree_head, keys)
    if proof.size != head.size:
        raise LogProofError(
            f"inclusion proof is for a tree of size {proof.size}, the tree head has {head.size}"
        )
    merkle.verify_inclusion(proof.index, proof.size, merkle.leaf_hash(entry), proof.path, head.root)
    return VerifiedInclusion(entry, proof.index, head, _token=_VERIFIED)


def verify_consistency(
    old_head: bytes, new_head: bytes, proof: ConsistencyProof, keys: Sequence[LogKey]
) -> VerifiedConsistency:
    """Verify both tree heads under ``keys`` (same log), then that
    ``proof`` shows the new tree extends the old one (RFC 9162 section
    2.1.4.2). A client holding ``old_head`` detects so a rewritten or
    dropped entry. An old head of size 0 needs no proof (``proof.path``
    must be empty)."""
    old = verify_tree_head(old_head, keys)
    new = verify_tree_head(new_head, keys)
    if old.head.log_id != new.head.log_id:
        raise LogProofError("the two tree heads are from different logs")
    if (proof.old_size, proof.new_size) != (old.size, new.size):
        raise LogProofError(
            f"consistency proof is from {proof.old_size} to {proof.new_size}, "
            f"the tree heads have sizes {old.size} and {new.size}"
        )
    if old.size > new.size:
        raise LogProofError(
            f"the newer tree head has {new.size} entries, fewer than the older one's {old.size}"
        )
    if old.size == 0:
        if proof.path:
            raise LogProofError("consistency from the empty tree needs an empty proof")
        if old.root != merkle.EMPTY_ROOT:
            raise LogProofError("a tree head of size 0 with a root other than the empty root")
    else:
        merkle.verify_consistency(old.size, new.size, old.root, new.root, proof.path)
    return VerifiedConsistency(old, new, _token=_VERIFIED)
