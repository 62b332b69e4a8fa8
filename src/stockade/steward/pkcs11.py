"""Steward keys in a PKCS#11 token (an HSM; SoftHSM2 in the tests),
through python-pkcs11 (https://github.com/pyauth/python-pkcs11).

Keys are GENERATED IN the token (``C_GenerateKeyPair``) with
CKA_TOKEN, CKA_PRIVATE and CKA_SENSITIVE true and CKA_EXTRACTABLE false,
never imported and never exported; each load checks that the token says
so, and also CKA_LOCAL (generated on the token), CKA_ALWAYS_SENSITIVE and
CKA_NEVER_EXTRACTABLE true (PKCS#11 v2.40 base spec, section 4.9 "Private
key objects"), then signs a random message and verifies it with the
public key read from the token (a mismatched pair is refused).

Key generation follows python-pkcs11's documented pattern for EC keys
(docs "Applied PKCS #11", Elliptic-Curve: ``create_domain_parameters(
KeyType.EC, {Attribute.EC_PARAMS: ...}, local=True).generate_keypair(...)``).
Signing uses CKM_ECDSA over a digest computed here (SHA-384 for the CA,
SHA-256 for the log key): SoftHSM2 2.6 offers CKM_ECDSA but not
CKM_ECDSA_SHA384. PKCS#11 returns the signature as r || s, each the
curve's size (PKCS#11 v2.40 mechanisms, section 2.3.1); X.509 and the
log want the DER Ecdsa-Sig-Value (RFC 3279 section 2.2.3), which
:func:`cryptography.hazmat.primitives.asymmetric.utils.encode_dss_signature`
builds.

The PIN comes from a file or ``$STOCKADE_PKCS11_PIN`` (:func:`read_pin`),
never the command line; no error message, log line or state file holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pkcs11
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import (
    MultipleTokensReturned,
    NoSuchToken,
    PinExpired,
    PinIncorrect,
    PinLenRange,
    PinLocked,
    PKCS11Error,
    UserAlreadyLoggedIn,
)

from stockade.errors import UsageError
from stockade.translog.treehead import ALG_P256

if TYPE_CHECKING:
    from stockade.steward.signer import Signer
    from stockade.translog.treehead import TreeHeadSigner

PIN_ENV = "STOCKADE_PKCS11_PIN"
#: The longest PIN file read (PINs are short; a big file is a mistake).
MAX_PIN_FILE = 4096

#: DER of the namedCurve OIDs (RFC 5480 section 2.1.1.1): CKA_EC_PARAMS.
_EC_PARAMS = {
    "secp384r1": bytes.fromhex("06052b81040022"),
    "secp256r1": bytes.fromhex("06082a8648ce3d030107"),
}
_CURVES: dict[str, ec.EllipticCurve] = {"secp384r1": ec.SECP384R1(), "secp256r1": ec.SECP256R1()}
_HASHES: dict[str, Any] = {"secp384r1": hashlib.sha384, "secp256r1": hashlib.sha256}
_CRYPTO_HASHES: dict[str, hashes.HashAlgorithm] = {"secp384r1": hashes.SHA384(), "secp256r1": hashes.SHA256()}

#: Attributes a steward private key must have, as the token reports them.
REQUIRED_PRIVATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.NEVER_EXTRACTABLE: True,
    Attribute.LOCAL: True,
}

# One loaded library per module path per process: python-pkcs11 finalizes
# (C_Finalize) a library object when it is collected, which would end every
# session of every other object over the same module.
_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()
#: (module, token label) -> keyed hash of the PIN this process logged in with.
_LOGINS: dict[tuple[str, str], bytes] = {}
_PIN_KEY = secrets.token_bytes(32)


def _pin_tag(pin: str) -> bytes:
    return hmac.new(_PIN_KEY, pin.encode(), hashlib.sha256).digest()


def read_pin(pin_file: Path | None) -> str:
    """The token PIN from ``pin_file`` (first line; the file must not be
    readable by group or others) or else ``$STOCKADE_PKCS11_PIN``."""
    if pin_file is not None:
        try:
            mode = pin_file.stat().st_mode & 0o777
            with pin_file.open("rb") as f:
                data = f.read(MAX_PIN_FILE + 1)
        except OSError as exc:
            raise UsageError(f"cannot read the PIN file {pin_file}: {exc.strerror}") from None
        if mode & 0o077:
            raise UsageError(f"the PIN file {pin_file} is readable by others (mode {mode:04o}); chmod 600 it")
        if len(data) > MAX_PIN_FILE:
            raise UsageError(f"the PIN file {pin_file} is longer than {MAX_PIN_FILE} bytes")
        try:
            pin = data.decode("utf-8").split("\n", 1)[0].rstrip("\r")
        except UnicodeDecodeError:
            raise UsageError(f"the PIN file {pin_file} is not UTF-8 text") from None
        if not pin:
            raise UsageError(f"the PIN file {pin_file} is empty")
        return pin
    pin = os.environ.get(PIN_ENV, "")
    if not pin:
        raise UsageError(f"a PKCS#11 token needs its PIN: give --pin-file FILE or set ${PIN_ENV}")
    return pin


def load_module(module: str) -> Any:
    """The PKCS#11 library at path ``module``, loaded once per process."""
    with _LIBS_LOCK:
        lib = _LIBS.get(module)
        if lib is None:
            try:
                lib = pkcs11.lib(module)
            except PKCS11Error as exc:
                raise UsageError(f"cannot load the PKCS#11 module {module}: {exc}") from None
            _LIBS[module] = lib
        return lib


