"""Collateral dates in the claims and the ``max_collateral_age`` policy rule.

Intel: the claims' ``collateral_issued`` is the oldest of TCB info and QE
identity issueDate and the CRLs' thisUpdate; ``collateral_next_update`` the
earliest nextUpdate. SNP: the thisUpdate/nextUpdate of the CRLs applied,
None without a CRL. The rule refuses claims without dates."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from intel_support import with_collateral
from stockade.errors import UsageError
from stockade.evidence.intel.verify import verify_quote
from stockade.evidence.snp.abi import Product
from stockade.evidence.snp.verify import verify_report
from stockade.policy import PolicyError, Verdict, evaluate, loads_policy
from stockade.policy.claims import UnverifiedClaims
from stockade.testing.amd import FakeAmdPki
from stockade.testing.claims import make_claims

# A TDX vector with CRLs whose TCB level is supported: every collateral date
# comes from real Intel collateral.
TDX = next(s for s in with_collateral("tdx") if s.has_crls and not s.expect_not_supported)


def _json_dates(body: bytes, key: str) -> tuple[datetime, datetime]:
    inner = json.loads(body)[key]
    return (
        datetime.fromisoformat(inner["issueDate"].replace("Z", "+00:00")),
        datetime.fromisoformat(inner["nextUpdate"].replace("Z", "+00:00")),
    )


def _crl_dates(der: bytes) -> tuple[datetime, datetime]:
    crl = x509.load_der_x509_crl(der)
    assert crl.next_update_utc is not None
    return crl.last_update_utc, crl.next_update_utc


def test_intel_claims_carry_the_oldest_issue_and_earliest_next_update() -> None:
    c = TDX.collateral
    assert c.root_ca_crl is not None and c.pck_crl is not None
    dated = [
        _json_dates(c.tcb_info, "tcbInfo"),
        _json_dates(c.qe_identity, "enclaveIdentity"),
        _crl_dates(c.root_ca_crl),
        _crl_dates(c.pck_crl),
    ]
    claims = verify_quote(TDX.quote, c, TDX.verify_at, allow_trailing=TDX.trailing_nonzero).claims
    assert claims.collateral_issued == min(d[0] for d in dated)
    assert claims.collateral_next_update == min(d[1] for d in dated)
    assert claims.collateral_issued is not None and claims.collateral_issued <= TDX.verify_at
    doc = claims.to_json()
    assert doc["collateral_issued"] == claims.collateral_issued.isoformat()


def test_intel_claims_without_crls_take_the_json_collateral_dates() -> None:
    from dataclasses import replace

    c = replace(TDX.collateral, root_ca_crl=None, pck_crl=None)
    claims = verify_quote(
        TDX.quote, c, TDX.verify_at, allow_trailing=TDX.trailing_nonzero, check_revocation=False
    ).claims
    dated = [_json_dates(c.tcb_info, "tcbInfo"), _json_dates(c.qe_identity, "enclaveIdentity")]
    assert claims.collateral_issued == min(d[0] for d in dated)
    assert claims.collateral_next_update == min(d[1] for d in dated)


@pytest.fixture(scope="module")
def milan() -> FakeAmdPki:
    return FakeAmdPki(Product.MILAN)


def test_snp_claims_carry_the_crl_dates(milan: FakeAmdPki) -> None:
    chip = milan.vcek()
    report = milan.report(chip)
    issued = milan.now - timedelta(days=3)
    nxt = milan.now + timedelta(days=4)
    crl = milan.crl(this_update=issued, next_update=nxt)
    claims = verify_report(report, chip.der, milan.ask_der, [milan.anchor()], milan.now, crls=[crl]).claims
    assert claims.collateral_issued == issued.replace(microsecond=0)
    assert claims.collateral_next_update == nxt.replace(microsecond=0)


def test_snp_claims_without_a_crl_have_no_collateral_dates(milan: FakeAmdPki) -> None:
    chip = milan.vcek()
    claims = verify_report(milan.report(chip), chip.der, milan.ask_der, [milan.anchor()], milan.now).claims
    assert claims.collateral_issued is None and claims.collateral_next_update is None
    assert claims.to_json()["collateral_issued"] is None


# --------------------------------------------------------------------------- the rule

AT = datetime(2026, 1, 31, tzinfo=UTC)
POLICY = 'version = 1\nplatforms = ["snp", "tdx"]\nmax_collateral_age = "30d"\n'


def _row(decision_rows: tuple, rule: str = "max_collateral_age"):  # type: ignore[no-untyped-def]
    return next(r for r in decision_rows if r.rule == rule)


def test_fresh_collateral_passes() -> None:
    claims = make_claims(collateral_issued=AT - timedelta(days=29), collateral_next_update=AT)
    decision = evaluate(claims, loads_policy(POLICY), AT)
    assert decision.accepted, decision.explain()
    row = _row(decision.rows)
    assert row.verdict is Verdict.PASS
    assert row.expected == "collateral issued at most 30d before evaluation"
    assert "29d before" in row.actual


def test_old_collateral_is_refused_naming_expected_and_actual() -> None:
    issued = AT - timedelta(days=31)
    decision = evaluate(make_claims(collateral_issued=issued), loads_policy(POLICY), AT)
    assert not decision.accepted
    (row,) = decision.failures()
    assert row.rule == "max_collateral_age"
    assert row.actual == f"oldest collateral issued {issued.isoformat()}, 31d before {AT.isoformat()}"
    assert "max_collateral_age: expected collateral issued at most 30d" in decision.explain()


def test_claims_without_dates_are_refused() -> None:
    decision = evaluate(make_claims(), loads_policy(POLICY), AT)
    (row,) = decision.failures()
    assert row.rule == "max_collateral_age" and row.actual.startswith("absent")


def test_collateral_issued_after_evaluation_is_refused() -> None:
    decision = evaluate(make_claims(collateral_issued=AT + timedelta(hours=1)), loads_policy(POLICY), AT)
    (row,) = decision.failures()
    assert "after the evaluation time" in row.actual


def test_real_tdx_claims_against_the_rule() -> None:
    claims = verify_quote(
        TDX.quote, TDX.collateral, TDX.verify_at, allow_trailing=TDX.trailing_nonzero
    ).claims
    assert claims.collateral_issued is not None
    tdx_policy = POLICY.replace('["snp", "tdx"]', '["tdx"]').replace("30d", "{age}s") + "allow_debug = true\n"
    age = int((TDX.verify_at - claims.collateral_issued).total_seconds())
    ok = evaluate(claims, loads_policy(tdx_policy.format(age=age)), TDX.verify_at)
    assert _row(ok.rows).verdict is Verdict.PASS
    too_old = evaluate(claims, loads_policy(tdx_policy.format(age=age - 1)), TDX.verify_at)
    assert _row(too_old.rows).verdict is Verdict.FAIL


def test_rule_works_inside_platform_tables_and_combinators() -> None:
    text = 'version = 1\nplatforms = ["snp", "tdx"]\n[tdx]\nmax_collateral_age = "1d"\n'
    with pytest.raises(PolicyError, match="max_collateral_age"):
        loads_policy(text)  # a generic key, not a platform table key
    text = 'version = 1\nplatforms = ["snp"]\n[[any_of]]\nmax_collateral_age = "1d"\n[[any_of]]\nmax_age = "1d"\n'
    decision = evaluate(make_claims(verified_at=AT), loads_policy(text), AT)
    assert decision.accepted  # the max_age alternative holds


@pytest.mark.parametrize(
    ("value", "problem"),
    [("0d", "must be positive"), ('"soon"', "not a duration"), ("true", "duration string")],
)
def test_bad_durations_name_the_key(value: str, problem: str) -> None:
    value = value if value.startswith(('"', "t")) else f'"{value}"'
    with pytest.raises(PolicyError, match=f"max_collateral_age: .*{problem}"):
        loads_policy(f'version = 1\nplatforms = ["snp"]\nmax_collateral_age = {value}\n', "p.toml")


# --------------------------------------------------------------------------- documents and the CLI


def test_unverified_claims_round_trip_the_dates() -> None:
    claims = make_claims(
        collateral_issued=AT - timedelta(days=2), collateral_next_update=AT + timedelta(days=5)
    )
    doc = json.loads(json.dumps(claims.to_json()))
    unverified = UnverifiedClaims.from_json(doc, "doc")
    assert unverified.collateral_issued == claims.collateral_issued
    assert unverified.to_json() == claims.to_json()
    del doc["collateral_issued"], doc["collateral_next_update"]  # older documents lack them
    assert UnverifiedClaims.from_json(doc, "doc").collateral_issued is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (5, "expected an ISO 8601 time or null"),
        ("yesterday", "not an ISO 8601 time"),
        ("2026-01-01T00:00", "needs a time zone"),
    ],
)
def test_bad_dates_in_a_claims_document(value: object, problem: str) -> None:
    doc = {**make_claims().to_json(), "collateral_issued": value}
    with pytest.raises(UsageError, match=f"collateral_issued: {problem}"):
        UnverifiedClaims.from_json(doc, "doc")


def test_evidence_verify_shows_the_collateral_dates() -> None:
    args = [str(TDX.path / "quote.bin"), "--at", TDX.verify_at.isoformat()]
    if TDX.trailing_nonzero:
        args.append("--allow-trailing-bytes")
    base = [sys.executable, "-m", "stockade", "evidence", "verify", *args]
    as_json = subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=60, check=False)
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    claims = verify_quote(
        TDX.quote, TDX.collateral, TDX.verify_at, allow_trailing=TDX.trailing_nonzero
    ).claims
    assert claims.collateral_issued is not None and claims.collateral_next_update is not None
    assert doc["collateral_issued"] == claims.collateral_issued.isoformat()
    assert doc["collateral_next_update"] == claims.collateral_next_update.isoformat()
    table = subprocess.run(
        base, capture_output=True, text=True, timeout=60, check=False, env={"COLUMNS": "200", "PATH": ""}
    )
    assert table.returncode == 0, table.stderr
    assert "collateral_issued" in table.stdout and "collateral_next_update" in table.stdout
