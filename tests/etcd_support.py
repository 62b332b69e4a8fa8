"""A real etcd for the fleet tests (Debian's ``etcd-server``; .ci/run
installs it): one member on free loopback ports with a temporary data
directory, started and stopped by the tests themselves."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest


def etcd_missing() -> str | None:
    if shutil.which("etcd") is None:
        return "etcd is not installed (Debian: apt-get install etcd-server etcd-client)"
    return None


def need_etcd() -> None:
    """Skip where etcd is missing; in CI (which installs it) fail instead."""
    reason = etcd_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the fleet tests: {reason}")
    pytest.skip(reason)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class EtcdServer:
    """One etcd member on loopback; ``stop``/``start`` keep its data."""

    data_dir: Path
    log: Path
    client_port: int = 0
    peer_port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The ``--fleet`` URL of this member."""
        return f"etcd://127.0.0.1:{self.client_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20) -> None:
        if not self.client_port:
            self.client_port, self.peer_port = _free_ports(2)
        peer = f"http://127.0.0.1:{self.peer_port}"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    "etcd",
                    "--name",
                    "t",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen-client-urls",
                    self.http,
                    "--advertise-client-urls",
                    self.http,
                    "--listen-peer-urls",
                    peer,
                    "--initial-advertise-peer-urls",
                    peer,
                    "--initial-cluster",
                    f"t={peer}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.http}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "etcd did not come up: " + self.log.read_text()[-3000:]
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def etcdctl(self, *args: str) -> str:
        out = subprocess.run(
            ["etcdctl", "--endpoints", self.http, *args],
            capture_output=True,
            check=True,
            timeout=20,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        return out.stdout.decode()


@contextlib.contextmanager
def running_etcd(directory: Path) -> Iterator[EtcdServer]:
    need_etcd()
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "etcd-data"
    server = EtcdServer(data, directory / "etcd.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
