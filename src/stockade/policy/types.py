"""The :class:`Policy` type and what it is made of, shared by the loader
(:mod:`stockade.policy.load`), the built-in policies
(:mod:`stockade.policy.builtin`) and evaluation (:mod:`stockade.policy.core`).
It imports none of them, so that they import each other in one direction
only: types <- load <- builtin <- core.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from stockade.policy.rules import (
    BytesIn,
    Debug,
    MigrationAgent,
    Not,
    PlatformIn,
    RegisterIn,
    RootIn,
    Rule,
)
from stockade.wire.platform import PLATFORMS as WIRE_PLATFORMS

#: Platforms a policy may name (one list, wire/platform.py); ``sim`` and
#: ``sim-tdx`` are accepted only where named.
PLATFORMS = WIRE_PLATFORMS


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
    #: Count only signatures that carry an inclusion proof under a tree
    #: head signed by one of ``log_keys`` (log IDs: SHA-256 of the log
    #: key's SubjectPublicKeyInfo); the deploying client enforces it
    #: (stockade.package.logproof, stockade.client.plan).
    require_log: bool = False
    log_keys: tuple[bytes, ...] = ()


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
