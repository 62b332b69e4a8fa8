"""The steward's CA (stockade.steward): key in a file or generated in a
SoftHSM2 token, the workload certificate profile, the CSR checks, the
peer-side verifier, the PKCS#11 tree-head signer, and `stockade steward
init|show`.

The tests make their own SoftHSM2 token directory and tokens
(softhsm2-util). SoftHSM2 reads its configuration and token list once,
at C_Initialize, and stockade loads a PKCS#11 module once per process, so
every token the tests use is created up front in one session fixture.
Without softhsm2 the token tests skip, except in CI (CI=true), where
they fail: .ci/run installs it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID, SignatureAlgorithmOID

from hsm_support import Hsm
from stockade.cli import main
from stockade.errors import CertificateRequestRefused, UsageError, WorkloadCertificateInvalid
from stockade.steward.ca import (
    CA_FILE,
    KEY_FILE,
    STATE_FILE,
    CertificateAuthority,
    Pkcs11Options,
    build_certificate,
    create_ca,
    open_ca,
)
from stockade.steward.profile import (
    DEFAULT_LIFETIME,
    KEY_USAGE,
    MAX_LIFETIME,
    OID_MEASUREMENT,
    OID_PLATFORM,
    OID_SIGNER_KEYS,
    STOCKADE_ARC,
    VerifiedWorkloadClaims,
    encode_measurement,
    encode_platform,
    encode_signer_keys,
    issue,
)
from stockade.steward.signer import SignerKey
from stockade.steward.verify import WorkloadIdentity, verify_workload_certificate

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DIGEST = hashlib.sha256(b"package").digest()
CLAIMS = VerifiedWorkloadClaims(
    package_digest=DIGEST,
    platform="sim",
    measurement=bytes(range(48)),
    signer_keys=tuple(sorted([b"\x01" * 32, b"\x02" * 32])),
)


@pytest.fixture(scope="session")
def token_ca(hsm: Hsm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertificateAuthority]:
    with create_ca(
        tmp_path_factory.mktemp("token-ca") / "state", "token CA", pkcs11=hsm.options("ca"), now=NOW
    ) as ca:
        yield ca


@pytest.fixture
def file_ca(tmp_path: Path) -> Iterator[CertificateAuthority]:
    with create_ca(tmp_path / "state", "file CA", now=NOW) as ca:
        yield ca


def _csr(
    key: object = None, *, extensions: list[x509.ExtensionType] | None = None
) -> x509.CertificateSigningRequest:
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keep")])
    )
    for ext in extensions or []:
        builder = builder.add_extension(ext, critical=False)
    algorithm = (
        None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    )
    return builder.sign(key, algorithm)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# The CA
# ---------------------------------------------------------------------------


def _check_ca_certificate(ca: CertificateAuthority, name: str) -> None:
    cert = ca.certificate
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP384R1)
    cert.verify_directly_issued_by(cert)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(public)
    assert cert.not_valid_before_utc == NOW
    assert (ca.state_dir.stat().st_mode & 0o777) == 0o700
    assert x509.load_pem_x509_certificate((ca.state_dir / CA_FILE).read_bytes()) == cert


def test_file_ca(file_ca: CertificateAuthority) -> None:
    _check_ca_certificate(file_ca, "file CA")
    assert ((file_ca.state_dir / KEY_FILE).stat().st_mode & 0o777) == 0o600
    state = json.loads((file_ca.state_dir / STATE_FILE).read_text())
    assert state["key"] == {"kind": "file", "path": KEY_FILE}
    assert state["ca_fingerprint_sha256"] == file_ca.fingerprint


def test_init_refuses_a_non_empty_state_dir(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(UsageError, match="not empty"):
        create_ca(tmp_path)


def test_open_ca_refuses_a_key_that_is_not_the_certificates(tmp_path: Path) -> None:
    with create_ca(tmp_path / "a", now=NOW), create_ca(tmp_path / "b", now=NOW):
        pass
    (tmp_path / "a" / KEY_FILE).write_bytes((tmp_path / "b" / KEY_FILE).read_bytes())
    with pytest.raises(UsageError, match="is not the key of"):
        open_ca(tmp_path / "a")


def test_open_ca_refuses_a_swapped_certificate(tmp_path: Path) -> None:
    with create_ca(tmp_path / "a", now=NOW), create_ca(tmp_path / "b", now=NOW):
        pass
    (tmp_path / "a" / CA_FILE).write_bytes((tmp_path / "b" / CA_FILE).read_bytes())
    with pytest.raises(UsageError, match="is not the CA certificate"):
        open_ca(tmp_path / "a")


def test_open_ca_refuses_a_key_file_readable_by_others(tmp_path: Path) -> None:
    with create_ca(tmp_path / "a", now=NOW):
        pass
    os.chmod(tmp_path / "a" / KEY_FILE, 0o644)
    with pytest.raises(UsageError, match="readable by others"):
        open_ca(tmp_path / "a")


def test_signer_key_signs_only_ecdsa_sha384_and_never_exports(file_ca: CertificateAuthority) -> None:
    key = SignerKey(file_ca.signer)
    with pytest.raises(TypeError, match="only ECDSA with SHA-384"):
        key.sign(b"x", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(TypeError, match="export"):
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    with pytest.raises(TypeError, match="export"):
        key.private_numbers()


# ---------------------------------------------------------------------------
# The key in a token
# ---------------------------------------------------------------------------


def test_token_ca_key_generated_in_token_and_never_exported(hsm: Hsm, token_ca: CertificateAuthority) -> None:
    from pkcs11 import Attribute, ObjectClass
    from pkcs11.exceptions import AttributeSensitive

    _check_ca_certificate(token_ca, "token CA")
    assert not (token_ca.state_dir / KEY_FILE).exists()
    state = json.loads((token_ca.state_dir / STATE_FILE).read_text())
    assert state["key"]["kind"] == "pkcs11" and state["key"]["token_label"] == "ca"
    assert hsm.pin not in (token_ca.state_dir / STATE_FILE).read_text()
    from stockade.steward.pkcs11 import open_session

    with open_session(hsm.module, "ca", hsm.pin) as session:
        query = {
            Attribute.ID: bytes.fromhex(state["key"]["key_id"]),
            Attribute.LABEL: state["key"]["key_label"],
        }
        (priv,) = session.get_objects({**query, Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        assert priv[Attribute.TOKEN] is True
        assert priv[Attribute.PRIVATE] is True
        assert priv[Attribute.SENSITIVE] is True
        assert priv[Attribute.EXTRACTABLE] is False
        assert priv[Attribute.ALWAYS_SENSITIVE] is True
        assert priv[Attribute.NEVER_EXTRACTABLE] is True
        assert priv[Attribute.LOCAL] is True  # generated on the token, not imported
        with pytest.raises(AttributeSensitive):
            priv[Attribute.VALUE]
        (pub,) = session.get_objects({**query, Attribute.CLASS: ObjectClass.PUBLIC_KEY})
        assert pub[Attribute.EC_PARAMS] == bytes.fromhex("06052b81040022")  # secp384r1


def test_token_ca_refuses_a_key_the_token_would_export(hsm: Hsm) -> None:
    """TokenKey checks the attributes on every load: an extractable key
    (made here behind the steward's back) is refused."""
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    from stockade.steward.pkcs11 import Pkcs11Signer, TokenKeyRef, open_session

    key_id = secrets.token_bytes(8)
    with open_session(hsm.module, "attrs", hsm.pin, rw=True) as session:
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp384r1")}, local=True
        )
        params.generate_keypair(
            id=key_id,
            label="weak",
            store=True,
            private_template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
        )
    with pytest.raises(UsageError, match="the steward requires"):
        Pkcs11Signer(TokenKeyRef(hsm.module, "attrs", "weak", key_id), hsm.pin)


