"""One deploy session of a Keep: hello, attestation, TLS, load, identity,
release, results.

I/O lives here; the protocol rules live in wire.protocol.KeepSession.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import socket
import struct
import sys
import threading
import time
import traceback  # at import time: the error path below must not import (ADR 0013 guard)
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

from stockade import oneshot, procfs
from stockade.binding.reportdata import identity_report_data, report_data_for
from stockade.errors import LimitExceeded, ProtocolError, StewardUnavailable, StockadeError, WorkloadRejected
from stockade.keep import identity
from stockade.keep.sandbox import Sandbox
from stockade.wire.evidence import EvidenceBundle
from stockade.wire.framing import HEADER
from stockade.wire.messages import Exit, Identity, Message, ServiceCertificate, StewardRequest, Workload
from stockade.wire.protocol import KeepSession

if TYPE_CHECKING:
    from stockade.binding.eventlog import EventLog
    from stockade.keep.service import ServiceIdentity

M = TypeVar("M", bound=Message)

#: Bytes of the placeholder report in the certificate path's warm-up (an
#: SNP report's size; nothing checks it).
REPORT_BYTES = 0x4A0
#: How long a Keep waits for its client at each step before giving up.
IDLE_TIMEOUT = 60.0
#: Extra time the process watchdog grants beyond the workload's own limit.
WATCHDOG_GRACE = 1.0
EXIT_WATCHDOG = 3
#: Exit status of a Keep that stopped its workload at a limit (the limit's
#: problem was sent, as after any other problem: 0).
EXIT_LIMIT = 0
#: Exit status of a Keep whose client stopped reading the output.
EXIT_CLIENT_GONE = 1


class Attester(Protocol):
    platform: str

    def evidence(self, report_data: bytes) -> EvidenceBundle: ...


def _readable(sock: socket.socket) -> bool:
    """Whether bytes (or the end) wait on ``sock`` now."""
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return bool(poll.poll(0))


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProtocolError("client closed the connection during hello")
        buf += chunk
    return bytes(buf)


def _log(message: str) -> None:
    # The Keep's stderr reaches the host's logs: never workload data or secrets.
    # Never raises: a log file may refuse writes (the fallback disk's
    # RLIMIT_FSIZE, a full disk) on a path that must go on to end the Keep.
    with contextlib.suppress(OSError, ValueError):
        print(f"keep[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


#: Workload output bytes one Output frame carries at most when the output
#: pump joins consecutive writes (wasmtime-py hands stdout_custom 4 KiB at
#: a time, which made one frame, one TLS record and one send per 4 KiB).
OUTPUT_FRAME_DATA = 1 << 16
#: Output bytes written by the workload and not yet sent, at most; a write
#: beyond it waits (backpressure from the client to the workload, as when
#: the workload's thread sent its output itself).
OUTPUT_QUEUE_BYTES = 1 << 20


class OutputPump:
    """Sends the workload's output from a thread of its own, in order, one
    frame for each run of writes to the same stream that accumulated while
    the previous frame was being sent (nothing waits for more output: a
    lone write leaves at once). ``put`` is the Runner's ``emit``."""

    def __init__(self, send: Callable[[int, bytes], None]) -> None:
        self._send = send
        self._cond = threading.Condition()
        self._queue: deque[tuple[int, bytes]] = deque()
        self._queued = 0
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True, name="output")
        self._thread.start()

    def put(self, fd: int, data: bytes) -> None:
        """Queue ``data`` for stream ``fd``; waits while the queue is full.
        Raises OSError once a send has failed (the Runner then stops the
        workload: "client-gone")."""
        with self._cond:
            while self._queued >= OUTPUT_QUEUE_BYTES and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise OSError(f"sending the output failed ({type(self._error).__name__})")
            self._queue.append((fd, data))
            self._queued += len(data)
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and drained
                fd, first = self._queue.popleft()
                parts, size = [first], len(first)
                while (
                    self._queue
                    and self._queue[0][0] == fd
                    and size + len(self._queue[0][1]) <= OUTPUT_FRAME_DATA
                ):
                    data = self._queue.popleft()[1]
                    parts.append(data)
                    size += len(data)
                self._queued -= size
                self._cond.notify_all()
            try:
                self._send(fd, parts[0] if len(parts) == 1 else b"".join(parts))
            except BaseException as exc:
                with self._cond:
                    self._error = exc
                    self._queue.clear()
                    self._queued = 0
                    self._cond.notify_all()
                return

    def close(self) -> BaseException | None:
        """Send everything queued, stop the thread; the send's error, if any."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        return self._error


#: Bytes of streamed stdin received and not yet written to the workload's
#: stdin pipe, at most (beyond one recv): the Keep stops reading the channel
#: meanwhile (backpressure from the workload to the client).
STDIN_BACKLOG = 2 << 20
#: Bytes of TLS records read in one go before they are decoded.
CHANNEL_READ = 1 << 18
#: The most plaintext one TLS record holds (RFC 8446 section 5.1).
TLS_RECORD = 1 << 14
#: Socket buffer the channel asks for in each direction (the kernel caps it
#: at net.core.wmem_max / rmem_max: socket(7)).
SOCKET_BUFFER = 4 << 20
#: Output frames handed to the channel and not yet sent, at most (bytes).
CHANNEL_QUEUE = 2 << 20
#: Seconds a final problem may take to leave before the Keep exits anyway.
FINAL_SEND_S = 1.0
EXIT_CHANNEL = 4
#: Seconds the Keep reads and drops the rest of a stdin its workload did
#: not read, before closing (KeepServer._linger).
LINGER_S = 5.0


class Channel:
    """The attested TLS connection while the workload runs, owned by one
    thread: it sends the output frames handed to :meth:`send` and, when
    stdin streams, receives the Stdin messages and writes their data to the
    workload's stdin pipe (``stdin_fd``, its write end). One thread, with a
    non-blocking socket and poll(2), does both directions: OpenSSL does not
    allow one connection to be read and written from two threads at once,
    and neither direction may wait for the other (a client sending a large
    stdin reads the output meanwhile; a workload that does not read its
    stdin still has its output sent).

    Backpressure: no more than STDIN_BACKLOG bytes of stdin wait for the
    pipe (then the channel stops reading), no more than CHANNEL_QUEUE bytes
    of output for the socket (then :meth:`send` waits).

    A stdin stream that ends without its end marker (the connection closed)
    or breaks the protocol never reaches the workload as an end of file: the
    channel sends a problem and calls ``fatal`` (the Keep exits)."""

    def __init__(
        self,
        conn: Any,
        sock: socket.socket,
        session: KeepSession,
        stdin_fd: int | None,
        fatal: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._sock = sock
        self._session = session
        self._stdin_fd = stdin_fd
        self._fatal = fatal
        self._cond = threading.Condition()
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._closing = False
        self._final: bytes | None = None
        self._keep_queued = False  # an abort sends the queued output first
        #: Held while the session's state machine is fed stdin, and while an
        #: abort makes the final problem (which ends that state machine).
        self._session_lock = threading.Lock()
        self._error: BaseException | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        if stdin_fd is not None:
            os.set_blocking(stdin_fd, False)
        self._out: memoryview | None = None  # the frame being sent, what is left of it
        self._backlog: deque[memoryview] = deque()
        self._backlogged = 0
        self._stdin_ended = stdin_fd is None
        sock.setblocking(False)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            # Room for a few frames in the socket: fewer wake-ups of both
            # ends while both directions stream (about 8 % faster for 512 MiB
            # each way, local, on a 2-core machine).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        self._thread = threading.Thread(target=self._run, daemon=True, name="channel")
        self._thread.start()

    # -- called from other threads --------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"w")

    def send(self, frame: bytes) -> None:
        """Queue a frame; waits while CHANNEL_QUEUE bytes are queued. Raises
        OSError once sending has failed."""
        with self._cond:
            while self._queued >= CHANNEL_QUEUE and self._error is None and not self._closing:
                self._cond.wait()
            if self._error is not None or self._closing:
                raise OSError(f"the channel failed ({type(self._error).__name__})")
            self._queue.append(frame)
            self._queued += len(frame)
        self._wake()

    def close(self) -> BaseException | None:
        """Send what is queued, stop reading stdin, give the socket back in
        blocking mode; the channel's error, if any."""
        with self._cond:
            self._closing = True
        self._wake()
        self._thread.join()
        self._sock.setblocking(True)
        return self._error

    def abort(self, make_final: Callable[[], bytes], keep_queued: bool = False) -> None:
        """End the channel with the frame ``make_final`` makes (a final
        problem; it ends the session's state machine, so it is made while
        the channel's thread does not feed that stdin, and stdin arriving
        after it is dropped). ``keep_queued``
        False (the watchdog, which exits after): the output still queued is
        dropped, and this waits at most FINAL_SEND_S seconds. True (a limit
        stop: the output up to the limit goes before the problem): the
        queued output is sent first, and this waits until it and the
        problem are out (the process watchdog, still armed, bounds it: its
        own abort then drops what is left)."""
        with self._session_lock:
            frame = make_final()
            with self._cond:
                self._final = frame
                self._keep_queued = keep_queued
                self._closing = True
                self._cond.notify_all()
        self._wake()
        self._thread.join(None if keep_queued else FINAL_SEND_S)

    # -- the channel's thread -------------------------------------------------------------------

    @property
    def stdin_ended(self) -> bool:
        """Whether the client's stdin stream ended (or there was none)."""
        return self._stdin_ended

    def _run(self) -> None:
        try:
            self._loop()
        except StockadeError as err:  # the client broke the stdin stream
            _log(f"stdin stream refused: {err.problem_type}")
            with contextlib.suppress(StockadeError):  # a watchdog may have ended the session
                self._final = self._session.problem(err)
                self._flush_final()
            self._fatal()
        except BaseException as exc:
            with self._cond:
                self._error = exc
                self._cond.notify_all()
            if not self._stdin_ended and not self._closing:
                # The connection failed with stdin open: the workload must
                # not read end of file where its input was cut.
                _log(f"connection lost while stdin streamed: {type(exc).__name__}")
                self._fatal()
        finally:
            if self._stdin_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._stdin_fd)
                self._stdin_fd = None
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _loop(self) -> None:
        from OpenSSL import SSL

        sock_fd = self._sock.fileno()
        want_write = False
        while True:
            with self._cond:
                if self._final is not None and not self._keep_queued:  # aborting: drop what is queued
                    self._queue.clear()
                    self._queued = 0
                if self._out is None and self._queue:
                    frame = self._queue.popleft()
                    self._queued -= len(frame)
                    self._cond.notify_all()
                    self._out = memoryview(frame)
                closing = self._closing
            if closing and self._out is None:
                if self._final is not None:
                    self._flush_final()
                return
            reading = not closing and not self._stdin_ended and self._backlogged < STDIN_BACKLOG
            progress = False
            if self._out is not None:
                try:
                    sent = self._conn.send(self._out)
                    self._out = self._out[sent:] if sent < len(self._out) else None
                    progress = True
                    want_write = False
                except (SSL.WantWriteError, SSL.WantReadError):
                    want_write = True
            if reading:
                # One TLS record per recv: take what is there (up to
                # CHANNEL_READ) and decode it at once.
                chunks: list[bytes] = []
                size, eof = 0, False
                try:
                    while size < CHANNEL_READ:
                        data = self._conn.recv(TLS_RECORD)
                        if not data:
                            eof = True
                            break
                        chunks.append(data)
                        size += len(data)
                except (SSL.WantReadError, SSL.WantWriteError):
                    pass
                except (SSL.ZeroReturnError, SSL.SysCallError):
                    eof = True
                if chunks:
                    with self._session_lock:
                        if self._final is None:  # else the session ended: what came after is dropped
                            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                            self._stdin(self._session.receive_stdin(data))
                    progress = True
                if eof and not self._stdin_ended:
                    raise ProtocolError("the client closed the channel before the end of its stdin")
            progress |= self._feed()
            if progress:
                continue
            poll = select.poll()
            poll.register(self._wake_r, select.POLLIN)
            events = (select.POLLIN if reading else 0) | (
                select.POLLOUT if self._out is not None or want_write else 0
            )
            if events:
                poll.register(sock_fd, events)
            if self._backlog and self._stdin_fd is not None:
                poll.register(self._stdin_fd, select.POLLOUT)
            for fd, _ in poll.poll():
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)

    def _stdin(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            if not chunk:
                self._stdin_ended = True
            elif self._stdin_fd is not None:  # else the workload closed its stdin: dropped
                self._backlog.append(memoryview(chunk))
                self._backlogged += len(chunk)

    def _feed(self) -> bool:
        """Write what the pipe takes of the stdin backlog; True if anything
        changed. At the end of stdin, close the pipe: the workload reads end
        of file."""
        progress = False
        while self._backlog and self._stdin_fd is not None:
            head = self._backlog[0]
            try:
                n = os.write(self._stdin_fd, head)
            except BlockingIOError:
                break
            except BrokenPipeError:  # the workload's end is closed: it ended, or closed stdin
                os.close(self._stdin_fd)
                self._stdin_fd = None
                self._backlog.clear()
                self._backlogged = 0
                return True
            progress = True
            self._backlogged -= n
            if n < len(head):
                self._backlog[0] = head[n:]
            else:
                self._backlog.popleft()
        if self._stdin_ended and not self._backlog and self._stdin_fd is not None:
            os.close(self._stdin_fd)
            self._stdin_fd = None
            progress = True
        return progress

    def _flush_final(self) -> None:
        """Best effort, blocking for a few FINAL_SEND_S at most: the rest of
        a partly sent frame (so that the frames stay whole), then the final
        problem, and the TLS close."""
        frame = self._final
        if frame is None:
            return
        with contextlib.suppress(Exception):
            # Blocking with a kernel send timeout (pyOpenSSL uses the
            # descriptor itself: a Python socket timeout would make it
            # non-blocking).
            self._sock.setblocking(True)
            self._sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(FINAL_SEND_S), 0)
            )
            if self._out is not None:
                self._conn.sendall(self._out)
                self._out = None
            self._conn.sendall(frame)
            self._conn.shutdown()


