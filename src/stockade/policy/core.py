""":func:`evaluate` and :func:`appraise` (the :class:`Policy` type is in
:mod:`stockade.policy.types`, re-exported here).

``evaluate(claims, policy, at)`` is pure: the same claims, policy and time
give the same :class:`~stockade.policy.model.Decision`. ``appraise`` is what
the client calls before it sends anything to a Keep: it evaluates (with the
built-in default policy when given none) and raises
:class:`~stockade.policy.model.RefusedByPolicy` on a refusal.
"""

from __future__ import annotations

from datetime import UTC, datetime

from stockade.evidence.claims import SIM_PLATFORMS, VerifiedClaims
from stockade.policy.builtin import default_policy
from stockade.policy.claims import NOT_VERIFIED_NOTE, Claims
from stockade.policy.model import Decision, RefusedByPolicy, Row, Verdict
from stockade.policy.rules import Context, conjunction
from stockade.policy.types import PLATFORMS, Policy, WorkloadRequirements
from stockade.wire.platform import Platform

__all__ = ["PLATFORMS", "Policy", "WorkloadRequirements", "appraise", "evaluate"]

SIM_HINT = (
    "sim gives NO hardware protection and is accepted only by a policy that names it: "
    'for development run `stockade run --allow-sim ...`, or add "sim" to `platforms` '
    "in a policy file (docs/policy.md; `stockade policy reference` prints the sim Keep measurement)"
)


def evaluate(claims: Claims, policy: Policy, at: datetime | None = None) -> Decision:
    """Judge ``claims`` under ``policy`` at time ``at`` (default: now, UTC).
    Never raises for a refusal: see :func:`appraise`. Claims read from a
    document (:class:`~stockade.policy.claims.UnverifiedClaims`) give a
    decision labelled as such (``claims_verified`` False, and a note)."""
    at = at or datetime.now(UTC)
    ctx = Context(at=at)
    outcomes = [rule.evaluate(claims, ctx, 0, True) for rule in policy.rules]
    verdict = conjunction(o.verdict for o in outcomes)
    rows: tuple[Row, ...] = tuple(r for o in outcomes for r in o.rows)
    accepted = verdict is not Verdict.FAIL
    hint = ""
    if not accepted and claims.platform in SIM_PLATFORMS and claims.platform not in policy.platforms:
        hint = ("this is stockade's built-in default policy; " if policy.builtin else "") + SIM_HINT
        if claims.platform != Platform.SIM:
            # sim-tdx: name the platform the policy must list.
            hint = hint.replace('add "sim"', f'add "{claims.platform}"').replace(
                "sim gives", f"{claims.platform} gives", 1
            )
    verified = isinstance(claims, VerifiedClaims)
    notes: list[str] = [] if verified else [NOT_VERIFIED_NOTE]
    if claims.platform == Platform.SIM:
        notes.append("sim: NO hardware protection (simulated SEV-SNP, for development only)")
    elif claims.platform == "sim-tdx":
        notes.append("sim-tdx \N{EM DASH} NO HARDWARE PROTECTION (simulated TDX, for development only)")
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
        claims_verified=verified,
    )


def appraise(claims: VerifiedClaims, policy: Policy | None = None, at: datetime | None = None) -> Decision:
    """Evaluate ``claims`` under ``policy`` (``None``: the built-in default
    policy, which refuses sim, debug and unknown platforms) and return the
    decision if it accepts; raise :class:`RefusedByPolicy` (exit code 112,
    carrying the decision) if it refuses. Only verified claims are
    appraised: a TypeError for anything else (a programming error)."""
    if not isinstance(claims, VerifiedClaims):
        raise TypeError(f"appraise takes VerifiedClaims, not {type(claims).__name__}")
    if policy is None:
        policy = default_policy()
    decision = evaluate(claims, policy, at)
    if not decision.accepted:
        raise RefusedByPolicy(decision)
    return decision
