"""TDX quote verification: Intel's DCAP rules with the TDX parts (TD report
body, TEE_TCB_SVN against tdxtcbcomponents, TDX module identities, TD QE
identity). Pure, no I/O; the work is done by
:func:`stockade.evidence.intel.verify.verify_quote`, which this names for
TDX quotes only (an SGX quote is refused)."""

from __future__ import annotations

from datetime import datetime

from stockade.evidence.intel.abi import TeeType
from stockade.evidence.intel.verify import CheckedQuote, Collateral, VerifiedQuote, check_quote, verify_quote


def verify_tdx_quote(
    quote: bytes,
    collateral: Collateral,
    at: datetime,
    *,
    root_der: bytes | None = None,
    allow_trailing: bool = False,
    check_revocation: bool = True,
) -> VerifiedQuote:
    """A TDX quote (v4, v5) verified with its collateral at ``at``; the
    claims are ``platform="tdx"``, ``measurement`` = MRTD."""
    return verify_quote(
        quote,
        collateral,
        at,
        root_der=root_der,
        allow_trailing=allow_trailing,
        check_revocation=check_revocation,
        tee=TeeType.TDX,
    )


def check_tdx_quote(
    quote: bytes, at: datetime, *, root_der: bytes | None = None, allow_trailing: bool = False
) -> CheckedQuote:
    """Signatures, QE binding and PCK chain only (no collateral, no claims)."""
    return check_quote(quote, at, root_der=root_der, allow_trailing=allow_trailing, tee=TeeType.TDX)


__all__ = ["check_tdx_quote", "verify_tdx_quote"]
