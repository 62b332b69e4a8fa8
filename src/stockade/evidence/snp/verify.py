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
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from stockade.errors import CollateralUnavailable, MalformedEvidence, VerificationFailed
from stockade.evidence.claims import _VERIFIED, VerifiedClaims
from stockade.evidence.snp.abi import AttestationReport, Product, SigningKey
from stockade.evidence.snp.certs import EndorsementExtensions, read_extensions
from stockade.evidence.x509util import (
    PARSE_ERRORS,
    check_validity,
    check_window,
    der_of,
    fingerprint,
    load_der,
    load_pem_chain,
    serial,
)

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
        anchors.append(TrustAnchor("snp", product, der_of(ark)))
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


# --- CRLs ------------------------------------------------------------------------------

#: CRL extensions understood here; any other critical one makes a CRL unusable
#: (RFC 5280 5.2). A delta CRL (DeltaCRLIndicator) is refused: KDS serves full CRLs.
_KNOWN_CRL_EXTENSIONS = {
    x509.oid.ExtensionOID.CRL_NUMBER,
    x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    x509.oid.ExtensionOID.ISSUING_DISTRIBUTION_POINT,
}
#: What pyca raises, eagerly or on first access, for a CRL that does not parse.
CRL_PARSE_ERRORS = PARSE_ERRORS


@dataclass(frozen=True)
class _Crl:
    der: bytes
    issuer: x509.Name
    this_update: datetime
    next_update: datetime
    #: (certificate issuer, serial, revocation date) of every entry.
    entries: tuple[tuple[x509.Name, int, datetime], ...]


def _entries(crl: x509.CertificateRevocationList) -> Iterator[tuple[x509.Name, int, datetime]]:
    """Entries with their certificate issuer: the CRL issuer, or for an
    indirect CRL the entry's certificateIssuer extension, which carries over
    to the following entries (RFC 5280 5.3.3)."""
    issuer = crl.issuer
    for entry in crl:
        try:
            ext = entry.extensions.get_extension_for_class(x509.CertificateIssuer)
        except x509.ExtensionNotFound:
            pass
        else:
            names = [n.value for n in ext.value if isinstance(n, x509.DirectoryName)]
            if len(names) != 1:
                raise MalformedEvidence("CRL entry certificateIssuer is not one directory name")
            issuer = names[0]
        for e in entry.extensions:
            if e.critical and e.oid != x509.oid.CRLEntryExtensionOID.CERTIFICATE_ISSUER:
                raise MalformedEvidence(
                    f"CRL entry has an unsupported critical extension {e.oid.dotted_string}"
                )
        yield issuer, entry.serial_number, entry.revocation_date_utc


@functools.lru_cache(maxsize=64)
def _parse_crl(der: bytes) -> _Crl:
    """Parse every part of a DER CRL (pyca parses lazily); cached by bytes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            crl = x509.load_der_x509_crl(der)
            exts = crl.extensions
            for ext in exts:
                if ext.oid == x509.oid.ExtensionOID.DELTA_CRL_INDICATOR:
                    raise MalformedEvidence("CRL is a delta CRL; a full CRL is needed")
                if ext.critical and ext.oid not in _KNOWN_CRL_EXTENSIONS:
                    raise MalformedEvidence(
                        f"CRL has an unsupported critical extension {ext.oid.dotted_string}"
                    )
                idp = ext.value
                if isinstance(idp, x509.IssuingDistributionPoint) and (
                    idp.only_some_reasons or idp.only_contains_attribute_certs
                ):
                    raise MalformedEvidence("CRL covers only some reasons or attribute certificates")
            next_update = crl.next_update_utc
            if next_update is None:
                raise MalformedEvidence("CRL has no nextUpdate (RFC 5280 requires one)")
            _ = crl.signature_algorithm_oid, crl.signature, crl.tbs_certlist_bytes
            return _Crl(
                der=der,
                issuer=crl.issuer,
                this_update=crl.last_update_utc,
                next_update=next_update,
                entries=tuple(_entries(crl)),
            )
    except CRL_PARSE_ERRORS as exc:
        raise MalformedEvidence(f"CRL: not a valid DER CRL ({exc})") from None


@functools.lru_cache(maxsize=64)
def _crl_signed_by(crl_der: bytes, issuer_der: bytes) -> None:
    """RSASSA-PSS SHA-384 (salt 48) signature of a CRL by ``issuer``, as AMD's
    ARK signs the KDS CRLs. Cached by exact DER bytes of both."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        crl = x509.load_der_x509_crl(crl_der)
    issuer = load_der(issuer_der, "CRL issuer")
    name = issuer.subject.rfc4514_string()
    if crl.signature_algorithm_oid != _PSS_OID:
        raise VerificationFailed(f"CRL of {name} is not signed with RSASSA-PSS")
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise VerificationFailed(f"issuer of the CRL of {name} does not have an RSA key")
    try:
        key.verify(
            crl.signature,
            crl.tbs_certlist_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
            hashes.SHA384(),
        )
    except InvalidSignature:
        raise VerificationFailed(f"CRL signature does not verify under {name}") from None


