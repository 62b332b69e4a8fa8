"""Policy rules: leaf checks over verified claims, and combinators.

Every rule is a frozen dataclass with ``rule`` (its key path in the policy
file, used as the row label) and ``evaluate(claims, ctx, depth, positive)``,
which returns an :class:`Outcome`: a verdict, the decision rows it produced
and a one-line summary. Rules never raise on claims they cannot judge: a
missing claim is a ``fail`` row that says "absent".

Combinators (in the style of sigstore-python's ``AllOf``/``AnyOf``
policies) use three verdicts ordered FAIL < N/A < PASS:

- :class:`AllOf` is the minimum of its children (empty: PASS). Adding a
  rule to an all-of therefore never raises its verdict: a refusal stays a
  refusal.
- :class:`AnyOf` passes if one child passes; otherwise it fails if one
  child fails; otherwise (all N/A) it is N/A. An alternative that does not
  apply never satisfies an any-of.
- :class:`Not` swaps PASS and FAIL and keeps N/A.
- :class:`OnPlatform` (a ``[snp]``, ``[tdx]``... table) is N/A for
  evidence of another platform, else the all-of of its rules.

A policy's top level is an all-of; the policy accepts unless it is FAIL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from stockade.evidence.claims import SIM_PLATFORMS
from stockade.evidence.sgx.abi import ATTRIBUTE_FLAG_BITS
from stockade.evidence.snp.abi import POLICY_BITS
from stockade.evidence.tdx.abi import TD_ATTRIBUTE_BITS
from stockade.policy.claims import Claims
from stockade.policy.model import Row, Verdict
from stockade.wire.platform import Platform

# AR4SI trustworthiness values (draft-ietf-rats-ar4si, as used by EAR) that a
# failed rule maps to; see stockade.policy.ear.
UNRECOGNIZED_HW = 97
CONTRAINDICATED_HW = 96
UNSAFE_HW = 32
UNSAFE_CONFIG = 32
UNSUPPORTABLE_CONFIG = 96
UNRECOGNIZED_RT = 33
UNRECOGNIZED_INSTANCE = 97

#: The flag-bit tables are the abi modules' own (name -> (bit, spec name)).
SNP_POLICY_BITS = POLICY_BITS
TDX_ATTRIBUTE_BITS = TD_ATTRIBUTE_BITS
SGX_ATTRIBUTE_BITS = ATTRIBUTE_FLAG_BITS

FLAG_TABLES: dict[str, tuple[str, dict[str, tuple[int, str]]]] = {
    Platform.SNP: ("guest policy", SNP_POLICY_BITS),
    Platform.TDX: ("TD attribute", TDX_ATTRIBUTE_BITS),
    Platform.SGX: ("enclave attribute", SGX_ATTRIBUTE_BITS),
}

#: Where each platform keeps its debug switch, for explanations.
DEBUG_SWITCH: dict[str, str] = {
    Platform.SNP: "guest policy bit 19 (DEBUG)",
    Platform.SIM: "guest policy bit 19 (DEBUG)",
    Platform.TDX: "TD attribute bit 0 (DEBUG)",
    Platform.SGX: "enclave attribute bit 1 (DEBUG)",
}


@dataclass(frozen=True)
class Context:
    """What evaluation needs besides the claims: the evaluation time."""

    at: datetime


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    rows: tuple[Row, ...]
    summary: str


class Rule:
    """A node of a policy. Subclasses are frozen dataclasses. (Not an
    ``abc.ABC``: with some twenty rule classes, ABC bookkeeping alone cost
    ~20 ms of start-up here.)"""

    rule: str

    def evaluate(self, claims: Claims, ctx: Context, depth: int = 0, positive: bool = True) -> Outcome:
        """Judge ``claims``; ``depth`` and ``positive`` only label the rows."""
        raise NotImplementedError

    def walk(self) -> Iterable[Rule]:
        yield self


# --- leaf checks ------------------------------------------------------------------


class Check(Rule):
    """A leaf rule: one expectation, one row."""

    category: str = ""
    failure_value: int = 0

    def expected(self) -> str:
        raise NotImplementedError

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        """The verdict and the actual value, in words."""
        raise NotImplementedError

    def evaluate(self, claims: Claims, ctx: Context, depth: int = 0, positive: bool = True) -> Outcome:
        verdict, actual = self.judge(claims, ctx)
        row = Row(
            rule=self.rule,
            expected=self.expected(),
            actual=actual,
            verdict=verdict,
            depth=depth,
            category=self.category,
            failure_value=self.failure_value,
            positive=positive,
        )
        return Outcome(verdict, (row,), row.sentence())


def _verdict(ok: bool) -> Verdict:
    return Verdict.PASS if ok else Verdict.FAIL


def _one_of(values: Iterable[str]) -> str:
    return "one of " + ", ".join(values)


def _none_of(values: Iterable[str]) -> str:
    return "none of " + ", ".join(values)


@dataclass(frozen=True)
class PlatformIn(Check):
    """claims.platform is one of ``platforms``. sim passes only if named."""

    rule: str
    platforms: tuple[str, ...]
    category = "hardware"
    failure_value = UNRECOGNIZED_HW

    def expected(self) -> str:
        text = _one_of(self.platforms)
        return text if Platform.SIM in self.platforms else f"{text} (sim only when named)"

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        actual = claims.platform + (" (NO hardware protection)" if claims.platform in SIM_PLATFORMS else "")
        return _verdict(claims.platform in self.platforms), actual


@dataclass(frozen=True)
class Debug(Check):
    """Debugging must be disabled, unless ``allowed`` (allow_debug = true),
    in which case the row only records the state and passes."""

    rule: str
    allowed: bool = False
    category = "configuration"
    failure_value = UNSUPPORTABLE_CONFIG

    def expected(self) -> str:
        if self.allowed:
            return "any (allow_debug = true)"
        return "debugging disabled (allow_debug = false)"

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        switch = DEBUG_SWITCH.get(claims.platform, "debug flag")
        if claims.debug:
            actual = f"{switch} set: debugging allowed, the host can read and change the Keep's memory"
        else:
            actual = f"{switch} clear: debugging disabled"
        return _verdict(self.allowed or not claims.debug), actual


#: Platforms whose evidence carries the SEV-SNP guest policy (sim is SNP-shaped).
MIGRATION_AGENT_PLATFORMS = (Platform.SNP.value, Platform.SIM.value)


@dataclass(frozen=True)
class MigrationAgent(Check):
    """SEV-SNP guest policy bit 18, MIGRATE_MA, must be clear unless
    ``allowed`` (allow_migration_agent = true).

    AMD SEV Secure Nested Paging Firmware ABI Specification (pub. 56860),
    "Guest Policy" structure: MIGRATE_MA, bit 18, "0: Association with a
    migration agent is disallowed. 1: Association with a migration agent is
    allowed." A migration agent is another guest that the firmware lets
    handle this guest's migration, that is export its memory and state (the
    spec's live-migration chapter): a Keep whose launch policy allows one has
    its memory readable by code that this report does not measure. The
    guest policy is fixed at launch and signed in the report, so the bit is
    as trustworthy as the report. Other platforms have no such bit in their
    claims (TDX's MIGRATABLE TD attribute: ``[tdx] td_attributes``): n/a."""

    rule: str
    allowed: bool = False
    category = "configuration"
    failure_value = UNSAFE_CONFIG

    def expected(self) -> str:
        if self.allowed:
            return "any (allow_migration_agent = true)"
        return "no migration agent (allow_migration_agent = false)"

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        if claims.platform not in MIGRATION_AGENT_PLATFORMS:
            return Verdict.NA, f"{claims.platform} evidence: no SEV-SNP guest policy"
        flags = dict(claims.policy_flags)
        if "migrate_ma" not in flags:
            return Verdict.FAIL, "absent (the claims carry no guest policy flag migrate_ma)"
        if flags["migrate_ma"]:
            actual = "guest policy bit 18 (MIGRATE_MA) set: a migration agent may export the Keep's memory"
        else:
            actual = "guest policy bit 18 (MIGRATE_MA) clear: no migration agent"
        return _verdict(self.allowed or not flags["migrate_ma"]), actual


@dataclass(frozen=True)
class ProductIn(Check):
    """claims.product is (``deny`` False) or is not (``deny`` True) one of
    ``products``."""

    rule: str
    products: tuple[str, ...]
    deny: bool = False
    category = "hardware"
    failure_value = CONTRAINDICATED_HW

    def expected(self) -> str:
        return _none_of(self.products) if self.deny else _one_of(self.products)

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        listed = claims.product in self.products
        return _verdict(listed != self.deny), claims.product or "absent"


@dataclass(frozen=True)
class SignerIn(Check):
    rule: str
    signers: tuple[str, ...]
    category = "hardware"
    failure_value = CONTRAINDICATED_HW

    def expected(self) -> str:
        return _one_of(self.signers)

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        return _verdict(claims.signer in self.signers), claims.signer or "absent"


@dataclass(frozen=True)
class MinTcb(Check):
    """The REPORTED_TCB component is at least ``minimum``. N/A when the
    product has no such component (e.g. ``fmc`` before Turin)."""

    rule: str
    component: str
    minimum: int
    category = "hardware"
    failure_value = UNSAFE_HW

    def expected(self) -> str:
        return f">= {self.minimum}"

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        tcb = dict(claims.tcb)
        if self.component not in tcb:
            return Verdict.NA, f"no {self.component} component in the {claims.product} TCB"
        return _verdict(tcb[self.component] >= self.minimum), str(tcb[self.component])


def parse_version(text: str) -> tuple[int, ...] | None:
    if not re.fullmatch(r"\d+(\.\d+){0,3}", text):
        return None
    return tuple(int(p) for p in text.split("."))


@dataclass(frozen=True)
class MinFirmware(Check):
    """claims.firmware (SNP: major.minor.build of the running firmware) is at
    least ``minimum``, compared part by part (missing parts count as 0)."""

    rule: str
    minimum: tuple[int, ...]
    category = "hardware"
    failure_value = UNSAFE_HW

    def expected(self) -> str:
        return ">= " + ".".join(map(str, self.minimum))

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        actual = parse_version(claims.firmware)
        if actual is None:
            return Verdict.FAIL, f"{claims.firmware or 'absent'} (not a version number)"
        width = max(len(actual), len(self.minimum))
        padded = actual + (0,) * (width - len(actual))
        minimum = self.minimum + (0,) * (width - len(self.minimum))
        return _verdict(padded >= minimum), claims.firmware


_BYTES_CLAIMS = {"measurement", "host_data", "chip_id"}


@dataclass(frozen=True)
class BytesIn(Check):
    """A byte-string claim (``measurement``, ``host_data`` or ``chip_id``)
    equals one of ``values``."""

    rule: str
    claim: str
    values: tuple[bytes, ...]
    category: str = "executables"
    failure_value: int = UNRECOGNIZED_RT

    def __post_init__(self) -> None:
        if self.claim not in _BYTES_CLAIMS:
            raise ValueError(f"BytesIn cannot check {self.claim!r}")

    def expected(self) -> str:
        return _one_of(v.hex() for v in self.values)

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        value: bytes = getattr(claims, self.claim)
        return _verdict(value in self.values), value.hex() or "absent"


@dataclass(frozen=True)
class RootIn(Check):
    """The root the evidence's certificate chain ends in (its
    ``root_fingerprint``: SHA-256 of the root certificate's DER) is one of
    ``values``. Written ``[sim] root_sha256``: it names the sim chip a
    deployer trusts, so that a sim root handed over by a host is refused
    unless it is that one."""

    rule: str
    values: tuple[bytes, ...]
    category = "hardware"
    failure_value = UNRECOGNIZED_HW

    def expected(self) -> str:
        return _one_of(v.hex() for v in self.values)

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        actual = claims.root_fingerprint.lower()
        return _verdict(actual in {v.hex() for v in self.values}), actual or "absent"


@dataclass(frozen=True)
class RegisterIn(Check):
    """A named measurement register (TDX mrtd/rtmr0-3/mrseam/mrsignerseam,
    SGX mrenclave/mrsigner) equals one of ``values``."""

    rule: str
    name: str  # of the register
    values: tuple[bytes, ...]
    category = "executables"
    failure_value = UNRECOGNIZED_RT

    def expected(self) -> str:
        return _one_of(v.hex() for v in self.values)

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        registers = dict(claims.registers)
        if self.name not in registers:
            return Verdict.FAIL, f"absent (the claims carry no {self.name})"
        value = registers[self.name]
        return _verdict(value in self.values), value.hex()


@dataclass(frozen=True)
class VmplIn(Check):
    """The SNP VMPL the report was requested from is one of ``vmpls``."""

    rule: str
    vmpls: tuple[int, ...]
    category = "configuration"
    failure_value = UNSAFE_CONFIG

    def expected(self) -> str:
        return _one_of(map(str, self.vmpls))

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        if claims.vmpl is None:
            return Verdict.FAIL, "absent (the claims carry no VMPL)"
        return _verdict(claims.vmpl in self.vmpls), str(claims.vmpl)


@dataclass(frozen=True)
class GuestPolicyFlag(Check):
    """A launch-policy / attribute bit is set (``required`` True) or clear:
    SNP guest policy (``table`` "snp"), TDX TD attributes ("tdx") or SGX
    enclave attributes ("sgx"); see :data:`FLAG_TABLES`."""

    rule: str
    flag: str
    required: bool
    table: str = "snp"
    category = "configuration"

    @property
    def failure_value(self) -> int:  # type: ignore[override]
        return UNSUPPORTABLE_CONFIG if self.flag == "debug" else UNSAFE_CONFIG

    def _bit(self, state: bool) -> str:
        what, bits = FLAG_TABLES[self.table]
        bit, name = bits[self.flag]
        return f"{what} bit {bit} ({name}) {'set' if state else 'clear'}"

    def expected(self) -> str:
        return self._bit(self.required)

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        flags = dict(claims.policy_flags)
        if self.flag not in flags:
            what = FLAG_TABLES[self.table][0]
            return Verdict.FAIL, f"absent (the claims carry no {what} flag {self.flag})"
        return _verdict(flags[self.flag] == self.required), self._bit(flags[self.flag])


@dataclass(frozen=True)
class FmspcIn(Check):
    """Intel FMSPC (platform family/model/stepping/config, 6 bytes) is
    (``deny`` False) or is not (``deny`` True) one of ``values`` (lower-case
    hex)."""

    rule: str
    values: tuple[str, ...]
    deny: bool = False
    category = "hardware"
    failure_value = CONTRAINDICATED_HW

    def expected(self) -> str:
        return _none_of(self.values) if self.deny else _one_of(self.values)

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        if not claims.fmspc:
            return Verdict.FAIL, "absent (the claims carry no FMSPC)"
        fmspc = claims.fmspc.lower()
        return _verdict((fmspc in self.values) != self.deny), fmspc


@dataclass(frozen=True)
class TcbStatusIn(Check):
    """Intel TCB status (from TCB info matching) is one of ``statuses``."""

    rule: str
    statuses: tuple[str, ...]
    category = "hardware"
    failure_value = UNSAFE_HW

    def expected(self) -> str:
        return _one_of(self.statuses)

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        if claims.tcb_status is None:
            return Verdict.FAIL, "absent (the claims carry no Intel TCB status)"
        return _verdict(claims.tcb_status in self.statuses), claims.tcb_status


@dataclass(frozen=True)
class AdvisoriesDenied(Check):
    """None of the Intel security advisories that apply to the platform's
    TCB level is in ``advisories``."""

    rule: str
    advisories: tuple[str, ...]
    category = "hardware"
    failure_value = UNSAFE_HW

    def expected(self) -> str:
        return _none_of(self.advisories)

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        present = [a.upper() for a in claims.advisory_ids]
        hits = [a for a in present if a in self.advisories]
        if not present:
            return Verdict.PASS, "no advisories"
        if hits:
            return Verdict.FAIL, ", ".join(hits) + (
                f" (of {', '.join(present)})" if len(hits) < len(present) else ""
            )
        return Verdict.PASS, ", ".join(present)


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds}s"


