"""Intel DCAP quote verification (TDX and SGX): pure, no I/O, explicit
roots and time.

Inputs: the quote bytes as received, the collateral as received (PCS
bodies, DER CRLs, PEM issuer chain), the trusted Intel SGX Root CA (the one
shipped in ``roots/`` unless the caller passes another, e.g. a test root),
and the time at which validity is judged. Output: a :class:`VerifiedQuote`
carrying the TCB status and normalized :class:`VerifiedClaims`, or an
exception: MalformedEvidence (bytes do not parse), VerificationFailed (a
check fails; TcbLevelNotSupported when no TCB level matches),
CollateralUnavailable (a CRL is missing and revocation checking is on).

Checks, in the order of Intel's QVL ``QuoteVerifier::verify`` (section
numbers of Intel's verification spec in brackets):

1. quote structure, version, TEE and key type, QE vendor, reserved fields;
2. PCK chain: exactly leaf, PCK Platform/Processor CA, root; the root is
   byte-identical to the trusted root; every certificate is
   ecdsa-with-SHA256, signed by the next, names chain, valid at ``at``;
   CN names as Intel issues them;
3. root CA CRL (signed by the root, valid at ``at``): the PCK CA and the TCB
   Signing certificate are not revoked; PCK CRL (issued by the PCK's CA,
   signed by it, valid at ``at``): the PCK is not revoked [4.1.2.4.6-7];
4. TCB Signing certificate: CN, signed by the root, valid at ``at``;
5. TCB info: signature over its exact bytes by the TCB Signing key, version
   3, id matching the TEE, valid at ``at`` (issueDate..nextUpdate), FMSPC
   and PCE-ID equal to the PCK's [4.1.2.4.9-10];
6. QE identity: signature, version 2, id QE (SGX) or TD_QE (TDX), valid at
   ``at`` [4.1.2.4.14];
7. TDX: MRSIGNERSEAM and SEAMATTRIBUTES against the TDX module (identity)
   [4.1.2.4.11];
8. QE report signature with the PCK key [4.1.2.4.12]; QE report data =
   SHA-256(attestation key || QE auth data) || 32 zero bytes [4.1.2.4.13];
9. QE report against the QE identity: MISCSELECT and ATTRIBUTES under
   their masks, MRSIGNER, ISVPRODID; ISVSVN -> QE TCB status [4.1.2.4.15];
10. quote signature with the attestation key over header..body
    [4.1.2.4.16];
11. TCB level and status (:mod:`stockade.evidence.intel.tcb`) [4.1.2.4.17].

Stricter than Intel's QVL, on purpose: expired collateral is an error here
(QVL reports it in a separate "collateral expired" flag and leaves the
decision to the caller), and every collateral item must be valid at ``at``.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from stockade.errors import CollateralUnavailable, MalformedEvidence, VerificationFailed
from stockade.evidence.claims import _VERIFIED, VerifiedClaims, collateral_dates
from stockade.evidence.intel.abi import Quote, TeeType
from stockade.evidence.intel.pck import PckExtensions, check_envelope, read_sgx_extension
from stockade.evidence.intel.tcb import (
    TcbEvaluation,
    TcbLevelNotSupported,
    TcbStatus,
    evaluate,
    qe_level,
    select_module,
)
from stockade.evidence.intel.tcbinfo import (
    EnclaveIdentity,
    TcbInfo,
    parse_enclave_identity,
    parse_tcb_info,
    split_signed_body,
)
from stockade.evidence.pki import (
    Crl,
    SigAlg,
    check_validity,
    check_window,
    crl_signed_by,
    der_of,
    fingerprint,
    load_crl,
    load_der,
    load_pem_chain,
    serial,
    signed_by,
)
from stockade.evidence.sgx.abi import EnclaveReport
from stockade.evidence.tdx.abi import TdReport
from stockade.wire.platform import Platform

CN = x509.NameOID.COMMON_NAME
ROOT_CN = "Intel SGX Root CA"
PCK_CN = "Intel SGX PCK Certificate"
PCK_CA_CNS = {"Intel SGX PCK Platform CA": "platform", "Intel SGX PCK Processor CA": "processor"}
TCB_SIGNING_CN = "Intel SGX TCB Signing"


@functools.lru_cache(maxsize=1)
def intel_root_der() -> bytes:
    """The Intel SGX Root CA shipped in the package (roots/README.md gives
    its origin and SHA-256 fingerprint)."""
    return (resources.files(__package__) / "roots" / "intel_sgx_root_ca.der").read_bytes()


@dataclass(frozen=True)
class Collateral:
    """Verification collateral as received from Intel's PCS (or a cache).

    ``tcb_info`` and ``qe_identity`` are the PCS response bodies, verified
    over their exact bytes; ``tcb_signing_chain`` is the PEM issuer chain
    (TCB Signing certificate, optionally followed by the root) that PCS sends
    in the TCB-Info-Issuer-Chain header; the CRLs are DER (PEM accepted).
    The PCK CRL issuer chain is kept for completeness but not needed: the
    PCK CRL is verified with the PCK CA certificate from the quote, which is
    itself verified to the trusted root.
    """

    tcb_info: bytes
    qe_identity: bytes
    tcb_signing_chain: bytes
    root_ca_crl: bytes | None = None
    pck_crl: bytes | None = None
    pck_crl_issuer_chain: bytes | None = None


@dataclass(frozen=True)
class CheckedQuote:
    """A quote whose signatures, QE binding and PCK chain verified, without
    collateral: no TCB status, no revocation, so no VerifiedClaims."""

    quote: Quote
    pck: PckExtensions
    pck_ca: str  # "platform" or "processor"
    root_fingerprint: str
    checked_at: datetime


@dataclass(frozen=True)
class VerifiedQuote:
    quote: Quote
    pck: PckExtensions
    pck_ca: str
    tcb: TcbEvaluation
    tcb_info_evaluation_number: int
    qe_identity_evaluation_number: int
    revocation_checked: bool
    claims: VerifiedClaims

    @property
    def tcb_status(self) -> TcbStatus:
        return self.tcb.status

    @property
    def advisory_ids(self) -> tuple[str, ...]:
        return self.tcb.advisory_ids


# --- primitives (cached by exact bytes where the result depends on bytes only) ----


@functools.lru_cache(maxsize=256)
def _p256_key(xy: bytes, what: str) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)
    except ValueError:
        raise MalformedEvidence(f"{what} is not a point on P-256") from None


def _verify_raw(key: ec.EllipticCurvePublicKey, sig: bytes, data: bytes, what: str) -> None:
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerificationFailed(f"{what} does not verify") from None


def _ec_key(cert: x509.Certificate, what: str) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise VerificationFailed(f"{what} does not have a P-256 key")
    return key


_KNOWN_CRITICAL = {x509.oid.ExtensionOID.BASIC_CONSTRAINTS, x509.oid.ExtensionOID.KEY_USAGE}


@functools.lru_cache(maxsize=256)
def _cert(der: bytes, what: str) -> x509.Certificate:
    """An Intel certificate: strict envelope (pck.check_envelope), fully
    parsed, and no critical extension this verifier does not process
    (RFC 5280 4.2; Intel's carry only basicConstraints and keyUsage)."""
    check_envelope(der, what)
    cert = load_der(der, what)
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            raise VerificationFailed(f"{what} has an unknown critical extension {ext.oid.dotted_string}")
    return cert


def _key_usage_allows(cert: x509.Certificate, usage: str) -> bool:
    """True when the certificate has no keyUsage or its keyUsage has ``usage``."""
    try:
        return bool(getattr(cert.extensions.get_extension_for_class(x509.KeyUsage).value, usage))
    except x509.ExtensionNotFound:
        return True


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(CN)
    return str(attrs[0].value) if len(attrs) == 1 else ""


def _signed_by(child_der: bytes, issuer_der: bytes, what: str) -> None:
    """``child`` is signed by ``issuer`` (ecdsa-with-SHA256 on P-256, pinned)
    and names it as issuer (pki.signed_by, cached by certificate)."""
    child, issuer = _cert(child_der, what), _cert(issuer_der, f"issuer of {what}")
    signed_by(child, issuer, SigAlg.ECDSA_P256_SHA256, what)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


@functools.lru_cache(maxsize=64)
def _tcb_info(body: bytes, signer_der: bytes) -> TcbInfo:
    signed = split_signed_body(body, "tcbInfo", "TCB info")
    key = _ec_key(_cert(signer_der, "TCB Signing certificate"), "TCB Signing certificate")
    _verify_raw(key, signed.signature, signed.signed_bytes, "TCB info signature (by the TCB Signing key)")
    return parse_tcb_info(signed.value)


@functools.lru_cache(maxsize=64)
def _qe_identity(body: bytes, signer_der: bytes) -> EnclaveIdentity:
    signed = split_signed_body(body, "enclaveIdentity", "QE identity")
    key = _ec_key(_cert(signer_der, "TCB Signing certificate"), "TCB Signing certificate")
    _verify_raw(key, signed.signature, signed.signed_bytes, "QE identity signature (by the TCB Signing key)")
    return parse_enclave_identity(signed.value)


def _window(what: str, issue: datetime, next_update: datetime, at: datetime) -> None:
    """Intel's collateral window (TCB info, QE identity): issued <= at <=
    nextUpdate (pki.check_window; CRLs go through pki.check_crl)."""
    check_window(what, at, issue, next_update, "issued")


# --- the checks --------------------------------------------------------------------


@dataclass(frozen=True)
class _Pck:
    leaf: x509.Certificate
    leaf_der: bytes
    ca_der: bytes
    ca: str
    ext: PckExtensions


@functools.lru_cache(maxsize=256)
def _chain_kind(leaf_der: bytes, ca_der: bytes, root_der: bytes) -> str:
    """Everything about a PCK chain but time: signatures, issuer names, CA
    flag and CNs. Cached by exact DER; returns "platform" or "processor"."""
    ca, leaf = _cert(ca_der, "PCK CA certificate"), _cert(leaf_der, "PCK certificate")
    _signed_by(root_der, root_der, "Intel SGX Root CA (self-signature)")
    _signed_by(ca_der, root_der, "PCK CA certificate")
    _signed_by(leaf_der, ca_der, "PCK certificate")
    ca_kind = PCK_CA_CNS.get(_cn(ca))
    if ca_kind is None or not _is_ca(ca) or not _key_usage_allows(ca, "key_cert_sign"):
        raise VerificationFailed(
            f"PCK CA certificate is {_cn(ca)!r}, not an Intel SGX PCK Platform/Processor CA"
        )
    if _cn(leaf) != PCK_CN:
        raise VerificationFailed(f"PCK certificate subject CN is {_cn(leaf)!r}, not {PCK_CN!r}")
    if _is_ca(leaf) or not _key_usage_allows(leaf, "digital_signature"):
        raise VerificationFailed("PCK certificate is a CA or may not sign (basicConstraints/keyUsage)")
    return ca_kind


def _check_pck_chain(quote: Quote, root_der: bytes, at: datetime) -> _Pck:
    chain = quote.pck_chain
    if len(chain) != 3:
        raise VerificationFailed(f"PCK chain has {len(chain)} certificates (expected leaf, CA, root)")
    leaf_der, ca_der, root_in_quote = chain
    if root_in_quote != root_der:
        raise VerificationFailed("PCK chain does not end in the trusted Intel SGX Root CA")
    ca_kind = _chain_kind(leaf_der, ca_der, root_der)
    leaf = _cert(leaf_der, "PCK certificate")
    for der, what in (
        (root_der, "Intel SGX Root CA"),
        (ca_der, "PCK CA certificate"),
        (leaf_der, "PCK certificate"),
    ):
        check_validity(_cert(der, what), what, at)
    return _Pck(leaf, leaf_der, ca_der, ca_kind, _sgx_extension(leaf_der))


@functools.lru_cache(maxsize=256)
def _sgx_extension(leaf_der: bytes) -> PckExtensions:
    return read_sgx_extension(_cert(leaf_der, "PCK certificate"))


@functools.lru_cache(maxsize=1024)
def _qe_report_signed(leaf_der: bytes, qe_report: bytes, signature: bytes) -> None:
    """The QE report signature by the PCK key. Cached by exact bytes: a
    platform's QE certifies one attestation key for a long time, so its
    quotes share one QE report and only the quote signature is new."""
    leaf = _cert(leaf_der, "PCK certificate")
    _verify_raw(
        _ec_key(leaf, "PCK certificate"), signature, qe_report, "QE report signature (by the PCK key)"
    )


def _check_qe_binding(quote: Quote, pck: _Pck) -> None:
    _qe_report_signed(pck.leaf_der, quote.qe_report.raw, quote.qe_report_signature)
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if quote.qe_report.report_data != expected:
        raise VerificationFailed(
            "QE report data is not SHA-256(attestation key || QE auth data): the attestation key "
            "is not the one the QE certified"
        )


def _check_quote_signature(quote: Quote) -> None:
    key = _p256_key(quote.attestation_key, "attestation key")
    _verify_raw(key, quote.signature, quote.signed_bytes, "quote signature (by the attestation key)")


def _expect_tee(quote: Quote, tee: TeeType | None) -> None:
    if tee is not None and quote.tee_type is not tee:
        raise VerificationFailed(f"expected a {tee.name} quote, got {quote.tee_type.name}")


def check_quote(
    quote_bytes: bytes,
    at: datetime,
    *,
    root_der: bytes | None = None,
    allow_trailing: bool = False,
    tee: TeeType | None = None,
) -> CheckedQuote:
    """Quote-only checks (no collateral): structure, PCK chain to the root at
    ``at``, QE report signature and binding, quote signature. For quotes
    whose collateral is not available; gives no TCB status and no claims."""
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")
    root_der = intel_root_der() if root_der is None else root_der
    quote = Quote.from_bytes(quote_bytes, allow_trailing=allow_trailing)
    _expect_tee(quote, tee)
    pck = _check_pck_chain(quote, root_der, at)
    _check_qe_binding(quote, pck)
    _check_quote_signature(quote)
    return CheckedQuote(quote, pck.ext, pck.ca, _fingerprint(root_der), at)


def _check_revocation(
    collateral: Collateral, pck: _Pck, signer_der: bytes, root_der: bytes, at: datetime, required: bool
) -> bool:
    missing = [
        n for n, v in (("root CA CRL", collateral.root_ca_crl), ("PCK CRL", collateral.pck_crl)) if v is None
    ]
    if missing and required:
        raise CollateralUnavailable(
            f"no {' and no '.join(missing)} in the collateral: revocation cannot be checked"
        )
    if collateral.root_ca_crl is not None:
        root_crl = _root_crl_verdict(collateral.root_ca_crl, root_der, pck.ca_der, signer_der)
        check_window("root CA CRL", at, root_crl.this_update, root_crl.next_update, "thisUpdate")
    if collateral.pck_crl is not None:
        pck_crl = _pck_crl_verdict(collateral.pck_crl, pck.ca_der, pck.leaf_der)
        check_window("PCK CRL", at, pck_crl.this_update, pck_crl.next_update, "thisUpdate")
    return not missing


@functools.lru_cache(maxsize=64)
def _root_crl_verdict(crl_der: bytes, root_der: bytes, ca_der: bytes, signer_der: bytes) -> Crl:
    """Everything about the root CA CRL but time: it parses, the root issued
    and signed it, and it revokes neither the PCK CA nor the TCB Signing
    certificate. Cached by exact bytes (a failure raises and is not cached);
    the caller checks the CRL's window at its verification time."""
    crl = load_crl(crl_der, "root CA CRL")
    crl_signed_by(crl, _cert(root_der, "Intel SGX Root CA"), SigAlg.ECDSA_P256_SHA256, "root CA CRL")
    if crl.revoked(_cert(ca_der, "PCK CA certificate")) is not None:
        raise VerificationFailed("PCK CA certificate is revoked by the root CA CRL")
    if crl.revoked(_cert(signer_der, "TCB Signing certificate")) is not None:
        raise VerificationFailed("TCB Signing certificate is revoked by the root CA CRL")
    return crl


@functools.lru_cache(maxsize=256)
def _pck_crl_verdict(crl_der: bytes, ca_der: bytes, leaf_der: bytes) -> Crl:
    """Everything about the PCK CRL but time: it parses, the PCK CA issued
    and signed it, and it does not revoke the PCK certificate (cached as
    :func:`_root_crl_verdict`)."""
    crl = load_crl(crl_der, "PCK CRL")
    crl_signed_by(crl, _cert(ca_der, "PCK CA certificate"), SigAlg.ECDSA_P256_SHA256, "PCK CRL")
    leaf = _cert(leaf_der, "PCK certificate")
    if crl.revoked(leaf) is not None:
        raise VerificationFailed(f"PCK certificate (serial 0x{serial(leaf):x}) is revoked by the PCK CRL")
    return crl


@functools.lru_cache(maxsize=16)
def _tcb_signer_der(chain_pem: bytes, root_der: bytes) -> bytes:
    """The TCB Signing certificate of ``chain_pem`` after its structure, CN
    and signature checks (everything but time, which the caller checks)."""
    certs = load_pem_chain(chain_pem, "TCB signing chain")
    ders = [der_of(c) for c in certs]
    if not 1 <= len(ders) <= 2 or (len(ders) == 2 and ders[1] != root_der):
        raise VerificationFailed(
            "TCB signing chain must be the TCB Signing certificate, then the trusted root"
        )
    signer_der = ders[0]
    signer = _cert(signer_der, "TCB Signing certificate")
    _signed_by(root_der, root_der, "Intel SGX Root CA (self-signature)")
    _signed_by(signer_der, root_der, "TCB Signing certificate")
    if _cn(signer) != TCB_SIGNING_CN:
        raise VerificationFailed(
            f"TCB Signing certificate subject CN is {_cn(signer)!r}, not {TCB_SIGNING_CN!r}"
        )
    if _is_ca(signer) or not _key_usage_allows(signer, "digital_signature"):
        raise VerificationFailed(
            "TCB Signing certificate is a CA or may not sign (basicConstraints/keyUsage)"
        )
    return signer_der


def _tcb_signer(collateral: Collateral, root_der: bytes, at: datetime) -> bytes:
    signer_der = _tcb_signer_der(collateral.tcb_signing_chain, root_der)
    check_validity(_cert(signer_der, "TCB Signing certificate"), "TCB Signing certificate", at)
    return signer_der


def _check_qe_identity(quote: Quote, identity: EnclaveIdentity) -> None:
    qe = quote.qe_report
    misc = bytes(a & m for a, m in zip(qe.misc_select_bytes, identity.misc_select_mask, strict=True))
    if misc != identity.misc_select:
        raise VerificationFailed(
            f"QE identity mismatch: MISCSELECT {qe.misc_select_bytes.hex()} under mask "
            f"{identity.misc_select_mask.hex()} is not {identity.misc_select.hex()}"
        )
    attrs = bytes(a & m for a, m in zip(qe.attributes, identity.attributes_mask, strict=True))
    if attrs != identity.attributes:
        raise VerificationFailed(
            f"QE identity mismatch: ATTRIBUTES {qe.attributes.hex()} under mask "
            f"{identity.attributes_mask.hex()} are not {identity.attributes.hex()}"
        )
    if qe.mr_signer != identity.mr_signer:
        raise VerificationFailed(
            f"QE identity mismatch: MRSIGNER {qe.mr_signer.hex()} is not {identity.mr_signer.hex()}"
        )
    if qe.isv_prod_id != identity.isv_prod_id:
        raise VerificationFailed(
            f"QE identity mismatch: ISVPRODID {qe.isv_prod_id} is not {identity.isv_prod_id}"
        )


def verify_quote(
    quote_bytes: bytes,
    collateral: Collateral,
    at: datetime,
    *,
    root_der: bytes | None = None,
    allow_trailing: bool = False,
    check_revocation: bool = True,
    tee: TeeType | None = None,
) -> VerifiedQuote:
    """Verify a DCAP quote (SGX v3/v4/v5 or TDX v4/v5) with its collateral at
    ``at``. ``check_revocation=False`` accepts collateral without CRLs (the
    result then says ``revocation_checked=False``); CRLs that are given are
    always checked."""
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")
    root_der = intel_root_der() if root_der is None else root_der
    quote = Quote.from_bytes(quote_bytes, allow_trailing=allow_trailing)
    _expect_tee(quote, tee)
    tdx = quote.tee_type is TeeType.TDX
    pck = _check_pck_chain(quote, root_der, at)
    signer_der = _tcb_signer(collateral, root_der, at)
    revocation_checked = _check_revocation(collateral, pck, signer_der, root_der, at, check_revocation)

    tcb_info = _tcb_info(collateral.tcb_info, signer_der)
    _window("TCB info", tcb_info.issue_date, tcb_info.next_update, at)
    if tcb_info.id != ("TDX" if tdx else "SGX"):
        raise VerificationFailed(f"TCB info is for {tcb_info.id}, the quote is {quote.tee_type.name}")
    if tcb_info.fmspc != pck.ext.fmspc:
        raise VerificationFailed(
            f"TCB info is for FMSPC {tcb_info.fmspc.hex()}, the PCK certificate says {pck.ext.fmspc.hex()}"
        )
    if tcb_info.pce_id != pck.ext.pce_id:
        raise VerificationFailed(
            f"TCB info is for PCE-ID {tcb_info.pce_id.hex()}, the PCK certificate says {pck.ext.pce_id.hex()}"
        )
    identity = _qe_identity(collateral.qe_identity, signer_der)
    _window("QE identity", identity.issue_date, identity.next_update, at)
    expected_id = "TD_QE" if tdx else "QE"
    if identity.id != expected_id:
        raise VerificationFailed(
            f"QE identity mismatch: identity is {identity.id!r}, a {quote.tee_type.name} quote needs {expected_id!r}"
        )

    td = quote.body if isinstance(quote.body, TdReport) else None
    module = select_module(tcb_info, td, quote.version) if td is not None else None

    _check_qe_binding(quote, pck)
    _check_qe_identity(quote, identity)
    _check_quote_signature(quote)

    qe = qe_level(identity, quote.qe_report.isv_svn)
    evaluation = evaluate(tcb_info, pck.ext.tcb_components, pck.ext.pce_svn, td, module, qe)
    # The collateral's dates for the claims: TCB info and QE identity
    # issueDate/nextUpdate, and the thisUpdate/nextUpdate of the CRLs
    # applied (load_crl returns the object _check_revocation checked).
    dated = [(tcb_info.issue_date, tcb_info.next_update), (identity.issue_date, identity.next_update)]
    for crl_der, what in ((collateral.root_ca_crl, "root CA CRL"), (collateral.pck_crl, "PCK CRL")):
        if crl_der is not None:
            crl = load_crl(crl_der, what)
            dated.append((crl.this_update, crl.next_update))
    claims = _claims(quote, pck, evaluation, tcb_info, root_der, at, collateral_dates(dated))
    return VerifiedQuote(
        quote=quote,
        pck=pck.ext,
        pck_ca=pck.ca,
        tcb=evaluation,
        tcb_info_evaluation_number=tcb_info.tcb_evaluation_data_number,
        qe_identity_evaluation_number=identity.tcb_evaluation_data_number,
        revocation_checked=revocation_checked,
        claims=claims,
    )


def _fingerprint(der: bytes) -> str:
    return fingerprint(_cert(der, "Intel SGX Root CA"))


_SGX_COMP_NAMES = tuple(f"sgx_tcb_comp{i:02d}" for i in range(1, 17))
_TEE_SVN_NAMES = tuple(f"tee_tcb_svn_{i:02d}" for i in range(16))


def _claims(
    quote: Quote,
    pck: _Pck,
    ev: TcbEvaluation,
    tcb_info: TcbInfo,
    root_der: bytes,
    at: datetime,
    dates: tuple[datetime | None, datetime | None] = (None, None),
) -> VerifiedClaims:
    """Normalized claims (docs: evidence/intel/README.md "Claims")."""
    body = quote.body
    tcb: list[tuple[str, int]] = [
        ("pce_svn", pck.ext.pce_svn),
        *zip(_SGX_COMP_NAMES, pck.ext.tcb_components, strict=True),
        ("qe_svn", quote.qe_report.isv_svn),
        ("tcb_evaluation_data_number", tcb_info.tcb_evaluation_data_number),
    ]
    if isinstance(body, TdReport):
        tcb += zip(_TEE_SVN_NAMES, body.tee_tcb_svn, strict=True)
        module = ev.module_id or "TDX 1.0 module"
        return VerifiedClaims(
            platform=Platform.TDX.value,
            product="Intel TDX",
            signer=f"PCK-{pck.ca.capitalize()}",
            measurement=body.mr_td,
            report_data=body.report_data,
            host_data=body.mr_config_id,
            debug=body.debug,
            vmpl=None,
            chip_id=pck.ext.ppid,
            tcb=tuple(tcb),
            firmware=f"{module} SVN {body.module_svn}",
            policy_flags=tuple(body.attribute_flags().items()),
            report_version=quote.version,
            root_fingerprint=_fingerprint(root_der),
            verified_at=at,
            registers=body.registers(),
            tcb_status=ev.status.value,
            advisory_ids=ev.advisory_ids,
            fmspc=pck.ext.fmspc.hex(),
            collateral_issued=dates[0],
            collateral_next_update=dates[1],
            _token=_VERIFIED,
        )
    assert isinstance(body, EnclaveReport)
    tcb += [("isv_prod_id", body.isv_prod_id), ("isv_svn", body.isv_svn), ("config_svn", body.config_svn)]
    return VerifiedClaims(
        platform=Platform.SGX.value,
        product="Intel SGX",
        signer=f"PCK-{pck.ca.capitalize()}",
        measurement=body.mr_enclave,
        report_data=body.report_data,
        host_data=body.config_id,
        debug=body.debug,
        vmpl=None,
        chip_id=pck.ext.ppid,
        tcb=tuple(tcb),
        firmware=f"CPUSVN {pck.ext.cpu_svn.hex()} PCESVN {pck.ext.pce_svn}",
        policy_flags=tuple(body.attribute_flags().items()),
        report_version=quote.version,
        root_fingerprint=_fingerprint(root_der),
        verified_at=at,
        registers=(
            ("mrenclave", body.mr_enclave),
            ("mrsigner", body.mr_signer),
            ("attributes", body.attributes),
            ("miscselect", body.misc_select_bytes),
            ("configid", body.config_id),
            ("isvextprodid", body.isv_ext_prod_id),
            ("isvfamilyid", body.isv_family_id),
            ("cpusvn", body.cpu_svn),
        ),
        tcb_status=ev.status.value,
        advisory_ids=ev.advisory_ids,
        fmspc=pck.ext.fmspc.hex(),
        collateral_issued=dates[0],
        collateral_next_update=dates[1],
        _token=_VERIFIED,
    )


__all__ = [
    "CheckedQuote",
    "Collateral",
    "TcbLevelNotSupported",
    "TcbStatus",
    "VerifiedQuote",
    "check_quote",
    "intel_root_der",
    "verify_quote",
]
