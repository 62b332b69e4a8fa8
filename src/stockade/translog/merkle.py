"""The Merkle tree of RFC 9162 (Certificate Transparency 2.0), section 2.1:
hashing, inclusion and consistency proofs, and their verification. No I/O.

Hashing (RFC 9162 section 2.1.1), with SHA-256:

- the hash of the empty list is ``SHA-256()``;
- a leaf is ``SHA-256(0x00 || entry)``;
- an inner node is ``SHA-256(0x01 || left || right)``, the list of ``n > 1``
  leaves split at ``k``, the largest power of two smaller than ``n``.

Proof generation follows the recursive definitions PATH (section 2.1.3.1)
and PROOF/SUBPROOF (section 2.1.4.1) over the tree's leaf hashes, with a
cache of the roots of perfect subtrees (those never change in an
append-only tree). Verification is exactly the iterative algorithm of
sections 2.1.3.2 and 2.1.4.2, step by step (the comments number the steps),
on hashes checked to be 32 bytes long. Two cases the RFC leaves to the
caller are decided as Certificate Transparency clients (transparency-dev/merkle,
``proof/verify.go``) decide them: a consistency proof from the empty tree
is refused (RFC 9162 defines proofs for ``0 < first``; every tree is
consistent with the empty one, so such a "proof" says nothing), and two
equal sizes need an empty proof and equal roots.

Every failure raises :class:`~stockade.errors.LogProofError` (exit 110) or,
for a hash of the wrong length, :class:`~stockade.errors.MalformedLogData`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from stockade.errors import LogProofError, MalformedLogData

HASH_SIZE = 32
#: RFC 9162 section 2.1.1: MTH({}) = HASH().
EMPTY_ROOT = hashlib.sha256(b"").digest()
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 section 2.1.1: MTH({d(0)}) = HASH(0x00 || d(0))."""
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 section 2.1.1: HASH(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n > 1``): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise MalformedLogData(f"{what}: expected a {HASH_SIZE}-byte SHA-256 hash, got {got}")
    return value


def _check_path(path: Sequence[bytes], what: str) -> list[bytes]:
    return [_check_hash(p, f"{what}[{i}]") for i, p in enumerate(path)]