def test_token_ca_issues_certificates_that_verify(hsm: Hsm, token_ca: CertificateAuthority) -> None:
    with open_ca(token_ca.state_dir, hsm.pin) as ca:
        assert "PKCS#11 token 'ca'" in ca.signer.location
        cert = issue(ca, _csr(), CLAIMS, not_before=NOW + dt.timedelta(minutes=1))
    cert.verify_directly_issued_by(token_ca.certificate)
    ident = verify_workload_certificate([cert], token_ca.certificate, NOW + dt.timedelta(minutes=2))
    assert ident.package_digest == DIGEST


def test_token_errors_name_the_problem_never_the_pin(hsm: Hsm, token_ca: CertificateAuthority) -> None:
    wrong = "wrong-" + hsm.pin
    with pytest.raises(UsageError) as err:
        open_ca(token_ca.state_dir, wrong)
    assert (
        "PIN was refused" in str(err.value) and wrong not in str(err.value) and hsm.pin not in str(err.value)
    )
    with pytest.raises(UsageError, match="no token labelled 'nope'"):
        create_ca(token_ca.state_dir.parent / "x", pkcs11=Pkcs11Options(hsm.module, "nope", hsm.pin))
    with pytest.raises(UsageError, match="cannot load the PKCS#11 module"):
        create_ca(token_ca.state_dir.parent / "y", pkcs11=Pkcs11Options("/nonexistent/p11.so", "ca", hsm.pin))
    assert hsm.pin not in repr(hsm.options("ca"))


