"""TLS for the keep manager API: ``stockade host serve --tls-cert/--tls-key``
and the client's verification (system CAs, ``--cacert``,
``$STOCKADE_HOST_CACERT``), with a self-signed certificate for 127.0.0.1
made here. Also: no bearer token over plain http to a non-loopback host.

API TLS protects the token and the metadata; the deploy's attested TLS
session runs inside the relay (now over wss) either way.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from manager_support import HELLO, Server, _cli, running_server
from stockade.errors import UsageError

pytestmark = pytest.mark.slow


def self_signed(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for IP 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]
) -> Iterator[Server]:
    cert, key = certs
    args = ("--tls-cert", str(cert), "--tls-key", str(key))
    with running_server(state_dir, tmp_path_factory, args, scheme="https", cacert=cert) as srv:
        yield srv


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any CA or host settings of the caller."""
    drop = ("SSL_CERT_FILE", "SSL_CERT_DIR", "STOCKADE_HOST_CACERT", "STOCKADE_HOST", "STOCKADE_TOKEN")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def cli(server: Server, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = _cli(*args, "--token-file", str(server.token_file), env=env or clean_env())
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def sim_root(server: Server) -> tuple[str, str]:
    """--sim-root with the server's sim root, as its operator hands it over."""
    return ("--sim-root", str(server.state / "sim" / "chip" / "ark.der"))


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


def test_deploy_over_https_and_wss_with_cacert(server: Server, certs: tuple[Path, Path]) -> None:
    code, out, err = cli(
        server,
        "deploy",
        "--host",
        server.url,
        "--cacert",
        str(certs[0]),
        "--allow-sim",
        *sim_root(server),
        "--json",
        str(HELLO),
    )
    assert code == 0, (out, err, server.log.read_text()[-4000:])
    doc = json.loads(out)
    assert doc["stdout"] == "Hello, world!\narguments: 0\n"
    assert doc["host"].startswith("https://")
    # The same through the environment, and `keeps` with it.
    env = clean_env(STOCKADE_HOST_CACERT=str(certs[0]), STOCKADE_HOST=server.url)
    code, out, err = cli(server, "keeps", "ls", "--json", env=env)
    assert code == 0, err
    assert doc["keep_id"] in {k["id"] for k in json.loads(out)["keeps"]}
    code, out, err = cli(server, "keeps", "wait", doc["keep_id"], env=env)
    assert code == 0 and out.endswith(": exited (Keep process exited with status 0)\n"), err


def test_without_the_ca_the_certificate_does_not_verify(server: Server) -> None:
    code, _, err = cli(server, "keeps", "ls", "--host", server.url)
    assert code == 1
    assert "did not verify (self-signed certificate)" in one_line_error(err)
    assert "--cacert" in err
    code, out, err = cli(server, "deploy", "--host", server.url, "--allow-sim", *sim_root(server), str(HELLO))
    assert code == 1 and out == ""
    assert "did not verify" in one_line_error(err)


def test_another_ca_does_not_verify(server: Server, tmp_path: Path) -> None:
    other, _ = self_signed(tmp_path, "other")
    code, _, err = cli(server, "keeps", "ls", "--host", server.url, "--cacert", str(other))
    assert code == 1 and "did not verify" in one_line_error(err)


def test_unreadable_cacert_is_a_usage_error(server: Server, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for path in (garbage, tmp_path / "missing.pem"):
        code, _, err = cli(server, "keeps", "ls", "--host", server.url, "--cacert", str(path))
        assert code == 2 and "--cacert: cannot load CA certificates" in one_line_error(err)


def test_http_url_to_the_tls_manager(server: Server) -> None:
    url = server.url.replace("https://", "http://")
    code, _, err = cli(server, "keeps", "ls", "--host", url)
    assert code == 1
    assert "closed the connection without an HTTP answer" in one_line_error(err)
    assert "use an https:// URL" in err


def test_no_token_over_plain_http_to_a_remote_host() -> None:
    from stockade.client.remote import ManagerClient

    for url in ("http://192.0.2.1:8470", "http://host.example:8470", "http://[2001:db8::1]:8470"):
        with pytest.raises(UsageError, match="refusing to send the API token over plain http"):
            ManagerClient(url, "stk_token")  # refused before any connection is made
        ManagerClient(url, "stk_token", allow_insecure_http=True).close()
    for url in ("http://127.0.0.1:1", "http://127.8.9.10:1", "http://localhost:1", "http://[::1]:1"):
        ManagerClient(url, "stk_token").close()
    ManagerClient("https://192.0.2.1:8470", "stk_token").close()
    proc = _cli("keeps", "ls", "--host", "http://192.0.2.1:8470", env=clean_env(STOCKADE_TOKEN="stk_x"))
    assert proc.returncode == 2
    err = one_line_error(proc.stderr.decode())
    assert "--insecure-http" in err and "stk_x" not in err


def test_serve_checks_its_tls_files(certs: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certs
    _, other_key = self_signed(tmp_path, "other")
    state = ("--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:1")
    proc = _cli("host", "serve", *state, "--tls-cert", str(cert))
    assert proc.returncode == 2
    assert "--tls-cert and --tls-key go together" in one_line_error(proc.stderr.decode())
    proc = _cli("host", "serve", *state, "--tls-cert", str(cert), "--tls-key", str(other_key))
    assert proc.returncode == 2
    assert "cannot load" in one_line_error(proc.stderr.decode())
    proc = _cli("host", "serve", *state, "--tls-cert", str(key), "--tls-key", str(key))
    assert proc.returncode == 2
    assert "cannot load" in one_line_error(proc.stderr.decode())
