"""``stockade deploy --fleet``: placement and failover with a real etcd and
three real keep managers on loopback (issue 16's failure tests).

Hosts are registered by a test registrar (tests/fleet_support.py) that
writes their records under leases and refreshes them while their processes
live, as ``host serve --fleet`` does. Each test restores what it changed
(records, drain marks, a killed host, a stopped etcd)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from etcd_support import EtcdServer, running_etcd
from fleet_support import Host, Registrar, drain, fleet_etcd, registered, running_hosts
from stockade.fleet.etcd import Etcd
from stockade.fleet.record import Offer

pytestmark = pytest.mark.slow

TTL = 3


@dataclass
class Fleet:
    etcd_server: EtcdServer
    etcd: Etcd
    hosts: list[Host]
    token_file: Path
    registrar: Registrar
    sim_root: Path
    state_dir: Path

    def register_all(self, **loads: int) -> None:
        """(Re-)register every live host; ``loads`` maps host ids (with _
        for -) to the keeps_running its record claims."""
        for host in self.hosts:
            if host.alive:
                running = loads.get(host.host_id.replace("-", "_"), 0)
                self.registrar.register(host, self.registrar.record(host, keeps_running=running))

    def deploy(
        self, *args: str, timeout: float = 90, fleet: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        where = ("--fleet", self.etcd_server.url) if fleet else ()
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "stockade",
                "deploy",
                *where,
                "--token-file",
                str(self.token_file),
                "--sim-root",
                str(self.sim_root),
                *args,
            ],
            capture_output=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "STOCKADE_STATE_DIR": str(self.state_dir)},
        )

    def keeps_on(self, host: Host) -> list[dict[Any, Any]]:
        from stockade.client.remote import ManagerClient

        with ManagerClient(host.url, self.token_file.read_text().strip()) as client:
            return client.list()


@pytest.fixture(scope="module")
def fleet(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fleet")
    with (
        running_etcd(base / "etcd") as etcd_server,
        running_hosts(state_dir, base / "hosts") as (hosts, token),
    ):
        registrar = Registrar(fleet_etcd(etcd_server), ttl=TTL)
        try:
            f = Fleet(
                etcd_server,
                fleet_etcd(etcd_server),
                hosts,
                token,
                registrar,
                state_dir / "sim" / "chip" / "ark.der",
                state_dir,
            )
            f.register_all()
            yield f
        finally:
            registrar.close()


def _json(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON document: {proc.stdout!r} {proc.stderr!r}") from None
    assert isinstance(doc, dict)
    return doc


def _ok(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    doc = _json(proc)
    assert proc.returncode == 7, (proc.returncode, doc, proc.stderr.decode())
    return doc


DEV = ("--allow-sim", "--json")


def test_deploys_spread_across_hosts(fleet: Fleet, wasm: Any) -> None:
    """9 deploys (3 at a time) over 3 idle hosts land on more than one
    host (ties between equally loaded hosts are broken at random; the
    60-deploy spread is measured by bench/bench_fleet_deploy.py, and the
    evenness of the tie-break by tests/test_placement.py)."""
    fleet.register_all()
    module = str(wasm("exit7"))

    def one(_: int) -> str:
        doc = _ok(fleet.deploy(*DEV, module))
        placement = doc["placement"]
        assert placement["chosen"] == placement["attempts"][-1]["host"]
        assert doc["host"] == placement["attempts"][-1]["api_url"]
        return str(placement["chosen"])

    with ThreadPoolExecutor(3) as pool:
        spread = Counter(pool.map(one, range(9)))
    print(f"spread of 9 deploys over 3 hosts: {dict(sorted(spread.items()))}")
    assert sum(spread.values()) == 9
    assert set(spread) <= {h.host_id for h in fleet.hosts}
    assert len(spread) >= 2  # all 9 on one host at random: 3 * 3**-9, about 1.5e-4


def test_least_loaded_and_labels(fleet: Fleet, wasm: Any) -> None:
    fleet.register_all(host_0=5, host_2=9)
    doc = _ok(fleet.deploy(*DEV, str(wasm("exit7"))))
    placement = doc["placement"]
    assert placement["chosen"] == "host-1"
    assert [c["host"] for c in placement["candidates"]] == ["host-1", "host-0", "host-2"]
    assert len(placement["attempts"]) == 1 and placement["attempts"][0]["outcome"] == "ok"
    # A label filter outranks load; a host without the label is excluded with a reason.
    host2 = fleet.hosts[2]
    fleet.registrar.register(host2, fleet.registrar.record(host2, keeps_running=9, labels={"zone": "b"}))
    doc = _ok(fleet.deploy(*DEV, "--host-label", "zone=b", str(wasm("exit7"))))
    assert doc["placement"]["chosen"] == "host-2"
    assert {"host": "host-0", "reason": "no label zone"} in doc["placement"]["excluded"]


def test_sigkill_expiry_failover_and_rejoin(fleet: Fleet, wasm: Any) -> None:
    """A host killed with SIGKILL: its lease expires within the TTL; while a
    record for it is still there, deploys fail over to another host (the
    reason shown); without it, deploys go to the others; restarted and
    registered again, it takes deploys again."""
    victim = fleet.hosts[0]
    fleet.register_all(host_1=3, host_2=3)
    assert "host-0" in registered(fleet.etcd)
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    victim.proc.wait(10)
    while "host-0" in registered(fleet.etcd):
        assert time.monotonic() - killed < TTL + 5, "the dead host's record did not expire"
        time.sleep(0.1)
    gone = time.monotonic() - killed
    print(f"SIGKILL to exclusion: {gone:.2f} s (lease TTL {TTL} s)")
    try:
        # A record still there (as in the TTL after a crash): the deploy fails over.
        ghost = fleet.registrar.record(victim, keeps_running=0)
        fleet.registrar.register(None, ghost)
        proc = fleet.deploy("--allow-sim", str(wasm("exit7")))
        err = proc.stderr.decode()
        assert proc.returncode == 7, err
        assert "attempt 1 of 3: host-0" in err
        assert "host-0 failed before release: keep manager error: cannot reach the keep manager" in err
        assert "attempt 2 of 3: host-" in err
        fleet.registrar.unregister("host-0")
        # Gone from the fleet: not considered at all, deploys succeed on the others.
        doc = _ok(fleet.deploy(*DEV, str(wasm("exit7"))))
        assert doc["placement"]["considered"] == 2
        assert doc["placement"]["chosen"] in ("host-1", "host-2")
    finally:
        victim.start()
    fleet.register_all(host_1=3, host_2=3)  # rejoins (host serve --fleet registers at start)
    doc = _ok(fleet.deploy(*DEV, str(wasm("exit7"))))
    assert doc["placement"]["chosen"] == "host-0"


def test_drained_host_gets_no_new_keeps(fleet: Fleet, wasm: Any) -> None:
    fleet.register_all(host_1=3, host_2=3)  # host-0 would be first
    before = len(fleet.keeps_on(fleet.hosts[0]))
    drain(fleet.etcd, "host-0")
    try:
        doc = _ok(fleet.deploy(*DEV, str(wasm("exit7"))))
    finally:
        drain(fleet.etcd, "host-0", on=False)
    assert doc["placement"]["chosen"] != "host-0"
    assert {"host": "host-0", "reason": "drained"} in doc["placement"]["excluded"]
    assert len(fleet.keeps_on(fleet.hosts[0])) == before


def test_etcd_stopped(fleet: Fleet, wasm: Any) -> None:
    """etcd down: --fleet deploys fail with a clear error naming etcd (122);
    direct --host deploys still work."""
    fleet.etcd_server.stop()
    try:
        proc = fleet.deploy("--allow-sim", str(wasm("exit7")))
        err = proc.stderr.decode()
        assert proc.returncode == 122, err
        assert "stockade: fleet error: etcd cannot be reached to read the fleet" in err
        assert fleet.etcd_server.http.removeprefix("http://") in err
        direct = fleet.deploy("--host", fleet.hosts[1].url, "--allow-sim", str(wasm("exit7")), fleet=False)
        assert direct.returncode == 7, direct.stderr.decode()
    finally:
        fleet.etcd_server.start()
    fleet.register_all()


def test_platform_the_policy_refuses_is_never_chosen(fleet: Fleet, wasm: Any, tmp_path: Path) -> None:
    host0 = fleet.hosts[0]
    fleet.register_all(host_1=3, host_2=3)
    fleet.registrar.register(host0, fleet.registrar.record(host0, offers=(Offer("sim-tdx", "sim-tdx"),)))
    before = len(fleet.keeps_on(host0))
    policy = tmp_path / "sim-only.toml"
    policy.write_text('version = 1\nname = "sim only"\nplatforms = ["sim"]\n')
    doc = _ok(fleet.deploy("--policy", str(policy), "--json", str(wasm("exit7"))))
    assert doc["placement"]["chosen"] in ("host-1", "host-2")
    (reason,) = [e["reason"] for e in doc["placement"]["excluded"] if e["host"] == "host-0"]
    assert reason == "offers no platform the policy accepts (offers sim-tdx; the policy accepts sim)"
    # The built-in policy accepts no sim platform: no host is tried at all.
    proc = fleet.deploy("--json", str(wasm("exit7")))
    doc = _json(proc)
    assert proc.returncode == 122, doc
    assert "no host of the fleet" in doc["error"]["detail"]
    assert doc["placement"]["candidates"] == [] and doc["placement"]["attempts"] == []
    assert len(fleet.keeps_on(host0)) == before
    fleet.register_all()


def test_a_lying_record_cannot_make_the_client_accept_a_keep(fleet: Fleet, wasm: Any) -> None:
    """host-1's record says it offers tdx with the measurement the client
    wants; it runs sim. The built-in policy accepts tdx, so placement tries
    it (only it: the honest sim hosts are excluded); the Keep's attestation
    says sim, and the policy refuses it (112): not retried into acceptance."""
    host1 = fleet.hosts[1]
    fleet.register_all()
    fleet.registrar.register(host1, fleet.registrar.record(host1, offers=(Offer("sim", "tdx", "00" * 48),)))
    try:
        proc = fleet.deploy("--json", "--fleet-attempts", "3", str(wasm("exit7")))
    finally:
        fleet.register_all()
    doc = _json(proc)
    assert proc.returncode == 112, doc
    assert doc["error"]["type"] == "policy-rejected"
    (attempt,) = doc["placement"]["attempts"]
    assert attempt["host"] == "host-1" and attempt["outcome"] == "failed" and not attempt["released"]
    assert attempt["error"]["exit_code"] == 112 and "sim" in attempt["error"]["detail"]
    assert "host-1: refused by policy" in doc["error"]["detail"]


@pytest.fixture
def hostile(fleet: Fleet, tmp_path: Path) -> Iterator[Host]:
    """A fourth manager with a sim chip of its own (the deployer's
    --sim-root does not verify its Keeps), with the fleet's token."""
    import shutil

    from fleet_support import _cli
    from manager_support import _free_port
    from stockade.evidence.sim.chip import ensure_chip

    state = tmp_path / "hostile"
    state.mkdir(mode=0o700)
    ensure_chip(state)  # a new chip: its root is not the deployer's --sim-root
    assert _cli("host", "init", "--state-dir", str(state)).returncode == 0
    shutil.copy2(fleet.hosts[0].state / "tokens.json", state / "tokens.json")
    host = Host("hostile", state, _free_port(), tmp_path / "hostile.log")
    host.start()
    try:
        yield host
    finally:
        fleet.registrar.unregister("hostile")
        host.stop()