class KeepServer:
    def __init__(
        self,
        sock: socket.socket,
        attester: Attester,
        engine: oneshot.OneShot[Any],
        scratch: Path | None,
        sandbox: Sandbox,
        hello_timeout: float | None = IDLE_TIMEOUT,
        compile_cache: Path | None = None,
        network: bool = True,
    ) -> None:
        self.sock = sock
        #: Whether this Keep can open connections of its own on the host's
        #: network stack (process Keeps); a VM Keep has only its virtio
        #: ports to the host (no path to a steward).
        self.network = network
        #: The service key and its steward certificate, when the release
        #: asked for one (stockade.keep.service); for the runner.
        self.service: ServiceIdentity | None = None
        #: Host storage for the sealed compile cache (None: no cache).
        self.compile_cache = compile_cache
        self.hello_timeout = hello_timeout
        self.attester = attester
        self.engine = engine
        self.scratch = scratch
        self.sandbox = sandbox
        self.session = KeepSession()
        self._send_lock = threading.Lock()
        self._conn: Any = None
        self._key = identity.new_key()  # fresh per Keep, in memory only
        #: The TLS context, made while the Keep waits for the hello.
        self._ctx: Any = None
        self.timing_us: dict[str, int] = {}
        self._t = time.perf_counter()
        #: Set when the process watchdog starts ending the Keep: it is the
        #: backstop, so another ending (a limit stop whose output send it
        #: just broke) waits for it instead of exiting with another status.
        self._watchdog_fired = threading.Event()
        #: The sealed compile cache (open_cache), once attested.
        self.cache: Any = None
        #: The module loaded from the cache before the release (runner.Ahead).
        self.ahead: Any = None
        #: The runner of this session's workload (its compiled code is
        #: stored in the compile cache after the session).
        self.runner: Any = None
        #: The channel while the workload runs (None before and after).
        self.channel: Channel | None = None
        #: The client may still be sending stdin that the Keep did not read.
        self._unread_stdin = False

    def _mark(self, name: str) -> None:
        now = time.perf_counter()
        self.timing_us[name] = int((now - self._t) * 1e6)
        self._t = now

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._conn.sendall(data)

    def attest(self) -> None:
        from OpenSSL import SSL

        # Blocking socket (pyOpenSSL needs one) with a kernel receive timeout,
        # so a client that never speaks cannot hold the Keep forever.
        self.sock.setblocking(True)
        wait = 0 if self.hello_timeout is None else int(self.hello_timeout)  # 0: no limit
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", wait, 0))
        if not _readable(self.sock):
            # The Keep idles until its client's hello: make what does not
            # depend on it now (issue 18, ADR 0032).
            self._prepare()
        header = _read_exact(self.sock, HEADER.size)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(IDLE_TIMEOUT), 0))
        (size,) = HEADER.unpack(header)
        if size > 1024:
            raise ProtocolError(f"hello frame of {size} bytes is too large")
        hello = self.session.receive_hello(header + _read_exact(self.sock, size))
        if hello is None:  # pragma: no cover - exact read gives a full frame
            raise ProtocolError("incomplete hello")
        self._mark("wait_hello")
        report_data = report_data_for(hello.nonce, identity.spki_der(self._key))
        if self._ctx is None:
            # The hello came before the Keep could prepare (a Keep forked
            # with its hello pending): the TLS context is made while the
            # PSP signs (it waits on a socket, this thread in OpenSSL).
            pending = oneshot.start(lambda: self.attester.evidence(report_data), "evidence")
            self._ctx = self._tls_context()
            bundle = pending.result()
        else:
            bundle = self.attester.evidence(report_data)
        self._mark("evidence")
        cert = identity.certificate(self._key, bundle)
        self._mark("certificate")
        ctx = self._ctx
        ctx.use_certificate(cert)
        conn = SSL.Connection(ctx, self.sock)
        conn.set_accept_state()
        conn.do_handshake()
        self._conn = conn
        self.session.channel_ready()
        self._mark("handshake")

    def _tls_context(self) -> Any:
        """This session's TLS 1.3 server context with its key (the
        certificate, which carries the evidence, comes after the hello)."""
        from OpenSSL import SSL

        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.use_privatekey(self._key)
        return ctx

    def _prepare(self) -> None:
        """While no hello waits (on the critical path of a warm Keep they
        cost ~4 ms, first calls of a fresh process or fork): the session's
        TLS context, and one run of the certificate path, with a throwaway
        key and placeholder evidence, so that the real certificate, made
        once the evidence is back, does not pay the one-time library
        set-up. Nothing of the throwaway run is kept or sent. Stops early
        once the hello arrives."""
        self._ctx = self._tls_context()
        if _readable(self.sock):
            return
        throwaway = identity.new_key()
        placeholder = EvidenceBundle(platform=self.attester.platform, report=bytes(REPORT_BYTES), certs=())
        with contextlib.suppress(Exception):  # only a warm-up: the real one runs after the hello
            identity.certificate(throwaway, placeholder)

    def _receive(self, feed: Callable[[bytes], M | None], what: str) -> M:
        from OpenSSL import SSL

        while True:
            try:
                data = self._conn.recv(1 << 20)
            except (SSL.ZeroReturnError, SSL.SysCallError):
                data = b""
            if not data:
                raise ProtocolError(f"client closed the channel before sending {what}")
            msg = feed(data)
            if msg is not None:
                return msg

    def receive_workload(self) -> Workload:
        """Load request, package checks and measurement, the second
        attestation, then the release: the whole workload."""
        from stockade.keep.loading import load

        # The sealing key and the compile cache, while the client verifies
        # the evidence (off the path of the release; issue 18).
        self.cache = self.open_cache()
        request = self._receive(self.session.receive_load, "a load request")
        self._mark("wait_load")
        loaded = load(request, self.scratch)
        self._mark("load")
        bundle = self.attester.evidence(
            identity_report_data(request.nonce, identity.spki_der(self._key), loaded.log.register)
        )
        self._send(self.session.identity(Identity(evidence=bundle.to_cbor(), events=loaded.log.events)))
        self._mark("identity")
        _log(
            "package loaded and measured; identity sent"
        )  # no digest: it would name the workload to the host
        # While the client checks the identity: the module from the sealed
        # compile cache (a hit only; a miss compiles after the release).
        self.ahead = self._load_ahead(loaded.workload.wasm)
        self._t = time.perf_counter()  # the Runner reports it (compile_ahead)
        release = self._receive(self.session.receive_release, "the release")
        self._mark("wait_release")
        released = {name for name, _ in release.secrets}
        missing = sorted(set(loaded.package.manifest.secrets) - released)
        if missing:
            raise WorkloadRejected(
                f"the package needs secret(s) {', '.join(missing)}, which were not released"
            )
        if release.steward is not None:
            self.service = self.certify(release.steward, loaded.log)
        return dataclasses.replace(loaded.workload, secrets=release.secrets, stdin=release.stdin)

    def _load_ahead(self, wasm: bytes) -> Any:
        """:func:`stockade.keep.runner.load_ahead` in this Keep's engine
        (None without a cache, or when the engine failed: the run reports it)."""
        if self.cache is None:
            return None
        from stockade.keep.runner import load_ahead

        try:
            engine = self.engine.result()
        except Exception:  # the run raises it again and reports it
            return None
        return load_ahead(engine, self.cache, wasm)

    def certify(self, request: StewardRequest, log: EventLog) -> ServiceIdentity:
        """After the release, before the workload runs (issue 17; docs/steward.md
        "Keeps get certificates"): a service key born here (ECDSA P-256),
        certified by the steward the client named, under the CA the client
        pinned (stockade.steward.request: evidence binding the steward's
        nonce, the key and this event-log register); the certificate and
        its log position go to the client. The key stays in this process:
        never in a message, a file or a log line. A refusal or an
        unreachable steward ends the session with a problem: the workload
        does not run."""
        if not self.network:
            raise WorkloadRejected(
                "this is a VM Keep: it has no network path to a steward, so it cannot get a service "
                "certificate (--steward works with process Keeps: sim, sim-snp, sim-tdx; docs/limitations.md)"
            )
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec

        from stockade.keep.service import ServiceIdentity
        from stockade.steward.request import StewardUnreachable, request_certificate

        try:
            ca = x509.load_der_x509_certificate(request.ca)
        except ValueError:
            raise ProtocolError("release: the steward CA is not a DER X.509 certificate") from None
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            issued = request_certificate(
                request.url,
                ca=ca,
                key=key,
                register=log.register,
                events=log.events,
                evidence=self.attester.evidence,
            )
        except StewardUnreachable as exc:
            raise StewardUnavailable(f"the Keep could not get its service certificate: {exc}") from None
        certificate = x509.load_der_x509_certificate(issued.certificate)  # parsed and checked above
        self._send(
            self.session.certificate(
                ServiceCertificate(
                    certificate=issued.certificate,
                    chain=issued.chain,
                    log_index=issued.log_index,
                    tree_head=issued.tree_head,
                    inclusion=issued.inclusion,
                )
            )
        )
        self._mark("steward")
        _log("service key certified by the steward; certificate sent")  # no serial, no digest
        return ServiceIdentity(key=key, certificate=certificate, ca=ca)

    def run(self, workload: Workload) -> None:
        from stockade.keep.runner import Runner, grow_pipe

        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 0))
        stdin_read = stdin_write = None
        if self.session.stdin_open:
            # Streamed stdin: the channel writes it into this pipe, the
            # workload reads the other end (the Runner takes it over).
            stdin_read, stdin_write = os.pipe()
            grow_pipe(stdin_write)
        channel = self.channel = Channel(
            self._conn, self.sock, self.session, stdin_write, self._channel_fatal
        )
        pump = OutputPump(lambda fd, data: channel.send(self.session.output(fd, data)))
        cache = self.cache
        runner = self.runner = Runner(
            self.engine.result(),
            pump.put,
            self.sandbox,
            cache,
            service=self.service,
            stop=lambda reason: self._stop(runner, pump, reason),
            net_emit=lambda event: channel.send(self.session.net(event)),
            network=self.network,
            ahead=self.ahead,
        )
        done = threading.Event()
        watchdog = threading.Thread(
            target=self._watchdog,
            args=(workload.limits.timeout_ms / 1000 + WATCHDOG_GRACE, done, runner),
            daemon=True,
        )
        watchdog.start()
        try:
            outcome = runner.run(workload, stdin_read)
        finally:
            # The output written so far goes before the exit or the problem,
            # still under the watchdog: a client that stops reading cannot
            # hold the Keep (as when the workload's thread sent it itself).
            failed = pump.close()
            failed = channel.close() or failed
            self.channel = None
            self._unread_stdin = not channel.stdin_ended
            done.set()
        if failed is not None:
            raise failed
        self._send(
            self.session.exit(
                Exit(
                    code=outcome.exit_code,
                    workload_sha256=outcome.workload_sha256,
                    timing_us=tuple(sorted({**self.timing_us, **outcome.timing_us}.items())),
                )
            )
        )

    def store_compiled(self) -> None:
        """After the session (the client has its results; the workload's
        time limit is over): seal and write the entry of a module this
        session compiled, and log what the cache did."""
        runner, self.runner = self.runner, None
        if runner is None or runner.cache is None:
            return
        took = runner.store_compiled()
        if took is not None:
            _log(f"compile cache: entry sealed and stored after the session in {took * 1000:.0f} ms")
        _log(f"compile cache: {runner.cache.stats.summary()}")

    def open_cache(self) -> Any:
        """The sealed compile cache (stockade.keep.compilecache) in the
        directory the host gave, under this Keep's sealing key; None when
        the host gave none or the platform derives no key (TDX, sim-tdx):
        never a cache without a key."""
        if self.compile_cache is None:
            return None
        derive = getattr(self.attester, "sealing_key", None)
        try:
            key = derive() if derive is not None else None
        except (StockadeError, OSError, ValueError) as exc:
            _log(f"compile cache off: no sealing key ({type(exc).__name__})")
            key = None
        self._mark("sealing_key")
        if key is None:
            _log("compile cache off: this Keep's platform derives no sealing key")
            return None
        from stockade.keep.compilecache import CompileCache

        return CompileCache(self.compile_cache, key, log=_log)

    def _stop(self, runner: Any, pump: OutputPump, reason: str) -> NoReturn:
        """The Runner's ``stop``: a limit is hit (or the output cannot be
        sent). The output already queued goes first, then the limit's
        problem; then the Keep process ends, and the workload with it
        (running Wasm code or blocked in a host call). Called once, from
        the thread that hit the limit; does not return. A client that stops
        reading cannot hold it: the watchdog is still armed."""
        if pump.close() is not None or runner.limit_error is None:
            self._end(None, EXIT_CLIENT_GONE, "the output could not be sent; the Keep ends")
        err = runner.limit_error
        # The timer at the time limit is the Keep's process watchdog for the
        # run (the one at the limit plus WATCHDOG_GRACE backs it up).
        why = (
            f"workload past its time limit ({'blocked in a host call' if 'blocked' in err.detail else 'running'}); "
            "watchdog ends the Keep"
            if err.limit == "time"
            else f"workload past its {err.limit} limit; the Keep ends"
        )
        self._end(err, EXIT_LIMIT, why, keep_queued=True)

    def _end(self, err: StockadeError | None, status: int, why: str, keep_queued: bool = False) -> NoReturn:
        """The one way the Keep ends while its workload may still run (a
        limit, the watchdog): the problem (if any) to the client, cleanup,
        then the process ends. Never returns. ``keep_queued``: the output
        already queued goes before the problem (a limit stop; the watchdog
        drops it: its client may not be reading)."""
        if status != EXIT_WATCHDOG and self._watchdog_fired.is_set():
            # The watchdog is ending the Keep and says why (its abort is
            # what made this stop's send fail); it exits the process.
            while True:
                time.sleep(3600)
        try:
            channel = self.channel
            if err is None:
                pass
            elif channel is not None:  # it owns the connection: it sends the problem
                channel.abort(lambda: self.session.problem(err), keep_queued)
                if keep_queued and not channel.stdin_ended:
                    # A limit stop while stdin still streams: unread stdin
                    # bytes at exit would reset the connection under the
                    # problem just sent (see _linger).
                    self._linger()
            elif self._send_lock.acquire(timeout=1.0):
                self._conn.sendall(self.session.problem(err))
                self._conn.shutdown()
        except Exception:  # noqa: S110 - best effort, we exit anyway
            pass
        finish(self.sandbox)  # lifts the fallback disk's freeze before logging
        _log(f"session ended: {why}")
        os._exit(status)

    def _watchdog(self, seconds: float, done: threading.Event, runner: Any) -> None:
        if done.wait(seconds):
            return
        # The time limit covers compiling the module too (a module that takes
        # longer to compile than its limit never starts); once it runs, the
        # Runner's timer stops it at the limit itself, so the watchdog ends a
        # Keep whose stop could not send the output in the grace time.
        where = "while its module was compiled" if runner.phase == "compiling" else "blocked in a host call"
        err = LimitExceeded(f"workload exceeded its wall-clock time limit ({where}) and was stopped", "time")
        self._watchdog_fired.set()
        # A limit hit first is what the client hears (its stop is stuck
        # sending the output).
        self._end(
            runner.limit_error or err,
            EXIT_WATCHDOG,
            f"workload past its time limit ({where}); watchdog ends the Keep",
        )

    def _channel_fatal(self) -> None:
        """The stdin stream broke (the channel reported it to the client if
        it could): end the Keep, the workload with it."""
        finish(self.sandbox)
        os._exit(EXIT_CHANNEL)

    def fail(self, err: StockadeError) -> None:
        """Report an error to the client if a channel exists."""
        if self._conn is None:
            return
        try:
            self._send(self.session.problem(err))
        except Exception:
            _log(f"could not report error to client: {err.problem_type}")

    def close(self) -> None:
        try:
            if self._conn is not None:
                self._conn.shutdown()
        except Exception:  # noqa: S110 - peer may be gone
            pass
        if self._unread_stdin:
            self._linger()
        self.sock.close()

    def _linger(self) -> None:
        """The workload ended before its stdin did: read and drop what the
        client still sends until it closes (it stops at the exit status),
        for at most LINGER_S. Closing a socket with unread bytes makes the
        kernel reset the connection (RFC 1122 4.2.2.13), which can discard
        the exit status before the client has read it."""
        deadline = time.monotonic() + LINGER_S
        with contextlib.suppress(OSError):
            self.sock.setblocking(True)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 200_000))
            while time.monotonic() < deadline:
                try:
                    if not self.sock.recv(1 << 16):
                        return
                except BlockingIOError:
                    continue


