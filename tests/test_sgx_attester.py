"""The sgx Keep backend's attester against a fake Gramine /dev/attestation.

UNTESTED ON REAL SGX HARDWARE OR GRAMINE: neither is available here. The fake
below plays Gramine's part: ``attestation_type`` says "dcap"; writing 64
bytes to ``user_report_data`` makes ``quote`` a DCAP quote (v3) for them,
made by the fake Intel PKI so that it verifies against the fake root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from intel_support import shared_pck, shared_pki
from stockade.errors import MalformedEvidence
from stockade.evidence.intel.devfs import DeviceFiles, IntelGuestError
from stockade.evidence.intel.verify import verify_quote
from stockade.evidence.sgx.attester import SgxAttester
from stockade.wire.evidence import EvidenceBundle

REPORT_DATA = bytes(range(100, 164))


@dataclass
class FakeGramine(DeviceFiles):
    root: Path
    kind: str = "dcap"
    tee: str = "sgx"
    quote_hook: Callable[[bytes], bytes] | None = None
    stale: bool = False  # ignore writes (the quote keeps answering old report data)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "attestation_type").write_text(self.kind)
        (self.root / "user_report_data").write_bytes(bytes(64))
        (self.root / "quote").write_bytes(shared_pki().quote(self.tee, shared_pck()))

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        if path.name == "user_report_data" and not self.stale:
            quote = shared_pki().quote(self.tee, shared_pck(), report_data=data)
            (self.root / "quote").write_bytes(self.quote_hook(quote) if self.quote_hook else quote)


def attester(tmp_path: Path, **kw: object) -> SgxAttester:
    fake = FakeGramine(tmp_path / "dev" / "attestation", **kw)  # type: ignore[arg-type]
    return SgxAttester(fake.root, files=fake)


def test_evidence_verifies_and_binds_report_data(tmp_path: Path) -> None:
    a = attester(tmp_path)
    assert a.platform == "sgx"
    bundle = a.evidence(REPORT_DATA)
    assert isinstance(bundle, EvidenceBundle) and bundle.platform == "sgx"
    assert EvidenceBundle.from_cbor(bundle.to_cbor()) == bundle
    pki, pck = shared_pki(), shared_pck()
    claims = verify_quote(bundle.report, pki.collateral("sgx", pck), pki.now, root_der=pki.root_der).claims
    assert (claims.platform, claims.report_data) == ("sgx", REPORT_DATA)


def test_not_dcap(tmp_path: Path) -> None:
    with pytest.raises(IntelGuestError, match="attestation type is 'none', not 'dcap'"):
        attester(tmp_path, kind="none").evidence(REPORT_DATA)


def test_stale_quote_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MalformedEvidence, match="a quote for other report data"):
        attester(tmp_path, stale=True).evidence(REPORT_DATA)


def test_wrong_tee_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(MalformedEvidence, match="returned a TDX quote, expected SGX"):
        attester(tmp_path, tee="tdx").evidence(REPORT_DATA)
    with pytest.raises(MalformedEvidence, match="not a quote"):
        attester(tmp_path / "b", quote_hook=lambda q: q[:100]).evidence(REPORT_DATA)


def test_outside_gramine(tmp_path: Path) -> None:
    with pytest.raises(IntelGuestError, match=r"cannot read .*attestation_type"):
        SgxAttester(tmp_path / "nope").evidence(REPORT_DATA)
    (tmp_path / "attestation_type").write_text("dcap")
    with pytest.raises(IntelGuestError, match=r"cannot write .*user_report_data"):
        SgxAttester(tmp_path).evidence(REPORT_DATA)  # no O_CREAT: a missing file is an error
    assert not (tmp_path / "user_report_data").exists()


def test_report_data_must_be_64_bytes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        attester(tmp_path).evidence(bytes(65))
