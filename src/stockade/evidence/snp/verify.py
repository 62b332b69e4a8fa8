"""SEV-SNP report verification: pure, no I/O, explicit roots and time.

Inputs are the report bytes as received, the endorsement certificate (VCEK
or VLEK) and the intermediate (ASK or ASVK) as DER, the trusted roots, and
the time at which certificate validity is judged. The result is a
:class:`VerifiedReport` (with normalized :class:`VerifiedClaims`) or an
exception: MalformedEvidence when bytes do not parse, VerificationFailed when
a check fails. The sim backend goes through exactly this code with its own
root.

Checks, in order (AMD SEV-SNP ABI spec pub. 56860 "Attestation"; VCEK spec
pub. 57230): report structure and reserved fields; product from CPUID or the
endorsement certificate; a trusted root for that product (of those given,
the one named as the intermediate's issuer) is self-signed and signed the
intermediate, endorsement signed by the intermediate (all
RSASSA-PSS SHA-384, salt 48), issuer names chain, each certificate valid at
``at``; signer kind in KEY_INFO matches the certificate (VCEK vs VLEK);
endorsement TCB extensions equal REPORTED_TCB; VCEK hwID equals CHIP_ID;
ECDSA P-384 SHA-384 signature over bytes 0x000-0x29F.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from stockade.errors import MalformedEvidence, VerificationFailed
from stockade.evidence.claims import _VERIFIED, VerifiedClaims
from stockade.evidence.snp.abi import AttestationReport, Product, SigningKey
from stockade.evidence.snp.certs import EndorsementExtensions, read_extensions
from stockade.evidence.x509util import der_of, fingerprint, load_der, load_pem_chain

_PSS_OID = x509.oid.SignatureAlgorithmOID.RSASSA_PSS


@dataclass(frozen=True)
class TrustAnchor:
    """A root (ARK) trusted for one product, labelled with the platform it
    vouches for: "snp" for AMD's roots, "sim" for a sim chip's root."""

    platform: str
    product: Product
    ark_der: bytes


@dataclass(frozen=True)
class VerifiedReport:
    report: AttestationReport
    product: Product
    endorsement: EndorsementExtensions
    claims: VerifiedClaims


def amd_anchors() -> tuple[TrustAnchor, ...]:
    """AMD's ARKs for Milan, Genoa and Turin, shipped in the package
    (evidence/snp/roots/README.md gives their origin and fingerprints)."""
    anchors = []
    for product in Product:
        pem = (resources.files(__package__) / "roots" / f"ask_ark_{product.value.lower()}.pem").read_bytes()
        ark = load_pem_chain(pem, f"bundled {product.value} chain")[-1]
        anchors.append(TrustAnchor("snp", product, der_of(ark)))
    return tuple(anchors)


def bundled_intermediate(product: Product, signer: SigningKey) -> bytes:
    """The ASK (VCEK signer) or ASVK (VLEK signer) shipped for a product."""
    stem = "ask_ark" if signer is SigningKey.VCEK else "asvk_ark"
    suffix = "" if signer is SigningKey.VCEK else "_vlek"
    name = f"{stem}_{product.value.lower()}{suffix}.pem"
    pem = (resources.files(__package__) / "roots" / name).read_bytes()
    return der_of(load_pem_chain(pem, name)[0])


def _check_validity(cert: x509.Certificate, what: str, at: datetime) -> None:
    if at < cert.not_valid_before_utc:
        raise VerificationFailed(
            f"{what} is not yet valid at {at.isoformat()} (from {cert.not_valid_before_utc.isoformat()})"
        )
    if at > cert.not_valid_after_utc:
        raise VerificationFailed(
            f"{what} expired at {cert.not_valid_after_utc.isoformat()} (checked at {at.isoformat()})"
        )


@functools.lru_cache(maxsize=256)
def _pss_signed_by(child_der: bytes, issuer_der: bytes, what: str) -> None:
    """RSASSA-PSS SHA-384 signature of ``child`` by ``issuer``. Cached by exact
    DER bytes: a hit means these same bytes verified before."""
    child, issuer = load_der(child_der, what), load_der(issuer_der, f"issuer of {what}")
    if child.signature_algorithm_oid != _PSS_OID:
        raise VerificationFailed(f"{what} is not signed with RSASSA-PSS")
    if child.issuer != issuer.subject:
        raise VerificationFailed(
            f"{what} issuer {child.issuer.rfc4514_string()} is not {issuer.subject.rfc4514_string()}"
        )
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise VerificationFailed(f"issuer of {what} does not have an RSA key")
    try:
        key.verify(
            child.signature,
            child.tbs_certificate_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
            hashes.SHA384(),
        )
    except InvalidSignature:
        raise VerificationFailed(
            f"{what} signature does not verify under {issuer.subject.rfc4514_string()}"
        ) from None


def _endorsement_product(cert: x509.Certificate) -> EndorsementExtensions:
    return read_extensions(cert)


def _select_anchor(
    anchors: Iterable[TrustAnchor],
    product: Product,
    intermediate: x509.Certificate,
    intermediate_der: bytes,
) -> tuple[TrustAnchor, x509.Certificate]:
    """The trusted root of ``product`` that issued the intermediate: several
    roots may be trusted for one product (AMD's and a sim chip's), so the
    root is chosen by the intermediate's issuer name, then both signatures
    (root self-signature, intermediate by root) must verify."""
    candidates = [a for a in anchors if a.product is product]
    if not candidates:
        raise VerificationFailed(f"no trusted root for product {product.value}")
    failure: VerificationFailed | None = None
    for anchor in candidates:
        ark = load_der(anchor.ark_der, f"{product.value} root")
        if ark.subject != intermediate.issuer:
            continue
        try:
            _pss_signed_by(anchor.ark_der, anchor.ark_der, f"{product.value} root (self-signature)")
            _pss_signed_by(intermediate_der, anchor.ark_der, "intermediate certificate (ASK/ASVK)")
        except VerificationFailed as exc:
            failure = failure or exc
            continue
        return anchor, ark
    if failure is not None:
        raise failure
    raise VerificationFailed(
        f"no trusted root for product {product.value} issued the intermediate certificate "
        f"(its issuer is {intermediate.issuer.rfc4514_string()})"
    )


def verify_report(
    report_bytes: bytes,
    endorsement_der: bytes,
    intermediate_der: bytes,
    anchors: Iterable[TrustAnchor],
    at: datetime,
    product_hint: Product | None = None,
) -> VerifiedReport:
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")
    report = AttestationReport.from_bytes(report_bytes)
    if report.signing_key is SigningKey.NONE:
        raise VerificationFailed("report is unsigned (KEY_INFO signing key = none)")

    endorsement = load_der(endorsement_der, "endorsement certificate")
    intermediate = load_der(intermediate_der, "intermediate certificate")
    ext = read_extensions(endorsement)
    product = report.product(product_hint or ext.product)

    anchor, ark = _select_anchor(anchors, product, intermediate, intermediate_der)
    _pss_signed_by(endorsement_der, intermediate_der, "endorsement certificate (VCEK/VLEK)")
    for cert, what in (
        (ark, "root"),
        (intermediate, "intermediate certificate"),
        (endorsement, "endorsement certificate"),
    ):
        _check_validity(cert, what, at)

    cn = endorsement.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cert_kind = str(cn[0].value) if cn else ""
    expected_kind = "SEV-VCEK" if report.signing_key is SigningKey.VCEK else "SEV-VLEK"
    if cert_kind != expected_kind:
        raise VerificationFailed(
            f"report says it is signed by a {report.signing_key.name} but the certificate is {cert_kind or 'unnamed'}"
        )

    reported = report.reported_tcb.components(product)
    if ext.tcb != reported:
        diffs = ", ".join(
            f"{k}: certificate {ext.tcb.get(k)} report {v}"
            for k, v in reported.items()
            if ext.tcb.get(k) != v
        )
        raise VerificationFailed(f"endorsement TCB does not match REPORTED_TCB ({diffs})")
    if report.signing_key is SigningKey.VCEK:
        if ext.hwid is None:
            raise VerificationFailed("VCEK lacks the hwID extension")
        chip = report.chip_id[: len(ext.hwid)]
        if ext.hwid != chip or any(report.chip_id[len(ext.hwid) :]):
            raise VerificationFailed("VCEK hwID does not match the report CHIP_ID")

    key = endorsement.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise VerificationFailed("endorsement key is not ECDSA P-384")
    try:
        key.verify(
            encode_dss_signature(report.sig_r, report.sig_s),
            report.signed_bytes,
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature:
        raise VerificationFailed("report signature does not verify with the endorsement key") from None

    tcb = report.reported_tcb.components(product)
    claims = VerifiedClaims(
        platform=anchor.platform,
        product=product.value,
        signer=report.signing_key.name,
        measurement=report.measurement,
        report_data=report.report_data,
        host_data=report.host_data,
        debug=report.policy.debug,
        vmpl=report.vmpl,
        chip_id=report.chip_id,
        tcb=tuple(tcb.items()),
        firmware=".".join(map(str, report.current_version)),
        policy_flags=tuple(report.policy.flags().items()),
        report_version=report.version,
        root_fingerprint=fingerprint(ark),
        verified_at=at,
        _token=_VERIFIED,
    )
    return VerifiedReport(report=report, product=product, endorsement=ext, claims=claims)


__all__ = [
    "MalformedEvidence",
    "TrustAnchor",
    "VerificationFailed",
    "VerifiedReport",
    "amd_anchors",
    "bundled_intermediate",
    "verify_report",
]
