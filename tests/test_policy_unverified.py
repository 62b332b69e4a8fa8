"""Claims read from a file (`stockade policy check --claims`) are
UnverifiedClaims: a type of their own, evaluated with a "not verified"
label, never appraised, never reported as an EAR; and the CLI reads them
without importing stockade.testing (which can forge VerifiedClaims)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stockade.evidence.claims import VerifiedClaims
from stockade.policy import appraise, default_policy, ear_document, evaluate, loads_policy
from stockade.policy.claims import NOT_VERIFIED_NOTE, UnverifiedClaims
from stockade.testing.claims import make_claims

MILAN_ONLY = loads_policy('version = 1\nplatforms = ["snp"]\n\n[snp]\nproducts = ["Milan"]\n', "milan")


def _unverified(claims: VerifiedClaims) -> UnverifiedClaims:
    return UnverifiedClaims.from_json(json.loads(json.dumps(claims.to_json())), "test")


def test_the_fields_are_those_of_verified_claims() -> None:
    verified = [(f.name, f.type) for f in dataclasses.fields(VerifiedClaims) if f.name != "_token"]
    assert [(f.name, f.type) for f in dataclasses.fields(UnverifiedClaims)] == verified


@pytest.mark.parametrize("platform", ["snp", "tdx", "sgx", "sim", "sim-tdx"])
def test_same_document_and_same_verdicts_as_verified_claims(platform: str) -> None:
    claims = make_claims(platform=platform)
    unverified = _unverified(claims)
    assert unverified.to_json() == claims.to_json()
    assert unverified.hardware_protected is claims.hardware_protected is (platform not in ("sim", "sim-tdx"))
    assert not isinstance(unverified, VerifiedClaims)
    for policy in (MILAN_ONLY, default_policy()):
        a, b = evaluate(claims, policy), evaluate(unverified, policy)
        assert a.rows == b.rows and a.accepted == b.accepted
        assert a.claims_verified and NOT_VERIFIED_NOTE not in a.notes
        assert not b.claims_verified and b.notes[0] == NOT_VERIFIED_NOTE
        assert NOT_VERIFIED_NOTE in b.to_json()["notes"]


def test_unverified_claims_are_never_appraised() -> None:
    unverified = _unverified(make_claims())
    assert evaluate(unverified, MILAN_ONLY).accepted
    with pytest.raises(TypeError, match="VerifiedClaims"):
        appraise(unverified, MILAN_ONLY)  # type: ignore[arg-type]
    appraise(make_claims(), MILAN_ONLY)  # verified: accepted


def test_no_ear_for_unverified_claims() -> None:
    with pytest.raises(ValueError, match="not verified"):
        ear_document(evaluate(_unverified(make_claims()), MILAN_ONLY))
    assert ear_document(evaluate(make_claims(), MILAN_ONLY))["submods"]


def test_malformed_document_names_the_key() -> None:
    doc = make_claims().to_json()
    doc["vmpl"] = "zero"
    from stockade.errors import UsageError

    with pytest.raises(UsageError, match="vmpl"):
        UnverifiedClaims.from_json(doc, "--claims f.json")


def test_policy_check_claims_is_labelled_and_never_imports_testing(tmp_path: Path) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps(make_claims(product="Genoa").to_json()))
    policy = tmp_path / "milan.toml"
    policy.write_text('version = 1\nplatforms = ["snp"]\n\n[snp]\nproducts = ["Milan"]\n')
    probe = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from stockade.cli import main\n"
        "r = CliRunner().invoke(main, ['policy', 'check', '--json', '--policy', sys.argv[1], '--claims', sys.argv[2]])\n"
        "print(json.dumps({'code': r.exit_code, 'out': r.stdout,"
        " 'testing': sorted(m for m in sys.modules if m.startswith('stockade.testing'))}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(policy), str(claims)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result = json.loads(proc.stdout)
    assert result["testing"] == []
    assert result["code"] == 112
    doc = json.loads(result["out"])
    assert doc["claims_verified"] is False and "NOT verified" in doc["claims_source"]
    assert doc["decision"]["notes"][0] == NOT_VERIFIED_NOTE
