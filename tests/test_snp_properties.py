"""Property tests of the SNP report parser (hypothesis)."""

from __future__ import annotations

import struct
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snp_support import SimKeys, sample, sign
from stockade.errors import MalformedEvidence
from stockade.evidence.sim import chip as simchip
from stockade.evidence.snp.abi import REPORT_SIZE, AttestationReport, ReportFields, SigningKey
from stockade.evidence.snp.verify import verify_report

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)


def nbytes(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


# --- arbitrary input: MalformedEvidence or a parse, nothing else -------------------


def _parse(data: bytes) -> None:
    try:
        report = AttestationReport.from_bytes(data)
    except MalformedEvidence:
        return
    assert report.to_bytes() == data


@settings(max_examples=500)
@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE))
def test_random_report_sized_input(data: bytes) -> None:
    _parse(data)


@settings(max_examples=300)
@given(st.binary(max_size=2 * REPORT_SIZE))
def test_random_length_input(data: bytes) -> None:
    _parse(data)
    if len(data) != REPORT_SIZE:
        with pytest.raises(MalformedEvidence, match=r"must be 1184 bytes"):
            AttestationReport.from_bytes(data)


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A real report with a few header words and random bytes overwritten:
    gets past the version/algorithm checks far more often than pure noise."""
    base = bytearray(sample("turin-v5-oak" if draw(st.booleans()) else "milan-v2-go-sev-guest").report)
    struct.pack_into("<I", base, 0, draw(st.sampled_from([1, 2, 3, 4, 5, 6])))
    struct.pack_into("<I", base, 0x34, draw(st.sampled_from([0, 1, 1, 1, 2])))
    struct.pack_into("<I", base, 0x48, draw(st.integers(0, 0x3F)))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, REPORT_SIZE - 1))
        base[pos] = draw(u8)
    return bytes(base)


@settings(max_examples=500)
@given(near_valid())
def test_near_valid_input(data: bytes) -> None:
    _parse(data)


# --- valid field values round trip -----------------------------------------------------


@st.composite
def report_fields(draw: st.DrawFn) -> ReportFields:
    version = draw(st.sampled_from([2, 3, 5]))
    policy = draw(st.integers(0, (1 << 26) - 1)) | 1 << 17  # bits 26-63 reserved, 17 must be one
    signing_key = draw(st.sampled_from(list(SigningKey)))
    key_info = draw(st.integers(0, 3)) | signing_key << 2
    cpuid = (draw(u8), draw(u8), draw(u8)) if version >= 3 else (0, 0, 0)
    mit = (draw(u64), draw(u64)) if version >= 5 else (0, 0)
    return ReportFields(
        version=version,
        guest_svn=draw(u32),
        policy=policy,
        family_id=draw(nbytes(16)),
        image_id=draw(nbytes(16)),
        vmpl=draw(u32),
        current_tcb=draw(u64),
        platform_info=draw(u64),
        key_info=key_info,
        report_data=draw(nbytes(64)),
        measurement=draw(nbytes(48)),
        host_data=draw(nbytes(32)),
        id_key_digest=draw(nbytes(48)),
        author_key_digest=draw(nbytes(48)),
        report_id=draw(nbytes(32)),
        report_id_ma=draw(nbytes(32)),
        reported_tcb=draw(u64),
        cpuid_fam_id=cpuid[0],
        cpuid_mod_id=cpuid[1],
        cpuid_step=cpuid[2],
        chip_id=draw(nbytes(64)),
        committed_tcb=draw(u64),
        current_build=draw(u8),
        current_minor=draw(u8),
        current_major=draw(u8),
        committed_build=draw(u8),
        committed_minor=draw(u8),
        committed_major=draw(u8),
        launch_tcb=draw(u64),
        launch_mit_vector=mit[0],
        current_mit_vector=mit[1],
    )


@settings(max_examples=400)
@given(report_fields())
def test_fields_round_trip(f: ReportFields) -> None:
    data = f.unsigned_bytes()
    assert len(data) == REPORT_SIZE
    r = AttestationReport.from_bytes(data)
    assert r.to_bytes() == data
    assert (r.version, r.guest_svn, r.policy.raw, r.vmpl) == (f.version, f.guest_svn, f.policy, f.vmpl)
    assert (r.family_id, r.image_id) == (f.family_id, f.image_id)
    assert r.signature_algo == 1
    assert r.current_tcb.raw == f.current_tcb
    assert r.reported_tcb.raw == f.reported_tcb
    assert r.committed_tcb.raw == f.committed_tcb
    assert r.launch_tcb.raw == f.launch_tcb
    assert r.platform_info == f.platform_info
    assert (r.author_key_en, r.mask_chip_key) == (bool(f.key_info & 1), bool(f.key_info & 2))
    assert r.signing_key == f.key_info >> 2
    assert (r.report_data, r.measurement, r.host_data) == (f.report_data, f.measurement, f.host_data)
    assert (r.id_key_digest, r.author_key_digest) == (f.id_key_digest, f.author_key_digest)
    assert (r.report_id, r.report_id_ma, r.chip_id) == (f.report_id, f.report_id_ma, f.chip_id)
    assert r.current_version == (f.current_major, f.current_minor, f.current_build)
    assert r.committed_version == (f.committed_major, f.committed_minor, f.committed_build)
    if f.version >= 3:
        assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (
            f.cpuid_fam_id,
            f.cpuid_mod_id,
            f.cpuid_step,
        )
    else:
        assert r.cpuid_fam_id is r.cpuid_mod_id is r.cpuid_step is None
    if f.version >= 5:
        assert (r.launch_mit_vector, r.current_mit_vector) == (f.launch_mit_vector, f.current_mit_vector)
    else:
        assert r.launch_mit_vector is r.current_mit_vector is None
    assert (r.sig_r, r.sig_s) == (0, 0)


@settings(max_examples=200)
@given(report_fields(), st.integers(0, 63))
def test_policy_reserved_bits_refused(f: ReportFields, bit: int) -> None:
    if bit < 26 and bit != 17:
        return
    bad = f.policy ^ (1 << bit)  # sets a reserved bit, or clears bit 17
    with pytest.raises(MalformedEvidence, match=r"guest policy"):
        AttestationReport.from_bytes(replace(f, policy=bad).unsigned_bytes())


# --- consistent sim-signed reports verify with the fields they carry -----------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(report_fields(), st.sampled_from([3, 5]), st.integers(0, 3))
def test_sim_signed_reports_verify(state_dir: Path, f: ReportFields, version: int, vmpl: int) -> None:
    sim = SimKeys(state_dir)
    tcb = sim.chip.reported_tcb.raw
    fam, model, step = simchip.CPUID
    fields = replace(
        f,
        version=version,
        key_info=f.key_info & 3,  # signed by the VCEK
        reported_tcb=tcb,
        chip_id=sim.chip.chip_id,
        cpuid_fam_id=fam,
        cpuid_mod_id=model,
        cpuid_step=step,
        vmpl=vmpl,
        launch_mit_vector=f.launch_mit_vector if version >= 5 else 0,
        current_mit_vector=f.current_mit_vector if version >= 5 else 0,
    )
    report = sign(fields.unsigned_bytes(), sim.vcek_key)
    claims = verify_report(
        report, sim.chip.vcek_der, sim.chip.ask_der, [sim.anchor], datetime.now().astimezone()
    ).claims
    assert (claims.platform, claims.report_version, claims.vmpl) == ("sim", version, vmpl)
    assert (claims.report_data, claims.measurement, claims.host_data) == (
        fields.report_data,
        fields.measurement,
        fields.host_data,
    )
    assert claims.debug is bool(fields.policy >> 19 & 1)
    assert dict(claims.tcb) == simchip.TCB
