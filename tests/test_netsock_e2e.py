"""Networked workloads end to end (issue 17 item 4, ADR 0027):
``stockade run --allow-sim --steward URL --steward-ca FILE --listen ...``
with a package that declares a listen socket, against a real ``stockade
steward serve`` on loopback. The Keep gets its certificate, binds, reports
``listening``; a Python client holding a workload certificate of the same
CA talks to the workload over mutual TLS; a client certificate naming
another package is refused; without a steward the client refuses the
package before anything is sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stockade.package.format import build
from stockade.steward.ca import open_ca
from stockade.steward.profile import VerifiedWorkloadClaims, issue
from stockade.testing.steward import Steward, free_port, steward_server

CLIENT_DIGEST = hashlib.sha256(b"the client package").digest()
OTHER_DIGEST = hashlib.sha256(b"another package").digest()


@pytest.fixture(scope="module")
def steward(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[Steward]:
    with steward_server(tmp_path_factory.mktemp("steward"), state_dir) as s:
        yield s


def _echo_package(tmp: Path, accept: int) -> Path:
    import wasmtime

    from test_netsock import ECHO

    src = tmp / "echo"
    src.mkdir()
    wasm = wasmtime.wat2wasm(ECHO.replace("{fd}", "1073741824").replace("{n}", str(accept)))
    (src / "main.wasm").write_bytes(bytes(wasm))
    (src / "Stockade.toml").write_text(
        'name = "echo"\nversion = "1"\nentry = "main.wasm"\n\n'
        f'[[network.listen]]\nname = "echo"\npeers = {{ digests = ["{CLIENT_DIGEST.hex()}"] }}\n'
    )
    out = tmp / "echo.stockade"
    out.write_bytes(build(src))
    return out


def _client_files(steward: Steward, tmp: Path, digest: bytes) -> tuple[Path, Path]:
    """A workload certificate for ``digest`` from the steward's own CA (its
    file key): what another Keep would hold."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")]))
        .sign(key, hashes.SHA256())
    )
    claims = VerifiedWorkloadClaims(package_digest=digest, platform="sim", measurement=b"\x01" * 48)
    with open_ca(steward.state) as ca:
        start = max(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30), ca.certificate.not_valid_before_utc)
        cert = issue(ca, csr, claims, not_before=start)
    cert_path, key_path = tmp / f"{digest.hex()[:8]}.pem", tmp / f"{digest.hex()[:8]}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _connect(steward: Steward, port: int, files: tuple[Path, Path]) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(steward.ca))
    ctx.check_hostname = False  # the identity is the SAN URI, checked by the test
    ctx.load_cert_chain(*files)
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20))


def _exchange(sock: ssl.SSLSocket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = bytearray()
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def _env(state_dir: Path) -> dict[str, str]:
    return {**os.environ, "STOCKADE_STATE_DIR": str(state_dir), "XDG_CACHE_HOME": str(state_dir / "cache")}


def test_a_workload_serves_mutual_tls_from_a_sim_keep(
    steward: Steward, state_dir: Path, tmp_path: Path
) -> None:
    package = _echo_package(tmp_path, accept=1)
    port = free_port()
    argv = [
        sys.executable, "-m", "stockade", "run", "--allow-sim", "--json", "--timeout", "60",
        "--steward", steward.url, "--steward-ca", str(steward.ca),
        "--listen", f"echo=127.0.0.1:{port}", str(package),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(state_dir))
    try:
        bad = _client_files(steward, tmp_path, OTHER_DIGEST)
        good = _client_files(steward, tmp_path, CLIENT_DIGEST)
        # The Keep binds only after its certificate: retry until it listens.
        deadline = dt.datetime.now() + dt.timedelta(seconds=90)
        while True:
            try:
                sock = _connect(steward, port, bad)
                break
            except (ConnectionRefusedError, ssl.SSLError, OSError):
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert dt.datetime.now() < deadline, "the Keep never listened"
                __import__("time").sleep(0.3)
        with sock:
            # A certificate naming another package: closed before the workload sees it.
            try:
                sock.sendall(b"x")
                assert sock.recv(10) == b""
            except (ssl.SSLError, OSError):
                pass
        with _connect(steward, port, good) as sock:
            server_cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True) or b"")
            assert _exchange(sock, b"hello over attested TLS") == b"hello over attested TLS"
            sock.unwrap()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)
    assert doc["stdout"] == "done\n"
    package_uri = f"stockade://workload/sha256/{doc['workload']['package_digest']}"
    # The Keep's listen socket presented the certificate the steward issued
    # for this Keep (the one in the result).
    assert server_cert == x509.load_pem_x509_certificate(doc["certificate"].encode())
    san = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [package_uri]
    events = [(e["event"], e["name"]) for e in doc["net"]]
    assert events == [("listening", "echo"), ("refused", "echo"), ("accepted", "echo")]
    assert doc["net"][0]["detail"] == f"127.0.0.1:{port}"
    assert OTHER_DIGEST.hex() in doc["net"][1]["detail"]
    assert doc["net"][2]["detail"] == f"stockade://workload/sha256/{CLIENT_DIGEST.hex()}"


def test_net_events_are_printed_on_stderr(steward: Steward, state_dir: Path, tmp_path: Path) -> None:
    package = _echo_package(tmp_path, accept=1)
    argv = [
        sys.executable, "-m", "stockade", "run", "--allow-sim", "--timeout", "2",
        "--steward", steward.url, "--steward-ca", str(steward.ca), str(package),
    ]  # fmt: skip
    # Nobody connects: the workload waits in sock_accept until its time limit.
    proc = subprocess.run(argv, check=False, capture_output=True, timeout=120, env=_env(state_dir))
    err = proc.stderr.decode()
    assert proc.returncode == 116, err  # the time limit
    assert re.search(r"^stockade: net: listening echo 127\.0\.0\.1:\d+$", err, re.M), err


def test_a_package_with_sockets_needs_a_steward(state_dir: Path, tmp_path: Path) -> None:
    package = _echo_package(tmp_path, accept=1)
    argv = [sys.executable, "-m", "stockade", "run", "--allow-sim", str(package)]
    proc = subprocess.run(argv, check=False, capture_output=True, timeout=120, env=_env(state_dir))
    assert proc.returncode == 2
    assert "need a workload certificate for attested TLS: deploy with --steward URL" in proc.stderr.decode()
