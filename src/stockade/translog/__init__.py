"""stockade's transparency log: an append-only Merkle tree log (RFC 9162
hashing and proofs) of typed entries (certificates, refusal digests,
package signatures) with signed tree heads, kept crash-safe in a state
directory (docs/transparency-log.md, ADR 0024).

Layering: imports only :mod:`stockade.errors`, cbor2 and cryptography;
never the client, host, Keep or CLI. Verification takes the trusted log
key(s) explicitly and returns verified types (:mod:`.treehead`).
"""

from __future__ import annotations

from stockade.translog.entries import (
    CertificateEntry,
    LogEntry,
    PackageSignatureEntry,
    RefusalDigestEntry,
    decode_entry,
    encode_entry,
)
from stockade.translog.store import TransparencyLog
from stockade.translog.treehead import (
    ConsistencyProof,
    FileSigner,
    InclusionProof,
    LogKey,
    TreeHeadSigner,
    VerifiedConsistency,
    VerifiedInclusion,
    VerifiedTreeHead,
    verify_consistency,
    verify_inclusion,
    verify_tree_head,
)

__all__ = [
    "CertificateEntry",
    "ConsistencyProof",
    "FileSigner",
    "InclusionProof",
    "LogEntry",
    "LogKey",
    "PackageSignatureEntry",
    "RefusalDigestEntry",
    "TransparencyLog",
    "TreeHeadSigner",
    "VerifiedConsistency",
    "VerifiedInclusion",
    "VerifiedTreeHead",
    "decode_entry",
    "encode_entry",
    "verify_consistency",
    "verify_inclusion",
    "verify_tree_head",
]
