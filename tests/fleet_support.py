"""Three (or more) real keep managers and their fleet registration, for the
placement tests (tests/test_fleet_place.py) and bench/bench_fleet_deploy.py.

Every host is a real ``stockade host serve`` on a free loopback port with
its own state directory (the session's sim chip copied in, so that one
``--sim-root`` verifies all of them, unless ``own_chip``), and the same
tenant token: the hosts' tokens files hold the hash of one token, as
``stockade host init --token-file`` provisions it (fleet-host's part).

:class:`Registrar` stands in for ``stockade host serve --fleet`` (built in
parallel by fleet-host): it writes the host's record under a lease and
refreshes the lease while the host's process is alive, like a registrar
inside that process would; when the process dies (SIGKILL) it stops, and
the lease expires. A later switch can replace it with ``host serve
--fleet``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from etcd_support import EtcdServer
from manager_support import STOCKADE, _free_port, wait_healthy
from stockade.fleet.etcd import Etcd, FleetConfig, parse_endpoints
from stockade.fleet.record import HostRecord, Offer, drain_prefix, hosts_prefix

#: The sim offer every test host makes (the record's measurement is a hint
#: only; nothing checks it, on purpose).
SIM_OFFER = Offer("sim", "sim", "")


def fleet_etcd(server: EtcdServer) -> Etcd:
    return Etcd(FleetConfig(parse_endpoints(server.url)))


@dataclass
class Host:
    """One keep manager process (restartable on the same port and state)."""

    host_id: str
    state: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    *STOCKADE,
                    "host",
                    "serve",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--state-dir",
                    str(self.state),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_healthy(self.url, self.proc, self.log, seconds=60)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "stockade", *args],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


@contextlib.contextmanager
def running_hosts(
    state_dir: Path, base: Path, count: int = 3, quota: int = 16, own_chip: tuple[int, ...] = ()
) -> Iterator[tuple[list[Host], Path]]:
    """``count`` managers sharing one tenant token (quota ``quota``); the
    hosts whose index is in ``own_chip`` get a sim chip of their own (a
    host whose Keeps the deployer's --sim-root does not verify). Yields
    the hosts and the token file."""
    hosts: list[Host] = []
    token_file = base / "token"
    try:
        for i in range(count):
            state = base / f"host{i}"
            state.mkdir(mode=0o700, parents=True)
            if i not in own_chip:
                shutil.copytree(state_dir / "sim", state / "sim")
            if i == 0:
                proc = _cli("host", "init", "--state-dir", str(state), "--quota", str(quota))
                assert proc.returncode == 0, proc.stderr
                token_file.write_text(proc.stdout.decode().strip() + "\n")
                token_file.chmod(0o600)
            else:  # the same token's hash: `host init --token-file` does this
                shutil.copy2(base / "host0" / "tokens.json", state / "tokens.json")
            host = Host(f"host-{i}", state, _free_port(), base / f"host{i}.log")
            host.start()
            hosts.append(host)
        yield hosts, token_file
    finally:
        for host in hosts:
            host.stop()


class Registrar:
    """Registers hosts in the fleet and refreshes their leases while their
    processes live (a test stand-in for ``host serve --fleet``)."""

    def __init__(self, etcd: Etcd, ttl: int = 3) -> None:
        self.etcd = etcd
        self.ttl = ttl
        self.leases: dict[str, int] = {}
        self.records: dict[str, tuple[Host | None, HostRecord]] = {}
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._thread = threading.Thread(target=self._refresh, daemon=True)
        self._thread.start()

    def record(self, host: Host, **kw: object) -> HostRecord:
        base: dict[str, object] = {
            "id": host.host_id,
            "api_url": host.url,
            "version": "0.1.0",
            "offers": (SIM_OFFER,),
            "max_keeps": 16,
            "free_memory_mib": 4096,
            "started": time.time(),
        }
        return HostRecord(**{**base, **kw})  # type: ignore[arg-type]

    def register(self, host: Host | None, record: HostRecord) -> None:
        """Write ``record`` under a fresh lease; refresh it while ``host``
        runs (None: a record no process stands behind, refreshed until
        :meth:`unregister`)."""
        with self._lock:
            lease = self.etcd.grant(self.ttl)
            stamped = replace(record, refreshed=time.time())
            self.etcd.put(self.etcd.key("hosts", record.id), stamped.to_json(), lease)
            self.leases[record.id] = lease
            self.records[record.id] = (host, record)

    def unregister(self, host_id: str) -> None:
        with self._lock:
            lease = self.leases.pop(host_id, None)
            self.records.pop(host_id, None)
        if lease is not None:
            with contextlib.suppress(Exception):
                self.etcd.revoke(lease)

    def _refresh(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                for host_id, (host, record) in list(self.records.items()):
                    if host is not None and not host.alive:
                        # A crashed host refreshes nothing: its lease expires.
                        self.leases.pop(host_id, None)
                        self.records.pop(host_id, None)
                        continue
                    with contextlib.suppress(Exception):  # etcd down: retried at the next tick
                        if self.etcd.keepalive(self.leases[host_id]) <= 0:
                            self.register(host, record)  # the lease was lost: register again

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for host_id in list(self.leases):
            self.unregister(host_id)


def drain(etcd: Etcd, host_id: str, on: bool = True) -> None:
    key = etcd.key("drain", host_id)
    if on:
        etcd.put(key, b"{}")
    else:
        etcd.delete(key)


def registered(etcd: Etcd) -> set[str]:
    prefix = hosts_prefix(etcd.config.prefix)
    return {key.removeprefix(prefix) for key, _, _ in etcd.get_prefix(prefix)}


def drained(etcd: Etcd) -> set[str]:
    prefix = drain_prefix(etcd.config.prefix)
    return {key.removeprefix(prefix) for key, _, _ in etcd.get_prefix(prefix)}
