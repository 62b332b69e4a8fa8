"""Published ports (ADR 0027 addendum): ``stockade host serve --keep-ports``
and ``stockade deploy --host URL --publish NAME``. The keep manager binds a
public TCP port and forwards it, bytes only, to the Unix socket the Keep
listens on; it sees TLS records only.

End to end: a real manager and a real steward on loopback, a sim Keep with
a published listen socket, a Python client with a workload certificate that
talks mutual TLS to the workload through the PUBLIC port (via a capturing
proxy: the bytes the manager forwards carry no plaintext canary); the port
is released when the Keep ends. The API refuses publishing without
--keep-ports, when the range is exhausted, and for bad names. The
forwarder itself (tap, connection bound, release) and the unix: address
parser are tested in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import httpx
import pytest

from manager_support import STOCKADE, Server, problem_of, running_server
from stockade.host.manager.portfwd import (
    NoFreePort,
    PortForwarder,
    PortRange,
    bind_path,
    check_publish,
)
from stockade.host.manager.supervisor import Supervisor
from stockade.testing.steward import Steward, free_port, steward_server
from stockade.wire.messages import PD_TYPE, SocketAddress, check_socket_address, parse_unix_address
from test_host_api_spec import schema, valid
from test_netsock_e2e import CLIENT_DIGEST, _client_files, _connect, _echo_package, _env, _exchange

pytestmark = pytest.mark.slow

CANARY = b"plaintext-canary-7f3a9c: never on the host"


@pytest.fixture(scope="module")
def steward(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[Steward]:
    with steward_server(tmp_path_factory.mktemp("steward"), state_dir) as s:
        yield s


@pytest.fixture(scope="module")
def keep_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(state_dir: Path, tmp_path_factory: pytest.TempPathFactory, keep_port: int) -> Iterator[Server]:
    """A manager that may publish exactly one port."""
    with running_server(
        state_dir, tmp_path_factory, serve_args=("--keep-ports", f"{keep_port}-{keep_port}")
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def plain_server(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A manager without --keep-ports."""
    with running_server(state_dir, tmp_path_factory) as srv:
        yield srv


