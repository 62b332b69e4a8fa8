"""SEV-SNP report verification: pure, no I/O, explicit roots and time.

Inputs are the report bytes as received, the endorsement certificate (VCEK
or VLEK) and the intermediate (ASK or ASVK) as DER, the trusted roots, the
time at which certificate and CRL validity is judged and, optionally, CRLs
(DER, as AMD's KDS serves them). The result is a :class:`VerifiedReport`
(with normalized :class:`VerifiedClaims`) or an exception: MalformedEvidence
when bytes do not parse, VerificationFailed when a check fails,
CollateralUnavailable when ``require_crl`` is set and no CRL of the root was
given. The sim backend goes through exactly this code with its own root.
Collateral is fetched elsewhere (collateral.py); this module never fetches.

Checks, in order (AMD SEV-SNP ABI spec pub. 56860 "Attestation"; VCEK spec
pub. 57230): report structure and reserved fields; product from CPUID or the
product hint (else, for a v2 report, the endorsement certificate); a trusted
root for that product (of those given, the one named as the intermediate's
issuer) is self-signed and signed the intermediate, endorsement signed by the
intermediate (all RSASSA-PSS SHA-384, salt 48), issuer names chain, each
certificate valid at ``at``; CRLs of the chain (see :func:`_check_crls`);
signer kind in KEY_INFO matches the certificate (VCEK vs VLEK); the
endorsement's productName names the same product; REPORTED_TCB reserved
bytes are zero; endorsement TCB extensions equal REPORTED_TCB; VCEK hwID has
the product's length (64 bytes; 8 on Turin) and equals CHIP_ID (on Turin the
rest of CHIP_ID is zero); ECDSA P-384 SHA-384 signature over bytes
0x000-0x29F.

Contents of the endorsement certificate other than what selects the root
(its productName, for a v2 report without hint) are compared only after its
signature chain has verified.
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
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from stockade.errors import CollateralUnavailable, MalformedEvidence, VerificationFailed
from stockade.evidence.claims import _VERIFIED, VerifiedClaims, collateral_dates
from stockade.evidence.pki import (
    PARSE_ERRORS,
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
from stockade.evidence.snp.abi import AttestationReport, Product, SigningKey
from stockade.evidence.snp.certs import EndorsementExtensions, read_extensions
from stockade.wire.platform import Platform


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
    #: Issuers (RFC 4514) of the CRLs that were applied; empty when no CRL of
    #: this chain was given.
    crl_issuers: tuple[str, ...] = ()
    #: True when a CRL issued by the root was applied (it covers the
    #: intermediate, and the endorsement through indirect entries).
    revocation_checked: bool = False


def amd_anchors() -> tuple[TrustAnchor, ...]:
    """AMD's ARKs for Milan, Genoa and Turin, shipped in the package
    (evidence/snp/roots/README.md gives their origin and fingerprints)."""
    anchors = []
    for product in Product:
        pem = (resources.files(__package__) / "roots" / f"ask_ark_{product.value.lower()}.pem").read_bytes()
        ark = load_pem_chain(pem, f"bundled {product.value} chain")[-1]
        anchors.append(TrustAnchor(Platform.SNP.value, product, der_of(ark)))
    return tuple(anchors)


def bundled_intermediate(product: Product, signer: SigningKey) -> bytes:
    """The ASK (VCEK signer) or ASVK (VLEK signer) shipped for a product."""
    stem = "ask_ark" if signer is SigningKey.VCEK else "asvk_ark"
    suffix = "" if signer is SigningKey.VCEK else "_vlek"
    name = f"{stem}_{product.value.lower()}{suffix}.pem"
    pem = (resources.files(__package__) / "roots" / name).read_bytes()
    return der_of(load_pem_chain(pem, name)[0])


@functools.lru_cache(maxsize=256)
def _pss_signed_by(child_der: bytes, issuer_der: bytes, what: str) -> None:
    """RSASSA-PSS SHA-384 (salt 48) signature of ``child`` by ``issuer``
    (pki.signed_by). Cached by exact DER bytes, as before pki existed: one
    lookup on the hot path instead of two loads and a signature lookup."""
    child, issuer = load_der(child_der, what), load_der(issuer_der, f"issuer of {what}")
    signed_by(child, issuer, SigAlg.RSA_PSS_SHA384, what)


# --- CRLs ------------------------------------------------------------------------------

#: What pyca raises, eagerly or on first access, for a CRL that does not parse.
CRL_PARSE_ERRORS = PARSE_ERRORS


def _check_crls(
    crls: Iterable[bytes],
    ark: x509.Certificate,
    intermediate: x509.Certificate,
    endorsement: x509.Certificate,
    at: datetime,
) -> tuple[tuple[str, ...], bool, tuple[tuple[datetime, datetime], ...]]:
    """Apply the CRLs of this chain; return their issuers, whether one of
    them was the root's, and their (thisUpdate, nextUpdate) dates (for the
    claims' collateral dates).

    A CRL belongs to the chain when its issuer is the root (AMD's KDS CRLs:
    one per product and signer kind, issued and signed by the ARK) or the
    intermediate; other CRLs (other products, other roots) are ignored. Each
    one used must parse (else MalformedEvidence), carry a valid signature by
    its issuer and satisfy thisUpdate <= at <= nextUpdate (else
    VerificationFailed). Neither the intermediate nor the endorsement
    certificate may be listed (pki.Crl.revoked: serial and certificate
    issuer both match, as RFC 5280 defines; every AMD VCEK and VLEK has
    serial 0, so a serial alone names nothing).
    """
    crls = tuple(crls)
    if not crls:
        return (), False, ()
    signers = {ark.subject: ark, intermediate.subject: intermediate}
    used: list[Crl] = []
    for data in crls:
        crl = load_crl(bytes(data), "CRL")
        signer = signers.get(crl.issuer)
        if signer is None:
            continue
        crl_signed_by(crl, signer, SigAlg.RSA_PSS_SHA384, "CRL")
        name = crl.issuer.rfc4514_string()
        check_window(f"CRL of {name}", at, crl.this_update, crl.next_update, "thisUpdate")
        used.append(crl)
    checked = (
        (intermediate, "intermediate certificate (ASK/ASVK)"),
        (endorsement, "endorsement certificate (VCEK/VLEK)"),
    )
    for crl in used:
        for cert, what in checked:
            when = crl.revoked(cert)
            if when is not None:
                raise VerificationFailed(
                    f"{what} {cert.subject.rfc4514_string()} serial 0x{serial(cert):x} is revoked "
                    f"since {when.isoformat()} (CRL of {crl.issuer.rfc4514_string()})"
                )
    used.sort(key=lambda c: c.issuer != ark.subject)
    issuers = tuple(dict.fromkeys(c.issuer.rfc4514_string() for c in used))
    dates = tuple((c.this_update, c.next_update) for c in used)
    return issuers, any(c.issuer == ark.subject for c in used), dates


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
    *,
    crls: Iterable[bytes] = (),
    require_crl: bool = False,
) -> VerifiedReport:
    """Verify one SNP report (see the module docstring for the checks).

    ``crls``: DER CRLs, e.g. the KDS ``/vcek/v1/{product}/crl`` (and
    ``/vlek/...``) of the product; those not issued by this chain's root or
    intermediate are ignored. ``require_crl``: refuse with
    CollateralUnavailable unless a CRL issued by the root was among them.
    """
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")
    report = AttestationReport.from_bytes(report_bytes)
    if report.signing_key is SigningKey.NONE:
        raise VerificationFailed("report is unsigned (KEY_INFO signing key = none)")

    endorsement = load_der(endorsement_der, "endorsement certificate")
    intermediate = load_der(intermediate_der, "intermediate certificate")
    ext = read_extensions(endorsement)
    if product_hint is None and report.cpuid_fam_id is None:
        product = ext.product  # a v2 report without hint: the certificate is all there is
    else:
        product = report.product(product_hint)

    anchor, ark = _select_anchor(anchors, product, intermediate, intermediate_der)
    _pss_signed_by(endorsement_der, intermediate_der, "endorsement certificate (VCEK/VLEK)")
    for cert, what in (
        (ark, "root"),
        (intermediate, "intermediate certificate"),
        (endorsement, "endorsement certificate"),
    ):
        check_validity(cert, what, at)
    crl_issuers, root_crl, crl_dates = _check_crls(crls, ark, intermediate, endorsement, at)
    if require_crl and not root_crl:
        raise CollateralUnavailable(
            f"no CRL issued by {ark.subject.rfc4514_string()} was given and the verification requires one"
        )

    cn = endorsement.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cert_kind = str(cn[0].value) if cn else ""
    expected_kind = "SEV-VCEK" if report.signing_key is SigningKey.VCEK else "SEV-VLEK"
    if cert_kind != expected_kind:
        raise VerificationFailed(
            f"report says it is signed by a {report.signing_key.name} but the certificate is {cert_kind or 'unnamed'}"
        )
    if ext.product is not product:
        raise VerificationFailed(
            f"endorsement certificate is for {ext.product.value} (productName {ext.product_name!r}) "
            f"but the report is from a {product.value}"
        )

    if not report.reported_tcb.reserved_ok(product):
        raise MalformedEvidence(
            f"REPORTED_TCB {report.reported_tcb.hex()} has non-zero reserved bytes for {product.value}"
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
        _check_hwid(ext, report, product)

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
    collateral_issued, collateral_next_update = collateral_dates(crl_dates)
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
        collateral_issued=collateral_issued,
        collateral_next_update=collateral_next_update,
        _token=_VERIFIED,
    )
    return VerifiedReport(
        report=report,
        product=product,
        endorsement=ext,
        claims=claims,
        crl_issuers=crl_issuers,
        revocation_checked=root_crl,
    )


#: Length of the VCEK hwID per product (pub. 57230; Turin's is the 8-byte
#: CHIP_ID, which the report pads with zeros to 64 bytes).
HWID_LENGTH = {Product.MILAN: 64, Product.GENOA: 64, Product.TURIN: 8}


def _check_hwid(ext: EndorsementExtensions, report: AttestationReport, product: Product) -> None:
    if ext.hwid is None:
        raise VerificationFailed("VCEK lacks the hwID extension")
    size = HWID_LENGTH[product]
    if len(ext.hwid) != size:
        raise MalformedEvidence(f"VCEK hwID is {len(ext.hwid)} bytes; a {product.value} VCEK's is {size}")
    if ext.hwid != report.chip_id[:size]:
        raise VerificationFailed("VCEK hwID does not match the report CHIP_ID")
    if any(report.chip_id[size:]):
        raise VerificationFailed(
            f"report CHIP_ID has non-zero bytes after the {size}-byte {product.value} hwID"
        )


__all__ = [
    "CRL_PARSE_ERRORS",
    "HWID_LENGTH",
    "MalformedEvidence",
    "TrustAnchor",
    "VerificationFailed",
    "VerifiedReport",
    "amd_anchors",
    "bundled_intermediate",
    "verify_report",
]