@dataclass(frozen=True)
class MaxAge(Check):
    """The claims were verified at most ``seconds`` before the evaluation
    time (and not after it)."""

    rule: str
    seconds: int

    def expected(self) -> str:
        return f"verified at most {human_duration(self.seconds)} before evaluation"

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        age = (ctx.at - claims.verified_at).total_seconds()
        when = f"verified {claims.verified_at.isoformat()}"
        if age < 0:
            return Verdict.FAIL, f"{when}, after the evaluation time {ctx.at.isoformat()}"
        return _verdict(age <= self.seconds), f"{when}, {human_duration(age)} before {ctx.at.isoformat()}"


@dataclass(frozen=True)
class MaxCollateralAge(Check):
    """The collateral the verification used was issued at most ``seconds``
    before the evaluation time: the claims' ``collateral_issued`` (the
    OLDEST issue date among TCB info, QE identity and CRLs applied). Claims
    without collateral dates (an SNP report verified without a CRL, a sim
    report) fail: their collateral's age is unknown."""

    rule: str
    seconds: int
    category = "hardware"
    failure_value = UNSAFE_HW

    def expected(self) -> str:
        return f"collateral issued at most {human_duration(self.seconds)} before evaluation"

    def judge(self, claims: Claims, ctx: Context) -> tuple[Verdict, str]:
        issued = claims.collateral_issued
        if issued is None:
            return Verdict.FAIL, "absent (no dated collateral was used: no CRL, TCB info or QE identity)"
        age = (ctx.at - issued).total_seconds()
        when = f"oldest collateral issued {issued.isoformat()}"
        if age < 0:
            return Verdict.FAIL, f"{when}, after the evaluation time {ctx.at.isoformat()}"
        return _verdict(age <= self.seconds), f"{when}, {human_duration(age)} before {ctx.at.isoformat()}"