class Proxy:
    """A loopback TCP proxy to ``port`` that records every byte both ways."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=30)
            except OSError:  # not published yet
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                with self.lock:
                    self.seen += data
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def _port_free(port: int) -> bool:
    try:
        with socket.create_server(("127.0.0.1", port)):
            return True
    except OSError:
        return False


def _create(server: Server, body: object) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/keeps",
        content=cbor2.dumps(body),
        headers={**server.headers(), "Content-Type": "application/cbor"},
        timeout=60,
    )


def _kill(server: Server, keep_id: str) -> None:
    httpx.delete(f"{server.url}/v1/keeps/{keep_id}", headers=server.headers(), timeout=30)


# -------------------------------------------------------------- end to end


def test_a_published_port_reaches_the_workload_through_the_manager(
    server: Server, steward: Steward, keep_port: int, tmp_path: Path
) -> None:
    package = _echo_package(tmp_path, accept=1)
    argv = [
        *STOCKADE, "deploy", "--host", server.url, "--token-file", str(server.token_file),
        "--sim-root", str(server.state / "sim" / "chip" / "ark.der"), "--allow-sim", "--json",
        "--timeout", "60", "--steward", steward.url, "--steward-ca", str(steward.ca),
        "--publish", "echo", str(package),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(server.state))
    proxy = Proxy(keep_port)
    try:
        good = _client_files(steward, tmp_path, CLIENT_DIGEST)
        deadline = time.monotonic() + 90
        while True:  # the Keep binds only after its certificate
            try:
                sock = _connect(steward, proxy.port, good)
                break
            except (ConnectionRefusedError, OSError):
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the published port never reached the workload"
                time.sleep(0.3)
        with sock:
            assert _exchange(sock, CANARY) == CANARY
            sock.unwrap()
        out, err = proc.communicate(timeout=60)
    finally:
        proxy.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)
    assert doc["stdout"] == "done\n"
    public = f"127.0.0.1:{keep_port}"
    assert doc["published"] == {"echo": public}
    assert f"stockade: published echo at {public} (forwarded by the keep manager)" in err.decode()
    # The Keep listened on the manager's Unix socket in its scratch directory.
    listening = doc["net"][0]
    assert listening["event"] == "listening" and listening["detail"].startswith("unix:/")
    assert doc["keep_id"] in listening["detail"] and listening["detail"].endswith("/net-echo.sock")
    assert [e["event"] for e in doc["net"]] == ["listening", "accepted"]
    # What went through the manager's port: TLS records, no plaintext.
    with proxy.lock:
        seen = bytes(proxy.seen)
    assert len(seen) > 2 * len(CANARY)
    assert CANARY not in seen and b"plaintext-canary" not in seen
    # The Keep ended: its port is released (free for another Keep).
    deadline = time.monotonic() + 20
    while not _port_free(keep_port):
        assert time.monotonic() < deadline, "the published port was not released"
        time.sleep(0.2)
    assert not Path(listening["detail"].removeprefix("unix:")).exists()


# -------------------------------------------------------------- the API


def test_publishing_without_keep_ports_is_refused(plain_server: Server) -> None:
    resp = _create(plain_server, {"backend": "sim", "publish": ["echo"]})
    assert resp.status_code == 422
    pd = problem_of(resp)
    assert pd[PD_TYPE] == "publishing-disabled"
    assert "--keep-ports" in str(pd)


def test_more_names_than_free_ports_is_refused_whole(server: Server, keep_port: int) -> None:
    resp = _create(server, {"backend": "sim", "publish": ["a", "b"]})
    # One port in the range: two names exhaust it, and nothing stays bound.
    assert resp.status_code == 503
    assert problem_of(resp)[PD_TYPE] == "ports-exhausted"
    assert _port_free(keep_port)


def test_exhausted_range_is_refused_and_a_released_port_is_reused(server: Server, keep_port: int) -> None:
    first = _create(server, {"backend": "sim", "publish": ["echo"]})
    assert first.status_code == 201, first.content
    schema("keep-document").validate_cbor(first.content)  # docs/host-api.cddl
    doc = cbor2.loads(first.content)
    try:
        published = doc["published"]["echo"]
        assert published["public"] == f"127.0.0.1:{keep_port}"
        assert published["bind"].startswith("unix:/") and published["bind"].endswith("/net-echo.sock")
        assert not _port_free(keep_port)
        second = _create(server, {"backend": "sim", "publish": ["other"]})
        assert second.status_code == 503
        assert problem_of(second)[PD_TYPE] == "ports-exhausted"
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        counted = re.search(
            r'^stockade_keep_creates_total\{outcome="ports-exhausted"\} ([0-9.]+)$', metrics, re.M
        )
        assert counted is not None and float(counted[1]) >= 1
        # A create without publish is not affected.
        third = _create(server, {"backend": "sim"})
        assert third.status_code == 201
        _kill(server, cbor2.loads(third.content)["id"])
    finally:
        _kill(server, doc["id"])
    # Killed: the port is free and published again.
    again = _create(server, {"backend": "sim", "publish": ["echo"]})
    assert again.status_code == 201, again.content
    _kill(server, cbor2.loads(again.content)["id"])
    assert _port_free(keep_port)


@pytest.mark.parametrize(
    "publish",
    [
        "echo",  # not a list
        [1],
        ["Echo"],
        ["-x"],
        ["a" * 33],
        ["echo", "echo"],
        [f"s{i}" for i in range(9)],
    ],
)
def test_bad_publish_names_are_400(server: Server, publish: object) -> None:
    resp = _create(server, {"backend": "sim", "publish": publish})
    assert resp.status_code == 400
    assert problem_of(resp)[PD_TYPE] == "bad-request"
    if publish != ["echo", "echo"]:  # CDDL cannot say "distinct"
        assert not valid("create-request", cbor2.dumps({"backend": "sim", "publish": publish}))


def test_create_requests_with_publish_match_the_schema() -> None:
    for publish in ([], ["echo"], [f"s{i}" for i in range(8)]):
        schema("create-request").validate_cbor(cbor2.dumps({"backend": "sim", "publish": publish}))


# -------------------------------------------------------------- the client


def _deploy_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*STOCKADE, "deploy", *args], check=False, capture_output=True, timeout=60)


def test_publish_and_listen_for_one_name_is_a_usage_error(server: Server, tmp_path: Path) -> None:
    package = _echo_package(tmp_path, accept=1)
    proc = _deploy_cli(
        "--host", server.url, "--token-file", str(server.token_file), "--allow-sim",
        "--sim-root", str(server.state / "sim" / "chip" / "ark.der"),
        "--steward", "https://127.0.0.1:1", "--publish", "echo", "--listen", "echo=127.0.0.1:0", str(package),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert b"--publish echo and --listen echo: give one" in proc.stderr


def test_publish_of_an_undeclared_socket_is_a_usage_error(server: Server, tmp_path: Path) -> None:
    package = _echo_package(tmp_path, accept=1)
    proc = _deploy_cli(
        "--host", server.url, "--token-file", str(server.token_file), "--allow-sim",
        "--sim-root", str(server.state / "sim" / "chip" / "ark.der"), "--publish", "nope", str(package),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert b"--publish nope: the package declares no listen socket 'nope'" in proc.stderr


def test_publish_without_host_is_a_usage_error(tmp_path: Path) -> None:
    package = _echo_package(tmp_path, accept=1)
    proc = _deploy_cli("--fleet", "etcd://127.0.0.1:1", "--publish", "echo", str(package))
    assert proc.returncode == 2, proc.stderr
    assert b"--publish needs --host URL" in proc.stderr
    run = subprocess.run(
        [*STOCKADE, "run", "--publish", "echo", str(package)], check=False, capture_output=True, timeout=60
    )
    assert run.returncode == 2 and b"No such option '--publish'" in run.stderr


# -------------------------------------------------------------- in process


@pytest.mark.parametrize(
    "text",
    [
        "unix:",
        "unix:relative/x.sock",
        "unix:/",
        "unix:/a/../b",
        "unix:/a/./b",
        "unix://a",
        "unix:/a/",
        "unix:/a\x00b",
        "unix:/a\nb",
        "unix:/" + "x" * 107,
        "/abs/without/prefix",
    ],
)
def test_bad_unix_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_unix_address(text)
    with pytest.raises(ValueError):
        check_socket_address(text, "listen")


def test_unix_addresses_are_for_listen_sockets_only() -> None:
    assert parse_unix_address("unix:/run/k/net-echo.sock") == "/run/k/net-echo.sock"
    assert parse_unix_address("unix:/" + "x" * 106) == "/" + "x" * 106
    SocketAddress("listen", "echo", "unix:/run/k/net-echo.sock")
    with pytest.raises(ValueError):
        check_socket_address("unix:/run/k/net-echo.sock", "connect")
    from stockade.errors import ProtocolError

    with pytest.raises(ProtocolError):
        SocketAddress("connect", "echo", "unix:/run/k/net-echo.sock")


def test_port_range_and_publish_names() -> None:
    assert len(PortRange.parse("20000-20009")) == 10
    for bad in ("20000", "2-1", "0-5", "1-70000", "a-b", "1-2-3"):
        with pytest.raises(ValueError):
            PortRange.parse(bad)
    assert check_publish(["kv", "web-1"]) == ("kv", "web-1")
    with pytest.raises(ValueError):
        bind_path(Path("/" + "d" * 100), "echo")  # too long for a Unix socket


async def _echo_unix(path: Path) -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(echo, str(path))


def test_the_forwarder_copies_bytes_bounds_connections_and_releases(tmp_path: Path) -> None:
    port = free_port()
    seen: list[tuple[str, bytes]] = []

    async def scenario() -> None:
        fwd = PortForwarder(
            "127.0.0.1", PortRange(port, port), max_connections=1, tap=lambda d, b: seen.append((d, b))
        )
        await fwd.reserve("k1", ("echo",))
        with pytest.raises(NoFreePort):
            await fwd.reserve("k2", ("echo",))
        assert "k2" not in fwd._keeps
        # Before the Keep listens, a connection is closed at once.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(10), 5) == b""
        writer.close()
        [published] = fwd.attach("k1", tmp_path)
        assert published.public == f"127.0.0.1:{port}"
        unix = await _echo_unix(Path(published.bind.removeprefix("unix:")))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        # The bound: a second connection at once is closed.
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(r2.read(10), 5) == b""
        w2.close()
        await fwd.release("k1")
        assert await asyncio.wait_for(reader.read(10), 5) == b""
        writer.close()
        unix.close()
        assert not Path(published.bind.removeprefix("unix:")).exists()
        assert _port_free(port)
        assert fwd.published("k1") == []

    asyncio.run(scenario())
    assert ("in", b"ping") in seen and ("out", b"ping") in seen


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"published": {"other": {"public": "h:1", "bind": "unix:/k/net-echo.sock"}}},
        {"published": {"echo": {"public": "h:1"}}},
        {"published": {"echo": {"public": 1, "bind": "unix:/k/net-echo.sock"}}},
        {"published": {"echo": {"public": "h:1", "bind": "unix:k/net-echo.sock"}}},
        {"published": {"echo": {"public": "h:1", "bind": "127.0.0.1:80"}}},
        {"published": ["echo"]},
    ],
)
def test_the_client_refuses_a_bad_published_answer(doc: dict[object, object]) -> None:
    from stockade.client.remote import published_of
    from stockade.errors import ManagerError

    with pytest.raises(ManagerError):
        published_of(doc, ("echo",))


def test_the_client_reads_a_published_answer() -> None:
    from stockade.client.remote import published_of

    doc = {"published": {"echo": {"public": "h:1", "bind": "unix:/k/net-echo.sock"}}}
    assert published_of(doc, ("echo",)) == {"echo": ("h:1", "unix:/k/net-echo.sock")}


def test_the_supervisor_releases_ports_when_a_keep_exits_or_cannot_publish(tmp_path: Path) -> None:
    from stockade.host.manager.supervisor import LoaderFailed
    from stockade.host.registry import Limits
    from test_supervisor import ALICE, StandIns, ended, run

    port = free_port()

    async def scenario(sup: Supervisor) -> None:
        # A Keep that exits at once: its port is published, then released.
        rec = await sup.create(ALICE, "sim", Limits(), ("echo",))
        assert [p.name for p in sup.published(rec.keep_id)] == ["echo"]
        assert (await ended(sup, rec.keep_id)).state == "exited"
        assert sup.published(rec.keep_id) == [] and _port_free(port)

    run(tmp_path, scenario, StandIns(code=""), forwarder=PortForwarder("127.0.0.1", PortRange(port, port)))

    # A scratch directory too deep for a Unix socket path: the started Keep
    # is killed, recorded failed, and its port released.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    stand_ins = StandIns()

    async def too_long(sup: Supervisor) -> None:
        with pytest.raises(LoaderFailed, match="cannot be published"):
            await sup.create(ALICE, "sim", Limits(), ("echo",))
        [rec] = await sup.records(ALICE.token_id)
        assert rec.state == "failed" and rec.detail == "cannot publish its ports"
        assert stand_ins.handles[0].keep.poll() is not None
        assert _port_free(port)

    run(deep, too_long, stand_ins, forwarder=PortForwarder("127.0.0.1", PortRange(port, port)))
