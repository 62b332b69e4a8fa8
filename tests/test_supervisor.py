"""The keep manager's supervisor (stockade.host.manager.supervisor) without
HTTP: life cycle and how each Keep's end is recorded, quota, loader
failure, the idle timer, the one client per Keep, the host watchdog's
decisions, staging, and shutdown, driven by direct calls on stand-in Keep
processes (a sleeping Python child on a socketpair, loopback only)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from stockade.host.loader import KeepHandle
from stockade.host.manager import supervisor as supmod
from stockade.host.manager.problems import problem_of
from stockade.host.manager.supervisor import (
    AlreadyConnected,
    KeepNotRunning,
    LoaderFailed,
    NoSimChip,
    NoStagingArea,
    PackageTooLarge,
    QuotaExceeded,
    StagingFailed,
    Supervisor,
    SupervisorError,
    UnknownKeep,
)
from stockade.host.registry import Limits
from stockade.host.tokens import TokenEntry, Tokens
from stockade.wire.staging import STAGED_NAME

ALICE = TokenEntry("alice", hashlib.sha256(b"a").digest(), 2)
BOB = TokenEntry("bob", hashlib.sha256(b"b").digest(), 2)
SLEEP = "import time; time.sleep(60)"


class StandIns:
    """A ``starter`` whose Keeps run ``code`` (default: sleep) and record
    what they were; every process is killed at the end of the test."""

    def __init__(self, code: str = SLEEP, scratch: bool = True) -> None:
        self.code = code
        self.scratch = scratch
        self.handles: list[KeepHandle] = []

    def __call__(self, backend: str, state_dir: Path, **kw: Any) -> KeepHandle:
        mine, theirs = socket.socketpair()
        # The child may write to its end (argv[1]) to say it is ready.
        proc = subprocess.Popen(
            [sys.executable, "-c", self.code, str(theirs.fileno())], pass_fds=(theirs.fileno(),)
        )
        theirs.close()
        scratch = Path(tempfile.mkdtemp(prefix="keep-", dir=state_dir)) if self.scratch else None
        log = state_dir / "logs" / f"keep-{kw['keep_id']}.log"
        handle = KeepHandle(kw["keep_id"], backend, mine, proc, None, bytes(48), log, scratch)
        self.handles.append(handle)
        return handle

    def cleanup(self) -> None:
        for h in self.handles:
            if h.keep.poll() is None:
                h.keep.kill()
            h.keep.wait(10)
            h.conn.close()


def run(
    tmp_path: Path,
    scenario: Callable[[Supervisor], Awaitable[None]],
    starter: Callable[..., KeepHandle] | None = None,
    **kw: Any,
) -> None:
    """Start a supervisor on ``tmp_path``, run ``scenario``, stop it."""
    stand_ins = starter if starter is not None else StandIns()
    kw.setdefault("kill_grace", 2.0)

    async def main() -> None:
        sup = Supervisor(tmp_path / "state", Tokens((ALICE, BOB)), starter=stand_ins, **kw)
        await sup.start()
        try:
            await asyncio.wait_for(scenario(sup), 60)
        finally:
            await sup.stop()

    try:
        asyncio.run(main())
    finally:
        if isinstance(stand_ins, StandIns):
            stand_ins.cleanup()


async def ended(sup: Supervisor, keep_id: str, timeout: float = 15) -> Any:
    rec, timed_out = await sup.wait(await sup.record_of(keep_id, ALICE.token_id), timeout)
    assert not timed_out, rec
    return rec


# -- life cycle


def test_create_kill_records_killed_and_cleans_up(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        assert rec.state == "running" and rec.pid is not None and rec.owner == "alice"
        live = sup.live[rec.keep_id]
        assert sup.measurements[rec.keep_id] == bytes(48)
        scratch = live.handle.scratch
        assert scratch is not None and scratch.is_dir()
        done = await sup.kill(rec)
        assert done.state == "killed" and done.detail == "killed on request"
        assert done.exit_status == -signal.SIGTERM
        assert rec.keep_id not in sup.live and live.done.is_set()
        assert live.handle.conn.fileno() == -1  # closed: nobody relays it
        assert not scratch.exists()

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    ("code", "state", "detail"),
    [
        ("pass", "exited", "Keep process exited with status 0"),
        ("raise SystemExit(3)", "failed", "Keep process exited with status 3"),
        ("import os; os.kill(os.getpid(), 9)", "failed", "Keep process killed by signal SIGKILL"),
    ],
)
def test_the_end_of_a_keep_is_recorded_as_it_happened(
    tmp_path: Path, code: str, state: str, detail: str
) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        done = await ended(sup, rec.keep_id)
        assert (done.state, done.detail) == (state, detail)
        assert done.ended_at is not None

    run(tmp_path, scenario, StandIns(code))


def test_wait_times_out_on_a_running_keep(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        again, timed_out = await sup.wait(rec, 0.2)
        assert timed_out and again.state == "running"

    run(tmp_path, scenario)


def test_begin_shutdown_answers_open_waits(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, sup.begin_shutdown)
        t0 = loop.time()
        _, timed_out = await sup.wait(rec, 30)
        assert timed_out and loop.time() - t0 < 10

    run(tmp_path, scenario)


def test_stop_kills_live_keeps_and_records_why(tmp_path: Path) -> None:
    stand_ins = StandIns()
    ids: list[str] = []

    async def scenario(sup: Supervisor) -> None:
        ids.append((await sup.create(ALICE, "sim", Limits())).keep_id)

    run(tmp_path, scenario, stand_ins)
    assert stand_ins.handles[0].keep.poll() == -signal.SIGKILL

    async def check(sup: Supervisor) -> None:  # a new supervisor reads the registry
        rec = await sup.record_of(ids[0], ALICE.token_id)
        assert (rec.state, rec.detail) == ("killed", "killed: the manager stopped")

    run(tmp_path, check)


# -- refusals


def test_quota_is_per_owner_and_counts_refusals(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        first = await sup.create(ALICE, "sim", Limits())
        await sup.create(ALICE, "sim", Limits())
        with pytest.raises(QuotaExceeded, match="may run 2 Keep"):
            await sup.create(ALICE, "sim", Limits())
        await sup.create(BOB, "sim", Limits())  # another owner's quota
        assert sup.metrics.creates.labels("quota-exceeded")._value.get() == 1
        await sup.kill(first)
        await sup.create(ALICE, "sim", Limits())  # a final Keep frees its slot

    run(tmp_path, scenario)


def test_loader_failure_is_recorded_failed(tmp_path: Path) -> None:
    def broken(backend: str, state_dir: Path, **kw: Any) -> KeepHandle:
        raise RuntimeError("no /dev/sev")

    async def scenario(sup: Supervisor) -> None:
        with pytest.raises(LoaderFailed) as info:
            await sup.create(ALICE, "sim", Limits())
        assert "/dev/sev" not in info.value.detail  # the loader's text stays in the log
        (rec,) = await sup.records(ALICE.token_id)
        assert (rec.state, rec.detail) == ("failed", "loader failed: RuntimeError")
        assert not sup.live

    run(tmp_path, scenario, broken)


def test_another_owners_keep_is_unknown(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        for keep_id, owner in ((rec.keep_id, BOB.token_id), ("no-such-keep", "alice"), ("../x", "alice")):
            with pytest.raises(UnknownKeep):
                await sup.record_of(keep_id, owner)
            with pytest.raises(UnknownKeep):
                await sup.claim(keep_id, owner)
        assert await sup.records(BOB.token_id) == []

    run(tmp_path, scenario)


def test_no_sim_chip(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        with pytest.raises(NoSimChip):
            await sup.sim_root()
        chip = sup.state_dir / "sim" / "chip"
        chip.mkdir(parents=True)
        (chip / "ark.der").write_bytes(b"\x30\x00")
        assert await sup.sim_root() == b"\x30\x00"

    run(tmp_path, scenario)


def test_every_refusal_has_a_problem_answer() -> None:
    def subclasses(cls: type[SupervisorError]) -> set[type[SupervisorError]]:
        return {c for sub in cls.__subclasses__() for c in {sub, *subclasses(sub)}}

    found = subclasses(SupervisorError)
    assert len(found) >= 9
    statuses = {cls: problem_of(cls("x")).status for cls in found}
    assert statuses[UnknownKeep] == 404 and statuses[QuotaExceeded] == 429
    assert statuses[KeepNotRunning] == statuses[AlreadyConnected] == 409
    with pytest.raises(TypeError):
        problem_of(SupervisorError("a refusal without its answer"))


# -- the client, the idle timer and the watchdog


def test_one_client_per_keep(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        live = await sup.claim(rec.keep_id, ALICE.token_id)
        assert live.connected and live.relaying and live.idle_timer is None
        with pytest.raises(AlreadyConnected, match="has had its client"):
            await sup.claim(rec.keep_id, ALICE.token_id)
        sup.release(rec.keep_id, live)
        assert not live.relaying and live.handle.conn.fileno() != -1  # the Keep still runs
        with pytest.raises(AlreadyConnected):  # ever, not only while relaying
            await sup.claim(rec.keep_id, ALICE.token_id)
        await sup.kill(rec)
        with pytest.raises(KeepNotRunning, match="is killed"):
            await sup.claim(rec.keep_id, ALICE.token_id)

    run(tmp_path, scenario)


def test_a_keep_being_killed_refuses_its_client(tmp_path: Path) -> None:
    stubborn = (
        "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "os.write(int(sys.argv[1]), b'r'); time.sleep(60)"
    )

    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        conn = sup.live[rec.keep_id].handle.conn
        conn.settimeout(20)
        assert await asyncio.to_thread(conn.recv, 1) == b"r"  # SIGTERM is ignored from now on
        kill = asyncio.ensure_future(sup.kill(rec))
        await asyncio.sleep(0.2)
        with pytest.raises(KeepNotRunning, match="being killed"):
            await sup.claim(rec.keep_id, ALICE.token_id)
        with pytest.raises(KeepNotRunning):
            await sup.stage(rec.keep_id, ALICE.token_id, chunks([b"x"]))
        done = await kill
        assert done.state == "killed" and done.exit_status == -signal.SIGKILL

    run(tmp_path, scenario, StandIns(stubborn), kill_grace=1.0)


def test_idle_keep_is_killed(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        done = await ended(sup, rec.keep_id)
        assert (done.state, done.detail) == ("killed", "killed: no client connected within 0.3 s")

    run(tmp_path, scenario, idle_timeout=0.3)


def test_a_claimed_keep_is_not_idle(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        await sup.claim(rec.keep_id, ALICE.token_id)
        again, timed_out = await sup.wait(rec, 0.8)
        assert timed_out and again.state == "running"

    run(tmp_path, scenario, idle_timeout=0.3)


def test_no_idle_timeout_waits_forever(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        assert sup.live[rec.keep_id].idle_timer is None

    run(tmp_path, scenario, idle_timeout=0)


def test_watchdog_kills_an_overdue_keep_after_limit_plus_grace(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits(timeout_ms=200))
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.5)  # not armed before the client connects
        assert rec.keep_id in sup.live
        live = await sup.claim(rec.keep_id, ALICE.token_id)
        assert live.watchdog is not None
        t0 = loop.time()
        done = await ended(sup, rec.keep_id)
        assert 0.4 <= loop.time() - t0 < 10
        assert done.state == "killed"
        assert done.detail == "killed: still running 0.5 s after its client connected (host watchdog)"

    run(tmp_path, scenario, watchdog_grace=0.3)


def test_watchdog_is_not_armed_without_a_time_limit(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits(memory_bytes=1 << 30))
        live = await sup.claim(rec.keep_id, ALICE.token_id)
        assert live.watchdog is None

    run(tmp_path, scenario, watchdog_grace=0.1)


def test_watchdog_leaves_a_keep_that_ended_in_time(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits(timeout_ms=300))
        live = await sup.claim(rec.keep_id, ALICE.token_id)
        done = await ended(sup, rec.keep_id)
        assert done.state == "exited"
        assert live.watchdog is None  # cancelled with the Keep's end
        await asyncio.sleep(0.6)  # past limit + grace: nothing fires
        assert (await sup.record_of(rec.keep_id, ALICE.token_id)).detail == done.detail

    run(tmp_path, scenario, StandIns("import time; time.sleep(0.1)"), watchdog_grace=0.1)


def test_watchdog_does_not_override_an_earlier_kill_reason(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits(timeout_ms=1))
        await sup.claim(rec.keep_id, ALICE.token_id)
        done = await sup.kill(rec)
        assert done.detail == "killed on request"
        await asyncio.sleep(0.3)
        assert (await sup.record_of(rec.keep_id, ALICE.token_id)).detail == "killed on request"

    run(tmp_path, scenario, watchdog_grace=0.1)


# -- staging


async def chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_stage_then_last_complete_upload_wins(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        scratch = sup.live[rec.keep_id].handle.scratch
        assert scratch is not None
        assert await sup.stage(rec.keep_id, ALICE.token_id, chunks([b"ab", b"cd"]), 4) == 4
        assert (scratch / STAGED_NAME).read_bytes() == b"abcd"
        assert await sup.stage(rec.keep_id, ALICE.token_id, chunks([b"xyz"])) == 3
        assert (scratch / STAGED_NAME).read_bytes() == b"xyz"
        assert sorted(p.name for p in scratch.iterdir()) == [STAGED_NAME]
        await sup.claim(rec.keep_id, ALICE.token_id)
        with pytest.raises(AlreadyConnected, match="before connecting"):
            await sup.stage(rec.keep_id, ALICE.token_id, chunks([b"late"]))

    run(tmp_path, scenario)


def test_stage_refuses_too_large_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supmod, "MAX_STAGED", 8)

    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        scratch = sup.live[rec.keep_id].handle.scratch
        assert scratch is not None
        with pytest.raises(PackageTooLarge, match="at most 8 bytes"):
            await sup.stage(rec.keep_id, ALICE.token_id, chunks([b"x"]), 9)  # declared
        with pytest.raises(PackageTooLarge):
            await sup.stage(rec.keep_id, ALICE.token_id, chunks([b"12345", b"6789"]))  # streamed
        assert list(scratch.iterdir()) == []  # no partial file left
        assert await sup.stage(rec.keep_id, ALICE.token_id, chunks([b"12345678"])) == 8

    run(tmp_path, scenario)


def test_stage_needs_a_staging_area(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        with pytest.raises(NoStagingArea):
            await sup.stage(rec.keep_id, ALICE.token_id, chunks([b"x"]))

    run(tmp_path, scenario, StandIns(scratch=False))


def test_stage_on_an_ended_keep(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        await sup.kill(rec)
        with pytest.raises(KeepNotRunning, match="is killed"):
            await sup.stage(rec.keep_id, ALICE.token_id, chunks([b"x"]))

    run(tmp_path, scenario)


def test_a_keep_ending_during_an_upload_is_not_running(tmp_path: Path) -> None:
    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())

        async def killed_midway() -> AsyncIterator[bytes]:
            yield b"first"
            await sup.kill(rec)
            yield b"second"

        with pytest.raises(KeepNotRunning, match="ended during the upload"):
            await sup.stage(rec.keep_id, ALICE.token_id, killed_midway())

    run(tmp_path, scenario)


def test_a_full_disk_is_a_staging_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, os.strerror(28))

    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits())
        monkeypatch.setattr(os, "replace", no_space)  # restored after the test
        with pytest.raises(StagingFailed, match="cannot store it: No space left on device"):
            await sup.stage(rec.keep_id, ALICE.token_id, chunks([b"x"]))
        scratch = sup.live[rec.keep_id].handle.scratch
        assert scratch is not None and list(scratch.iterdir()) == []

    run(tmp_path, scenario)


def test_timer_decisions_when_they_fire_late(tmp_path: Path) -> None:
    """A timer that fires after its Keep was claimed, killed or replaced
    does nothing (the callbacks run on the loop, possibly late)."""

    async def scenario(sup: Supervisor) -> None:
        rec = await sup.create(ALICE, "sim", Limits(timeout_ms=1))
        live = await sup.claim(rec.keep_id, ALICE.token_id)
        sup._idle(rec.keep_id, live)  # the client came first
        assert not live.kill_requested
        other = await sup.create(ALICE, "sim", Limits())
        stale = sup.live.pop(other.keep_id)
        sup._idle(other.keep_id, stale)  # not (or no longer) this Keep's live entry
        sup._overdue(other.keep_id, stale, 1.0)
        assert not stale.kill_requested
        sup.live[other.keep_id] = stale
        live.kill_requested, live.kill_reason = True, "killed on request"
        sup._overdue(rec.keep_id, live, 1.0)  # an earlier kill keeps its reason
        assert live.kill_reason == "killed on request"
        live.kill_requested = False
        sup._overdue(rec.keep_id, live, 1.0)  # overdue: killed by the watchdog
        done = await ended(sup, rec.keep_id)
        assert done.detail == "killed: still running 1 s after its client connected (host watchdog)"

    run(tmp_path, scenario, idle_timeout=30, watchdog_grace=30)