class MerkleTree:
    """An append-only RFC 9162 tree over leaf hashes, in memory."""

    def __init__(self, leaf_hashes: Sequence[bytes] = ()) -> None:
        self._leaves: list[bytes] = []
        #: (start, width) -> root hash, for perfect (power-of-two wide)
        #: subtrees only: they are final once their leaves exist.
        self._perfect: dict[tuple[int, int], bytes] = {}
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        return len(self._leaves)

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash; returns its index."""
        self._leaves.append(_check_hash(leaf, "leaf hash"))
        return len(self._leaves) - 1

    def leaf(self, index: int) -> bytes:
        return self._leaves[index]

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= len(self._leaves):
            raise LogProofError(f"tree size {size} is not in 0..{len(self._leaves)}")

    def _mth(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) (RFC 9162 section 2.1.1)."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return self._leaves[start]
        perfect = n & (n - 1) == 0
        if perfect:
            cached = self._perfect.get((start, n))
            if cached is not None:
                return cached
        k = split_point(n)
        h = node_hash(self._mth(start, start + k), self._mth(start + k, end))
        if perfect:
            self._perfect[(start, n)] = h
        return h

    def root(self, size: int | None = None) -> bytes:
        """The root hash of the first ``size`` leaves (all by default)."""
        size = len(self._leaves) if size is None else size
        self._check_size(size)
        return self._mth(0, size)

    def inclusion_path(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) (RFC 9162 section 2.1.3.1)."""
        size = len(self._leaves) if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise LogProofError(f"leaf index {index} is not in a tree of size {size}")
        return self._path(index, 0, size)

    def _path(self, m: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = split_point(n)
        if m < k:
            return [*self._path(m, start, start + k), self._mth(start + k, end)]
        return [*self._path(m - k, start + k, end), self._mth(start, start + k)]

    def consistency_path(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) (RFC 9162 section 2.1.4.1), for
        ``0 < old_size <= new_size``; empty when the sizes are equal."""
        new_size = len(self._leaves) if new_size is None else new_size
        self._check_size(new_size)
        if not 0 < old_size <= new_size:
            raise LogProofError(
                f"a consistency proof needs 0 < old size <= new size, got {old_size} and {new_size}"
            )
        return self._subproof(old_size, 0, new_size, True)

    def _subproof(self, m: int, start: int, end: int, whole: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if whole else [self._mth(start, end)]
        k = split_point(n)
        if m <= k:
            return [*self._subproof(m, start, start + k, whole), self._mth(start + k, end)]
        return [*self._subproof(m - k, start + k, end, False), self._mth(start, start + k)]


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """The root hash that ``path`` proves ``leaf`` (a leaf hash) to be at
    ``index`` under, in a tree of ``size`` leaves: RFC 9162 section 2.1.3.2,
    steps 1 to 4 and the ``sn == 0`` check of step 5. The caller compares
    the result with a root hash it trusts (:func:`verify_inclusion`)."""
    leaf = _check_hash(leaf, "leaf hash")
    proof = _check_path(path, "inclusion path")
    # 1. leaf_index must be < tree_size.
    if not 0 <= index < size:
        raise LogProofError(f"inclusion proof: leaf index {index} is not below the tree size {size}")
    # 2. fn = leaf_index, sn = tree_size - 1.  3. r = hash.
    fn, sn = index, size - 1
    r = leaf
    # 4. For each value p in the inclusion_path array:
    for i, p in enumerate(proof):
        # a. If sn is 0, stop the iteration and fail the proof verification.
        if sn == 0:
            raise LogProofError(
                f"inclusion proof: {len(proof)} hashes for leaf {index} of {size}, {i} expected"
            )
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. r = HASH(0x01 || p || r)
            r = node_hash(p, r)
            # ii. If LSB(fn) is not set, right-shift fn and sn equally until
            #     either LSB(fn) is set or fn is 0.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            # Otherwise: i. r = HASH(0x01 || r || p)
            r = node_hash(r, p)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. sn must be 0 (the path reached the root).
    if sn != 0:
        raise LogProofError(f"inclusion proof: {len(proof)} hashes for leaf {index} of {size}: too few")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 section 2.1.3.2: raise unless ``path`` proves ``leaf`` at
    ``index`` in the tree of ``size`` leaves whose root is ``root``."""
    root = _check_hash(root, "root hash")
    computed = root_from_inclusion_proof(index, size, leaf, path)
    if computed != root:
        raise LogProofError(
            f"inclusion proof for leaf {index} of {size} leads to root {computed.hex()}, "
            f"the tree head says {root.hex()}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]
) -> None:
    """RFC 9162 section 2.1.4.2: raise unless ``path`` proves that the tree
    of ``old_size`` leaves with root ``old_root`` is a prefix of the tree of
    ``new_size`` leaves with root ``new_root`` (module docstring for sizes
    equal and 0)."""
    first_hash = _check_hash(old_root, "old root hash")
    second_hash = _check_hash(new_root, "new root hash")
    proof = _check_path(path, "consistency path")
    if not 0 <= old_size <= new_size:
        raise LogProofError(f"consistency proof: old size {old_size} is above the new size {new_size}")
    if old_size == 0:
        raise LogProofError("consistency proof from the empty tree: every tree extends it, nothing to prove")
    if old_size == new_size:
        if proof:
            raise LogProofError(f"consistency proof: equal sizes ({old_size}) need an empty proof")
        if first_hash != second_hash:
            raise LogProofError(
                f"two tree heads of size {old_size} with different roots: {first_hash.hex()} and "
                f"{second_hash.hex()} (the log was rewritten)"
            )
        return
    # 1. If consistency_path is an empty array, fail.
    if not proof:
        raise LogProofError(f"consistency proof from {old_size} to {new_size} is empty")
    # 2. If first is an exact power of 2, prepend first_hash to the path.
    if old_size & (old_size - 1) == 0:
        proof = [first_hash, *proof]
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 4. If LSB(fn) is set, right-shift fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first value of the path.
    fr = sr = proof[0]
    # 6. For each subsequent value c in the path:
    for c in proof[1:]:
        # a. If sn is 0, stop the iteration and fail the proof verification.
        if sn == 0:
            raise LogProofError(f"consistency proof from {old_size} to {new_size}: too many hashes")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. fr = HASH(0x01 || c || fr), sr = HASH(0x01 || c || sr)
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # ii. If LSB(fn) is not set, right-shift fn and sn equally until
            #     either LSB(fn) is set or fn is 0.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            # Otherwise: i. sr = HASH(0x01 || sr || c)
            sr = node_hash(sr, c)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. fr == first_hash, sr == second_hash, and sn == 0.
    if sn != 0:
        raise LogProofError(f"consistency proof from {old_size} to {new_size}: too few hashes")
    if fr != first_hash:
        raise LogProofError(
            f"consistency proof from {old_size} to {new_size} leads to old root {fr.hex()}, "
            f"the old tree head says {first_hash.hex()} (an entry was rewritten or dropped)"
        )
    if sr != second_hash:
        raise LogProofError(
            f"consistency proof from {old_size} to {new_size} leads to new root {sr.hex()}, "
            f"the new tree head says {second_hash.hex()}"
        )
