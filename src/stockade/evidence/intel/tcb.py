"""Intel TCB status: level selection and convergence, as Intel specifies.

Sources, all public: Intel PCS API v4 documentation, "TCB Info V3" ->
"TCB level matching" (SGX and TDX), "TDX module identities", "Enclave
Identity V2"; and Intel's Quote Verification Library, which implements that
text (``Verifiers/Checks/TcbLevelCheck.cpp``, ``TdxModuleCheck.cpp``,
``TDRelaunchCheck.cpp``, ``EnclaveReportVerifier.cpp``). The rules:

1. TCB levels are walked highest first, in QVL's order (SGX components
   lexicographically, then PCESVN, then TDX components), which is also
   the order in which PCS publishes them.
2. SGX: the first level whose 16 sgxtcbcomponents are all <= the PCK
   certificate's TCB components and whose pcesvn <= the PCK's PCESVN.
3. TDX: among those, the first level whose tdxtcbcomponents are <= the TD
   report's TEE_TCB_SVN, compared **from index 2 when TEE_TCB_SVN[1] > 0,
   from index 0 otherwise** ("from index 0 to 15 if TEE TCB SVN at index 1
   is set to 0, or from index 2 to 15 otherwise"). Bytes 0 and 1 are then
   judged by the TDX module identity ``TDX_%02X`` % TEE_TCB_SVN[1]: its
   first tcbLevel with isvsvn <= TEE_TCB_SVN[0]. See
   docs/adr/0006-intel-tcb-level-matching.md for why, and which
   implementations differ.
4. No matching level (platform, module or QE) = TCB not supported: an
   error, never a status.
5. Convergence: module OutOfDate turns UpToDate/SWHardeningNeeded into
   OutOfDate and Configuration(AndSWHardening)Needed into
   OutOfDateConfigurationNeeded; module Revoked gives Revoked. Then (TD
   report 1.5) the TD relaunch check. Then the QE: OutOfDate converges the
   same way, Revoked gives Revoked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from stockade.errors import VerificationFailed
from stockade.evidence.intel.tcbinfo import (
    EnclaveIdentity,
    EnclaveTcbLevel,
    ModuleTcbLevel,
    TcbInfo,
    TcbLevel,
    TdxModuleIdentity,
)
from stockade.evidence.intel.tcbstatus import TcbStatus

if TYPE_CHECKING:
    from stockade.evidence.tdx.abi import TdReport


S = TcbStatus
_CONFIGURATION = frozenset(
    {
        S.CONFIGURATION_NEEDED,
        S.OUT_OF_DATE_CONFIGURATION_NEEDED,
        S.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        S.TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED,
    }
)


class TcbLevelNotSupported(VerificationFailed):
    """No TCB level of the collateral matches the platform, TDX module or
    QE (Intel: TCB_NOT_SUPPORTED). The quote itself may be genuine. What was
    matched before the failure is kept for diagnostics."""

    def __init__(
        self,
        detail: str,
        *,
        qe_status: TcbStatus | None = None,
        module_id: str | None = None,
        module_status: TcbStatus | None = None,
    ) -> None:
        super().__init__(detail)
        self.qe_status = qe_status
        self.module_id = module_id
        self.module_status = module_status


@dataclass(frozen=True)
class TcbEvaluation:
    status: TcbStatus  # overall, after convergence
    platform_status: TcbStatus  # matched tcbLevel (the TDX one for TDX quotes)
    sgx_status: TcbStatus  # the SGX-only match (equal to platform_status for SGX)
    module_status: TcbStatus | None  # None: no module identity applies (TEE_TCB_SVN[1] == 0, SGX)
    module_id: str | None
    qe_status: TcbStatus
    tcb_date: datetime
    advisory_ids: tuple[str, ...]
    level: TcbLevel


def tdx_components_start(tee_tcb_svn: bytes) -> int:
    """Index from which TEE_TCB_SVN is compared with tdxtcbcomponents."""
    return 2 if tee_tcb_svn[1] > 0 else 0


def _tdx_covers(tee_tcb_svn: bytes, level: TcbLevel) -> bool:
    assert level.tdx_components is not None
    start = tdx_components_start(tee_tcb_svn)
    return all(tee_tcb_svn[i] >= level.tdx_components[i] for i in range(start, 16))


def match_levels(
    levels: tuple[TcbLevel, ...],
    pck_components: tuple[int, ...],
    pck_pce_svn: int,
    tee_tcb_svn: bytes | None,
) -> tuple[TcbLevel | None, TcbLevel | None]:
    """(first SGX match, first TDX match); the TDX one is None for SGX."""
    sgx_level: TcbLevel | None = None
    for level in levels:
        if all(p >= c for p, c in zip(pck_components, level.sgx_components, strict=True)) and (
            pck_pce_svn >= level.pce_svn
        ):
            if tee_tcb_svn is None:
                return level, None
            sgx_level = sgx_level or level
            if _tdx_covers(tee_tcb_svn, level):
                return sgx_level, level
    return sgx_level, None


def module_identity_id(major: int) -> str:
    return f"TDX_{major:02X}"


def select_module(tcb_info: TcbInfo, td: TdReport, quote_version: int) -> TdxModuleIdentity | None:
    """The TDX module identity that applies (None: the tdxModule entry, for
    TEE_TCB_SVN[1] == 0), after checking MRSIGNERSEAM and SEAMATTRIBUTES
    against it (QVL 4.1.2.4.11: attributes must be zero and equal)."""
    assert tcb_info.tdx_module is not None
    identity: TdxModuleIdentity | None = None
    expected = tcb_info.tdx_module
    if quote_version > 3 and td.module_major > 0:
        wanted = module_identity_id(td.module_major)
        found = [i for i in tcb_info.tdx_module_identities or () if i.id.upper() == wanted]
        if not found:
            raise VerificationFailed(f"TDX module mismatch: TCB info has no module identity {wanted}")
        identity = expected = found[0]
    if td.mr_signer_seam != expected.mr_signer:
        raise VerificationFailed(
            f"TDX module mismatch: MRSIGNERSEAM {td.mr_signer_seam.hex()} is not "
            f"{expected.mr_signer.hex()} ({identity.id if identity else 'tdxModule'})"
        )
    if any(td.seam_attributes) or td.seam_attributes != expected.attributes:
        raise VerificationFailed(
            f"TDX module mismatch: SEAMATTRIBUTES {td.seam_attributes.hex()} must be zero and equal "
            f"{expected.attributes.hex()}"
        )
    return identity


def _module_level(identity: TdxModuleIdentity, module_svn: int) -> ModuleTcbLevel:
    for level in identity.tcb_levels:
        if module_svn >= level.isv_svn:
            return level
    raise TcbLevelNotSupported(
        f"TCB level not supported: TDX module {identity.id} SVN {module_svn} is below every TCB level "
        f"(lowest {identity.tcb_levels[-1].isv_svn})"
    )


def qe_level(identity: EnclaveIdentity, isv_svn: int) -> EnclaveTcbLevel:
    for level in identity.tcb_levels:
        if isv_svn >= level.isv_svn:
            return level
    raise TcbLevelNotSupported(
        f"TCB level not supported: QE ISVSVN {isv_svn} is below every {identity.id} identity TCB level"
    )


def converge_with_module(status: TcbStatus, module: TcbStatus) -> TcbStatus:
    if module is S.OUT_OF_DATE:
        if status in (S.UP_TO_DATE, S.SW_HARDENING_NEEDED):
            return S.OUT_OF_DATE
        if status in (S.CONFIGURATION_NEEDED, S.CONFIGURATION_AND_SW_HARDENING_NEEDED):
            return S.OUT_OF_DATE_CONFIGURATION_NEEDED
    if module is S.REVOKED:
        return S.REVOKED
    return status


def converge_with_qe(status: TcbStatus, qe: TcbStatus) -> TcbStatus:
    if qe is S.OUT_OF_DATE:
        if status in (S.UP_TO_DATE, S.SW_HARDENING_NEEDED):
            return S.OUT_OF_DATE
        if status in (S.CONFIGURATION_NEEDED, S.CONFIGURATION_AND_SW_HARDENING_NEEDED):
            return S.OUT_OF_DATE_CONFIGURATION_NEEDED
    if qe is S.REVOKED:
        return S.REVOKED
    return status


def relaunch(
    tee_tcb_svn2: bytes,
    tcb_info: TcbInfo,
    sgx_status: TcbStatus,
    tdx_status: TcbStatus,
    module_status: TcbStatus,
    qe_status: TcbStatus,
) -> TcbStatus:
    """The TD relaunch check (QVL ``checkForRelaunch``, TD report 1.5): an
    out-of-date TD whose TEE_TCB_SVN2 already reaches the newest TCB level
    can be fixed by relaunching it on the updated platform."""
    if qe_status in (S.OUT_OF_DATE, S.REVOKED):
        return tdx_status
    if sgx_status not in (
        S.UP_TO_DATE,
        S.SW_HARDENING_NEEDED,
        S.CONFIGURATION_NEEDED,
        S.CONFIGURATION_AND_SW_HARDENING_NEEDED,
    ):
        return tdx_status
    if (
        tdx_status not in (S.OUT_OF_DATE, S.OUT_OF_DATE_CONFIGURATION_NEEDED)
        or module_status is not S.OUT_OF_DATE
    ):
        return tdx_status
    latest = tcb_info.tcb_levels[0]
    assert latest.tdx_components is not None
    if tee_tcb_svn2[1] == 0:
        module_ok = tee_tcb_svn2[0] >= latest.tdx_components[0]
    else:
        wanted = module_identity_id(tee_tcb_svn2[1])
        found = [i for i in tcb_info.tdx_module_identities or () if i.id.upper() == wanted]
        if not found:
            raise VerificationFailed(
                f"TDX module mismatch: TCB info has no module identity {wanted} (TEE_TCB_SVN2)"
            )
        module_ok = tee_tcb_svn2[0] >= found[0].tcb_levels[0].isv_svn
    if module_ok and tee_tcb_svn2[2] >= latest.tdx_components[2]:
        if sgx_status in _CONFIGURATION or tdx_status in _CONFIGURATION:
            return S.TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED
        return S.TD_RELAUNCH_ADVISED
    return tdx_status


def _merge(*groups: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for group in groups:
        out += [a for a in group if a not in out]
    return tuple(out)


def evaluate(
    tcb_info: TcbInfo,
    pck_components: tuple[int, ...],
    pck_pce_svn: int,
    td: TdReport | None,
    module: TdxModuleIdentity | None,
    qe: EnclaveTcbLevel,
) -> TcbEvaluation:
    """The TCB status of a quote whose signatures, chain and identities have
    all been verified. ``td`` is the TD report (None for SGX), ``module`` the
    identity from :func:`select_module`, ``qe`` from :func:`qe_level`."""
    tee_tcb_svn = td.tee_tcb_svn if td is not None else None
    module_level = _module_level(module, td.module_svn) if module is not None and td is not None else None

    def not_supported(detail: str) -> TcbLevelNotSupported:
        return TcbLevelNotSupported(
            detail,
            qe_status=qe.status,
            module_id=module.id if module is not None else None,
            module_status=module_level.status if module_level is not None else None,
        )

    sgx_level, tdx_level = match_levels(tcb_info.tcb_levels, pck_components, pck_pce_svn, tee_tcb_svn)
    if sgx_level is None:
        raise not_supported(
            f"TCB level not supported: no TCB level of FMSPC {tcb_info.fmspc.hex()} has SGX components <= "
            f"{list(pck_components)} and PCESVN <= {pck_pce_svn}"
        )
    if td is None:
        status = converge_with_qe(sgx_level.status, qe.status)
        return TcbEvaluation(
            status=status,
            platform_status=sgx_level.status,
            sgx_status=sgx_level.status,
            module_status=None,
            module_id=None,
            qe_status=qe.status,
            tcb_date=sgx_level.tcb_date,
            advisory_ids=_merge(sgx_level.advisory_ids, qe.advisory_ids),
            level=sgx_level,
        )
    if tdx_level is None:
        start = tdx_components_start(td.tee_tcb_svn)
        raise not_supported(
            f"TCB level not supported: no TCB level of FMSPC {tcb_info.fmspc.hex()} matching the PCK has "
            f"tdxtcbcomponents[{start}:] <= TEE_TCB_SVN[{start}:] {list(td.tee_tcb_svn[start:])}"
        )
    module_status = module_level.status if module_level is not None else S.UP_TO_DATE
    status = converge_with_module(tdx_level.status, module_status)
    if status is not S.REVOKED:
        if td.tee_tcb_svn2 is not None:
            status = relaunch(td.tee_tcb_svn2, tcb_info, sgx_level.status, status, module_status, qe.status)
        status = converge_with_qe(status, qe.status)
    return TcbEvaluation(
        status=status,
        platform_status=tdx_level.status,
        sgx_status=sgx_level.status,
        module_status=module_level.status if module_level is not None else None,
        module_id=module.id if module is not None else None,
        qe_status=qe.status,
        tcb_date=tdx_level.tcb_date,
        advisory_ids=_merge(
            tdx_level.advisory_ids,
            module_level.advisory_ids if module_level is not None else (),
            qe.advisory_ids,
        ),
        level=tdx_level,
    )


__all__ = [
    "TcbEvaluation",
    "TcbLevelNotSupported",
    "TcbStatus",
    "converge_with_module",
    "converge_with_qe",
    "evaluate",
    "match_levels",
    "module_identity_id",
    "qe_level",
    "relaunch",
    "select_module",
    "tdx_components_start",
]
