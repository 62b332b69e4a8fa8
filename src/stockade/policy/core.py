"""The :class:`Policy` type, :func:`evaluate` and :func:`appraise`.

``evaluate(claims, policy, at)`` is pure: the same claims, policy and time
give the same :class:`~stockade.policy.model.Decision`. ``appraise`` is what
the client calls before it sends anything to a Keep: it evaluates (with the
built-in default policy when given none) and raises
:class:`~stockade.policy.model.RefusedByPolicy` on a refusal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from stockade.evidence.claims import VerifiedClaims
from stockade.policy.model import Decision, RefusedByPolicy, Row, Verdict
from stockade.policy.rules import (
    BytesIn,
    Context,
    Debug,
    MigrationAgent,
    Not,
    PlatformIn,
    RegisterIn,
    RootIn,
    Rule,
    conjunction,
)
from stockade.wire.platform import PLATFORMS, Platform

#: Platforms a policy may name. ``sim`` is accepted only where named.

SIM_HINT = (
    "sim gives NO hardware protection and is accepted only by a policy that names it: "
    'for development run `stockade run --allow-sim ...`, or add "sim" to `platforms` '
    "in a policy file (docs/policy.md; `stockade policy reference` prints the sim Keep measurement)"
)


@dataclass(frozen=True)
class WorkloadRequirements:
    """The ``[workload]`` table: what the Keep must enforce on the package
    before it runs it, and the client checks again in the attested event
    log. ``digests`` pins package content digests (trusted boot);
    ``signers`` are raw 32-byte Ed25519 public keys, of which at least
    ``min_signatures`` must have signed the package digest."""

    signers: tuple[bytes, ...] = ()
    min_signatures: int = 0
    digests: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Policy:
    """A deployment trust policy: an all-of over ``rules``.

    Build one from TOML with :func:`stockade.policy.load_policy`, or in
    Python with :meth:`Policy.of`. ``platforms``, ``allow_debug`` and
    ``allow_migration_agent`` repeat what the first three rules check, for
    hints and tools.
    """

    name: str
    rules: tuple[Rule, ...]
    platforms: tuple[str, ...]
    allow_debug: bool = False
    allow_migration_agent: bool = False
    source: str = "<python>"
    digest: str = ""
    builtin: bool = False
    workload: WorkloadRequirements | None = None

    @classmethod
    def of(
        cls,
        name: str,
        platforms: tuple[str, ...],
        *rules: Rule,
        allow_debug: bool = False,
        allow_migration_agent: bool = False,
    ) -> Policy:
        """A policy with the three rules every policy has (platforms, debug,
        migration agent) followed by ``rules``."""
        unknown = [p for p in platforms if p not in PLATFORMS]
        if unknown or not platforms:
            raise ValueError(f"platforms must be a non-empty subset of {PLATFORMS}, got {platforms}")
        base: tuple[Rule, ...] = (
            PlatformIn("platforms", platforms),
            Debug("allow_debug", allowed=allow_debug),
            MigrationAgent("allow_migration_agent", allowed=allow_migration_agent),
        )
        all_rules = base + rules
        digest = hashlib.sha256(repr((name, all_rules)).encode()).hexdigest()
        return cls(
            name=name,
            rules=all_rules,
            platforms=platforms,
            allow_debug=allow_debug,
            allow_migration_agent=allow_migration_agent,
            digest=digest,
        )

    @property
    def policy_id(self) -> str:
        """Identifies this exact policy (name, percent-encoded, and SHA-256 of
        its text); used as the EAR ``ear.appraisal-policy-id``."""
        from urllib.parse import quote

        return f"stockade-policy:{quote(self.name, safe='')}:sha256:{self.digest}"

    @property
    def pins_measurement(self) -> bool:
        """True if some rule restricts the Keep measurement or a register."""
        for top in self.rules:
            for rule in top.walk():
                if isinstance(rule, RegisterIn) or (
                    isinstance(rule, BytesIn) and rule.claim == "measurement"
                ):
                    return True
        return False

    @property
    def sim_roots(self) -> tuple[bytes, ...]:
        """The sim roots (SHA-256 of the root certificate's DER) that the
        ``[sim] root_sha256`` rules of this policy accept, outside ``not``
        tables; empty when the policy pins none."""
        out: list[bytes] = []

        def visit(rule: Rule) -> None:
            if isinstance(rule, Not):
                return
            if isinstance(rule, RootIn):
                out.extend(v for v in rule.values if v not in out)
            for child in getattr(rule, "rules", ()) or getattr(rule, "alternatives", ()):
                visit(child)

        for top in self.rules:
            visit(top)
        return tuple(out)


def evaluate(claims: VerifiedClaims, policy: Policy, at: datetime | None = None) -> Decision:
    """Judge ``claims`` under ``policy`` at time ``at`` (default: now, UTC).
    Never raises for a refusal: see :func:`appraise`."""
    at = at or datetime.now(UTC)
    ctx = Context(at=at)
    outcomes = [rule.evaluate(claims, ctx, 0, True) for rule in policy.rules]
    verdict = conjunction(o.verdict for o in outcomes)
    rows: tuple[Row, ...] = tuple(r for o in outcomes for r in o.rows)
    accepted = verdict is not Verdict.FAIL
    hint = ""
    if not accepted and claims.platform == Platform.SIM and Platform.SIM not in policy.platforms:
        hint = ("this is stockade's built-in default policy; " if policy.builtin else "") + SIM_HINT
    notes: list[str] = []
    if claims.platform == Platform.SIM:
        notes.append("sim: NO hardware protection (simulated SEV-SNP, for development only)")
    if not policy.pins_measurement:
        notes.append("this policy pins no Keep measurement: any Keep image on an allowed platform passes it")
    return Decision(
        policy_name=policy.name,
        policy_id=policy.policy_id,
        policy_source=policy.source,
        platform=claims.platform,
        hardware_protected=claims.hardware_protected,
        accepted=accepted,
        rows=rows,
        evaluated_at=at,
        debug=claims.debug,
        hint=hint,
        notes=tuple(notes),
    )


def appraise(claims: VerifiedClaims, policy: Policy | None = None, at: datetime | None = None) -> Decision:
    """Evaluate ``claims`` under ``policy`` (``None``: the built-in default
    policy, which refuses sim, debug and unknown platforms) and return the
    decision if it accepts; raise :class:`RefusedByPolicy` (exit code 112,
    carrying the decision) if it refuses."""
    if policy is None:
        from stockade.policy.builtin import default_policy

        policy = default_policy()
    decision = evaluate(claims, policy, at)
    if not decision.accepted:
        raise RefusedByPolicy(decision)
    return decision
