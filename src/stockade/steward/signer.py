"""The steward's signing keys: the :class:`Signer` protocol (the CA key,
ECDSA P-384 with SHA-384) and its file implementation; the PKCS#11 one is
:mod:`stockade.steward.pkcs11` (imported only when a token is used).

Certificates are built with pyca/cryptography's ``CertificateBuilder``,
which signs with a private key *object*: cryptography identifies the key
type with ``isinstance`` against its abstract key classes and then calls
the object's Python ``sign(data, ECDSA(hash))`` method
(cryptography ``src/rust/src/x509/sign.rs``, ``identify_key_type`` and
``sign_data``). :class:`SignerKey` is such an object over any
:class:`Signer`, so a key that never leaves a token signs certificates
that cryptography itself assembles (TBSCertificate, algorithm identifier
ecdsa-with-SHA384, BIT STRING). This is the "custom signer" the
cryptography maintainers point to for HSM and KMS keys
(https://github.com/pyca/cryptography/issues/11616, example
https://github.com/reaperhulk/vault-signing); the result is verified with
cryptography in the tests (``verify_directly_issued_by``), and
:func:`stockade.steward.ca.build_certificate` checks every certificate it
signs before returning it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.errors import UsageError

#: The CA's curve and hash (CNSA suite level; RFC 5480 section 4, RFC 5758).
CA_CURVE = ec.SECP384R1()
CA_HASH = hashes.SHA384()


class Signer(Protocol):
    """The CA signing key, wherever it lives."""

    @property
    def location(self) -> str:
        """Where the key is, for people ("file /x/ca-key.pem", "PKCS#11
        token 'steward' key 'stockade-ca'"); never a secret."""

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The P-384 public key."""

    def sign(self, tbs: bytes) -> bytes:
        """The DER ECDSA-SHA384 signature (RFC 3279 Ecdsa-Sig-Value) over ``tbs``."""


class FileSigner:
    """A CA key held in memory, read from a PEM file. Development only:
    anyone who reads the file can issue certificates (docs/steward.md)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, path: Path | None = None) -> None:
        if not isinstance(key.curve, ec.SECP384R1):
            raise UsageError(f"CA key: ECDSA P-384 expected, got curve {key.curve.name}")
        self._key = key
        self._path = path

    @property
    def location(self) -> str:
        return f"file {self._path}" if self._path else "file (in memory)"

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, tbs: bytes) -> bytes:
        return self._key.sign(tbs, ec.ECDSA(CA_HASH))


def generate_file_key(path: Path) -> FileSigner:
    """A new P-384 key written to ``path`` (PKCS#8 PEM, mode 0600, created
    exclusively: an existing file is never overwritten)."""
    key = ec.generate_private_key(CA_CURVE)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists; the steward never overwrites a CA key") from None
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return FileSigner(key, path)


def load_file_key(path: Path) -> FileSigner:
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the CA key {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise UsageError(f"the CA key {path} is readable by others (mode {mode:04o}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"{path}: an ECDSA P-384 key expected, got {type(key).__name__}")
    return FileSigner(key, path)


def _unsupported(what: str) -> NoReturn:
    raise TypeError(f"the steward's CA key does not support {what}")


class SignerKey(ec.EllipticCurvePrivateKey):
    """A cryptography private-key object that signs through a
    :class:`Signer` (module docstring). Only ECDSA with SHA-384 over the
    whole message is accepted; everything that would need the private
    value (export, ECDH) raises."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer

    def sign(
        self, data: bytes | bytearray | memoryview, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA) or not isinstance(
            signature_algorithm.algorithm, hashes.SHA384
        ):
            _unsupported(f"signature algorithm {signature_algorithm!r} (only ECDSA with SHA-384)")
        return self._signer.sign(bytes(data))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._signer.public_key()

    @property
    def curve(self) -> ec.EllipticCurve:
        return CA_CURVE

    @property
    def key_size(self) -> int:
        return CA_CURVE.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        _unsupported("key exchange")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _unsupported("export")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        _unsupported("export")

    def __copy__(self) -> SignerKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SignerKey:
        return self


if TYPE_CHECKING:  # mypy checks that FileSigner implements Signer

    def _file_signer(s: FileSigner) -> Signer:
        return s
