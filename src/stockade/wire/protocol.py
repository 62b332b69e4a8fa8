"""Sans-I/O state machines for the two ends of a deploy session.

They hold no sockets: callers feed received bytes in and send the bytes these
objects return. Their job is to make illegal orders impossible, most
importantly that the client cannot emit a workload (or any secret) before
the Keep's evidence has been verified.

Session, as seen by both sides::

    client                         Keep
    Hello (clear)          --->
                           <---    TLS 1.3 handshake, evidence in certificate
    [client verifies evidence and policy]
    Load (in TLS)          --->    package (or "staged" on the host), expect,
                                   config, fresh nonce; no secret
                                   [Keep checks and measures the package]
                           <---    Identity: fresh evidence binding the
                                   event-log register, and the events
    [client verifies the identity: the workload it asked for]
    Release (in TLS)       --->    secrets, stdin (whole, or "stdin_stream"),
                                   [steward request]
    Stdin* (in TLS)        --->    with stdin_stream: the input in chunks,
                                   then an empty Stdin (end of input)
                                   [with a steward request: the Keep makes
                                    its service key and gets it certified
                                    by the steward (stockade.steward.request)]
                           <---    [ServiceCertificate: certificate, chain,
                                    log index, tree head, inclusion proof]
                           <---    Output* then Exit | Problem

While stdin streams, the two directions run at once: the client sends Stdin
messages while it receives Output, and the Keep may send its Exit (a
workload that ended without reading all its input) before the end of stdin;
the client then sends nothing more.

The legal orders are tables (as h11's ``_state.py``): for each side, what its
own code may do in each state and what the peer may send in each state. Two
kinds of refusal, two error classes (ADR 0015):

* the PEER sent bytes the table does not allow (a message out of order, data
  after the final message, a bad frame): :class:`~stockade.errors.ProtocolError`,
  exit 113, a fault of the other side or of the host between;
* OUR code asked for a step the table does not allow (release before the
  identity was accepted, output before the release, accepting an identity
  that is not the one received): :class:`~stockade.errors.ProtocolMisuse`, a
  bug in stockade, exit 1. The state does not change.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TypeVar

from stockade.binding.reportdata import report_data_for
from stockade.errors import ProtocolError, ProtocolMisuse, StockadeError
from stockade.wire.framing import FrameDecoder, encode_frame
from stockade.wire.messages import (
    MAX_STDIN_DATA,
    Exit,
    Hello,
    Identity,
    Load,
    Message,
    Net,
    Output,
    Problem,
    Release,
    ServiceCertificate,
    Stdin,
    decode,
    decode_view,
    encode_bulk,
    stdin_frame_head,
)

M = TypeVar("M", bound=Message)

#: The largest frame the Keep accepts while stdin streams: a Stdin message
#: with MAX_STDIN_DATA bytes and its few bytes of map, keys and heads.
STDIN_FRAME_MAX = MAX_STDIN_DATA + 64
S = TypeVar("S", bound=enum.Enum)


class ClientState(enum.Enum):
    START = "start"
    AWAIT_EVIDENCE = "await-evidence"
    VERIFIED = "verified"
    AWAIT_IDENTITY = "await-identity"
    IDENTIFIED = "identified"
    AWAIT_CERTIFICATE = "await-certificate"
    RUNNING = "running"
    DONE = "done"


class KeepState(enum.Enum):
    AWAIT_HELLO = "await-hello"
    ATTESTING = "attesting"
    AWAIT_LOAD = "await-load"
    LOADING = "loading"
    AWAIT_RELEASE = "await-release"
    CERTIFYING = "certifying"
    #: Running with the workload's stdin still streaming in.
    RUNNING_STDIN = "running-stdin"
    RUNNING = "running"
    DONE = "done"


# == the tables ======================================================================================

#: The client's own steps: (state, action) -> next state. Any other step is
#: a ProtocolMisuse. "accept the workload identity" further needs the
#: identity to have arrived (and be the one passed in).
CLIENT_ACTIONS: Mapping[tuple[ClientState, str], ClientState] = {
    (ClientState.START, "send hello"): ClientState.AWAIT_EVIDENCE,
    (ClientState.AWAIT_EVIDENCE, "accept evidence"): ClientState.VERIFIED,
    (ClientState.VERIFIED, "send the load request"): ClientState.AWAIT_IDENTITY,
    (ClientState.AWAIT_IDENTITY, "accept the workload identity"): ClientState.IDENTIFIED,
    (ClientState.IDENTIFIED, "release secrets"): ClientState.RUNNING,
    (ClientState.IDENTIFIED, "release secrets with a steward request"): ClientState.AWAIT_CERTIFICATE,
    # Only after a release with stdin_stream and before the end of stdin.
    (ClientState.RUNNING, "send stdin"): ClientState.RUNNING,
    # A client may stream stdin while it waits for the service certificate
    # (the Keep holds it until the workload runs).
    (ClientState.AWAIT_CERTIFICATE, "send stdin"): ClientState.AWAIT_CERTIFICATE,
}

#: What the Keep may send the client: (state, message type) -> next state.
#: Anything else is a ProtocolError. The identity keeps the client in
#: AWAIT_IDENTITY (holding the message) until its own code accepts it; from
#: then until the release, the Keep may send nothing. After a release with
#: a steward request, the service certificate (or a problem) comes first.
CLIENT_RECEIVES: Mapping[tuple[ClientState, type[Message]], ClientState] = {
    (ClientState.AWAIT_IDENTITY, Identity): ClientState.AWAIT_IDENTITY,
    (ClientState.AWAIT_IDENTITY, Problem): ClientState.DONE,
    (ClientState.AWAIT_CERTIFICATE, ServiceCertificate): ClientState.RUNNING,
    (ClientState.AWAIT_CERTIFICATE, Problem): ClientState.DONE,
    (ClientState.RUNNING, Output): ClientState.RUNNING,
    (ClientState.RUNNING, Net): ClientState.RUNNING,
    (ClientState.RUNNING, Exit): ClientState.DONE,
    (ClientState.RUNNING, Problem): ClientState.DONE,
}

#: The Keep's own steps: (state, action) -> next state; receiving a message
#: is a step too (its code asks for the next message). Any other step is a
#: ProtocolMisuse; a received message of another type, or bytes after it,
#: a ProtocolError. "send a problem" is allowed in every state but DONE.
KEEP_ACTIONS: Mapping[tuple[KeepState, str], KeepState] = {
    (KeepState.AWAIT_HELLO, "receive the hello"): KeepState.ATTESTING,
    (KeepState.ATTESTING, "open the TLS channel"): KeepState.AWAIT_LOAD,
    (KeepState.AWAIT_LOAD, "receive the load request"): KeepState.LOADING,
    (KeepState.LOADING, "send the identity"): KeepState.AWAIT_RELEASE,
    # RUNNING_STDIN instead when the release says stdin_stream.
    (KeepState.AWAIT_RELEASE, "receive the release"): KeepState.RUNNING,
    (KeepState.AWAIT_RELEASE, "receive a release with a steward request"): KeepState.CERTIFYING,
    (KeepState.CERTIFYING, "send the certificate"): KeepState.RUNNING,
    (KeepState.RUNNING_STDIN, "receive stdin"): KeepState.RUNNING_STDIN,  # RUNNING after its end
    (KeepState.RUNNING_STDIN, "send output"): KeepState.RUNNING_STDIN,
    (KeepState.RUNNING_STDIN, "send exit"): KeepState.DONE,
    (KeepState.RUNNING_STDIN, "send a net event"): KeepState.RUNNING_STDIN,
    (KeepState.RUNNING, "send output"): KeepState.RUNNING,
    (KeepState.RUNNING, "send a net event"): KeepState.RUNNING,
    (KeepState.RUNNING, "send exit"): KeepState.DONE,
    **{(s, "send a problem"): KeepState.DONE for s in KeepState if s is not KeepState.DONE},
}


def _next(table: Mapping[tuple[S, str], S], state: S, action: str) -> S:
    """The state after ``action``; ProtocolMisuse if the table has no such step."""
    try:
        return table[state, action]
    except KeyError:
        raise ProtocolMisuse(f"cannot {action} in state {state.value}") from None


# == the two ends ====================================================================================


class ClientSession:
    def __init__(self) -> None:
        self.state = ClientState.START
        self._decoder = FrameDecoder()
        self._nonce = b""
        self._identity: Identity | None = None  # the identity received, until accepted
        #: A release with stdin_stream was sent and stdin has not ended.
        self.stdin_open = False

    def _step(self, action: str) -> ClientState:
        return _next(CLIENT_ACTIONS, self.state, action)

    def hello(self, nonce: bytes) -> bytes:
        nxt = self._step("send hello")
        frame = encode_frame(Hello(nonce=nonce).to_cbor())  # may raise: state stays
        self._nonce = nonce
        self.state = nxt
        return frame

    def evidence_verified(self, report_data: bytes, spki_der: bytes) -> None:
        """Record the verifier's verdict; only this unlocks the load request.

        ``report_data`` is the report data of the evidence that verified and
        ``spki_der`` the TLS key it was presented with: they must bind the
        nonce of this session's hello (stockade.binding.reportdata), or the
        caller is accepting evidence that speaks of another session."""
        nxt = self._step("accept evidence")
        if report_data != report_data_for(self._nonce, spki_der):
            raise ProtocolMisuse("the evidence accepted does not bind this session's hello nonce and TLS key")
        self.state = nxt

    def load(self, load: Load) -> bytes:
        nxt = self._step("send the load request")
        frame = encode_frame(load.to_cbor())  # may raise (too large): state stays
        self.state = nxt
        return frame

    def identity_verified(self, identity: Identity) -> None:
        """Record that ``identity``, the workload identity the Keep sent,
        checked out; only this unlocks releasing secrets."""
        nxt = self._step("accept the workload identity")
        if self._identity is None:
            raise ProtocolMisuse("identity not received yet")
        if identity != self._identity:
            raise ProtocolMisuse("the identity accepted is not the one the Keep sent")
        self._identity = None
        self.state = nxt

    def release(self, release: Release) -> bytes:
        """The release; with a steward request the Keep must answer with
        its service certificate before any output."""
        nxt = self._step(
            "release secrets" if release.steward is None else "release secrets with a steward request"
        )
        frame = encode_frame(release.to_cbor())
        self.state = nxt
        self.stdin_open = release.stdin_stream
        return frame

    def stdin(self, data: bytes) -> bytes:
        """The frame of the next chunk of a streamed stdin (at most
        MAX_STDIN_DATA bytes); empty ``data`` ends stdin. Only after a
        release with stdin_stream, before the end, and while the Keep has
        not ended the session."""
        return self.stdin_head(len(data)) + data

    def stdin_head(self, length: int) -> bytes:
        """:meth:`stdin` without the data: the frame's bytes that come
        before the ``length`` bytes of data, which the caller sends right
        after them (no copy of the data)."""
        nxt = self._step("send stdin")
        if not self.stdin_open:
            raise ProtocolMisuse("cannot send stdin: the release did not open a stdin stream, or it ended")
        if length > MAX_STDIN_DATA:
            raise ProtocolMisuse(f"a stdin message carries at most {MAX_STDIN_DATA} bytes, not {length}")
        head = stdin_frame_head(length)
        self.state = nxt
        self.stdin_open = length > 0
        return head

    def _refusal(self, midstream: bool) -> str | None:
        """Why the Keep may send nothing now (None: it may). ``midstream``:
        after a frame of the same chunk."""
        if midstream and self.state is ClientState.DONE:
            return "Keep sent data after the final message"
        if self._identity is not None:
            return "Keep sent data after its identity, before the release"
        if not any(state is self.state for state, _ in CLIENT_RECEIVES):
            return f"Keep sent data in state {self.state.value}"
        return None

    def _take(self, frame: memoryview) -> Message:
        """One complete frame from the Keep, in order."""
        why = self._refusal(midstream=True)
        if why:
            raise ProtocolError(why)
        msg = decode_view(frame)
        nxt = CLIENT_RECEIVES.get((self.state, type(msg)))
        if nxt is None:
            if self.state is ClientState.AWAIT_IDENTITY:
                raise ProtocolError(f"Keep sent {msg.TYPE!r} where its identity was expected")
            if self.state is ClientState.AWAIT_CERTIFICATE:
                raise ProtocolError(f"Keep sent {msg.TYPE!r} where its service certificate was expected")
            raise ProtocolError(f"Keep sent an unexpected {msg.TYPE!r} message")
        if isinstance(msg, Identity):
            self._identity = msg
        self.state = nxt
        return msg

    def receive(self, data: bytes | memoryview) -> list[Message]:
        """Feed bytes from the Keep; returns the complete messages. Bytes the
        table does not allow raise ProtocolError (the Keep's fault)."""
        why = self._refusal(midstream=False)
        if data and why:
            raise ProtocolError(why)
        out = self._decoder.feed_decoded(data, self._take)
        why = self._refusal(midstream=True)
        if why and self._decoder.pending:
            raise ProtocolError(why)
        return out


class KeepSession:
    def __init__(self) -> None:
        self.state = KeepState.AWAIT_HELLO
        self._decoder = FrameDecoder()
        self._held: list[bytes] = []  # stdin frames that came with the release
        self._stdin_stream = False  # the release opened a stdin stream

    def _step(self, action: str) -> KeepState:
        return _next(KEEP_ACTIONS, self.state, action)

    def _one(
        self,
        data: bytes,
        action: str,
        kind: type[M],
        where: str,
        refine: Callable[[M], str] | None = None,
    ) -> M | None:
        """Feed bytes towards one message of type ``kind``; ProtocolError if
        the client sends another type or anything after it. ``refine``
        names the step the received message makes, when its content
        decides (``action`` by default)."""
        nxt = self._step(action)
        frames = self._decoder.feed(data)
        if not frames:
            return None
        if len(frames) > 1 or self._decoder.pending:
            raise ProtocolError(f"client sent data after {where}")
        msg = decode(frames[0])
        if not isinstance(msg, kind):
            raise ProtocolError(f"expected {kind.TYPE}, got {msg.TYPE!r}")
        self.state = nxt if refine is None else self._step(refine(msg))
        return msg

    def receive_hello(self, data: bytes) -> Hello | None:
        """Feed clear-text bytes; returns the Hello once complete."""
        return self._one(data, "receive the hello", Hello, "hello before the TLS handshake")

    def channel_ready(self) -> None:
        self.state = self._step("open the TLS channel")

    def receive_load(self, data: bytes) -> Load | None:
        return self._one(data, "receive the load request", Load, "the load")

    def identity(self, message: Identity) -> bytes:
        nxt = self._step("send the identity")
        frame = encode_frame(message.to_cbor())
        self.state = nxt
        return frame

    def receive_release(self, data: bytes) -> Release | None:
        """Feed bytes towards the release. With a steward request, the next
        step is :meth:`certificate` (no output before it). After a release
        with stdin_stream, the Stdin frames that came with it are kept for
        :meth:`receive_stdin`; after one without, any byte is refused."""
        self._step("receive the release")
        frames = self._decoder.feed(data)
        if not frames:
            return None
        msg = decode(frames[0])
        if not isinstance(msg, Release):
            raise ProtocolError(f"expected release, got {msg.TYPE!r}")
        if not msg.stdin_stream and (len(frames) > 1 or self._decoder.pending):
            raise ProtocolError("client sent data after the release")
        self.state = self._step(
            "receive the release" if msg.steward is None else "receive a release with a steward request"
        )
        if msg.stdin_stream:
            self._stdin_stream = True
            if self.state is KeepState.RUNNING:
                self.state = KeepState.RUNNING_STDIN
            # A stdin frame is small: a larger announced frame is refused as
            # soon as its header arrives, before it is buffered.
            self._decoder.max_frame = STDIN_FRAME_MAX
            self._held = frames[1:]
        return msg

    def certificate(self, message: ServiceCertificate) -> bytes:
        self._step("send the certificate")
        frame = encode_frame(message.to_cbor())
        self.state = KeepState.RUNNING_STDIN if self._stdin_stream else KeepState.RUNNING
        return frame

    def receive_stdin(self, data: bytes) -> list[bytes]:
        """Feed bytes of a streamed stdin; returns its chunks in order, an
        empty chunk being its end (then the state is RUNNING and any byte
        after it is refused). ProtocolError for any other message, a chunk
        larger than MAX_STDIN_DATA, or a frame larger than STDIN_FRAME_MAX."""
        self._step("receive stdin")
        held, self._held = self._held, []
        chunks = [self._take_stdin(memoryview(frame)) for frame in held]
        chunks += self._decoder.feed_decoded(data, self._take_stdin)
        if self.state is KeepState.RUNNING and self._decoder.pending:
            raise ProtocolError("client sent data after the end of stdin")
        return chunks

    def _take_stdin(self, frame: memoryview) -> bytes:
        """One complete frame of the stdin stream, in order: its data (empty:
        the end, after which the state is RUNNING and no frame may follow)."""
        if self.state is not KeepState.RUNNING_STDIN:
            raise ProtocolError("client sent data after the end of stdin")
        msg = decode_view(frame)
        if not isinstance(msg, Stdin):
            raise ProtocolError(f"expected stdin, got {msg.TYPE!r}")
        if not msg.data:
            self.state = KeepState.RUNNING
        return msg.data

    @property
    def stdin_open(self) -> bool:
        return self.state is KeepState.RUNNING_STDIN

    def output(self, fd: int, data: bytes) -> bytes:
        self._step("send output")
        return encode_bulk(Output(fd=fd, data=data))

    def net(self, message: Net) -> bytes:
        self._step("send a net event")
        return encode_frame(message.to_cbor())

    def exit(self, message: Exit) -> bytes:
        nxt = self._step("send exit")
        frame = encode_frame(message.to_cbor())
        self.state = nxt
        return frame

    def problem(self, err: StockadeError) -> bytes:
        """A final error message; allowed in any state but DONE."""
        nxt = self._step("send a problem")
        frame = encode_frame(Problem.from_error(err).to_cbor())
        self.state = nxt
        return frame
