"""SEV-SNP guest policy bit 18 (MIGRATE_MA): every policy refuses a guest
whose launch policy allows a migration agent, unless it says
``allow_migration_agent = true`` (issue 13 item 7; docs/policy.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stockade.evidence.snp.abi import Product
from stockade.evidence.snp.verify import verify_report
from stockade.policy import (
    Policy,
    RefusedByPolicy,
    Verdict,
    appraise,
    default_policy,
    development_policy,
    evaluate,
    loads_policy,
)
from stockade.policy.builtin import default_policy_toml
from stockade.policy.model import PolicyError
from stockade.testing.amd import FakeAmdPki
from stockade.testing.claims import make_claims

AT = datetime(2026, 1, 1, tzinfo=UTC)
MIGRATE_MA = 1 << 18


def _row(decision: object, rule: str) -> object:
    return next(r for r in decision.rows if r.rule == rule)  # type: ignore[attr-defined]


def test_a_signed_report_with_migrate_ma_is_refused_by_the_default_policy() -> None:
    """A report whose guest policy has bit 18 set, signed by a (fake) AMD
    chain and verified: the built-in default policy refuses it, naming the rule."""
    pki = FakeAmdPki(Product.MILAN)
    vcek = pki.vcek()
    verify = lambda policy: verify_report(  # noqa: E731
        pki.report(vcek, policy=policy), vcek.der, pki.intermediate_der(), [pki.anchor()], pki.now
    )
    clear = verify(0x30000)
    assert dict(clear.claims.policy_flags)["migrate_ma"] is False
    assert appraise(clear.claims, default_policy(), pki.now).accepted
    with_ma = verify(0x30000 | MIGRATE_MA)
    assert dict(with_ma.claims.policy_flags)["migrate_ma"] is True
    with pytest.raises(RefusedByPolicy) as info:
        appraise(with_ma.claims, default_policy(), pki.now)
    failures = info.value.decision.failures()
    assert [r.rule for r in failures] == ["allow_migration_agent"]
    assert "guest policy bit 18 (MIGRATE_MA) set" in failures[0].actual
    assert failures[0].expected == "no migration agent (allow_migration_agent = false)"
    assert "allow_migration_agent" in str(info.value)
    allowing = loads_policy('version = 1\nplatforms = ["snp"]\nallow_migration_agent = true\n', "ma.toml")
    decision = appraise(with_ma.claims, allowing, pki.now)
    row = _row(decision, "allow_migration_agent")
    assert row.verdict is Verdict.PASS and "MIGRATE_MA) set" in row.actual  # type: ignore[attr-defined]


def test_every_policy_refuses_it_unless_it_says_so() -> None:
    claims = make_claims(policy_flags={"migrate_ma": True})
    for text in (
        'version = 1\nplatforms = ["snp"]\n',
        'version = 1\nplatforms = ["snp"]\nallow_debug = true\n',
    ):
        decision = evaluate(claims, loads_policy(text, "p.toml"), AT)
        assert not decision.accepted
        assert [r.rule for r in decision.failures()] == ["allow_migration_agent"]
    text = 'version = 1\nplatforms = ["snp"]\nallow_migration_agent = false\n'
    assert not evaluate(claims, loads_policy(text, "p.toml"), AT).accepted
    text = 'version = 1\nplatforms = ["snp"]\nallow_migration_agent = true\n'
    policy = loads_policy(text, "p.toml")
    assert policy.allow_migration_agent and evaluate(claims, policy, AT).accepted
    assert not evaluate(claims, Policy.of("p", ("snp",)), AT).accepted
    assert evaluate(claims, Policy.of("p", ("snp",), allow_migration_agent=True), AT).accepted


def test_sim_evidence_too_and_the_development_policy() -> None:
    measurement = bytes(range(48))
    claims = make_claims(platform="sim", measurement=measurement, policy_flags={"migrate_ma": True})
    with pytest.raises(RefusedByPolicy, match="allow_migration_agent"):
        appraise(claims, development_policy(measurement), AT)


def test_other_platforms_are_not_applicable() -> None:
    for platform in ("tdx", "sgx"):
        decision = evaluate(make_claims(platform=platform), default_policy(), AT)
        assert decision.accepted
        row = _row(decision, "allow_migration_agent")
        assert row.verdict is Verdict.NA  # type: ignore[attr-defined]
        assert "no SEV-SNP guest policy" in row.actual  # type: ignore[attr-defined]


def test_snp_claims_without_the_flag_fail() -> None:
    flags = tuple((k, v) for k, v in make_claims().policy_flags if k != "migrate_ma")
    decision = evaluate(make_claims(policy_flags=flags), default_policy(), AT)
    assert [r.rule for r in decision.failures()] == ["allow_migration_agent"]


def test_allow_migration_agent_must_be_a_boolean_at_the_top() -> None:
    with pytest.raises(PolicyError, match="allow_migration_agent"):
        loads_policy('version = 1\nplatforms = ["snp"]\nallow_migration_agent = "yes"\n', "p.toml")
    with pytest.raises(PolicyError, match="allow_migration_agent"):
        loads_policy('version = 1\nplatforms = ["snp"]\n[snp]\nallow_migration_agent = true\n', "p.toml")


def test_the_default_policy_text_says_what_it_does() -> None:
    text = default_policy_toml()
    assert "MIGRATE_MA" in text and "allow_migration_agent is not set" in text
