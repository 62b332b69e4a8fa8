"""Placement (stockade.client.placement) as a pure function over fleet
entries: no etcd, a seeded random source."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from stockade.client.placement import (
    NOMINAL_MAX_KEEPS,
    Attempt,
    Candidate,
    Constraints,
    final_error,
    load_of,
    no_candidate_error,
    plan_placement,
    retryable,
)
from stockade.errors import (
    ChannelTampered,
    FleetError,
    KeepDied,
    ManagerError,
    PolicyRejected,
    UsageError,
    VerificationFailed,
    WorkloadRejected,
)
from stockade.fleet.record import FleetEntry, HostRecord, Offer

MIB = 1024 * 1024
SIM = Offer("sim", "sim", "ab" * 48)
SIM_TDX = Offer("sim-tdx", "sim-tdx")
TDX = Offer("tdx", "tdx")
DEV = frozenset({"snp", "tdx", "sgx", "sim", "sim-tdx"})
DEFAULT = frozenset({"snp", "tdx", "sgx"})


def entry(host_id: str, drained: bool = False, **kw: object) -> FleetEntry:
    base: dict[str, object] = {
        "id": host_id,
        "api_url": f"http://127.0.0.1:{8000 + len(host_id)}",
        "version": "0.1.0",
        "offers": (SIM,),
        "max_keeps": 4,
        "free_memory_mib": 4096,
    }
    record = HostRecord(**{**base, **kw})  # type: ignore[arg-type]
    return FleetEntry(f"/stockade/v1/hosts/{host_id}", record, "", drained, 7)


def constraints(**kw: object) -> Constraints:
    base: dict[str, object] = {
        "platforms": DEV,
        "backends": frozenset({"sim", "sim-snp", "sim-tdx"}),
        "memory_bytes": 256 * MIB,
    }
    return Constraints(**{**base, **kw})  # type: ignore[arg-type]


def ids(candidates: tuple[Candidate, ...]) -> list[str]:
    return [c.host for c in candidates]


def test_least_loaded_first() -> None:
    entries = [entry("a", keeps_running=3), entry("b", keeps_running=1), entry("c", keeps_running=2)]
    placement = plan_placement(entries, constraints(), random.Random(1))
    assert ids(placement.candidates) == ["b", "c", "a"]
    assert placement.excluded == ()
    assert placement.considered == 3
    assert [c.load for c in placement.candidates] == [0.25, 0.5, 0.75]


def test_load_is_relative_to_capacity() -> None:
    # 3 of 10 is less loaded than 1 of 2.
    entries = [entry("small", keeps_running=1, max_keeps=2), entry("big", keeps_running=3, max_keeps=10)]
    assert ids(plan_placement(entries, constraints(), random.Random(0)).candidates) == ["big", "small"]
    assert load_of(entry("u", max_keeps=None, keeps_running=4).record) == 4 / NOMINAL_MAX_KEEPS  # type: ignore[arg-type]


def test_ties_are_broken_randomly() -> None:
    entries = [entry(name) for name in ("a", "b", "c")]
    firsts = Counter(
        plan_placement(entries, constraints(), random.Random(seed)).candidates[0].host for seed in range(300)
    )
    assert set(firsts) == {"a", "b", "c"}
    assert min(firsts.values()) > 60  # roughly even, not always the first key
    # The same seed gives the same order (the caller owns the randomness).
    one = plan_placement(entries, constraints(), random.Random(5))
    assert ids(one.candidates) == ids(plan_placement(entries, constraints(), random.Random(5)).candidates)


def test_drained_and_malformed_entries_are_excluded_with_a_reason() -> None:
    bad = FleetEntry("/stockade/v1/hosts/x", None, "malformed record: field 'offers' is malformed")
    placement = plan_placement([entry("a", drained=True), bad, entry("b")], constraints(), random.Random(0))
    assert ids(placement.candidates) == ["b"]
    assert placement.excluded == (("a", "drained"), ("x", "malformed record: field 'offers' is malformed"))


def test_platform_the_policy_refuses_is_never_chosen() -> None:
    entries = [entry("sim-only"), entry("tdx", offers=(TDX,))]
    placement = plan_placement(
        entries, constraints(platforms=DEFAULT, backends=frozenset({"sim", "tdx"})), random.Random(0)
    )
    assert ids(placement.candidates) == ["tdx"]
    ((host, reason),) = placement.excluded
    assert host == "sim-only"
    assert "offers no platform the policy accepts (offers sim; the policy accepts sgx, snp, tdx)" in reason


def test_backend_this_deploy_cannot_use() -> None:
    placement = plan_placement([entry("a", offers=(Offer("nil", "nil"),))], constraints(), random.Random(0))
    assert placement.candidates == ()
    assert "offers no backend this deploy can use (offers nil" in placement.excluded[0][1]


def test_capacity_keeps_and_memory() -> None:
    entries = [
        entry("full", keeps_running=4, max_keeps=4),
        entry("zero", max_keeps=0),
        entry("small", free_memory_mib=100),
        entry("ok", free_memory_mib=256),
        entry("unbounded", max_keeps=None, keeps_running=40),
    ]
    placement = plan_placement(entries, constraints(), random.Random(0))
    assert ids(placement.candidates) == ["ok", "unbounded"]
    reasons = dict(placement.excluded)
    assert reasons["full"] == "at capacity (4/4 Keeps)"
    assert reasons["zero"] == "at capacity (0/0 Keeps)"
    assert reasons["small"] == "free memory 100 MiB is below the workload's memory limit 256 MiB"


def test_prefer_platform_is_a_preference_not_a_filter() -> None:
    entries = [
        entry("snp-ish", keeps_running=0),
        entry("tdx-ish", keeps_running=3, offers=(SIM, SIM_TDX)),
    ]
    placement = plan_placement(entries, constraints(prefer_platform="sim-tdx"), random.Random(0))
    assert ids(placement.candidates) == ["tdx-ish", "snp-ish"]
    first, second = placement.candidates
    assert first.preferred and first.offer == SIM_TDX  # the preferred offer of that host
    assert not second.preferred and second.offer == SIM
    # Without the preference: the host's first acceptable offer, least loaded first.
    plain = plan_placement(entries, constraints(), random.Random(0))
    assert ids(plain.candidates) == ["snp-ish", "tdx-ish"]
    assert plain.candidates[1].offer == SIM


def test_labels_filter() -> None:
    entries = [
        entry("a", labels={"zone": "eu", "disk": "ssd"}),
        entry("b", labels={"zone": "us"}),
        entry("c"),
    ]
    placement = plan_placement(
        entries, constraints(labels=(("zone", "eu"), ("disk", "ssd"))), random.Random(0)
    )
    assert ids(placement.candidates) == ["a"]
    assert dict(placement.excluded) == {"b": "label zone=us, not eu", "c": "no label zone"}


def test_placement_json() -> None:
    placement = plan_placement([entry("a"), entry("b", drained=True)], constraints(), random.Random(0))
    doc = placement.to_json()
    assert doc["considered"] == 2
    assert doc["excluded"] == [{"host": "b", "reason": "drained"}]
    assert doc["candidates"][0]["host"] == "a" and doc["candidates"][0]["backend"] == "sim"


def test_no_candidate_errors_name_the_reasons() -> None:
    empty = plan_placement([], constraints(), random.Random(0))
    assert "has no registered host" in no_candidate_error("http://127.0.0.1:1", empty).detail
    none = plan_placement([entry("a", drained=True)], constraints(), random.Random(0))
    err = no_candidate_error("http://127.0.0.1:1", none)
    assert isinstance(err, FleetError) and err.exit_code == 122
    assert "a: drained" in err.detail


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ManagerError("cannot reach"), True),
        (ManagerError("quota", status=429), True),
        (KeepDied("closed"), True),
        (VerificationFailed("bad signature"), True),
        (PolicyRejected("platform sim"), True),
        (ChannelTampered("bad mac"), True),
        (UsageError("--sim-root"), False),
        (WorkloadRejected("not wasm"), False),
    ],
)
def test_what_is_retried_before_release(error: Exception, expected: bool) -> None:
    assert retryable(error) is expected  # type: ignore[arg-type]


def _attempts(*errors: Exception) -> list[Attempt]:
    cands = plan_placement([entry(n) for n in "abc"], constraints(), random.Random(0)).candidates
    return [Attempt(c, e) for c, e in zip(cands, errors, strict=False)]  # type: ignore[arg-type]


def test_final_error_placement_reasons_only_is_fleet_error() -> None:
    err = final_error(_attempts(ManagerError("cannot reach x"), KeepDied("closed early")), remaining=2)
    assert type(err) is FleetError and err.exit_code == 122
    assert "cannot reach x" in err.detail and "closed early" in err.detail
    assert "2 tried, 2 more candidate(s) not tried" in err.detail


def test_final_error_keeps_the_meaning_of_an_attestation_failure() -> None:
    err = final_error(
        _attempts(VerificationFailed("bad sig"), ManagerError("quota"), PolicyRejected("sim refused")),
        remaining=0,
    )
    assert type(err) is PolicyRejected and err.exit_code == 112  # the last trust failure
    assert "bad sig" in err.detail and "quota" in err.detail and "sim refused" in err.detail


class _Refusal(PolicyRejected):
    """Like policy.model.RefusedByPolicy: a subclass with other arguments."""

    def __init__(self, rows: list[str]) -> None:
        super().__init__("; ".join(rows))


def test_final_error_of_a_subclass_is_its_base_class() -> None:
    err = final_error(_attempts(_Refusal(["platform: sim not allowed"])), remaining=0)
    assert type(err) is PolicyRejected and "platform: sim not allowed" in err.detail


# -- the command line (no etcd needed) -----------------------------------------


def test_fleet_and_host_are_mutually_exclusive(stockade, tmp_path) -> None:  # type: ignore[no-untyped-def]
    module = tmp_path / "m.wasm"
    module.write_bytes(b"\0asm\1\0\0\0")
    proc = stockade("deploy", "--fleet", "etcd://127.0.0.1:1", "--host", "http://127.0.0.1:1", str(module))
    assert proc.returncode == 2
    assert b"--host and --fleet are mutually exclusive" in proc.stderr
    proc = stockade("deploy", str(module), env={"STOCKADE_HOST": ""})
    assert proc.returncode == 2 and b"deploy needs --host URL" in proc.stderr
    proc = stockade(
        "deploy",
        "--host",
        "http://127.0.0.1:1",
        "--host-label",
        "a=b",
        "--prefer-platform",
        "sim",
        str(module),
    )
    assert proc.returncode == 2
    assert b"--prefer-platform, --host-label only go with --fleet" in proc.stderr
    proc = stockade("deploy", "--fleet", "etcd://127.0.0.1:1", "--host-label", "novalue", str(module))
    assert proc.returncode == 2 and b"--host-label 'novalue': expected KEY=VALUE" in proc.stderr


def test_fleet_unreachable_is_a_fleet_error_naming_etcd(stockade, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    module = tmp_path / "m.wasm"
    module.write_bytes(b"\0asm\1\0\0\0")
    token = tmp_path / "token"
    token.write_text("stk_x\n")
    proc = stockade(
        "deploy",
        "--fleet",
        f"etcd://127.0.0.1:{port}",
        "--token-file",
        str(token),
        "--allow-sim",
        "--json",
        str(module),
    )
    assert proc.returncode == 122, proc.stderr
    import json

    doc = json.loads(proc.stdout)
    assert doc["error"]["type"] == "fleet"
    assert f"etcd cannot be reached to read the fleet (http://127.0.0.1:{port}" in doc["error"]["detail"]


# -- the failover loop (stockade.client.failover), with fake attempts ----------


def _candidates(n: int) -> tuple[Candidate, ...]:
    return plan_placement(
        [entry(f"h{i}", keeps_running=i) for i in range(n)], constraints(), random.Random(0)
    ).candidates


def test_failover_moves_on_after_a_failure_before_release() -> None:
    from stockade.client.failover import run_with_failover

    calls: list[str] = []

    def run(candidate, mark, created):  # type: ignore[no-untyped-def]
        calls.append(candidate.host)
        created.append(f"keep-{candidate.host}")
        if candidate.host == "h0":
            raise VerificationFailed("signed by another chip")
        mark.mark()
        return f"keep-{candidate.host}", "result"

    attempts: list[Attempt] = []
    chosen, result = run_with_failover(_candidates(3), 3, run, attempts)
    assert (chosen.host, result, calls) == ("h1", "result", ["h0", "h1"])
    assert [(a.candidate.host, a.error is None, a.keep_id, a.released) for a in attempts] == [
        ("h0", False, "keep-h0", False),
        ("h1", True, "keep-h1", True),
    ]


def test_failover_never_retries_after_the_release() -> None:
    from stockade.client.failover import run_with_failover

    calls: list[str] = []

    def run(candidate, mark, created):  # type: ignore[no-untyped-def]
        calls.append(candidate.host)
        mark.mark()  # the release began
        raise KeepDied("the Keep closed the connection before reporting the workload's exit status")

    attempts: list[Attempt] = []
    with pytest.raises(KeepDied):
        run_with_failover(_candidates(3), 3, run, attempts)
    assert calls == ["h0"] and attempts[0].released


def test_failover_stops_at_a_failure_every_host_would_have() -> None:
    from stockade.client.failover import run_with_failover

    calls: list[str] = []

    def run(candidate, mark, created):  # type: ignore[no-untyped-def]
        calls.append(candidate.host)
        raise WorkloadRejected("no exported _start")

    with pytest.raises(WorkloadRejected):
        run_with_failover(_candidates(3), 3, run, [])
    assert calls == ["h0"]


def test_failover_is_bounded_and_collects_every_reason() -> None:
    from stockade.client.failover import run_with_failover

    def run(candidate, mark, created):  # type: ignore[no-untyped-def]
        raise ManagerError(f"cannot reach {candidate.host}")

    attempts: list[Attempt] = []
    with pytest.raises(FleetError) as info:
        run_with_failover(_candidates(4), 2, run, attempts)
    assert len(attempts) == 2
    assert "cannot reach h0" in info.value.detail and "cannot reach h1" in info.value.detail
    assert "2 more candidate(s) not tried" in info.value.detail


def test_manager_for_refuses_plain_http_off_loopback_as_that_hosts_failure() -> None:
    from stockade.client.failover import manager_for

    with pytest.raises(ManagerError, match="not tried: refusing to send the API token over plain http"):
        manager_for("http://192.0.2.1:8470", "stk_x", None, False)
