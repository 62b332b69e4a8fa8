"""Decisions: what a policy concluded about one set of claims, and why.

A :class:`Decision` has one :class:`Row` per rule (rule, expected, actual,
verdict), in the order of the policy file, nested rules indented by
``depth``. A refusal raises :class:`RefusedByPolicy`, a
:class:`stockade.errors.PolicyRejected` (exit code 112) that carries the
decision, so a CLI can print the whole table and a script can read
``err.decision.to_json()``.

Verdicts are three-valued: ``pass``, ``fail`` and ``n/a`` (a rule that does
not apply to this evidence, e.g. ``[tdx]`` rules on SNP evidence). See
``stockade.policy.rules`` for how the combinators treat ``n/a``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stockade.errors import PolicyRejected, UsageError


class Verdict(enum.Enum):
    """Outcome of one rule. Ordered FAIL < NA < PASS (see rules.AllOf)."""

    FAIL = "fail"
    NA = "n/a"
    PASS = "pass"  # noqa: S105 (a verdict, not a password)

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Verdict.FAIL: 0, Verdict.NA: 1, Verdict.PASS: 2}


@dataclass(frozen=True)
class Row:
    """One line of a decision table.

    ``rule`` is the key path in the policy file (``snp.min_tcb.microcode``,
    ``any_of[1].snp.products``), ``expected`` what the rule asks for,
    ``actual`` what the claims say. ``category`` is the AR4SI trustworthiness
    claim the rule speaks to ("hardware", "configuration", "executables",
    "instance-identity") or "" (combinators, freshness); ``failure_value``
    is the AR4SI value a failure of this rule maps to (see policy.ear).
    ``positive`` is False for rows under ``not`` or ``any_of``: their
    failure alone does not decide the outcome. ``container`` marks the row of
    a table (an all-of or a ``[platform]`` table) whose own verdict is just
    that of the rows below it. ``because`` (any-of and not rows) repeats the
    rows below that decided it, so that the row explains itself on its own.
    """

    rule: str
    expected: str
    actual: str
    verdict: Verdict
    depth: int = 0
    category: str = ""
    failure_value: int = 0
    positive: bool = True
    container: bool = False
    because: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "expected": self.expected,
            "actual": self.actual,
            "verdict": self.verdict.value,
            "depth": self.depth,
            **({"because": self.because} if self.because else {}),
        }

    def sentence(self) -> str:
        text = f"{self.rule}: expected {self.expected}; actual {self.actual}"
        return f"{text} ({self.because})" if self.because else text


@dataclass(frozen=True)
class Decision:
    """The outcome of evaluating one policy against one set of claims."""

    policy_name: str
    policy_id: str
    policy_source: str
    platform: str
    hardware_protected: bool
    accepted: bool
    rows: tuple[Row, ...]
    evaluated_at: datetime
    debug: bool = False
    hint: str = ""
    notes: tuple[str, ...] = ()
    #: False when the claims came from a document, not from a verifier
    #: (stockade.policy.claims.UnverifiedClaims): the decision vouches for
    #: nothing, and its notes say so.
    claims_verified: bool = True

    @property
    def outcome(self) -> str:
        return "accepted" if self.accepted else "refused"

    def failures(self) -> tuple[Row, ...]:
        """The rules whose failure refuses on its own: failed checks, any-ofs
        and nots that are not under an any-of or a not (the rows of the
        tables that merely contain them are left out)."""
        return tuple(r for r in self.rows if r.verdict is Verdict.FAIL and r.positive and not r.container)

    def explain(self) -> str:
        """One line: the outcome and, for a refusal, every failed rule with
        its expected and actual value (and the hint, if any)."""
        head = f"policy {self.policy_name!r} {self.outcome} {self.platform} evidence"
        if self.accepted:
            return head
        text = f"{head}: " + "; ".join(r.sentence() for r in self.failures())
        return f"{text}. {self.hint}" if self.hint else text

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy_name,
            "policy_id": self.policy_id,
            "policy_source": self.policy_source,
            "platform": self.platform,
            "hardware_protection": self.hardware_protected,
            "debug": self.debug,
            "outcome": self.outcome,
            "accepted": self.accepted,
            "evaluated_at": self.evaluated_at.isoformat(),
            "rows": [r.to_json() for r in self.rows],
            "hint": self.hint or None,
            "notes": list(self.notes),
        }


class RefusedByPolicy(PolicyRejected):
    """A policy refused the claims; ``decision`` holds every row."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.explain())
        self.decision = decision


class PolicyError(UsageError):
    """A policy file is malformed: names the file, the line and the key."""

    def __init__(self, file: str, line: int | None, key: str, problem: str) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")
        self.file = file
        self.line = line
        self.key = key
        self.problem = problem