def open_session(module: str, token_label: str, pin: str, *, rw: bool = False) -> pkcs11.Session:
    """A session logged in as the token's user. Errors name the module and
    token, never the PIN."""
    lib = load_module(module)
    try:
        token = lib.get_token(token_label=token_label)
    except NoSuchToken:
        raise UsageError(f"PKCS#11 module {module}: no token labelled {token_label!r}") from None
    except MultipleTokensReturned:
        raise UsageError(f"PKCS#11 module {module}: more than one token labelled {token_label!r}") from None
    except PKCS11Error as exc:
        raise UsageError(f"PKCS#11 module {module}: cannot list tokens ({type(exc).__name__})") from None
    login = (module, token_label)
    try:
        session: pkcs11.Session = token.open(rw=rw, user_pin=pin)
        with _LIBS_LOCK:
            _LOGINS[login] = _pin_tag(pin)
        return session
    except UserAlreadyLoggedIn:
        # PKCS#11 login state is per application and token, shared by all
        # its sessions (PKCS#11 v2.40 base spec section 5.6, C_Login): another
        # key of this process on the same token already logged in. The
        # token cannot check this PIN now; the PIN of that login must match.
        with _LIBS_LOCK:
            known = _LOGINS.get(login)
        if known is None or not hmac.compare_digest(known, _pin_tag(pin)):
            raise UsageError(f"PKCS#11 token {token_label!r}: the PIN was refused") from None
    except (PinIncorrect, PinLenRange):
        raise UsageError(f"PKCS#11 token {token_label!r}: the PIN was refused") from None
    except (PinLocked, PinExpired) as exc:
        raise UsageError(
            f"PKCS#11 token {token_label!r}: the PIN is {type(exc).__name__[3:].lower()}"
        ) from None
    except PKCS11Error as exc:
        raise UsageError(
            f"PKCS#11 token {token_label!r}: cannot open a session ({type(exc).__name__})"
        ) from None
    try:
        shared: pkcs11.Session = token.open(rw=rw)
        return shared
    except PKCS11Error as exc:
        raise UsageError(
            f"PKCS#11 token {token_label!r}: cannot open a session ({type(exc).__name__})"
        ) from None


