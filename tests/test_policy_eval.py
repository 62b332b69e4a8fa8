"""Evaluation semantics, built-in policies, EAR output and test helpers;
hypothesis: evaluation is deterministic, and adding a rule to an all-of
never turns a refusal into an acceptance."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.errors import UsageError
from stockade.evidence.claims import VerifiedClaims
from stockade.policy import (
    Policy,
    RefusedByPolicy,
    Verdict,
    appraise,
    default_policy,
    development_policy,
    ear_cbor,
    ear_document,
    evaluate,
    loads_policy,
)
from stockade.policy._locate import key_lines
from stockade.policy.rules import (
    AdvisoriesDenied,
    AllOf,
    AnyOf,
    BytesIn,
    Debug,
    FmspcIn,
    GuestPolicyFlag,
    MaxAge,
    MinFirmware,
    MinTcb,
    Not,
    OnPlatform,
    PlatformIn,
    ProductIn,
    RegisterIn,
    Rule,
    SignerIn,
    TcbStatusIn,
    VmplIn,
)
from stockade.testing.claims import VERIFIED_AT, claims_from_json, make_claims

AT = VERIFIED_AT
HEAD = 'version = 1\nplatforms = ["snp", "tdx", "sgx"]\n'
MEASUREMENT = bytes.fromhex("5a" * 48)


def verdicts(text: str, claims: VerifiedClaims) -> dict[str, Verdict]:
    decision = evaluate(claims, loads_policy(text, "t.toml"), AT)
    return {r.rule: r.verdict for r in decision.rows} | {
        "<policy>": Verdict.PASS if decision.accepted else Verdict.FAIL
    }


# --- combinators and n/a ---------------------------------------------------------------


def test_platform_tables_do_not_apply_to_other_platforms() -> None:
    v = verdicts(HEAD + "tdx.tcb_status = ['UpToDate']\n", make_claims())
    assert v["tdx"] is Verdict.NA and v["<policy>"] is Verdict.PASS
    assert "tdx.tcb_status" not in v  # rows of a table that does not apply are not listed


def test_an_alternative_that_does_not_apply_never_satisfies_any_of() -> None:
    text = HEAD + "any_of = [{ snp = { products = ['Milan'] } }, { tdx = { tcb_status = ['UpToDate'] } }]\n"
    assert verdicts(text, make_claims(product="Milan"))["<policy>"] is Verdict.PASS
    v = verdicts(text, make_claims(product="Genoa"))
    assert (v["any_of[0]"], v["any_of[1]"], v["any_of"], v["<policy>"]) == (
        Verdict.FAIL,
        Verdict.NA,
        Verdict.FAIL,
        Verdict.FAIL,
    )
    v = verdicts(text, make_claims(platform="sgx"))
    assert v["any_of"] is Verdict.NA and v["<policy>"] is Verdict.PASS


def test_not_inverts_pass_and_fail_and_keeps_na() -> None:
    text = HEAD + "not = { snp = { products = ['Turin'] } }\n"
    assert verdicts(text, make_claims(product="Turin"))["not"] is Verdict.FAIL
    assert verdicts(text, make_claims(product="Milan"))["not"] is Verdict.PASS
    assert verdicts(text, make_claims(platform="tdx"))["not"] is Verdict.NA
    decision = evaluate(make_claims(product="Turin"), loads_policy(text, "t.toml"), AT)
    (row,) = decision.failures()
    assert row.rule == "not" and "not.snp.products: expected one of Turin; actual Turin" in row.sentence()


def test_all_of_and_nesting() -> None:
    text = (
        HEAD
        + "[snp]\nall_of = [{ products = ['Milan'] }, { any_of = [{ vmpl = [0] }, { signers = ['VLEK'] }] }]\n"
    )
    assert evaluate(make_claims(), loads_policy(text, "t"), AT).accepted
    decision = evaluate(make_claims(vmpl=2), loads_policy(text, "t"), AT)
    assert [r.rule for r in decision.failures()] == ["snp.all_of[1].any_of"]
    assert "snp.all_of[1].any_of[0].vmpl: expected one of 0; actual 2" in decision.explain()
    assert "snp.all_of[1].any_of[1].signers: expected one of VLEK; actual VCEK" in decision.explain()


def test_rows_follow_the_file_and_nest_by_depth() -> None:
    text = HEAD + "[snp]\nproducts = ['Milan']\nany_of = [{ vmpl = [0] }, { vmpl = [1] }]\n"
    rows = evaluate(make_claims(), loads_policy(text, "t"), AT).rows
    assert [(r.rule, r.depth) for r in rows] == [
        ("platforms", 0),
        ("allow_debug", 0),
        ("allow_migration_agent", 0),
        ("snp", 0),
        ("snp.products", 1),
        ("snp.any_of", 1),
        ("snp.any_of[0]", 2),
        ("snp.any_of[0].vmpl", 3),
        ("snp.any_of[1]", 2),
        ("snp.any_of[1].vmpl", 3),
    ]


# --- every refusal path names rule, expected and actual ----------------------------------


REFUSALS: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("platforms = ['snp']", {"platform": "sgx"}, "platforms", "one of snp (sim only when named)", "sgx"),
    (
        "platforms = ['snp']",
        {"platform": "sim"},
        "platforms",
        "(sim only when named)",
        "sim (NO hardware protection)",
    ),
    ("", {"debug": True}, "allow_debug", "debugging disabled", "guest policy bit 19 (DEBUG) set"),
    ("snp.products = ['Genoa']", {}, "snp.products", "one of Genoa", "Milan"),
    ("snp.deny_products = ['milan']", {}, "snp.deny_products", "none of Milan", "Milan"),
    ("snp.signers = ['VLEK']", {}, "snp.signers", "one of VLEK", "VCEK"),
    ("snp.min_tcb.snp = 25", {}, "snp.min_tcb.snp", ">= 25", "24"),
    ("snp.min_firmware = '1.56'", {}, "snp.min_firmware", ">= 1.56", "1.55.29"),
    (
        "snp.min_firmware = '1.0'",
        {"firmware": "v1"},
        "snp.min_firmware",
        ">= 1.0",
        "v1 (not a version number)",
    ),
    (
        f"snp.measurements = ['{'00' * 48}']",
        {},
        "snp.measurements",
        "one of " + "00" * 48,
        make_claims().measurement.hex(),
    ),
    (
        f"measurements = ['{'00' * 48}']",
        {},
        "measurements",
        "one of " + "00" * 48,
        make_claims().measurement.hex(),
    ),
    (f"snp.host_data = ['{'01' * 32}']", {}, "snp.host_data", "one of " + "01" * 32, "00" * 32),
    (
        f"snp.chip_ids = ['{'01' * 64}']",
        {},
        "snp.chip_ids",
        "one of " + "01" * 64,
        make_claims().chip_id.hex(),
    ),
    ("snp.vmpl = [0]", {"vmpl": 3}, "snp.vmpl", "one of 0", "3"),
    ("snp.vmpl = [0]", {"vmpl": None}, "snp.vmpl", "one of 0", "absent (the claims carry no VMPL)"),
    (
        "snp.guest_policy.migrate_ma = false",
        {"policy_flags": {"migrate_ma": True}},
        "snp.guest_policy.migrate_ma",
        "guest policy bit 18 (MIGRATE_MA) clear",
        "guest policy bit 18 (MIGRATE_MA) set",
    ),
    (
        "snp.guest_policy.single_socket = true",
        {},
        "snp.guest_policy.single_socket",
        "guest policy bit 20 (SINGLE_SOCKET) set",
        "guest policy bit 20 (SINGLE_SOCKET) clear",
    ),
    (
        "snp.guest_policy.cxl_allowed = false",
        {"policy_flags": {"cxl_allowed": True}},
        "snp.guest_policy.cxl_allowed",
        "bit 21 (CXL_ALLOW) clear",
        "bit 21 (CXL_ALLOW) set",
    ),
    (
        "snp.guest_policy.page_swap_disabled = true",
        {"policy_flags": ()},
        "snp.guest_policy.page_swap_disabled",
        "bit 25 (PAGE_SWAP_DISABLE) set",
        "absent (the claims carry no guest policy flag page_swap_disabled)",
    ),
    (
        "max_age = '1h'",
        {"verified_at": AT - timedelta(hours=2)},
        "max_age",
        "verified at most 1h before evaluation",
        "2h before",
    ),
    (
        "max_age = 60",
        {"verified_at": AT + timedelta(seconds=5)},
        "max_age",
        "at most 1m",
        "after the evaluation time",
    ),
    (
        "tdx.fmspc = ['00806f050000']",
        {"platform": "tdx", "fmspc": "B0C06F000000"},
        "tdx.fmspc",
        "one of 00806f050000",
        "b0c06f000000",
    ),
    (
        "tdx.fmspc = ['00806f050000']",
        {"platform": "tdx", "fmspc": None},
        "tdx.fmspc",
        "one of 00806f050000",
        "absent (the claims carry no FMSPC)",
    ),
    (
        "tdx.deny_fmspc = ['00806f050000']",
        {"platform": "tdx"},
        "tdx.deny_fmspc",
        "none of 00806f050000",
        "00806f050000",
    ),
    (
        "tdx.products = ['Sapphire Rapids']",
        {"platform": "tdx"},
        "tdx.products",
        "one of Sapphire Rapids",
        "Intel TDX",
    ),
    (
        "tdx.td_attributes = { sept_ve_disable = true, migratable = false }",
        {"platform": "tdx", "policy_flags": {"migratable": True}},
        "tdx.td_attributes.migratable",
        "TD attribute bit 29 (MIGRATABLE) clear",
        "TD attribute bit 29 (MIGRATABLE) set",
    ),
    (
        "sgx.attributes = { provisionkey = false }",
        {"platform": "sgx", "policy_flags": {"provisionkey": True}},
        "sgx.attributes.provisionkey",
        "enclave attribute bit 4 (PROVISIONKEY) clear",
        "enclave attribute bit 4 (PROVISIONKEY) set",
    ),
    (
        f"tdx.mrconfigid = ['{'11' * 48}']",
        {"platform": "tdx"},
        "tdx.mrconfigid",
        "one of " + "11" * 48,
        "00" * 48,
    ),
    (
        "tdx.tcb_status = ['UpToDate']",
        {"platform": "tdx", "tcb_status": "Revoked"},
        "tdx.tcb_status",
        "one of UpToDate",
        "Revoked",
    ),
    (
        "tdx.deny_advisories = ['INTEL-SA-00615']",
        {"platform": "tdx", "advisory_ids": ("INTEL-SA-00615",)},
        "tdx.deny_advisories",
        "none of INTEL-SA-00615",
        "INTEL-SA-00615",
    ),
    (
        f"tdx.mrtd = ['{'00' * 48}']",
        {"platform": "tdx"},
        "tdx.mrtd",
        "one of " + "00" * 48,
        dict(make_claims(platform="tdx").registers)["mrtd"].hex(),
    ),
    (
        f"tdx.measurements = ['{'00' * 48}']",
        {"platform": "tdx"},
        "tdx.measurements",
        "one of " + "00" * 48,
        make_claims(platform="tdx").measurement.hex(),
    ),
    (
        f"sgx.mrsigner = ['{'00' * 32}']",
        {"platform": "sgx"},
        "sgx.mrsigner",
        "one of " + "00" * 32,
        dict(make_claims(platform="sgx").registers)["mrsigner"].hex(),
    ),
    (
        "tdx.tcb_status = ['UpToDate']",
        {"platform": "tdx", "debug": True},
        "allow_debug",
        "debugging disabled",
        "TD attribute bit 0 (DEBUG) set",
    ),
    (
        "sgx.fmspc = ['00a067110000']",
        {"platform": "sgx", "debug": True},
        "allow_debug",
        "debugging disabled",
        "enclave attribute bit 1 (DEBUG) set",
    ),
    (
        "any_of = [{ snp = { vmpl = [1] } }, { snp = { vmpl = [2] } }]",
        {},
        "any_of",
        "at least one of 2 alternatives",
        "no alternative passed",
    ),
    ("not = { snp = { vmpl = [0] } }", {}, "not", "not all of the 1 rule below pass", "they all passed"),
]


@pytest.mark.parametrize(
    ("rule_text", "claims", "rule", "expected", "actual"), REFUSALS, ids=[r[2] for r in REFUSALS]
)
def test_every_refusal_names_rule_expected_and_actual(
    rule_text: str, claims: dict[str, Any], rule: str, expected: str, actual: str
) -> None:
    text = (
        HEAD + rule_text + "\n"
        if not rule_text.startswith("platforms")
        else "version = 1\n" + rule_text + "\n"
    )
    policy = loads_policy(text, "t.toml")
    decision = evaluate(make_claims(**claims), policy, AT)
    assert not decision.accepted
    row = next(r for r in decision.failures() if r.rule == rule)
    assert expected in row.expected and actual in row.actual, row
    with pytest.raises(RefusedByPolicy) as info:
        appraise(make_claims(**claims), policy, AT)
    assert f"{rule}: expected " in str(info.value) and row.actual in str(info.value)


# --- sim and the built-in policies ------------------------------------------------------


def test_sim_is_refused_by_the_default_policy_with_a_hint() -> None:
    with pytest.raises(RefusedByPolicy) as info:
        appraise(make_claims(platform="sim"))
    decision = info.value.decision
    assert [r.rule for r in decision.failures()] == ["platforms"]
    assert "sim (NO hardware protection)" in str(info.value)
    assert "built-in default policy" in decision.hint and "--allow-sim" in decision.hint
    assert "--allow-sim" in str(info.value)


@pytest.mark.parametrize("platforms", [["snp"], ["snp", "tdx", "sgx"], ["tdx"], ["sgx"]])
def test_sim_is_refused_by_any_policy_that_does_not_name_it(platforms: list[str]) -> None:
    policy = loads_policy(f"version = 1\nplatforms = {json.dumps(platforms)}\nallow_debug = true\n", "p.toml")
    decision = evaluate(make_claims(platform="sim"), policy, AT)
    assert not decision.accepted and decision.failures()[0].rule == "platforms"
    assert 'add "sim" to `platforms`' in decision.hint and "built-in" not in decision.hint
    assert evaluate(make_claims(platform="sim"), dataclasses.replace(policy, platforms=()), AT).hint


def test_sim_is_accepted_only_where_named_and_is_labelled() -> None:
    decision = evaluate(
        make_claims(platform="sim"), loads_policy('version = 1\nplatforms = ["sim"]\n', "d"), AT
    )
    assert decision.accepted and not decision.hardware_protected
    assert any("NO hardware protection" in n for n in decision.notes)


def test_default_policy() -> None:
    policy = default_policy()
    assert policy.builtin and policy.platforms == ("snp", "tdx", "sgx") and not policy.allow_debug
    assert not policy.pins_measurement
    assert appraise(make_claims()).accepted
    for claims in (
        make_claims(platform="sim"),
        make_claims(debug=True),
        make_claims(platform="tdx", debug=True),
    ):
        with pytest.raises(RefusedByPolicy):
            appraise(claims, policy, AT)
    pinned = default_policy(MEASUREMENT)
    assert pinned.pins_measurement
    assert not evaluate(make_claims(), pinned, AT).accepted
    assert evaluate(make_claims(measurement=MEASUREMENT), pinned, AT).accepted


def test_development_policy_is_allow_sim_with_a_pinned_measurement() -> None:
    policy = development_policy(MEASUREMENT)
    assert policy.builtin and "sim" in policy.platforms and policy.pins_measurement
    assert appraise(make_claims(platform="sim", measurement=MEASUREMENT), policy, AT).accepted
    assert appraise(make_claims(measurement=MEASUREMENT), policy, AT).accepted  # snp still accepted
    with pytest.raises(RefusedByPolicy, match="measurements: expected one of 5a5a"):
        appraise(make_claims(platform="sim"), policy, AT)
    with pytest.raises(RefusedByPolicy, match="allow_debug"):
        appraise(make_claims(platform="sim", measurement=MEASUREMENT, debug=True), policy, AT)


def test_note_when_no_measurement_is_pinned() -> None:
    decision = evaluate(make_claims(), loads_policy(HEAD, "p"), AT)
    assert any("pins no Keep measurement" in n for n in decision.notes)
    text = HEAD + f"tdx.rtmr2 = ['{'00' * 48}']\n"
    assert not any("pins no" in n for n in evaluate(make_claims(), loads_policy(text, "p"), AT).notes)


def test_policy_of_builds_policies_in_python() -> None:
    policy = Policy.of("py", ("snp",), OnPlatform("snp", "snp", (ProductIn("snp.products", ("Milan",)),)))
    assert evaluate(make_claims(), policy, AT).accepted
    assert not evaluate(make_claims(product="Turin"), policy, AT).accepted
    assert policy.digest and policy.policy_id.startswith("stockade-policy:py:sha256:")
    with pytest.raises(ValueError, match="platforms"):
        Policy.of("bad", ("nil",))
    with pytest.raises(ValueError, match="cannot check"):
        BytesIn("x", "report_data", ())


# --- EAR --------------------------------------------------------------------------------


def test_ear_for_an_acceptance() -> None:
    policy = loads_policy(
        HEAD + f"measurements = ['{MEASUREMENT.hex()}']\nsnp.min_tcb.microcode = 200\n", "p.toml"
    )
    decision = evaluate(make_claims(measurement=MEASUREMENT), policy, AT)
    doc = ear_document(decision, nonce=b"\x01" * 32)
    assert doc["eat_profile"] == "tag:github.com,2023:veraison/ear"
    assert doc["iat"] == int(AT.timestamp())
    assert doc["ear.verifier-id"]["build"].startswith("stockade ")
    assert doc["eat_nonce"] == "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"
    keep = doc["submods"]["keep"]
    assert keep["ear.status"] == "affirming"
    assert keep["ear.trustworthiness-vector"] == {
        "configuration": 2,
        "executables": 2,
        "hardware": 2,
        "runtime-opaque": 2,
    }
    assert keep["ear.appraisal-policy-id"] == policy.policy_id
    assert keep["ear.stockade.decision"]["outcome"] == "accepted"
    json.dumps(doc)  # JSON-serialisable


def test_ear_for_refusals() -> None:
    policy = loads_policy(HEAD + "snp.products = ['Milan']\nsnp.min_tcb.microcode = 220\n", "p.toml")
    keep = ear_document(evaluate(make_claims(product="Genoa"), policy, AT))["submods"]["keep"]
    assert keep["ear.status"] == "contraindicated"
    assert keep["ear.trustworthiness-vector"]["hardware"] == 96  # a refused product outranks an old TCB (32)
    old = ear_document(evaluate(make_claims(), policy, AT))["submods"]["keep"]
    assert old["ear.trustworthiness-vector"]["hardware"] == 32
    debug = ear_document(evaluate(make_claims(debug=True), policy, AT))["submods"]["keep"]
    assert debug["ear.trustworthiness-vector"]["configuration"] == 96
    assert debug["ear.trustworthiness-vector"]["runtime-opaque"] == 96
    unknown = loads_policy(HEAD + f"measurements = ['{'00' * 48}']\n", "p")
    assert (
        ear_document(evaluate(make_claims(), unknown, AT))["submods"]["keep"]["ear.trustworthiness-vector"][
            "executables"
        ]
        == 33
    )


def test_ear_for_sim_makes_no_hardware_claim() -> None:
    decision = evaluate(make_claims(platform="sim"), development_policy(make_claims().measurement), AT)
    keep = ear_document(decision)["submods"]["keep"]
    assert keep["ear.status"] == "warning"
    assert "hardware" not in keep["ear.trustworthiness-vector"]
    assert "runtime-opaque" not in keep["ear.trustworthiness-vector"]
    assert keep["ear.stockade.hardware-protection"] is False


def test_ear_rows_under_any_of_do_not_enter_the_vector() -> None:
    text = HEAD + "snp.any_of = [{ products = ['Genoa'] }, { vmpl = [0] }]\n"
    keep = ear_document(evaluate(make_claims(), loads_policy(text, "p"), AT))["submods"]["keep"]
    assert keep["ear.status"] == "affirming"
    assert keep["ear.trustworthiness-vector"]["hardware"] == 2


def test_ear_cbor_uses_the_drafts_integer_keys() -> None:
    decision = evaluate(
        make_claims(product="Turin"), loads_policy(HEAD + "snp.products = ['Milan']\n", "p"), AT
    )
    data = ear_cbor(decision, nonce=b"\x02" * 16)
    assert data == ear_cbor(decision, nonce=b"\x02" * 16)  # deterministic
    doc = cbor2.loads(data)
    assert doc[265] == "tag:github.com,2023:veraison/ear"
    assert doc[6] == int(AT.timestamp())
    assert doc[1004] == {0: "stockade", 1: doc[1004][1]}
    assert doc[10] == b"\x02" * 16
    keep = doc[266]["keep"]
    assert keep[1000] == 96
    assert keep[1001][4] == 96  # hardware: contraindicated
    assert keep[1003] == decision.policy_id
    assert keep[-70100]["outcome"] == "refused"
    assert keep[-70101] is True


# --- test helpers -----------------------------------------------------------------------


def test_make_claims_defaults_and_overrides() -> None:
    c = make_claims()
    assert (c.platform, c.product, c.signer, c.vmpl, c.debug, c.firmware) == (
        "snp",
        "Milan",
        "VCEK",
        0,
        False,
        "1.55.29",
    )
    assert dict(c.tcb) == {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 219}
    assert dict(c.policy_flags)["smt_allowed"] is True
    assert make_claims(debug=True).policy_flags == make_claims(policy_flags={"debug": True}).policy_flags
    assert make_claims(policy_flags={"debug": True}).debug
    assert make_claims(tcb={"microcode": 1}).tcb == (("microcode", 1),)
    tdx = make_claims(platform="tdx")
    assert (
        tdx.tcb_status == "UpToDate" and dict(tdx.registers)["mrtd"] == tdx.measurement and tdx.vmpl is None
    )
    sgx = make_claims(platform="sgx")
    assert len(sgx.measurement) == 32 and set(dict(sgx.registers)) == {"mrenclave", "mrsigner"}
    with pytest.raises(TypeError, match="unknown claim"):
        make_claims(colour="red")


def test_claims_json_round_trip() -> None:
    for claims in (
        make_claims(),
        make_claims(platform="tdx", advisory_ids=("INTEL-SA-00960",)),
        make_claims(vmpl=None),
    ):
        assert claims_from_json(json.loads(json.dumps(claims.to_json()))) == claims
    run_doc = {"exit_code": 0, "attestation": {**make_claims().to_json(), "checks": ["x"]}}
    assert claims_from_json(run_doc) == make_claims()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "unknown claim key(s): colour"),
        ({"platform": None}, "platform: wrong type"),
        ({"measurement": "zz"}, "measurement: not hex"),
        ({"verified_at": "yesterday"}, "verified_at: not an ISO 8601 time"),
        ({"verified_at": "2025-08-01T00:00:00"}, "needs a time zone"),
        ({"vmpl": "0"}, "vmpl: expected an integer or null"),
        ({"tcb": {"snp": "1"}}, "tcb: expected integer values"),
        ({"policy_flags": {"debug": 1}}, "policy_flags: expected true/false"),
        ({"registers": []}, "registers: expected an object"),
        ({"advisory_ids": "INTEL-SA-1"}, "advisory_ids: expected a list"),
        ({"fmspc": 5}, "fmspc: expected a string or null"),
        ({"report_version": True}, "report_version: wrong type"),
    ],
)
def test_claims_json_errors(change: dict[str, Any], message: str) -> None:
    doc = {**make_claims().to_json(), **change}
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        claims_from_json(doc)


def test_claims_json_missing_keys() -> None:
    doc = make_claims().to_json()
    del doc["product"]
    with pytest.raises(UsageError, match="missing claim key"):
        claims_from_json(doc)
    with pytest.raises(UsageError, match="expected a JSON object"):
        claims_from_json([1])


# --- hypothesis -------------------------------------------------------------------------

PRODUCTS = ("Milan", "Genoa", "Turin")
PLATFORMS = ("snp", "sim", "tdx", "sgx")
STATUSES = ("UpToDate", "SWHardeningNeeded", "OutOfDate", "Revoked")
ADVISORIES = ("INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00615")
BLOBS = (b"\x00" * 48, b"\x01" * 48, b"\x02" * 48)
FMSPCS = ("00806f050000", "90c06f000000")


def subset(values: tuple[Any, ...]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(st.sampled_from(values), min_size=1, max_size=len(values), unique=True).map(tuple)


@st.composite
def claims_strategy(draw: st.DrawFn) -> VerifiedClaims:
    platform = draw(st.sampled_from(PLATFORMS))
    fields: dict[str, Any] = {"platform": platform, "debug": draw(st.booleans())}
    if platform in ("snp", "sim"):
        fields |= {
            "product": draw(st.sampled_from(PRODUCTS)),
            "tcb": {c: draw(st.integers(0, 255)) for c in ("bootloader", "tee", "snp", "microcode")},
            "firmware": f"1.{draw(st.integers(40, 60))}.{draw(st.integers(0, 9))}",
            "vmpl": draw(st.integers(0, 3)),
            "signer": draw(st.sampled_from(("VCEK", "VLEK"))),
            "measurement": draw(st.sampled_from(BLOBS)),
            "policy_flags": {"smt_allowed": draw(st.booleans()), "migrate_ma": draw(st.booleans())},
        }
    else:
        fields |= {
            "tcb_status": draw(st.sampled_from(STATUSES)),
            "advisory_ids": draw(st.lists(st.sampled_from(ADVISORIES), unique=True).map(tuple)),
            "fmspc": draw(st.sampled_from(FMSPCS)),
        }
    fields["verified_at"] = AT - timedelta(seconds=draw(st.integers(0, 7200)))
    return make_claims(**fields)


def leaf_strategy() -> st.SearchStrategy[Rule]:
    return st.one_of(
        subset(PLATFORMS).map(lambda p: PlatformIn("platforms", p)),
        st.booleans().map(lambda a: Debug("allow_debug", allowed=a)),
        st.tuples(subset(PRODUCTS), st.booleans()).map(lambda t: ProductIn("products", t[0], t[1])),
        subset(("VCEK", "VLEK")).map(lambda s: SignerIn("signers", s)),
        st.tuples(st.sampled_from(("bootloader", "tee", "snp", "microcode", "fmc")), st.integers(0, 255)).map(
            lambda t: MinTcb(f"min_tcb.{t[0]}", t[0], t[1])
        ),
        st.integers(40, 60).map(lambda m: MinFirmware("min_firmware", (1, m))),
        subset(BLOBS).map(lambda b: BytesIn("measurements", "measurement", b)),
        subset((0, 1, 2, 3)).map(lambda v: VmplIn("vmpl", v)),
        st.tuples(st.sampled_from(("smt_allowed", "migrate_ma", "debug")), st.booleans()).map(
            lambda t: GuestPolicyFlag(f"guest_policy.{t[0]}", t[0], t[1])
        ),
        st.tuples(subset(FMSPCS), st.booleans()).map(lambda t: FmspcIn("fmspc", t[0], t[1])),
        subset(STATUSES).map(lambda s: TcbStatusIn("tcb_status", s)),
        subset(ADVISORIES).map(lambda a: AdvisoriesDenied("deny_advisories", a)),
        subset(BLOBS).map(lambda b: RegisterIn("mrtd", "mrtd", b)),
        st.integers(1, 7200).map(lambda s: MaxAge("max_age", s)),
    )


def tree_strategy(with_not: bool = True) -> st.SearchStrategy[Rule]:
    def extend(children: st.SearchStrategy[Rule]) -> st.SearchStrategy[Rule]:
        many = st.lists(children, min_size=1, max_size=3).map(tuple)
        options = [
            many.map(lambda rs: AllOf("all_of", rs)),
            st.lists(many, min_size=1, max_size=3).map(
                lambda alts: AnyOf("any_of", tuple(AllOf("alt", rs) for rs in alts))
            ),
            st.tuples(st.sampled_from(PLATFORMS), many).map(lambda t: OnPlatform(t[0], t[0], t[1])),
        ]
        if with_not:
            options.append(many.map(lambda rs: Not("not", rs)))
        return st.one_of(*options)

    return st.recursive(leaf_strategy(), extend, max_leaves=8)


def policy_of(rules: tuple[Rule, ...]) -> Policy:
    return Policy(name="h", rules=rules, platforms=PLATFORMS, digest="0")


def rank(policy: Policy, claims: VerifiedClaims) -> int:
    decision = evaluate(claims, policy, AT)
    verdict = min(
        (r.verdict for r in decision.rows if r.depth == 0), key=lambda v: v.rank, default=Verdict.PASS
    )
    assert decision.accepted == (verdict is not Verdict.FAIL)
    return verdict.rank


def positive_all_ofs(rule: Rule, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Paths to all-of tables (AllOf, OnPlatform) not under a Not."""
    out: list[tuple[int, ...]] = []
    if isinstance(rule, AllOf | OnPlatform):
        out.append(path)
        for i, child in enumerate(rule.rules):
            out.extend(positive_all_ofs(child, (*path, i)))
    elif isinstance(rule, AnyOf):
        for i, child in enumerate(rule.alternatives):
            out.extend(positive_all_ofs(child, (*path, i)))
    return out


