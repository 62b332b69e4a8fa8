"""The steward's certificate authority: creation (``stockade steward
init``), its state directory, and opening it to sign.

State directory (mode 0700)::

    ca.pem         the self-signed CA certificate (P-384, ecdsa-with-SHA384)
    ca-key.pem     the CA private key, only with a file key (mode 0600;
                   DEVELOPMENT ONLY: whoever reads it can issue certificates)
    steward.json   what the CA is and where its key is (file, or PKCS#11
                   module, token label, key label and CKA_ID); never a PIN

The CA certificate (RFC 5280 section 4.2.1): basicConstraints CA:true,
pathLenConstraint 0 (the CA issues workload certificates only, no
intermediate), critical; keyUsage keyCertSign and cRLSign, critical;
subjectKeyIdentifier (method 1 of section 4.2.1.2, SHA-1 of the key) and
the same authorityKeyIdentifier.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stockade.errors import UsageError
from stockade.steward.signer import (
    CA_HASH,
    FileSigner,
    Signer,
    SignerKey,
    generate_file_key,
    load_file_key,
)

CA_FILE = "ca.pem"
KEY_FILE = "ca-key.pem"
STATE_FILE = "steward.json"
STATE_VERSION = 1
#: The CA certificate's lifetime. Rotation is planned (docs/steward.md).
CA_LIFETIME = dt.timedelta(days=5 * 365)
#: X.520 ub-common-name (RFC 5280 appendix A.1).
MAX_NAME = 64
DEFAULT_NAME = "stockade steward CA"

FILE_KEY_WARNING = (
    "WARNING: the CA private key is in a FILE ({path}). This is for development only: anyone who "
    "can read that file can issue workload certificates that every peer trusting this CA accepts. "
    "Use --pkcs11-module/--token-label for a key that never leaves a token."
)


@dataclass(frozen=True)
class Pkcs11Options:
    """Where to create the CA key in a token; ``pin`` is never stored."""

    module: str
    token_label: str
    pin: str

    def __repr__(self) -> str:  # the PIN never reaches a log or traceback
        return f"Pkcs11Options(module={self.module!r}, token_label={self.token_label!r}, pin=<hidden>)"


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _same_key(a: ec.EllipticCurvePublicKey, b: ec.EllipticCurvePublicKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


def build_certificate(builder: x509.CertificateBuilder, signer: Signer) -> x509.Certificate:
    """Sign ``builder`` with ``signer`` (ecdsa-with-SHA384) and check the
    signature with the signer's public key before returning it."""
    cert = builder.sign(SignerKey(signer), CA_HASH)
    try:
        signer.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(CA_HASH))
    except InvalidSignature:
        raise UsageError(f"the CA key ({signer.location}) made a signature that does not verify") from None
    return cert


def _check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise UsageError(f"--name: 1 to {MAX_NAME} printable characters")
    return name


