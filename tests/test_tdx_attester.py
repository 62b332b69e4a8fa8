"""The tdx Keep backend's attester against a fake configfs-tsm tree.

UNTESTED ON REAL TDX HARDWARE: none is available here. The fake below plays
the kernel's part (Documentation/ABI/testing/configfs-tsm): a new entry has
``provider``, ``generation`` (bumped by every write), ``inblob`` and
``outblob``; reading ``outblob`` after writing ``inblob`` returns a quote for
that report data, made by the fake Intel PKI (so it verifies against the fake
root); ``rmdir`` releases the entry.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from intel_support import shared_pck, shared_pki
from stockade.errors import MalformedEvidence
from stockade.evidence.intel.devfs import DeviceFiles, IntelGuestError
from stockade.evidence.intel.verify import verify_quote
from stockade.evidence.tdx.attester import PROVIDER, TdxAttester
from stockade.wire.evidence import EvidenceBundle

REPORT_DATA = bytes(range(64))


@dataclass
class FakeTsm(DeviceFiles):
    root: Path
    provider: str = PROVIDER
    tee: str = "tdx"
    conflicts: int = 0  # entries in which another writer bumps generation once
    outblob_hook: Callable[[bytes], bytes] | None = None
    mkdir_errno: int | None = None
    log: list[tuple[str, str]] = field(default_factory=list)
    inblobs: dict[Path, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def mkdir(self, path: Path) -> None:
        self.log.append(("mkdir", path.name))
        if self.mkdir_errno is not None:
            raise IntelGuestError(f"cannot create {path}: {os.strerror(self.mkdir_errno)}")
        super().mkdir(path)
        for name, value in (
            ("provider", f"{self.provider}\n"),
            ("generation", "0\n"),
            ("inblob", ""),
            ("outblob", ""),
        ):
            (path / name).write_text(value)

    def rmdir(self, path: Path) -> None:
        self.log.append(("rmdir", path.name))
        for child in path.iterdir():
            child.unlink()
        super().rmdir(path)

    def _bump(self, entry: Path) -> None:
        gen = int((entry / "generation").read_text())
        (entry / "generation").write_text(f"{gen + 1}\n")

    def write(self, path: Path, data: bytes) -> None:
        self.log.append(("write", path.name))
        if path.name != "inblob" or len(data) > 64:
            raise IntelGuestError(f"cannot write {path}: {os.strerror(errno.EINVAL)}")
        os.truncate(path, 0)
        super().write(path, data)
        self.inblobs[path.parent] = data
        self._bump(path.parent)

    def read(self, path: Path) -> bytes:
        self.log.append(("read", path.name))
        if path.name == "outblob" and path.parent in self.inblobs:
            pki, pck = shared_pki(), shared_pck()
            quote = pki.quote(self.tee, pck, report_data=self.inblobs[path.parent].ljust(64, b"\0"))
            path.write_bytes(self.outblob_hook(quote) if self.outblob_hook else quote)
            if self.conflicts > 0:
                self.conflicts -= 1
                self._bump(path.parent)
        return super().read(path)


def attester(tmp_path: Path, **kw: object) -> tuple[TdxAttester, FakeTsm]:
    fake = FakeTsm(tmp_path / "tsm" / "report", **kw)  # type: ignore[arg-type]
    return TdxAttester(fake.root, files=fake), fake


def test_interface_matches_the_sim_attester(tmp_path: Path) -> None:
    a, _ = attester(tmp_path)
    assert a.platform == "tdx"
    assert callable(a.evidence)


def test_evidence_verifies_and_binds_report_data(tmp_path: Path) -> None:
    a, fake = attester(tmp_path)
    bundle = a.evidence(REPORT_DATA)
    assert isinstance(bundle, EvidenceBundle) and bundle.platform == "tdx" and bundle.certs == ()
    assert EvidenceBundle.from_cbor(bundle.to_cbor()) == bundle
    pki, pck = shared_pki(), shared_pck()
    v = verify_quote(bundle.report, pki.collateral("tdx", pck), pki.now, root_der=pki.root_der)
    assert v.claims.report_data == REPORT_DATA and v.claims.platform == "tdx"
    ops = [op for op, _ in fake.log]
    assert ops == ["mkdir", "read", "read", "write", "read", "read", "rmdir"]
    assert list(fake.root.iterdir()) == []  # the entry is released


def test_zero_padding_is_trimmed(tmp_path: Path) -> None:
    a, _ = attester(tmp_path, outblob_hook=lambda q: q + bytes(1000))
    bundle = a.evidence(REPORT_DATA)
    pki, pck = shared_pki(), shared_pck()
    assert (
        verify_quote(bundle.report, pki.collateral("tdx", pck), pki.now, root_der=pki.root_der).quote.trailing
        == b""
    )


def test_concurrent_writer_is_retried_then_refused(tmp_path: Path) -> None:
    a, fake = attester(tmp_path, conflicts=1)
    assert a.evidence(REPORT_DATA).platform == "tdx"
    assert [op for op, _ in fake.log].count("write") == 2
    a, fake = attester(tmp_path / "b", conflicts=99)
    with pytest.raises(IntelGuestError, match="kept changing under concurrent writers"):
        a.evidence(REPORT_DATA)
    assert list(fake.root.iterdir()) == []


def test_not_a_tdx_guest(tmp_path: Path) -> None:
    a, fake = attester(tmp_path, provider="sev_guest")
    with pytest.raises(IntelGuestError, match="provider is 'sev_guest', not 'tdx_guest'"):
        a.evidence(REPORT_DATA)
    assert list(fake.root.iterdir()) == []


def test_no_configfs_tsm(tmp_path: Path) -> None:
    with pytest.raises(IntelGuestError, match="cannot create"):
        TdxAttester(tmp_path / "missing").evidence(REPORT_DATA)
    a, _ = attester(tmp_path, mkdir_errno=errno.EACCES)
    with pytest.raises(IntelGuestError, match="Permission denied"):
        a.evidence(REPORT_DATA)


def test_plain_directory_is_not_configfs(tmp_path: Path) -> None:
    """With the real file operations on an ordinary directory, mkdir works
    but the entry has no attributes: refused, and the entry is removed."""
    with pytest.raises(IntelGuestError, match=r"cannot read .*provider"):
        TdxAttester(tmp_path).evidence(REPORT_DATA)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("hook", "match"),
    [
        (lambda q: b"", "configfs-tsm returned something that is not a quote"),
        (lambda q: q[:-10], "not a quote"),
        (lambda q: q[:-64] + b"\x01" * 64, "not a quote"),
    ],
)
def test_bad_outblob(tmp_path: Path, hook: Callable[[bytes], bytes], match: str) -> None:
    a, _ = attester(tmp_path, outblob_hook=hook)
    with pytest.raises(MalformedEvidence, match=match):
        a.evidence(REPORT_DATA)


def test_quote_for_other_report_data_or_tee(tmp_path: Path) -> None:
    pki, pck = shared_pki(), shared_pck()
    a, _ = attester(tmp_path, outblob_hook=lambda q: pki.quote("tdx", pck, report_data=bytes(64)))
    with pytest.raises(MalformedEvidence, match="a quote for other report data"):
        a.evidence(REPORT_DATA)
    a, _ = attester(tmp_path / "b", tee="sgx")
    with pytest.raises(MalformedEvidence, match="returned a SGX quote, expected TDX"):
        a.evidence(REPORT_DATA)


def test_report_data_must_be_64_bytes(tmp_path: Path) -> None:
    a, fake = attester(tmp_path)
    with pytest.raises(ValueError, match="64 bytes"):
        a.evidence(b"short")
    assert fake.log == []