@dataclass(frozen=True)
class TokenKeyRef:
    """Where a key is: recorded in the steward's state (no secret in it)."""

    module: str
    token_label: str
    key_label: str
    key_id: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "kind": "pkcs11",
            "module": self.module,
            "token_label": self.token_label,
            "key_label": self.key_label,
            "key_id": self.key_id.hex(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], what: str) -> TokenKeyRef:
        try:
            ref = cls(doc["module"], doc["token_label"], doc["key_label"], bytes.fromhex(doc["key_id"]))
        except (KeyError, TypeError, ValueError):
            raise UsageError(
                f"{what}: a PKCS#11 key needs module, token_label, key_label and key_id"
            ) from None
        if not all(isinstance(v, str) and v for v in (ref.module, ref.token_label, ref.key_label)):
            raise UsageError(f"{what}: module, token_label and key_label must be non-empty strings")
        return ref

    def describe(self) -> str:
        return f"PKCS#11 token {self.token_label!r} key {self.key_label!r} (module {self.module})"


def _public_from_token(pub: Any, curve_name: str, what: str) -> ec.EllipticCurvePublicKey:
    if pub[Attribute.EC_PARAMS] != _EC_PARAMS[curve_name]:
        raise UsageError(f"{what}: the token's key is not on curve {curve_name}")
    point = bytes(pub[Attribute.EC_POINT])
    size = 2 * ((_CURVES[curve_name].key_size + 7) // 8) + 1
    # CKA_EC_POINT is the DER OCTET STRING of the X9.62 point (PKCS#11 v2.40
    # section 2.3.3); some tokens give the bare point.
    if len(point) == size + 2 and point[0] == 0x04 and point[1] == size:
        point = point[2:]
    if len(point) != size:
        raise UsageError(f"{what}: the token's public key point has an unexpected length")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[curve_name], point)
    except ValueError:
        raise UsageError(f"{what}: the token's public key is not a valid point") from None


class TokenKey:
    """An ECDSA key pair in a token, checked on load (module docstring).
    One session per key, used under a lock (a PKCS#11 session runs one
    operation at a time)."""

    def __init__(self, ref: TokenKeyRef, pin: str, curve_name: str) -> None:
        self.ref = ref
        self.curve_name = curve_name
        what = ref.describe()
        self._session = open_session(ref.module, ref.token_label, pin)
        self._lock = threading.Lock()
        try:
            query = {Attribute.ID: ref.key_id, Attribute.LABEL: ref.key_label, Attribute.KEY_TYPE: KeyType.EC}
            self._priv: Any = self._one({**query, Attribute.CLASS: ObjectClass.PRIVATE_KEY}, what)
            pub = self._one({**query, Attribute.CLASS: ObjectClass.PUBLIC_KEY}, what)
            for attr, want in REQUIRED_PRIVATE.items():
                if self._priv[attr] != want:
                    raise UsageError(
                        f"{what}: the private key has {attr.name} {self._priv[attr]}, "
                        f"the steward requires {want}"
                    )
            self._public = _public_from_token(pub, curve_name, what)
            probe = secrets.token_bytes(32)
            try:
                self._public.verify(self.sign(probe), probe, ec.ECDSA(_CRYPTO_HASHES[curve_name]))
            except InvalidSignature:
                raise UsageError(f"{what}: the private key does not match the public key") from None
        except BaseException:
            self.close()
            raise

    def _one(self, attrs: dict[Attribute, Any], what: str) -> Any:
        try:
            objs = list(self._session.get_objects(attrs))
        except PKCS11Error as exc:
            raise UsageError(f"{what}: cannot search the token ({type(exc).__name__})") from None
        kind = "private" if attrs[Attribute.CLASS] == ObjectClass.PRIVATE_KEY else "public"
        if len(objs) != 1:
            raise UsageError(f"{what}: {len(objs)} {kind} keys match, expected exactly 1")
        return objs[0]

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, message: bytes) -> bytes:
        digest = _HASHES[self.curve_name](message).digest()
        with self._lock:
            try:
                raw = bytes(self._priv.sign(digest, mechanism=Mechanism.ECDSA))
            except PKCS11Error as exc:
                raise UsageError(f"{self.ref.describe()}: signing failed ({type(exc).__name__})") from None
        n = (_CURVES[self.curve_name].key_size + 7) // 8
        if len(raw) != 2 * n:
            raise UsageError(f"{self.ref.describe()}: the token returned a {len(raw)}-byte signature")
        return encode_dss_signature(int.from_bytes(raw[:n], "big"), int.from_bytes(raw[n:], "big"))

    def close(self) -> None:
        with contextlib.suppress(PKCS11Error):  # closing a dead session
            self._session.close()


