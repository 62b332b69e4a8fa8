"""Keep side of the tdx backend: get a TD quote through Linux configfs-tsm.

Interface (Linux ``Documentation/ABI/testing/configfs-tsm``, kernel 6.7+):
``mkdir /sys/kernel/config/tsm/report/<name>`` creates a report request;
``provider`` names the backend ("tdx_guest"); writing up to 64 bytes to
``inblob`` sets the TDREPORT's REPORTDATA; reading ``outblob`` returns the
quote (the kernel asks the host's Quoting Enclave through the GetQuote
TDVMCALL); ``generation`` counts writes to the entry, so a reader can tell
whether another writer changed ``inblob`` between its write and its read.
``rmdir`` releases the entry.

Untested on real TDX hardware here: there is none on the machines this was
developed on. tests/test_tdx_attester.py runs it against a fake tree that
plays the kernel's part (provider, generation, outblob made on write).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from stockade.evidence.intel.abi import TeeType
from stockade.evidence.intel.devfs import DeviceFiles, IntelGuestError, check_report_data, checked_quote
from stockade.wire.evidence import EvidenceBundle

TSM_REPORT_DIR = Path("/sys/kernel/config/tsm/report")
PROVIDER = "tdx_guest"


class TdxAttester:
    platform = "tdx"

    def __init__(
        self, report_dir: Path = TSM_REPORT_DIR, *, files: DeviceFiles | None = None, attempts: int = 3
    ) -> None:
        self.report_dir = Path(report_dir)
        self.files = files or DeviceFiles()
        self.attempts = attempts

    def _generation(self, entry: Path) -> int:
        text = self.files.read(entry / "generation").decode("ascii", "replace").strip()
        if not text.isdigit():
            raise IntelGuestError(f"configfs-tsm generation is not a number: {text[:20]!r}")
        return int(text)

    def evidence(self, report_data: bytes) -> EvidenceBundle:
        check_report_data(report_data)
        entry = self.report_dir / f"stockade-{os.getpid()}-{secrets.token_hex(4)}"
        self.files.mkdir(entry)
        try:
            provider = self.files.read(entry / "provider").decode("ascii", "replace").strip()
            if provider != PROVIDER:
                raise IntelGuestError(
                    f"configfs-tsm provider is {provider!r}, not {PROVIDER!r} (not a TDX guest?)"
                )
            for _ in range(self.attempts):
                before = self._generation(entry)
                self.files.write(entry / "inblob", report_data)
                raw = self.files.read(entry / "outblob")
                if self._generation(entry) == before + 1:
                    break
            else:
                raise IntelGuestError(
                    f"configfs-tsm entry {entry.name} kept changing under concurrent writers"
                )
        finally:
            self.files.rmdir(entry)
        quote = checked_quote(raw, TeeType.TDX, report_data, "configfs-tsm")
        return EvidenceBundle(platform="tdx", report=quote)
