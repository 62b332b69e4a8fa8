"""Appraise a Keep's second attestation: which workload it loaded.

After the first attestation (the Keep, its platform, its TLS key), the
client sends a load request with a fresh nonce; the Keep checks and measures
the package into its event log and answers with fresh evidence whose report
data binds that nonce, the same TLS key and the final register
(stockade.binding.reportdata.identity_report_data). :func:`appraise_identity`
checks, over the received bytes:

1. the evidence verifies against the same roots, on the same platform, chip
   and launch measurement as the first attestation (TDX/SGX: the same PCK
   PPID and FMSPC, and MRTD / MRENCLAVE), and the policy accepts it;
2. its report data binds this load's nonce, the TLS key of this session and
   the register that replaying the received events gives;
3. the events say the Keep loaded exactly the expected package digest, with
   the configuration this client sent, and (when signers are required) that
   the Keep verified enough signatures by trusted keys.

Only then may the client release secrets. Failures raise
VerificationFailed (exit 110) naming what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from stockade.binding.eventlog import Event, check_workload_events, replay
from stockade.binding.reportdata import identity_report_data
from stockade.client.attest import Appraisal, TrustConfig, verify_bundle
from stockade.errors import VerificationFailed
from stockade.evidence.claims import VerifiedClaims
from stockade.policy import appraise as policy_appraise
from stockade.wire.evidence import EvidenceBundle
from stockade.wire.messages import Expect, Identity


@dataclass(frozen=True)
class WorkloadIdentity:
    """The verified identity of the workload a Keep loaded."""

    package_name: str
    package_digest: bytes
    register: bytes
    events: tuple[Event, ...]
    signers: tuple[tuple[str, str], ...]  # (signed role, kid hex) verified by the Keep
    claims: VerifiedClaims
    checks: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "package": self.package_name,
            "package_digest": self.package_digest.hex(),
            "register": self.register.hex(),
            "signers": [{"role": r, "kid": k} for r, k in self.signers],
            "events": [{"kind": e.kind, "name": e.name, "digest": e.digest.hex()} for e in self.events],
            "checks": list(self.checks),
        }


def appraise_identity(
    message: Identity,
    first: Appraisal,
    nonce: bytes,
    expected_digest: bytes,
    config_digest: bytes,
    expect: Expect,
    trust: TrustConfig,
    at: datetime | None = None,
) -> WorkloadIdentity:
    at = at or datetime.now(UTC)
    bundle = EvidenceBundle.from_cbor(message.evidence)
    claims = verify_bundle(bundle, trust, at)
    checks = ["identity report signature and certificate chain"]
    before = first.claims
    # The same machine and launch on every platform shape: SNP/sim, the
    # CHIP_ID and the launch MEASUREMENT; TDX/SGX (and sim-tdx), the PCK
    # leaf's PPID (claims.chip_id), its FMSPC and MRTD (MRENCLAVE for SGX),
    # the measurement; and on all, the same root (trust is the same).
    for what, a, b in (
        ("platform", before.platform, claims.platform),
        ("root", before.root_fingerprint, claims.root_fingerprint),
        ("chip id", before.chip_id, claims.chip_id),
        ("FMSPC", before.fmspc, claims.fmspc),
        ("launch measurement", before.measurement, claims.measurement),
    ):
        if a != b:
            raise VerificationFailed(
                f"workload identity: the second report's {what} differs from the first's"
            )
    checks.append("same platform, root, chip and launch measurement as the first report")
    policy_appraise(claims, trust.policy, at)

    register = replay(message.events)
    if claims.report_data != identity_report_data(nonce, first.tls_spki, register):
        raise VerificationFailed(
            "workload identity: report data does not bind this load's nonce, the session's TLS key "
            "and the register of the received event log (a replayed report, or an altered log)"
        )
    checks.append("freshness: identity report binds the load nonce, the TLS key and the event log")

    try:
        package = check_workload_events(message.events, ValueError)
    except ValueError as exc:
        raise VerificationFailed(f"workload identity: {exc}") from None
    if package.digest != expected_digest:
        raise VerificationFailed(
            f"workload identity: the Keep loaded package digest {package.digest.hex()}, "
            f"not the expected {expected_digest.hex()}; no secret was released"
        )
    checks.append(f"the Keep loaded package {package.name!r} with the expected digest")
    if message.events[-1].digest != config_digest:
        raise VerificationFailed(
            "workload identity: the Keep measured another deploy configuration than this one"
        )
    checks.append("the Keep measured this deploy's configuration")
    signers = tuple((e.name, e.digest.hex()) for e in message.events if e.kind == "signer")
    if expect.signers:
        from stockade.package.signing import raw_key_id

        trusted = {raw_key_id(raw) for raw in expect.signers}
        vouched = {kid for _, kid in signers} & trusted
        if len(vouched) < expect.min_signatures:
            raise VerificationFailed(
                f"workload identity: the Keep verified {len(vouched)} signature(s) by trusted keys, "
                f"{expect.min_signatures} required"
            )
        checks.append(f"the Keep verified {len(vouched)} signature(s) by trusted keys")
    return WorkloadIdentity(
        package_name=package.name,
        package_digest=package.digest,
        register=register,
        events=message.events,
        signers=signers,
        claims=claims,
        checks=tuple(checks),
    )