def test_a_hostile_host_is_refused_and_the_deploy_moves_on(fleet: Fleet, hostile: Host, wasm: Any) -> None:
    fleet.register_all(host_0=3, host_1=3, host_2=3)
    fleet.registrar.register(hostile, fleet.registrar.record(hostile, keeps_running=0))
    doc = _ok(fleet.deploy(*DEV, str(wasm("exit7"))))
    first, second = doc["placement"]["attempts"]
    assert first["host"] == "hostile" and first["outcome"] == "failed"
    assert first["error"]["exit_code"] == 110 and not first["released"]
    assert second["outcome"] == "ok" and doc["placement"]["chosen"] == second["host"] != "hostile"
    assert doc["attestation"]["platform"] == "sim"
    # One attempt allowed: the verification failure keeps its exit code (110), not 122.
    proc = fleet.deploy(*DEV, "--fleet-attempts", "1", str(wasm("exit7")))
    err_doc = _json(proc)
    assert proc.returncode == 110, err_doc
    assert "1 tried, 3 more candidate(s) not tried" in err_doc["error"]["detail"]
    fleet.register_all()


def test_quota_refusal_fails_over(fleet: Fleet, wasm: Any, tmp_path: Path) -> None:
    """A host whose record claims it is idle but whose quota for the token
    is used up answers 429: the deploy moves on to the next host."""
    import json as _json_mod
    import shutil

    from manager_support import _free_port
    from stockade.client.remote import ManagerClient

    state = tmp_path / "tight"
    state.mkdir(mode=0o700)
    shutil.copytree(fleet.state_dir / "sim", state / "sim")
    doc = _json_mod.loads((fleet.hosts[0].state / "tokens.json").read_text())
    for entry in doc["tokens"]:
        entry["quota"] = 1
    (state / "tokens.json").write_text(_json_mod.dumps(doc))
    (state / "tokens.json").chmod(0o600)
    tight = Host("tight", state, _free_port(), tmp_path / "tight.log")
    tight.start()
    try:
        with ManagerClient(tight.url, fleet.token_file.read_text().strip()) as client:
            client.create("sim", {})  # uses the token's only slot on this host
        fleet.register_all(host_0=3, host_1=3, host_2=3)
        fleet.registrar.register(tight, fleet.registrar.record(tight, keeps_running=0))
        result = _ok(fleet.deploy(*DEV, str(wasm("exit7"))))
    finally:
        fleet.registrar.unregister("tight")
        tight.stop()
        fleet.register_all()
    first, second = result["placement"]["attempts"]
    assert first["host"] == "tight" and first["outcome"] == "failed" and first["keep_id"] is None
    assert first["error"]["type"] == "host-manager" and "429" in first["error"]["detail"]
    assert second["outcome"] == "ok"


