"""Signed workload packages: format, content digest, Ed25519 signatures
(docs/package.md). Imports wire, errors, the standard library, cryptography
and cbor2 only; the untrusted host never imports it."""

from __future__ import annotations

from stockade.package.format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    ROLES,
    Package,
    Signature,
    build,
    content_digest,
)
from stockade.package.manifest import Manifest, load_toml
from stockade.package.signing import (
    SIGNED_PREFIX,
    SignatureRejected,
    Signer,
    VerifiedPackage,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    sign,
    signed_bytes,
    verify_signatures,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ROLES",
    "SIGNED_PREFIX",
    "Manifest",
    "Package",
    "Signature",
    "SignatureRejected",
    "Signer",
    "VerifiedPackage",
    "build",
    "content_digest",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_toml",
    "sign",
    "signed_bytes",
    "verify_signatures",
]