# ---------------------------------------------------------------------------
# The workload certificate profile
# ---------------------------------------------------------------------------


def test_workload_certificate_profile(file_ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = issue(file_ca, _csr(key), CLAIMS, not_before=NOW)
    cert.verify_directly_issued_by(file_ca.certificate)
    assert cert.version == x509.Version.v3
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
    assert cert.issuer == file_ca.certificate.subject
    assert cert.subject.rfc4514_string() == f"CN=sha256:{DIGEST.hex()[:16]}"
    assert cert.public_key() == key.public_key()
    assert cert.not_valid_before_utc == NOW
    assert cert.not_valid_after_utc == NOW + DEFAULT_LIFETIME
    assert 0 < cert.serial_number < 2**159
    exts = {e.oid: e for e in cert.extensions}
    assert len(exts) == 9
    bc = exts[ExtensionOID.BASIC_CONSTRAINTS]
    assert bc.critical and bc.value == x509.BasicConstraints(ca=False, path_length=None)
    ku = exts[ExtensionOID.KEY_USAGE]
    assert ku.critical and ku.value == KEY_USAGE and ku.value.digital_signature
    eku = exts[ExtensionOID.EXTENDED_KEY_USAGE]
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    san = exts[ExtensionOID.SUBJECT_ALTERNATIVE_NAME]
    assert not san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier(f"stockade://workload/sha256/{DIGEST.hex()}")]
    assert exts[ExtensionOID.SUBJECT_KEY_IDENTIFIER].value == x509.SubjectKeyIdentifier.from_public_key(
        key.public_key()
    )
    ca_ski = file_ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert exts[ExtensionOID.AUTHORITY_KEY_IDENTIFIER].value.key_identifier == ca_ski.digest
    for oid in (OID_PLATFORM, OID_MEASUREMENT, OID_SIGNER_KEYS):
        assert oid.dotted_string.startswith(STOCKADE_ARC + ".") and not exts[oid].critical
    assert exts[OID_PLATFORM].value.value == b"\x0c\x03sim"
    assert exts[OID_MEASUREMENT].value.value == b"\x04\x30" + bytes(range(48))
    assert exts[OID_SIGNER_KEYS].value.value == b"\x30\x44" + b"".join(
        b"\x04\x20" + k for k in CLAIMS.signer_keys
    )
    ident = verify_workload_certificate([cert], file_ca.certificate, NOW)
    assert (ident.package_digest, ident.platform, ident.measurement, ident.signer_keys) == (
        CLAIMS.package_digest,
        CLAIMS.platform,
        CLAIMS.measurement,
        CLAIMS.signer_keys,
    )
    assert ident.uri == CLAIMS.uri and ident.serial == cert.serial_number
    assert ident.ca_fingerprint == file_ca.fingerprint
    with pytest.raises(TypeError):
        WorkloadIdentity(DIGEST, "sim", b"m", (), 1, NOW, NOW, b"", "", NOW)


def test_uuid_arc_is_the_documented_uuid() -> None:
    import uuid

    assert f"2.25.{uuid.UUID('af81d57e-3f64-4299-8ae8-b7b8bab774a3').int}" == STOCKADE_ARC


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["p256", "p384", "ed25519"],
)
def test_allowed_key_types(file_ca: CertificateAuthority, key: object) -> None:
    cert = issue(file_ca, _csr(key), CLAIMS, not_before=NOW)
    verify_workload_certificate([cert], file_ca.certificate, NOW)


