"""Load and limits through a live keep manager (issue 7, "Load and faults").

* 200 concurrent sim Keeps, each running a small workload with its own
  argument: every one completes with exactly its own output;
* "the host survives a fork of 200 infinite loops": 200 Keeps each spinning
  with a short time limit are all stopped and reported as a time limit
  (LimitExceeded, exit code 116); the manager stays healthy and no Keep or
  PSP process is left behind;
* a workload past its memory limit is stopped and reported;
* Keeps are forked by the Keep fork server, with their rlimits; the
  ``--no-fork-server`` escape hatch starts fresh processes with the same
  rlimits.

Every deploy goes through :func:`deploy_through_manager` (the one place to
adapt when the client deploy API changes). Bounded in time: the two
200-Keep runs take well under a minute each on 2 cores.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from manager_support import Server, running_server
from stockade.client.remote import ManagerClient
from stockade.errors import LimitExceeded, StockadeError
from stockade.procfs import read_stat

pytestmark = pytest.mark.slow

N = 200
FINAL = {"exited", "failed", "killed", "lost"}


@pytest.fixture(scope="module")
def server(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(state_dir, tmp_path_factory, quota=N + 20) as srv:
        yield srv


@dataclass
class Outcome:
    keep_id: str
    exit_code: int | None
    output: bytes
    error: StockadeError | None


def deploy_through_manager(
    server: Server,
    wasm: bytes,
    args: tuple[str, ...] = (),
    *,
    timeout_ms: int = 20_000,
    memory_bytes: int = 64 << 20,
) -> Outcome:
    """Create a sim Keep through the manager, attest it and run ``wasm`` in
    it; the workload's output and exit code, or the error it ended with."""
    from stockade.client.attest import TrustConfig
    from stockade.client.deploy import DeployPlan, deploy
    from stockade.measure.launch import keep_measurement
    from stockade.policy import development_policy
    from stockade.wire.messages import Config, Limits

    with ManagerClient(server.url, server.token, timeout=120) as client:
        trust = TrustConfig(sim_root=client.sim_root(), policy=development_policy(keep_measurement()))
        keep = client.create("sim")
        sock = client.connect(keep["id"])
        out: list[bytes] = []
        plan = DeployPlan.for_module(
            wasm,
            Config(
                args=args,
                limits=Limits(timeout_ms=timeout_ms, memory_bytes=memory_bytes, output_bytes=1 << 20),
            ),
        )
        try:
            result = deploy(sock, plan, trust, lambda fd, data: out.append(data))
        except StockadeError as err:
            return Outcome(keep["id"], None, b"".join(out), err)
        return Outcome(keep["id"], result.exit_code, b"".join(out), None)


def _many(server: Server, jobs: list[tuple[bytes, tuple[str, ...], int]]) -> list[Outcome]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(deploy_through_manager, server, w, a, timeout_ms=t) for w, a, t in jobs]
        return [f.result(timeout=600) for f in futures]


def _alive(pid: int) -> bool:
    fields = read_stat(pid)
    return fields is not None and fields[0] != "Z"


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (zombies not yet reaped included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := read_stat(int(entry.name))) and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _zygotes(server: Server) -> dict[str, int]:
    roles = {}
    for pid in _children(server.proc.pid):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"stockade.keep.zygote" in cmd:
            roles[cmd[cmd.index(b"--role") + 1].decode()] = pid
    return roles


def _wait_final(client: ManagerClient, ids: set[str], seconds: float) -> dict[str, dict[object, object]]:
    deadline = time.monotonic() + seconds
    while True:
        recs = {k["id"]: k for k in client.list() if k["id"] in ids}
        if all(r["state"] in FINAL for r in recs.values()) or time.monotonic() > deadline:
            return recs
        time.sleep(0.2)


