"""``stockade connect HOST:PORT``: talk to a service Keep over TLS 1.3, like
``openssl s_client``, after checking that the server is the workload you
expect (docs/steward.md, "Connecting to a service Keep").

The server's certificate must chain to the pinned steward CA
(``--steward-ca``; OpenSSL checks the chain during the handshake, and
:func:`stockade.steward.verify.verify_workload_certificate` checks it again
with the whole workload certificate profile), and the workload it names must
be one of the expected ones: a package digest given with ``--expect-digest``
or a package signed by a key given with ``--expect-signer`` (its kid,
SHA-256 of the raw Ed25519 public key, docs/package.md). At least one
expectation is required: a certificate from the steward only says that
*some* attested workload holds the key. The verified identity goes to
standard error; then standard input is sent to the server and what the
server sends is written to standard output, until the server closes the
connection or, after the end of standard input, nothing arrives for
``--linger`` seconds (TLS 1.3 allows a half-close, but Python's ssl module
cannot send close_notify and keep reading, so the end of input is not
signalled to the server; a line protocol has its own ``QUIT``).

``--cert``/``--key`` present a client certificate (PEM), for a service that
requires one (a ``[[network.listen]]`` with ``peers``).

Exit codes: 0 the server closed or went quiet after the input ended;
110 the certificate did not verify or names another workload; 113 the TLS
handshake or the connection failed at the TLS layer (e.g. the server
required a client certificate and refused ours); 2 usage (bad address,
unreadable CA, certificate or key file, no expectation); 1 the server could
not be reached (connection refused, timeout).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import selectors
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

from stockade.errors import ProtocolError, StockadeError, UsageError, WorkloadCertificateInvalid

if TYPE_CHECKING:
    from cryptography import x509

    from stockade.steward.verify import WorkloadIdentity

HEX64 = re.compile(r"[0-9a-f]{64}")
#: Largest read from either side at once.
CHUNK = 65536


@dataclass(frozen=True)
class Expectations:
    """Who the server may be: a package digest, or a package signed by one
    of these keys (kids); either suffices."""

    digests: frozenset[bytes]
    signer_kids: frozenset[str]

    def describe(self) -> str:
        parts = []
        if self.digests:
            parts.append("package digest " + " or ".join(sorted(d.hex() for d in self.digests)))
        if self.signer_kids:
            parts.append("a package signed by kid " + " or ".join(sorted(self.signer_kids)))
        return " or ".join(parts)


def signer_kid(raw_key: bytes) -> str:
    """The kid of a raw Ed25519 public key (docs/package.md)."""
    return hashlib.sha256(raw_key).hexdigest()


def check_expected(identity: WorkloadIdentity, expected: Expectations) -> None:
    """Raises WorkloadCertificateInvalid (110) unless ``identity`` is expected."""
    kids = [signer_kid(k) for k in identity.signer_keys]
    if identity.package_digest in expected.digests or expected.signer_kids.intersection(kids):
        return
    signed = f"signed by kid {', '.join(kids)}" if kids else "with no signer"
    raise WorkloadCertificateInvalid(
        f"the server is workload {identity.uri} ({signed}), not the expected {expected.describe()}"
    )


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", text)
    if match is None:
        raise UsageError(f"address {text!r}: HOST:PORT or [IPV6]:PORT expected")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise UsageError(f"address {text!r}: port {port} is not in 1..65535")
    return host, port


def parse_expectations(digests: Sequence[str], signers: Sequence[str]) -> Expectations:
    for value, option in [
        *((d, "--expect-digest") for d in digests),
        *((s, "--expect-signer") for s in signers),
    ]:
        if not HEX64.fullmatch(value.removeprefix("sha256:")):
            raise UsageError(f"{option} {value!r}: 64 lowercase hex digits expected")
    if not digests and not signers:
        raise UsageError(
            "give at least one --expect-digest or --expect-signer: a steward certificate only says that "
            "some attested workload holds the key, not which one you meant to reach"
        )
    return Expectations(
        digests=frozenset(bytes.fromhex(d.removeprefix("sha256:")) for d in digests),
        signer_kids=frozenset(signers),
    )


def client_context(ca: x509.Certificate, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """TLS 1.3 only; the chain checked by OpenSSL against the pinned CA alone
    (no system roots); no host name check: the server is named by the
    workload URI in its certificate, which the caller checks."""
    from cryptography.hazmat.primitives import serialization

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        # As PEM: a process that loaded a PKCS#11 module may hold a stale
        # OpenSSL error that fails DER cadata (stockade.steward.request).
        ctx.load_verify_locations(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    except ssl.SSLError as exc:
        raise UsageError(f"cannot load the steward CA certificate: {exc}") from None
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together")
    if cert is not None and key is not None:
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load the client certificate {cert} and key {key}: {exc}") from None
    return ctx


def open_verified(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    ca: x509.Certificate,
    expected: Expectations,
    *,
    timeout: float = 10.0,
    now: dt.datetime | None = None,
) -> tuple[ssl.SSLSocket, WorkloadIdentity]:
    """Connects, completes the TLS 1.3 handshake and checks the server's
    workload certificate; the socket is closed on any failure."""
    from cryptography import x509

    from stockade.steward.verify import verify_workload_certificate

    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise StockadeError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    try:
        tls = ctx.wrap_socket(raw, server_side=False)
    except ssl.SSLCertVerificationError as exc:
        raw.close()
        raise WorkloadCertificateInvalid(
            f"the certificate of {host}:{port} does not chain to the steward CA: {exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        raw.close()
        raise ProtocolError(f"TLS 1.3 handshake with {host}:{port} failed: {exc.reason or exc}") from None
    except OSError as exc:
        raw.close()
        raise StockadeError(f"TLS handshake with {host}:{port} failed: {exc.strerror or exc}") from None
    try:
        der = tls.getpeercert(binary_form=True)
        if der is None:  # pragma: no cover - CERT_REQUIRED makes OpenSSL refuse first
            raise WorkloadCertificateInvalid(f"{host}:{port} sent no certificate")
        identity = verify_workload_certificate(
            [x509.load_der_x509_certificate(der)], ca, now or dt.datetime.now(dt.UTC)
        )
        check_expected(identity, expected)
    except BaseException:
        tls.close()
        raise
    return tls, identity


def describe_identity(identity: WorkloadIdentity) -> str:
    kids = ", ".join(signer_kid(k) for k in identity.signer_keys) or "none"
    return (
        f"verified workload {identity.uri}: platform {identity.platform}, "
        f"measurement {identity.measurement.hex()}, signer kid(s) {kids}, "
        f"certificate serial {identity.serial:x} valid until {identity.not_after.isoformat()}, "
        f"steward CA {identity.ca_fingerprint[:16]}…"
    )


def _tls_failure(exc: ssl.SSLError, *, hint: bool) -> ProtocolError:
    """The failure of an established TLS connection; ``hint``: nothing was
    received yet and no client certificate was given, so the likely cause
    is a service that refuses clients without a workload certificate (in
    TLS 1.3 the server checks the client's certificate after the client
    has finished its side of the handshake, so the refusal comes here)."""
    if isinstance(exc, ssl.SSLEOFError):
        what = "the server closed the connection without a TLS close_notify"
    else:
        what = f"the TLS connection failed: {exc.reason or exc}"
    if hint:
        what += (
            " (a service whose [[network.listen]] names its peers refuses a client without "
            "a workload certificate: --cert/--key)"
        )
    return ProtocolError(what)


def pipe(
    tls: ssl.SSLSocket, stdin: BinaryIO, stdout: BinaryIO, *, linger: float, client_cert: bool = False
) -> None:
    """Standard input to the server, the server to standard output, on one
    thread (an OpenSSL connection must not be read and written from two
    threads at once), the socket non-blocking so that a TLS record without
    application data (a session ticket) never blocks the loop."""
    received = False
    tls.setblocking(False)
    in_fd = stdin.fileno()
    # select(2), not epoll: standard input may be a regular file, which epoll
    # refuses and select reports as always readable.
    sel = selectors.SelectSelector()
    sel.register(tls, selectors.EVENT_READ)
    sel.register(in_fd, selectors.EVENT_READ)
    stdin_open = True
    quiet_since = time.monotonic()
    while True:
        timeout = None if stdin_open else max(0.0, quiet_since + linger - time.monotonic())
        if not stdin_open and timeout == 0.0 and not tls.pending():
            return
        events = sel.select(timeout) if not tls.pending() else [(None, selectors.EVENT_READ)]
        if not events and not stdin_open:
            return
        for key, _ in events:
            if key is not None and key.fd == in_fd:
                data = os.read(in_fd, CHUNK)
                if not data:
                    sel.unregister(in_fd)
                    stdin_open = False
                    quiet_since = time.monotonic()
                else:
                    try:
                        _send_all(tls, data)
                    except ssl.SSLError as exc:
                        raise _tls_failure(exc, hint=not (received or client_cert)) from None
                continue
            try:
                data = tls.recv(CHUNK)
            except ssl.SSLWantReadError:
                continue
            except ssl.SSLError as exc:
                raise _tls_failure(exc, hint=not (received or client_cert)) from None
            except OSError as exc:
                raise StockadeError(f"the connection failed: {exc.strerror or exc}") from None
            if not data:
                return
            received = True
            stdout.write(data)
            stdout.flush()
            quiet_since = time.monotonic()


def _send_all(tls: ssl.SSLSocket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = tls.send(view)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            time.sleep(0.005)  # the socket buffer is full: the server is reading slowly
            continue
        except ssl.SSLError:
            raise  # pipe() words it
        except OSError as exc:
            raise StockadeError(f"the connection failed: {exc.strerror or exc}") from None
        view = view[sent:]


@click.command()
@click.argument("address", metavar="HOST:PORT")
@click.option(
    "--steward-ca",
    "steward_ca",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The steward's CA certificate (PEM, its ca.pem): the only trust anchor.",
)
@click.option(
    "--expect-digest",
    "digests",
    multiple=True,
    metavar="HEX",
    help="Accept a server running the package of this digest (repeatable).",
)
@click.option(
    "--expect-signer",
    "signers",
    multiple=True,
    metavar="KID",
    help="Accept a server running a package signed by this key (kid: SHA-256 of the raw Ed25519 key; repeatable).",
)
@click.option("--cert", type=click.Path(dir_okay=False, path_type=Path), help="Client certificate (PEM).")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), help="Its private key (PEM).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=300),
    default=10.0,
    show_default=True,
    help="Seconds to connect and complete the handshake.",
)
@click.option(
    "--linger",
    type=click.FloatRange(min=0, max=300),
    default=3.0,
    show_default=True,
    help="After the end of standard input, seconds to wait for more from the server.",
)
def connect(
    address: str,
    steward_ca: Path,
    digests: tuple[str, ...],
    signers: tuple[str, ...],
    cert: Path | None,
    key: Path | None,
    timeout: float,
    linger: float,
) -> None:
    """Talk to a service Keep at HOST:PORT over TLS 1.3 after checking its
    workload certificate against the steward CA and the expected workload."""
    host, port = parse_address(address)
    expected = parse_expectations(digests, signers)
    from stockade.client.steward import load_ca

    ca = load_ca(steward_ca)
    ctx = client_context(ca, cert, key)
    tls, identity = open_verified(host, port, ctx, ca, expected, timeout=timeout)
    with tls:
        click.echo(f"stockade connect: {host}:{port}: {describe_identity(identity)}", err=True)
        pipe(tls, sys.stdin.buffer, sys.stdout.buffer, linger=linger, client_cert=cert is not None)
