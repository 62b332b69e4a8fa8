"""Policies against the real vectors' claims: each refusal names the rule,
the expected and the actual value."""

from __future__ import annotations

import pytest

from policy_support import SNP_VECTORS, sgx_claims, snp_claims, tdx_claims
from snp_support import VERIFY_AT
from stockade.errors import PolicyRejected
from stockade.policy import (
    Decision,
    RefusedByPolicy,
    Row,
    Verdict,
    appraise,
    default_policy,
    evaluate,
    loads_policy,
)


def decide(policy_text: str, claims_name: str) -> Decision:
    kind, _, name = claims_name.partition("/")
    claims = {"snp": snp_claims, "tdx": tdx_claims, "sgx": sgx_claims}[kind](name)
    return evaluate(claims, loads_policy(policy_text, "test.toml"), VERIFY_AT)


def only_failure(decision: Decision) -> Row:
    assert not decision.accepted
    failures = decision.failures()
    assert len(failures) == 1, decision.explain()
    return failures[0]


MILAN_ONLY = 'version = 1\nplatforms = ["snp"]\n[snp]\nproducts = ["Milan"]\n'


@pytest.mark.parametrize("name", SNP_VECTORS)
def test_milan_only_policy(name: str) -> None:
    decision = decide(MILAN_ONLY, f"snp/{name}")
    if name.startswith("milan-v2-go-sev-guest"):
        assert [r.rule for r in decision.failures()] == ["allow_debug"]
    elif name.startswith("milan"):
        assert decision.accepted, decision.explain()
    else:
        row = only_failure(decision)
        product = "Genoa" if name.startswith("genoa") else "Turin"
        assert (row.rule, row.expected, row.actual) == ("snp.products", "one of Milan", product)
        assert f"snp.products: expected one of Milan; actual {product}" in decision.explain()


def test_debug_forbidding_policy_refuses_the_milan_v2_debug_sample_naming_bit_19() -> None:
    for policy in (
        'version = 1\nplatforms = ["snp"]\n',  # debug is refused by default
        'version = 1\nplatforms = ["snp"]\nallow_debug = false\n',
        default_policy(),
    ):
        claims = snp_claims("milan-v2-go-sev-guest")
        decision = (
            evaluate(claims, loads_policy(policy, "t.toml"), VERIFY_AT)
            if isinstance(policy, str)
            else evaluate(claims, policy, VERIFY_AT)
        )
        row = only_failure(decision)
        assert row.rule == "allow_debug"
        assert "bit 19" in row.actual and "DEBUG" in row.actual and "set" in row.actual
        assert row.expected.startswith("debugging disabled")
    # and as an explicit guest policy requirement
    row = only_failure(
        decide(
            'version = 1\nplatforms = ["snp"]\nallow_debug = true\nsnp.guest_policy.debug = false\n',
            "snp/milan-v2-go-sev-guest",
        )
    )
    assert (row.rule, row.expected, row.actual) == (
        "snp.guest_policy.debug",
        "guest policy bit 19 (DEBUG) clear",
        "guest policy bit 19 (DEBUG) set",
    )


def test_allow_debug_accepts_it_and_still_shows_the_state() -> None:
    decision = decide('version = 1\nplatforms = ["snp"]\nallow_debug = true\n', "snp/milan-v2-go-sev-guest")
    assert decision.accepted
    row = next(r for r in decision.rows if r.rule == "allow_debug")
    assert row.verdict is Verdict.PASS and "bit 19 (DEBUG) set" in row.actual


MIN_TCB = """
version = 1
platforms = ["snp"]
[snp]
min_tcb = { bootloader = 4, tee = 0, snp = 24, microcode = 219 }
"""


def test_min_tcb_policy_refuses_the_older_milan_sample() -> None:
    decision = decide(MIN_TCB, "snp/milan-v2-idblock-trustee")
    assert not decision.accepted
    failed = {r.rule: (r.expected, r.actual) for r in decision.failures()}
    assert failed == {
        "snp.min_tcb.bootloader": (">= 4", "3"),
        "snp.min_tcb.snp": (">= 24", "8"),
        "snp.min_tcb.microcode": (">= 219", "115"),
    }
    assert decide(MIN_TCB, "snp/milan-v3-oak").accepted
    assert decide(MIN_TCB, "snp/milan-v3-azure-trustee").accepted
    aws = only_failure(decide(MIN_TCB, "snp/milan-v3-vlek-aws-trustee"))
    assert (aws.rule, aws.expected, aws.actual) == ("snp.min_tcb.microcode", ">= 219", "217")