# --- combinators ------------------------------------------------------------------


def conjunction(verdicts: Iterable[Verdict]) -> Verdict:
    """All-of over FAIL < N/A < PASS: the minimum (PASS for none)."""
    return min(verdicts, key=lambda v: v.rank, default=Verdict.PASS)


def disjunction(verdicts: Iterable[Verdict]) -> Verdict:
    """Any-of: PASS if any passes, else FAIL if any fails, else N/A."""
    seen = set(verdicts)
    if Verdict.PASS in seen:
        return Verdict.PASS
    if Verdict.FAIL in seen:
        return Verdict.FAIL
    return Verdict.NA


def _rules(n: int) -> str:
    return "1 rule" if n == 1 else f"{n} rules"


def _failed(outcomes: Iterable[Outcome]) -> list[str]:
    return [o.summary for o in outcomes if o.verdict is Verdict.FAIL]


@dataclass(frozen=True)
class AllOf(Rule):
    rule: str
    rules: tuple[Rule, ...]

    def walk(self) -> Iterable[Rule]:
        yield self
        for r in self.rules:
            yield from r.walk()

    def evaluate(self, claims: Claims, ctx: Context, depth: int = 0, positive: bool = True) -> Outcome:
        outcomes = [r.evaluate(claims, ctx, depth + 1, positive) for r in self.rules]
        verdict = conjunction(o.verdict for o in outcomes)
        failed = _failed(outcomes)
        if verdict is Verdict.FAIL:
            actual = f"{len(failed)} of {len(outcomes)} failed"
        elif verdict is Verdict.NA:
            actual = "not applicable to this evidence"
        else:
            actual = "all passed"
        row = Row(
            self.rule,
            f"all of {_rules(len(outcomes))}",
            actual,
            verdict,
            depth,
            positive=positive,
            container=True,
        )
        summary = "; ".join(failed) if failed else f"{self.rule}: {actual}"
        return Outcome(verdict, (row, *(r for o in outcomes for r in o.rows)), summary)


