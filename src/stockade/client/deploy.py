"""Deploy orchestration on the client (relying party) side.

Over a byte stream to a freshly started Keep: send a nonce, run the TLS 1.3
handshake, appraise the Keep's certificate; only then send the package (or
point the Keep at the one staged on the host) with a fresh nonce; appraise
the Keep's second attestation, which binds the measured workload identity;
only then release the secrets and stdin; stream the Keep's output to
callbacks until it reports an exit status or a problem.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stockade.client.attest import Appraisal, TrustConfig, appraise
from stockade.client.hello import SentHello, client_context, send_hello
from stockade.client.identity import WorkloadIdentity, appraise_identity
from stockade.client.progress import Phase, Progress
from stockade.errors import (
    ChannelTampered,
    KeepDied,
    ProtocolError,
    ProtocolMisuse,
    StockadeError,
    UsageError,
    WorkloadRejected,
)
from stockade.wire.framing import MAX_FRAME
from stockade.wire.messages import (
    MAX_STDIN_DATA,
    Config,
    Exit,
    Expect,
    Identity,
    Load,
    Message,
    Net,
    Output,
    Problem,
    Release,
    ServiceCertificate,
    StewardRequest,
    release_stdin_room,
)
from stockade.wire.protocol import ClientSession

if TYPE_CHECKING:
    from stockade.client.steward import StewardPlan
    from stockade.steward.request import VerifiedIssuance

#: Time beyond the workload's own limit that the client waits for the Keep.
CLIENT_GRACE_S = 10.0
HANDSHAKE_TIMEOUT_S = 60.0
#: Extra time the client waits, with a steward request, for the Keep to get
#: its certificate before the workload's own limit starts (the Keep's
#: requests to the steward time out after 10 s per connect or read:
#: stockade.steward.request.request_certificate).
STEWARD_GRACE_S = 60.0
#: Stdin of at most this many bytes travels whole in the Release (one
#: frame, a memfd in the Keep: the common case of a small input costs no
#: extra message); a larger one, or one read from a pipe or terminal, is
#: streamed in Stdin messages of MAX_STDIN_DATA bytes (docs/protocol.cddl).
INLINE_STDIN = 1 << 20
#: Bytes of TLS records read in one go while the workload runs.
CLIENT_READ = 1 << 18
#: The most plaintext one TLS record holds (RFC 8446 section 5.1).
TLS_RECORD = 1 << 14
#: Socket buffer asked for while stdin streams (capped by the kernel).
SOCKET_BUFFER = 4 << 20

#: OpenSSL reasons (``ssl.SSLError.reason``) that mean a TLS record of the
#: attested channel did not authenticate or did not belong in the stream:
#: someone between client and Keep changed, dropped, duplicated, reordered,
#: replayed or injected bytes. ``*_ALERT_*`` are the same findings reported
#: by the other end as a TLS alert (RFC 8446 section 6.2: bad_record_mac,
#: decode_error, unexpected_message, decrypt_error, record_overflow): the
#: Keep, or, before the handshake keys exist, a host forging a clear-text
#: alert. Reason names are OpenSSL's (include/openssl/sslerr.h). A stream
#: that merely ends (EOF, reset, a truncated last record:
#: ``ssl.SSLEOFError``) is not in this list: it cannot be told apart from a
#: Keep that died.
TAMPER_REASONS = frozenset(
    {
        "DECRYPTION_FAILED_OR_BAD_RECORD_MAC",
        "DECRYPTION_FAILED",
        "WRONG_VERSION_NUMBER",  # a record header that is not TLS: clear text injected
        "UNEXPECTED_RECORD",
        "BAD_RECORD_TYPE",
        "UNEXPECTED_MESSAGE",
        "UNEXPECTED_CCS_MESSAGE",
        "RECORD_LENGTH_MISMATCH",
        "PACKET_LENGTH_TOO_LONG",
        "ENCRYPTED_LENGTH_TOO_LONG",
        "DATA_LENGTH_TOO_LONG",
        "RECORD_TOO_SMALL",
        "BAD_LENGTH",
        "LENGTH_MISMATCH",
        "DIGEST_CHECK_FAILED",
        # A ServerHello whose legacy_session_id_echo is not this ClientHello's
        # (RFC 8446 section 4.1.3): a Keep handshake replayed from another session.
        "INVALID_SESSION_ID",
        "SSLV3_ALERT_BAD_RECORD_MAC",
        "SSLV3_ALERT_UNEXPECTED_MESSAGE",
        "TLSV1_ALERT_DECRYPTION_FAILED",
        "TLSV1_ALERT_DECODE_ERROR",
        "TLSV1_ALERT_DECRYPT_ERROR",
        "TLSV1_ALERT_RECORD_OVERFLOW",
    }
)

#: Plainer words for reasons whose OpenSSL names mislead.
_REASON_TEXT = {
    "WRONG_VERSION_NUMBER": "a record that is not TLS: wrong version number",
    "INVALID_SESSION_ID": "a server hello that answers another session: invalid session id",
}


def channel_failure(exc: OSError, during: str, died: Callable[[str], KeepDied]) -> StockadeError:
    """The error for a failed read or write on the attested channel (the one
    place where TLS failures are classified): :class:`ChannelTampered` when
    TLS says a record failed its integrity check, else :class:`KeepDied`."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError) and reason in TAMPER_REASONS:
        text = _REASON_TEXT.get(reason, reason.lower().replace("_", " "))
        for prefix in ("sslv3 alert ", "tlsv1 alert "):
            if text.startswith(prefix):
                text = f"the other end reported {text.removeprefix(prefix)}"
        return ChannelTampered(
            f"a TLS record failed its integrity check {during} ({text}): bytes between this client "
            "and the Keep were changed, dropped, replayed or injected; nothing more was sent"
        )
    return died(f"{during} ({type(exc).__name__})")