def _limits(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {line[:26].strip(): line[26:47].strip() for line in lines}


def _assert_no_orphans(server: Server, pids: list[int]) -> None:
    deadline = time.monotonic() + 15
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"{len(left)} Keep process(es) outlived their run"
    # The fork servers reap their children as they end (zombies included:
    # an unreaped one counts); under load that may lag the Keeps' own end.
    # Keeps waiting in the warm pool (and their PSPs) are nobody's: their
    # stderr is a pooled Keep's log (stockade.host.keeppool).
    for role, zygote in _zygotes(server).items():
        while (kids := _unpooled(server, _children(zygote))) and time.monotonic() < deadline + 15:
            time.sleep(0.1)
        assert kids == [], f"the {role} fork server still has children: {kids}"


def _unpooled(server: Server, pids: list[int]) -> list[int]:
    pooled = str(server.state / "logs" / "keep-pool")
    out = []
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/fd/2").startswith(pooled):
                continue
        except OSError:
            pass
        out.append(pid)
    return out


def test_keeps_are_forked_by_the_fork_server_with_limits(server: Server) -> None:
    zygotes = _zygotes(server)
    assert set(zygotes) == {"keep", "sim-psp"}
    # The manager says whether Keeps get cgroups or rlimits only, and why.
    log = server.log.read_text()
    assert "per-Keep cgroups in" in log or "per-Keep cgroup limits unavailable: " in log
    with ManagerClient(server.url, server.token) as client:
        keep = client.create("sim")
        try:
            pid = int(keep["pid"])
            fields = read_stat(pid)
            assert fields is not None and int(fields[1]) == zygotes["keep"]
            # The manager answers once the fork server reports the pid; the
            # child sets its limits just after (before any Keep code runs),
            # so wait for it rather than race it (CI once read the fork
            # server's inherited 20000 descriptors here).
            want = {
                "Max core file size": "0",
                "Max open files": "256",
                "Max file size": str(256 << 20),
                "Max address space": "unlimited",  # wasmtime reserves address space
            }
            deadline = time.monotonic() + 10
            while {k: (limits := _limits(pid)).get(k) for k in want} != want and time.monotonic() < deadline:
                time.sleep(0.01)
            assert {k: limits.get(k) for k in want} == want
        finally:
            assert client.kill(keep["id"])["state"] == "killed"


def test_200_concurrent_keeps_all_complete_correctly(server: Server, wasm) -> None:
    module = wasm("argv_env").read_bytes()
    started = time.monotonic()
    outcomes = _many(server, [(module, (f"keep-{i}",), 30_000) for i in range(N)])
    elapsed = time.monotonic() - started
    failures = [(o.keep_id, o.error) for o in outcomes if o.error is not None or o.exit_code != 0]
    assert failures == [], failures[:5]
    for i, outcome in enumerate(outcomes):
        assert outcome.output == f"main.wasm\nkeep-{i}\n--\n".encode(), outcome.keep_id
    assert len({o.keep_id for o in outcomes}) == N
    with ManagerClient(server.url, server.token) as client:
        recs = _wait_final(client, {o.keep_id for o in outcomes}, 30)
    assert {r["state"] for r in recs.values()} == {"exited"}
    assert all(r["exit_status"] == 0 for r in recs.values())
    _assert_no_orphans(server, [int(r["pid"]) for r in recs.values()])
    print(f"{N} Keeps deployed concurrently in {elapsed:.1f} s")


def test_host_survives_200_infinite_loops(server: Server, wasm) -> None:
    module = wasm("spin").read_bytes()
    outcomes = _many(server, [(module, (), 1500) for _ in range(N)])
    for outcome in outcomes:
        err = outcome.error
        assert isinstance(err, LimitExceeded), (outcome.keep_id, err)
        assert err.exit_code == 116
        assert "time limit" in err.detail
    assert httpx.get(f"{server.url}/v1/health", timeout=5).status_code == 200
    with ManagerClient(server.url, server.token) as client:
        recs = _wait_final(client, {o.keep_id for o in outcomes}, 60)
        assert {r["state"] for r in recs.values()} == {"exited"}
        # The manager still starts and runs Keeps.
        again = deploy_through_manager(server, wasm("argv_env").read_bytes(), ("after",))
        assert again.exit_code == 0 and again.output == b"main.wasm\nafter\n--\n"
    assert server.proc.poll() is None
    _assert_no_orphans(server, [int(r["pid"]) for r in recs.values()])


def test_memory_limit_is_stopped_and_reported(server: Server, wasm) -> None:
    outcome = deploy_through_manager(server, wasm("membomb").read_bytes(), memory_bytes=16 << 20)
    assert isinstance(outcome.error, LimitExceeded), outcome
    assert outcome.error.exit_code == 116 and "memory limit" in outcome.error.detail


def test_no_fork_server_starts_fresh_processes_with_limits(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory, wasm
) -> None:
    with running_server(state_dir, tmp_path_factory, serve_args=("--no-fork-server",)) as srv:
        assert _zygotes(srv) == {}
        outcome = deploy_through_manager(srv, wasm("argv_env").read_bytes(), ("fresh",))
        assert outcome.exit_code == 0 and outcome.output == b"main.wasm\nfresh\n--\n"
        with ManagerClient(srv.url, srv.token) as client:
            keep = client.create("sim")
            try:
                pid = int(keep["pid"])
                fields = read_stat(pid)
                assert fields is not None and int(fields[1]) == srv.proc.pid
                assert b"stockade.keep" in Path(f"/proc/{pid}/cmdline").read_bytes()
                assert _limits(pid)["Max core file size"] == "0"
                assert _limits(pid)["Max open files"] == "256"
            finally:
                client.kill(keep["id"])