@dataclass(frozen=True)
class AnyOf(Rule):
    """At least one alternative passes. Alternatives' rows are not
    "positive": one failing alternative does not decide the outcome."""

    rule: str
    alternatives: tuple[Rule, ...]

    def walk(self) -> Iterable[Rule]:
        yield self
        for r in self.alternatives:
            yield from r.walk()

    def evaluate(self, claims: Claims, ctx: Context, depth: int = 0, positive: bool = True) -> Outcome:
        outcomes = [r.evaluate(claims, ctx, depth + 1, False) for r in self.alternatives]
        verdict = disjunction(o.verdict for o in outcomes)
        because = ""
        if verdict is Verdict.PASS:
            passed = [
                r.rule for r, o in zip(self.alternatives, outcomes, strict=True) if o.verdict is Verdict.PASS
            ]
            actual = "passed: " + ", ".join(passed)
        elif verdict is Verdict.FAIL:
            actual = "no alternative passed"
            because = " | ".join(_failed(outcomes))
        else:
            actual = "no alternative applies to this evidence"
        expected = f"at least one of {len(outcomes)} alternatives"
        row = Row(self.rule, expected, actual, verdict, depth, positive=positive, because=because)
        rows = (row, *(r for o in outcomes for r in o.rows))
        return Outcome(verdict, rows, row.sentence())


