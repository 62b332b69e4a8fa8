"""Verify sim-tdx evidence: the Intel DCAP verifier, rooted at a sim root.

A sim-tdx evidence bundle carries a TDX v4 quote signed by the sim QE
(:mod:`stockade.evidence.sim.tdx_chip`) and, as its certificate table, the
collateral (COLLATERAL_NAMES: TCB info, QE identity, TCB Signing chain,
CRLs). Verification is :func:`stockade.evidence.intel.verify.verify_quote`,
the same code as for real quotes, with the caller's sim TDX root as the
trusted root. The platform comes from the trust anchor: claims verified to a
sim root say platform ``sim-tdx`` (no hardware protection), never ``tdx``;
and a "sim root" equal to Intel's real root is refused, so real evidence is
never labelled sim and sim evidence never labelled real.

The collateral is carried by the untrusted host (the Keep's bundle): it is
signed (TCB info and QE identity by the TCB Signing key, the CRLs by the
root and the PCK CA), so a host can withhold it (MalformedEvidence) but not
change it without failing verification.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from stockade.errors import MalformedEvidence, VerificationFailed
from stockade.evidence.intel.abi import TeeType
from stockade.evidence.intel.verify import Collateral, VerifiedQuote, intel_root_der, verify_quote
from stockade.wire.evidence import EvidenceBundle

PLATFORM = "sim-tdx"
PRODUCT = "Intel TDX (simulated: NO HARDWARE PROTECTION)"
#: Collateral items a sim-tdx bundle must carry (the optional
#: ``pck_crl_issuer_chain`` may be absent).
REQUIRED = ("tcb_info", "qe_identity", "tcb_signing_chain", "root_ca_crl", "pck_crl")


def collateral_of(bundle: EvidenceBundle) -> Collateral:
    """The collateral a sim-tdx bundle carries, or MalformedEvidence naming
    what is missing."""
    missing = [name for name in REQUIRED if bundle.cert(name) is None]
    if missing:
        raise MalformedEvidence(f"sim-tdx evidence lacks collateral: {', '.join(missing)}")
    return Collateral(
        tcb_info=bundle.cert("tcb_info") or b"",
        qe_identity=bundle.cert("qe_identity") or b"",
        tcb_signing_chain=bundle.cert("tcb_signing_chain") or b"",
        root_ca_crl=bundle.cert("root_ca_crl"),
        pck_crl=bundle.cert("pck_crl"),
        pck_crl_issuer_chain=bundle.cert("pck_crl_issuer_chain"),
    )


def verify_sim_tdx_quote(
    quote: bytes, collateral: Collateral, sim_root: bytes, at: datetime
) -> VerifiedQuote:
    """Verify a sim TDX quote with its collateral against ``sim_root``;
    revocation is always checked (the sim QE always supplies its CRLs)."""
    if sim_root == intel_root_der():
        raise VerificationFailed(
            "the sim TDX root given is Intel's real root: sim evidence needs the sim root"
        )
    verified = verify_quote(quote, collateral, at, root_der=sim_root, tee=TeeType.TDX)
    claims = replace(verified.claims, platform=PLATFORM, product=PRODUCT)
    return replace(verified, claims=claims)


def verify_sim_tdx(bundle: EvidenceBundle, sim_root: bytes, at: datetime) -> VerifiedQuote:
    """Verify a sim-tdx evidence bundle against ``sim_root``."""
    if bundle.platform != PLATFORM:
        raise VerificationFailed(f"{bundle.platform} evidence is not sim-tdx evidence")
    return verify_sim_tdx_quote(bundle.report, collateral_of(bundle), sim_root, at)