def _check_crls(
    crls: Iterable[bytes],
    ark: tuple[x509.Certificate, bytes],
    intermediate: tuple[x509.Certificate, bytes],
    endorsement: x509.Certificate,
    at: datetime,
) -> tuple[tuple[str, ...], bool]:
    """Apply the CRLs of this chain; return their issuers and whether one of
    them was the root's.

    A CRL belongs to the chain when its issuer is the root (AMD's KDS CRLs:
    one per product and signer kind, issued and signed by the ARK) or the
    intermediate; other CRLs (other products, other roots) are ignored. Each
    one used must parse (else MalformedEvidence), carry a valid signature by
    its issuer and satisfy thisUpdate <= at <= nextUpdate (else
    VerificationFailed). Neither the intermediate nor the endorsement
    certificate may be listed: an entry revokes a certificate when its serial
    and its certificate issuer (the CRL issuer, or the certificateIssuer of an
    indirect CRL entry) both match, as RFC 5280 defines. A serial alone is not
    enough: every AMD VCEK and VLEK has serial 0, so an ARK-issued entry for
    serial 0 names a certificate of the ARK, not every VCEK.
    """
    crls = tuple(crls)
    if not crls:
        return (), False
    ark_cert, ark_der = ark
    inter_cert, inter_der = intermediate
    signers = {ark_cert.subject: ark_der, inter_cert.subject: inter_der}
    used: list[_Crl] = []
    for der in crls:
        crl = _parse_crl(bytes(der))
        signer = signers.get(crl.issuer)
        if signer is None:
            continue
        _crl_signed_by(crl.der, signer)
        name = crl.issuer.rfc4514_string()
        check_window(f"CRL of {name}", at, crl.this_update, crl.next_update, "thisUpdate")
        used.append(crl)
    checked = (
        (inter_cert, "intermediate certificate (ASK/ASVK)"),
        (endorsement, "endorsement certificate (VCEK/VLEK)"),
    )
    for crl in used:
        for cert, what in checked:
            number = serial(cert)
            for issuer, revoked, when in crl.entries:
                if revoked == number and issuer == cert.issuer:
                    raise VerificationFailed(
                        f"{what} {cert.subject.rfc4514_string()} serial 0x{number:x} is revoked "
                        f"since {when.isoformat()} (CRL of {crl.issuer.rfc4514_string()})"
                    )
    used.sort(key=lambda c: c.issuer != ark_cert.subject)
    issuers = tuple(dict.fromkeys(c.issuer.rfc4514_string() for c in used))
    return issuers, any(c.issuer == ark_cert.subject for c in used)


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
    crl_issuers, root_crl = _check_crls(
        crls, (ark, anchor.ark_der), (intermediate, intermediate_der), endorsement, at
    )
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
