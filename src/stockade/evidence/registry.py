"""One verifier interface for every platform, found through one registry.

Every verifier has the same signature::

    verify(evidence: Evidence, trust: Trust, at: datetime, collateral: Collateral) -> VerifiedEvidence

and is registered under the name an evidence bundle carries in its
``platform`` field (wire/platform.py ``Platform``): ``sim``, ``snp``,
``tdx``, ``sgx``. A new flavour is one line, e.g. a sim TDX backend whose
quotes are checked by the Intel DCAP verifier under a sim root::

    register("sim-tdx", dcap_verifier(TeeType.TDX, lambda trust: trust.sim_tdx_root))

(docs/adr/0014-one-evidence-core.md). The client (a deploy's evidence), the
``evidence verify`` and ``policy check`` commands all call :func:`verify`;
the CLI only turns files into :class:`Evidence` and :class:`Collateral`.
:func:`sniff` tells an SEV-SNP report from a TDX or SGX quote.

Revocation is one parameter with the same meaning on every platform
(:class:`Revocation`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from stockade.errors import (
    CollateralUnavailable,
    MalformedEvidence,
    PolicyRejected,
    UsageError,
    VerificationFailed,
)
from stockade.evidence.claims import VerifiedClaims
from stockade.wire.platform import Platform

if TYPE_CHECKING:
    from stockade.evidence.intel.verify import Collateral as IntelCollateral


class Revocation(enum.Enum):
    """Whether certificate revocation (CRLs) is checked, the same on every
    platform:

    * REQUIRE: the CRLs of the evidence's chain must be given, else
      CollateralUnavailable (SNP: a CRL of the root; Intel: the root CA CRL
      and the PCK CRL);
    * IF_GIVEN: the CRLs that are given are checked (and must be valid);
      without them the result says ``revocation_checked=False``;
    * SKIP: CRLs are not applied, even when given (the result says so).
    """

    REQUIRE = "require"
    IF_GIVEN = "if-given"
    SKIP = "skip"


@dataclass(frozen=True)
class Evidence:
    """Evidence as received: the platform it claims (the bundle's
    ``platform``, or what :func:`sniff` found), the report or quote bytes,
    and the certificates that came with it (SNP: ``vcek`` or ``vlek`` DER
    under the name ``vcek``, and ``ask``; Intel quotes carry their PCK chain
    inside)."""

    platform: str
    data: bytes
    certs: tuple[tuple[str, bytes], ...] = ()
    #: SNP product hint ("Milan", "Genoa", "Turin") for v2 reports.
    product_hint: str | None = None
    #: Intel: accept non-zero bytes after the quote.
    allow_trailing: bool = False

    def cert(self, name: str) -> bytes | None:
        return dict(self.certs).get(name)


@dataclass(frozen=True)
class Trust:
    """The roots a verification trusts. AMD's ARKs and Intel's SGX Root CA
    are shipped in the package and always trusted for their platform; the
    sim root verifies sim evidence (verification only: whether sim is
    acceptable is the policy's decision)."""

    sim_root: bytes | None = None
    #: Intel SGX Root CA DER; None: the one shipped in the package.
    intel_root: bytes | None = None
    #: Root of the sim TDX chip's Intel-shaped PKI (stockade.evidence.sim.tdx_chip).
    sim_tdx_root: bytes | None = None


@dataclass(frozen=True)
class Collateral:
    """What a verifier needs besides the evidence: CRLs (DER or PEM; each
    verifier applies those of its chain and ignores the rest), the Intel
    TCB info / QE identity / TCB signing chain, and the revocation mode."""

    crls: tuple[bytes, ...] = ()
    intel: IntelCollateral | None = None
    revocation: Revocation = Revocation.IF_GIVEN


@dataclass(frozen=True)
class VerifiedEvidence:
    claims: VerifiedClaims
    #: What was checked, one line each, for the verification summary.
    checks: tuple[str, ...]
    revocation_checked: bool
    #: "sev-snp-report", "tdx-quote" or "sgx-quote".
    kind: str
    #: Issuers (RFC 4514) of the CRLs applied.
    crl_issuers: tuple[str, ...] = ()
    #: The platform verifier's own result (VerifiedReport, VerifiedQuote).
    detail: object = field(default=None, repr=False, compare=False)


class Verifier(Protocol):
    def __call__(
        self, evidence: Evidence, trust: Trust, at: datetime, collateral: Collateral
    ) -> VerifiedEvidence: ...


_VERIFIERS: dict[str, Verifier] = {}


def register(name: str, verifier: Verifier) -> None:
    """Make ``verifier`` the one for evidence whose platform is ``name``."""
    _VERIFIERS[str(name)] = verifier


def verifier_for(platform: str) -> Verifier:
    found = _VERIFIERS.get(str(platform))
    if found is None:
        raise MalformedEvidence(f"no verifier for evidence platform {platform!r}")
    return found


def verify(evidence: Evidence, trust: Trust, at: datetime, collateral: Collateral) -> VerifiedEvidence:
    """Verify ``evidence`` with the verifier registered for its platform."""
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")
    return verifier_for(evidence.platform)(evidence, trust, at, collateral)


#: Size of an SEV-SNP ATTESTATION_REPORT (AMD pub. 56860, Table 22).
SNP_REPORT_SIZE = 0x4A0


def sniff(data: bytes) -> Platform | None:
    """The platform whose evidence ``data`` looks like: a 0x4A0-byte blob is
    an SEV-SNP report, a DCAP quote header a TDX or SGX quote; None
    otherwise. Only a hint for choosing a verifier: it checks nothing."""
    if len(data) == SNP_REPORT_SIZE:
        return Platform.SNP
    from stockade.evidence.intel.collateral import detect_quote

    tee = detect_quote(data)
    return None if tee is None else Platform(tee)


# --- the verifiers ---------------------------------------------------------------------


def snp_verifier(platform: Platform, roots: Callable[[Trust], tuple[object, ...]]) -> Verifier:
    """An SEV-SNP report verifier (evidence/snp/verify.py) trusting the
    anchors ``roots(trust)`` returns (snp.verify.TrustAnchor)."""

    def verify_snp(
        evidence: Evidence, trust: Trust, at: datetime, collateral: Collateral
    ) -> VerifiedEvidence:
        from stockade.evidence.snp.abi import Product
        from stockade.evidence.snp.verify import TrustAnchor, verify_report

        anchors = [a for a in roots(trust) if isinstance(a, TrustAnchor)]
        endorsement, intermediate = evidence.cert("vcek"), evidence.cert("ask")
        if endorsement is None or intermediate is None:
            raise MalformedEvidence("evidence lacks the VCEK and ASK certificates")
        hint = Product(evidence.product_hint.capitalize()) if evidence.product_hint else None
        skip = collateral.revocation is Revocation.SKIP
        verified = verify_report(
            evidence.data,
            endorsement,
            intermediate,
            anchors,
            at,
            hint,
            crls=() if skip else collateral.crls,
            require_crl=collateral.revocation is Revocation.REQUIRE,
        )
        root_name = "sim root" if verified.claims.platform == Platform.SIM else "AMD root"
        checks = [
            "report structure, reserved fields and version",
            f"certificate chain to the {root_name} (RSASSA-PSS SHA-384), validity at {at.isoformat()}",
            "endorsement TCB = REPORTED_TCB, hwID = CHIP_ID, signer kind and product",
            "ECDSA P-384 signature over bytes 0x000-0x29F",
        ]
        if verified.revocation_checked:
            checks.append("CRL signature, validity and revocation")
        return VerifiedEvidence(
            claims=verified.claims,
            checks=tuple(checks),
            revocation_checked=verified.revocation_checked,
            kind="sev-snp-report",
            crl_issuers=verified.crl_issuers,
            detail=verified,
        )

    del platform  # the anchors carry the platform label into the claims
    return verify_snp


def _amd_roots(trust: Trust) -> tuple[object, ...]:
    from stockade.evidence.snp.verify import amd_anchors

    return amd_anchors()


def _sim_roots(trust: Trust) -> tuple[object, ...]:
    from stockade.evidence.snp.abi import Product
    from stockade.evidence.snp.verify import TrustAnchor

    if trust.sim_root is None:
        raise PolicyRejected(
            "the Keep runs on the sim backend, which gives NO hardware protection, and no sim "
            "root is configured; for development run `stockade run --allow-sim ...`"
        )
    return (TrustAnchor(Platform.SIM.value, Product.MILAN, trust.sim_root),)


def dcap_verifier(tee: str, root: Callable[[Trust], bytes | None]) -> Verifier:
    """An Intel DCAP quote verifier (evidence/intel/verify.py) for the TEE
    ``tee`` ("tdx" or "sgx"), trusting the root ``root(trust)`` returns
    (None: Intel's, shipped in the package)."""

    def verify_dcap(
        evidence: Evidence, trust: Trust, at: datetime, collateral: Collateral
    ) -> VerifiedEvidence:
        from dataclasses import replace

        from stockade.evidence.intel.abi import TeeType
        from stockade.evidence.intel.verify import verify_quote

        if collateral.intel is None:
            raise CollateralUnavailable(
                f"no Intel collateral (TCB info, QE identity, TCB signing chain) for the {tee.upper()} quote"
            )
        intel = collateral.intel
        if collateral.revocation is Revocation.SKIP:
            intel = replace(intel, root_ca_crl=None, pck_crl=None)
        verified = verify_quote(
            evidence.data,
            intel,
            at,
            root_der=root(trust),
            allow_trailing=evidence.allow_trailing,
            check_revocation=collateral.revocation is Revocation.REQUIRE,
            tee=TeeType.TDX if tee == Platform.TDX else TeeType.SGX,
        )
        checks = [
            "quote structure, version, TEE and key type",
            "attestation-key signature over header and body; QE report signed by the PCK key",
            "QE report data binds the attestation key and QE authentication data",
            f"PCK chain to the Intel SGX Root CA, validity at {at.isoformat()}",
            f"TCB info and QE identity signatures and validity; TCB status {verified.tcb_status}",
        ]
        if verified.revocation_checked:
            checks.append("root CA and PCK CRLs: signature, validity, revocation")
        return VerifiedEvidence(
            claims=verified.claims,
            checks=tuple(checks),
            revocation_checked=verified.revocation_checked,
            kind=f"{tee}-quote",
            detail=verified,
        )

    return verify_dcap


def _intel_root(trust: Trust) -> bytes | None:
    return trust.intel_root


def verify_sim_tdx(
    evidence: Evidence, trust: Trust, at: datetime, collateral: Collateral
) -> VerifiedEvidence:
    """sim-tdx: the Intel DCAP verifier rooted at the sim TDX root, with the
    collateral the bundle carries (signed, so an untrusted carrier can only
    withhold it); claims say ``sim-tdx``, never ``tdx``."""
    from stockade.evidence.sim.tdx_verify import collateral_of, verify_sim_tdx_quote
    from stockade.wire.evidence import EvidenceBundle

    if trust.sim_tdx_root is None:
        raise VerificationFailed(
            "sim-tdx evidence needs the sim TDX root (`stockade host sim-root --tdx` prints it)"
        )
    bundle = EvidenceBundle(platform=Platform.SIM_TDX.value, report=evidence.data, certs=evidence.certs)
    verified = verify_sim_tdx_quote(evidence.data, collateral_of(bundle), trust.sim_tdx_root, at)
    checks = (
        "quote structure, version, TEE and key type (TDX v4)",
        "attestation-key signature over header and body; QE report signed by the PCK key",
        "QE report data binds the attestation key and QE authentication data",
        f"PCK chain to the sim TDX root, validity at {at.isoformat()}",
        f"TCB info and QE identity signatures and validity; TCB status {verified.tcb_status}",
        "root CA and PCK CRLs carried by the evidence: signature, validity, revocation",
    )
    return VerifiedEvidence(
        claims=verified.claims,
        checks=checks,
        revocation_checked=verified.revocation_checked,
        kind="tdx-quote",
        detail=verified,
    )


register(Platform.SIM, snp_verifier(Platform.SIM, _sim_roots))
register(Platform.SNP, snp_verifier(Platform.SNP, _amd_roots))
register(Platform.TDX, dcap_verifier(Platform.TDX, _intel_root))
register(Platform.SGX, dcap_verifier(Platform.SGX, _intel_root))
register(Platform.SIM_TDX, verify_sim_tdx)


def platform_of(text: str) -> Platform:
    """The Platform named ``text``; UsageError for another name."""
    try:
        return Platform(text)
    except ValueError:
        raise UsageError(
            f"unknown platform {text!r} (one of {', '.join(p.value for p in Platform)})"
        ) from None


__all__ = [
    "SNP_REPORT_SIZE",
    "Collateral",
    "Evidence",
    "Revocation",
    "Trust",
    "VerifiedEvidence",
    "Verifier",
    "dcap_verifier",
    "platform_of",
    "register",
    "sniff",
    "snp_verifier",
    "verifier_for",
    "verify",
]
