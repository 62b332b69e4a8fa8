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
    Release (in TLS)       --->    secrets, stdin
                           <---    Output* then Exit | Problem
"""

from __future__ import annotations

import enum
from typing import TypeVar

from stockade.errors import ProtocolError, StockadeError
from stockade.wire.framing import FrameDecoder, encode_frame
from stockade.wire.messages import Exit, Hello, Identity, Load, Message, Output, Problem, Release, decode

M = TypeVar("M", bound=Message)


class ClientState(enum.Enum):
    START = "start"
    AWAIT_EVIDENCE = "await-evidence"
    VERIFIED = "verified"
    AWAIT_IDENTITY = "await-identity"
    IDENTIFIED = "identified"
    RUNNING = "running"
    DONE = "done"


class KeepState(enum.Enum):
    AWAIT_HELLO = "await-hello"
    ATTESTING = "attesting"
    AWAIT_LOAD = "await-load"
    LOADING = "loading"
    AWAIT_RELEASE = "await-release"
    RUNNING = "running"
    DONE = "done"


class ClientSession:
    def __init__(self) -> None:
        self.state = ClientState.START
        self._decoder = FrameDecoder()
        self._identity_pending = True

    def hello(self, nonce: bytes) -> bytes:
        self._expect(ClientState.START, "send hello")
        frame = encode_frame(Hello(nonce=nonce).to_cbor())  # may raise: state stays
        self.state = ClientState.AWAIT_EVIDENCE
        return frame

    def evidence_verified(self) -> None:
        """Record the verifier's verdict; only this unlocks the load request."""
        self._expect(ClientState.AWAIT_EVIDENCE, "accept evidence")
        self.state = ClientState.VERIFIED

    def load(self, load: Load) -> bytes:
        self._expect(ClientState.VERIFIED, "send the load request")
        frame = encode_frame(load.to_cbor())  # may raise (too large): state stays
        self.state = ClientState.AWAIT_IDENTITY
        return frame

    def identity_verified(self) -> None:
        """Record that the workload identity checked out; only this unlocks
        releasing secrets."""
        self._expect(ClientState.AWAIT_IDENTITY, "accept the workload identity")
        if self._identity_pending:
            raise ProtocolError("identity not received yet")
        self.state = ClientState.IDENTIFIED

    def release(self, release: Release) -> bytes:
        self._expect(ClientState.IDENTIFIED, "release secrets")
        frame = encode_frame(release.to_cbor())
        self.state = ClientState.RUNNING
        return frame

    def receive(self, data: bytes) -> list[Message]:
        if self.state not in (ClientState.AWAIT_IDENTITY, ClientState.RUNNING) and data:
            raise ProtocolError(f"Keep sent data in state {self.state.value}")
        if self.state is ClientState.AWAIT_IDENTITY and not self._identity_pending and data:
            raise ProtocolError("Keep sent data after its identity, before the release")
        out: list[Message] = []
        for frame in self._decoder.feed(data):
            if self.state is ClientState.DONE:
                raise ProtocolError("Keep sent data after the final message")
            if self.state is ClientState.AWAIT_IDENTITY and not self._identity_pending:
                raise ProtocolError("Keep sent data after its identity, before the release")
            msg = decode(frame)
            if self.state is ClientState.AWAIT_IDENTITY:
                if not isinstance(msg, Identity | Problem):
                    raise ProtocolError(f"Keep sent {msg.TYPE!r} where its identity was expected")
                if isinstance(msg, Identity):
                    self._identity_pending = False
            elif not isinstance(msg, Output | Exit | Problem):
                raise ProtocolError(f"Keep sent an unexpected {msg.TYPE!r} message")
            if isinstance(msg, Exit | Problem):
                self.state = ClientState.DONE
            out.append(msg)
        if self.state is ClientState.DONE and self._decoder.pending:
            raise ProtocolError("Keep sent data after the final message")
        if self.state is ClientState.AWAIT_IDENTITY and not self._identity_pending and self._decoder.pending:
            raise ProtocolError("Keep sent data after its identity, before the release")
        return out

    def _expect(self, state: ClientState, action: str) -> None:
        if self.state is not state:
            raise ProtocolError(f"cannot {action} in state {self.state.value}")


class KeepSession:
    def __init__(self) -> None:
        self.state = KeepState.AWAIT_HELLO
        self._decoder = FrameDecoder()

    def receive_hello(self, data: bytes) -> Hello | None:
        """Feed clear-text bytes; returns the Hello once complete."""
        if self.state is not KeepState.AWAIT_HELLO:
            raise ProtocolError(f"unexpected clear-text data in state {self.state.value}")
        frames = self._decoder.feed(data)
        if not frames:
            return None
        if len(frames) > 1 or self._decoder.pending:
            raise ProtocolError("client sent data after hello before the TLS handshake")
        msg = decode(frames[0])
        if not isinstance(msg, Hello):
            raise ProtocolError(f"expected hello, got {msg.TYPE!r}")
        self.state = KeepState.ATTESTING
        return msg

    def channel_ready(self) -> None:
        if self.state is not KeepState.ATTESTING:
            raise ProtocolError(f"TLS channel ready in state {self.state.value}")
        self.state = KeepState.AWAIT_LOAD

    def _one(self, data: bytes, state: KeepState, kind: type[M]) -> M | None:
        if self.state is not state:
            raise ProtocolError(f"unexpected data in state {self.state.value}")
        frames = self._decoder.feed(data)
        if not frames:
            return None
        if len(frames) > 1 or self._decoder.pending:
            raise ProtocolError(f"client sent data after the {kind.TYPE}")
        msg = decode(frames[0])
        if not isinstance(msg, kind):
            raise ProtocolError(f"expected {kind.TYPE}, got {msg.TYPE!r}")
        return msg

    def receive_load(self, data: bytes) -> Load | None:
        msg = self._one(data, KeepState.AWAIT_LOAD, Load)
        if msg is None:
            return None
        self.state = KeepState.LOADING
        return msg

    def identity(self, message: Identity) -> bytes:
        if self.state is not KeepState.LOADING:
            raise ProtocolError(f"cannot send the identity in state {self.state.value}")
        frame = encode_frame(message.to_cbor())
        self.state = KeepState.AWAIT_RELEASE
        return frame

    def receive_release(self, data: bytes) -> Release | None:
        msg = self._one(data, KeepState.AWAIT_RELEASE, Release)
        if msg is None:
            return None
        self.state = KeepState.RUNNING
        return msg

    def output(self, fd: int, data: bytes) -> bytes:
        if self.state is not KeepState.RUNNING:
            raise ProtocolError(f"cannot send output in state {self.state.value}")
        return encode_frame(Output(fd=fd, data=data).to_cbor())

    def exit(self, message: Exit) -> bytes:
        if self.state is not KeepState.RUNNING:
            raise ProtocolError(f"cannot send exit in state {self.state.value}")
        frame = encode_frame(message.to_cbor())
        self.state = KeepState.DONE
        return frame

    def problem(self, err: StockadeError) -> bytes:
        """A final error message; allowed in any state but DONE."""
        if self.state is KeepState.DONE:
            raise ProtocolError("cannot send a problem after the final message")
        frame = encode_frame(Problem.from_error(err).to_cbor())
        self.state = KeepState.DONE
        return frame
