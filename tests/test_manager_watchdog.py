"""Host watchdog: a Keep created with a timeout_ms limit that is still alive
that long plus ``--watchdog-grace`` after its client connected is killed by
the manager and recorded as such; the client gets a clear "Keep died".

The test plays a client that tells the Keep a much longer limit than it
told the host (as a Keep that ignores its limit would behave): only the
host's watchdog stops the infinite loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager_support import Server, running_server
from stockade.client.attest import TrustConfig
from stockade.client.deploy import DeployPlan, deploy, send_hello
from stockade.client.remote import ManagerClient
from stockade.errors import KeepDied
from stockade.measure.launch import keep_measurement
from stockade.policy import development_policy
from stockade.wire.messages import Config, Limits

pytestmark = pytest.mark.slow

GRACE_S = 3


@pytest.fixture(scope="module")
def server(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(state_dir, tmp_path_factory, ("--watchdog-grace", str(GRACE_S))) as srv:
        yield srv


def test_host_watchdog_kills_an_overdue_keep(server: Server, wasm) -> None:
    spin = wasm("spin").read_bytes()
    plan = DeployPlan.for_module(spin, Config(limits=Limits(timeout_ms=120_000)))
    with ManagerClient(server.url, server.token) as client:
        trust = TrustConfig(sim_root=client.sim_root(), policy=development_policy(keep_measurement()))
        keep = client.create("sim", {"timeout_ms": 500})
        sock = client.connect(keep["id"])
        t0 = time.monotonic()
        try:
            with pytest.raises(KeepDied):
                deploy(sock, plan, trust, lambda fd, data: None, hello=send_hello(sock))
        finally:
            sock.close()
        took = time.monotonic() - t0
        done = client.wait(keep["id"], 30)
    assert done["state"] == "killed"
    assert "host watchdog" in done["detail"] and f"{0.5 + GRACE_S:g} s" in done["detail"]
    assert GRACE_S <= took < GRACE_S + 20


def test_a_keep_within_its_limit_is_left_alone(server: Server) -> None:
    from manager_support import HELLO

    plan = DeployPlan.for_module(HELLO.read_bytes(), Config(args=("W",)))
    out: list[bytes] = []
    with ManagerClient(server.url, server.token) as client:
        trust = TrustConfig(sim_root=client.sim_root(), policy=development_policy(keep_measurement()))
        keep = client.create("sim", {"timeout_ms": 5_000})
        sock = client.connect(keep["id"])
        try:
            result = deploy(sock, plan, trust, lambda fd, data: out.append(data), hello=send_hello(sock))
        finally:
            sock.close()
        done = client.wait(keep["id"], 30)
    assert result.exit_code == 0 and b"".join(out).startswith(b"Hello, W!")
    assert done["state"] == "exited"