@dataclass(frozen=True)
class StdinFile:
    """The workload's stdin read from an open file descriptor (a file, a
    pipe, a terminal) as the workload runs: streamed, never held whole in
    memory. It is read only after the release (a deploy retried before the
    release point reads nothing of it)."""

    fd: int


@dataclass(frozen=True)
class DeployPlan:
    """What to deploy. ``package`` None means staged: the host provides the
    package bytes to the Keep (untrusted), and ``digest`` is the digest the
    Keep must prove it loaded. ``expect`` is sent to the Keep to enforce
    before it runs anything (pinned digests, trusted signers)."""

    package: bytes | None
    digest: bytes
    config: Config
    expect: Expect = field(default_factory=Expect)
    secrets: tuple[tuple[str, bytes], ...] = ()
    stdin: bytes | StdinFile = b""
    required_secrets: tuple[str, ...] = ()
    #: Sent in the release: the Keep gets a service certificate from this
    #: steward before the workload runs (issue 17).
    steward: StewardRequest | None = None

    def __repr__(self) -> str:
        return f"DeployPlan(digest={self.digest.hex()}, secrets={[n for n, _ in self.secrets]!r})"

    @classmethod
    def for_module(
        cls,
        wasm: bytes,
        config: Config | None = None,
        secrets: tuple[tuple[str, bytes], ...] = (),
        stdin: bytes = b"",
        name: str = "module",
    ) -> DeployPlan:
        """Deploy a bare module: wrapped in an unsigned in-memory package."""
        from stockade.package.format import wrap_module

        package = wrap_module(wasm, name)
        return cls(
            package=package.to_bytes(),
            digest=package.digest,
            config=config or Config(),
            secrets=secrets,
            stdin=stdin,
        )


@dataclass
class DeployResult:
    exit_code: int
    appraisal: Appraisal
    identity: WorkloadIdentity
    workload_sha256: bytes
    timing_ms: dict[str, float] = field(default_factory=dict)
    #: The Keep's ``net`` events (the workload's sockets), in order.
    net: list[Net] = field(default_factory=list)
    #: The Keep's service certificate and its log position, verified
    #: (None: the deploy asked for none).
    issuance: VerifiedIssuance | None = None


