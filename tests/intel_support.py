"""Helpers for the TDX/SGX tests: the copied real vectors (tests/data/vectors,
see its README.md) and shared fixtures of the fake Intel PKI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any

from evidence_support import VECTORS, VectorSample
from stockade.evidence.intel.collateral import load_collateral_dir
from stockade.evidence.intel.verify import Collateral
from stockade.testing.intel import FakeIntelPki, FakePck

TDX = VECTORS / "tdx"
SGX = VECTORS / "sgx"
COMMON_INTEL = VECTORS / "common" / "intel"
#: When the vectors were collected: all their collateral has expired by then.
COLLECTED = datetime(2026, 11, 24, tzinfo=UTC)


@dataclass(frozen=True)
class Sample(VectorSample):
    """One directory of tests/data/vectors/tdx or tests/data/vectors/sgx."""

    @property
    def tee(self) -> str:
        return self.path.parent.name

    @cached_property
    def quote(self) -> bytes:
        return (self.path / "quote.bin").read_bytes()

    @property
    def has_collateral(self) -> bool:
        return (self.path / "collateral").is_dir()

    @cached_property
    def collateral(self) -> Collateral:
        return load_collateral_dir(self.path / "collateral")

    @property
    def has_crls(self) -> bool:
        return (self.path / "collateral" / "pck_crl.der").exists()

    @property
    def results(self) -> dict[str, Any]:
        r: dict[str, Any] = self.expected.get("collateral", {}).get("results", {})
        return r

    @property
    def verify_at(self) -> datetime:
        return datetime.fromisoformat(self.results["verify_at"])

    @property
    def overall(self) -> str:
        return str(self.results["overall_expected_status"])

    @property
    def expect_not_supported(self) -> bool:
        return self.overall.startswith("FAIL: TCB level not supported")

    @property
    def trailing_nonzero(self) -> bool:
        return self.expected["signature_data"]["trailing_bytes_all_zero"] is False


def samples(tee: str | None = None) -> list[Sample]:
    dirs = [TDX, SGX] if tee is None else [VECTORS / tee]
    return [Sample(p) for d in dirs for p in sorted(d.iterdir()) if p.is_dir()]


def sample(name: str) -> Sample:
    for s in samples():
        if s.name == name:
            return s
    raise KeyError(name)


def with_collateral(tee: str | None = None) -> list[Sample]:
    return [s for s in samples(tee) if s.has_collateral]


@lru_cache(maxsize=1)
def shared_pki() -> FakeIntelPki:
    """One fake Intel PKI for a whole test session (key generation is cheap,
    but sharing keeps the certificate caches warm)."""
    return FakeIntelPki()


@lru_cache(maxsize=4)
def shared_pck(ca: str = "platform") -> FakePck:
    return shared_pki().pck(ca=ca)
