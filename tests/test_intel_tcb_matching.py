"""Intel's TCB level matching and status convergence
(docs/adr/0006-intel-tcb-level-matching.md): the two real samples whose
status depends on the TDX comparison rule, and every branch of the rules on
fake collateral."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from intel_support import sample, shared_pck, shared_pki
from stockade.errors import MalformedEvidence, VerificationFailed
from stockade.evidence.intel import tcb as tcbmod
from stockade.evidence.intel.abi import BodyType
from stockade.evidence.intel.tcb import (
    TcbLevelNotSupported,
    TcbStatus,
    converge_with_module,
    converge_with_qe,
    module_identity_id,
)
from stockade.evidence.intel.tcbinfo import parse_tcb_info
from stockade.evidence.intel.verify import verify_quote
from stockade.testing.intel import Level, default_td_body

S = TcbStatus
AZURE, GCP = "v4-azure-trustee", "v4-gcp-cos-go-tdx-guest"


def _verify_real(name: str):  # type: ignore[no-untyped-def]
    s = sample(name)
    return verify_quote(s.quote, s.collateral, s.verify_at)


# --- the two contested samples --------------------------------------------------------


def test_intel_rule_on_the_contested_samples() -> None:
    """Intel's rule: TEE_TCB_SVN[1] > 0 (TDX 1.5 module), so tdxtcbcomponents
    are compared from index 2 and bytes 0-1 are judged by module TDX_01."""
    azure = _verify_real(AZURE)
    assert azure.quote.body.tee_tcb_svn[:3] == bytes([2, 1, 6])  # type: ignore[union-attr]
    assert (azure.tcb.platform_status, azure.tcb.module_id, azure.tcb.module_status) == (
        S.OUT_OF_DATE,
        "TDX_01",
        S.OUT_OF_DATE,
    )
    assert azure.tcb_status is S.OUT_OF_DATE
    assert azure.advisory_ids == ("INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986")
    gcp = _verify_real(GCP)
    assert gcp.quote.body.tee_tcb_svn[:3] == bytes([4, 1, 7])  # type: ignore[union-attr]
    assert (gcp.tcb.platform_status, gcp.tcb.module_status, gcp.tcb_status) == (
        S.UP_TO_DATE,
        S.UP_TO_DATE,
        S.UP_TO_DATE,
    )


def test_the_all_16_bytes_rule_would_change_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """What dcap-qvl (at the vectors' commit) computes by comparing all 16
    bytes: Azure becomes "not supported", GCP "OutOfDate". If this test ever
    fails, the rule in stockade.evidence.intel.tcb changed."""
    monkeypatch.setattr(tcbmod, "tdx_components_start", lambda svn: 0)
    with pytest.raises(TcbLevelNotSupported):
        _verify_real(AZURE)
    assert _verify_real(GCP).tcb_status is S.OUT_OF_DATE


def test_samples_without_module_byte_compare_all_16() -> None:
    for name in ("v4-50806f-trustee", "v4-spr-e4-go-tdx-guest"):
        s = sample(name)
        body = s.expected["decoded"]
        assert body["tdx_module_major_version(tee_tcb_svn[1])"] == 0
    assert tcbmod.tdx_components_start(bytes([3, 0, 5] + [0] * 13)) == 0
    assert tcbmod.tdx_components_start(bytes([3, 1, 5] + [0] * 13)) == 2


# --- convergence tables (QVL TdxModuleCheck / TcbLevelCheck) ---------------------------

PLATFORM = [
    S.UP_TO_DATE,
    S.SW_HARDENING_NEEDED,
    S.CONFIGURATION_NEEDED,
    S.CONFIGURATION_AND_SW_HARDENING_NEEDED,
    S.OUT_OF_DATE,
    S.OUT_OF_DATE_CONFIGURATION_NEEDED,
    S.REVOKED,
]
OUT_OF_DATE_MAP = {
    S.UP_TO_DATE: S.OUT_OF_DATE,
    S.SW_HARDENING_NEEDED: S.OUT_OF_DATE,
    S.CONFIGURATION_NEEDED: S.OUT_OF_DATE_CONFIGURATION_NEEDED,
    S.CONFIGURATION_AND_SW_HARDENING_NEEDED: S.OUT_OF_DATE_CONFIGURATION_NEEDED,
    S.OUT_OF_DATE: S.OUT_OF_DATE,
    S.OUT_OF_DATE_CONFIGURATION_NEEDED: S.OUT_OF_DATE_CONFIGURATION_NEEDED,
    S.REVOKED: S.REVOKED,
}


@pytest.mark.parametrize("converge", [converge_with_module, converge_with_qe])
@pytest.mark.parametrize("platform", PLATFORM, ids=[p.value for p in PLATFORM])
def test_convergence(converge, platform: TcbStatus) -> None:  # type: ignore[no-untyped-def]
    assert converge(platform, S.UP_TO_DATE) is platform
    assert converge(platform, S.OUT_OF_DATE) is OUT_OF_DATE_MAP[platform]
    assert converge(platform, S.REVOKED) is S.REVOKED


def test_module_identity_names() -> None:
    assert module_identity_id(1) == "TDX_01"
    assert module_identity_id(0x0A) == "TDX_0A"  # hex, as QVL's bytesToHexString


# --- end to end on fake collateral -------------------------------------------------------

SVN = bytes.fromhex("05010200000000000000000000000000")


def _tdx(levels=None, module_levels=((5, "UpToDate"),), qe_levels=((8, "UpToDate"),), tee_tcb_svn=SVN, **kw):  # type: ignore[no-untyped-def]
    pki, pck = shared_pki(), shared_pck()
    info = pki.tcb_info_json(
        "tdx", pck.spec, levels=levels, tee_tcb_svn=tee_tcb_svn, module_levels=module_levels
    )
    collateral = pki.collateral(
        "tdx", pck, tcb_info=info, qe_identity=pki.qe_identity_json("tdx", levels=qe_levels)
    )
    v15 = kw.pop("v15", False)
    body = default_td_body(tee_tcb_svn=tee_tcb_svn, v15=v15, **kw)
    quote = pki.quote(
        "tdx", pck, version=5 if v15 else 4, body=body, body_type=BodyType.TD_REPORT15 if v15 else None
    )
    return verify_quote(quote, collateral, pki.now, root_der=pki.root_der)


def _sgx(levels=None, qe_levels=((8, "UpToDate"),)):  # type: ignore[no-untyped-def]
    pki, pck = shared_pki(), shared_pck()
    info = pki.tcb_info_json("sgx", pck.spec, levels=levels)
    collateral = pki.collateral(
        "sgx", pck, tcb_info=info, qe_identity=pki.qe_identity_json("sgx", levels=qe_levels)
    )
    return verify_quote(pki.quote("sgx", pck), collateral, pki.now, root_der=pki.root_der)


COMPS = shared_pck().spec.tcb_components
PCESVN = shared_pck().spec.pce_svn


def _higher(comps: tuple[int, ...], index: int = 0) -> tuple[int, ...]:
    return tuple(v + 1 if i == index else v for i, v in enumerate(comps))


@pytest.mark.parametrize("status", PLATFORM, ids=[p.value for p in PLATFORM])
def test_platform_status_is_the_matched_levels(status: TcbStatus) -> None:
    levels = (
        Level(_higher(COMPS), PCESVN, "UpToDate", tdx=tuple(SVN)),
        Level(COMPS, PCESVN, status.value, tdx=tuple(SVN), advisories=("INTEL-SA-1",)),
    )
    v = _tdx(levels)
    assert v.tcb.platform_status is status and v.tcb_status is status
    assert v.advisory_ids == ("INTEL-SA-1",)
    assert _sgx(tuple(replace(lv, tdx=None) for lv in levels)).tcb_status is status


def test_pcesvn_decides_between_levels() -> None:
    levels = (
        Level(COMPS, PCESVN + 1, "UpToDate", tdx=tuple(SVN)),
        Level(COMPS, PCESVN, "SWHardeningNeeded", tdx=tuple(SVN)),
    )
    assert _tdx(levels).tcb_status is S.SW_HARDENING_NEEDED


def test_tdx_components_pick_a_lower_level() -> None:
    higher_tdx = bytes(SVN[:2]) + bytes([SVN[2] + 1]) + SVN[3:]
    levels = (
        Level(COMPS, PCESVN, "UpToDate", tdx=tuple(higher_tdx)),
        Level(COMPS, PCESVN, "OutOfDate", tdx=tuple(SVN), advisories=("INTEL-SA-2",)),
    )
    v = _tdx(levels)
    assert (v.tcb_status, v.tcb.sgx_status, v.advisory_ids) == (S.OUT_OF_DATE, S.UP_TO_DATE, ("INTEL-SA-2",))


def test_bytes_0_and_1_are_ignored_when_a_module_identity_applies() -> None:
    level_tdx = bytes([99, 99]) + SVN[2:]  # far above the TD's module bytes
    assert _tdx((Level(COMPS, PCESVN, "UpToDate", tdx=tuple(level_tdx)),)).tcb_status is S.UP_TO_DATE


def test_bytes_0_and_1_count_for_pre_1_5_modules() -> None:
    svn = bytes([5, 0]) + SVN[2:]
    higher = bytes([6, 0]) + SVN[2:]
    levels = (
        Level(COMPS, PCESVN, "UpToDate", tdx=tuple(higher)),
        Level(COMPS, PCESVN, "OutOfDate", tdx=tuple(svn)),
    )
    v = _tdx(levels, tee_tcb_svn=svn)
    assert (v.tcb_status, v.tcb.module_id, v.tcb.module_status) == (S.OUT_OF_DATE, None, None)


def test_module_status_converges() -> None:
    module = ((6, "UpToDate"), (5, "OutOfDate"))
    level = (Level(COMPS, PCESVN, "ConfigurationNeeded", tdx=tuple(SVN)),)
    v = _tdx(level, module_levels=module)
    assert (v.tcb.module_status, v.tcb_status) == (S.OUT_OF_DATE, S.OUT_OF_DATE_CONFIGURATION_NEEDED)
    assert _tdx(None, module_levels=((5, "Revoked"),)).tcb_status is S.REVOKED


def test_module_below_every_level_is_not_supported() -> None:
    with pytest.raises(TcbLevelNotSupported, match="TDX module TDX_01 SVN 5 is below every TCB level"):
        _tdx(None, module_levels=((6, "UpToDate"),))


def test_qe_status_converges() -> None:
    qe = ((9, "UpToDate"), (8, "OutOfDate"))
    v = _tdx(None, qe_levels=qe)
    assert (v.tcb.qe_status, v.tcb_status) == (S.OUT_OF_DATE, S.OUT_OF_DATE)
    config = (Level(COMPS, PCESVN, "ConfigurationAndSWHardeningNeeded"),)
    assert _sgx(config, qe_levels=qe).tcb_status is S.OUT_OF_DATE_CONFIGURATION_NEEDED
    assert _sgx(None, qe_levels=((8, "Revoked"),)).tcb_status is S.REVOKED
    with pytest.raises(TcbLevelNotSupported, match="QE ISVSVN 8 is below every QE identity TCB level"):
        _sgx(None, qe_levels=((9, "UpToDate"),))


def test_no_platform_level_is_not_supported() -> None:
    with pytest.raises(TcbLevelNotSupported, match="no TCB level of FMSPC"):
        _sgx((Level(_higher(COMPS, 15), PCESVN),))
    with pytest.raises(TcbLevelNotSupported, match=r"tdxtcbcomponents\[2:\]"):
        _tdx((Level(COMPS, PCESVN, tdx=(*SVN[:2], SVN[2] + 1, *SVN[3:])),))


def test_td_relaunch_advised() -> None:
    """TD report 1.5: an out-of-date TD whose TEE_TCB_SVN2 already reaches
    the newest level (QVL checkForRelaunch)."""
    svn_old = bytes([4, 1, 2] + [0] * 13)
    newest = Level(COMPS, PCESVN, "UpToDate", tdx=(0, 0, 3) + (0,) * 13)
    older = Level(COMPS, PCESVN, "OutOfDate", tdx=(0, 0, 2) + (0,) * 13)
    module = ((5, "UpToDate"), (4, "OutOfDate"))
    v = _tdx(
        (newest, older),
        module_levels=module,
        tee_tcb_svn=svn_old,
        v15=True,
        tee_tcb_svn2=bytes([5, 1, 3] + [0] * 13),
    )
    assert v.tcb_status is S.TD_RELAUNCH_ADVISED
    assert v.tcb.platform_status is S.OUT_OF_DATE and v.tcb.module_status is S.OUT_OF_DATE
    # TEE_TCB_SVN2 not yet at the newest level: stays OutOfDate.
    v = _tdx((newest, older), module_levels=module, tee_tcb_svn=svn_old, v15=True, tee_tcb_svn2=svn_old)
    assert v.tcb_status is S.OUT_OF_DATE
    # Configuration needed on the platform: the ConfigurationNeeded flavour.
    newest_c, older_c = (
        replace(newest, status="ConfigurationNeeded"),
        replace(older, status="OutOfDateConfigurationNeeded"),
    )
    v = _tdx(
        (newest_c, older_c),
        module_levels=module,
        tee_tcb_svn=svn_old,
        v15=True,
        tee_tcb_svn2=bytes([5, 1, 3] + [0] * 13),
    )
    assert v.tcb_status is S.TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED


def test_levels_are_sorted_as_qvl_sorts_them() -> None:
    pki, pck = shared_pki(), shared_pck()
    levels = [Level(tuple(random.Random(i).randrange(8) for _ in range(16)), i % 3) for i in range(12)]
    info = parse_tcb_info(pki.tcb_info_json("sgx", pck.spec, levels=tuple(levels)))
    keys = [lv.sort_key() for lv in info.tcb_levels]
    assert keys == sorted(keys, reverse=True)
    with pytest.raises(MalformedEvidence, match="duplicate TCB levels"):
        parse_tcb_info(pki.tcb_info_json("sgx", pck.spec, levels=(levels[0], levels[0])))


def test_module_identity_must_exist_for_1_5_modules() -> None:
    with pytest.raises(
        VerificationFailed, match="TDX module mismatch: TCB info has no module identity TDX_02"
    ):
        _tdx_with_identity_for(1, bytes([5, 2, 2] + [0] * 13))


def _tdx_with_identity_for(major: int, svn: bytes):  # type: ignore[no-untyped-def]
    pki, pck = shared_pki(), shared_pck()
    info = pki.tcb_info_json("tdx", pck.spec, tee_tcb_svn=bytes([svn[0], major]) + svn[2:])
    quote = pki.quote("tdx", pck, body=default_td_body(tee_tcb_svn=svn))
    return verify_quote(quote, pki.collateral("tdx", pck, tcb_info=info), pki.now, root_der=pki.root_der)
