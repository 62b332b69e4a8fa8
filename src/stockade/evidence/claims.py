"""Normalized verified claims: what a verifier vouches for, for any platform.

Only verifiers construct :class:`VerifiedClaims` (they pass the private
``_VERIFIED`` token); policy and the client consume them. A value of this
type therefore always means "these claims came out of a successful
verification at ``verified_at`` against the named root".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stockade.wire.platform import Platform

_VERIFIED = object()
#: Platforms that give no hardware protection (the sim backends: "sim" is
#: simulated SEV-SNP, "sim-tdx" simulated TDX).
SIM_PLATFORMS: tuple[str, ...] = (Platform.SIM.value, Platform.SIM_TDX.value)


@dataclass(frozen=True)
class VerifiedClaims:
    platform: str  # a Platform value (wire/platform.py): "snp", "tdx", "sgx", "sim" or "sim-tdx"
    product: str  # e.g. "Milan"
    signer: str  # e.g. "VCEK", "VLEK"
    measurement: bytes
    report_data: bytes
    host_data: bytes
    debug: bool
    vmpl: int | None
    chip_id: bytes
    tcb: tuple[tuple[str, int], ...]
    firmware: str
    policy_flags: tuple[tuple[str, bool], ...]
    report_version: int
    root_fingerprint: str  # SHA-256 of the root certificate DER, hex
    verified_at: datetime
    #: Named measurement registers beyond ``measurement`` (TDX: mrtd,
    #: rtmr0..rtmr3, mrseam, mrsignerseam; SGX: mrenclave, mrsigner).
    registers: tuple[tuple[str, bytes], ...] = ()
    #: Intel TCB status (UpToDate, SWHardeningNeeded, ConfigurationNeeded,
    #: ConfigurationAndSWHardeningNeeded, OutOfDate,
    #: OutOfDateConfigurationNeeded, Revoked); None for AMD and sim.
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    fmspc: str | None = None
    #: The OLDEST issue date of the collateral the verification used (Intel:
    #: TCB info and QE identity issueDate, CRL thisUpdate; SNP: the
    #: thisUpdate of the CRLs applied) and the EARLIEST nextUpdate among
    #: them; None when no dated collateral was used (an SNP report verified
    #: without a CRL: its VCEK's validity is checked, but a certificate is
    #: not collateral with an issue/next-update cycle).
    collateral_issued: datetime | None = None
    collateral_next_update: datetime | None = None
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _VERIFIED:
            raise TypeError("VerifiedClaims are constructed by verifiers only")

    @property
    def hardware_protected(self) -> bool:
        return self.platform not in SIM_PLATFORMS

    def to_json(self) -> dict[str, Any]:
        return claims_json(self)


def claims_json(claims: Any) -> dict[str, Any]:
    """The claims document of ``claims`` (a VerifiedClaims, or anything with
    its fields: policy's UnverifiedClaims reads and writes the same one)."""
    return {
        "platform": claims.platform,
        "hardware_protection": claims.platform not in SIM_PLATFORMS,
        "product": claims.product,
        "signer": claims.signer,
        "measurement": claims.measurement.hex(),
        "report_data": claims.report_data.hex(),
        "host_data": claims.host_data.hex(),
        "debug": claims.debug,
        "vmpl": claims.vmpl,
        "chip_id": claims.chip_id.hex(),
        "tcb": dict(claims.tcb),
        "firmware": claims.firmware,
        "policy_flags": dict(claims.policy_flags),
        "report_version": claims.report_version,
        "root_sha256": claims.root_fingerprint,
        "verified_at": claims.verified_at.isoformat(),
        "registers": {k: v.hex() for k, v in claims.registers},
        "tcb_status": claims.tcb_status,
        "advisory_ids": list(claims.advisory_ids),
        "fmspc": claims.fmspc,
        "collateral_issued": _iso(claims.collateral_issued),
        "collateral_next_update": _iso(claims.collateral_next_update),
    }


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def collateral_dates(
    dated: list[tuple[datetime, datetime]] | tuple[tuple[datetime, datetime], ...],
) -> tuple[datetime | None, datetime | None]:
    """(oldest issue date, earliest next update) of (issued, next_update)
    pairs; (None, None) for none."""
    if not dated:
        return None, None
    return min(d[0] for d in dated), min(d[1] for d in dated)