def generate_key(module: str, token_label: str, pin: str, curve_name: str, purpose: str) -> TokenKeyRef:
    """Generate a new key pair IN the token (never imported), with a fresh
    random CKA_ID and the label ``stockade-<purpose>-<id>``; returns where
    it is. Refuses if the token did not honour the template."""
    key_id = secrets.token_bytes(16)
    ref = TokenKeyRef(module, token_label, f"stockade-{purpose}-{key_id.hex()[:16]}", key_id)
    with open_session(module, token_label, pin, rw=True) as session:
        try:
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: _EC_PARAMS[curve_name]}, local=True
            )
            params.generate_keypair(
                id=key_id,
                label=ref.key_label,
                store=True,
                mechanism=Mechanism.EC_KEY_PAIR_GEN,
                public_template={Attribute.TOKEN: True, Attribute.VERIFY: True, Attribute.PRIVATE: False},
                private_template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                    Attribute.DERIVE: False,
                    Attribute.DECRYPT: False,
                    Attribute.UNWRAP: False,
                },
            )
        except PKCS11Error as exc:
            raise UsageError(
                f"PKCS#11 token {token_label!r}: generating a {curve_name} key failed ({type(exc).__name__})"
            ) from None
    return ref


class Pkcs11Signer:
    """The CA key (P-384) in a token: a :class:`stockade.steward.signer.Signer`."""

    def __init__(self, ref: TokenKeyRef, pin: str) -> None:
        self._key = TokenKey(ref, pin, "secp384r1")

    @property
    def ref(self) -> TokenKeyRef:
        return self._key.ref

    @property
    def location(self) -> str:
        return self._key.ref.describe()

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, tbs: bytes) -> bytes:
        return self._key.sign(tbs)

    def close(self) -> None:
        self._key.close()


class Pkcs11TreeHeadSigner:
    """A transparency-log key (ECDSA P-256, ``ecdsa-p256-sha256``) in a
    token: a :class:`stockade.translog.TreeHeadSigner`, so the steward's
    log can be signed by a token key. (The log's other algorithm, Ed25519,
    needs CKM_EDDSA, which PKCS#11 has only since v3.0; P-256 works with
    every token.)"""

    def __init__(self, ref: TokenKeyRef, pin: str) -> None:
        self._key = TokenKey(ref, pin, "secp256r1")

    @property
    def algorithm(self) -> str:
        return ALG_P256

    def public_key_der(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def close(self) -> None:
        self._key.close()


def generate_ca_key(module: str, token_label: str, pin: str) -> TokenKeyRef:
    return generate_key(module, token_label, pin, "secp384r1", "ca")


def generate_log_key(module: str, token_label: str, pin: str) -> TokenKeyRef:
    return generate_key(module, token_label, pin, "secp256r1", "log")


if TYPE_CHECKING:  # mypy checks that the token signers implement both interfaces

    def _ca_signer(s: Pkcs11Signer) -> Signer:
        return s

    def _log_signer(s: Pkcs11TreeHeadSigner) -> TreeHeadSigner:
        return s
