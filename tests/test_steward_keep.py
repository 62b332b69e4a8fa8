"""Keeps get certificates (issue 17 item 3), the parts that need no steward
server: the client's choice of steward (--steward, --steward-ca, the
manifest's ``[steward] url``), the manifest setting, the Keep's refusals
before any network (a VM Keep, a CA that is not a certificate), and the
client's check of a certificate message (stockade.client.steward) against
an issuance made here with the steward's own CA, profile and log code.

End to end against a real ``stockade steward serve``: tests/test_steward_run.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.binding.eventlog import EventLog
from stockade.client.deploy import DeployPlan, StdinFile, deploy
from stockade.client.plan import RunOptions, choose_steward, prepare, read_stdin
from stockade.client.steward import (
    StewardChoice,
    StewardPlan,
    check_certificate,
    choose,
    load_ca,
    summary_line,
)
from stockade.errors import (
    LogProofError,
    ProtocolError,
    ProtocolMisuse,
    UsageError,
    WorkloadCertificateInvalid,
    WorkloadRejected,
)
from stockade.keep.session import KeepServer
from stockade.package.manifest import Manifest, ManifestError
from stockade.steward.ca import create_ca
from stockade.steward.profile import VerifiedWorkloadClaims, issue
from stockade.steward.request import make_csr
from stockade.translog import CertificateEntry, encode_entry, merkle
from stockade.translog.treehead import LogKey, generate_signer, sign_tree_head
from stockade.wire.framing import MAX_FRAME
from stockade.wire.messages import Config, ServiceCertificate, StewardRequest, release_stdin_room

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
NOW = dt.datetime.now(dt.UTC)
DIGEST = bytes(range(32))


def manifest(**extra: Any) -> Manifest:
    return Manifest.from_map({"name": "app", "version": "1", "entry": "app.wasm", **extra})


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("steward") / "state"
    create_ca(state, "test steward", now=NOW - dt.timedelta(minutes=1)).close()
    return state


def options(**changes: Any) -> RunOptions:
    base = RunOptions(
        wasm=HELLO,
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
        quiet=True,
        state_dir=None,
    )
    return dataclasses.replace(base, **changes)


# -- choosing the steward (client, no network) -------------------------------------------------------


def test_no_steward_by_default(ca_dir: Path) -> None:
    assert choose(None, None, manifest(), "sim") is None
    assert choose_steward(options(), prepare(options())) is None


def test_steward_from_the_command_line(ca_dir: Path) -> None:
    choice = choose("https://127.0.0.1:8443", ca_dir / "ca.pem", manifest(), "sim")
    assert choice is not None
    assert (choice.url, choice.source) == ("https://127.0.0.1:8443", "--steward")
    request = choice.request()
    assert request.url == choice.url
    assert request.ca == choice.ca.public_bytes(serialization.Encoding.DER)


def test_steward_from_the_manifest_and_the_flag_wins(ca_dir: Path) -> None:
    m = manifest(steward={"url": "https://steward.example"})
    choice = choose(None, ca_dir / "ca.pem", m, "sim-tdx")
    assert choice is not None and (choice.url, choice.source) == (
        "https://steward.example",
        "the package manifest",
    )
    choice = choose("https://other.example:9", ca_dir / "ca.pem", m, "sim")
    assert choice is not None and (choice.url, choice.source) == ("https://other.example:9", "--steward")


def test_the_manifest_steward_still_needs_the_deployers_ca() -> None:
    m = manifest(steward={"url": "https://steward.example"})
    with pytest.raises(
        UsageError, match=r"steward https://steward.example \(from the package manifest\): give its CA"
    ):
        choose(None, None, m, "sim")


def test_steward_without_ca_and_ca_without_steward(ca_dir: Path) -> None:
    with pytest.raises(UsageError, match="--steward-ca FILE"):
        choose("https://127.0.0.1:8443", None, manifest(), "sim")
    with pytest.raises(UsageError, match="--steward-ca without --steward"):
        choose(None, ca_dir / "ca.pem", manifest(), "sim")


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://127.0.0.1:8443", "over HTTPS only"),
        ("https://127.0.0.1:8443/?x", "no query or fragment"),
        ("https://user@127.0.0.1", "no user information"),
        ("https://a b", "printable ASCII"),
    ],
)
def test_bad_steward_url_is_a_usage_error(ca_dir: Path, url: str, error: str) -> None:
    with pytest.raises(UsageError, match=error):
        choose(url, ca_dir / "ca.pem", manifest(), "sim")


@pytest.mark.parametrize("backend", ["vm", "snp", "tdx"])
def test_vm_backends_refuse_a_steward(ca_dir: Path, backend: str) -> None:
    with pytest.raises(UsageError, match=f"--backend {backend}: a VM Keep has no network path to a steward"):
        choose("https://127.0.0.1:8443", ca_dir / "ca.pem", manifest(), backend)


def test_ca_file_pem_and_der(ca_dir: Path, tmp_path: Path) -> None:
    pem = load_ca(ca_dir / "ca.pem")
    der = tmp_path / "ca.der"
    der.write_bytes(pem.public_bytes(serialization.Encoding.DER))
    assert load_ca(der) == pem


def _leaf_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "leaf")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n", "not a PEM or DER X.509"),
        (b"\x30\x03\x02\x01\x00", "not a PEM or DER X.509"),
        (b"", "not a PEM or DER X.509"),
        (b"\x30" * (64 * 1024 + 1), "larger than 65536 bytes"),
        ("leaf", r"not a CA certificate \(basicConstraints CA:true\)"),
    ],
    ids=["pem-garbage", "der-garbage", "empty", "too-large", "not-a-ca"],
)
def test_bad_ca_file_is_a_usage_error(tmp_path: Path, content: Any, error: str) -> None:
    path = tmp_path / "ca.pem"
    path.write_bytes(_leaf_pem() if content == "leaf" else content)
    with pytest.raises(UsageError, match=error):
        load_ca(path)
    with pytest.raises(UsageError, match="cannot read"):
        load_ca(tmp_path / "missing.pem")


def test_stdin_room_leaves_space_for_the_steward_request(ca_dir: Path, tmp_path: Path) -> None:
    choice = choose("https://127.0.0.1:8443", ca_dir / "ca.pem", manifest(), "sim")
    assert choice is not None
    room = release_stdin_room((), MAX_FRAME, choice.request())
    assert room < release_stdin_room((), MAX_FRAME)
    big = tmp_path / "stdin"
    with big.open("wb") as f:
        f.truncate(room + 1)
    # More than fits beside the steward request is not refused: it is
    # streamed after the release (docs/limitations.md, stdin).
    stdin = read_stdin(options(stdin=str(big)), ())
    assert isinstance(stdin, StdinFile)
    os.close(stdin.fd)


# -- the manifest setting ------------------------------------------------------------------------------


def test_manifest_steward_url_round_trips() -> None:
    m = manifest(steward={"url": "https://steward.example:8443/base"})
    assert m.steward_url == "https://steward.example:8443/base"
    assert m.to_map()["steward"] == {"url": "https://steward.example:8443/base"}
    assert Manifest.from_map(m.to_map()) == m
    assert "steward" not in manifest().to_map()


@pytest.mark.parametrize(
    ("table", "key", "error"),
    [
        ({"url": "http://steward.example"}, "steward.url", "over HTTPS only"),
        ({"url": ""}, "steward.url", "non-empty string"),
        ({"url": 7}, "steward.url", "non-empty string"),
        ({}, "steward.url", "missing required key steward.url"),
        ({"url": "https://s.example", "ca": "x"}, "steward.ca", "unknown key steward.ca"),
        ("https://s.example", "steward", "steward must be a table"),
    ],
)
def test_manifest_steward_is_checked(table: Any, key: str, error: str) -> None:
    with pytest.raises(ManifestError, match=error) as info:
        manifest(steward=table)
    assert info.value.key == key


# -- the Keep's refusals before any network ------------------------------------------------------------


def _keep(network: bool) -> KeepServer:
    a, b = socket.socketpair()
    b.close()
    return KeepServer(a, attester=None, engine=None, scratch=None, sandbox=None, network=network)  # type: ignore[arg-type]


def test_a_vm_keep_refuses_a_steward_request(ca_dir: Path) -> None:
    request = StewardRequest(
        url="https://127.0.0.1:1", ca=load_ca(ca_dir / "ca.pem").public_bytes(serialization.Encoding.DER)
    )
    server = _keep(network=False)
    with pytest.raises(WorkloadRejected, match="VM Keep: it has no network path to a steward"):
        server.certify(request, EventLog())
    assert server.service is None
    server.close()


def test_the_keep_refuses_a_ca_that_is_not_a_certificate() -> None:
    server = _keep(network=True)
    with pytest.raises(ProtocolError, match=r"the steward CA is not a DER X\.509 certificate"):
        server.certify(StewardRequest(url="https://127.0.0.1:1", ca=b"\x30\x03\x02\x01\x00"), EventLog())
    server.close()


def test_deploy_refuses_a_steward_request_without_the_means_to_check_it() -> None:
    a, b = socket.socketpair()
    plan = DeployPlan(
        package=b"",
        digest=DIGEST,
        config=Config(),
        steward=StewardRequest(url="https://127.0.0.1:1", ca=b"\x30\x00"),
    )
    with pytest.raises(ProtocolMisuse, match="needs the steward's CA and log key"):
        deploy(a, plan, trust=None, on_output=lambda fd, data: None)  # type: ignore[arg-type]
    a.close()
    b.close()


# -- the client's check of the certificate message ----------------------------------------------------


@pytest.fixture(scope="module")
def issued(ca_dir: Path) -> tuple[ServiceCertificate, StewardPlan]:
    """A certificate the CA issued for a fresh key, logged as leaf 2 of a
    log of 3 with a signed tree head: what a Keep relays from the steward."""
    from stockade.steward.ca import open_ca

    ca = open_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_der_x509_csr(make_csr(key))
    claims = VerifiedWorkloadClaims(package_digest=DIGEST, platform="sim", measurement=b"\x01" * 48)
    cert = issue(ca, csr, claims, not_before=NOW - dt.timedelta(seconds=5)).public_bytes(
        serialization.Encoding.DER
    )
    signer, _ = generate_signer()
    tree = merkle.MerkleTree()
    for entry in (b"first", b"second", encode_entry(CertificateEntry(cert))):
        tree.append(merkle.leaf_hash(entry))
    head = sign_tree_head(signer, tree.size, tree.root(), int(NOW.timestamp() * 1000))
    msg = ServiceCertificate(
        certificate=cert,
        chain=(ca.certificate.public_bytes(serialization.Encoding.DER),),
        log_index=2,
        tree_head=head,
        inclusion=tuple(tree.inclusion_path(2)),
    )
    choice = StewardChoice(url="https://127.0.0.1:1", ca=ca.certificate, source="--steward")
    plan = StewardPlan(choice=choice, log_key=LogKey.from_der(signer.public_key_der()))
    ca.close()
    return msg, plan


def test_a_good_certificate_message_verifies(issued: tuple[ServiceCertificate, StewardPlan]) -> None:
    msg, plan = issued
    verified = check_certificate(msg, plan, DIGEST)
    assert verified.identity.package_digest == DIGEST
    assert (verified.log_index, verified.tree_size) == (2, 3)
    assert verified.certificate_pem.startswith("-----BEGIN CERTIFICATE-----")
    inclusion = verified.inclusion_json()
    assert inclusion["index"] == 2 and inclusion["tree_size"] == 3 and len(inclusion["proof"]) == 1
    line = summary_line(verified)
    assert f"stockade://workload/sha256/{DIGEST.hex()}" in line and "log index 2 of 3" in line


def test_a_certificate_for_another_package_is_refused(issued: tuple[ServiceCertificate, StewardPlan]) -> None:
    msg, plan = issued
    with pytest.raises(WorkloadCertificateInvalid, match="the verified package is"):
        check_certificate(msg, plan, b"\xee" * 32)


def test_a_wrong_inclusion_proof_is_refused(issued: tuple[ServiceCertificate, StewardPlan]) -> None:
    msg, plan = issued
    bad = dataclasses.replace(msg, inclusion=(b"\x00" * 32, *msg.inclusion[1:]))
    with pytest.raises(LogProofError):
        check_certificate(bad, plan, DIGEST)
    with pytest.raises(LogProofError):
        check_certificate(dataclasses.replace(msg, log_index=1), plan, DIGEST)


def test_a_tree_head_under_another_log_key_is_refused(issued: tuple[ServiceCertificate, StewardPlan]) -> None:
    msg, plan = issued
    other, _ = generate_signer()
    with pytest.raises(LogProofError):
        check_certificate(
            msg, dataclasses.replace(plan, log_key=LogKey.from_der(other.public_key_der())), DIGEST
        )


def test_a_certificate_under_another_ca_is_refused(
    issued: tuple[ServiceCertificate, StewardPlan], tmp_path: Path
) -> None:
    msg, plan = issued
    other = create_ca(tmp_path / "other", "other steward", now=NOW - dt.timedelta(minutes=1))
    choice = dataclasses.replace(plan.choice, ca=other.certificate)
    other.close()
    with pytest.raises(WorkloadCertificateInvalid):
        check_certificate(msg, dataclasses.replace(plan, choice=choice), DIGEST)
