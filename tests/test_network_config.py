"""Declaring and configuring a workload's network sockets: the manifest's
``[[network.listen]]`` / ``[[network.connect]]`` (strict), the deploy-time
``--listen`` / ``--connect`` addresses in the Load configuration, the
``net`` message and where the protocol allows it (ADR 0027)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from stockade.client.plan import RunOptions, parse_network
from stockade.errors import ProtocolError, UsageError
from stockade.package.format import Package, build
from stockade.package.manifest import Manifest, ManifestError, Peers, Socket, load_toml
from stockade.wire.framing import encode_frame
from stockade.wire.messages import Config, Net, SocketAddress, decode, parse_socket_address
from stockade.wire.protocol import ClientSession, ClientState, KeepSession, KeepState

KID = hashlib.sha256(b"k" * 32).hexdigest()
DIGEST = hashlib.sha256(b"pkg").hexdigest()
BASE = {"name": "kv", "version": "1", "entry": "main.wasm"}

TOML = f"""
name = "kv"
version = "1"
entry = "main.wasm"

[[network.listen]]
name = "kv"
peers = {{ signers = ["{KID}"], digests = ["{DIGEST}"] }}

[[network.listen]]
name = "status"

[[network.connect]]
name = "upstream-1"
peers = {{ signers = ["{KID}"] }}
"""


def test_manifest_network_from_toml_and_through_a_package(tmp_path: Path) -> None:
    (tmp_path / "Stockade.toml").write_text(TOML)
    (tmp_path / "main.wasm").write_bytes(b"\0asm\x01\0\0\0")
    manifest = load_toml(tmp_path / "Stockade.toml")
    assert manifest.network == (
        Socket("connect", "upstream-1", Peers(signers=(KID,))),
        Socket("listen", "kv", Peers(signers=(KID,), digests=(DIGEST,))),
        Socket("listen", "status", None),
    )
    package = Package.from_bytes(build(tmp_path))
    assert package.manifest.network == manifest.network
    assert package.manifest.to_map()["network"]["listen"][1] == {"name": "status"}


def test_a_manifest_without_network_has_the_same_map_as_before() -> None:
    assert "network" not in Manifest.from_map(dict(BASE)).to_map()


@pytest.mark.parametrize(
    ("network", "key", "message"),
    [
        ({}, "network", "declares no socket"),
        ({"udp": []}, "network.udp", "unknown key network.udp"),
        ({"listen": {"name": "kv"}}, "network.listen", "array of tables"),
        ({"listen": [{}]}, "network.listen.name", "missing required key network.listen.name"),
        ({"listen": [{"name": "KV"}]}, "network.listen.name", "is not [a-z][a-z0-9-]{0,31}"),
        ({"listen": [{"name": "k" * 33}]}, "network.listen.name", "is not"),
        ({"listen": [{"name": "kv"}, {"name": "kv"}]}, "network.listen.name", "declared twice"),
        ({"listen": [{"name": "kv", "port": 80}]}, "network.listen.port", "unknown key"),
        ({"listen": [{"name": f"s{i}"} for i in range(9)]}, "network.listen", "at most 8"),
        ({"connect": [{"name": "kv"}]}, "network.connect.peers", "peers is required"),
        (
            {"connect": [{"name": "kv", "peers": {}}]},
            "network.connect.peers",
            "at least one signer or digest",
        ),
        (
            {"listen": [{"name": "kv", "peers": {"signers": ["AB" * 32]}}]},
            "network.listen.peers.signers",
            "64 lowercase hex",
        ),
        (
            {"listen": [{"name": "kv", "peers": {"digests": ["ab"]}}]},
            "network.listen.peers.digests",
            "64 lowercase hex",
        ),
        (
            {"listen": [{"name": "kv", "peers": {"digests": [DIGEST, DIGEST]}}]},
            "network.listen.peers.digests",
            "duplicate",
        ),
        ({"listen": [{"name": "kv", "peers": {"kids": [KID]}}]}, "network.listen.peers.kids", "unknown key"),
        (
            {"listen": [{"name": "kv", "peers": {"signers": [f"{i:064x}" for i in range(17)]}}]},
            "network.listen.peers.signers",
            "at most 16",
        ),
    ],
)
def test_manifest_network_is_strict(network: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(
        ManifestError,
        match=message.replace("[", r"\[").replace("]", r"\]").replace("{", r"\{").replace("}", r"\}"),
    ) as info:
        Manifest.from_map({**BASE, "network": network})
    assert info.value.key == key


def test_toml_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "Stockade.toml"
    path.write_text(TOML.replace('name = "status"', 'name = "Status"'))
    with pytest.raises(UsageError, match=r"Stockade.toml.*network.listen.name: 'Status' is not"):
        load_toml(path)


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("127.0.0.1:0", "listen", ("127.0.0.1", 0)),
        ("[::1]:7000", "connect", ("::1", 7000)),
        ("kv.internal:443", "connect", ("kv.internal", 443)),
    ],
)
def test_socket_addresses(text: str, kind: str, expected: tuple[str, int]) -> None:
    assert parse_socket_address(text, kind) == expected


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("127.0.0.1", "listen"),
        ("h:0", "connect"),
        ("h:65536", "listen"),
        (":80", "listen"),
        ("[::1:80", "listen"),
        ("[zz]:1", "listen"),
        ("a b:1", "listen"),
        ("h:-1", "listen"),
    ],
)
def test_bad_socket_addresses(text: str, kind: str) -> None:
    with pytest.raises(ValueError):
        parse_socket_address(text, kind)


def test_config_network_round_trip_and_digest() -> None:
    config = Config(
        network=(
            SocketAddress("connect", "kv", "10.0.0.2:7000"),
            SocketAddress("listen", "kv", "0.0.0.0:7000"),
        )
    )
    m = config.to_map()
    assert m["network"] == {"listen": {"kv": "0.0.0.0:7000"}, "connect": {"kv": "10.0.0.2:7000"}}
    assert Config.from_map(m) == config
    assert config.digest() != Config().digest()
    assert "network" not in Config().to_map()  # configurations without sockets are unchanged


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ({"listen": {}, "connect": {}}, "present but empty"),
        ({"listen": {"kv": "h:1"}}, "missing field 'connect'"),
        ({"listen": {"KV": "h:1"}, "connect": {}}, "socket name"),
        ({"listen": {"kv": "h"}, "connect": {}}, "not HOST:PORT"),
        ({"listen": {"kv": 1}, "connect": {}}, "values str"),
        ({"listen": {}, "connect": {}, "udp": {}}, "unknown field"),
    ],
)
def test_config_network_decoding_is_strict(network: dict[str, Any], message: str) -> None:
    m = {**Config().to_map(), "network": network}
    with pytest.raises(ProtocolError, match=message):
        Config.from_map(m)


def test_config_network_must_be_sorted_and_unique() -> None:
    with pytest.raises(ProtocolError, match="sorted, one per socket"):
        Config(network=(SocketAddress("listen", "kv", "h:1"), SocketAddress("connect", "kv", "h:1")))
    with pytest.raises(ProtocolError, match="sorted, one per socket"):
        Config(network=(SocketAddress("listen", "kv", "h:1"), SocketAddress("listen", "kv", "h:2")))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"event": "closed", "name": "kv", "detail": ""}, "event 'closed'"),
        ({"event": "refused", "name": "Kv", "detail": ""}, "socket name"),
        ({"event": "refused", "name": "kv", "detail": "x" * 513}, "at most 512"),
        ({"event": "refused", "name": "kv", "detail": "line\nbreak"}, "printable"),
        ({"event": "refused", "name": "kv", "detail": "\x1b[2J"}, "printable"),
    ],
)
def test_net_message_is_checked(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Net(**fields)
    import cbor2

    from stockade.wire.messages import VERSION

    with pytest.raises(ProtocolError, match=message):
        decode(cbor2.dumps({"v": VERSION, "t": "net", **fields}, canonical=True))


def test_net_is_allowed_only_while_the_workload_runs() -> None:
    event = Net(event="listening", name="kv", detail="127.0.0.1:4000")
    keep = KeepSession()
    with pytest.raises(Exception, match="cannot send a net event in state await-hello"):
        keep.net(event)
    keep.state = KeepState.RUNNING
    frame = keep.net(event)
    assert keep.state is KeepState.RUNNING

    client = ClientSession()
    client.state = ClientState.RUNNING
    assert client.receive(frame) == [event]
    assert client.state is ClientState.RUNNING
    client.state = ClientState.AWAIT_IDENTITY
    with pytest.raises(ProtocolError, match="identity was expected"):
        client.receive(encode_frame(event.to_cbor()))


def _opts(**kw: Any) -> RunOptions:
    base: dict[str, Any] = dict(
        wasm=Path("x"),
        args=(),
        backend="sim",
        allow_sim=True,
        policy=None,
        env=(),
        stdin=None,
        files=(),
        secret_refs=(),
        timeout=None,
        memory=None,
        max_output=None,
        disk=None,
        expect_measurement=None,
        signers=(),
        min_signatures=None,
        expect_digests=(),
        as_json=False,
        quiet=False,
        state_dir=None,
    )
    base.update(kw)
    return RunOptions(**base)


MANIFEST = Manifest.from_map(
    {
        **BASE,
        "network": {"listen": [{"name": "kv"}], "connect": [{"name": "up", "peers": {"digests": [DIGEST]}}]},
    }
)


def test_deploy_flags_become_the_configuration() -> None:
    network = parse_network(
        _opts(listen=("kv=0.0.0.0:7000",), connect=("up=10.0.0.1:7000",)), MANIFEST, steward=True
    )
    assert network == (
        SocketAddress("connect", "up", "10.0.0.1:7000"),
        SocketAddress("listen", "kv", "0.0.0.0:7000"),
    )
    assert parse_network(_opts(), Manifest.from_map(dict(BASE)), steward=False) == ()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"listen": ("kv",)}, "expected NAME=HOST:PORT"),
        ({"listen": ("nope=h:1",), "connect": ("up=h:1",)}, "declares no listen socket 'nope'"),
        ({"connect": ("kv=h:1",)}, "declares no connect socket 'kv'"),
        ({"listen": ("kv=h:1", "kv=h:2"), "connect": ("up=h:1",)}, "given twice"),
        ({"listen": ("kv=h",), "connect": ("up=h:1",)}, "not HOST:PORT"),
        ({"connect": ("up=h:0",)}, "port 0 is out of range"),
        ({}, r"connect socket\(s\) up need --connect"),
        ({"connect": ("up=h:1",), "backend": "vm"}, "VM Keeps do not offer them"),
        ({"connect": ("up=h:1",), "no-steward": True}, "deploy with --steward URL"),
    ],
)
def test_deploy_flags_are_refused_before_anything_is_sent(kw: dict[str, Any], message: str) -> None:
    steward = not kw.pop("no-steward", False)
    with pytest.raises(UsageError, match=message):
        parse_network(_opts(**kw), MANIFEST, steward)
