"""SGX quote verification: Intel's DCAP rules for enclave quotes (SGX report
body, SGX TCB levels, QE identity). Pure, no I/O; the work is done by
:func:`stockade.evidence.intel.verify.verify_quote`, which this names for SGX
quotes only (a TDX quote is refused)."""

from __future__ import annotations

from datetime import datetime

from stockade.evidence.intel.abi import TeeType
from stockade.evidence.intel.verify import CheckedQuote, Collateral, VerifiedQuote, check_quote, verify_quote


def verify_sgx_quote(
    quote: bytes,
    collateral: Collateral,
    at: datetime,
    *,
    root_der: bytes | None = None,
    allow_trailing: bool = False,
    check_revocation: bool = True,
) -> VerifiedQuote:
    """An SGX quote (v3; v4/v5 SGX bodies too) verified with its collateral at
    ``at``; the claims are ``platform="sgx"``, ``measurement`` = MRENCLAVE."""
    return verify_quote(
        quote,
        collateral,
        at,
        root_der=root_der,
        allow_trailing=allow_trailing,
        check_revocation=check_revocation,
        tee=TeeType.SGX,
    )


def check_sgx_quote(
    quote: bytes, at: datetime, *, root_der: bytes | None = None, allow_trailing: bool = False
) -> CheckedQuote:
    """Signatures, QE binding and PCK chain only (no collateral, no claims)."""
    return check_quote(quote, at, root_der=root_der, allow_trailing=allow_trailing, tee=TeeType.SGX)


__all__ = ["check_sgx_quote", "verify_sgx_quote"]
