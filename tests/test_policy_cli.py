"""``stockade policy check | reference | default`` through click, in process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cbor2
import pytest
from click.testing import CliRunner, Result

from snp_support import SNP, VERIFY_AT
from stockade.cli import main
from stockade.measure.launch import keep_measurement
from stockade.policy import loads_policy
from stockade.policy.builtin import default_policy_toml, development_policy_toml
from stockade.testing.claims import make_claims

AT = ["--at", VERIFY_AT.isoformat()]
MILAN_ONLY = 'version = 1\nname = "milan only"\nplatforms = ["snp"]\n\n[snp]\nproducts = ["Milan"]\n'


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(
        main, ["policy", *(str(a) for a in args)], catch_exceptions=False, env={"COLUMNS": "200"}
    )


@pytest.fixture
def milan_only(tmp_path: Path) -> Path:
    path = tmp_path / "milan.toml"
    path.write_text(MILAN_ONLY)
    return path


def report(name: str) -> Path:
    return SNP / name / "report.bin"


def test_check_accepts_and_explains(milan_only: Path) -> None:
    result = run("check", "--policy", milan_only, *AT, report("milan-v3-oak"))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "policy 'milan only'" in out and "ACCEPTED" in out
    for text in ("platforms", "allow_debug", "products", "one of Milan", "pass"):
        assert text in out
    assert "verified SEV-SNP report" in out and "VCEK -> AMD root" in out
    assert "accepted by policy 'milan only'" in out
    assert "pins no Keep measurement" in out


@pytest.mark.parametrize(
    ("name", "sentence"),
    [
        ("genoa-v3-azure-trustee", "snp.products: expected one of Milan; actual Genoa"),
        ("turin-v5-oak", "snp.products: expected one of Milan; actual Turin"),
        (
            "milan-v2-go-sev-guest",
            "allow_debug: expected debugging disabled (allow_debug = false); actual guest policy bit 19 (DEBUG) set",
        ),
    ],
)
def test_check_refuses_with_exit_112_and_names_the_rule(milan_only: Path, name: str, sentence: str) -> None:
    result = run("check", "--policy", milan_only, *AT, report(name))
    assert result.exit_code == 112, result.output
    assert "REFUSED" in result.stdout
    assert sentence in result.stdout.replace("\n", " ").replace("  ", " ")


def test_check_json(milan_only: Path) -> None:
    result = run("check", "--policy", milan_only, *AT, "--json", report("turin-v5-oak"))
    assert result.exit_code == 112
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 112 and doc["claims_verified"] is True
    assert doc["decision"]["outcome"] == "refused"
    assert doc["claims"]["product"] == "Turin"
    rows = {r["rule"]: r for r in doc["decision"]["rows"]}
    assert rows["snp.products"] == {
        "rule": "snp.products",
        "expected": "one of Milan",
        "actual": "Turin",
        "verdict": "fail",
        "depth": 1,
    }


def test_check_without_policy_uses_the_default(tmp_path: Path) -> None:
    result = run("check", *AT, report("milan-v3-oak"))
    assert result.exit_code == 0 and "built-in default" in result.stdout
    result = run("check", *AT, report("milan-v2-go-sev-guest"))
    assert result.exit_code == 112


def test_check_claims_file_is_labelled_not_verified(tmp_path: Path, milan_only: Path) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps(make_claims(product="Genoa").to_json()))
    result = run("check", "--policy", milan_only, "--claims", claims, *AT)
    assert result.exit_code == 112
    assert "NOT verified" in result.stdout and "claims from file" in result.stdout
    doc = json.loads(run("check", "--policy", milan_only, "--claims", claims, "--json", *AT).stdout)
    assert doc["claims_verified"] is False and "NOT verified" in doc["claims_source"]
    claims.write_text(json.dumps({"attestation": make_claims().to_json()}))
    assert run("check", "--policy", milan_only, "--claims", claims, *AT).exit_code == 0


def test_sim_claims_are_refused_by_the_default_policy_with_a_hint(tmp_path: Path) -> None:
    claims = tmp_path / "sim.json"
    claims.write_text(json.dumps(make_claims(platform="sim").to_json()))
    result = run("check", "--claims", claims, *AT)
    assert result.exit_code == 112
    assert "NO HARDWARE PROTECTION" in result.stdout
    assert "hint:" in result.stdout and "--allow-sim" in result.stdout


@pytest.mark.slow
def test_real_sim_evidence_is_verified_and_refused_unless_named(state_dir: Path, tmp_path: Path) -> None:
    from stockade.evidence.sim import chip as simchip
    from stockade.evidence.sim.channel import ReportRequest
    from stockade.evidence.sim.psp import SimPsp

    measurement = bytes.fromhex("5a" * 48)
    response = SimPsp(simchip.load_chip(state_dir), measurement).report(ReportRequest(report_data=bytes(64)))
    certs = dict(response.certs)
    (tmp_path / "report.bin").write_bytes(response.report)
    (tmp_path / "vcek.der").write_bytes(certs["vcek"])
    (tmp_path / "ask.der").write_bytes(certs["ask"])
    ark = simchip.sim_dir(state_dir) / "chip" / "ark.der"
    # without the sim root it does not even verify
    assert run("check", tmp_path / "report.bin").exit_code == 110
    result = run("check", "--sim-root", ark, tmp_path / "report.bin")
    assert result.exit_code == 112, result.output
    assert "sim (NO hardware protection)" in result.stdout and "VCEK -> sim root" in result.stdout
    dev = tmp_path / "dev.toml"
    dev.write_text(development_policy_toml(measurement))
    result = run("check", "--policy", dev, "--sim-root", ark, tmp_path / "report.bin")
    assert result.exit_code == 0, result.output
    assert "NO HARDWARE PROTECTION" in result.stdout


def test_usage_errors_exit_2(milan_only: Path, tmp_path: Path) -> None:
    claims = tmp_path / "c.json"
    claims.write_text(json.dumps(make_claims().to_json()))
    cases = [
        (["check"], "give either EVIDENCE"),
        (["check", "--claims", claims, report("milan-v3-oak")], "not both"),
        (["check", "--claims", claims, "--certs", tmp_path], "apply to EVIDENCE"),
        (["check", "--claims", claims, "--ear-json", "-"], "not verified"),
        (["check", "--at", "yesterday", report("milan-v3-oak")], "not an ISO 8601 time"),
        (["check", "--ear-json", "-", "--ear-cbor", "-", report("milan-v3-oak")], "only one of"),
        (["check", "--certs", tmp_path, report("milan-v3-oak")], "no endorsement certificate"),
        (["check", tmp_path / "missing.bin"], "cannot read"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\nplatforms = ["snp"]\n\n[snp]\nmin_tcb = { ucode = 1 }\n')
    result = run("check", "--policy", bad, report("milan-v3-oak"))
    assert result.exit_code == 2
    assert f"{bad}:5: snp.min_tcb.ucode: unknown key" in result.stderr
    result = run("check", "--policy", bad, "--json", report("milan-v3-oak"))
    assert json.loads(result.stdout)["error"]["type"] == "usage"


def test_verification_failures_exit_110_and_111(tmp_path: Path) -> None:
    # the AWS VLEK certificate expired on 2025-12-10
    result = run("check", "--at", "2026-06-01T00:00:00Z", report("milan-v3-vlek-aws-trustee"))
    assert result.exit_code == 110 and "expired" in result.stderr
    # a report with another chip's VCEK
    result = run("check", *AT, "--certs", SNP / "milan-v3-azure-trustee", report("milan-v3-oak"))
    assert result.exit_code == 110
    truncated = tmp_path / "report.bin"
    truncated.write_bytes(report("milan-v3-oak").read_bytes()[:100])
    shutil.copy(SNP / "milan-v3-oak" / "vcek.der", tmp_path / "vcek.der")
    result = run("check", *AT, truncated)
    assert result.exit_code == 111
    result = run("check", *AT, "--json", truncated)
    assert json.loads(result.stdout)["error"]["type"] == "malformed-evidence"


def test_certificates_default_to_the_bundled_intermediate(tmp_path: Path) -> None:
    shutil.copy(report("genoa-v3-azure-trustee"), tmp_path / "report.bin")
    shutil.copy(SNP / "genoa-v3-azure-trustee" / "vcek.der", tmp_path / "vcek.der")
    assert run("check", *AT, tmp_path / "report.bin").exit_code == 0


def test_ear_outputs(milan_only: Path, tmp_path: Path) -> None:
    ear_json, ear_cbor = tmp_path / "ear.json", tmp_path / "ear.cbor"
    result = run(
        "check",
        "--policy",
        milan_only,
        *AT,
        "--ear-json",
        ear_json,
        "--ear-cbor",
        ear_cbor,
        report("genoa-v3-azure-trustee"),
    )
    assert result.exit_code == 112
    doc = json.loads(ear_json.read_text())
    assert doc["eat_profile"] == "tag:github.com,2023:veraison/ear"
    assert doc["submods"]["keep"]["ear.status"] == "contraindicated"
    assert cbor2.loads(ear_cbor.read_bytes())[266]["keep"][1000] == 96
    result = run("check", "--policy", milan_only, *AT, "--ear-json", "-", report("milan-v3-oak"))
    assert result.exit_code == 0
    assert json.loads(result.stdout)["submods"]["keep"]["ear.status"] == "affirming"


def test_reference_prints_this_installations_keep_measurement() -> None:
    measurement = keep_measurement().hex()
    result = run("reference")
    assert result.exit_code == 0
    assert f'measurements = ["{measurement}"]' in result.stdout
    assert "NO hardware protection" in result.stdout
    policy = loads_policy(result.stdout, "reference")
    assert policy.platforms == ("sim",) and policy.pins_measurement
    doc = json.loads(run("reference", "--json").stdout)
    assert doc["measurement"] == measurement and doc["platform"] == "sim"
    assert loads_policy(doc["policy_snippet"], "snippet").pins_measurement


def test_default_prints_the_built_in_policies() -> None:
    measurement = keep_measurement()
    result = run("default")
    assert result.exit_code == 0 and result.stdout == default_policy_toml(measurement)
    assert loads_policy(result.stdout, "d").platforms == ("snp", "tdx", "sgx")
    result = run("default", "--allow-sim")
    assert result.stdout == development_policy_toml(measurement)
    assert "sim" in loads_policy(result.stdout, "d").platforms
