"""The streamed-stdin messages and states (issue 18): the ``stdin`` message
and the release's ``stdin_stream`` are parsed strictly; the bulk fast path
(encode_bulk, and decode without cbor2) gives exactly the strict profile's
bytes and refuses what the strict decoder refuses; the Keep's state machine
takes stdin only after a release with stdin_stream, refuses any other
message, anything after the end, and a frame too large for a chunk as soon
as its length arrives; the client's steps are checked the same way."""

from __future__ import annotations

import cbor2
import pytest

from stockade.errors import ProtocolError, ProtocolMisuse
from stockade.wire.framing import HEADER, encode_frame
from stockade.wire.messages import (
    MAX_STDIN_DATA,
    STDERR,
    STDOUT,
    Exit,
    Output,
    Stdin,
    decode,
    encode_bulk,
)
from stockade.wire.protocol import STDIN_FRAME_MAX, ClientState, KeepState
from test_wire import EXIT, RELEASE, STREAM_RELEASE, _client_in, frame, keep_at

SIZES = [0, 1, 23, 24, 255, 256, 65_535, 65_536, 70_000, MAX_STDIN_DATA]


def _map(**fields: object) -> bytes:
    return bytes(cbor2.dumps({"v": 1, **fields}, canonical=True))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["stdout", "stderr", "stdin"])
def test_bulk_frames_are_the_strict_encoding(size: int, kind: str) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    msg = (
        Stdin(data=data) if kind == "stdin" else Output(fd=STDOUT if kind == "stdout" else STDERR, data=data)
    )
    assert encode_bulk(msg) == encode_frame(msg.to_cbor())
    assert decode(msg.to_cbor()) == msg


