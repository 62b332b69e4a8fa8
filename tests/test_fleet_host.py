"""Fleet registration of ``stockade host serve --fleet`` (stockade.host.fleet),
the ``stockade fleet ls|keeps|drain`` views and ``host init --token-file``,
against a real etcd and real managers on loopback (issue 16)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest

from etcd_support import EtcdServer, running_etcd
from manager_support import HELLO, Server, deploy, running_server
from stockade.errors import FleetError, UsageError
from stockade.fleet.etcd import Etcd, FleetConfig, parse_endpoints
from stockade.fleet.record import HostRecord, Offer, parse_record, read_fleet
from stockade.host import fleet as hf
from stockade.host.tokens import add_token, load_tokens

pytestmark = pytest.mark.slow

TTL = 3  # the managers' --fleet-ttl here: refreshed every second


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "stockade", *args], capture_output=True, timeout=timeout, check=False
    )


def wait_for(what: str, check: Callable[[], object], seconds: float = 15) -> object:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with running_etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


def cfg(server: EtcdServer) -> FleetConfig:
    return FleetConfig(parse_endpoints(server.url))


def entries(server: EtcdServer) -> dict[str, HostRecord]:
    return {e.record.id: e.record for e in read_fleet(Etcd(cfg(server))) if e.record is not None}


def fleet_args(server: EtcdServer, *extra: str) -> tuple[str, ...]:
    return ("--fleet", server.url, "--fleet-ttl", str(TTL), *extra)


@pytest.fixture(scope="module")
def host(state_dir: Path, tmp_path_factory: pytest.TempPathFactory, etcd: EtcdServer) -> Iterator[Server]:
    with running_server(
        state_dir,
        tmp_path_factory,
        serve_args=fleet_args(etcd, "--fleet-label", "zone=a", "--fleet-label", "tier=gold"),
    ) as server:
        yield server


def host_id(server: Server) -> str:
    return (server.state / "fleet-id").read_text().strip()


def record_of(etcd: EtcdServer, server: Server) -> HostRecord:
    hid = host_id(server)
    return wait_for(f"{hid} in the fleet", lambda: entries(etcd).get(hid))  # type: ignore[return-value]


# -- registration --------------------------------------------------------------


def test_registration_has_the_fields(etcd: EtcdServer, host: Server) -> None:
    from stockade import __version__
    from stockade.measure.launch import keep_measurement

    rec = record_of(etcd, host)
    assert re.fullmatch(r"[a-z0-9-]+-[0-9a-f]{6}", rec.id)
    assert rec.api_url == host.url
    assert rec.version == __version__
    expected = keep_measurement().hex()
    assert rec.offers == (
        Offer("sim", "sim", expected),
        Offer("sim-snp", "sim", expected),
        Offer("sim-tdx", "sim-tdx", expected),
    )
    assert rec.labels == {"zone": "a", "tier": "gold"}
    assert rec.max_keeps == 16 + 1  # the quotas of the two tokens
    assert rec.free_memory_mib > 0
    assert rec.api_tls_sha256 == ""  # plain http
    assert rec.started <= rec.refreshed <= time.time() + 1
    assert not rec.drained
    assert metric(host, "stockade_fleet_registered") == 1
    assert metric(host, "stockade_fleet_last_refresh_seconds") < TTL
    # The id is stable per state directory.
    assert (host.state / "fleet-id").read_text().strip() == rec.id
    # GET /v1/host (the status page's source) shows the membership.
    fleet = host_document(host)["fleet"]
    assert fleet["host_id"] == rec.id and fleet["state"] == "registered"
    assert fleet["endpoints"] == [etcd.http] and fleet["api_url"] == host.url
    assert fleet["labels"] == {"zone": "a", "tier": "gold"} and fleet["lease_ttl_s"] == TTL


def host_document(server: Server) -> dict[str, Any]:
    resp = httpx.get(f"{server.url}/v1/host", headers=server.headers(), timeout=10)
    assert resp.status_code == 200, resp.text
    doc = cbor2.loads(resp.content)
    assert isinstance(doc, dict)
    return doc


def test_refresh_updates_the_load(etcd: EtcdServer, host: Server) -> None:
    first = record_of(etcd, host)
    headers = {**host.headers(), "Content-Type": "application/cbor"}
    resp = httpx.post(
        f"{host.url}/v1/keeps", content=cbor2.dumps({"backend": "sim"}), headers=headers, timeout=30
    )
    assert resp.status_code == 201, resp.text
    keep_id = cbor2.loads(resp.content)["id"]
    try:
        loaded = wait_for("keeps_running 1", lambda: (r := record_of(etcd, host)).keeps_running == 1 and r)
        assert isinstance(loaded, HostRecord) and loaded.refreshed > first.refreshed
    finally:
        httpx.delete(f"{host.url}/v1/keeps/{keep_id}", headers=host.headers(), timeout=30)
    wait_for("keeps_running 0", lambda: record_of(etcd, host).keeps_running == 0)


def test_drained_host_shows_drained_and_keeps_serving(etcd: EtcdServer, host: Server) -> None:
    hid = record_of(etcd, host).id
    out = _cli("fleet", "drain", hid, "--fleet", etcd.url)
    assert out.returncode == 0, out.stderr
    assert b"drained" in out.stdout
    try:
        wait_for("drained in the record", lambda: record_of(etcd, host).drained)
        assert metric(host, "stockade_fleet_drained") == 1
        assert host_document(host)["fleet"]["state"] == "draining"
        listed = json.loads(_cli("fleet", "ls", "--json", "--fleet", etcd.url).stdout)
        assert [h["drained"] for h in listed["hosts"] if h["id"] == hid] == [True]
        # Direct use goes on: the API still creates Keeps.
        resp = httpx.get(f"{host.url}/v1/keeps", headers=host.headers(), timeout=10)
        assert resp.status_code == 200
    finally:
        out = _cli("fleet", "drain", hid, "--undo", "--fleet", etcd.url)
        assert out.returncode == 0 and b"no longer drained" in out.stdout
    wait_for("not drained", lambda: not record_of(etcd, host).drained)
    assert metric(host, "stockade_fleet_drained") == 0


def test_lost_lease_registers_again(etcd: EtcdServer, host: Server) -> None:
    hid = record_of(etcd, host).id
    client = Etcd(cfg(etcd))
    (lease,) = [e.lease for e in read_fleet(client) if e.record is not None and e.record.id == hid]
    client.revoke(lease)  # as if it had expired: the record goes with it
    assert hid not in entries(etcd)

    def new_lease() -> bool:
        return any(
            e.record is not None and e.record.id == hid and e.lease not in (0, lease)
            for e in read_fleet(client)
        )

    wait_for("a new lease", new_lease, seconds=TTL + 5)
    assert "registering again" in host.log.read_text()


# -- views ---------------------------------------------------------------------


def test_fleet_ls_lists_hosts_and_malformed_entries(etcd: EtcdServer, host: Server) -> None:
    hid = record_of(etcd, host).id
    etcd.etcdctl("put", "/stockade/v1/hosts/broken", "{not json")
    etcd.etcdctl("put", "/stockade/v1/hosts/liar", json.dumps({"v": 1, "id": "other"}))
    try:
        out = _cli("fleet", "ls", "--json", "--fleet", etcd.url)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        (mine,) = [h for h in doc["hosts"] if h["id"] == hid]
        assert mine["health"] == "ok" and mine["lease"]
        assert mine["platforms"] == ["sim", "sim-tdx"]
        assert mine["keeps_running"] == 0 and mine["max_keeps"] == 17
        assert mine["labels"] == {"zone": "a", "tier": "gold"}
        assert mine["refresh_age_s"] < hf.RECORD_EVERY_S + 2
        problems = {m["key"]: m["problem"] for m in doc["malformed"]}
        assert "not JSON" in problems["/stockade/v1/hosts/broken"]
        assert "malformed" in problems["/stockade/v1/hosts/liar"]
        text = _cli("fleet", "ls", "--fleet", etcd.url)
        assert text.returncode == 0, text.stderr
        plain = text.stdout.decode()
        assert hid in plain and "zone=a" in plain and "malformed entry /stockade/v1/hosts/broken" in plain
    finally:
        etcd.etcdctl("del", "--prefix", "/stockade/v1/hosts/broken")
        etcd.etcdctl("del", "--prefix", "/stockade/v1/hosts/liar")


def test_fleet_keeps_lists_across_hosts_and_reports_a_failing_host(etcd: EtcdServer, host: Server) -> None:
    hid = record_of(etcd, host).id
    headers = {**host.headers(), "Content-Type": "application/cbor"}
    resp = httpx.post(
        f"{host.url}/v1/keeps", content=cbor2.dumps({"backend": "sim"}), headers=headers, timeout=30
    )
    assert resp.status_code == 201, resp.text
    keep_id = cbor2.loads(resp.content)["id"]
    # A host that answers nothing: a registered record pointing at a closed port.
    dead = HostRecord("dead-host", "http://127.0.0.1:9", "0.1.0", (Offer("sim", "sim", ""),))
    etcd.etcdctl("put", "/stockade/v1/hosts/dead-host", dead.to_json().decode())
    try:
        out = _cli("fleet", "keeps", "--json", "--fleet", etcd.url, "--token-file", str(host.token_file))
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert {(k["host"], k["id"]) for k in doc["keeps"]} >= {(hid, keep_id)}
        assert [f["host"] for f in doc["failed"]] == ["dead-host"]
        assert "127.0.0.1:9" in doc["failed"][0]["error"]
        text = _cli("fleet", "keeps", "--fleet", etcd.url, "--token-file", str(host.token_file))
        assert text.returncode == 0
        assert keep_id in text.stdout.decode()
        assert b"host dead-host" in text.stderr
        # Without a token: a usage error, before any host is asked.
        env_less = _cli("fleet", "keeps", "--fleet", etcd.url)
        assert env_less.returncode == 2 and b"no API token" in env_less.stderr
    finally:
        etcd.etcdctl("del", "/stockade/v1/hosts/dead-host")
        httpx.delete(f"{host.url}/v1/keeps/{keep_id}", headers=host.headers(), timeout=30)


def test_fleet_commands_name_etcd_when_it_is_unreachable(tmp_path: Path) -> None:
    out = _cli("fleet", "ls", "--fleet", "etcd://127.0.0.1:9")
    assert out.returncode == FleetError.exit_code
    assert b"etcd" in out.stderr and b"127.0.0.1:9" in out.stderr and b"Traceback" not in out.stderr
    out = _cli("fleet", "ls", "--json", "--fleet", "etcd://127.0.0.1:9")
    assert json.loads(out.stdout)["exit_code"] == FleetError.exit_code
    out = _cli("fleet", "drain", "Not An Id", "--fleet", "etcd://127.0.0.1:9")
    assert out.returncode == 2 and b"host id" in out.stderr


def test_no_token_or_token_hash_in_etcd(etcd: EtcdServer, host: Server) -> None:
    record_of(etcd, host)
    dump = etcd.etcdctl("get", "", "--prefix", "-w", "json")
    rows = json.loads(dump).get("kvs", [])
    import base64

    blob = b"\n".join(base64.b64decode(r["key"]) + b"=" + base64.b64decode(r.get("value", "")) for r in rows)
    assert b"/stockade/v1/hosts/" in blob  # the scan sees the records
    for token in (host.token, host.small_token):
        digest = hashlib.sha256(token.encode()).digest()
        for needle in (token.encode(), digest.hex().encode(), digest, base64.b64encode(digest)):
            assert needle not in blob
    tokens_doc = json.loads((host.state / "tokens.json").read_text())
    for t in tokens_doc["tokens"]:
        assert t["sha256"].encode() not in blob and t["id"].encode() not in blob


def test_tls_host_advertises_https_and_its_certificate_and_keeps_needs_the_ca(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory, etcd: EtcdServer
) -> None:
    import ssl

    from test_manager_tls import self_signed

    cert, key = self_signed(tmp_path_factory.mktemp("fleet-tls"))
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    with running_server(
        state_dir, tmp_path_factory, tls, scheme="https", cacert=cert, serve_args=fleet_args(etcd)
    ) as server:
        rec = record_of(etcd, server)
        assert rec.api_url == server.url and rec.api_url.startswith("https://")
        assert rec.api_tls_sha256 == hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()
        token = ("--token-file", str(server.token_file))
        with_ca = _cli("fleet", "keeps", "--json", "--fleet", etcd.url, "--cacert", str(cert), *token)
        assert with_ca.returncode == 0, with_ca.stderr
        assert rec.id not in [f["host"] for f in json.loads(with_ca.stdout)["failed"]]
        # Without the CA the certificate does not verify: the token is not sent, the host is reported.
        without = _cli("fleet", "keeps", "--json", "--fleet", etcd.url, *token)
        failed = {f["host"]: f["error"] for f in json.loads(without.stdout)["failed"]}
        assert "certificate" in failed[rec.id].lower()


# -- leaving the fleet ---------------------------------------------------------


def test_sigkill_entry_expires_within_the_ttl(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory, etcd: EtcdServer
) -> None:
    with running_server(state_dir, tmp_path_factory, serve_args=fleet_args(etcd)) as server:
        hid = record_of(etcd, server).id
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        killed = time.monotonic()
        wait_for("the entry to expire", lambda: hid not in entries(etcd), seconds=TTL + 5)
        # The lease TTL, plus etcd's expiry check (every 500 ms) and this poll's own read.
        assert time.monotonic() - killed <= TTL + 2


def test_etcd_outage_host_serves_on_and_registers_again_then_sigterm_removes_at_once(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with running_etcd(tmp_path_factory.mktemp("etcd-outage")) as etcd:
        etcd.stop()
        # Started while etcd is down: it serves anyway.
        started = time.monotonic()
        with running_server(state_dir, tmp_path_factory, serve_args=fleet_args(etcd)) as server:
            wait_for("an error in /metrics", lambda: metric(server, "stockade_fleet_errors_total") >= 1)
            assert metric(server, "stockade_fleet_registered") == 0
            assert math.isnan(metric(server, "stockade_fleet_last_refresh_seconds"))
            out = deploy(server, "--allow-sim", str(HELLO), timeout=90)
            assert out.returncode == 0, out.stderr
            log = server.log.read_text()
            assert "cannot register with etcd" in log and "serving on without the fleet" in log
            # Rate-limited: one warning per LOG_EVERY_S however many retries.
            warnings = log.count("cannot register with etcd")
            assert 1 <= warnings <= 1 + (time.monotonic() - started) / hf.LOG_EVERY_S
            wait_for("retries", lambda: metric(server, "stockade_fleet_errors_total") > warnings)
            etcd.start()
            wait_for(
                "registration after etcd came back", lambda: host_id(server) in entries(etcd), seconds=40
            )
            wait_for("registered 1", lambda: metric(server, "stockade_fleet_registered") == 1)
            # etcd restarted under a registered host: it stays registered.
            etcd.stop()
            wait_for("registered 0", lambda: metric(server, "stockade_fleet_registered") == 0, seconds=10)
            etcd.start()
            wait_for("back", lambda: host_id(server) in entries(etcd), seconds=40)
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(15)
            assert host_id(server) not in entries(etcd)  # revoked on the way out, not expired
            assert "left the fleet" in server.log.read_text()


# -- tokens across hosts ---------------------------------------------------------


def test_init_token_file_registers_an_existing_token(tmp_path: Path) -> None:
    token, _ = add_token(tmp_path / "a")
    secret = tmp_path / "token"
    secret.write_text(token + "\n")
    out = _cli(
        "host", "init", "--state-dir", str(tmp_path / "b"), "--token-file", str(secret), "--quota", "3"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b""  # an existing token is never printed
    assert token.encode() not in out.stderr
    entry = load_tokens(tmp_path / "b").authenticate(token)
    assert entry is not None and entry.quota == 3
    assert token not in (tmp_path / "b" / "tokens.json").read_text()
    # Twice: refused.
    again = _cli("host", "init", "--state-dir", str(tmp_path / "b"), "--token-file", str(secret))
    assert again.returncode == 2 and b"registered already" in again.stderr
    # There is no way to give the token on the command line.
    helptext = _cli("host", "init", "--help").stdout.decode()
    assert "--token-file" in helptext and not re.search(r"--token\b(?!-)", helptext)


@pytest.mark.parametrize(
    "content", ["", "hunter2\n", "stk_short\n", "stk_" + "a" * 42 + "!\n", " stk_" + "a" * 44 + "\n"]
)
def test_init_token_file_refuses_what_is_not_a_token(tmp_path: Path, content: str) -> None:
    secret = tmp_path / "token"
    secret.write_text(content)
    out = _cli("host", "init", "--state-dir", str(tmp_path / "s"), "--token-file", str(secret))
    assert out.returncode == 2, out.stderr
    assert b"not a stockade API token" in out.stderr
    if content.strip():
        assert content.strip().encode() not in out.stderr
    assert not (tmp_path / "s" / "tokens.json").exists()


# -- units ----------------------------------------------------------------------


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    waits = [hf.backoff(n, rng) for n in range(1, 12)]
    assert hf.BACKOFF_MIN_S * 0.5 <= waits[0] <= hf.BACKOFF_MIN_S
    assert all(w <= hf.BACKOFF_MAX_S for w in waits)
    assert hf.backoff(30, rng) >= hf.BACKOFF_MAX_S * 0.5
    assert len({round(hf.backoff(5, rng), 6) for _ in range(20)}) > 1  # jitter


def test_host_id_is_stable_and_checked(tmp_path: Path) -> None:
    first = hf.host_id(tmp_path)
    assert hf.host_id(tmp_path) == first
    assert hf.host_id(tmp_path, "given-1") == "given-1"
    with pytest.raises(UsageError, match="--fleet-id"):
        hf.host_id(tmp_path, "Bad Id")
    (tmp_path / "fleet-id").write_text("../etc\n")
    with pytest.raises(UsageError, match="fleet-id"):
        hf.host_id(tmp_path)


def test_api_url_labels_tls_and_memory(tmp_path: Path) -> None:
    assert hf.default_api_url("127.0.0.1", 8470, False) == "http://127.0.0.1:8470"
    assert hf.default_api_url("::1", 1, True) == "https://[::1]:1"
    assert "0.0.0.0" not in hf.default_api_url("0.0.0.0", 1, True)
    assert hf.parse_labels(("a=1", "b=x=y")) == {"a": "1", "b": "x=y"}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        hf.parse_labels(("novalue",))
    bad = HostRecord("h", "http://127.0.0.1:1", "1", (Offer("sim", "sim"),), labels={"k": "bad value"})
    with pytest.raises(UsageError, match="labels"):
        hf.check_record(bad)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:    2097152 kB\n")
    assert hf.free_memory_mib(meminfo) == 2048
    assert hf.free_memory_mib(tmp_path / "missing") == 0
    with pytest.raises(UsageError, match="no PEM certificate"):
        hf.tls_sha256(meminfo)
    assert hf.offers_of(("sim-tdx", "snp"), {"sim-tdx": b"\x01"}) == (
        Offer("sim-tdx", "sim-tdx", "01"),
        Offer("snp", "snp", ""),
    )


def test_tls_fingerprint_is_the_der_sha256(tmp_path: Path) -> None:
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "h")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "cert.pem"
    pem.write_bytes(cert.public_bytes(Encoding.PEM))
    assert hf.tls_sha256(pem) == hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    assert ssl.PEM_cert_to_DER_cert(pem.read_text()) == cert.public_bytes(Encoding.DER)


def test_record_drained_field_is_strict() -> None:
    rec = HostRecord("h", "http://127.0.0.1:1", "1", (Offer("sim", "sim"),), drained=True)
    assert parse_record(rec.to_json()).drained
    doc = json.loads(rec.to_json())
    doc["drained"] = "yes"
    with pytest.raises(FleetError, match="drained"):
        parse_record(json.dumps(doc).encode())


def test_fleet_options_refuse_etcd_options_without_fleet(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cr3t-etcd\n")
    out = _cli("host", "serve", "--state-dir", str(tmp_path), "--etcd-user", "u")
    assert out.returncode == 2 and b"need --fleet" in out.stderr
    out = _cli("host", "serve", "--state-dir", str(tmp_path), "--fleet-id", "x")
    assert out.returncode == 2 and b"need --fleet" in out.stderr
    out = _cli("fleet", "ls", "--fleet", "etcd://127.0.0.1:9", "--fleet-prefix", "nope")
    assert out.returncode == 2 and b"--fleet-prefix" in out.stderr
    out = _cli("fleet", "ls", "--fleet", "etcd://127.0.0.1:9", "--etcd-password-file", str(tmp_path / "pw"))
    assert out.returncode == 2 and b"without --etcd-user" in out.stderr
    assert b"s3cr3t" not in out.stderr
    env = {**os.environ, "STOCKADE_FLEET": "etcd://127.0.0.1:9"}
    viaenv = subprocess.run(
        [sys.executable, "-m", "stockade", "fleet", "ls"],
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert viaenv.returncode == FleetError.exit_code


def test_bench_fleet_runs_and_reports_json(tmp_path: Path) -> None:
    """bench/bench_fleet.py with the smallest settings (no timing asserted)."""
    from etcd_support import need_etcd

    need_etcd()
    bench = Path(__file__).resolve().parent.parent / "bench" / "bench_fleet.py"
    args = ["--sizes", "3,6", "--seconds", "1", "--workers", "2", "--json"]
    proc = subprocess.run(
        [sys.executable, str(bench), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [row["hosts"] for row in doc["sizes"]] == [3, 6]
    assert all(row["keys"] == row["hosts"] and row["placement_reads"] > 0 for row in doc["sizes"])


class _CountingEtcd:
    """Stands in for stockade.fleet.etcd.Etcd to count what the registrar
    sends (the real etcd tests above check that it works)."""

    def __init__(self) -> None:
        self.puts: list[bytes] = []
        self.alive = True
        self.grants = 0
        self.drained = False

    def key(self, *parts: str) -> str:
        return "/stockade/v1/" + "/".join(parts)

    def keepalive(self, lease: int) -> int:
        return 3 if self.alive else -1

    def get(self, key: str) -> bytes | None:
        return b"{}" if self.drained and "/drain/" in key else None

    def grant(self, ttl: int) -> int:
        self.grants += 1
        self.alive = True
        return 100 + self.grants

    def put(self, key: str, value: bytes, lease: int | None = None) -> None:
        self.puts.append(value)


def test_registrar_writes_the_record_only_when_due() -> None:
    fake = _CountingEtcd()
    load = [0]
    rec = HostRecord("h1", "http://127.0.0.1:1", "1", (Offer("sim", "sim"),))
    reg = hf.Registrar(cfg_of("etcd://127.0.0.1:9"), rec, load=lambda: load[0], ttl=3, etcd=fake)  # type: ignore[arg-type]
    reg.refresh_once()
    assert fake.grants == 1 and len(fake.puts) == 1  # registered
    reg.refresh_once()
    assert len(fake.puts) == 1  # nothing changed: keep-alive only
    load[0] = 2
    reg.refresh_once()
    assert len(fake.puts) == 2 and parse_record(fake.puts[-1]).keeps_running == 2
    fake.drained = True
    reg.refresh_once()
    assert len(fake.puts) == 3 and parse_record(fake.puts[-1]).drained and reg.status.drained
    reg._written_at -= reg.record_every  # the record is RECORD_EVERY_S old
    reg.refresh_once()
    assert len(fake.puts) == 4
    fake.alive = False  # the lease expired: a new one, and the record again
    reg.refresh_once()
    assert fake.grants == 2 and len(fake.puts) == 5 and reg.status.registrations == 2


def cfg_of(url: str) -> FleetConfig:
    return FleetConfig(parse_endpoints(url))
