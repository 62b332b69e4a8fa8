"""Detached Ed25519 signatures over a package's content digest and the
signer's role.

The signed bytes are exactly ``SIGNED_PREFIX + role + b"\0" + digest``:
the ASCII label ``stockade-package-signature/v2``, one zero byte, the role
(``author`` or ``reviewer``, ASCII, never containing a zero byte), one zero
byte, then the 32-byte SHA-256 content digest; docs/package.md. The role is
signed (since v2, issue 13): it is what the key holder says it signed as,
and nobody else can change it, so the Keep's event log and the deploy
summary may show it as attested. Whether a key *may* sign as a reviewer is
still the verifier's trust configuration. A v1 signature (the role outside
the signed bytes) is refused with a message saying to re-sign.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stockade.errors import UsageError, VerificationFailed
from stockade.package.format import ROLES, SIG_ALG, Package, Signature

SIGNED_PREFIX = b"stockade-package-signature/v2\x00"
#: The v1 label: signatures over the digest only, the role outside them.
#: Only recognised, to say why such a signature is refused.
LEGACY_V1_PREFIX = b"stockade-package-signature/v1\x00"


class SignatureRejected(VerificationFailed):
    """VerificationFailed (same exit code and problem type) with a title
    that does not speak of attestation."""

    title = "package signature verification failed"


_VERIFIED = object()


def signed_bytes(digest: bytes, role: str) -> bytes:
    """What a signature entry with ``role`` signs for a package of content
    digest ``digest``."""
    if role not in ROLES:
        raise UsageError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return SIGNED_PREFIX + role.encode("ascii") + b"\x00" + digest


def is_legacy_v1(public_key: Ed25519PublicKey, sig: Signature, digest: bytes) -> bool:
    """True if ``sig`` is a valid v1 signature (digest only, role unsigned)."""
    try:
        public_key.verify(sig.sig, LEGACY_V1_PREFIX + digest)
    except InvalidSignature:
        return False
    return True


def rejection_reason(public_key: Ed25519PublicKey, sig: Signature, digest: bytes) -> str:
    """Why a trusted key's signature entry does not verify, in words."""
    if is_legacy_v1(public_key, sig, digest):
        return (
            "is a v1 signature, which does not sign the role; re-sign the package with this "
            "version of stockade (stockade package sign)"
        )
    return f"does not verify over role {sig.role} and digest {digest.hex()}"


def key_id(public_key: Ed25519PublicKey) -> str:
    """SHA-256 hex of the raw 32-byte public key."""
    return raw_key_id(raw_public_key(public_key))


def raw_key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(package_bytes: bytes, private_key: Ed25519PrivateKey, role: str = "author") -> bytes:
    """The package with a signature by ``private_key`` added (replacing an
    earlier one by the same key). Checks the package first."""
    if role not in ROLES:
        raise UsageError(f"role {role!r} is not one of {', '.join(ROLES)}")
    pkg = Package.from_bytes(package_bytes)
    kid = key_id(private_key.public_key())
    new = Signature(alg=SIG_ALG, kid=kid, role=role, sig=private_key.sign(signed_bytes(pkg.digest, role)))
    old = next((s for s in pkg.signatures if s.kid == kid), None)
    if old is not None and (old.role, old.sig) == (new.role, new.sig):
        new = old  # the same signature (Ed25519 is deterministic): keep where it is logged
    others = tuple(s for s in pkg.signatures if s.kid != kid)
    return dataclasses.replace(pkg, signatures=(*others, new)).to_bytes()


@dataclass(frozen=True)
class Signer:
    """A trusted key whose signature verified, and the role it signed."""

    kid: str
    role: str


@dataclass(frozen=True)
class VerifiedPackage:
    """A package whose digest was signed by at least ``required`` trusted
    keys. Only :func:`verify_signatures` constructs it."""

    package: Package
    signers: tuple[Signer, ...]
    untrusted: tuple[str, ...]
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _VERIFIED:
            raise TypeError("VerifiedPackage is constructed by verify_signatures only")

    @property
    def digest(self) -> bytes:
        return self.package.digest


def verify_signatures(
    package: Package, trusted_public_keys: Sequence[Ed25519PublicKey], required: int = 1
) -> VerifiedPackage:
    """Check every signature made by a trusted key; raise VerificationFailed
    if one of them is invalid or fewer than ``required`` are valid.
    Signatures by keys that are not trusted are listed, never counted."""
    if required < 1:
        raise UsageError("required must be at least 1")
    trusted = {key_id(k): k for k in trusted_public_keys}
    signers: list[Signer] = []
    untrusted: list[str] = []
    for sig in package.signatures:
        key = trusted.get(sig.kid)
        if key is None:
            untrusted.append(sig.kid)
            continue
        try:
            key.verify(sig.sig, signed_bytes(package.digest, sig.role))
        except InvalidSignature:
            raise SignatureRejected(
                f"package: signature by trusted key {sig.kid[:16]}… ({sig.role}) "
                f"{rejection_reason(key, sig, package.digest)}"
            ) from None
        signers.append(Signer(kid=sig.kid, role=sig.role))
    if len(signers) < required:
        raise SignatureRejected(
            f"package: {len(signers)} valid signature(s) by trusted keys, {required} required "
            f"(digest {package.digest.hex()}; {len(untrusted)} signature(s) by untrusted keys ignored)"
        )
    return VerifiedPackage(package, tuple(signers), tuple(untrusted), _token=_VERIFIED)


def generate_key(out: Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (PKCS#8 PEM, mode 0600, never
    overwriting) to ``out`` and its public key (SPKI PEM) to ``out.pub``."""
    pub_path = out.with_name(out.name + ".pub")
    for p in (out, pub_path):
        if p.exists():
            raise UsageError(f"{p} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot create {out}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return out, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise UsageError(f"cannot read key {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise UsageError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path}: not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read public key {path}: {exc.strerror}") from None
    except ValueError:
        raise UsageError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path}: not an Ed25519 public key")
    return key
