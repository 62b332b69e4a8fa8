"""Deploy orchestration on the client (relying party) side.

Over a byte stream to a freshly started Keep: send a nonce, run the TLS 1.3
handshake, appraise the Keep's certificate, and only then send the workload
and its secrets; stream the Keep's output to callbacks until it reports an
exit status or a problem.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stockade.client.attest import Appraisal, TrustConfig, appraise
from stockade.errors import KeepDied, ProtocolError
from stockade.wire.messages import Exit, Output, Problem, Workload
from stockade.wire.protocol import ClientSession

#: Time beyond the workload's own limit that the client waits for the Keep.
CLIENT_GRACE_S = 10.0
HANDSHAKE_TIMEOUT_S = 60.0


@dataclass
class DeployResult:
    exit_code: int
    appraisal: Appraisal
    workload_sha256: bytes
    timing_ms: dict[str, float] = field(default_factory=dict)


class Steps:
    """Wall-clock timing of named steps, for the bench and --json."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] = round((now - self._t) * 1000, 3)
        self._t = now


@dataclass(frozen=True)
class SentHello:
    session: ClientSession
    nonce: bytes


def send_hello(sock: socket.socket) -> SentHello:
    """Send a fresh 32-byte nonce to the Keep (in clear: it is public)."""
    session = ClientSession()
    nonce = secrets.token_bytes(32)
    try:
        sock.sendall(session.hello(nonce))
    except OSError as exc:
        raise KeepDied(f"the Keep closed the connection before the hello ({type(exc).__name__})") from None
    return SentHello(session, nonce)


def deploy(
    sock: socket.socket,
    workload: Workload,
    trust: TrustConfig,
    on_output: Callable[[int, bytes], None],
    on_verified: Callable[[Appraisal], None] = lambda a: None,
    keep_exit_status: Callable[[], int | None] = lambda: None,
    steps: Steps | None = None,
    hello: SentHello | None = None,
) -> DeployResult:
    """Run one deploy session over ``sock``. ``hello`` is the hello already
    sent by :func:`send_hello` (callers send it as soon as the Keep starts,
    so that the Keep attests while the client is still getting ready)."""
    steps = steps or Steps()
    hello = hello or send_hello(sock)
    session, nonce = hello.session, hello.nonce
    sock.settimeout(HANDSHAKE_TIMEOUT_S)

    def died(during: str) -> KeepDied:
        status = keep_exit_status()
        how = f" (Keep process exit status {status})" if status is not None else ""
        return KeepDied(f"the Keep closed the connection {during}{how}")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # Trust comes from the attestation evidence, not from a CA: the Keep's
    # certificate is self-signed and checked by appraise() below.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        tls = ctx.wrap_socket(sock, server_hostname=None)
    except (ssl.SSLError, OSError) as exc:
        raise died(f"during the TLS handshake ({type(exc).__name__})") from None
    try:
        return _session(tls, session, nonce, workload, trust, on_output, on_verified, died, steps)
    finally:
        # wrap_socket took over ``sock``: closing the TLS socket is what ends
        # the stream, so a refused Keep sees EOF at once and exits.
        with contextlib.suppress(OSError):
            tls.close()


def _session(
    tls: ssl.SSLSocket,
    session: ClientSession,
    nonce: bytes,
    workload: Workload,
    trust: TrustConfig,
    on_output: Callable[[int, bytes], None],
    on_verified: Callable[[Appraisal], None],
    died: Callable[[str], KeepDied],
    steps: Steps,
) -> DeployResult:
    steps.mark("attest_and_handshake")
    cert = tls.getpeercert(binary_form=True)
    if not cert:
        raise ProtocolError("the Keep presented no certificate")
    appraisal = appraise(cert, nonce, trust)
    session.evidence_verified()
    steps.mark("verify")
    on_verified(appraisal)

    try:
        tls.sendall(session.workload(workload))
    except OSError as exc:
        raise died(f"while receiving the workload ({type(exc).__name__})") from None
    steps.mark("transfer")
    tls.settimeout(workload.limits.timeout_ms / 1000 + CLIENT_GRACE_S)
    while True:
        try:
            data = tls.recv(1 << 20)
        except TimeoutError:
            raise KeepDied("the Keep stopped responding past the workload's time limit") from None
        except (ssl.SSLError, OSError) as exc:
            raise died(f"while the workload ran ({type(exc).__name__})") from None
        if not data:
            raise died("before reporting the workload's exit status")
        for msg in session.receive(data):
            if isinstance(msg, Output):
                on_output(msg.fd, msg.data)
            elif isinstance(msg, Problem):
                steps.mark("run")
                raise msg.to_error()
            elif isinstance(msg, Exit):
                steps.mark("run")
                for name, us in msg.timing_us:
                    steps.ms[f"keep_{name}"] = us / 1000
                return DeployResult(msg.code, appraisal, msg.workload_sha256, steps.ms)