def test_csr_with_a_bad_signature_is_refused(file_ca: CertificateAuthority) -> None:
    der = bytearray(_csr().public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the signature's s
    csr = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(CertificateRequestRefused, match="signature does not verify"):
        issue(file_ca, csr, CLAIMS, not_before=NOW)


@pytest.mark.parametrize(
    "key",
    [
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP521R1()),
        ec.generate_private_key(ec.SECP256K1()),
        ed448.Ed448PrivateKey.generate(),
    ],
    ids=["rsa", "p521", "secp256k1", "ed448"],
)
def test_csr_with_a_disallowed_key_type_is_refused(file_ca: CertificateAuthority, key: object) -> None:
    with pytest.raises(CertificateRequestRefused, match="is not allowed"):
        issue(file_ca, _csr(key), CLAIMS, not_before=NOW)


@pytest.mark.parametrize(
    "ext",
    [
        x509.NameConstraints(permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None),
        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
        x509.OCSPNoCheck(),
    ],
    ids=["name-constraints", "unknown", "ocsp-nocheck"],
)
def test_csr_requesting_extra_extensions_is_refused(
    file_ca: CertificateAuthority, ext: x509.ExtensionType
) -> None:
    with pytest.raises(CertificateRequestRefused, match="does not set"):
        issue(file_ca, _csr(extensions=[ext]), CLAIMS, not_before=NOW)


def test_csr_requesting_profile_extensions_gets_the_profiles_values(file_ca: CertificateAuthority) -> None:
    csr = _csr(
        extensions=[
            x509.BasicConstraints(ca=True, path_length=None),
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("stockade://workload/sha256/" + "0" * 64)]
            ),
        ]
    )
    cert = issue(file_ca, csr, CLAIMS, not_before=NOW)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [CLAIMS.uri]


def test_csr_with_another_attribute_is_refused(file_ca: CertificateAuthority) -> None:
    from cryptography.x509.oid import AttributeOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_attribute(AttributeOID.CHALLENGE_PASSWORD, b"secret")
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    with pytest.raises(CertificateRequestRefused, match="only extensionRequest"):
        issue(file_ca, csr, CLAIMS, not_before=NOW)


def test_lifetime_bounds(file_ca: CertificateAuthority) -> None:
    cert = issue(file_ca, _csr(), CLAIMS, not_before=NOW, lifetime=MAX_LIFETIME)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(hours=24)
    for bad in (dt.timedelta(0), dt.timedelta(seconds=-1), MAX_LIFETIME + dt.timedelta(seconds=1)):
        with pytest.raises(UsageError, match="lifetime"):
            issue(file_ca, _csr(), CLAIMS, not_before=NOW, lifetime=bad)
    with pytest.raises(UsageError, match="aware"):
        issue(file_ca, _csr(), CLAIMS, not_before=NOW.replace(tzinfo=None))
    with pytest.raises(UsageError, match="outlast the CA"):
        issue(file_ca, _csr(), CLAIMS, not_before=file_ca.certificate.not_valid_after_utc)
    with pytest.raises(UsageError, match="outlast the CA"):
        issue(file_ca, _csr(), CLAIMS, not_before=NOW - dt.timedelta(seconds=1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"package_digest": b"\x00" * 31}, "32 bytes"),
        ({"platform": "SNP"}, "platform"),
        ({"platform": ""}, "platform"),
        ({"measurement": b""}, "measurement"),
        ({"measurement": b"\x00" * 65}, "measurement"),
        ({"signer_keys": (b"\x02" * 32, b"\x01" * 32)}, "sorted"),
        ({"signer_keys": (b"\x01" * 32, b"\x01" * 32)}, "sorted"),
        ({"signer_keys": (b"\x01" * 31,)}, "32 bytes"),
        ({"signer_keys": tuple(bytes([i]) * 32 for i in range(17))}, "at most 16"),
    ],
)
def test_claims_limits(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "package_digest": DIGEST,
        "platform": "sim",
        "measurement": b"m",
        "signer_keys": (),
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        VerifiedWorkloadClaims(**args)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# verify_workload_certificate: every refusal
# ---------------------------------------------------------------------------

Mutate = Callable[[dict[x509.ObjectIdentifier, tuple[x509.ExtensionType, bool]]], None]


def _forge(
    ca: CertificateAuthority,
    mutate: Mutate | None = None,
    *,
    not_before: dt.datetime = NOW,
    lifetime: dt.timedelta = DEFAULT_LIFETIME,
    key: ec.EllipticCurvePrivateKey | None = None,
    signer: object = None,
) -> x509.Certificate:
    """A certificate like issue() makes, signed by ``ca``, with the
    extensions changed by ``mutate`` (oid -> (value, critical))."""
    public = (key or ec.generate_private_key(ec.SECP256R1())).public_key()
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    exts: dict[x509.ObjectIdentifier, tuple[x509.ExtensionType, bool]] = {
        ExtensionOID.BASIC_CONSTRAINTS: (x509.BasicConstraints(ca=False, path_length=None), True),
        ExtensionOID.KEY_USAGE: (KEY_USAGE, True),
        ExtensionOID.EXTENDED_KEY_USAGE: (
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            False,
        ),
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME: (
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(CLAIMS.uri)]),
            False,
        ),
        ExtensionOID.SUBJECT_KEY_IDENTIFIER: (x509.SubjectKeyIdentifier.from_public_key(public), False),
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER: (
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            False,
        ),
        OID_PLATFORM: (x509.UnrecognizedExtension(OID_PLATFORM, encode_platform("sim")), False),
        OID_MEASUREMENT: (x509.UnrecognizedExtension(OID_MEASUREMENT, encode_measurement(b"m" * 48)), False),
        OID_SIGNER_KEYS: (x509.UnrecognizedExtension(OID_SIGNER_KEYS, encode_signer_keys(())), False),
    }
    if mutate is not None:
        mutate(exts)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
    )
    for value, critical in exts.values():
        builder = builder.add_extension(value, critical=critical)
    if signer is not None:
        return builder.sign(signer, hashes.SHA384())  # type: ignore[arg-type]
    return build_certificate(builder, ca.signer)


