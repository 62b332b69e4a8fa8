"""Keep side of the tdx backend: get a TD quote through Linux configfs-tsm.

Interface (Linux ``Documentation/ABI/testing/configfs-tsm``, kernel 6.7+):
``mkdir /sys/kernel/config/tsm/report/<name>`` creates a report request;
``provider`` names the backend ("tdx_guest"); writing up to 64 bytes to
``inblob`` sets the TDREPORT's REPORTDATA; reading ``outblob`` returns the
quote (the kernel asks the host's Quoting Enclave through the GetQuote
TDVMCALL); ``generation`` counts writes to the entry, so a reader can tell
whether another writer changed ``inblob`` between its write and its read.
``rmdir`` releases the entry. The client is the one the SNP attester uses
too (evidence/tsm.py).

Untested on real TDX hardware here: there is none on the machines this was
developed on. tests/test_tdx_attester.py runs it against a fake tree that
plays the kernel's part (provider, generation, outblob made on write).
"""

from __future__ import annotations

from pathlib import Path

from stockade.evidence.intel.abi import TeeType
from stockade.evidence.intel.devfs import DeviceFiles, check_report_data, checked_quote
from stockade.evidence.tsm import TSM_REPORT_ROOT, tsm_report
from stockade.wire.evidence import EvidenceBundle
from stockade.wire.platform import Platform

TSM_REPORT_DIR = TSM_REPORT_ROOT
PROVIDER = "tdx_guest"


class TdxAttester:
    platform = Platform.TDX.value

    def __init__(
        self, report_dir: Path = TSM_REPORT_DIR, *, files: DeviceFiles | None = None, attempts: int = 3
    ) -> None:
        self.report_dir = Path(report_dir)
        self.files = files or DeviceFiles()
        self.attempts = attempts

    def evidence(self, report_data: bytes) -> EvidenceBundle:
        check_report_data(report_data)
        raw, _ = tsm_report(
            self.files,
            self.report_dir,
            PROVIDER,
            report_data,
            attempts=self.attempts,
            not_this="this is not a TDX guest",
        )
        quote = checked_quote(raw, TeeType.TDX, report_data, "configfs-tsm")
        return EvidenceBundle(platform=Platform.TDX.value, report=quote)
