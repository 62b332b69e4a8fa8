"""Keep side of the sgx backend: get an SGX quote through Gramine.

Interface (Gramine documentation, "Attestation and Secret Provisioning",
``/dev/attestation`` pseudo-files): ``attestation_type`` reads "dcap" when
Gramine was configured with ``sgx.remote_attestation = "dcap"``; writing 64
bytes to ``user_report_data`` sets the enclave report's REPORTDATA; reading
``quote`` returns a DCAP quote (v3) for the current report data, made by the
platform's Quoting Enclave through the AESM service.

Untested on real SGX hardware here: there is none on the machines this was
developed on. tests/test_sgx_attester.py runs it against a fake tree that
plays Gramine's part.
"""

from __future__ import annotations

from pathlib import Path

from stockade.evidence.intel.abi import TeeType
from stockade.evidence.intel.devfs import DeviceFiles, IntelGuestError, check_report_data, checked_quote
from stockade.wire.evidence import EvidenceBundle
from stockade.wire.platform import Platform

ATTESTATION_DIR = Path("/dev/attestation")


class SgxAttester:
    platform = Platform.SGX.value

    def __init__(self, attestation_dir: Path = ATTESTATION_DIR, *, files: DeviceFiles | None = None) -> None:
        self.dir = Path(attestation_dir)
        self.files = files or DeviceFiles()

    def evidence(self, report_data: bytes) -> EvidenceBundle:
        check_report_data(report_data)
        kind = self.files.read(self.dir / "attestation_type").decode("ascii", "replace").strip()
        if kind != "dcap":
            raise IntelGuestError(f"Gramine attestation type is {kind!r}, not 'dcap'")
        self.files.write(self.dir / "user_report_data", report_data)
        raw = self.files.read(self.dir / "quote")
        quote = checked_quote(raw, TeeType.SGX, report_data, "Gramine /dev/attestation/quote")
        return EvidenceBundle(platform=Platform.SGX.value, report=quote)