#: The generator point of P-256 (SEC 2 v2, section 2.4.2): a constant,
#: public point, so that :func:`fork_warm_up` has a public key without
#: making one.
P256_G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)


def fork_warm_up() -> None:
    """Run by the Keep fork server before it forks (stockade.keep.zygote):
    one-time library set-up that every forked Keep would repeat on its
    critical path (OpenSSL's fetches of P-256, ECDSA and SHA-256: about
    half of a forked Keep's first key and first certificate, ~2.5 ms),
    with constant, public inputs only: no key is made, no randomness is
    drawn (an ECDSA verification of a non-signature, refused), no thread
    is started, and nothing is kept (issue 18, ADR 0032)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    point = ec.EllipticCurvePublicNumbers(*P256_G, ec.SECP256R1()).public_key()
    point.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with contextlib.suppress(InvalidSignature):
        point.verify(bytes.fromhex("3006020101020101"), b"", ec.ECDSA(hashes.SHA256()))


def _preload() -> None:
    """Import the package loader and name the runtime while the Keep waits
    for its client (off the critical path of the load request)."""
    from stockade.keep.loading import runtime_name

    runtime_name()
    # The network runtime is imported only by workloads with sockets; here
    # every Keep loads it (off the critical path), so that it is in the
    # measured set the import guard allows (ADR 0013, ADR 0027).
    # The compile cache is opened after the first attestation
    # (KeepServer.open_cache).
    import stockade.keep.compilecache
    import stockade.keep.netsock  # noqa: F401


def peak_rss_kib() -> int:
    """The Keep process's peak resident set (VmHWM), KiB; 0 if unknown."""
    return procfs.status_number("VmHWM") or 0


