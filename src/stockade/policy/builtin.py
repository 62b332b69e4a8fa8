"""The built-in policies, written as policy files and compiled by the same
loader as a user's file (so ``stockade policy default`` can print exactly
what is enforced).

- :func:`default_policy`: what ``stockade run`` enforces without
  ``--policy``: real hardware only (snp, tdx, sgx), never sim, never debug,
  no SEV-SNP migration agent, and, when the client knows it, the expected
  Keep measurement.
- :func:`development_policy`: the equivalent of ``--allow-sim``: the same,
  plus sim, with the measurement pinned (to this installation's Keep
  runtime, ``stockade.measure.launch.keep_measurement()``, in ``stockade run``).
"""

from __future__ import annotations

import dataclasses

from stockade.policy.load import loads_policy
from stockade.policy.types import Policy

DEFAULT_NAME = "built-in default"
DEVELOPMENT_NAME = "built-in development (--allow-sim)"


def default_policy_toml(measurement: bytes | None = None) -> str:
    lines = [
        "# stockade's built-in default policy (used when no --policy is given).",
        "# Debugging is refused because allow_debug is not set; an SEV-SNP guest policy",
        "# that allows a migration agent (bit 18, MIGRATE_MA) is refused because",
        "# allow_migration_agent is not set.",
        "version = 1",
        f'name = "{DEFAULT_NAME}"',
        'platforms = ["snp", "tdx", "sgx"]   # never sim: it gives no hardware protection',
    ]
    if measurement is not None:
        lines.append(f'measurements = ["{measurement.hex()}"]   # the expected Keep runtime')
    return "\n".join(lines) + "\n"


def development_policy_toml(measurement: bytes) -> str:
    return (
        "\n".join(
            [
                "# stockade's built-in development policy (stockade run --allow-sim).",
                "# sim and sim-tdx give NO hardware protection. Debugging and a migration agent",
                "# (SEV-SNP guest policy bit 18, MIGRATE_MA) are refused.",
                "version = 1",
                f'name = "{DEVELOPMENT_NAME}"',
                'platforms = ["snp", "tdx", "sgx", "sim", "sim-tdx"]',
                f'measurements = ["{measurement.hex()}"]   # the expected Keep runtime',
            ]
        )
        + "\n"
    )


def default_policy(measurement: bytes | None = None) -> Policy:
    """The policy ``stockade run`` uses without a policy file: refuses sim,
    debug and unknown platforms; pins ``measurement`` if given."""
    policy = loads_policy(default_policy_toml(measurement), "<built-in default policy>")
    return dataclasses.replace(policy, builtin=True)


def development_policy(measurement: bytes) -> Policy:
    """The policy equivalent to ``stockade run --allow-sim``: sim allowed,
    debug refused, Keep measurement pinned to ``measurement``."""
    policy = loads_policy(development_policy_toml(measurement), "<built-in development policy>")
    return dataclasses.replace(policy, builtin=True)
