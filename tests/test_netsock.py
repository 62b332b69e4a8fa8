"""The Keep runtime's network sockets (stockade.keep.netsock, ADR 0027):
virtual WASI descriptors, attested mutual TLS with steward workload
certificates, peer checks, and what the host sees on the wire.

Every test runs a small WASI module (WAT) in a real Runner, with a
ServiceIdentity made here under a file-key CA (stockade.steward.ca), and
talks to it from Python TLS peers holding their own workload certificates.
Loopback only; every run has a time limit of a few seconds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import queue
import secrets
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stockade.errors import LimitExceeded, WorkloadRejected
from stockade.keep import netsock
from stockade.keep.loading import socket_plans
from stockade.keep.netsock import FD_BASE, FORWARDER_WAT, check_peer
from stockade.keep.runner import Runner, RunOutcome, make_engine
from stockade.keep.sandbox import Sandbox
from stockade.keep.service import ServiceIdentity
from stockade.package.manifest import Peers, Socket
from stockade.steward.ca import CertificateAuthority, create_ca
from stockade.steward.profile import VerifiedWorkloadClaims, issue
from stockade.wire.messages import Config, Limits, Net, SocketAddress, SocketPlan, Workload

SERVER_DIGEST = hashlib.sha256(b"kv server package").digest()
CLIENT_DIGEST = hashlib.sha256(b"kv client package").digest()
OTHER_DIGEST = hashlib.sha256(b"another package").digest()
SIGNER = b"\x07" * 32
SIGNER_KID = hashlib.sha256(SIGNER).hexdigest()
CANARY = b"CANARY-" + secrets.token_hex(16).encode()


# ---------------------------------------------------------------------------
# certificates
# ---------------------------------------------------------------------------


def _cert(
    ca: CertificateAuthority, key: ec.EllipticCurvePrivateKey, digest: bytes, signers: tuple[bytes, ...] = ()
) -> x509.Certificate:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workload")]))
        .sign(key, hashes.SHA256())
    )
    claims = VerifiedWorkloadClaims(
        package_digest=digest, platform="sim", measurement=b"\x01" * 48, signer_keys=signers
    )
    return issue(ca, csr, claims, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))


@dataclass
class Pki:
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    tmp: Path

    def identity(
        self, digest: bytes, signers: tuple[bytes, ...] = (), ca: CertificateAuthority | None = None
    ) -> ServiceIdentity:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer = ca or self.ca
        return ServiceIdentity(
            key=key, certificate=_cert(issuer, key, digest, signers), ca=self.ca.certificate
        )

    def files(self, ident: ServiceIdentity, label: str) -> tuple[Path, Path]:
        cert = self.tmp / f"{label}.pem"
        key = self.tmp / f"{label}.key"
        cert.write_bytes(ident.certificate.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            ident.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    base = tmp_path_factory.mktemp("pki")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with create_ca(base / "ca", now=start) as ca, create_ca(base / "other", "other CA", now=start) as other:
        yield Pki(ca, other, base)


# ---------------------------------------------------------------------------
# workloads (WAT)
# ---------------------------------------------------------------------------

_IMPORTS = """
  (import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_recv" (func $recv (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_send" (func $send (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_shutdown" (func $shutdown (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fdstat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
"""

#: Echo server on the first socket (FD_BASE): accepts ``n`` connections one
#: after another; on each, fd_read until end of stream, fd_write back what
#: it read (a short write is retried), then fd_close. Prints "done\n" on
#: stdout (fd 1, through wasmtime's WASI: the forwarder) and exits 0; any
#: errno from a socket call is the exit code (+100).
# Memory: 0 accepted fd, 8 iovec (ptr 1024, len), 16 count, 24 stdout iovec,
# 64 "done\n", 1024.. buffer.
ECHO = (
    "(module"
    + _IMPORTS
    + """
  (data (i32.const 64) "done\\n")
  (func $check (param i32) (if (local.get 0) (then (call $exit (i32.add (i32.const 100) (local.get 0))))))
  (func $serve (param $n i32) (local $fd i32) (local $got i32) (local $off i32)
    (loop $conns
      (call $check (call $accept (i32.const {fd}) (i32.const 0) (i32.const 0)))
      (local.set $fd (i32.load (i32.const 0)))
      (block $eof
        (loop $chunks
          (i32.store (i32.const 8) (i32.const 1024))
          (i32.store (i32.const 12) (i32.const 4096))
          (call $check (call $read (local.get $fd) (i32.const 8) (i32.const 1) (i32.const 16)))
          (local.set $got (i32.load (i32.const 16)))
          (br_if $eof (i32.eqz (local.get $got)))
          (local.set $off (i32.const 0))
          (loop $out
            (i32.store (i32.const 8) (i32.add (i32.const 1024) (local.get $off)))
            (i32.store (i32.const 12) (i32.sub (local.get $got) (local.get $off)))
            (call $check (call $write (local.get $fd) (i32.const 8) (i32.const 1) (i32.const 16)))
            (local.set $off (i32.add (local.get $off) (i32.load (i32.const 16))))
            (br_if $out (i32.lt_u (local.get $off) (local.get $got))))
          (br $chunks)))
      (call $check (call $close (local.get $fd)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $conns (local.get $n))))
  (func (export "_start")
    (call $serve (i32.const {n}))
    (i32.store (i32.const 24) (i32.const 64))
    (i32.store (i32.const 28) (i32.const 5))
    (call $check (call $write (i32.const 1) (i32.const 24) (i32.const 1) (i32.const 16))))
)"""
)

#: Client on the first socket (a connect socket, FD_BASE): sock_send
#: "ping", sock_shutdown(wr), sock_recv the answer, print it on stdout,
#: exit 0; an errno is the exit code (+100).
CLIENT = (
    "(module"
    + _IMPORTS
    + """
  (data (i32.const 64) "ping")
  (func $check (param i32) (if (local.get 0) (then (call $exit (i32.add (i32.const 100) (local.get 0))))))
  (func (export "_start")
    (i32.store (i32.const 8) (i32.const 64))
    (i32.store (i32.const 12) (i32.const 4))
    (call $check (call $send (i32.const {fd}) (i32.const 8) (i32.const 1) (i32.const 0) (i32.const 16)))
    (call $check (call $shutdown (i32.const {fd}) (i32.const 2)))
    (i32.store (i32.const 8) (i32.const 1024))
    (i32.store (i32.const 12) (i32.const 4096))
    (call $check (call $recv (i32.const {fd}) (i32.const 8) (i32.const 1) (i32.const 0) (i32.const 16) (i32.const 20)))
    (i32.store (i32.const 24) (i32.const 1024))
    (i32.store (i32.const 28) (i32.load (i32.const 16)))
    (call $check (call $write (i32.const 1) (i32.const 24) (i32.const 1) (i32.const 16)))
    (call $check (call $close (i32.const {fd}))))
)"""
)

#: Calls on descriptors: fdstat of the socket (filetype at byte 32),
#: sock_accept on a connect socket (errno at 33), fd_read with an iovec
#: past the end of memory (errno at 34); prints the three bytes.
PROBE = (
    "(module"
    + _IMPORTS
    + """
  (func (export "_start")
    (drop (call $fdstat (i32.const {fd}) (i32.const 32)))
    (i32.store8 (i32.const 33) (call $accept (i32.const {fd}) (i32.const 0) (i32.const 0)))
    (i32.store (i32.const 8) (i32.const 65530))
    (i32.store (i32.const 12) (i32.const 100))
    (i32.store8 (i32.const 34) (call $read (i32.const {fd}) (i32.const 8) (i32.const 1) (i32.const 16)))
    (i32.store (i32.const 40) (i32.const 32))
    (i32.store (i32.const 44) (i32.const 3))
    (drop (call $write (i32.const 1) (i32.const 40) (i32.const 1) (i32.const 16))))
)"""
)


def _wasm(template: str, **values: int) -> bytes:
    import wasmtime

    return bytes(
        wasmtime.wat2wasm(
            template.replace("{fd}", str(values.get("fd", FD_BASE))).replace("{n}", str(values.get("n", 1)))
        )
    )


# ---------------------------------------------------------------------------
# running a workload
# ---------------------------------------------------------------------------


class _Scratch(Sandbox):
    """A plain directory as the workload's disk with no limit applied: the
    fallback's RLIMIT_FSIZE would bind the whole test process (and every
    later test's writes past the workload's disk limit)."""

    def set_limit(self, disk_bytes: int) -> None:
        self.limit = disk_bytes


class Run:
    """A workload running in a thread; its net events and stdout."""

    def __init__(
        self,
        tmp: Path,
        wasm: bytes,
        sockets: tuple[SocketPlan, ...],
        service: ServiceIdentity | None,
        timeout_ms: int = 8000,
        network: bool = True,
    ) -> None:
        self.events: queue.Queue[Net] = queue.Queue()
        self.stdout = bytearray()
        sandbox = _Scratch(tmp, private=False)
        self.runner = Runner(
            make_engine(), self._emit, sandbox, service=service, net_emit=self.events.put, network=network
        )
        self.workload = Workload(
            wasm=wasm,
            sockets=sockets,
            limits=Limits(timeout_ms=timeout_ms, memory_bytes=16 << 20, disk_bytes=1 << 20),
        )
        self.outcome: RunOutcome | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _emit(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.stdout += data

    def _run(self) -> None:
        try:
            self.outcome = self.runner.run(self.workload)
        except BaseException as exc:
            self.error = exc

    def start(self) -> Run:
        self.thread.start()
        return self

    def event(self, timeout: float = 5.0) -> Net:
        return self.events.get(timeout=timeout)

    def listening(self) -> tuple[str, int]:
        ev = self.event()
        assert ev.event == "listening", ev
        host, _, port = ev.detail.rpartition(":")
        return host, int(port)

    def join(self, timeout: float = 15.0) -> RunOutcome:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "workload did not end"
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


def listen_plan(
    peers: bool = True, digests: tuple[str, ...] = (CLIENT_DIGEST.hex(),), signers: tuple[str, ...] = ()
) -> SocketPlan:
    return SocketPlan(
        kind="listen",
        name="echo",
        address="127.0.0.1:0",
        digests=digests if peers else (),
        signers=signers if peers else (),
        peers_required=peers,
    )


def tls_client(pki: Pki, port: int, ident: ServiceIdentity | None) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=pki.ca.certificate.public_bytes(serialization.Encoding.PEM).decode())
    ctx.check_hostname = False  # the server's identity is its SAN URI, checked below
    if ident is not None:
        ctx.load_cert_chain(*pki.files(ident, f"client-{secrets.token_hex(4)}"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw)


def exchange(sock: ssl.SSLSocket, payload: bytes) -> bytes:
    """Send ``payload`` and read as many bytes back (the echo server
    answers each chunk as it reads it)."""
    sock.sendall(payload)
    got = bytearray()
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def refused(sock: ssl.SSLSocket) -> bool:
    """The server closed the connection without serving it."""
    try:
        sock.sendall(b"x")
        return sock.recv(10) == b""
    except (ssl.SSLError, OSError):
        return True


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------


def test_forwarder_has_every_shadowed_function() -> None:
    import wasmtime

    module = wasmtime.Module(wasmtime.Engine(), bytes(wasmtime.wat2wasm(FORWARDER_WAT)))
    assert sorted(e.name for e in module.exports) == sorted([*netsock.SHADOWED, "memory"])


def test_mtls_echo_with_a_workload_client_certificate(pki: Pki, tmp_path: Path) -> None:
    server = pki.identity(SERVER_DIGEST)
    run = Run(tmp_path, _wasm(ECHO, n=1), (listen_plan(),), server).start()
    host, port = run.listening()
    assert host == "127.0.0.1" and port > 0
    with tls_client(pki, port, pki.identity(CLIENT_DIGEST)) as sock:
        # The server's certificate names the server workload under the CA.
        leaf = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True) or b"")
        ident = check_peer(
            [leaf],
            SocketPlan("connect", "kv", "h:1", digests=(SERVER_DIGEST.hex(),), peers_required=True),
            pki.ca.certificate,
            dt.datetime.now(dt.UTC),
        )
        assert ident.package_digest == SERVER_DIGEST
        assert exchange(sock, b"hello " * 5000) == b"hello " * 5000  # several records, short writes
        sock.unwrap()
    ev = run.event()
    assert (ev.event, ev.name, ev.detail) == (
        "accepted",
        "echo",
        "stockade://workload/sha256/" + CLIENT_DIGEST.hex(),
    )
    outcome = run.join()
    assert outcome.exit_code == 0
    assert bytes(run.stdout) == b"done\n"  # fd 1 still reaches wasmtime's WASI through the forwarder


def test_signer_key_id_admits_a_peer(pki: Pki, tmp_path: Path) -> None:
    run = Run(
        tmp_path,
        _wasm(ECHO, n=1),
        (listen_plan(digests=(), signers=(SIGNER_KID,)),),
        pki.identity(SERVER_DIGEST),
    ).start()
    _, port = run.listening()
    with tls_client(pki, port, pki.identity(OTHER_DIGEST, signers=(SIGNER,))) as sock:
        assert exchange(sock, b"signed") == b"signed"
        sock.unwrap()
    assert run.event().event == "accepted"
    assert run.join().exit_code == 0


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("other-package", "is not one of the workloads listen socket 'echo' accepts"),
        ("other-ca", "was not issued by the steward CA"),
        ("no-certificate", "TLS handshake failed"),
    ],
)
def test_unacceptable_client_is_closed_before_the_workload_sees_it(
    pki: Pki, tmp_path: Path, case: str, reason: str
) -> None:
    run = Run(tmp_path, _wasm(ECHO, n=1), (listen_plan(),), pki.identity(SERVER_DIGEST)).start()
    _, port = run.listening()
    bad = {
        "other-package": pki.identity(OTHER_DIGEST),
        "other-ca": pki.identity(CLIENT_DIGEST, ca=pki.other_ca),
        "no-certificate": None,
    }[case]
    with tls_client(pki, port, bad) as sock:
        assert refused(sock)
    ev = run.event()
    assert (ev.event, ev.name) == ("refused", "echo")
    assert reason in ev.detail
    # The workload is still in its first sock_accept: the next, acceptable
    # client is the first connection it sees.
    with tls_client(pki, port, pki.identity(CLIENT_DIGEST)) as sock:
        assert exchange(sock, b"after") == b"after"
        sock.unwrap()
    assert run.event().event == "accepted"
    assert run.join().exit_code == 0


def test_listen_without_peers_accepts_anonymous_clients(pki: Pki, tmp_path: Path) -> None:
    run = Run(tmp_path, _wasm(ECHO, n=1), (listen_plan(peers=False),), pki.identity(SERVER_DIGEST)).start()
    _, port = run.listening()
    with tls_client(pki, port, None) as sock:
        assert exchange(sock, b"anyone") == b"anyone"
        sock.unwrap()
    ev = run.event()
    assert (ev.event, ev.detail) == ("accepted", "anonymous")
    assert run.join().exit_code == 0


def test_a_stalled_handshake_is_dropped_after_the_timeout(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netsock, "HANDSHAKE_TIMEOUT", 0.5)
    run = Run(tmp_path, _wasm(ECHO, n=1), (listen_plan(),), pki.identity(SERVER_DIGEST)).start()
    _, port = run.listening()
    with socket.create_connection(("127.0.0.1", port)) as silent:
        ev = run.event()
        assert ev.event == "refused" and "no TLS handshake within 0.5 s" in ev.detail
        assert silent.recv(10) == b""
    with tls_client(pki, port, pki.identity(CLIENT_DIGEST)) as sock:
        assert exchange(sock, b"x") == b"x"
        sock.unwrap()
    assert run.join().exit_code == 0


class TlsServer:
    """A Python TLS server holding a workload certificate: answers each
    connection with b"pong:" + what it read until end of stream."""

    def __init__(self, pki: Pki, ident: ServiceIdentity, require_client: bool = True) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.load_cert_chain(*pki.files(ident, f"server-{secrets.token_hex(4)}"))
        if require_client:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(
                cadata=pki.ca.certificate.public_bytes(serialization.Encoding.PEM).decode()
            )
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.client_certs: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.sock.accept()
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                self.client_certs.append(conn.getpeercert(binary_form=True) or b"")
                got = bytearray()
                while chunk := conn.recv(4096):
                    got += chunk
                conn.sendall(b"pong:" + got)
                conn.unwrap()
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def connect_plan(port: int, digests: tuple[str, ...] = (SERVER_DIGEST.hex(),)) -> SocketPlan:
    return SocketPlan(
        kind="connect", name="kv", address=f"127.0.0.1:{port}", digests=digests, peers_required=True
    )


def test_connect_presents_our_certificate_and_checks_the_server(pki: Pki, tmp_path: Path) -> None:
    server = TlsServer(pki, pki.identity(SERVER_DIGEST))
    me = pki.identity(CLIENT_DIGEST)
    try:
        run = Run(tmp_path, _wasm(CLIENT), (connect_plan(server.port),), me).start()
        ev = run.event()
        assert (ev.event, ev.name, ev.detail) == (
            "connected",
            "kv",
            "stockade://workload/sha256/" + SERVER_DIGEST.hex(),
        )
        assert run.join().exit_code == 0
        assert bytes(run.stdout) == b"pong:ping"
        assert server.client_certs == [me.certificate.public_bytes(serialization.Encoding.DER)]
    finally:
        server.close()


def test_connect_refuses_a_server_naming_another_workload(pki: Pki, tmp_path: Path) -> None:
    server = TlsServer(pki, pki.identity(OTHER_DIGEST))
    try:
        run = Run(tmp_path, _wasm(CLIENT), (connect_plan(server.port),), pki.identity(CLIENT_DIGEST)).start()
        ev = run.event()
        assert (ev.event, ev.name) == ("refused", "kv")
        assert OTHER_DIGEST.hex() in ev.detail and "is not one of the workloads" in ev.detail
        assert run.join().exit_code == 100 + netsock.ACCES  # the workload's send saw EACCES
        assert run.stdout == b""
    finally:
        server.close()


def test_connect_refuses_a_server_under_another_ca(pki: Pki, tmp_path: Path) -> None:
    server = TlsServer(pki, pki.identity(SERVER_DIGEST, ca=pki.other_ca))
    try:
        run = Run(tmp_path, _wasm(CLIENT), (connect_plan(server.port),), pki.identity(CLIENT_DIGEST)).start()
        ev = run.event()
        assert ev.event == "refused" and "was not issued by the steward CA" in ev.detail
        assert run.join().exit_code == 100 + netsock.ACCES
    finally:
        server.close()


def test_connect_to_a_closed_port_is_connrefused(pki: Pki, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    run = Run(tmp_path, _wasm(CLIENT), (connect_plan(port),), pki.identity(CLIENT_DIGEST)).start()
    ev = run.event()
    assert ev.event == "refused" and "cannot connect" in ev.detail
    assert run.join().exit_code == 100 + netsock.CONNREFUSED


def test_descriptor_calls_answer_wasi_errnos(pki: Pki, tmp_path: Path) -> None:
    # Connect socket to a port nobody listens on: fdstat answers without
    # connecting; sock_accept on a connection descriptor is notsup; an iovec
    # past the end of memory is fault, before any connection attempt.
    run = Run(tmp_path, _wasm(PROBE), (connect_plan(1),), pki.identity(CLIENT_DIGEST)).start()
    assert run.join().exit_code == 0
    assert bytes(run.stdout) == bytes([netsock.FILETYPE_SOCKET_STREAM, netsock.NOTSUP, netsock.FAULT])
    assert run.events.empty()  # no connection was attempted


def test_too_many_open_connections_is_mfile(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A workload that accepts twice without closing: the second accept
    # answers mfile when the limit is 1.
    monkeypatch.setattr(netsock, "MAX_CONNECTIONS", 1)
    wat = (
        "(module"
        + _IMPORTS
        + """
  (func (export "_start")
    (drop (call $accept (i32.const {fd}) (i32.const 0) (i32.const 0)))
    (call $exit (call $accept (i32.const {fd}) (i32.const 0) (i32.const 0)))))"""
    )
    run = Run(tmp_path, _wasm(wat), (listen_plan(),), pki.identity(SERVER_DIGEST)).start()
    _, port = run.listening()
    with tls_client(pki, port, pki.identity(CLIENT_DIGEST)) as sock:
        assert run.join().exit_code == netsock.MFILE
        sock.close()


def test_the_time_limit_ends_a_workload_blocked_in_accept(pki: Pki, tmp_path: Path) -> None:
    run = Run(
        tmp_path, _wasm(ECHO, n=1), (listen_plan(),), pki.identity(SERVER_DIGEST), timeout_ms=500
    ).start()
    run.listening()
    t0 = time.monotonic()
    with pytest.raises(LimitExceeded, match="time limit"):
        run.join()
    assert time.monotonic() - t0 < 5


def test_no_service_identity_is_refused(tmp_path: Path) -> None:
    run = Run(tmp_path, _wasm(ECHO), (listen_plan(),), None).start()
    with pytest.raises(WorkloadRejected, match="need a service identity: deploy with --steward"):
        run.join()


def test_a_vm_keep_refuses_sockets(pki: Pki, tmp_path: Path) -> None:
    run = Run(tmp_path, _wasm(ECHO), (listen_plan(),), pki.identity(SERVER_DIGEST), network=False).start()
    with pytest.raises(WorkloadRejected, match="VM Keep does not offer"):
        run.join()


def test_a_workload_without_sockets_gets_no_shadowing(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any) -> None:
        raise AssertionError("netsock used")

    monkeypatch.setattr(netsock, "runtime_for", boom)
    hello = bytes(
        __import__("wasmtime").wat2wasm(
            '(module (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))'
            ' (memory (export "memory") 1) (data (i32.const 64) "hi")'
            ' (func (export "_start") (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 2))'
            " (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"
        )
    )
    run = Run(tmp_path, hello, (), None).start()
    assert run.join().exit_code == 0 and bytes(run.stdout) == b"hi"


def test_the_host_sees_only_tls_records(pki: Pki, tmp_path: Path) -> None:
    """A relay between the client and the Keep's listen socket records every
    byte both ways: no canary in it, and every byte belongs to a TLS record
    (RFC 8446 section 5.1: type 20-23, legacy version 0x0303 (0x0301 in a
    ClientHello), length <= 2**14 + 256)."""
    run = Run(tmp_path, _wasm(ECHO, n=1), (listen_plan(),), pki.identity(SERVER_DIGEST)).start()
    _, keep_port = run.listening()
    relay = socket.create_server(("127.0.0.1", 0))
    captured: dict[str, bytearray] = {"up": bytearray(), "down": bytearray()}

    def pump() -> None:
        a, _ = relay.accept()
        b = socket.create_connection(("127.0.0.1", keep_port))
        ends = {a: (b, "up"), b: (a, "down")}
        open_ = {a, b}
        while open_:
            ready, _, _ = select.select(list(open_), [], [], 5)
            if not ready:
                break
            for s in ready:
                data = s.recv(65536)
                other, direction = ends[s]
                if not data:
                    open_.discard(s)
                    with contextlib.suppress(OSError):
                        other.shutdown(socket.SHUT_WR)
                    continue
                captured[direction] += data
                other.sendall(data)
        a.close()
        b.close()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    payload = CANARY * 100
    with tls_client(pki, relay.getsockname()[1], pki.identity(CLIENT_DIGEST)) as sock:
        assert exchange(sock, payload) == payload
        sock.unwrap()
    assert run.join().exit_code == 0
    t.join(10)
    relay.close()
    for direction, data in captured.items():
        assert len(data) > len(payload)
        assert CANARY not in data and CANARY[:12] not in data, direction
        offset = 0
        while offset < len(data):
            kind, version, length = struct.unpack_from(">BHH", data, offset)
            assert kind in (20, 21, 22, 23), (direction, offset, kind)
            assert version in (0x0301, 0x0303)
            assert length <= (1 << 14) + 256
            offset += 5 + length
        assert offset == len(data)


# ---------------------------------------------------------------------------
# the plan: manifest sockets + deploy-time addresses
# ---------------------------------------------------------------------------


def test_socket_plans_join_manifest_and_config() -> None:
    declared = (
        Socket("connect", "kv", Peers(signers=(SIGNER_KID,))),
        Socket("listen", "api", None),
        Socket("listen", "kv", Peers(digests=(CLIENT_DIGEST.hex(),))),
    )
    config = Config(
        network=(
            SocketAddress("connect", "kv", "10.0.0.1:7000"),
            SocketAddress("listen", "kv", "0.0.0.0:7000"),
        )
    )
    plans = socket_plans(declared, config)
    assert [(p.kind, p.name, p.address, p.peers_required) for p in plans] == [
        ("connect", "kv", "10.0.0.1:7000", True),
        ("listen", "api", "127.0.0.1:0", False),
        ("listen", "kv", "0.0.0.0:7000", True),
    ]
    assert plans[0].env_name == "STOCKADE_CONNECT_KV"
    with pytest.raises(
        WorkloadRejected, match="connect socket 'kv' has no address: deploy with --connect kv="
    ):
        socket_plans(declared, Config())
    with pytest.raises(WorkloadRejected, match="listen socket 'nope', which the package does not declare"):
        socket_plans(
            declared,
            Config(network=(SocketAddress("connect", "kv", "h:1"), SocketAddress("listen", "nope", "h:1"))),
        )


def test_descriptors_are_numbered_from_fd_base_and_named_in_the_environment(pki: Pki) -> None:
    plans = (
        SocketPlan("connect", "kv-store", "127.0.0.1:1", digests=(SERVER_DIGEST.hex(),), peers_required=True),
        listen_plan(),
    )
    net = netsock.runtime_for(plans, pki.identity(SERVER_DIGEST), lambda e: None, lambda: False)
    try:
        assert net.start() == [
            ("STOCKADE_CONNECT_KV_STORE", str(FD_BASE)),
            ("STOCKADE_LISTEN_ECHO", str(FD_BASE + 1)),
        ]
        assert FD_BASE + 1 < 2**31
    finally:
        net.close()


def test_a_listen_address_that_cannot_be_bound_is_refused(pki: Pki) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        plan = SocketPlan("listen", "echo", f"127.0.0.1:{port}")
        net = netsock.runtime_for((plan,), pki.identity(SERVER_DIGEST), lambda e: None, lambda: False)
        with pytest.raises(
            WorkloadRejected, match=f"listen socket 'echo': the Keep cannot bind 127.0.0.1:{port}"
        ):
            net.start()
        net.close()


# ---------------------------------------------------------------------------
# Keep to Keep with the Rust example pair (examples/kv, Rust std on WASI)
# ---------------------------------------------------------------------------

KV = Path(__file__).resolve().parent.parent / "examples" / "kv"
OTHER_SIGNER = b"\x09" * 32


def _kv_run(
    tmp: Path, program: str, plan: SocketPlan, service: ServiceIdentity, args: tuple[str, ...] = ()
) -> Run:
    run = Run(tmp, (KV / program / f"kv-{program}.wasm").read_bytes(), (plan,), service, timeout_ms=30_000)
    run.workload = replace(run.workload, args=args)
    return run.start()


def test_rust_kv_pair_over_mutual_tls_and_an_intruder_refused_by_both(pki: Pki, tmp_path: Path) -> None:
    """The example's server and client (Rust 1.63 std: TcpListener /
    TcpStream from raw descriptors) in two runtimes, peers named by signer;
    a third workload signed by another key is refused by the server's
    runtime (as a client) and by the client's runtime (as a server)."""
    server_id = pki.identity(SERVER_DIGEST, signers=(SIGNER,))
    server = _kv_run(
        tmp_path,
        "server",
        SocketPlan("listen", "kv", "127.0.0.1:0", signers=(SIGNER_KID,), peers_required=True),
        server_id,
    )
    host, port = server.listening()
    connect = SocketPlan("connect", "kv", f"{host}:{port}", signers=(SIGNER_KID,), peers_required=True)

    intruder = _kv_run(
        tmp_path, "client", connect, pki.identity(OTHER_DIGEST, signers=(OTHER_SIGNER,)), ("COUNT",)
    )
    assert intruder.event().event == "connected"  # it accepts the server; the server refuses it
    assert intruder.join().exit_code != 0
    ev = server.event()
    assert ev.event == "refused" and f"peer stockade://workload/sha256/{OTHER_DIGEST.hex()}" in ev.detail

    client = _kv_run(
        tmp_path,
        "client",
        connect,
        pki.identity(CLIENT_DIGEST, signers=(SIGNER,)),
        ("SET colour blue", "GET colour"),
    )
    ev = client.event()
    assert (ev.event, ev.detail) == ("connected", f"stockade://workload/sha256/{SERVER_DIGEST.hex()}")
    assert client.join().exit_code == 0
    assert "> GET colour\nVALUE blue\n" in client.stdout.decode()
    ev = server.event()
    assert (ev.event, ev.detail) == ("accepted", f"stockade://workload/sha256/{CLIENT_DIGEST.hex()}")
    assert server.join().exit_code == 0

    # An intruder server: the client's runtime refuses it, the workload gets EACCES.
    fake = _kv_run(
        tmp_path,
        "server",
        SocketPlan("listen", "kv", "127.0.0.1:0", signers=(SIGNER_KID,), peers_required=True),
        pki.identity(OTHER_DIGEST, signers=(OTHER_SIGNER,)),
    )
    fhost, fport = fake.listening()
    victim = _kv_run(
        tmp_path,
        "client",
        replace(connect, address=f"{fhost}:{fport}"),
        pki.identity(CLIENT_DIGEST, signers=(SIGNER,)),
        ("COUNT",),
    )
    ev = victim.event()
    assert ev.event == "refused" and OTHER_DIGEST.hex() in ev.detail
    assert victim.join().exit_code != 0
    assert victim.stdout == b""
    # The fake server's runtime accepted the victim (whose signer it lists)
    # (TLS 1.3: the server's handshake ends before the client checks the
    # server's certificate), then the victim's runtime hung up.
    ev = fake.event()
    assert (ev.event, ev.detail) == ("accepted", f"stockade://workload/sha256/{CLIENT_DIGEST.hex()}")
    fake.join()