def _long_head(data: bytes) -> bytes:
    """The stdin message with its data's length in 4 bytes (not shortest)."""
    prefix = Stdin(data=b"").to_cbor()[:-1]
    return prefix + bytes([0x5A]) + len(data).to_bytes(4, "big") + data


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (_long_head(b"abc"), "deterministic"),
        (Stdin(data=b"abc").to_cbor() + b"\x00", "deterministic"),  # a byte after the item
        (Stdin(data=b"abc").to_cbor()[:-1], "not valid CBOR"),  # cut short
        (_map(t="stdin", data="text"), "wrong type"),
        (_map(t="stdin"), "missing field 'data'"),
        (_map(t="stdin", data=b"x", more=1), "unknown field"),
        (_map(t="stdin", data=b"x" * (MAX_STDIN_DATA + 1)), "more than 1048576 bytes"),
        (_map(t="output", fd=3, data=b"x"), "fd must be 1 or 2"),
        (_map(t="release", secrets={}, stdin=b"", stdin_stream=False), "'stdin_stream' must be true"),
        (_map(t="release", secrets={}, stdin=b"", stdin_stream=1), "'stdin_stream' must be true"),
        (_map(t="release", secrets={}, stdin=b"x", stdin_stream=True), "stdin must be empty"),
    ],
    ids=[
        "long-head",
        "trailing",
        "cut",
        "text-data",
        "no-data",
        "extra-field",
        "too-large",
        "bad-fd",
        "stream-false",
        "stream-int",
        "stream-and-stdin",
    ],
)
def test_malformed_stdin_and_release_are_refused(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(payload)


def test_release_stream_round_trip() -> None:
    assert decode(STREAM_RELEASE.to_cbor()) == STREAM_RELEASE
    assert "stdin_stream" not in cbor2.loads(RELEASE.to_cbor())
    assert repr(STREAM_RELEASE) == "Release(secrets=['api-key'], stdin=<streamed>)"  # no secret value


# -- the Keep's states ----------------------------------------------------------------------------


def test_stdin_frames_that_come_with_the_release_are_kept() -> None:
    k = keep_at(KeepState.AWAIT_RELEASE)
    chunk = frame(STREAM_RELEASE) + encode_bulk(Stdin(data=b"one")) + encode_bulk(Stdin(data=b"two"))[:5]
    assert k.receive_release(chunk) == STREAM_RELEASE
    assert k.state is KeepState.RUNNING_STDIN and k.stdin_open
    rest = encode_bulk(Stdin(data=b"two"))[5:] + encode_bulk(Stdin(data=b""))
    assert k.receive_stdin(rest) == [b"one", b"two", b""]
    assert k.state is KeepState.RUNNING and not k.stdin_open
    k.output(1, b"out")
    k.exit(EXIT)
    assert k.state is KeepState.DONE


def test_a_release_without_stream_still_refuses_what_follows() -> None:
    k = keep_at(KeepState.AWAIT_RELEASE)
    with pytest.raises(ProtocolError, match="client sent data after the release"):
        k.receive_release(frame(RELEASE) + encode_bulk(Stdin(data=b"x")))


def test_stdin_is_taken_only_while_it_streams() -> None:
    for stage in (KeepState.RUNNING, KeepState.AWAIT_RELEASE, KeepState.DONE):
        k = keep_at(stage)
        with pytest.raises(ProtocolMisuse, match=f"cannot receive stdin in state {stage.value}"):
            k.receive_stdin(encode_bulk(Stdin(data=b"x")))


@pytest.mark.parametrize(
    "wrong",
    [
        encode_frame(Output(fd=1, data=b"x").to_cbor()),
        encode_frame(EXIT.to_cbor()),
        frame(STREAM_RELEASE),
        encode_frame(cbor2.dumps({"v": 1, "t": "stdin", "data": b"x", "n": 1}, canonical=True)),
    ],
    ids=["output", "exit", "release-again", "extra-field"],
)
def test_only_stdin_messages_while_stdin_streams(wrong: bytes) -> None:
    k = keep_at(KeepState.RUNNING_STDIN)
    with pytest.raises(ProtocolError):
        k.receive_stdin(encode_bulk(Stdin(data=b"ok")) + wrong)


def test_nothing_after_the_end_of_stdin() -> None:
    k = keep_at(KeepState.RUNNING_STDIN)
    with pytest.raises(ProtocolError, match="client sent data after the end of stdin"):
        k.receive_stdin(encode_bulk(Stdin(data=b"")) + encode_bulk(Stdin(data=b"late")))
    k = keep_at(KeepState.RUNNING_STDIN)
    with pytest.raises(ProtocolError, match="client sent data after the end of stdin"):
        k.receive_stdin(encode_bulk(Stdin(data=b"")) + b"\x00\x00")


def test_a_frame_too_large_for_a_chunk_is_refused_at_its_header() -> None:
    k = keep_at(KeepState.RUNNING_STDIN)
    assert k.receive_stdin(HEADER.pack(STDIN_FRAME_MAX)) == []  # as large as allowed: waits for it
    k = keep_at(KeepState.RUNNING_STDIN)
    with pytest.raises(ProtocolError, match=f"limit is {STDIN_FRAME_MAX}"):
        k.receive_stdin(HEADER.pack(STDIN_FRAME_MAX + 1))


def test_exit_may_come_before_the_end_of_stdin() -> None:
    k = keep_at(KeepState.RUNNING_STDIN)
    k.receive_stdin(encode_bulk(Stdin(data=b"some")))
    k.exit(EXIT)
    assert k.state is KeepState.DONE


# -- the client's steps ---------------------------------------------------------------------------


def test_client_streams_only_after_a_release_that_opens_stdin() -> None:
    c = _client_in(ClientState.IDENTIFIED)
    c.release(RELEASE)
    with pytest.raises(ProtocolMisuse, match="did not open a stdin stream"):
        c.stdin(b"x")
    c = _client_in(ClientState.IDENTIFIED)
    c.release(STREAM_RELEASE)
    assert c.stdin_open
    assert c.stdin(b"abc") == encode_bulk(Stdin(data=b"abc"))
    with pytest.raises(ProtocolMisuse, match="at most 1048576 bytes"):
        c.stdin(b"x" * (MAX_STDIN_DATA + 1))
    assert c.stdin(b"") == encode_bulk(Stdin(data=b""))
    assert not c.stdin_open
    with pytest.raises(ProtocolMisuse, match="it ended"):
        c.stdin(b"more")


def test_client_sends_no_stdin_after_the_keep_ended_the_session() -> None:
    c = _client_in(ClientState.IDENTIFIED)
    c.release(STREAM_RELEASE)
    c.receive(frame(Exit(code=0, workload_sha256=bytes(32))))
    assert c.state is ClientState.DONE
    with pytest.raises(ProtocolMisuse, match="cannot send stdin in state done"):
        c.stdin(b"x")
