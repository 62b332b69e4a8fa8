"""``stockade connect``: TLS 1.3 to a service with the workload certificate
checked against the pinned steward CA and the expected workload.

The certificates are made in the test by a file-key steward CA
(stockade.steward.ca, profile.issue); the service is a small Python TLS
server on loopback in a thread that answers each line with ``ECHO <line>``
and closes after ``QUIT``. Every refusal has its test."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from stockade.commands.connect import parse_address
from stockade.errors import UsageError
from stockade.steward.ca import CertificateAuthority, create_ca
from stockade.steward.profile import VerifiedWorkloadClaims, issue

DIGEST = hashlib.sha256(b"kv-server package").digest()
OTHER_DIGEST = hashlib.sha256(b"another package").digest()
SIGNER = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
SIGNER_KID = hashlib.sha256(SIGNER).hexdigest()
TIMEOUT = 30


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _csr(key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workload")]))
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertificateAuthority]:
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with create_ca(tmp_path_factory.mktemp("steward") / "state", now=yesterday) as authority:
        yield authority


def workload_files(
    ca: CertificateAuthority,
    directory: Path,
    name: str,
    *,
    digest: bytes = DIGEST,
    signers: tuple[bytes, ...] = (SIGNER,),
    not_before: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """A workload certificate for a new P-256 key: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    claims = VerifiedWorkloadClaims(
        package_digest=digest, platform="sim", measurement=b"\x11" * 48, signer_keys=signers
    )
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    cert = issue(ca, _csr(key), claims, not_before=start)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    return cert_path, key_path


@dataclass
class EchoServer:
    """One-connection TLS server on loopback: ``ECHO <line>`` per line."""

    ctx: ssl.SSLContext
    port: int = 0
    error: list[BaseException] = field(default_factory=list)
    peer_cert: list[bytes | None] = field(default_factory=list)

    def start(self) -> EchoServer:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def _serve(self) -> None:
        try:
            raw, _ = self.listener.accept()
            raw.settimeout(TIMEOUT)
            with self.ctx.wrap_socket(raw, server_side=True) as tls:
                self.peer_cert.append(tls.getpeercert(binary_form=True))
                buf = b""
                while True:
                    data = tls.recv(4096)
                    if not data:
                        return
                    buf += data
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line == b"QUIT":
                            tls.sendall(b"BYE\n")
                            return
                        tls.sendall(b"ECHO " + line + b"\n")
        except (OSError, ssl.SSLError) as exc:
            self.error.append(exc)
        finally:
            self.listener.close()

    def join(self) -> None:
        self.thread.join(TIMEOUT)


def server_context(
    cert: Path, key: Path, *, client_ca: Path | None = None, tls12_only: bool = False
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if tls12_only:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca))
    return ctx


