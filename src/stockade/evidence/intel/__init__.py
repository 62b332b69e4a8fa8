"""Intel DCAP (TDX and SGX) parts shared by both platforms: quote header and
signature data (abi), PCK certificate extensions (pck), TCB info and QE
identity (tcbinfo), TCB level selection (tcb), verification (verify) and the
collateral fetcher and cache, the only I/O (collateral).

Importing this package imports nothing heavy: the names below load their
module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stockade.evidence.intel.collateral import detect_quote, verify_quote_files
    from stockade.evidence.intel.tcb import TcbLevelNotSupported, TcbStatus
    from stockade.evidence.intel.verify import (
        CheckedQuote,
        Collateral,
        VerifiedQuote,
        check_quote,
        verify_quote,
    )

_LAZY = {
    "detect_quote": "collateral",
    "verify_quote_files": "collateral",
    "TcbLevelNotSupported": "tcb",
    "TcbStatus": "tcb",
    "CheckedQuote": "verify",
    "Collateral": "verify",
    "VerifiedQuote": "verify",
    "check_quote": "verify",
    "verify_quote": "verify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "CheckedQuote",
    "Collateral",
    "TcbLevelNotSupported",
    "TcbStatus",
    "VerifiedQuote",
    "check_quote",
    "detect_quote",
    "verify_quote",
    "verify_quote_files",
]