def test_forged_baseline_verifies(file_ca: CertificateAuthority) -> None:
    """The refusal tests below change one thing each in this certificate."""
    ident = verify_workload_certificate([_forge(file_ca)], file_ca.certificate, NOW)
    assert ident.platform == "sim" and ident.measurement == b"m" * 48 and ident.signer_keys == ()


def test_chain_may_carry_the_ca_itself(file_ca: CertificateAuthority) -> None:
    verify_workload_certificate([_forge(file_ca), file_ca.certificate], file_ca.certificate, NOW)


def _refused(ca: CertificateAuthority, cert: x509.Certificate, match: str, *, now: dt.datetime = NOW) -> None:
    with pytest.raises(WorkloadCertificateInvalid, match=match):
        verify_workload_certificate([cert], ca.certificate, now)


def test_refuses_another_ca(file_ca: CertificateAuthority, tmp_path: Path) -> None:
    with create_ca(tmp_path / "other", "file CA", now=NOW) as other:  # same name, other key
        cert = issue(other, _csr(), CLAIMS, not_before=NOW)
    _refused(file_ca, cert, "not issued by the steward CA")


def test_refuses_a_chain_with_an_intermediate(file_ca: CertificateAuthority, tmp_path: Path) -> None:
    with create_ca(tmp_path / "other", now=NOW) as other:
        chain = [_forge(file_ca), other.certificate]
    with pytest.raises(WorkloadCertificateInvalid, match="no intermediates"):
        verify_workload_certificate(chain, file_ca.certificate, NOW)


def test_refuses_an_empty_chain(file_ca: CertificateAuthority) -> None:
    with pytest.raises(WorkloadCertificateInvalid, match="no workload certificate"):
        verify_workload_certificate([], file_ca.certificate, NOW)


def test_refuses_expired(file_ca: CertificateAuthority) -> None:
    _refused(file_ca, _forge(file_ca), "expired", now=NOW + DEFAULT_LIFETIME + dt.timedelta(seconds=1))


def test_refuses_not_yet_valid(file_ca: CertificateAuthority) -> None:
    later = NOW + dt.timedelta(hours=1)
    _refused(
        file_ca, _forge(file_ca, not_before=later), "not valid before", now=later - dt.timedelta(seconds=1)
    )


def test_refuses_a_lifetime_beyond_the_profile(file_ca: CertificateAuthority) -> None:
    _refused(file_ca, _forge(file_ca, lifetime=MAX_LIFETIME + dt.timedelta(hours=1)), "lifetime exceeds")


def test_refuses_when_the_ca_is_not_valid(file_ca: CertificateAuthority) -> None:
    _refused(file_ca, _forge(file_ca), "CA certificate is not valid", now=NOW + dt.timedelta(days=6 * 365))


