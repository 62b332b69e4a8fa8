"""The steward's appraisal of a certify request (docs/steward.md,
"Appraisal"): every step over the bytes received, at an explicit time,
under explicit roots, with no network.

1. the nonce is one this steward issued, unexpired and unused
   (:class:`Challenges`; taken on first use, so a replay is refused);
2. the CSR parses and passes the profile's checks
   (:func:`stockade.steward.profile.check_csr`);
3. the evidence verifies with the one evidence core
   (:func:`stockade.evidence.registry.verify`), under the sim roots, CRLs
   and Intel collateral the steward was given;
4. the event log has the workload shape
   (:func:`stockade.binding.eventlog.check_workload_events`) and its
   replayed register, the nonce and the CSR's key are what the report data
   binds (:func:`stockade.binding.reportdata.steward_report_data`): a CSR
   key not bound to the evidence is refused;
5. the steward policy (a stockade policy file, :mod:`stockade.policy`)
   accepts the verified claims (platforms, measurements, TCB, debug...);
6. the package digest and the signer keys the Keep measured satisfy the
   policy's ``[workload]`` table (``digests``, ``signers`` with
   ``min_signatures``).

A refusal raises :class:`Refused` (a CertificateRequestRefused, exit 112)
naming the rule, the expected and the actual value, like a policy
decision. Success returns :class:`Appraised`, whose
:class:`~stockade.steward.profile.VerifiedWorkloadClaims` come out of
these checks only.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stockade.binding.eventlog import check_workload_events, replay
from stockade.binding.reportdata import steward_report_data
from stockade.errors import CertificateRequestRefused, StockadeError
from stockade.evidence import registry
from stockade.policy import Decision, Policy, evaluate
from stockade.steward.api import NONCE_SIZE, CertifyRequest
from stockade.steward.profile import VerifiedWorkloadClaims, check_csr
from stockade.wire.evidence import EvidenceBundle
from stockade.wire.platform import Platform

if TYPE_CHECKING:
    from stockade.evidence.intel.verify import Collateral as IntelCollateral

#: Outstanding challenges at most (older ones are dropped first when full
#: of expired ones; a full set of live ones refuses new challenges).
MAX_OUTSTANDING = 4096


class Refused(CertificateRequestRefused):
    """A refusal explained like a policy decision: ``rule`` (what was
    checked), ``expected``, ``actual``; ``rows`` the policy's decision rows
    when the policy refused."""

    def __init__(self, rule: str, expected: str, actual: str, rows: tuple[dict[str, Any], ...] = ()) -> None:
        super().__init__(f"{rule}: expected {expected}; actual {actual}")
        self.rule = rule
        self.expected = expected
        self.actual = actual
        self.rows = rows

    def to_map(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"rule": self.rule, "expected": self.expected, "actual": self.actual}
        if self.rows:
            doc["rows"] = list(self.rows)
        return doc


class TooManyChallenges(StockadeError):
    """Every challenge slot holds a live nonce (answered 503)."""


class Challenges:
    """Single-use nonces this steward issued, each valid ``ttl_ms``."""

    def __init__(self, ttl_ms: int, max_outstanding: int = MAX_OUTSTANDING) -> None:
        self.ttl_ms = ttl_ms
        self.max_outstanding = max_outstanding
        self._live: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now_ms: int) -> None:
        while self._live:
            nonce, expires = next(iter(self._live.items()))
            if expires > now_ms:
                break
            del self._live[nonce]

    def issue(self, now_ms: int) -> tuple[bytes, int]:
        """A new nonce and when it expires (ms since the epoch)."""
        with self._lock:
            self._expire(now_ms)
            if len(self._live) >= self.max_outstanding:
                raise TooManyChallenges(
                    f"{self.max_outstanding} challenges are outstanding; try again within "
                    f"{self.ttl_ms // 1000} s"
                )
            nonce = secrets.token_bytes(NONCE_SIZE)
            expires = now_ms + self.ttl_ms
            self._live[nonce] = expires
            return nonce, expires

    def take(self, nonce: bytes, now_ms: int) -> None:
        """Use ``nonce`` up (whatever the outcome of the request); Refused
        if it is not one of ours, was used, or expired."""
        with self._lock:
            expires = self._live.pop(nonce, None)
            self._expire(now_ms)
        if len(nonce) != NONCE_SIZE:
            raise Refused("nonce", f"a {NONCE_SIZE}-byte challenge nonce", f"{len(nonce)} bytes")
        if expires is None:
            raise Refused(
                "nonce",
                "a challenge this steward issued and that was not used yet",
                "an unknown or already used nonce (a replayed or forged request, or an expired one "
                "already dropped)",
            )
        if expires <= now_ms:
            raise Refused("nonce", f"used within {self.ttl_ms // 1000} s of its challenge", "expired")


@dataclass(frozen=True)
class StewardTrust:
    """What the steward trusts and requires (docs/steward.md)."""

    policy: Policy
    sim_root: bytes | None = None
    sim_tdx_root: bytes | None = None
    crls: tuple[bytes, ...] = ()
    #: Intel collateral for a TDX/SGX quote at a time (no network: a
    #: directory the operator filled, ``--collateral DIR``).
    intel: Callable[[bytes, datetime], IntelCollateral] | None = None


@dataclass(frozen=True)
class Appraised:
    claims: VerifiedWorkloadClaims
    csr: x509.CertificateSigningRequest
    decision: Decision
    checks: tuple[str, ...]


def _verify_evidence(data: bytes, trust: StewardTrust, at: datetime) -> registry.VerifiedEvidence:
    try:
        bundle = EvidenceBundle.from_cbor(data)
        intel = None
        if bundle.platform in (Platform.TDX, Platform.SGX):
            if trust.intel is None:
                raise Refused(
                    "collateral",
                    f"Intel collateral for the {bundle.platform.upper()} quote",
                    "this steward was started without --collateral DIR",
                )
            intel = trust.intel(bundle.report, at)
        return registry.verify(
            registry.Evidence(bundle.platform, bundle.report, bundle.certs),
            registry.Trust(sim_root=trust.sim_root, sim_tdx_root=trust.sim_tdx_root),
            at,
            registry.Collateral(crls=trust.crls, intel=intel, revocation=registry.Revocation.IF_GIVEN),
        )
    except Refused:
        raise
    except StockadeError as exc:
        raise Refused(
            "evidence",
            "evidence that verifies under this steward's roots",
            f"{exc.title}: {exc.detail}",
        ) from None


def appraise_request(
    request: CertifyRequest, nonce_checked: bool, trust: StewardTrust, at: datetime
) -> Appraised:
    """Appraise ``request`` (module docstring). ``nonce_checked``: the
    caller took the nonce from its :class:`Challenges` (step 1)."""
    if not nonce_checked:
        raise TypeError("take the nonce from the steward's Challenges first")
    checks = ["nonce: issued by this steward, unexpired, first use"]
    try:
        csr = x509.load_der_x509_csr(request.csr)
    except ValueError:
        raise Refused("csr", "a DER PKCS#10 certification request", "bytes that do not parse") from None
    try:
        check_csr(csr)
    except CertificateRequestRefused as exc:
        raise Refused("csr", "a CSR the workload profile accepts", exc.detail) from None
    checks.append("CSR: signature by its key, key type, requested extensions")

    verified = _verify_evidence(request.evidence, trust, at)
    claims = verified.claims
    checks.extend(verified.checks)

    try:
        package = check_workload_events(request.events, ValueError)
    except ValueError as exc:
        raise Refused("events", "a workload event log", str(exc)) from None
    register = replay(request.events)
    spki = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if claims.report_data != steward_report_data(request.nonce, spki, register):
        raise Refused(
            "binding",
            "report data = steward_report_data(challenge nonce, the CSR's key, the event-log register)",
            "report data that binds another key, nonce or event log (a CSR key not bound to the "
            "evidence, replayed evidence, or an altered event log)",
        )
    checks.append("binding: the evidence binds this challenge, the CSR's key and the event log")

    decision = evaluate(claims, trust.policy, at)
    if not decision.accepted:
        rows = tuple(r.to_json() for r in decision.failures())
        failed = decision.failures()
        first = failed[0] if failed else None
        raise Refused(
            f"policy {trust.policy.name!r}" + (f": {first.rule}" if first else ""),
            first.expected if first else "claims the policy accepts",
            (first.actual if first else "refused") + (f" ({decision.hint})" if decision.hint else ""),
            rows,
        )
    checks.append(f"policy {trust.policy.name!r} accepted the claims")

    signer_keys: tuple[bytes, ...] = ()
    wr = trust.policy.workload
    if wr is not None:
        if wr.digests and package.digest not in wr.digests:
            raise Refused(
                "workload.digests",
                "one of " + ", ".join(d.hex() for d in wr.digests),
                f"package {package.name!r} with digest {package.digest.hex()}",
            )
        if wr.signers:
            measured = {e.digest for e in request.events if e.kind == "signer"}
            vouched = sorted(raw for raw in set(wr.signers) if hashlib.sha256(raw).digest() in measured)
            if len(vouched) < wr.min_signatures:
                raise Refused(
                    "workload.min_signatures",
                    f"at least {wr.min_signatures} signature(s) by keys of workload.signers",
                    f"{len(vouched)} (signer key ids the Keep verified: "
                    + (", ".join(sorted(d.hex()[:16] for d in measured)) or "none")
                    + ")",
                )
            signer_keys = tuple(vouched)
        checks.append("workload: package digest and signers allowed by the policy")
    try:
        workload = VerifiedWorkloadClaims(
            package_digest=package.digest,
            platform=str(claims.platform),
            measurement=claims.measurement,
            signer_keys=signer_keys,
        )
    except ValueError as exc:
        raise Refused("profile", "claims the certificate profile can carry", str(exc)) from None
    return Appraised(workload, csr, decision, tuple(checks))