def test_net_events_are_printable_bounded_and_capped(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Net] = []
    net = netsock.runtime_for((listen_plan(),), pki.identity(SERVER_DIGEST), sent.append, lambda: False)
    net._event("refused", "echo", "a\x1b[2Jb\n" + "x" * 2000)
    assert sent[0].detail.startswith("a?[2Jb?x") and len(sent[0].detail) == 512
    assert sent[0].detail.endswith(" [...]")
    monkeypatch.setattr(netsock, "MAX_EVENTS", 3)
    for _ in range(5):
        net._event("refused", "echo", "again")
    assert len(sent) == 3


def test_why_the_forwarder_exists() -> None:
    """ADR 0027: wasmtime's own fd_write, taken from the Linker before it is
    shadowed and called from inside a host function with its Caller, finds
    no memory (it reads the calling instance's ``memory`` export, and a call
    from the host has none). If a wasmtime upgrade changes this, the
    forwarding module may go."""
    import wasmtime

    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    original = linker.get(store, "wasi_snapshot_preview1", "fd_write")
    assert isinstance(original, wasmtime.Func)
    seen: list[str] = []

    def shadow(caller: Any, fd: int, iovs: int, count: int, out: int) -> int:
        try:
            return int(original(caller, fd, iovs, count, out))
        except wasmtime.WasmtimeError as exc:
            seen.append(str(exc))
            return netsock.IO

    i32 = wasmtime.ValType.i32()
    linker.allow_shadowing = True
    linker.define_func(
        "wasi_snapshot_preview1", "fd_write", wasmtime.FuncType([i32] * 4, [i32]), shadow, access_caller=True
    )
    wat = (
        '(module (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))'
        ' (memory (export "memory") 1) (func (export "_start") (result i32)'
        " (call $w (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 8))))"
    )
    try:
        instance = linker.instantiate(store, wasmtime.Module(engine, bytes(wasmtime.wat2wasm(wat))))
        start = instance.exports(store)["_start"]
        assert isinstance(start, wasmtime.Func)
        assert start(store) == netsock.IO
    finally:
        store.close()
    assert len(seen) == 1 and "missing required memory export" in seen[0]
