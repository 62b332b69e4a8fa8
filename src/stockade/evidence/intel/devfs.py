"""The file operations the TDX and SGX attesters use, in one replaceable
class, and the check both apply to what the platform returns.

Linux configfs-tsm (TDX) and Gramine's ``/dev/attestation`` (SGX) are file
trees whose files act when written or read: writing report data makes the
next read return a quote. :class:`DeviceFiles` does plain file I/O; tests
replace it with a subclass that plays the kernel's or Gramine's part on a
temporary directory (tests/test_tdx_attester.py, tests/test_sgx_attester.py).
Every OS error becomes :class:`IntelGuestError` (the one guest-interface
error class, evidence/tsm.py ``GuestInterfaceError``): the platform's attestation
interface is missing or did not follow its protocol. Bytes that are not the
quote asked for are MalformedEvidence.
"""

from __future__ import annotations

import os
from pathlib import Path

from stockade.errors import MalformedEvidence
from stockade.evidence.intel.abi import Quote, TeeType
from stockade.evidence.tsm import GuestInterfaceError

REPORT_DATA_SIZE = 64


#: The one guest-interface error class of every attester (evidence/tsm.py).
IntelGuestError = GuestInterfaceError


class DeviceFiles:
    """Plain file operations on an attestation interface tree."""

    def mkdir(self, path: Path) -> None:
        try:
            os.mkdir(path)
        except OSError as exc:
            raise IntelGuestError(f"cannot create {path}: {exc.strerror}") from None

    def rmdir(self, path: Path) -> None:
        try:
            os.rmdir(path)
        except OSError as exc:
            raise IntelGuestError(f"cannot remove {path}: {exc.strerror}") from None

    def read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise IntelGuestError(f"cannot read {path}: {exc.strerror}") from None

    def write(self, path: Path, data: bytes) -> None:
        try:
            # One write(2) call, no O_CREAT: configfs and Gramine take the
            # buffer of a single write, and a missing file must fail.
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                if os.write(fd, data) != len(data):
                    raise IntelGuestError(f"short write to {path}")
            finally:
                os.close(fd)
        except OSError as exc:
            raise IntelGuestError(f"cannot write {path}: {exc.strerror}") from None


def checked_quote(raw: bytes, tee: TeeType, report_data: bytes, source: str) -> bytes:
    """The quote without zero padding, after checking that it parses, is of
    the expected TEE, and carries exactly the report data asked for (a stale
    or foreign quote is refused here, before anyone relies on it)."""
    try:
        quote = Quote.from_bytes(raw)
    except MalformedEvidence as exc:
        raise MalformedEvidence(f"{source} returned something that is not a quote: {exc}") from None
    if quote.tee_type is not tee:
        raise MalformedEvidence(f"{source} returned a {quote.tee_type.name} quote, expected {tee.name}")
    if quote.body.report_data != report_data:
        raise MalformedEvidence(f"{source} returned a quote for other report data")
    return quote.quote_bytes


def check_report_data(report_data: bytes) -> None:
    if len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report data must be {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
