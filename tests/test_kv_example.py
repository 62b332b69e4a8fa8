"""The Keep-to-Keep example's workloads (examples/kv) on bare wasmtime-py.

The modules run in subprocesses through tests/kv_support.py, which backs the
socket descriptors of STOCKADE_LISTEN_KV / STOCKADE_CONNECT_KV with plain
loopback sockets (no TLS, no Keep): these tests check the workloads' own
protocol, limits and errors. Their deployment in Keeps with attested mutual
TLS is tests/test_keep2keep.py (scripts/demo-keep2keep.sh).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SERVER = EXAMPLES / "kv" / "server" / "kv-server.wasm"
CLIENT = EXAMPLES / "kv" / "client" / "kv-client.wasm"
SUPPORT = Path(__file__).resolve().parent / "kv_support.py"
TIMEOUT = 60


def _command(config: dict[str, object]) -> list[str]:
    return [sys.executable, str(SUPPORT), json.dumps(config)]


class Server:
    def __init__(
        self, connections: int | None = None, env: dict[str, str] | None = None, fail_accepts: int = 0
    ) -> None:
        args = [] if connections is None else [str(connections)]
        config: dict[str, object] = {
            "wasm": str(SERVER),
            "name": "kv-server",
            "args": args,
            "listen": ["127.0.0.1", 0],
            "fail_accepts": fail_accepts,
        }
        if env is not None:
            config["env"] = env
        self.proc = subprocess.Popen(_command(config), stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        match = re.fullmatch(r"kv_support: listening on (\d+)\n", line)
        assert match, line
        self.port = int(match.group(1))

    def finish(self) -> tuple[int, str]:
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        return self.proc.wait(timeout=TIMEOUT), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def client(port: int, args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    config = {"wasm": str(CLIENT), "name": "kv-client", "args": args, "connect": ["127.0.0.1", port]}
    return subprocess.run(
        _command(config), input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def talk(port: int, lines: list[bytes]) -> list[bytes]:
    """Sends raw lines to kv-server and returns its answer lines (until it closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"".join(lines))
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.splitlines()


def test_client_and_server_share_a_store_across_connections(servers: list[Server]) -> None:
    server = Server(2)
    servers.append(server)
    first = client(server.port, ["SET greeting hello, Keep", "GET greeting", "GET nothing", "COUNT", "NOPE"])
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "> SET greeting hello, Keep",
        "OK",
        "> GET greeting",
        "VALUE hello, Keep",
        "> GET nothing",
        "MISSING",
        "> COUNT",
        "COUNT 1",
        "> NOPE",
        "ERROR unknown command (SET, GET, DEL, COUNT, QUIT)",
    ]
    # The second connection reads its commands from standard input.
    second = client(server.port, [], stdin="GET greeting\r\nDEL greeting\n\nDEL greeting\nCOUNT\n")
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        "> GET greeting",
        "VALUE hello, Keep",
        "> DEL greeting",
        "DELETED",
        "> DEL greeting",
        "MISSING",
        "> COUNT",
        "COUNT 0",
    ]
    code, err = server.finish()
    assert code == 0
    assert err.splitlines() == [
        "kv-server: serving 2 connection(s) on descriptor 1000",
        "kv-server: connection 1: 6 command(s), QUIT, 1 entries",
        "kv-server: connection 2: 5 command(s), QUIT, 0 entries",
    ]


def test_server_limits(servers: list[Server]) -> None:
    server = Server(1)
    servers.append(server)
    answers = talk(
        server.port,
        [
            b"SET " + b"k" * 65 + b" v\n",
            b"SET bad/key v\n",
            b"SET k " + b"v" * 1025 + b"\n",
            b"SET k " + b"v" * 1024 + b"\n",
            b"SET k a\tb\n",
            b"SET k\n",
            b"GET\n",
            b"COUNT 1\n",
            b"SET " + b"x" * 1200 + b"\n",
            b"GET k\n",  # never read: the connection ends at the long line
        ],
    )
    assert answers == [
        b"ERROR key must be 1 to 64 bytes",
        b"ERROR key may hold only letters, digits and ._:-",
        b"ERROR value longer than 1024 bytes",
        b"OK",
        b"ERROR control character in value",
        b"ERROR usage: SET <key> <value>",
        b"ERROR bad arguments for GET",
        b"ERROR bad arguments for COUNT",
        b"ERROR line too long",
    ]
    code, err = server.finish()
    assert code == 0
    assert "connection 1: 8 command(s), line too long, 1 entries" in err