def test_no_retry_after_release(fleet: Fleet, wasm: Any) -> None:
    """The Keep dies after the release (SIGKILL while the workload runs):
    the deploy ends with Keep died (115) and no other host is tried."""
    fleet.register_all(host_1=3, host_2=3)
    others_before = [len(fleet.keeps_on(h)) for h in fleet.hosts[1:]]
    ids_before = {k["id"] for k in fleet.keeps_on(fleet.hosts[0])}
    cmd = [
        sys.executable,
        "-m",
        "stockade",
        "deploy",
        "--fleet",
        fleet.etcd_server.url,
        "--token-file",
        str(fleet.token_file),
        "--sim-root",
        str(fleet.sim_root),
        "--allow-sim",
        "--timeout",
        "60",
        str(wasm("sleep")),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "STOCKADE_STATE_DIR": str(fleet.state_dir)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"sleeping\n"  # released: the workload runs
        (keep,) = [k for k in fleet.keeps_on(fleet.hosts[0]) if k["id"] not in ids_before]
        os.kill(keep["pid"], signal.SIGKILL)
        _, err_bytes = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = err_bytes.decode()
    assert proc.returncode == 115, err
    assert "host-0 failed after the release: not retried elsewhere" in err
    assert "attempt 2" not in err
    assert [len(fleet.keeps_on(h)) for h in fleet.hosts[1:]] == others_before


# -- the release point, in process (no etcd) -----------------------------------


def test_release_mark_is_set_right_before_the_release_and_only_then(
    state_dir: Path, wasm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ReleaseMark is False when attestation fails (retry allowed), and True
    before the release message is built (so no failure from the release on
    can be taken for a failure before it)."""
    from stockade.client.attest import TrustConfig
    from stockade.client.deploy import DeployPlan, ReleaseMark, deploy, send_hello
    from stockade.errors import PolicyRejected
    from stockade.evidence.sim import chip
    from stockade.evidence.sim.local import serve_in_thread
    from stockade.host.loader import start_keep
    from stockade.policy import development_policy
    from stockade.wire.protocol import ClientSession

    seen: list[bool] = []
    marks: list[ReleaseMark] = []
    original = ClientSession.release

    def spy(self: ClientSession, release: Any) -> bytes:
        seen.append(marks[-1].released)
        return original(self, release)

    monkeypatch.setattr(ClientSession, "release", spy)
    plan = DeployPlan.for_module(wasm("exit7").read_bytes())

    def session(measurement: bytes | None) -> tuple[int | None, ReleaseMark]:
        handle = start_keep("sim", state_dir, psp=lambda m: serve_in_thread(state_dir, m))
        mark = ReleaseMark()
        marks.append(mark)
        try:
            policy = development_policy(measurement or handle.measurement)
            trust = TrustConfig(sim_root=chip.sim_root(state_dir), policy=policy)
            hello = send_hello(handle.conn)
            try:
                result = deploy(
                    handle.conn, plan, trust, lambda fd, data: None, hello=hello, on_release=mark.mark
                )
            except PolicyRejected:
                return None, mark
            return result.exit_code, mark
        finally:
            handle.close()

    code, mark = session(bytes(48))  # a pin the Keep does not match: refused before release
    assert code is None and not mark.released and seen == []
    code, mark = session(None)
    assert code == 7 and mark.released and seen == [True]


def test_steward_deploys_are_placed_on_process_keeps_only(fleet: Fleet, wasm: Any, tmp_path: Path) -> None:
    """``--steward``: a host that offers only SNP guests (VM Keeps, no
    network path to a steward) is excluded by placement; a sim host runs
    the deploy and its Keep gets its certificate (issue 17)."""
    from stockade.testing.steward import steward_server

    host0 = fleet.hosts[0]
    fleet.register_all(host_1=3, host_2=3)
    fleet.registrar.register(host0, fleet.registrar.record(host0, offers=(Offer("snp", "snp", "00" * 48),)))
    policy = tmp_path / "sim-or-snp.toml"
    policy.write_text('version = 1\nname = "sim or snp"\nplatforms = ["sim", "snp"]\n')
    try:
        with steward_server(tmp_path, fleet.state_dir) as steward:
            proc = fleet.deploy(
                "--policy",
                str(policy),
                "--json",
                "--steward",
                steward.url,
                "--steward-ca",
                str(steward.ca),
                str(wasm("exit7")),
            )
    finally:
        fleet.register_all()
    doc = _ok(proc)
    assert doc["placement"]["chosen"] in ("host-1", "host-2")
    (reason,) = [e["reason"] for e in doc["placement"]["excluded"] if e["host"] == "host-0"]
    assert reason.startswith("offers no backend this deploy can use (offers snp;")
    assert reason.endswith("usable: sim, sim-snp, sim-tdx)")  # without --steward: snp and tdx too
    assert doc["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert doc["inclusion"]["tree_size"] >= 1
