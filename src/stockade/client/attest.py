"""Appraise a Keep's TLS certificate: evidence, binding, freshness, trust.

``appraise`` takes the DER certificate the Keep presented in the TLS
handshake (so the Keep proved possession of its key), the nonce this client
sent, and the trust configuration. It returns an :class:`Appraisal` or
raises: MalformedEvidence / VerificationFailed for evidence that does not
verify, PolicyRejected for verified evidence this deployment does not accept.
Verification runs over the received bytes, with explicit roots and time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.binding.reportdata import report_data_for
from stockade.errors import CollateralUnavailable, MalformedEvidence, VerificationFailed
from stockade.evidence import registry
from stockade.evidence.claims import VerifiedClaims
from stockade.evidence.registry import VerifiedEvidence
from stockade.policy import Decision, Policy
from stockade.policy import appraise as policy_appraise
from stockade.wire.evidence import EVIDENCE_OID, EvidenceBundle, bundle_from_extension
from stockade.wire.platform import Platform

if TYPE_CHECKING:
    from stockade.evidence.intel.verify import Collateral as IntelCollateral

    #: Gets the Intel collateral for a quote at a time (CollateralUnavailable
    #: naming what is missing).
    IntelSource = Callable[[bytes, datetime], IntelCollateral]


@dataclass(frozen=True)
class TrustConfig:
    """What this deployment trusts.

    ``sim_root`` is the sim ARK used to *verify* sim evidence (verification
    says nothing about acceptance); whether sim, a measurement, debug etc.
    are acceptable is the ``policy``'s decision (None: the built-in default,
    which refuses sim). ``crls`` are DER CRLs the client holds (the sim
    chip's, or AMD's KDS CRLs); those of the evidence's chain are applied,
    and :attr:`Appraisal.revocation` says whether revocation was checked.
    """

    sim_root: bytes | None = None
    policy: Policy | None = None
    at: datetime | None = None
    crls: tuple[bytes, ...] = ()
    #: Root of the sim TDX chip's Intel-shaped PKI: verifies sim-tdx
    #: evidence (which carries its own signed collateral and CRLs).
    sim_tdx_root: bytes | None = None
    #: Intel collateral for TDX/SGX quotes (TCB info, QE identity, TCB
    #: signing chain, CRLs), or a callable that gets it for a quote
    #: (``--collateral DIR`` or the local cache): see
    #: :func:`stockade.client.collateral.intel_source`.
    intel: IntelSource | None = None


@dataclass(frozen=True)
class Revocation:
    """Whether the evidence's certificate chain was checked against a CRL
    of its root, and if not, why."""

    checked: bool
    crl_issuers: tuple[str, ...] = ()
    reason: str = ""

    #: When checked without named issuers: which CRLs (Intel quotes: the
    #: root CA and PCK CRLs of the collateral).
    source: str = ""

    @classmethod
    def of(cls, verified: VerifiedEvidence, crls_given: int) -> Revocation:
        if verified.revocation_checked:
            source = ""
            if verified.kind != "sev-snp-report":
                carried = verified.claims.platform == Platform.SIM_TDX
                source = "root CA and PCK CRLs" + (
                    " carried by the evidence" if carried else " of the collateral"
                )
            return cls(True, verified.crl_issuers, source=source)
        if verified.kind != "sev-snp-report":
            return cls(False, (), "the collateral has no root CA and PCK CRLs")
        if crls_given:
            return cls(False, verified.crl_issuers, "no CRL of this evidence's root among the CRLs given")
        return cls(False, (), "no CRL available")

    def summary(self) -> str:
        if self.checked:
            return f"checked: not revoked ({self.source or f'CRL of {self.crl_issuers[0]}'})"
        return f"not checked ({self.reason})"

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "checked": self.checked,
            "crl_issuers": list(self.crl_issuers),
            "reason": self.reason or None,
        }
        if self.source:  # TDX/SGX: which CRLs (they have no single issuer to name)
            doc["source"] = self.source
        return doc


@dataclass(frozen=True)
class Appraisal:
    claims: VerifiedClaims
    checks: tuple[str, ...] = field(default=())
    decision: Decision | None = None
    #: DER SubjectPublicKeyInfo of the Keep's TLS key the evidence binds.
    tls_spki: bytes = b""
    revocation: Revocation = field(default_factory=lambda: Revocation(False, (), "no CRL available"))


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
    verified = verify_bundle_report(bundle, trust, at)
    claims = verified.claims
    revocation = Revocation.of(verified, len(trust.crls))
    # What the platform's verifier checked (evidence/registry.py), then revocation.
    checks: list[str] = [*verified.checks, f"revocation {revocation.summary()}"]
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if claims.report_data != report_data_for(nonce, spki):
        raise VerificationFailed(
            "report data does not bind this session's nonce and the Keep's TLS key "
            "(replayed evidence, or a certificate for another key)"
        )
    checks.append("freshness: report binds this session's nonce and the TLS key")

    decision = policy_appraise(claims, trust.policy, at)
    checks.append(f"policy {decision.policy_name!r} accepted the claims")
    return Appraisal(
        claims=claims, checks=tuple(checks), decision=decision, tls_spki=spki, revocation=revocation
    )


def verify_bundle(bundle: EvidenceBundle, trust: TrustConfig, at: datetime) -> VerifiedClaims:
    """Verify the evidence of a bundle against the roots for its platform
    (says nothing about acceptance: that is the policy's job)."""
    return verify_bundle_report(bundle, trust, at).claims


def verify_bundle_report(bundle: EvidenceBundle, trust: TrustConfig, at: datetime) -> VerifiedEvidence:
    """:func:`verify_bundle`, with what the verifier found about revocation
    (the CRLs of ``trust.crls`` that belong to the chain are applied). The
    verifier is the one registered for the bundle's platform
    (evidence/registry.py)."""
    evidence = registry.Evidence(bundle.platform, bundle.report, bundle.certs)
    intel = None
    if bundle.platform in (Platform.TDX, Platform.SGX):
        if trust.intel is None:
            raise CollateralUnavailable(
                f"no Intel collateral for the Keep's {bundle.platform.upper()} quote (TCB info, QE identity, "
                "TCB signing chain, CRLs): pass --collateral DIR, or fill the cache with "
                "`stockade collateral fetch`"
            )
        intel = trust.intel(bundle.report, at)
    return registry.verify(
        evidence,
        registry.Trust(sim_root=trust.sim_root, sim_tdx_root=trust.sim_tdx_root),
        at,
        registry.Collateral(crls=trust.crls, intel=intel, revocation=registry.Revocation.IF_GIVEN),
    )