def insert(rule: Rule, path: tuple[int, ...], extra: Rule) -> Rule:
    if isinstance(rule, AnyOf):
        alternatives = list(rule.alternatives)
        alternatives[path[0]] = insert(alternatives[path[0]], path[1:], extra)
        return dataclasses.replace(rule, alternatives=tuple(alternatives))
    assert isinstance(rule, AllOf | OnPlatform)
    if not path:
        return dataclasses.replace(rule, rules=(*rule.rules, extra))
    children = list(rule.rules)
    children[path[0]] = insert(children[path[0]], path[1:], extra)
    return dataclasses.replace(rule, rules=tuple(children))


HYPOTHESIS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(st.lists(tree_strategy(), min_size=1, max_size=4), claims_strategy())
def test_evaluation_is_deterministic(rules: list[Rule], claims: VerifiedClaims) -> None:
    policy = policy_of(tuple(rules))
    first = evaluate(claims, policy, AT)
    assert evaluate(claims, policy, AT) == first
    assert evaluate(claims, policy_of(tuple(rules)), AT) == first
    assert ear_cbor(first) == ear_cbor(evaluate(claims, policy, AT))
    if not first.accepted:
        assert first.failures()
        for row in first.failures():
            assert row.rule and row.expected and row.actual


@HYPOTHESIS
@given(st.lists(tree_strategy(), min_size=1, max_size=4), tree_strategy(), claims_strategy())
def test_adding_a_rule_to_the_top_level_never_turns_a_refusal_into_an_acceptance(
    rules: list[Rule], extra: Rule, claims: VerifiedClaims
) -> None:
    before = rank(policy_of(tuple(rules)), claims)
    for position in range(len(rules) + 1):
        after = rank(policy_of((*rules[:position], extra, *rules[position:])), claims)
        assert after <= before


