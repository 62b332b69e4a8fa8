"""Which hosts count as loopback for sending the API token over plain http
(issue 13, item 7): ``localhost`` when it resolves to loopback only, and
loopback IP literals; never ``*.localhost`` or other names."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import pytest

from stockade.client.remote import ManagerClient, is_loopback
from stockade.errors import UsageError


@pytest.mark.parametrize(
    "host", ["localhost", "LocalHost", "127.0.0.1", "127.8.9.10", "::1", "[::1]", "::ffff:127.0.0.1"]
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        "evil.localhost",
        "localhost.evil.example",
        "a.b.localhost",
        "localhost.",
        "127.0.0.1.nip.io",
        "0.0.0.0",
        "::",
        "::ffff:10.0.0.1",
        "10.0.0.1",
        "host.example",
    ],
)
def test_not_loopback_hosts(host: str) -> None:
    assert not is_loopback(host)


def test_localhost_resolving_elsewhere_is_not_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def resolver(addresses: list[str]) -> Any:
        def getaddrinfo(host: str, *args: Any, **kw: Any) -> list[Any]:
            if host != "localhost":
                return real(host, *args, **kw)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in addresses]

        return getaddrinfo

    monkeypatch.setattr(socket, "getaddrinfo", resolver(["127.0.0.1", "192.0.2.7"]))
    assert not is_loopback("localhost")
    with pytest.raises(UsageError, match="refusing to send the API token over plain http"):
        ManagerClient("http://localhost:8470", "stk_token")
    monkeypatch.setattr(socket, "getaddrinfo", resolver(["127.0.0.1"]))
    assert is_loopback("localhost")
    ManagerClient("http://localhost:8470", "stk_token").close()


def test_plain_http_to_a_dot_localhost_name_is_refused() -> None:
    for url in ("http://evil.localhost:8470", "http://localhost.:8470"):
        with pytest.raises(UsageError, match="refusing to send the API token over plain http"):
            ManagerClient(url, "stk_token")
        ManagerClient(url, "stk_token", allow_insecure_http=True).close()
    env = {**os.environ, "STOCKADE_TOKEN": "stk_secret_x"}
    proc = subprocess.run(
        [sys.executable, "-m", "stockade", "keeps", "ls", "--host", "http://evil.localhost:8470"],
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert b"refusing to send the API token" in proc.stderr and b"stk_secret_x" not in proc.stderr
