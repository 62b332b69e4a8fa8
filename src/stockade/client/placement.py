"""Placement: which hosts of the fleet a deploy tries, in which order
(``stockade deploy --fleet``, issue 16 item 2).

A pure function over what :func:`stockade.fleet.record.read_fleet`
returned: no I/O, no clock; the random source that breaks ties is the
caller's (tests pass a seeded one). Everything it reads is the fleet's
word, which is untrusted: a record can only change *where* the client
tries, never *whether* it accepts a Keep. The platform and measurement an
offer advertises are hints; the Keep's attestation, appraised against the
deployer's own policy, still decides (docs/threat-model.md, "The fleet").

Rules, in order (docs/fleet.md, "Placement"):

1. skip entries whose record is malformed, and drained hosts;
2. keep hosts with an offer whose backend this deploy can use and whose
   platform the deployer's policy accepts (sim only when the policy names
   it: ``--allow-sim`` or a policy listing sim);
3. keep hosts matching every ``--host-label k=v``;
4. keep hosts with capacity: ``keeps_running < max_keeps`` (no bound when
   the host advertises none) and free memory at least the workload's
   memory limit;
5. order: hosts offering ``--prefer-platform`` first (a preference, not a
   filter), then least loaded (``keeps_running / max_keeps``), ties broken
   by ``rng``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from stockade.errors import (
    ChannelTampered,
    CollateralUnavailable,
    FleetError,
    KeepDied,
    MalformedEvidence,
    ManagerError,
    PolicyRejected,
    ProtocolError,
    StockadeError,
    VerificationFailed,
)
from stockade.fleet.record import FleetEntry, HostRecord, Offer

MIB: Final = 1024 * 1024
#: The capacity a host that advertises no bound (``max_keeps`` None) is
#: ranked as if it had: the keep manager's default token quota, so that an
#: unbounded host with many Keeps is not preferred over an idle bounded one.
NOMINAL_MAX_KEEPS: Final = 16


@dataclass(frozen=True)
class Constraints:
    """What the deploy needs from a host."""

    #: Platforms the deployer's policy accepts (its ``platforms``).
    platforms: frozenset[str]
    #: Backends this deploy can ask for (e.g. only ``--backend``'s).
    backends: frozenset[str]
    #: The workload's linear memory limit, bytes.
    memory_bytes: int
    prefer_platform: str | None = None
    #: ``--host-label k=v`` filters: all must match.
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Candidate:
    """A host placement may try, with the offer (backend) to ask it for."""

    record: HostRecord
    offer: Offer
    load: float
    preferred: bool

    @property
    def host(self) -> str:
        return self.record.id

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "host": r.id,
            "api_url": r.api_url,
            "backend": self.offer.backend,
            "platform": self.offer.platform,
            "keeps_running": r.keeps_running,
            "max_keeps": r.max_keeps,
            "load": round(self.load, 4),
            "preferred": self.preferred,
        }


@dataclass(frozen=True)
class Placement:
    """The ordered candidates and every excluded entry with its reason."""

    candidates: tuple[Candidate, ...]
    excluded: tuple[tuple[str, str], ...]
    considered: int

    def to_json(self) -> dict[str, Any]:
        return {
            "considered": self.considered,
            "candidates": [c.to_json() for c in self.candidates],
            "excluded": [{"host": host, "reason": reason} for host, reason in self.excluded],
        }


def load_of(record: HostRecord) -> float:
    """How busy a host says it is: Keeps running over its bound."""
    bound = record.max_keeps if record.max_keeps is not None else NOMINAL_MAX_KEEPS
    return record.keeps_running / bound if bound else 1.0


def _name(entry: FleetEntry) -> str:
    return entry.record.id if entry.record is not None else entry.key.rsplit("/", 1)[-1][:80]


def _exclusion(record: HostRecord, c: Constraints) -> str | None:
    """Why ``record`` cannot take the deploy, or None (offers checked apart)."""
    for key, value in c.labels:
        have = record.labels.get(key)
        if have is None:
            return f"no label {key}"
        if have != value:
            return f"label {key}={have}, not {value}"
    if record.max_keeps is not None and record.keeps_running >= record.max_keeps:
        return f"at capacity ({record.keeps_running}/{record.max_keeps} Keeps)"
    if record.free_memory_mib * MIB < c.memory_bytes:
        return (
            f"free memory {record.free_memory_mib} MiB is below the workload's memory limit "
            f"{-(-c.memory_bytes // MIB)} MiB"
        )
    return None


def _offer(record: HostRecord, c: Constraints) -> Offer | str:
    """The offer to ask ``record`` for, or why none fits."""
    usable = [o for o in record.offers if o.backend in c.backends]
    if not usable:
        return (
            f"offers no backend this deploy can use (offers {', '.join(record.backends)}; "
            f"usable: {', '.join(sorted(c.backends))})"
        )
    accepted = [o for o in usable if o.platform in c.platforms]
    if not accepted:
        return (
            f"offers no platform the policy accepts (offers {', '.join(dict.fromkeys(o.platform for o in usable))}; "
            f"the policy accepts {', '.join(sorted(c.platforms))})"
        )
    for offer in accepted:
        if offer.platform == c.prefer_platform:
            return offer
    return accepted[0]


def plan_placement(entries: Sequence[FleetEntry], constraints: Constraints, rng: random.Random) -> Placement:
    """The hosts to try, best first, and why the others were left out."""
    excluded: list[tuple[str, str]] = []
    ranked: list[tuple[bool, float, float, Candidate]] = []
    for entry in entries:
        record = entry.record
        if record is None:
            excluded.append((_name(entry), entry.problem or "malformed record"))
            continue
        if entry.drained:
            excluded.append((record.id, "drained"))
            continue
        offer = _offer(record, constraints)
        if isinstance(offer, str):
            excluded.append((record.id, offer))
            continue
        why = _exclusion(record, constraints)
        if why is not None:
            excluded.append((record.id, why))
            continue
        preferred = constraints.prefer_platform is not None and offer.platform == constraints.prefer_platform
        candidate = Candidate(record, offer, load_of(record), preferred)
        ranked.append((not preferred, candidate.load, rng.random(), candidate))
    ranked.sort(key=lambda item: item[:3])
    return Placement(tuple(item[3] for item in ranked), tuple(excluded), len(entries))


# -- attempts -----------------------------------------------------------------

#: Failures that say something about the Keep or the path to it (its
#: evidence, its answers, the attested channel): when every attempt failed
#: and one of these was among the reasons, the final error keeps the class
#: (and exit code) of the last of them, so that a script still sees "an
#: attestation failed" (110, 111, 112, 113, 114, 118), not "no host".
TRUST_FAILURES: Final = (
    VerificationFailed,
    MalformedEvidence,
    PolicyRejected,
    ProtocolError,
    CollateralUnavailable,
    ChannelTampered,
)
#: Failures *before release* after which ``deploy --fleet`` tries the next
#: candidate: the manager could not be reached or refused (5xx, quota), the
#: Keep died before the release, or it failed attestation. Anything else
#: (the deployer's own input: usage, a workload the Keep rejects, a limit)
#: would fail the same way on every host and ends the deploy at once. After
#: the release nothing is retried (:class:`stockade.client.deploy.ReleaseMark`).
RETRY_BEFORE_RELEASE: Final = (ManagerError, KeepDied, *TRUST_FAILURES)


def retryable(err: StockadeError) -> bool:
    """Whether a failure before release lets placement try the next host."""
    return isinstance(err, RETRY_BEFORE_RELEASE)


@dataclass(frozen=True)
class Attempt:
    """One host tried: the error, or None for the one that ran the deploy."""

    candidate: Candidate
    error: StockadeError | None = None
    keep_id: str = ""
    released: bool = False

    def reason(self) -> str:
        if self.error is None:
            return "ok"
        return f"{self.error.title}: {self.error.detail}"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "host": self.candidate.host,
            "api_url": self.candidate.record.api_url,
            "backend": self.candidate.offer.backend,
            "keep_id": self.keep_id or None,
            "released": self.released,
            "outcome": "ok" if self.error is None else "failed",
        }
        if self.error is not None:
            doc["error"] = {
                "type": self.error.problem_type,
                "exit_code": self.error.exit_code,
                "detail": self.error.detail,
            }
        return doc


def no_candidate_error(fleet_url: str, placement: Placement) -> FleetError:
    """The error when placement found no host to try."""
    if not placement.considered:
        return FleetError(f"the fleet at etcd {fleet_url} has no registered host")
    why = "; ".join(f"{host}: {reason}" for host, reason in placement.excluded)
    return FleetError(
        f"no host of the fleet at etcd {fleet_url} can take this deploy "
        f"({placement.considered} registered): {why}"
    )


def final_error(attempts: Sequence[Attempt], remaining: int) -> StockadeError:
    """The error when every attempt failed before release: every host's
    reason, in the class of the last trust failure among them if there is
    one (its exit code), else :class:`FleetError` (122)."""
    failed = [a for a in attempts if a.error is not None]
    why = "; ".join(f"{a.candidate.host}: {a.reason()}" for a in failed)
    more = f", {remaining} more candidate(s) not tried (--fleet-attempts)" if remaining else ""
    detail = f"no host of the fleet ran the deploy ({len(failed)} tried{more}): {why}"
    for attempt in reversed(failed):
        for cls in TRUST_FAILURES:  # the base class: subclasses take other arguments
            if isinstance(attempt.error, cls):
                return cls(detail)
    return FleetError(detail)