def finish(sandbox: Sandbox) -> None:
    """On every exit path the Keep controls: remove what the workload left
    on disk (a fallback directory is on host storage) and log the peak RSS
    (the host can read it from /proc anyway; it names no workload data)."""
    with contextlib.suppress(Exception):  # best effort on the way out
        sandbox.cleanup()
    _log(f"peak RSS {peak_rss_kib()} KiB")


def serve(
    sock: socket.socket,
    attester: Attester,
    engine: oneshot.OneShot[Any],
    scratch: Path | None,
    sandbox: Sandbox,
    hello_timeout: float | None = IDLE_TIMEOUT,
    compile_cache: Path | None = None,
    network: bool = True,
) -> int:
    """Serve one client. ``hello_timeout``: how long to wait for the
    client's first bytes (None: no limit, for a pre-booted VM Keep in a
    warm pool, which waits for a client as long as its host keeps it;
    every later step has IDLE_TIMEOUT). ``compile_cache``: the directory
    of the sealed compile cache (None: compile every time). ``network``:
    the Keep may connect on the host's network stack (False for a VM
    Keep: a steward request is refused)."""
    threading.Thread(target=_preload, daemon=True, name="preload").start()
    server = KeepServer(sock, attester, engine, scratch, sandbox, hello_timeout, compile_cache, network)
    t0 = time.perf_counter()
    try:
        server.attest()
        server.run(server.receive_workload())
        return 0
    except StockadeError as err:
        _log(f"session ended: {err.problem_type} after {time.perf_counter() - t0:.3f}s")
        server.fail(err)
        return 0
    except (OSError, TimeoutError) as err:
        _log(f"connection lost: {type(err).__name__}")
        return 1
    except Exception as err:
        if type(err).__module__.startswith("OpenSSL"):
            _log(f"TLS failure: {type(err).__name__}")
            return 1
        traceback.print_exc()  # goes to the host log; tracebacks hold no local values
        server.fail(ProtocolError(f"internal error in the Keep runtime ({type(err).__name__})"))
        return 2
    finally:
        server.close()
        server.store_compiled()
        finish(sandbox)


def warm_engine(make: Callable[[], Any]) -> oneshot.OneShot[Any]:
    """Import wasmtime and build the engine in a thread while we attest."""
    return oneshot.start(make, "engine")
