"""Deployment trust policy as data: which verified claims this deployment
accepts, with every decision explained.

The deployer writes a short TOML file (format: docs/policy.md)::

    version = 1
    platforms = ["snp"]
    measurements = ["<96 hex digits: the Keep launch measurement>"]

    [snp]
    deny_products = ["Turin"]
    min_tcb = { bootloader = 4, snp = 22, microcode = 213 }
    min_firmware = "1.55"

API (all pure, no I/O except :func:`load_policy` reading its file):

- ``load_policy(path) -> Policy`` / ``loads_policy(text, source) -> Policy``:
  compile a policy file; a malformed file raises :class:`PolicyError` (a
  ``UsageError``, exit 2) naming the file, line and key.
- ``default_policy(measurement: bytes | None = None) -> Policy``: the
  built-in policy used without a file: snp, tdx, sgx; never sim; never
  debug; the Keep measurement pinned if given.
- ``development_policy(measurement: bytes) -> Policy``: what
  ``stockade run --allow-sim`` means: the same plus sim, measurement pinned.
- ``evaluate(claims, policy, at=None) -> Decision``: one row per rule (rule,
  expected, actual, verdict); never raises for a refusal.
- ``appraise(claims, policy=None, at=None) -> Decision``: evaluate (default
  policy when ``None``) and raise :class:`RefusedByPolicy` (a
  ``PolicyRejected``, exit 112, with ``.decision``) on refusal. The client
  calls this before any workload byte or secret leaves it.
- ``ear_document / ear_json / ear_cbor(decision, nonce=None)``: the decision
  as an unsigned EAT Attestation Result (draft-ietf-rats-ear).
- ``Policy.of(name, platforms, *rules)`` and the rule classes in
  :mod:`stockade.policy.rules` (``AllOf``, ``AnyOf``, ``Not``,
  ``OnPlatform`` and the checks) build policies in Python.

To test a policy against hand-made claims, use
:func:`stockade.testing.claims.make_claims`.
"""

from __future__ import annotations

from stockade.policy.builtin import default_policy, development_policy
from stockade.policy.core import Policy, WorkloadRequirements, appraise, evaluate
from stockade.policy.ear import ear_cbor, ear_document, ear_json
from stockade.policy.load import load_policy, loads_policy
from stockade.policy.model import Decision, PolicyError, RefusedByPolicy, Row, Verdict
from stockade.wire.platform import PLATFORMS

__all__ = [
    "PLATFORMS",
    "Decision",
    "Policy",
    "PolicyError",
    "RefusedByPolicy",
    "Row",
    "Verdict",
    "WorkloadRequirements",
    "appraise",
    "default_policy",
    "development_policy",
    "ear_cbor",
    "ear_document",
    "ear_json",
    "evaluate",
    "load_policy",
    "loads_policy",
]
