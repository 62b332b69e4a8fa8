"""Package signatures in the transparency log: checking the ``log`` field
``stockade package sign --log`` stores beside a signature (docs/package.md,
"Signatures in the log"; docs/transparency-log.md, "Package signatures in
the log"). No I/O.

A signature by key K with role R over content digest D is *logged* when the
package carries, beside it, a signed tree head and an inclusion proof that
put the log entry ``package-signature {D, K, R, sig}``
(:class:`stockade.translog.PackageSignatureEntry`, the very bytes the log
hashed) in the tree, and the tree head verifies under a log key whose log
ID (SHA-256 of its SubjectPublicKeyInfo) the verifier pinned. The entry is
rebuilt here from the package's own digest, the trusted raw key and the
signature's own role and bytes: a proof for another package, another key,
another role or another signature leads to another leaf and does not hold.

:func:`logged_signers` sorts the signatures by trusted keys into those that
count and those that do not, with the reason for each; whoever enforces
``[workload] require_log`` (the deploying client, stockade.client.plan)
counts only the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from stockade.errors import LogProofError, MalformedLogData, PolicyRejected
from stockade.package.format import Package, Signature
from stockade.package.signing import key_id, raw_public_key
from stockade.translog import (
    InclusionProof,
    LogKey,
    PackageSignatureEntry,
    VerifiedInclusion,
    encode_entry,
    verify_inclusion,
    verify_tree_head,
)


class UnloggedSignatures(PolicyRejected):
    """PolicyRejected (exit 112, same problem type): a policy requires
    logged signatures (``[workload] require_log``) and fewer than its
    minimum of the trusted signatures carry an inclusion proof that
    verifies under a pinned log key. A subclass only for its title."""

    title = "package signatures not in a trusted log"


def signature_entry(digest: bytes, signer_key: bytes, sig: Signature) -> PackageSignatureEntry:
    """The log entry that records ``sig`` by raw Ed25519 key ``signer_key``
    over content digest ``digest``."""
    return PackageSignatureEntry(package_digest=digest, signer_key=signer_key, role=sig.role, sig=sig.sig)


def verify_logged(
    digest: bytes, signer_key: bytes, sig: Signature, log_ids: Sequence[bytes]
) -> VerifiedInclusion:
    """Check ``sig``'s log field: its key is one of the pinned ``log_ids``,
    its tree head verifies under that key, and its inclusion proof puts the
    entry for (``digest``, ``signer_key``, the role, the signature) in that
    tree. Raises LogProofError (no log field, an untrusted log, a proof
    that does not hold) or MalformedLogData (a log field that does not
    parse as a tree head or key)."""
    if sig.log is None:
        raise LogProofError(
            "no inclusion proof: the signature was not recorded in a log (stockade package sign --log)"
        )
    log = sig.log
    key = LogKey.from_der(log.key)
    if key.log_id not in log_ids:
        raise LogProofError(f"its log {key.log_id.hex()} is not one of the pinned log keys")
    try:
        head = verify_tree_head(log.tree_head, [key])
    except LogProofError as exc:
        raise LogProofError(f"its tree head does not verify: {exc.detail}") from None
    entry = encode_entry(signature_entry(digest, signer_key, sig))
    try:
        return verify_inclusion(
            entry, InclusionProof(log.index, head.size, log.inclusion), log.tree_head, [key]
        )
    except LogProofError as exc:
        raise LogProofError(
            "its inclusion proof does not hold for this package digest, key, role and signature "
            f"({exc.detail})"
        ) from None


@dataclass(frozen=True)
class LogCheck:
    """The log check of one signature by a trusted key: ``inclusion`` when
    it counts, ``reason`` when it does not."""

    kid: str
    role: str
    inclusion: VerifiedInclusion | None
    reason: str

    @property
    def counted(self) -> bool:
        return self.inclusion is not None

    def describe(self) -> str:
        if self.inclusion is not None:
            head = self.inclusion.tree_head
            return (
                f"{self.role} {self.kid[:16]}…: entry {self.inclusion.index} of log "
                f"{head.head.log_id.hex()[:16]}… (tree size {head.size})"
            )
        return f"{self.role} {self.kid[:16]}…: not counted, {self.reason}"


def logged_signers(
    package: Package, trusted_public_keys: Sequence[Ed25519PublicKey], log_ids: Sequence[bytes]
) -> tuple[LogCheck, ...]:
    """One :class:`LogCheck` per signature of ``package`` by a key of
    ``trusted_public_keys`` (signatures by other keys are not checked: they
    never count). The signature itself is not checked here:
    :func:`stockade.package.verify_signatures` does that."""
    trusted = {key_id(k): raw_public_key(k) for k in trusted_public_keys}
    out: list[LogCheck] = []
    for sig in package.signatures:
        raw = trusted.get(sig.kid)
        if raw is None:
            continue
        try:
            included = verify_logged(package.digest, raw, sig, log_ids)
        except (LogProofError, MalformedLogData) as exc:
            out.append(LogCheck(sig.kid, sig.role, None, exc.detail))
            continue
        out.append(LogCheck(sig.kid, sig.role, included, ""))
    return tuple(out)


def require_logged(
    package: Package,
    trusted_public_keys: Sequence[Ed25519PublicKey],
    log_ids: Sequence[bytes],
    required: int,
    rule: str = "workload.require_log",
    enforcer: str = "",
) -> tuple[tuple[Ed25519PublicKey, ...], tuple[LogCheck, ...]]:
    """The trusted keys whose signatures are logged (:func:`logged_signers`),
    and every check; UnloggedSignatures naming ``rule``, each signature's
    reason and ``enforcer`` when fewer than ``required`` are."""
    checks = logged_signers(package, trusted_public_keys, log_ids)
    counted = {c.kid for c in checks if c.counted}
    if len(counted) < required:
        detail = "; ".join(c.describe() for c in checks) or "no signature by a trusted key"
        by = f" ({enforcer})" if enforcer else ""
        raise UnloggedSignatures(
            f"{rule}: expected at least {required} signature(s) by trusted keys with an inclusion proof "
            f"under a pinned log key ({', '.join(i.hex()[:16] + '…' for i in log_ids)}); actual "
            f"{len(counted)}: {detail}{by}"
        )
    keys = tuple(k for k in trusted_public_keys if key_id(k) in counted)
    return keys, checks


__all__ = [
    "LogCheck",
    "UnloggedSignatures",
    "logged_signers",
    "require_logged",
    "signature_entry",
    "verify_logged",
]
