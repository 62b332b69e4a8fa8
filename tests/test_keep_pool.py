"""The keep manager's warm pool of process Keeps (stockade.host.keeppool,
issue 18 session 24): what a pooled Keep may be handed out as, and that
none outlives the manager or becomes anybody's without a create.

The first tests drive a pool over real fork servers in this process; the
others a real ``stockade host serve`` on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from manager_support import HELLO, STOCKADE, Server, _free_port, running_server, wait_healthy
from stockade.errors import ManagerError
from stockade.host.forkserver import ForkSpawner, fork_starter
from stockade.host.keeppool import KeepPool
from stockade.host.loader import KeepHandle, ResourceLimits
from stockade.procfs import read_stat


def _alive(pid: int) -> bool:
    fields = read_stat(pid)
    return fields is not None and fields[0] != "Z"


def _until(what: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _wait_dead(pids: list[int], seconds: float = 15) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _pooled_pids(state: Path) -> list[int]:
    """Processes whose stderr is a pooled Keep's log (the Keeps and their
    PSPs waiting in the pool of the manager of ``state``)."""
    prefix = str(state / "logs" / "keep-pool")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            target = os.readlink(entry / "fd" / "2")
        except OSError:
            continue
        if target.startswith(prefix) and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


# -- the pool over real fork servers -------------------------------------------------


@pytest.fixture
def spawner(tmp_path: Path) -> Iterator[ForkSpawner]:
    spawner = ForkSpawner(tmp_path / "logs")
    spawner.start()
    yield spawner
    spawner.close()


@pytest.fixture
def make_pool(state_dir: Path, spawner: ForkSpawner) -> Iterator[Callable[..., KeepPool]]:
    pools: list[KeepPool] = []

    def make(**kwargs: object) -> KeepPool:
        pool = KeepPool(fork_starter(spawner), spawner, state_dir, ("sim",), 1, **kwargs)  # type: ignore[arg-type]
        pools.append(pool)
        pool.start()
        _until(lambda: pool.ready()["sim"] == 1)
        return pool

    yield make
    for pool in pools:
        pool.close()


def _dispose(handle: KeepHandle) -> None:
    handle.keep.kill()
    if handle.psp is not None:
        handle.psp.kill()
    handle.close(5)


def test_a_pooled_keep_is_handed_out_renamed_and_replaced(make_pool: Callable[..., KeepPool]) -> None:
    pool = make_pool()
    handle = pool.take("sim", "abc123")
    assert handle is not None
    try:
        assert handle.keep_id == "abc123" and handle.log_path.name == "keep-abc123.log"
        assert handle.log_path.exists() and handle.keep.poll() is None
        assert pool.hits == 1 and pool.misses == 0
        _until(lambda: pool.ready()["sim"] == 1)  # a replacement, forked at once
        again = pool.take("sim", "def456")
        assert again is not None and again.keep.pid != handle.keep.pid
        _dispose(again)
    finally:
        _dispose(handle)
    assert pool.take("sim-tdx", "x1") is None  # a backend the pool does not hold


def test_a_dead_pooled_keep_is_never_handed_out(make_pool: Callable[..., KeepPool]) -> None:
    pool = make_pool(max_age=600)
    (pooled,) = list(pool._ready["sim"])
    os.kill(pooled.handle.keep.pid, signal.SIGKILL)
    _until(lambda: pooled.handle.keep.poll() is not None)
    assert pool.take("sim", "k1") is None
    assert pool.misses == 1
    _until(lambda: pool.stats()[3]["dead"] == 1 and pool.ready()["sim"] == 1)
    handle = pool.take("sim", "k2")
    assert handle is not None and handle.keep.pid != pooled.handle.keep.pid
    _dispose(handle)


def test_other_limits_fall_back_to_a_fresh_fork(make_pool: Callable[..., KeepPool]) -> None:
    pool = make_pool()
    assert pool.take("sim", "k1", ResourceLimits(nofile=128)) is None
    assert pool.ready()["sim"] == 1  # kept for a create that wants the host's limits
    handle = pool.take("sim", "k2", ResourceLimits())  # == the spawner's
    assert handle is not None
    _dispose(handle)


def test_a_changed_measurement_retires_pooled_keeps(
    make_pool: Callable[..., KeepPool], spawner: ForkSpawner
) -> None:
    pool = make_pool(max_age=600)
    (pooled,) = list(pool._ready["sim"])
    old = spawner._measurement
    assert old is not None and pooled.measurement == old
    # As if the keep zygote was restarted on a changed runtime: the pooled
    # Keep runs the old code and would report the old digest.
    spawner._measurement = bytes(48)
    try:
        assert pool.take("sim", "k1") is None
        _until(lambda: pool.stats()[3]["stale"] == 1)
        _wait_dead([pooled.handle.keep.pid])
        assert not _alive(pooled.handle.keep.pid)
    finally:
        spawner._measurement = old


def test_a_restarted_zygote_gets_a_fresh_pool(
    make_pool: Callable[..., KeepPool], spawner: ForkSpawner
) -> None:
    pool = make_pool(max_age=2)
    (pooled,) = list(pool._ready["sim"])
    os.kill(spawner._servers["keep"].proc.pid, signal.SIGKILL)  # its children die with it
    _until(lambda: pooled.handle.keep.poll() is not None)
    assert pool.take("sim", "k1") is None
    # The maintainer refills from a new zygote (measured again when it starts).
    _until(lambda: pool.ready()["sim"] == 1 and spawner.current_measurement() is not None)
    handle = pool.take("sim", "k2")
    assert handle is not None and handle.measurement == spawner.current_measurement()
    _dispose(handle)


def test_old_pooled_keeps_are_replaced_before_their_hello_timeout(make_pool: Callable[..., KeepPool]) -> None:
    pool = make_pool(max_age=1.0)
    (pooled,) = list(pool._ready["sim"])
    _until(lambda: pool.stats()[3]["aged"] >= 1 and pool.ready()["sim"] == 1)
    assert _wait_dead([pooled.handle.keep.pid]) == []
    assert not pooled.handle.log_path.exists()  # nobody's log: removed
    assert pooled.handle.scratch is not None and not pooled.handle.scratch.exists()


def test_close_leaves_no_pooled_process(make_pool: Callable[..., KeepPool]) -> None:
    pool = make_pool()
    (pooled,) = list(pool._ready["sim"])
    pids = [pooled.handle.keep.pid, *([pooled.handle.psp.pid] if pooled.handle.psp else [])]
    pool.close()
    assert _wait_dead(pids) == []
    assert pool.ready()["sim"] == 0 and pool.take("sim", "k1") is None
    pool.fill()  # closed: forks nothing
    assert pool.ready()["sim"] == 0 and not pool._threads


def test_a_pooled_keep_exits_when_its_host_end_closes(make_pool: Callable[..., KeepPool]) -> None:
    """The manager dies: the pooled Keep reads the end of its stream and
    exits (no leak, no owner), its PSP with it."""
    pool = make_pool()
    handle = pool.take("sim", "k1")
    assert handle is not None
    pids = [handle.keep.pid, *([handle.psp.pid] if handle.psp else [])]
    handle.conn.close()
    assert _wait_dead(pids) == []
    handle.close(5)


# -- a real manager ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        state_dir, tmp_path_factory, serve_args=("--backend", "sim", "--keep-pool", "1")
    ) as srv:
        _until(lambda: _pool_ready(srv) == 1)
        yield srv


def _metric(server: Server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


def _pool_ready(server: Server) -> float:
    return _metric(server, 'stockade_keep_pool_ready{backend="sim"}')


def _session(server: Server) -> tuple[str, bytes, bytes]:
    """A deploy through the library: (Keep id, TLS key's SPKI, report data)."""
    from stockade.client.attest import TrustConfig
    from stockade.client.deploy import DeployPlan, send_hello
    from stockade.client.deploy import deploy as run_session
    from stockade.client.remote import ManagerClient
    from stockade.measure.launch import keep_measurement
    from stockade.policy import development_policy
    from stockade.wire.messages import Config, Limits

    with ManagerClient(server.url, server.token) as client:
        trust = TrustConfig(sim_root=client.sim_root(), policy=development_policy(keep_measurement()))
        keep = client.create("sim")
        sock = client.connect(keep["id"])
        out: list[bytes] = []
        result = run_session(
            sock,
            DeployPlan.for_module(
                HELLO.read_bytes(),
                Config(
                    args=("pool",),
                    limits=Limits(timeout_ms=10_000, memory_bytes=64 << 20, output_bytes=1 << 20),
                ),
            ),
            trust,
            lambda fd, data: out.append(data),
            hello=send_hello(sock),
        )
        sock.close()
    assert result.exit_code == 0
    return str(keep["id"]), result.appraisal.tls_spki, result.appraisal.claims.report_data


def test_deploys_from_the_pool_are_fresh_keeps(server: Server) -> None:
    hits = _metric(server, 'stockade_keep_pool_takes_total{result="hit"}')
    first = _session(server)
    _until(lambda: _pool_ready(server) == 1)
    second = _session(server)
    assert _metric(server, 'stockade_keep_pool_takes_total{result="hit"}') == hits + 2
    log = server.log.read_text()
    for keep_id, _, _ in (first, second):
        assert f"Keep {keep_id} started for" in log
        assert (
            log.split(f"Keep {keep_id} started for", 1)[1].split("\n", 1)[0].count("from the warm pool") == 1
        )
    # Its own key and its own evidence, bound to this client's nonce.
    assert first[1] != second[1] and first[2] != second[2]
    assert (server.state / "logs" / f"keep-{first[0]}.log").exists()


def test_quota_counts_only_handed_out_keeps(server: Server) -> None:
    from stockade.client.remote import ManagerClient

    _until(lambda: _pool_ready(server) == 1)
    with ManagerClient(server.url, server.small_token) as client:  # quota 1
        assert client.list() == []  # the pooled Keep is nobody's
        keep = client.create("sim")
        try:
            _until(lambda: _pool_ready(server) == 1)
            hits = _metric(server, 'stockade_keep_pool_takes_total{result="hit"}')
            misses = _metric(server, 'stockade_keep_pool_takes_total{result="miss"}')
            with pytest.raises(ManagerError, match="may run 1 Keep"):
                client.create("sim")
            assert [k["id"] for k in client.list()] == [keep["id"]]
            # A refused create takes nothing from the pool.
            assert _metric(server, 'stockade_keep_pool_takes_total{result="hit"}') == hits
            assert _metric(server, 'stockade_keep_pool_takes_total{result="miss"}') == misses
            assert _pool_ready(server) == 1
        finally:
            assert client.kill(keep["id"])["state"] == "killed"


def test_manager_crash_and_restart_leave_no_pooled_keep(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from stockade.client.remote import ManagerClient

    with running_server(
        state_dir, tmp_path_factory, serve_args=("--backend", "sim", "--keep-pool", "1")
    ) as server:
        _until(lambda: _pool_ready(server) == 1)
        pooled = _pooled_pids(server.state)
        assert len(pooled) == 2  # the Keep and its PSP
        with ManagerClient(server.url, server.token) as client:
            owned = client.create("sim")
        owned_pid = int(owned["pid"])
        server.proc.kill()  # kill -9: no clean shutdown
        server.proc.wait()
        assert _wait_dead(pooled) == []  # they read the end of their stream
        # A restart re-adopts the Keep somebody created, and nothing else.
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        serve = ["host", "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(server.state)]
        with open(server.log, "ab") as out:
            proc = subprocess.Popen([*STOCKADE, *serve, "--keep-pool", "0"], stdout=out, stderr=out)
        try:
            wait_healthy(url, proc, server.log)
            with ManagerClient(url, server.token) as client:
                assert [k["id"] for k in client.list()] == [owned["id"]]
            # (The created Keep had no client yet: its stream ended too, so it is lost.)
            line = [x for x in server.log.read_text().splitlines() if "re-adopted" in x][-1]
            counts = [int(w) for w in line.split(": ", 2)[2].replace(",", " ").split() if w.isdigit()]
            assert sum(counts) == 1, line
        finally:
            proc.terminate()
            proc.wait(15)
            if _alive(owned_pid):
                os.kill(owned_pid, signal.SIGKILL)


def test_shutdown_leaves_no_pooled_keep(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with running_server(state_dir, tmp_path_factory, serve_args=("--keep-pool", "2")) as server:
        # Two per process backend (sim, sim-snp, sim-tdx), each with its PSP.
        _until(lambda: len(_pooled_pids(server.state)) == 12, 60)
        pooled = _pooled_pids(server.state)
        server.proc.terminate()
        server.proc.wait(30)
    assert _wait_dead(pooled) == []
    assert not list((server.state / "logs").glob("keep-pool*.log"))


def test_keep_pool_0_forks_every_keep(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from stockade.client.remote import ManagerClient

    with running_server(state_dir, tmp_path_factory, serve_args=("--keep-pool", "0")) as server:
        with ManagerClient(server.url, server.token) as client:
            keep = client.create("sim")
            client.kill(keep["id"])
        assert _pooled_pids(server.state) == []
        assert "stockade_keep_pool_ready" not in httpx.get(f"{server.url}/metrics", timeout=10).text
        assert f"Keep {keep['id']} started for" in server.log.read_text()
        assert "forked" in server.log.read_text().split(f"Keep {keep['id']} started for", 1)[1].split("\n")[0]


def test_a_create_with_published_ports_forks_a_fresh_keep(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from stockade.client.remote import ManagerClient

    port = _free_port()
    args = ("--backend", "sim", "--keep-ports", f"{port}-{port}", "--keep-pool", "1")
    with running_server(state_dir, tmp_path_factory, serve_args=args) as server:
        _until(lambda: _pool_ready(server) == 1)
        with ManagerClient(server.url, server.token) as client:
            keep = client.create("sim", publish=("echo",))
            try:
                assert set(keep["published"]) == {"echo"}
                line = server.log.read_text().split(f"Keep {keep['id']} started for", 1)[1].split("\n")[0]
                assert "forked" in line and "warm pool" not in line
                assert keep["id"] in keep["published"]["echo"]["bind"]  # its own scratch directory
                assert _pool_ready(server) == 1  # left for the next create
            finally:
                client.kill(keep["id"])


def test_a_pooled_keep_is_recorded_created_then_running_at_once(tmp_path: Path) -> None:
    from stockade.host.registry import Limits, Registry, RegistryError
    from stockade.procfs import start_time

    reg = Registry.open_state_dir(tmp_path)
    try:
        rec = reg.create("sim", Limits(timeout_ms=5000), "owner", keep_id="ab12" * 4, running_pid=os.getpid())
        assert rec.state == "running" and rec.pid == os.getpid()
        assert rec.pid_start_time == start_time(os.getpid())
        assert [(old, new) for old, new, _, _ in reg.history(rec.keep_id)] == [
            (None, "created"),
            ("created", "running"),
        ]
        assert reg.count_active("owner") == 1
        # One transaction: a refused second record leaves nothing half-written.
        with pytest.raises(RegistryError, match="already in the registry"):
            reg.create("sim", Limits(), "owner", keep_id="ab12" * 4, running_pid=os.getpid())
        assert len(reg.history(rec.keep_id)) == 2 and reg.count_active("owner") == 1
    finally:
        reg.close()