def _prepare_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if any(state_dir.iterdir()):
            raise UsageError(f"{state_dir} is not empty; steward init needs a new or empty directory")
        os.chmod(state_dir, 0o700)
    except OSError as exc:
        raise UsageError(f"cannot create the state directory {state_dir}: {exc.strerror}") from None


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` atomically (a temporary file, fsync, rename) with
    ``mode``; UsageError naming the path when it cannot be written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


@dataclass
class CertificateAuthority:
    """An open CA: its certificate and its signing key."""

    certificate: x509.Certificate
    signer: Signer
    state_dir: Path

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    def close(self) -> None:
        close = getattr(self.signer, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> CertificateAuthority:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ca_certificate(signer: Signer, name: str, now: dt.datetime) -> x509.Certificate:
    """The self-signed CA certificate (module docstring) for ``signer``'s key."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stockade"),
            x509.NameAttribute(NameOID.COMMON_NAME, _check_name(name)),
        ]
    )
    public = signer.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    return build_certificate(builder, signer)


def create_ca(
    state_dir: Path,
    name: str = DEFAULT_NAME,
    *,
    pkcs11: Pkcs11Options | None = None,
    now: dt.datetime | None = None,
) -> CertificateAuthority:
    """Create the CA in ``state_dir`` (new or empty; made mode 0700): a
    P-384 key in a file or generated in a token, the self-signed CA
    certificate in ``ca.pem``, and ``steward.json``."""
    _check_name(name)
    now = now or dt.datetime.now(dt.UTC)
    _prepare_dir(state_dir)
    signer: Signer
    key_doc: dict[str, Any]
    if pkcs11 is None:
        signer = generate_file_key(state_dir / KEY_FILE)
        key_doc = {"kind": "file", "path": KEY_FILE}
    else:
        from stockade.steward.pkcs11 import Pkcs11Signer, generate_ca_key

        ref = generate_ca_key(pkcs11.module, pkcs11.token_label, pkcs11.pin)
        signer = Pkcs11Signer(ref, pkcs11.pin)
        key_doc = ref.to_json()
    try:
        cert = ca_certificate(signer, name, now)
        write_new(state_dir / CA_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        state = {
            "version": STATE_VERSION,
            "name": name,
            "ca": CA_FILE,
            "ca_fingerprint_sha256": fingerprint(cert),
            "key": key_doc,
        }
        write_new(state_dir / STATE_FILE, json.dumps(state, indent=2).encode() + b"\n", 0o600)
    except BaseException:
        close = getattr(signer, "close", None)
        if close is not None:
            close()
        raise
    return CertificateAuthority(cert, signer, state_dir)


def read_state(state_dir: Path) -> tuple[dict[str, Any], x509.Certificate]:
    """``steward.json`` and the CA certificate, checked against each other;
    opens no key (needs no PIN)."""
    path = state_dir / STATE_FILE
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror} (run stockade steward init first)") from None
    except ValueError:
        raise UsageError(f"{path}: not JSON") from None
    if (
        not isinstance(doc, dict)
        or doc.get("version") != STATE_VERSION
        or not isinstance(doc.get("key"), dict)
    ):
        raise UsageError(f"{path}: not a version {STATE_VERSION} steward state file")
    ca_path = state_dir / CA_FILE
    try:
        cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {ca_path}: {exc.strerror}") from None
    except ValueError:
        raise UsageError(f"{ca_path}: not a PEM certificate") from None
    if fingerprint(cert) != doc.get("ca_fingerprint_sha256"):
        raise UsageError(f"{ca_path} is not the CA certificate that {path} records")
    return doc, cert


def describe_key(doc: dict[str, Any], state_dir: Path) -> str:
    key = doc["key"]
    if key.get("kind") == "file":
        return f"file {state_dir / str(key.get('path'))} (development only)"
    if key.get("kind") == "pkcs11":
        from stockade.steward.pkcs11 import TokenKeyRef

        return TokenKeyRef.from_json(key, STATE_FILE).describe()
    raise UsageError(f"{STATE_FILE}: unknown key kind {key.get('kind')!r}")


def open_ca(state_dir: Path, pin: str | None = None) -> CertificateAuthority:
    """The CA of ``state_dir`` with its key opened (a token key needs
    ``pin``). The key must be the CA certificate's."""
    doc, cert = read_state(state_dir)
    key = doc["key"]
    signer: Signer
    if key.get("kind") == "file":
        if key.get("path") != KEY_FILE:
            raise UsageError(f"{STATE_FILE}: a file key is {KEY_FILE} in the state directory")
        signer = load_file_key(state_dir / KEY_FILE)
    elif key.get("kind") == "pkcs11":
        from stockade.steward.pkcs11 import Pkcs11Signer, TokenKeyRef

        if pin is None:
            raise UsageError("the CA key is in a PKCS#11 token: its PIN is needed")
        signer = Pkcs11Signer(TokenKeyRef.from_json(key, STATE_FILE), pin)
    else:
        raise UsageError(f"{STATE_FILE}: unknown key kind {key.get('kind')!r}")
    ca = CertificateAuthority(cert, signer, state_dir)
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not _same_key(public, signer.public_key()):
        ca.close()
        raise UsageError(f"the CA key ({signer.location}) is not the key of {state_dir / CA_FILE}")
    return ca


__all__ = [
    "CA_FILE",
    "KEY_FILE",
    "STATE_FILE",
    "CertificateAuthority",
    "FileSigner",
    "Pkcs11Options",
    "build_certificate",
    "create_ca",
    "open_ca",
    "read_state",
]