def test_refuses_another_signature_algorithm(file_ca: CertificateAuthority) -> None:
    cert = _forge(file_ca)
    key = ec.generate_private_key(ec.SECP384R1())
    wrong = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())  # type: ignore[arg-type]
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + DEFAULT_LIFETIME)
        .sign(key, hashes.SHA256())
    )
    _refused(file_ca, wrong, "ecdsa-with-SHA384 expected")


@pytest.mark.parametrize(
    "eku",
    [
        [ExtendedKeyUsageOID.SERVER_AUTH],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.CODE_SIGNING],
    ],
    ids=["server-only", "client-only", "extra"],
)
def test_refuses_wrong_eku(file_ca: CertificateAuthority, eku: list[x509.ObjectIdentifier]) -> None:
    def mutate(exts: dict[x509.ObjectIdentifier, tuple[x509.ExtensionType, bool]]) -> None:
        exts[ExtensionOID.EXTENDED_KEY_USAGE] = (x509.ExtendedKeyUsage(eku), False)

    _refused(file_ca, _forge(file_ca, mutate), "extendedKeyUsage must be")


def _drop(oid: x509.ObjectIdentifier) -> Mutate:
    return lambda exts: exts.pop(oid) and None  # type: ignore[func-returns-value]


@pytest.mark.parametrize(
    ("oid", "match"),
    [
        (ExtensionOID.SUBJECT_ALTERNATIVE_NAME, "no subjectAltName"),
        (ExtensionOID.EXTENDED_KEY_USAGE, "no extendedKeyUsage"),
        (ExtensionOID.KEY_USAGE, "no keyUsage"),
        (ExtensionOID.BASIC_CONSTRAINTS, "no basicConstraints"),
        (ExtensionOID.AUTHORITY_KEY_IDENTIFIER, "no authorityKeyIdentifier"),
        (ExtensionOID.SUBJECT_KEY_IDENTIFIER, "no subjectKeyIdentifier"),
        (OID_PLATFORM, "no platform"),
        (OID_MEASUREMENT, "no measurement"),
        (OID_SIGNER_KEYS, "no signer keys"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_refuses_a_missing_extension(
    file_ca: CertificateAuthority, oid: x509.ObjectIdentifier, match: str
) -> None:
    _refused(file_ca, _forge(file_ca, _drop(oid)), match)


def _set(oid: x509.ObjectIdentifier, value: x509.ExtensionType, critical: bool = False) -> Mutate:
    def mutate(exts: dict[x509.ObjectIdentifier, tuple[x509.ExtensionType, bool]]) -> None:
        exts[oid] = (value, critical)

    return mutate


def _raw(oid: x509.ObjectIdentifier, der: bytes) -> Mutate:
    return _set(oid, x509.UnrecognizedExtension(oid, der))


URI = x509.UniformResourceIdentifier
SAN = ExtensionOID.SUBJECT_ALTERNATIVE_NAME


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (_set(SAN, x509.SubjectAlternativeName([URI("stockade://workload/sha256/" + "A" * 64)])), "SAN URI"),
        (_set(SAN, x509.SubjectAlternativeName([URI("stockade://workload/sha256/" + "a" * 63)])), "SAN URI"),
        (_set(SAN, x509.SubjectAlternativeName([URI("https://workload/sha256/" + "a" * 64)])), "SAN URI"),
        (_set(SAN, x509.SubjectAlternativeName([URI(CLAIMS.uri + "/x")])), "SAN URI"),
        (_set(SAN, x509.SubjectAlternativeName([x509.DNSName("keep.example")])), "exactly one URI"),
        (_set(SAN, x509.SubjectAlternativeName([URI(CLAIMS.uri), URI(CLAIMS.uri)])), "exactly one URI"),
        (_set(SAN, x509.SubjectAlternativeName([URI(CLAIMS.uri)]), critical=True), "must be non-critical"),
        (_raw(OID_PLATFORM, b"\x04\x03sim"), "malformed platform"),
        (_raw(OID_PLATFORM, b"\x0c\x03sim\x00"), "malformed platform"),
        (_raw(OID_PLATFORM, b"\x0c\x04sim"), "malformed platform"),
        (_raw(OID_PLATFORM, b"\x0c\x03SIM"), "platform 'SIM'"),
        (_raw(OID_PLATFORM, b"\x0c\x02\xc3\xa9"), "malformed platform"),
        (_raw(OID_MEASUREMENT, b"\x0c\x01m"), "malformed measurement"),
        (_raw(OID_MEASUREMENT, b"\x04\x00"), "measurement: 1 to 64"),
        (_raw(OID_MEASUREMENT, b"\x04\x81\x05mmmmm"), "malformed measurement"),  # non-minimal length
        (_raw(OID_SIGNER_KEYS, b"\x31\x00"), "malformed signer keys"),
        (_raw(OID_SIGNER_KEYS, b"\x30\x03\x0c\x01a"), "malformed signer keys"),
        (_raw(OID_SIGNER_KEYS, b"\x30\x03\x04\x01a"), "raw Ed25519 keys"),
        (
            _raw(OID_SIGNER_KEYS, b"\x30\x44" + b"\x04\x20" + b"\x02" * 32 + b"\x04\x20" + b"\x01" * 32),
            "sorted",
        ),
        (
            _set(OID_PLATFORM, x509.UnrecognizedExtension(OID_PLATFORM, encode_platform("sim")), True),
            "non-critical",
        ),
        (
            _set(ExtensionOID.BASIC_CONSTRAINTS, x509.BasicConstraints(ca=True, path_length=None), True),
            "CA:false",
        ),
        (
            _set(ExtensionOID.BASIC_CONSTRAINTS, x509.BasicConstraints(ca=False, path_length=None)),
            "must be critical",
        ),
        (_set(ExtensionOID.KEY_USAGE, KEY_USAGE), "must be critical"),
        (
            _set(
                ExtensionOID.KEY_USAGE,
                x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                True,
            ),
            "digitalSignature only",
        ),
        (
            _set(
                ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
                x509.AuthorityKeyIdentifier(b"\x00" * 20, None, None),
            ),
            "does not name the steward CA",
        ),
        (
            _set(ExtensionOID.SUBJECT_KEY_IDENTIFIER, x509.SubjectKeyIdentifier(b"\x00" * 20)),
            "does not match its key",
        ),
        (
            _raw(x509.ObjectIdentifier(STOCKADE_ARC + ".99"), b"\x05\x00"),
            "not in the profile",
        ),
        (_set(ExtensionOID.OCSP_NO_CHECK, x509.OCSPNoCheck()), "not in the profile"),
    ],
)
def test_refuses_a_malformed_profile(file_ca: CertificateAuthority, mutate: Mutate, match: str) -> None:
    _refused(file_ca, _forge(file_ca, mutate), match)


def test_refuses_a_disallowed_leaf_key(file_ca: CertificateAuthority) -> None:
    _refused(file_ca, _forge(file_ca, key=ec.generate_private_key(ec.SECP521R1())), "is not allowed")


# ---------------------------------------------------------------------------
# The transparency log signed by a token key
# ---------------------------------------------------------------------------


def test_pkcs11_tree_head_signer_signs_heads_the_log_verifies(hsm: Hsm, tmp_path: Path) -> None:
    from stockade.steward.pkcs11 import Pkcs11TreeHeadSigner, generate_log_key
    from stockade.translog import (
        CertificateEntry,
        LogKey,
        TransparencyLog,
        verify_inclusion,
        verify_tree_head,
    )
    from stockade.translog.treehead import ALG_P256

    ref = generate_log_key(hsm.module, "log", hsm.pin)
    signer = Pkcs11TreeHeadSigner(ref, hsm.pin)
    try:
        assert signer.algorithm == ALG_P256
        key = LogKey.from_der(signer.public_key_der())
        with TransparencyLog.create(tmp_path / "log", signer=signer) as tlog:
            first, sth = tlog.append([CertificateEntry(b"cert-%d" % i) for i in range(3)])
            proof = tlog.inclusion_proof(1, 3)
            entry = tlog.entry(1)
        assert not (tmp_path / "log" / "log.key").exists()  # the key stayed in the token
        head = verify_tree_head(sth, [key])
        assert (first, head.size) == (0, 3)
        verify_inclusion(entry, proof, sth, [key])
        with TransparencyLog.open(tmp_path / "log", signer=signer) as tlog:
            _, sth2 = tlog.append([CertificateEntry(b"cert-3")])
        assert verify_tree_head(sth2, [key]).size == 4
    finally:
        signer.close()


# ---------------------------------------------------------------------------
# stockade steward init|show
# ---------------------------------------------------------------------------


def _cli(*args: object, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_cli_init_with_a_file_key_warns_loudly(tmp_path: Path) -> None:
    code, out, err = _cli("steward", "init", "--state-dir", tmp_path / "s", "--name", "dev")
    assert code == 0, err
    assert "WARNING" in err and "development only" in err and "ca-key.pem" in err
    assert "CN=dev,O=stockade" in out
    code, out, err = _cli("steward", "show", "--state-dir", tmp_path / "s", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["subject"] == "CN=dev,O=stockade" and doc["key_storage"] == "file"
    cert = x509.load_pem_x509_certificate((tmp_path / "s" / "ca.pem").read_bytes())
    assert (
        doc["fingerprint_sha256"] == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pkcs11-module", "/x.so"], "go together"),
        (["--token-label", "t"], "go together"),
        (["--pin-file", "/nonexistent"], "needs --pkcs11-module"),
    ],
)
def test_cli_init_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    code, _, err = _cli("steward", "init", "--state-dir", tmp_path / "s", *args)
    assert code == 2 and message in err


def test_cli_has_no_pin_option(tmp_path: Path) -> None:
    code, _, err = _cli("steward", "init", "--state-dir", tmp_path / "s", "--pin", "1234")
    assert code == 2 and "No such option" in err


def test_cli_show_of_a_missing_state_dir(tmp_path: Path) -> None:
    code, _, err = _cli("steward", "show", "--state-dir", tmp_path / "none")
    assert code == 2 and "steward init" in err


def test_cli_token_init_and_show_never_reveal_the_pin(hsm: Hsm, tmp_path: Path) -> None:
    """The PIN is a canary: given by file and by environment, it must not
    appear in any output, error or state file, and a wrong one neither."""
    pin_file = tmp_path / "pin"
    pin_file.write_text(hsm.pin + "\n")
    pin_file.chmod(0o600)
    base = ["steward", "init", "--pkcs11-module", hsm.module, "--token-label", "cli"]
    code, out, err = _cli(*base, "--state-dir", tmp_path / "a", "--pin-file", pin_file, "--json")
    assert code == 0, err
    assert json.loads(out)["key_storage"] == "pkcs11" and "WARNING" not in err
    code2, out2, err2 = _cli(*base, "--state-dir", tmp_path / "b", env={"STOCKADE_PKCS11_PIN": hsm.pin})
    assert code2 == 0, err2
    code3, out3, err3 = _cli("steward", "show", "--state-dir", tmp_path / "a")
    assert code3 == 0 and "token 'cli'" in out3
    wrong = "wrong-" + hsm.pin
    code4, out4, err4 = _cli(*base, "--state-dir", tmp_path / "c", env={"STOCKADE_PKCS11_PIN": wrong})
    assert code4 == 2 and "PIN was refused" in err4
    code5, _, err5 = _cli(*base, "--state-dir", tmp_path / "d", env={"STOCKADE_PKCS11_PIN": ""})
    assert code5 == 2 and "--pin-file" in err5
    loose = tmp_path / "loose-pin"
    loose.write_text(hsm.pin)
    loose.chmod(0o644)
    code6, _, err6 = _cli(*base, "--state-dir", tmp_path / "e", "--pin-file", loose)
    assert code6 == 2 and "readable by others" in err6
    texts = [out, err, out2, err2, out3, err3, out4, err4, err5, err6]
    texts += [p.read_text() for d in ("a", "b") for p in (tmp_path / d).iterdir()]
    for text in texts:
        assert hsm.pin not in text


@pytest.mark.slow
def test_cli_subprocess_pin_only_in_environment(hsm: Hsm, tmp_path: Path) -> None:
    """End to end in a fresh process: the PIN goes through the environment,
    never the command line; stdout and stderr never carry it."""
    env = {**os.environ, "SOFTHSM2_CONF": str(hsm.conf), "STOCKADE_PKCS11_PIN": hsm.pin}
    argv = [sys.executable, "-m", "stockade", "steward", "init", "--state-dir", str(tmp_path / "s")]
    argv += ["--pkcs11-module", hsm.module, "--token-label", "canary"]
    assert all(hsm.pin not in a for a in argv)
    proc = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert hsm.pin not in proc.stdout + proc.stderr
    for path in (tmp_path / "s").iterdir():
        assert hsm.pin.encode() not in path.read_bytes()