@HYPOTHESIS
@given(st.lists(tree_strategy(), min_size=1, max_size=3), tree_strategy(), claims_strategy(), st.data())
def test_adding_a_rule_to_a_nested_all_of_never_turns_a_refusal_into_an_acceptance(
    rules: list[Rule], extra: Rule, claims: VerifiedClaims, data: st.DataObject
) -> None:
    root = AllOf("root", tuple(rules))
    paths = positive_all_ofs(root)
    path = data.draw(st.sampled_from(paths))
    before = rank(policy_of(root.rules), claims)
    changed = insert(root, path, extra)
    assert isinstance(changed, AllOf)
    assert rank(policy_of(changed.rules), claims) <= before


def test_a_rule_added_to_an_alternative_that_does_not_apply_cannot_accept() -> None:
    """The case that makes n/a rank below pass: any_of[fail, n/a] must stay
    a refusal when a passing rule joins the n/a alternative."""
    claims = make_claims(product="Genoa")
    failing = AllOf("alt0", (ProductIn("products", ("Milan",)),))
    not_applicable = AllOf("alt1", (OnPlatform("tdx", "tdx", (TcbStatusIn("tcb_status", ("UpToDate",)),)),))
    before = policy_of((AnyOf("any_of", (failing, not_applicable)),))
    after = policy_of(
        (AnyOf("any_of", (failing, insert(not_applicable, (), PlatformIn("platforms", ("snp",))))),)
    )
    assert not evaluate(claims, before, AT).accepted
    assert not evaluate(claims, after, AT).accepted


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab=[]{}\".'#\n ,x1", max_size=60))
def test_the_line_locator_always_terminates(text: str) -> None:
    assert isinstance(key_lines(text), dict)


def test_max_age_evaluation_time_defaults_to_now() -> None:
    policy = loads_policy(HEAD + "max_age = '1d'\n", "p")
    assert not evaluate(make_claims(), policy).accepted  # verified in 2025
    assert evaluate(make_claims(verified_at=datetime.now(UTC)), policy).accepted
