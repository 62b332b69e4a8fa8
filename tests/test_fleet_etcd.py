"""The fleet's etcd client (stockade.fleet.etcd) and host record
(stockade.fleet.record) against a real etcd on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcd_support import EtcdServer, running_etcd
from stockade.errors import FleetError, UsageError
from stockade.fleet.etcd import Endpoint, Etcd, FleetConfig, parse_endpoints, read_password
from stockade.fleet.record import (
    HostRecord,
    Offer,
    drain_prefix,
    hosts_prefix,
    parse_label_options,
    parse_record,
    read_fleet,
)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with running_etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


def config(server: EtcdServer, prefix: str, **kw: object) -> FleetConfig:
    return FleetConfig(parse_endpoints(server.url), prefix=prefix, **kw)  # type: ignore[arg-type]


def record(host_id: str = "h1", **kw: object) -> HostRecord:
    base: dict[str, object] = {
        "id": host_id,
        "api_url": "https://127.0.0.1:8443",
        "version": "0.1.0",
        "offers": (Offer("sim", "sim", "ab" * 48), Offer("sim-tdx", "tdx", "")),
    }
    return HostRecord(**{**base, **kw})  # type: ignore[arg-type]


# -- URLs and options ---------------------------------------------------------


def test_parse_endpoints() -> None:
    assert parse_endpoints("etcd://127.0.0.1:2379,10.0.0.2") == (
        Endpoint("http", "127.0.0.1", 2379),
        Endpoint("http", "10.0.0.2", 2379),
    )
    assert parse_endpoints("etcds://[::1]:2380") == (Endpoint("https", "::1", 2380),)
    assert str(Endpoint("https", "::1", 2380)) == "https://[::1]:2380"
    assert parse_endpoints("etcd://a:1,etcds://b:2") == (Endpoint("http", "a", 1), Endpoint("https", "b", 2))


@pytest.mark.parametrize(
    "url",
    [
        "",
        "127.0.0.1:2379",
        "redis://h:1",
        "etcd://user:pw@h:1",
        "etcd://h:1/path",
        "etcd://h:99999",
        "etcd://h:1,,h:2",
    ],
)
def test_bad_fleet_urls(url: str) -> None:
    with pytest.raises(UsageError, match="--fleet"):
        parse_endpoints(url)


def test_password_from_file_or_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOCKADE_ETCD_PASSWORD", raising=False)
    assert read_password(None) is None
    monkeypatch.setenv("STOCKADE_ETCD_PASSWORD", "from-env")
    assert read_password(None) == "from-env"
    (tmp_path / "pw").write_text("from-file\nignored\n")
    assert read_password(tmp_path / "pw") == "from-file"
    with pytest.raises(UsageError, match="cannot read a password"):
        read_password(tmp_path / "missing")


def test_password_is_not_in_the_config_repr() -> None:
    cfg = FleetConfig(parse_endpoints("etcd://h"), user="u", password="hunter2-canary")
    assert "hunter2-canary" not in repr(cfg)


# -- the record ---------------------------------------------------------------


def test_record_round_trip() -> None:
    rec = record(
        labels={"zone": "a"}, max_keeps=16, free_memory_mib=2048, keeps_running=3, started=1.5, refreshed=2.5
    )
    assert parse_record(rec.to_json()) == rec
    assert rec.platforms == ("sim", "tdx")
    assert rec.backends == ("sim", "sim-tdx")


def _mutated(**changes: object) -> bytes:
    doc = json.loads(record().to_json())
    for key, value in changes.items():
        if value is KeyError:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (_mutated(v=2), "version"),
        (_mutated(id="Bad Id"), "host id"),
        (_mutated(id=KeyError), "'id'"),
        (_mutated(api_url="ftp://h"), "api_url"),
        (_mutated(api_url="https://user@h"), "api_url"),
        (_mutated(api_url="https://h:99999"), "api_url"),
        (_mutated(api_url="https://h/\u202e"), "api_url"),
        (_mutated(offers=[]), "offers"),
        (_mutated(offers=[{"backend": "sim", "platform": "<script>"}]), "platform"),
        (_mutated(offers=[{"backend": "sim", "platform": "sim", "measurement": "XYZ"}]), "measurement"),
        (_mutated(offers=["sim"]), "offer"),
        (_mutated(labels={"a": "<b>"}), "labels"),
        (_mutated(labels=[1]), "labels"),
        (_mutated(keeps_running=-1), "keeps_running"),
        (_mutated(keeps_running=True), "keeps_running"),
        (_mutated(max_keeps="16"), "max_keeps"),
        (_mutated(refreshed=float("nan")), "refreshed"),
        (_mutated(api_tls_sha256="00"), "api_tls_sha256"),
        (_mutated(version="1.0 beta"), "version"),
        (b"{" + b" " * 20000 + b"}", "exceeds"),
    ],
)
def test_malformed_records_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(FleetError, match=why):
        parse_record(data)


# -- a real etcd --------------------------------------------------------------


def test_put_read_delete(etcd: EtcdServer) -> None:
    client = Etcd(config(etcd, "/t-put/"))
    client.put(client.key("hosts", "h1"), record("h1").to_json())
    client.put(client.key("hosts", "h2"), b"garbage")
    client.put(client.key("hosts", "h3"), record("other").to_json())
    client.put(client.key("drain", "h1"), b"{}")
    entries = {e.key.rsplit("/", 1)[1]: e for e in read_fleet(client)}
    assert entries["h1"].record == record("h1") and entries["h1"].drained
    assert entries["h2"].record is None and "not JSON" in entries["h2"].problem
    assert entries["h3"].record is None and "under key 'h3'" in entries["h3"].problem
    assert client.get(client.key("hosts", "h1")) == record("h1").to_json()
    assert client.delete(client.key("hosts", "h1"))
    assert client.get(client.key("hosts", "h1")) is None
    assert hosts_prefix("/p/") == "/p/hosts/" and drain_prefix("/p/") == "/p/drain/"


def test_a_lease_expires_and_takes_its_key(etcd: EtcdServer) -> None:
    client = Etcd(config(etcd, "/t-lease/"))
    lease = client.grant(2)
    client.put(client.key("hosts", "h1"), record("h1").to_json(), lease)
    assert [e.lease for e in read_fleet(client)] == [lease]
    assert client.keepalive(lease) > 0
    deadline = time.monotonic() + 10
    while read_fleet(client):
        assert time.monotonic() < deadline, "the leased key outlived its lease"
        time.sleep(0.2)
    assert client.keepalive(lease) == -1


def test_revoke_deletes_at_once(etcd: EtcdServer) -> None:
    client = Etcd(config(etcd, "/t-revoke/"))
    lease = client.grant(60)
    client.put(client.key("hosts", "h1"), record("h1").to_json(), lease)
    client.revoke(lease)
    assert read_fleet(client) == []


def test_failover_to_the_next_endpoint(etcd: EtcdServer) -> None:
    dead = Endpoint("http", "127.0.0.1", 1)
    live = parse_endpoints(etcd.url)[0]
    client = Etcd(FleetConfig((dead, live), prefix="/t-failover/", timeout=2))
    client.put(client.key("x"), b"1")
    assert client.get(client.key("x")) == b"1"


def test_unreachable_etcd_is_one_fleet_error() -> None:
    client = Etcd(FleetConfig(parse_endpoints("etcd://127.0.0.1:1,127.0.0.1:2"), timeout=1))
    with pytest.raises(
        FleetError,
        match=r"etcd cannot be reached to read the fleet \(http://127.0.0.1:1: .*; http://127.0.0.1:2: ",
    ):
        read_fleet(client)


def test_user_and_password(tmp_path: Path) -> None:
    with running_etcd(tmp_path) as server:
        server.etcdctl("user", "add", "root:root-pw-canary")
        server.etcdctl("auth", "enable")
        good = Etcd(config(server, "/t-auth/", user="root", password="root-pw-canary"))
        good.put(good.key("x"), b"1")
        assert good.get(good.key("x")) == b"1"
        good._clients[0].session.headers["Authorization"] = "expired-token"  # renewed once, transparently
        assert good.get(good.key("x")) == b"1"
        with pytest.raises(
            FleetError, match=r"etcd at http://127\.0\.0\.1:\d+ refused to read the fleet"
        ) as info:
            Etcd(config(server, "/t-auth/", user="root", password="wrong")).get("/t-auth/x")
        assert "wrong" not in str(info.value)
        with pytest.raises(FleetError, match="refused to read the fleet"):
            Etcd(config(server, "/t-auth/")).get("/t-auth/x")
        with pytest.raises(UsageError, match="no password"):
            Etcd(config(server, "/t-auth/", user="root")).get("/t-auth/x")


def test_label_options() -> None:
    assert parse_label_options("--host-label", ("b=2", "a=x=y", "c=")) == (
        ("b", "2"),
        ("a", "x=y"),
        ("c", ""),
    )
    for bad in ("novalue", "=v"):
        with pytest.raises(UsageError, match=f"--fleet-label '{bad}': expected KEY=VALUE"):
            parse_label_options("--fleet-label", (bad,))