class Steps:
    """Wall-clock timing of named steps, for the bench and --json."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] = round((now - self._t) * 1000, 3)
        self._t = now


class ReleaseMark:
    """Whether a deploy session reached its release point: pass
    :meth:`mark` as ``on_release`` to :func:`deploy`. While ``released``
    is False, a failure happened *before release* (creating the Keep,
    attesting it, verifying its evidence, loading the package): nothing of
    the deployer's but the package was sent, only to a Keep that passed
    attestation, and the workload did not start: ``deploy --fleet`` may try
    another host. Once it is True (even if sending the release then fails:
    some of it may have arrived), a failure is final: the workload may have
    run and seen its secrets and input, so it is never run again
    elsewhere."""

    def __init__(self) -> None:
        self.released = False

    def mark(self) -> None:
        self.released = True


def deploy(
    sock: socket.socket,
    plan: DeployPlan,
    trust: TrustConfig,
    on_output: Callable[[int, bytes], None],
    on_verified: Callable[[Appraisal], None] = lambda a: None,
    keep_exit_status: Callable[[], int | None] = lambda: None,
    steps: Steps | None = None,
    hello: SentHello | None = None,
    on_identity: Callable[[WorkloadIdentity], None] = lambda i: None,
    progress: Progress | None = None,
    on_release: Callable[[], None] = lambda: None,
    on_net: Callable[[Net], None] = lambda n: None,
    steward: StewardPlan | None = None,
    on_certificate: Callable[[VerifiedIssuance], None] = lambda v: None,
) -> DeployResult:
    """Run one deploy session over ``sock``. ``hello`` is the hello already
    sent by :func:`send_hello` (callers send it as soon as the Keep starts,
    so that the Keep attests while the client is still getting ready).
    ``progress`` is told when verifying, loading, running and done begin
    (booting and attesting are the caller's: it started the Keep).

    ``on_release`` is called once, right before the release (secrets and
    stdin; the workload starts on it) is sent: the retry boundary of
    ``deploy --fleet``. A failure raised before that call left nothing
    behind but an attested, idle Keep, and may be retried on another host;
    a failure after it never is (the workload may have run, its secrets
    and input are out): see :class:`ReleaseMark`.

    ``steward``: with ``plan.steward`` (the release's steward request),
    the pinned CA and log key that the Keep's service certificate is
    checked against (stockade.client.steward); ``on_certificate`` gets it
    once verified, before any of the workload's output."""
    try:
        if (plan.steward is None) != (steward is None):
            raise ProtocolMisuse("a steward request needs the steward's CA and log key to check the answer")
        missing = sorted(set(plan.required_secrets) - {name for name, _ in plan.secrets})
        if missing:
            raise WorkloadRejected(
                f"the package needs secret(s) {', '.join(missing)}: pass --secret NAME=@FILE"
            )
    except StockadeError:
        if hello is not None and hello.tls is not None:
            hello.tls.close()  # it owns the stream: the Keep sees it end
        raise
    steps = steps or Steps()
    progress = progress or Progress()
    hello = hello or send_hello(sock)
    session, nonce = hello.session, hello.nonce
    if hello.tls is None:
        sock.settimeout(HANDSHAKE_TIMEOUT_S)

    def died(during: str) -> KeepDied:
        status = keep_exit_status()
        how = f" (Keep process exit status {status})" if status is not None else ""
        return KeepDied(f"the Keep closed the connection {during}{how}")

    if hello.tls is None:  # client_context: trust comes from the evidence, checked below
        try:
            tls = client_context().wrap_socket(sock, server_hostname=None)
        except OSError as exc:  # ssl.SSLError is an OSError
            raise channel_failure(exc, "during the TLS handshake", died) from None
    else:
        # The ClientHello went with the hello (send_hello(start_tls=True)).
        tls = hello.tls
        try:
            if hello.tls_error is not None:
                raise hello.tls_error
            tls.settimeout(HANDSHAKE_TIMEOUT_S)
            tls.do_handshake()
        except OSError as exc:
            tls.close()
            raise channel_failure(exc, "during the TLS handshake", died) from None
    try:
        return _session(
            tls,
            session,
            nonce,
            plan,
            trust,
            on_output,
            on_verified,
            on_identity,
            died,
            steps,
            progress,
            on_release,
            on_net,
            steward,
            on_certificate,
        )
    finally:
        # wrap_socket took over ``sock``: closing the TLS socket is what ends
        # the stream, so a refused Keep sees EOF at once and exits.
        with contextlib.suppress(OSError):
            tls.close()


def _session(
    tls: ssl.SSLSocket,
    session: ClientSession,
    nonce: bytes,
    plan: DeployPlan,
    trust: TrustConfig,
    on_output: Callable[[int, bytes], None],
    on_verified: Callable[[Appraisal], None],
    on_identity: Callable[[WorkloadIdentity], None],
    died: Callable[[str], KeepDied],
    steps: Steps,
    progress: Progress,
    on_release: Callable[[], None],
    on_net: Callable[[Net], None],
    steward: StewardPlan | None,
    on_certificate: Callable[[VerifiedIssuance], None],
) -> DeployResult:
    steps.mark("attest_and_handshake")
    progress.enter(Phase.VERIFYING)
    cert = tls.getpeercert(binary_form=True)
    if not cert:
        raise ProtocolError("the Keep presented no certificate")
    appraisal = appraise(cert, nonce, trust)
    session.evidence_verified(appraisal.claims.report_data, appraisal.tls_spki)
    steps.mark("verify")
    on_verified(appraisal)

    progress.enter(Phase.LOADING)
    load_nonce = secrets.token_bytes(32)
    load = Load(
        package=plan.package,
        staged=plan.package is None,
        expect=plan.expect,
        config=plan.config,
        nonce=load_nonce,
    )
    try:
        tls.sendall(session.load(load))
    except OSError as exc:
        raise channel_failure(exc, "while receiving the package", died) from None
    steps.mark("transfer")
    identity: WorkloadIdentity | None = None
    while identity is None:
        for msg in _receive(tls, session, died, "while loading the package"):
            if isinstance(msg, Problem):
                raise msg.to_error()
            if isinstance(msg, Identity):
                identity = appraise_identity(
                    msg, appraisal, load_nonce, plan.digest, plan.config.digest(), plan.expect, trust
                )
                session.identity_verified(msg)
    steps.mark("identity")
    on_identity(identity)

    # THE RELEASE POINT. Everything above only attested and loaded the Keep;
    # from the next line on, secrets and stdin may be out and the workload
    # may run: no failure from here on is retried elsewhere (ReleaseMark).
    on_release()
    inline = isinstance(plan.stdin, bytes) and len(plan.stdin) <= min(
        INLINE_STDIN, release_stdin_room(plan.secrets, MAX_FRAME, plan.steward)
    )
    release = Release(
        secrets=plan.secrets,
        stdin=plan.stdin if inline and isinstance(plan.stdin, bytes) else b"",
        stdin_stream=not inline,
        steward=plan.steward,
    )
    try:
        tls.sendall(session.release(release))
    except OSError as exc:
        raise channel_failure(exc, "while receiving the release", died) from None
    progress.enter(Phase.RUNNING)
    # With a steward request the Keep first gets its certificate (bounded
    # by the steward requests' own timeouts), then runs the workload.
    idle = (
        plan.config.limits.timeout_ms / 1000
        + CLIENT_GRACE_S
        + (STEWARD_GRACE_S if steward is not None else 0.0)
    )
    issuance: VerifiedIssuance | None = None
    net: list[Net] = []

    def handle(msg: Message) -> DeployResult | None:
        nonlocal issuance
        if isinstance(msg, ServiceCertificate):
            # The state machine lets it in only first, and only when asked for.
            assert steward is not None  # plan.steward is set iff steward is
            assert identity is not None
            from stockade.client.steward import check_certificate

            issuance = check_certificate(msg, steward, identity.package_digest)
            steps.mark("certificate")
            on_certificate(issuance)
        elif isinstance(msg, Output):
            on_output(msg.fd, msg.data)
        elif isinstance(msg, Net):
            net.append(msg)
            on_net(msg)
        elif isinstance(msg, Problem):
            steps.mark("run")
            raise msg.to_error()
        elif isinstance(msg, Exit):
            steps.mark("run")
            progress.enter(Phase.DONE)
            for name, us in msg.timing_us:
                # compile_cached is a flag (1: the module came from the
                # Keep's sealed compile cache), not a duration.
                steps.ms[f"keep_{name}"] = bool(us) if name == "compile_cached" else us / 1000
            return DeployResult(
                msg.code, appraisal, identity, msg.workload_sha256, steps.ms, net=net, issuance=issuance
            )
        return None

    if not inline:
        return _stream(tls, session, _StdinSource(plan.stdin), handle, idle, died)
    tls.settimeout(idle)
    while True:
        for msg in _receive(tls, session, died, "while the workload ran"):
            result = handle(msg)
            if result is not None:
                return result


class _StdinSource:
    """Chunks of a streamed stdin: from memory, or read from a descriptor
    when it has data (never blocking the channel's loop)."""

    def __init__(self, stdin: bytes | StdinFile) -> None:
        self._view = memoryview(stdin) if isinstance(stdin, bytes) else None
        self.fd = stdin.fd if isinstance(stdin, StdinFile) else None
        # Read into this, reused: a chunk is sent whole before the next read.
        self._buf = bytearray(MAX_STDIN_DATA) if self.fd is not None else bytearray()

    def ready(self) -> bool:
        if self.fd is None:
            return True
        poll = select.poll()
        poll.register(self.fd, select.POLLIN)
        return bool(poll.poll(0))  # a regular file is always ready (POLLIN); EOF and errors too

    def read(self) -> memoryview | None:
        """The next chunk (empty: the end), None when nothing can be read
        now. The chunk is valid until the next call."""
        if self._view is not None:
            chunk, self._view = self._view[:MAX_STDIN_DATA], self._view[MAX_STDIN_DATA:]
            return chunk
        assert self.fd is not None
        try:
            n = os.readv(self.fd, [self._buf])
        except BlockingIOError:
            return None
        except OSError as exc:
            raise UsageError(f"--stdin: cannot read the workload's input: {exc.strerror}") from None
        return memoryview(self._buf)[:n]


def _stream(
    tls: ssl.SSLSocket,
    session: ClientSession,
    source: _StdinSource,
    handle: Callable[[Message], DeployResult | None],
    idle: float,
    died: Callable[[str], KeepDied],
) -> DeployResult:
    """Send the streamed stdin while receiving the output, until the Keep
    reports the exit status or a problem (which may come before the end of
    stdin: then the rest is not sent). One thread, a non-blocking socket:
    the TLS connection is never used from two threads at once, and sending
    never waits for the Keep to take stdin while output waits to be read
    (a workload that does not read its stdin cannot deadlock the session).
    ``idle``: the longest time without a byte from the Keep."""
    during = "while the workload ran"
    tls.setblocking(False)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        # As the Keep's channel does (stockade.keep.session.SOCKET_BUFFER).
        with contextlib.suppress(OSError):
            tls.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
    buf = bytearray(CLIENT_READ)
    view = memoryview(buf)
    # What is left of the frame being sent: its head, then its data (sent
    # as they are: no copy of the data into one frame).
    out: deque[memoryview] = deque()
    last = time.monotonic()
    while True:
        progress = False
        # TLS gives one record (at most 16 KiB) per read: take what is there
        # up to CLIENT_READ, then decode it at once (per-read Python work
        # was a large share of the client's time).
        got, eof, failure = 0, False, None
        try:
            while got <= CLIENT_READ - TLS_RECORD:
                n = tls.recv_into(view[got:])
                if n == 0:
                    eof = True
                    break
                got += n
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except OSError as exc:
            failure = exc  # after what arrived before it
        if got:
            last = time.monotonic()
            progress = True
            for msg in session.receive(view[:got]):
                result = handle(msg)
                if result is not None:
                    return result
        if failure is not None:
            raise channel_failure(failure, during, died) from None
        if eof:
            raise died("before reporting the workload's exit status")
        if not out and session.stdin_open and source.ready():
            chunk = source.read()
            if chunk is not None:
                out.append(memoryview(session.stdin_head(len(chunk))))
                if chunk:
                    out.append(chunk)
                progress = True
        while out:
            try:
                sent = tls.send(out[0])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
            except OSError as exc:
                raise channel_failure(exc, "while receiving stdin", died) from None
            progress = True
            if sent < len(out[0]):
                out[0] = out[0][sent:]
            else:
                out.popleft()
        if progress or tls.pending():
            continue
        wait = last + idle - time.monotonic()
        if wait <= 0:
            raise KeepDied("the Keep stopped responding past the workload's time limit")
        poll = select.poll()
        poll.register(tls.fileno(), select.POLLIN | (select.POLLOUT if out else 0))
        if not out and session.stdin_open and source.fd is not None:
            poll.register(source.fd, select.POLLIN)
        poll.poll(wait * 1000)


def _receive(
    tls: ssl.SSLSocket, session: ClientSession, died: Callable[[str], KeepDied], during: str
) -> list[Message]:
    try:
        data = tls.recv(1 << 20)
    except TimeoutError:
        if during.endswith("ran"):
            raise KeepDied("the Keep stopped responding past the workload's time limit") from None
        raise KeepDied(f"the Keep stopped responding {during}") from None
    except OSError as exc:
        raise channel_failure(exc, during, died) from None
    if not data:
        raise died("before reporting the workload's exit status" if during.endswith("ran") else during)
    return session.receive(data)