def connect(
    *args: str, input: bytes = b"hello\nQUIT\n", timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "stockade", "connect", *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def ca_pem(ca: CertificateAuthority, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def servers() -> Iterator[list[EchoServer]]:
    started: list[EchoServer] = []
    yield started
    for server in started:
        server.listener.close()
        server.join()


def serve(servers: list[EchoServer], ctx: ssl.SSLContext) -> EchoServer:
    server = EchoServer(ctx).start()
    servers.append(server)
    return server


def test_connects_to_the_expected_digest(
    ca: CertificateAuthority, ca_pem: Path, tmp_path: Path, servers: list[EchoServer]
) -> None:
    server = serve(servers, server_context(*workload_files(ca, tmp_path, "server")))
    result = connect(f"127.0.0.1:{server.port}", "--steward-ca", str(ca_pem), "--expect-digest", DIGEST.hex())
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ECHO hello\nBYE\n"
    err = result.stderr.decode()
    assert f"verified workload stockade://workload/sha256/{DIGEST.hex()}: platform sim" in err
    assert f"signer kid(s) {SIGNER_KID}" in err
    server.join()
    assert server.peer_cert == [None]  # no client certificate was asked for or sent
    assert not server.error


def test_connects_to_a_package_of_the_expected_signer_with_stdin_from_a_file(
    ca: CertificateAuthority, ca_pem: Path, tmp_path: Path, servers: list[EchoServer]
) -> None:
    server = serve(servers, server_context(*workload_files(ca, tmp_path, "server")))
    commands = tmp_path / "commands.txt"
    commands.write_bytes(b"one\ntwo\nQUIT\n")
    with commands.open("rb") as stdin:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "stockade",
                "connect",
                f"127.0.0.1:{server.port}",
                "--steward-ca",
                str(ca_pem),
                "--expect-digest",
                OTHER_DIGEST.hex(),
                "--expect-signer",
                SIGNER_KID,
            ],
            stdin=stdin,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ECHO one\nECHO two\nBYE\n"


def test_after_the_end_of_input_waits_linger_seconds_then_exits(
    ca: CertificateAuthority, ca_pem: Path, tmp_path: Path, servers: list[EchoServer]
) -> None:
    """The server never closes (no QUIT): connect ends --linger after the input did."""
    server = serve(servers, server_context(*workload_files(ca, tmp_path, "server")))
    result = connect(
        f"127.0.0.1:{server.port}",
        "--steward-ca",
        str(ca_pem),
        "--expect-digest",
        DIGEST.hex(),
        "--linger",
        "0.5",
        input=b"a\nb\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ECHO a\nECHO b\n"


def test_refuses_an_unexpected_workload(
    ca: CertificateAuthority, ca_pem: Path, tmp_path: Path, servers: list[EchoServer]
) -> None:
    server = serve(servers, server_context(*workload_files(ca, tmp_path, "server", digest=OTHER_DIGEST)))
    other_kid = "ab" * 32
    result = connect(
        f"127.0.0.1:{server.port}",
        "--steward-ca",
        str(ca_pem),
        "--expect-digest",
        DIGEST.hex(),
        "--expect-signer",
        other_kid,
    )
    assert result.returncode == 110
    err = result.stderr.decode()
    assert (
        f"the server is workload stockade://workload/sha256/{OTHER_DIGEST.hex()} (signed by kid {SIGNER_KID})"
        in err
    )
    assert f"not the expected package digest {DIGEST.hex()} or a package signed by kid {other_kid}" in err
    assert result.stdout == b""  # nothing was sent or received


def test_refuses_an_unsigned_workload_when_a_signer_is_expected(
    ca: CertificateAuthority, ca_pem: Path, tmp_path: Path, servers: list[EchoServer]
) -> None:
    server = serve(servers, server_context(*workload_files(ca, tmp_path, "server", signers=())))
    result = connect(f"127.0.0.1:{server.port}", "--steward-ca", str(ca_pem), "--expect-signer", SIGNER_KID)
    assert result.returncode == 110
    assert b"(with no signer), not the expected a package signed by kid" in result.stderr


def test_refuses_a_certificate_from_another_ca(
    ca_pem: Path, tmp_path: Path, servers: list[EchoServer]
) -> None:
    with create_ca(tmp_path / "other-steward", now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1)) as other:
        cert, key = workload_files(other, tmp_path, "server")
    server = serve(servers, server_context(cert, key))
    result = connect(f"127.0.0.1:{server.port}", "--steward-ca", str(ca_pem), "--expect-digest", DIGEST.hex())
    assert result.returncode == 110
    assert b"does not chain to the steward CA" in result.stderr
    assert result.stdout == b""


def test_refuses_an_expired_certificate(
    ca: CertificateAuthority, ca_pem: Path, tmp_path: Path, servers: list[EchoServer]
) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    server = serve(servers, server_context(*workload_files(ca, tmp_path, "server", not_before=start)))
    result = connect(f"127.0.0.1:{server.port}", "--steward-ca", str(ca_pem), "--expect-digest", DIGEST.hex())
    assert result.returncode == 110
    assert b"certificate has expired" in result.stderr


def test_refuses_a_ca_certificate_outside_the_workload_profile(
    ca: CertificateAuthority, ca_pem: Path, tmp_path: Path, servers: list[EchoServer]
) -> None:
    """Chains to the CA (OpenSSL accepts it) but is an ordinary server
    certificate: verify_workload_certificate refuses it."""
    from stockade.steward.ca import build_certificate

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    cert = build_certificate(builder, ca.signer)
    (tmp_path / "plain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "plain-key.pem").write_bytes(_pem_key(key))
    server = serve(servers, server_context(tmp_path / "plain.pem", tmp_path / "plain-key.pem"))
    result = connect(f"127.0.0.1:{server.port}", "--steward-ca", str(ca_pem), "--expect-digest", DIGEST.hex())
    assert result.returncode == 110
    assert b"workload certificate" in result.stderr
    assert result.stdout == b""


def test_a_service_requiring_a_client_certificate(
    ca: CertificateAuthority, ca_pem: Path, tmp_path: Path, servers: list[EchoServer]
) -> None:
    server_files = workload_files(ca, tmp_path, "server")
    client_cert, client_key = workload_files(ca, tmp_path, "client", digest=OTHER_DIGEST)
    # Without a client certificate: TLS 1.3 finishes the client's side of the
    # handshake first, so the refusal arrives as an alert on the first read.
    server = serve(servers, server_context(*server_files, client_ca=ca_pem))
    refused = connect(
        f"127.0.0.1:{server.port}", "--steward-ca", str(ca_pem), "--expect-digest", DIGEST.hex()
    )
    assert refused.returncode == 113, refused.stderr
    # The server's alert, or, when the client's write met the closed socket
    # first, the end of the connection without close_notify.
    assert re.search(
        rb"the TLS connection failed: TLSV13_ALERT_CERTIFICATE_REQUIRED|"
        rb"the server closed the connection without a TLS close_notify",
        refused.stderr,
    )
    assert b"refuses a client without a workload certificate: --cert/--key" in refused.stderr
    server.join()
    # With one: mutual TLS, the server sees the client's workload certificate.
    server = serve(servers, server_context(*server_files, client_ca=ca_pem))
    result = connect(
        f"127.0.0.1:{server.port}",
        "--steward-ca",
        str(ca_pem),
        "--expect-digest",
        DIGEST.hex(),
        "--cert",
        str(client_cert),
        "--key",
        str(client_key),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ECHO hello\nBYE\n"
    server.join()
    [peer] = server.peer_cert
    assert peer is not None
    assert x509.load_der_x509_certificate(peer) == x509.load_pem_x509_certificate(client_cert.read_bytes())


def test_refuses_a_server_without_tls_1_3(
    ca: CertificateAuthority, ca_pem: Path, tmp_path: Path, servers: list[EchoServer]
) -> None:
    server = serve(servers, server_context(*workload_files(ca, tmp_path, "server"), tls12_only=True))
    result = connect(f"127.0.0.1:{server.port}", "--steward-ca", str(ca_pem), "--expect-digest", DIGEST.hex())
    assert result.returncode == 113
    assert b"TLS 1.3 handshake with" in result.stderr


def test_unreachable_server(ca_pem: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    result = connect(f"127.0.0.1:{port}", "--steward-ca", str(ca_pem), "--expect-digest", DIGEST.hex())
    assert result.returncode == 1
    assert f"cannot connect to 127.0.0.1:{port}".encode() in result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--expect-digest", "00" * 31], "64 lowercase hex digits expected"),
        (["--expect-signer", "XY" * 32], "64 lowercase hex digits expected"),
        ([], "give at least one --expect-digest or --expect-signer"),
        (["--expect-digest", "00" * 32, "--cert", "c.pem"], "--cert and --key go together"),
    ],
)
def test_usage_errors(ca_pem: Path, args: list[str], message: str) -> None:
    result = connect("127.0.0.1:9", "--steward-ca", str(ca_pem), *args)
    assert result.returncode == 2
    assert message.encode() in result.stderr


def test_unreadable_ca(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    for path in (tmp_path / "missing.pem", tmp_path / "ca.pem"):
        result = connect("127.0.0.1:9", "--steward-ca", str(path), "--expect-digest", "00" * 32)
        assert result.returncode == 2
        assert str(path).encode() in result.stderr


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:8443", ("::1", 8443)), ("kv.example:1", ("kv.example", 1))],
)
def test_parse_address(text: str, parsed: tuple[str, int]) -> None:
    assert parse_address(text) == parsed


@pytest.mark.parametrize("text", ["127.0.0.1", "::1:80", "host:0", "host:70000", "host:port", ""])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_address(text)