def test_server_store_is_bounded(servers: list[Server]) -> None:
    server = Server(1)
    servers.append(server)
    lines = [f"SET k{i} v\n".encode() for i in range(1001)] + [b"SET k0 again\n", b"COUNT\n", b"QUIT\n"]
    answers = talk(server.port, lines)
    assert answers[:1000] == [b"OK"] * 1000
    assert answers[1000:] == [b"ERROR store full (1000 entries)", b"OK", b"COUNT 1000", b"BYE"]
    assert server.finish()[0] == 0


def test_server_peer_closing_early_is_one_connection(servers: list[Server]) -> None:
    server = Server(1)
    servers.append(server)
    assert talk(server.port, [b"SET a 1"]) == [b"OK"]  # a last line without "\n" still counts
    code, err = server.finish()
    assert code == 0
    assert "connection 1: 1 command(s), closed by the peer, 1 entries" in err


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["0"], None, "CONNECTIONS must be an integer from 1 to 1000"),
        (["1001"], None, "CONNECTIONS must be an integer from 1 to 1000"),
        (["1", "2"], None, "usage: kv-server [CONNECTIONS]"),
        ([], {"STOCKADE_LISTEN_KV": "three"}, "STOCKADE_LISTEN_KV is not a descriptor number"),
    ],
)
def test_server_bad_arguments(args: list[str], env: dict[str, str] | None, message: str) -> None:
    # Without "listen" the harness sets no socket: the environment is the test's.
    config: dict[str, object] = {"wasm": str(SERVER), "name": "kv-server", "args": args, "env": env or {}}
    result = subprocess.run(_command(config), capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_server_without_its_socket() -> None:
    config = {"wasm": str(SERVER), "name": "kv-server", "args": []}
    result = subprocess.run(_command(config), capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 2
    assert "STOCKADE_LISTEN_KV is not set" in result.stderr


def test_server_goes_on_after_a_refused_peer(servers: list[Server]) -> None:
    """An accept that fails with connaborted (the runtime refused a peer)
    is reported and does not count as a connection."""
    server = Server(1, fail_accepts=2)
    servers.append(server)
    assert talk(server.port, [b"COUNT\n", b"QUIT\n"]) == [b"COUNT 0", b"BYE"]
    code, err = server.finish()
    assert code == 0
    assert err.count("kv-server: accept failed:") == 2
    assert "connection 1: 2 command(s), QUIT, 0 entries" in err


def test_server_gives_up_after_100_refused_peers(servers: list[Server]) -> None:
    server = Server(1, fail_accepts=100)
    servers.append(server)
    code, err = server.finish()
    assert code == 1
    assert err.count("kv-server: accept failed:") == 100


def test_server_accept_on_a_bad_descriptor_exits_1() -> None:
    config = {"wasm": str(SERVER), "name": "kv-server", "args": [], "env": {"STOCKADE_LISTEN_KV": "77"}}
    result = subprocess.run(_command(config), capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 1
    assert "kv-server: accept failed" in result.stderr


def test_client_errors() -> None:
    config = {"wasm": str(CLIENT), "name": "kv-client", "args": ["GET a"]}
    result = subprocess.run(_command(config), capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 2
    assert "STOCKADE_CONNECT_KV is not set" in result.stderr

    too_many = "".join(f"GET k{i}\n" for i in range(1001))
    config = {"wasm": str(CLIENT), "name": "kv-client", "args": [], "env": {"STOCKADE_CONNECT_KV": "5"}}
    result = subprocess.run(
        _command(config), input=too_many, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 2
    assert "at most 1000 commands" in result.stderr


def test_client_reports_a_server_that_closes_early() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        proc = subprocess.Popen(
            _command(
                {"wasm": str(CLIENT), "name": "kv-client", "args": ["GET a"], "connect": ["127.0.0.1", port]}
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            deadline = time.monotonic() + TIMEOUT
            data = b""
            while not data.endswith(b"\n") and time.monotonic() < deadline:
                data += conn.recv(100)
            assert data == b"GET a\n"
            conn.sendall(b"VALUE cut")  # no line end, then close
        out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 1
    assert "kv-client: connection answer too long or cut" in err
    assert out == ""
