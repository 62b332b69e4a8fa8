"""Appraise a Keep's TLS certificate: evidence, binding, freshness, trust.

``appraise`` takes the DER certificate the Keep presented in the TLS
handshake (so the Keep proved possession of its key), the nonce this client
sent, and the trust configuration. It returns an :class:`Appraisal` or
raises: MalformedEvidence / VerificationFailed for evidence that does not
verify, PolicyRejected for verified evidence this deployment does not accept.
Verification runs over the received bytes, with explicit roots and time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.errors import MalformedEvidence, PolicyRejected, VerificationFailed
from stockade.evidence.claims import VerifiedClaims
from stockade.evidence.snp.abi import Product
from stockade.evidence.snp.verify import TrustAnchor, amd_anchors, verify_report
from stockade.wire.binding import report_data_for
from stockade.wire.evidence import EVIDENCE_OID, EvidenceBundle, bundle_from_extension


@dataclass(frozen=True)
class TrustConfig:
    """What this deployment trusts. ``sim_root`` is honoured only with
    ``allow_sim``; ``expected_measurement`` pins the Keep runtime."""

    allow_sim: bool = False
    sim_root: bytes | None = None
    expected_measurement: bytes | None = None
    allow_debug: bool = False
    at: datetime | None = None


@dataclass(frozen=True)
class Appraisal:
    claims: VerifiedClaims
    checks: tuple[str, ...] = field(default=())
    measurement_pinned: bool = False


def _evidence_of(cert: x509.Certificate) -> EvidenceBundle:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(EVIDENCE_OID))
    except x509.ExtensionNotFound:
        raise MalformedEvidence("the Keep's certificate carries no evidence extension") from None
    except ValueError as exc:
        raise MalformedEvidence(f"the Keep's certificate extensions do not parse: {exc}") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise MalformedEvidence("evidence extension has an unexpected type")
    return bundle_from_extension(value.value)


def appraise(cert_der: bytes, nonce: bytes, trust: TrustConfig) -> Appraisal:
    at = trust.at or datetime.now(UTC)
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        raise MalformedEvidence(f"the Keep's certificate does not parse: {exc}") from None
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationFailed("the Keep's TLS key is not an EC key")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerificationFailed("the Keep's certificate is not self-signed by its own key") from None

    bundle = _evidence_of(cert)
    checks: list[str] = []
    if bundle.platform == "sim" and not trust.allow_sim:
        raise PolicyRejected(
            "the Keep runs on the sim backend, which gives NO hardware protection; "
            "pass --allow-sim to accept it for development"
        )
    if bundle.platform not in ("sim", "snp"):
        raise VerificationFailed(f"verification of {bundle.platform} evidence is not implemented yet")
    anchors: list[TrustAnchor] = []
    if bundle.platform == "snp":
        anchors.extend(amd_anchors())
    if bundle.platform == "sim":
        if trust.sim_root is None:
            raise VerificationFailed("sim evidence received but no sim root is configured")
        anchors.append(TrustAnchor("sim", Product.MILAN, trust.sim_root))
    vcek, ask = bundle.cert("vcek"), bundle.cert("ask")
    if vcek is None or ask is None:
        raise MalformedEvidence("evidence lacks the VCEK and ASK certificates")
    verified = verify_report(bundle.report, vcek, ask, anchors, at)
    claims = verified.claims
    checks.append("report signature and certificate chain")

    expected = report_data_for(
        nonce,
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    if claims.report_data != expected:
        raise VerificationFailed(
            "report data does not bind this session's nonce and the Keep's TLS key "
            "(replayed evidence, or a certificate for another key)"
        )
    checks.append("freshness: report binds this session's nonce and the TLS key")

    if claims.debug and not trust.allow_debug:
        raise PolicyRejected("the Keep was launched with debugging allowed (guest policy bit 19): refused")
    pinned = False
    if trust.expected_measurement is not None:
        if claims.measurement != trust.expected_measurement:
            raise PolicyRejected(
                f"Keep measurement {claims.measurement.hex()} is not the expected "
                f"{trust.expected_measurement.hex()}"
            )
        pinned = True
        checks.append("measurement matches the expected Keep runtime")
    return Appraisal(claims=claims, checks=tuple(checks), measurement_pinned=pinned)