@dataclass(frozen=True)
class Not(Rule):
    """The rules under it must not all pass (N/A stays N/A)."""

    rule: str
    rules: tuple[Rule, ...]

    def walk(self) -> Iterable[Rule]:
        yield self
        for r in self.rules:
            yield from r.walk()

    def evaluate(self, claims: Claims, ctx: Context, depth: int = 0, positive: bool = True) -> Outcome:
        outcomes = [r.evaluate(claims, ctx, depth + 1, False) for r in self.rules]
        inner = conjunction(o.verdict for o in outcomes)
        verdict = {Verdict.PASS: Verdict.FAIL, Verdict.FAIL: Verdict.PASS, Verdict.NA: Verdict.NA}[inner]
        because = ""
        if inner is Verdict.PASS:
            actual = "they all passed"
            because = "; ".join(
                r.sentence()
                for o in outcomes
                for r in o.rows
                if not r.container and r.verdict is Verdict.PASS
            )
        elif inner is Verdict.FAIL:
            actual = "they did not all pass"
        else:
            actual = "not applicable to this evidence"
        expected = f"not all of the {_rules(len(outcomes))} below pass"
        row = Row(self.rule, expected, actual, verdict, depth, positive=positive, because=because)
        rows = (row, *(r for o in outcomes for r in o.rows))
        return Outcome(verdict, rows, row.sentence())


