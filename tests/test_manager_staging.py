"""Packages staged on the host through the keep manager (untrusted bytes):
``PUT /v1/keeps/{id}/package`` and ``stockade deploy --stage-on-host``.

The host is the adversary here: a test swaps the staged package behind the
manager's back; the Keep (trusted boot: the client pins the digest it
means) refuses it, and the secret never leaves the client.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from manager_support import HELLO, WORDCOUNT, Server, deploy, running_server
from stockade.client.remote import ManagerClient
from stockade.errors import StockadeError
from stockade.package import Manifest
from stockade.package.format import encode
from stockade.wire.staging import PACKAGE_MEDIA_TYPE, STAGED_NAME

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(state_dir, tmp_path_factory) as srv:
        yield srv


def _package(
    tmp_path: Path, wasm: Path, name: str, args: tuple[str, ...] = (), needs: tuple[str, ...] = ()
) -> Path:
    path = tmp_path / f"{name}.stockade"
    manifest = Manifest(name=name, version="1.0.0", entry="app.wasm", args=args, secrets=needs)
    path.write_bytes(encode(manifest, {"app.wasm": wasm.read_bytes()}))
    return path


def test_deploy_stage_on_host(server: Server, tmp_path: Path) -> None:
    pkg = _package(tmp_path, HELLO, "hello", ("Staged",))
    proc = deploy(server, "--allow-sim", "--stage-on-host", str(pkg))
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.startswith(b"Hello, Staged!")
    assert b"package uploaded to the host" in proc.stderr


def test_stage_refused_after_connect_and_with_wrong_type(server: Server) -> None:
    with ManagerClient(server.url, server.token) as client:
        keep = client.create("sim")
        resp = httpx.put(
            f"{server.url}/v1/keeps/{keep['id']}/package",
            content=b"x",
            headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/cbor"},
        )
        assert resp.status_code == 415
        sock = client.connect(keep["id"])
        try:
            with pytest.raises(StockadeError, match="stage the package before connecting"):
                client.stage(keep["id"], b"x")
        finally:
            sock.close()
        client.kill(keep["id"])
    other = httpx.put(
        f"{server.url}/v1/keeps/ffffffffffffffff/package",
        content=b"x",
        headers={"Authorization": f"Bearer {server.token}", "Content-Type": PACKAGE_MEDIA_TYPE},
    )
    assert other.status_code == 404


def test_hostile_host_swaps_the_staged_package(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host replaces the staged bytes after the upload: the Keep loads
    only the pinned digest, so it refuses; the secret stays with the client."""
    canary = b"canary-" + secrets.token_hex(16).encode()
    token = tmp_path / "token"
    token.write_bytes(canary)
    wanted = _package(tmp_path, WORDCOUNT, "wc", ("/secrets/token",), ("token",))
    evil = _package(tmp_path, HELLO, "evil", ("/secrets/token",), ("token",))

    original = ManagerClient.stage

    def stage_then_swap(self: ManagerClient, keep_id: str, package: bytes) -> None:
        original(self, keep_id, package)
        # The Keep's scratch directory (named after its pool id when it came
        # from the warm pool): the one it holds its lock on.
        pid = int(self.get(keep_id)["pid"])
        fds = Path(f"/proc/{pid}/fd").iterdir()
        (scratch,) = {t for fd in fds if (t := os.readlink(fd)).startswith("/dev/shm/stockade-keep-")}
        staged = Path(scratch) / STAGED_NAME
        staged.write_bytes(evil.read_bytes())  # what a hostile host can do

    # The CLI runs in a subprocess; do the same steps in-process instead.
    from stockade.client.attest import TrustConfig
    from stockade.client.deploy import DeployPlan, send_hello
    from stockade.client.deploy import deploy as run_session
    from stockade.errors import WorkloadRejected
    from stockade.measure.launch import keep_measurement
    from stockade.package import Package
    from stockade.policy import development_policy
    from stockade.wire.messages import Config, Expect, Release
    from stockade.wire.protocol import ClientSession

    released: list[Release] = []
    real_release = ClientSession.release
    monkeypatch.setattr(ClientSession, "release", lambda s, r: released.append(r) or real_release(s, r))
    data = wanted.read_bytes()
    digest = Package.from_bytes(data).digest
    with ManagerClient(server.url, server.token) as client:
        trust = TrustConfig(sim_root=client.sim_root(), policy=development_policy(keep_measurement()))
        keep = client.create("sim")
        stage_then_swap(client, keep["id"], data)
        sock = client.connect(keep["id"])
        plan = DeployPlan(
            package=None,
            digest=digest,
            config=Config(args=()),
            expect=Expect(digests=(digest,)),
            secrets=(("token", canary),),
            required_secrets=("token",),
        )
        try:
            with pytest.raises(WorkloadRejected, match=r"trusted boot: the package staged by the host"):
                run_session(sock, plan, trust, lambda fd, d: None, hello=send_hello(sock))
        finally:
            sock.close()
        time.sleep(0.3)
        log, _ = client.logs(keep["id"])
    assert released == []
    assert canary not in log
    for file in server.state.rglob("*"):
        if file.is_file():
            assert canary not in file.read_bytes()