def test_fmc_minimum_is_not_applicable_before_turin() -> None:
    text = 'version = 1\nplatforms = ["snp"]\nsnp.min_tcb.fmc = 1\n'
    milan = decide(text, "snp/milan-v3-oak")
    assert milan.accepted
    row = next(r for r in milan.rows if r.rule == "snp.min_tcb.fmc")
    assert row.verdict is Verdict.NA and "no fmc component in the Milan TCB" in row.actual
    turin = only_failure(decide(text, "snp/turin-v5-oak"))
    assert (turin.rule, turin.expected, turin.actual) == ("snp.min_tcb.fmc", ">= 1", "0")


def test_firmware_signer_vmpl_host_data_chip_and_measurement_rules() -> None:
    base = 'version = 1\nplatforms = ["snp"]\n[snp]\n'
    row = only_failure(decide(base + 'min_firmware = "1.55"\n', "snp/milan-v2-idblock-trustee"))
    assert (row.rule, row.expected, row.actual) == ("snp.min_firmware", ">= 1.55", "1.52.4")
    assert decide(base + 'min_firmware = "1.55.29"\n', "snp/milan-v3-oak").accepted
    row = only_failure(decide(base + 'min_firmware = "1.55.30"\n', "snp/milan-v3-oak"))
    assert row.actual == "1.55.29"

    row = only_failure(decide(base + 'signers = ["VCEK"]\n', "snp/milan-v3-vlek-aws-trustee"))
    assert (row.rule, row.expected, row.actual) == ("snp.signers", "one of VCEK", "VLEK")
    row = only_failure(decide(base + "vmpl = [0]\n", "snp/milan-v3-vlek-aws-trustee"))
    assert (row.rule, row.expected, row.actual) == ("snp.vmpl", "one of 0", "1")

    host = "11" * 32
    row = only_failure(decide(base + f'host_data = ["{host}"]\n', "snp/milan-v3-oak"))
    assert (row.rule, row.expected, row.actual) == ("snp.host_data", f"one of {host}", "00" * 32)

    oak = snp_claims("milan-v3-oak")
    row = only_failure(decide(base + f'chip_ids = ["{"ab" * 64}"]\n', "snp/milan-v3-oak"))
    assert (row.rule, row.actual) == ("snp.chip_ids", oak.chip_id.hex())
    assert decide(base + f'chip_ids = ["{oak.chip_id.hex()}"]\n', "snp/milan-v3-oak").accepted

    pinned = f'version = 1\nplatforms = ["snp"]\nmeasurements = ["{oak.measurement.hex()}"]\n'
    assert decide(pinned, "snp/milan-v3-oak").accepted
    row = only_failure(decide(pinned, "snp/genoa-v3-azure-trustee"))
    assert row.rule == "measurements"
    assert row.expected == f"one of {oak.measurement.hex()}"
    assert row.actual == snp_claims("genoa-v3-azure-trustee").measurement.hex()


def test_guest_policy_smt_requirement_refuses_every_sample() -> None:
    for name in SNP_VECTORS:
        decision = decide(
            'version = 1\nplatforms = ["snp"]\nallow_debug = true\nsnp.guest_policy.smt_allowed = false\n',
            f"snp/{name}",
        )
        row = only_failure(decision)
        assert (row.rule, row.expected, row.actual) == (
            "snp.guest_policy.smt_allowed",
            "guest policy bit 16 (SMT) clear",
            "guest policy bit 16 (SMT) set",
        )


# --- Intel (claims built from the vectors' expected.json) -------------------------


def test_intel_status_policy_refuses_the_out_of_date_tdx_samples() -> None:
    text = 'version = 1\nplatforms = ["tdx"]\ntdx.tcb_status = ["UpToDate"]\n'
    for name in ("v4-azure-trustee", "v4-00a06d08-trustee"):
        row = only_failure(decide(text, f"tdx/{name}"))
        assert (row.rule, row.expected, row.actual) == ("tdx.tcb_status", "one of UpToDate", "OutOfDate")
    for name in ("v4-gcp-cos-go-tdx-guest", "v4-b0c06f-dcap-qvl", "v5-90c06f-go-tdx-guest"):
        assert decide(text, f"tdx/{name}").accepted