@dataclass(frozen=True)
class OnPlatform(Rule):
    """Rules for one platform's evidence (a ``[snp]``/``[sim]``/``[tdx]``/
    ``[sgx]`` table): N/A for other platforms, else all-of."""

    rule: str
    platform: str
    rules: tuple[Rule, ...]

    def walk(self) -> Iterable[Rule]:
        yield self
        for r in self.rules:
            yield from r.walk()

    def evaluate(self, claims: Claims, ctx: Context, depth: int = 0, positive: bool = True) -> Outcome:
        expected = f"{self.platform} evidence meets {_rules(len(self.rules))}"
        if claims.platform != self.platform:
            actual = f"{claims.platform} evidence: not applicable"
            row = Row(self.rule, expected, actual, Verdict.NA, depth, positive=positive, container=True)
            return Outcome(Verdict.NA, (row,), f"{self.rule}: {actual}")
        outcomes = [r.evaluate(claims, ctx, depth + 1, positive) for r in self.rules]
        verdict = conjunction(o.verdict for o in outcomes)
        failed = _failed(outcomes)
        if failed:
            actual = f"{len(failed)} of {len(outcomes)} failed"
        elif verdict is Verdict.NA:
            actual = "not applicable to this evidence"
        else:
            actual = "all passed"
        row = Row(self.rule, expected, actual, verdict, depth, positive=positive, container=True)
        summary = "; ".join(failed) if failed else f"{self.rule}: {actual}"
        return Outcome(verdict, (row, *(r for o in outcomes for r in o.rows)), summary)