def test_denied_advisory_refuses_and_names_it() -> None:
    text = 'version = 1\nplatforms = ["tdx"]\ntdx.deny_advisories = ["intel-sa-00982"]\n'
    row = only_failure(decide(text, "tdx/v4-azure-trustee"))
    assert row.rule == "tdx.deny_advisories"
    assert row.expected == "none of INTEL-SA-00982"
    assert row.actual.startswith("INTEL-SA-00982 (of INTEL-SA-00960, INTEL-SA-00982, INTEL-SA-00986)")
    row = next(r for r in decide(text, "tdx/v4-gcp-cos-go-tdx-guest").rows if r.rule == "tdx.deny_advisories")
    assert (row.verdict, row.actual) == (Verdict.PASS, "no advisories")


def test_tdx_debug_sample_is_refused_by_default() -> None:
    decision = evaluate(tdx_claims("v4-50806f-trustee"), default_policy(), VERIFY_AT)
    row = only_failure(decision)
    assert row.rule == "allow_debug" and "TD attribute bit 0 (DEBUG) set" in row.actual


def test_tdx_fmspc_and_registers() -> None:
    gcp = tdx_claims("v4-gcp-cos-go-tdx-guest")
    mrtd = dict(gcp.registers)["mrtd"].hex()
    text = f'version = 1\nplatforms = ["tdx"]\n[tdx]\nfmspc = ["00806F050000"]\nmrtd = ["{mrtd}"]\n'
    assert decide(text, "tdx/v4-gcp-cos-go-tdx-guest").accepted
    failed = {r.rule: r.actual for r in decide(text, "tdx/v5-90c06f-go-tdx-guest").failures()}
    assert failed == {
        "tdx.fmspc": "90c06f000000",
        "tdx.mrtd": tdx_claims("v5-90c06f-go-tdx-guest").measurement.hex(),
    }
    row = only_failure(
        decide(
            'version = 1\nplatforms = ["tdx"]\ntdx.deny_fmspc = ["00806f050000"]\n', "tdx/v4-azure-trustee"
        )
    )
    assert (row.rule, row.expected, row.actual) == ("tdx.deny_fmspc", "none of 00806f050000", "00806f050000")
    row = only_failure(
        decide(
            f'version = 1\nplatforms = ["tdx"]\ntdx.rtmr1 = ["{"00" * 48}"]\n', "tdx/v4-gcp-cos-go-tdx-guest"
        )
    )
    assert (row.rule, row.actual) == ("tdx.rtmr1", "absent (the claims carry no rtmr1)")


def test_sgx_rules() -> None:
    qvl = sgx_claims("v3-00a067-dcap-qvl")
    text = 'version = 1\nplatforms = ["sgx"]\nsgx.tcb_status = ["UpToDate", "SWHardeningNeeded"]\n'
    row = only_failure(decide(text, "sgx/v3-00a067-dcap-qvl"))
    assert (row.expected, row.actual) == (
        "one of UpToDate, SWHardeningNeeded",
        "ConfigurationAndSWHardeningNeeded",
    )
    failed = {r.rule: r.actual for r in decide(text, "sgx/v3-00606a-occlum-trustee").failures()}
    assert failed["sgx.tcb_status"] == "absent (the claims carry no Intel TCB status)"
    assert "enclave attribute bit 1 (DEBUG) set" in failed["allow_debug"]
    mrsigner = dict(qvl.registers)["mrsigner"].hex()
    text = f'version = 1\nplatforms = ["sgx"]\nsgx.mrsigner = ["{mrsigner}"]\nsgx.deny_advisories = ["INTEL-SA-00615"]\n'
    row = only_failure(decide(text, "sgx/v3-00a067-dcap-qvl"))
    assert row.rule == "sgx.deny_advisories" and row.actual.startswith("INTEL-SA-00615")


def test_platform_rules_refuse_other_platforms() -> None:
    row = only_failure(decide('version = 1\nplatforms = ["snp"]\n', "tdx/v4-gcp-cos-go-tdx-guest"))
    assert (row.rule, row.expected, row.actual) == ("platforms", "one of snp (sim only when named)", "tdx")


def test_appraise_raises_policy_rejected_carrying_the_decision() -> None:
    with pytest.raises(RefusedByPolicy) as info:
        appraise(snp_claims("turin-v5-oak"), loads_policy(MILAN_ONLY, "milan.toml"), VERIFY_AT)
    err = info.value
    assert isinstance(err, PolicyRejected) and err.exit_code == 112
    assert err.decision.outcome == "refused"
    assert "snp.products: expected one of Milan; actual Turin" in str(err)
    decision = appraise(snp_claims("milan-v3-oak"), loads_policy(MILAN_ONLY, "milan.toml"), VERIFY_AT)
    assert decision.accepted
