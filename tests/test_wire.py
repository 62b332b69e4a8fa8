"""Unit and property tests of stockade.wire: framing, strict decoding (load,
identity and release included), the sans-I/O session state machines, the
report-data binding, the launch digest and the DER helpers. The event log
and the identity binding are tested in tests/test_eventlog.py."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import random
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stockade.binding.eventlog import MAX_EVENTS, Event
from stockade.binding.reportdata import DOMAIN, NONCE_SIZE, report_data_for
from stockade.errors import (
    ERROR_CLASSES,
    LimitExceeded,
    MalformedEvidence,
    PolicyRejected,
    ProtocolError,
    ProtocolMisuse,
    StockadeError,
    WorkloadTrapped,
    error_class_for,
)
from stockade.measure.launch import keep_measurement, launch_digest
from stockade.wire import der, framing, protocol
from stockade.wire.evidence import MEDIA_TYPE, EvidenceBundle, bundle_from_extension, extension_value
from stockade.wire.framing import HEADER, MAX_FRAME, FrameDecoder, encode_frame
from stockade.wire.messages import (
    MAX_DEPTH,
    Config,
    Exit,
    Expect,
    FileEntry,
    Hello,
    Identity,
    Limits,
    Load,
    Message,
    Net,
    Output,
    Problem,
    Release,
    Stdin,
    StewardRequest,
    Workload,
    decode,
    decode_map,
    release_stdin_room,
)
from stockade.wire.protocol import (
    CLIENT_ACTIONS,
    KEEP_ACTIONS,
    ClientSession,
    ClientState,
    KeepSession,
    KeepState,
)
from wire_strategies import (
    CERTIFICATE_TYPICAL,
    IDENTITY_TYPICAL,
    LOAD_STAGED,
    LOAD_TYPICAL,
    RELEASE_STEWARD,
    RELEASE_TYPICAL,
    REPRESENTATIVE,
    REPRESENTATIVE_BUNDLES,
    bundles,
    cbor_items,
    configs,
    events,
    exits,
    expects,
    hellos,
    identities,
    loads,
    messages,
    outputs,
    problems,
    releases,
    workloads,
)

NONCE = bytes(range(32))
SHA = b"\x5a" * 32
KEY = b"\x11" * 32
HELLO = Hello(nonce=NONCE)
EXIT = Exit(code=0, workload_sha256=SHA, timing_us=(("run", 7),))
LOAD = LOAD_TYPICAL
IDENTITY = IDENTITY_TYPICAL
RELEASE = RELEASE_TYPICAL
CERTIFICATE = CERTIFICATE_TYPICAL
STREAM_RELEASE = Release(secrets=(("api-key", b"s3cr3t"),), stdin_stream=True)


def frame(msg: Message) -> bytes:
    return encode_frame(msg.to_cbor())


def enc(value: Any) -> bytes:
    return bytes(cbor2.dumps(value, canonical=True))


def as_map(msg: Message) -> dict[Any, Any]:
    m: dict[Any, Any] = cbor2.loads(msg.to_cbor())
    return m


# == framing =========================================================================================


def test_encode_frame_is_big_endian_length_then_payload() -> None:
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"x" * 0x1_02_03) == b"\x00\x01\x02\x03" + b"x" * 0x1_02_03
    assert HEADER.size == 4


def test_feed_byte_by_byte() -> None:
    payloads = [b"", b"a", b"hello world", bytes(300)]
    stream = b"".join(encode_frame(p) for p in payloads)
    dec = FrameDecoder()
    got: list[bytes] = []
    for i in range(len(stream)):
        got.extend(dec.feed(stream[i : i + 1]))
        assert dec.pending == i + 1 - sum(len(encode_frame(p)) for p in got)
    assert got == payloads
    assert dec.pending == 0


def test_several_frames_and_a_partial_one_in_one_feed() -> None:
    dec = FrameDecoder()
    tail = encode_frame(b"fourth")
    assert dec.feed(encode_frame(b"1") + encode_frame(b"22") + encode_frame(b"333") + tail[:6]) == [
        b"1",
        b"22",
        b"333",
    ]
    assert dec.pending == 6
    assert dec.feed(b"") == []
    assert dec.feed(tail[6:]) == [b"fourth"]
    assert dec.pending == 0


def test_partial_header_is_kept() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\x00\x00") == []
    assert dec.pending == 2
    assert dec.feed(b"\x00\x01z") == [b"z"]


def test_oversized_announced_frame_is_refused_before_buffering() -> None:
    dec = FrameDecoder(max_frame=10)
    assert dec.feed(encode_frame(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(ProtocolError, match="11-byte frame"):
        dec.feed(b"\x00\x00\x00\x0b")  # header alone: no body needed to refuse
    with pytest.raises(ProtocolError):  # and it stays refused
        dec.feed(b"x")


def test_oversized_frame_after_good_frames_in_the_same_feed() -> None:
    dec = FrameDecoder(max_frame=10)
    with pytest.raises(ProtocolError):
        dec.feed(encode_frame(b"ok") + b"\xff\xff\xff\xff")


def test_default_limit_and_largest_header() -> None:
    with pytest.raises(ProtocolError, match=str(MAX_FRAME)):
        FrameDecoder().feed(HEADER.pack(MAX_FRAME + 1))
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(b"\xff\xff\xff\xff")
    assert FrameDecoder().feed(HEADER.pack(MAX_FRAME)) == []  # announced size at the limit is fine


def test_encode_frame_refuses_oversized_payload() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        encode_frame(b"x" * 11, max_frame=10)
    assert encode_frame(b"x" * 10, max_frame=10)[4:] == b"x" * 10


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8), st.data())
def test_frames_survive_any_split(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    dec = FrameDecoder()
    got: list[bytes] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got.extend(dec.feed(stream[a:b]))
    assert got == payloads
    assert dec.pending == 0


# == strict decoding =================================================================================


@pytest.mark.parametrize(("name", "msg"), REPRESENTATIVE, ids=[n for n, _ in REPRESENTATIVE])
def test_round_trip_representative(name: str, msg: Message) -> None:
    assert decode(msg.to_cbor()) == msg


def test_encoding_is_deterministic() -> None:
    a = Release(secrets=(("x", b"1"), ("y", b"2")), stdin=b"in")
    b = Release(secrets=(("y", b"2"), ("x", b"1")), stdin=b"in")
    assert a.to_cbor() == b.to_cbor()
    assert decode(b.to_cbor()) == a
    c = Load(package=b"p", config=Config(env=(("A", "1"), ("B", "2"))), nonce=NONCE)
    d = Load(package=b"p", config=Config(env=(("B", "2"), ("A", "1"))), nonce=NONCE)
    assert c.to_cbor() == d.to_cbor()
    assert c.config.digest() == d.config.digest()
    assert decode(d.to_cbor()) == c


@pytest.mark.parametrize("version", [0, 2, -1, "1", b"\x01", True, 1.0, None, [1]])
def test_unknown_or_mistyped_version(version: Any) -> None:
    with pytest.raises(ProtocolError, match="version"):
        decode(enc({**as_map(HELLO), "v": version}))


def test_missing_version() -> None:
    m = as_map(HELLO)
    del m["v"]
    with pytest.raises(ProtocolError, match="version"):
        decode(enc(m))


@pytest.mark.parametrize("mtype", ["nope", "Hello", "", 1, b"hello", None, True])
def test_unknown_message_type(mtype: Any) -> None:
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode(enc({**as_map(HELLO), "t": mtype}))


def test_missing_message_type() -> None:
    m = as_map(HELLO)
    del m["t"]
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode(enc(m))


@pytest.mark.parametrize(
    ("msg", "path"),
    [
        (Output(fd=1, data=b""), ("fd",)),
        (EXIT, ("code",)),
        (EXIT, ("timing_us", "run")),
        (LOAD, ("config", "limits", "timeout_ms")),
        (LOAD, ("config", "limits", "memory_bytes")),
        (LOAD, ("config", "limits", "output_bytes")),
        (LOAD, ("config", "limits", "disk_bytes")),
        (LOAD, ("expect", "min_signatures")),
    ],
    ids=[
        "output-fd",
        "exit-code",
        "exit-timing",
        "timeout",
        "memory",
        "output-bytes",
        "disk-bytes",
        "min-signatures",
    ],
)
def test_bool_is_not_an_int(msg: Message, path: tuple[str, ...]) -> None:
    m = as_map(msg)
    target = m
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = True  # True == 1 in Python, but not on the wire
    with pytest.raises(ProtocolError):
        decode(enc(m))


@pytest.mark.parametrize("value", [[], [HELLO.to_cbor()], 1, "hello", b"\xa0", None, True, 1.5])
def test_non_map_top_level(value: Any) -> None:
    with pytest.raises(ProtocolError, match="expected a CBOR map"):
        decode(bytes(cbor2.dumps(value, canonical=True)))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",  # lone break
        b"\x1c",  # reserved additional info
        b"\xa1",  # map without its entry
        b"\x5a\xff\xff\xff\xff",  # byte string longer than the input
        b"\x9b" + b"\xff" * 8,  # array of 2**64-1 items
        b"\xa1\x61\x74\x61",  # truncated text
        b"\xa1\x61\x74\x61\xff",  # invalid UTF-8
        b"\xa1\x62\xc3\x28\x00",  # invalid UTF-8 in a key
        b"\xf8\x10",  # two-byte simple value below 32 (not well-formed)
    ],
    ids=[
        "empty",
        "break",
        "reserved",
        "short-map",
        "long-bstr",
        "huge-array",
        "trunc-text",
        "bad-utf8",
        "bad-utf8-key",
        "bad-simple",
    ],
)
def test_garbage_cbor(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data)


@pytest.mark.parametrize("msg", [LOAD, IDENTITY, RELEASE], ids=lambda m: m.TYPE)
def test_truncated_message_at_every_length(msg: Message) -> None:
    data = msg.to_cbor()
    for n in range(len(data)):
        with pytest.raises(ProtocolError):
            decode(data[:n])


def test_trailing_bytes_after_the_item() -> None:
    with pytest.raises(ProtocolError, match="trailing"):
        decode(HELLO.to_cbor() + b"\x00")
    with pytest.raises(ProtocolError, match="trailing"):
        decode(HELLO.to_cbor() + HELLO.to_cbor())


def _tag(number: int, inner: bytes) -> bytes:
    if number < 24:
        return bytes([0xC0 | number]) + inner
    if number < 256:
        return b"\xd8" + bytes([number]) + inner
    if number < 65536:
        return b"\xd9" + number.to_bytes(2, "big") + inner
    return b"\xda" + number.to_bytes(4, "big") + inner


def _hello_with_nonce_item(item: bytes) -> bytes:
    # {"t": "hello", "v": 1, "nonce": <item>}, keys in canonical order
    return b"\xa3\x61t\x65hello\x61v\x01\x65nonce" + item


@pytest.mark.parametrize(
    "data",
    [
        _tag(55799, HELLO.to_cbor()),  # self-described CBOR around the message
        _tag(1234, HELLO.to_cbor()),  # unknown tag around the message
        _hello_with_nonce_item(_tag(1234, b"\x58\x20" + NONCE)),  # unknown tag on a field
        _hello_with_nonce_item(_tag(24, b"\x58\x20" + NONCE)),  # embedded CBOR
        _hello_with_nonce_item(_tag(28, b"\x58\x20" + NONCE)),  # shareable
        _hello_with_nonce_item(_tag(22, b"\x58\x20" + NONCE)),  # expected conversion
        _tag(256, HELLO.to_cbor()),  # stringref namespace
        bytes(cbor2.dumps({**as_map(EXIT), "code": 1 << 64})),  # bignum (tag 2)
        bytes(cbor2.dumps({**as_map(EXIT), "code": -(1 << 64) - 1})),  # negative bignum (tag 3)
        b"\xa3\x61t\x64exit\x61v\x01\x64code" + _tag(2, b"\x41\x01"),  # small bignum
        b"\xa1" + _tag(1, b"\x00") + b"\x00",  # tag on a key
    ],
    ids=[
        "self-describe",
        "unknown-outer",
        "unknown-field",
        "embedded",
        "shareable",
        "hint",
        "stringref",
        "bignum",
        "neg-bignum",
        "small-bignum",
        "key",
    ],
)
def test_cbor_tags_are_rejected(data: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"tag|keys must be"):
        decode(data)


def test_shared_reference_cycle_is_rejected() -> None:
    # {"t": "identity", ..., "events": 28([29(0)])}: a list that contains itself
    m = as_map(IDENTITY)
    data = enc({k: v for k, v in m.items() if k != "events"})
    item = _tag(28, b"\x81" + _tag(29, b"\x00"))
    data = bytes([data[0] + 1]) + data[1:] + b"\x66events" + item
    with pytest.raises(ProtocolError, match="tag"):
        decode(data)


def test_duplicate_keys_are_rejected() -> None:
    # {"v": 1, "t": "hello", "nonce": ..., "nonce": ...}: cbor2 keeps the last one
    data = b"\xa4\x61v\x01\x61t\x65hello" + (b"\x65nonce\x58\x20" + NONCE) * 2
    with pytest.raises(ProtocolError, match="duplicate"):
        decode(data)
    data = b"\xa3\x61v\x01\x61v\x02\x61t\x65hello"
    with pytest.raises(ProtocolError, match="duplicate"):
        decode(data)


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (b"\xf5", "bool"),
        (b"\xf6", "null"),
        (b"\xf9\x3c\x00", "float"),
        (b"\x41t", "bytes"),
        (b"\x80", "array"),
        (b"\xa0", "map"),
    ],
)
def test_map_keys_must_be_integers_or_text(key: bytes, name: str) -> None:
    with pytest.raises(ProtocolError, match="keys"):
        decode(b"\xa4\x61v\x01\x61t\x65hello\x65nonce\x58\x20" + NONCE + key + b"\x00")


def test_problem_details_float_key_cannot_shadow_an_int_key() -> None:
    # -1.0 == -1 in Python: without the key-type rule cbor2 would merge them
    pd = b"\xa4\x20\x61a\xf9\xbc\x00\x61b\x21\x61d\x78\x22tag:stockade.dev,2026:problem-type\x61x"
    with pytest.raises(ProtocolError):
        decode(b"\xa3\x61v\x01\x61t\x67problem\x67problem" + pd)


@pytest.mark.parametrize(
    "data",
    [
        b"\xa3\x61v\x18\x01\x61t\x65hello\x65nonce\x58\x20" + NONCE,  # 1 as 0x18 0x01
        b"\xa3\x61v\x01\x61t\x65hello\x65nonce\x59\x00\x20" + NONCE,  # length 32 in 2 bytes
        b"\xa3\x61v\x01\x61t\x65hello\x78\x05nonce\x58\x20" + NONCE,  # key length in 1 byte
        b"\xb8\x03\x61v\x01\x61t\x65hello\x65nonce\x58\x20" + NONCE,  # map count in 1 byte
    ],
    ids=["int", "bstr-length", "tstr-length", "map-count"],
)
def test_non_shortest_heads_are_rejected(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="shortest"):
        decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xbf\x61v\x01\x61t\x65hello\x65nonce\x58\x20" + NONCE + b"\xff",  # indefinite map
        b"\xa3\x61v\x01\x61t\x7f\x63hel\x62lo\xff\x65nonce\x58\x20" + NONCE,  # indefinite text
    ],
    ids=["map", "text"],
)
def test_indefinite_lengths_are_rejected(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="indefinite"):
        decode(data)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
def test_deep_nesting_is_rejected_without_recursion_error(depth: int) -> None:
    with pytest.raises(ProtocolError, match="nested"):
        decode(b"\x81" * depth + b"\x00")
    with pytest.raises(ProtocolError, match="nested"):
        decode(b"\xa1\x61a" * depth + b"\x00")


def test_nesting_up_to_the_limit_is_well_formed() -> None:
    # not a message, but the profile check passes and the type check speaks
    with pytest.raises(ProtocolError, match="expected a CBOR map"):
        decode(b"\x81" * MAX_DEPTH + b"\x00")


def test_decode_map_names_the_context() -> None:
    with pytest.raises(ProtocolError, match=r"^sim thing: "):
        decode_map(b"\xff", "sim thing")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: m.pop("nonce"), "nonce"),
        (lambda m: m.update(nonce="x" * 32), "nonce"),
        (lambda m: m.update(extra=1), "extra"),
    ],
    ids=["missing", "type", "extra"],
)
def test_errors_name_the_field(mutate: Any, field: str) -> None:
    m = as_map(HELLO)
    mutate(m)
    with pytest.raises(ProtocolError, match=field):
        decode(enc(m))


def test_message_field_constraints() -> None:
    with pytest.raises(ProtocolError, match="32 bytes"):
        Hello(nonce=b"short")
    with pytest.raises(ProtocolError):
        Output(fd=3, data=b"")
    for bad in (0, -1, True, 1 << 64, "1"):
        with pytest.raises(ProtocolError):
            Limits(timeout_ms=bad)  # type: ignore[arg-type]
    Limits(timeout_ms=(1 << 64) - 1)


def test_file_entries() -> None:
    m = as_map(LOAD)
    good = decode(enc(m))
    assert isinstance(good, Load)
    assert good.config.files == LOAD.config.files
    assert any(f.data is None for f in good.config.files)
    for files in (
        [{"path": "a", "dir": True, "data": b""}],
        [{"path": "a", "dir": False}],
        [{"path": "a"}],
        [{"path": "a", "data": b"", "mode": 0o644}],
        [{"path": b"a", "data": b""}],
        [["a", b""]],
    ):
        with pytest.raises(ProtocolError, match="file"):
            decode(enc({**m, "config": {**m["config"], "files": files}}))


def test_problem_maps_to_error_classes() -> None:
    for cls in ERROR_CLASSES:
        err = cls("something went wrong")
        problem = decode(Problem.from_error(err).to_cbor())
        assert isinstance(problem, Problem)
        back = problem.to_error()
        assert type(back) is cls
        assert back.detail == "something went wrong"
    unknown = Problem(problem_type="from-the-future", title="t", detail="d").to_error()
    assert type(unknown) is ProtocolError


def test_problem_details_use_rfc9290_keys() -> None:
    pd = as_map(Problem.from_error(LimitExceeded("too slow", "time")))["problem"]
    assert pd == {
        -1: "limit exceeded",
        -2: "too slow",
        "tag:stockade.dev,2026:problem-type": "limit-exceeded",
    }


def test_problem_details_reject_unknown_keys() -> None:
    m = as_map(Problem.from_error(WorkloadTrapped("trap")))
    m["problem"][-3] = "urn:instance"
    with pytest.raises(ProtocolError, match="problem-detail"):
        decode(enc(m))


# == load, identity and release ======================================================================


def mutated_map(msg: Message, path: tuple[Any, ...], value: Any = None, *, drop: bool = False) -> bytes:
    """``msg`` encoded after setting (or deleting) the field at ``path``."""
    m = as_map(msg)
    target = m
    for p in path[:-1]:
        target = target[p]
    if drop:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return enc(m)


STAGED = LOAD_STAGED
DIGEST_LIST = [["file", "a", b"\x01" * 32]]

# (message, path, new value or DROP, regex the ProtocolError must match)
DROP = object()
FIELD_ERRORS: list[Any] = [
    # load
    pytest.param(LOAD, ("nonce",), DROP, "missing field 'nonce'", id="load-missing-nonce"),
    pytest.param(LOAD, ("nonce",), "x" * 32, "'nonce' has the wrong type", id="load-nonce-text"),
    pytest.param(LOAD, ("nonce",), b"\x00" * 31, "nonce must be 32 bytes, got 31", id="load-nonce-31"),
    pytest.param(LOAD, ("nonce",), b"\x00" * 33, "nonce must be 32 bytes, got 33", id="load-nonce-33"),
    pytest.param(LOAD, ("nonce",), b"", "nonce must be 32 bytes, got 0", id="load-nonce-empty"),
    pytest.param(LOAD, ("expect",), DROP, "missing field 'expect'", id="load-missing-expect"),
    pytest.param(LOAD, ("expect",), [], "'expect' has the wrong type", id="load-expect-array"),
    pytest.param(LOAD, ("config",), DROP, "missing field 'config'", id="load-missing-config"),
    pytest.param(LOAD, ("config",), "{}", "'config' has the wrong type", id="load-config-text"),
    pytest.param(LOAD, ("extra",), 1, r"load: unknown field\(s\) \['extra'\]", id="load-extra"),
    pytest.param(LOAD, ("package",), "pkg", "'package' has the wrong type", id="load-package-text"),
    pytest.param(LOAD, ("package",), DROP, "exactly one of an inline package and staged", id="load-neither"),
    pytest.param(LOAD, ("staged",), True, "exactly one of an inline package and staged", id="load-both"),
    pytest.param(LOAD, ("staged",), False, "'staged' must be true", id="load-package-staged-false"),
    pytest.param(STAGED, ("staged",), False, "'staged' must be true", id="load-staged-false"),
    pytest.param(STAGED, ("staged",), 1, "'staged' must be true", id="load-staged-int"),
    pytest.param(STAGED, ("staged",), "true", "'staged' must be true", id="load-staged-text"),
    pytest.param(STAGED, ("staged",), None, "'staged' must be true", id="load-staged-null"),
    # load.expect
    pytest.param(
        LOAD, ("expect", "digests"), DROP, "expect: missing field 'digests'", id="expect-missing-digests"
    ),
    pytest.param(
        LOAD, ("expect", "signers"), DROP, "expect: missing field 'signers'", id="expect-missing-signers"
    ),
    pytest.param(
        LOAD,
        ("expect", "min_signatures"),
        DROP,
        "expect: missing field 'min_signatures'",
        id="expect-missing-min",
    ),
    pytest.param(LOAD, ("expect", "x"), 1, r"expect: unknown field\(s\)", id="expect-extra"),
    pytest.param(LOAD, ("expect", "digests"), b"", "'digests' has the wrong type", id="expect-digests-bytes"),
    pytest.param(LOAD, ("expect", "signers"), {}, "'signers' has the wrong type", id="expect-signers-map"),
    pytest.param(LOAD, ("expect", "digests"), ["x" * 32], "must be byte strings", id="expect-digest-text"),
    pytest.param(LOAD, ("expect", "signers"), [1], "must be byte strings", id="expect-signer-int"),
    pytest.param(
        LOAD, ("expect", "digests"), [b"\x00" * 31], "digest must be 32 bytes", id="expect-digest-31"
    ),
    pytest.param(
        LOAD, ("expect", "digests"), [SHA, b"\x00" * 33], "digest must be 32 bytes", id="expect-digest-33"
    ),
    pytest.param(LOAD, ("expect", "signers"), [b""], "32-byte Ed25519 public key", id="expect-signer-0"),
    pytest.param(LOAD, ("expect", "signers"), [KEY, KEY + b"\x00"], "32-byte Ed25519", id="expect-signer-33"),
    pytest.param(
        LOAD, ("expect", "min_signatures"), -1, "min_signatures must be between", id="expect-min-negative"
    ),
    pytest.param(
        LOAD, ("expect", "min_signatures"), 3, "min_signatures must be between", id="expect-min-above"
    ),
    pytest.param(
        LOAD, ("expect", "min_signatures"), 0, "signers are named but min_signatures is 0", id="expect-min-0"
    ),
    pytest.param(
        LOAD, ("expect", "min_signatures"), True, "'min_signatures' must be an integer", id="expect-min-bool"
    ),
    pytest.param(
        LOAD, ("expect", "min_signatures"), "1", "'min_signatures' has the wrong type", id="expect-min-text"
    ),
    # load.config
    pytest.param(LOAD, ("config", "args"), DROP, "config: missing field 'args'", id="config-missing-args"),
    pytest.param(LOAD, ("config", "env"), DROP, "config: missing field 'env'", id="config-missing-env"),
    pytest.param(LOAD, ("config", "files"), DROP, "config: missing field 'files'", id="config-missing-files"),
    pytest.param(
        LOAD, ("config", "limits"), DROP, "config: missing field 'limits'", id="config-missing-limits"
    ),
    pytest.param(
        LOAD, ("config", "stdin"), b"", r"config: unknown field\(s\) \['stdin'\]", id="config-extra"
    ),
    pytest.param(LOAD, ("config", "args"), ["a", 1], "config args", id="config-args-int"),
    pytest.param(LOAD, ("config", "env"), {"A": b"x"}, "config env", id="config-env-bytes"),
    pytest.param(LOAD, ("config", "env"), {1: "x"}, "config env", id="config-env-int-key"),
    pytest.param(LOAD, ("config", "files"), {}, "'files' has the wrong type", id="config-files-map"),
    pytest.param(LOAD, ("config", "limits"), [], "'limits' has the wrong type", id="config-limits-array"),
    pytest.param(LOAD, ("config", "limits", "cpu"), 1, r"limits: unknown field\(s\)", id="limits-extra"),
    pytest.param(
        LOAD, ("config", "limits", "timeout_ms"), DROP, "missing field 'timeout_ms'", id="limits-missing"
    ),
    pytest.param(
        LOAD, ("config", "limits", "memory_bytes"), 0, "memory_bytes must be a positive", id="limits-zero"
    ),
    pytest.param(
        LOAD, ("config", "limits", "disk_bytes"), DROP, "missing field 'disk_bytes'", id="limits-disk-missing"
    ),
    pytest.param(
        LOAD, ("config", "limits", "disk_bytes"), 0, "disk_bytes must be a positive", id="limits-disk-zero"
    ),
    # identity
    pytest.param(
        IDENTITY, ("evidence",), DROP, "identity: missing field 'evidence'", id="identity-missing-evidence"
    ),
    pytest.param(
        IDENTITY, ("evidence",), "bundle", "'evidence' has the wrong type", id="identity-evidence-text"
    ),
    pytest.param(
        IDENTITY, ("events",), DROP, "identity: missing field 'events'", id="identity-missing-events"
    ),
    pytest.param(IDENTITY, ("events",), {}, "'events' has the wrong type", id="identity-events-map"),
    pytest.param(
        IDENTITY, ("secrets",), {}, r"identity: unknown field\(s\) \['secrets'\]", id="identity-extra"
    ),
    pytest.param(IDENTITY, ("events",), ["file"], "each event must be an array", id="event-not-array"),
    pytest.param(IDENTITY, ("events",), [["file", "a"]], "each event must be an array", id="event-2-items"),
    pytest.param(
        IDENTITY, ("events",), [["file", "a", SHA, 0]], "each event must be an array", id="event-4-items"
    ),
    pytest.param(IDENTITY, ("events",), [{"kind": "file"}], "each event must be an array", id="event-map"),
    pytest.param(
        IDENTITY, ("events",), [[b"file", "a", SHA]], r"an event is \[text, text, bytes\]", id="kind-bytes"
    ),
    pytest.param(
        IDENTITY, ("events",), [["file", 1, SHA]], r"an event is \[text, text, bytes\]", id="name-int"
    ),
    pytest.param(
        IDENTITY,
        ("events",),
        [["file", "a", "x" * 32]],
        r"an event is \[text, text, bytes\]",
        id="digest-text",
    ),
    pytest.param(
        IDENTITY, ("events",), [["secret", "a", SHA]], "unknown event kind 'secret'", id="kind-unknown"
    ),
    pytest.param(IDENTITY, ("events",), [["File", "a", SHA]], "unknown event kind 'File'", id="kind-case"),
    pytest.param(IDENTITY, ("events",), [["file", "a", SHA[:31]]], "needs a 32-byte digest", id="digest-31"),
    pytest.param(
        IDENTITY, ("events",), [["file", "a", SHA + b"\x00"]], "needs a 32-byte digest", id="digest-33"
    ),
    pytest.param(
        IDENTITY, ("events",), [["file", "n" * 4097, SHA]], "at most 4096 characters", id="name-4097"
    ),
    # release
    pytest.param(
        RELEASE, ("secrets",), DROP, "release: missing field 'secrets'", id="release-missing-secrets"
    ),
    pytest.param(RELEASE, ("stdin",), DROP, "release: missing field 'stdin'", id="release-missing-stdin"),
    pytest.param(RELEASE, ("stdin",), "in", "'stdin' has the wrong type", id="release-stdin-text"),
    pytest.param(RELEASE, ("secrets",), [], "'secrets' has the wrong type", id="release-secrets-array"),
    pytest.param(RELEASE, ("secrets",), {"k": "text"}, "release secrets", id="release-secret-text"),
    pytest.param(RELEASE, ("secrets",), {"k": 1}, "release secrets", id="release-secret-int"),
    pytest.param(RELEASE, ("secrets",), {1: b"v"}, "release secrets", id="release-secret-int-name"),
    pytest.param(RELEASE, ("wasm",), b"", r"release: unknown field\(s\) \['wasm'\]", id="release-extra"),
]


@pytest.mark.parametrize(("msg", "path", "value", "error"), FIELD_ERRORS)
def test_load_identity_release_errors_name_the_field(
    msg: Message, path: tuple[Any, ...], value: Any, error: str
) -> None:
    data = mutated_map(msg, path, drop=True) if value is DROP else mutated_map(msg, path, value)
    with pytest.raises(ProtocolError, match=error):
        decode(data)


def test_staged_load_decodes_without_a_package() -> None:
    assert as_map(STAGED)["staged"] is True
    assert "package" not in as_map(STAGED)
    assert "staged" not in as_map(LOAD)
    back = decode(STAGED.to_cbor())
    assert isinstance(back, Load)
    assert back.package is None and back.staged
    assert "staged" in repr(back)


def test_expect_constraints() -> None:
    Expect()
    Expect(digests=(SHA,) * 3, signers=(KEY, SHA), min_signatures=2)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"digests": (SHA[:31],)}, "pinned digest must be 32 bytes"),
        ({"digests": (SHA, SHA + b"\x00")}, "pinned digest must be 32 bytes"),
        ({"signers": (KEY[:31],), "min_signatures": 1}, "32-byte Ed25519"),
        ({"signers": (KEY, b""), "min_signatures": 1}, "32-byte Ed25519"),
        ({"min_signatures": 1}, "between 0 and the number of signers"),
        ({"signers": (KEY,), "min_signatures": 2}, "between 0 and the number of signers"),
        ({"signers": (KEY,), "min_signatures": -1}, "between 0 and the number of signers"),
        ({"signers": (KEY,), "min_signatures": True}, "between 0 and the number of signers"),
        ({"signers": (KEY,), "min_signatures": 1.0}, "between 0 and the number of signers"),
        ({"signers": (KEY,), "min_signatures": 0}, "signers are named but min_signatures is 0"),
        ({"signers": (KEY, SHA)}, "signers are named but min_signatures is 0"),
    ]
    for kwargs, error in cases:
        with pytest.raises(ProtocolError, match=error):
            Expect(**kwargs)


def test_expect_and_config_from_map_refuse_non_maps() -> None:
    for value in ([], "x", None, b""):
        with pytest.raises(ProtocolError, match="expect must be a map"):
            Expect.from_map(value)
        with pytest.raises(ProtocolError, match="config must be a map"):
            Config.from_map(value)


def test_load_constraints() -> None:
    with pytest.raises(ProtocolError, match="exactly one"):
        Load(package=None, config=Config(), nonce=NONCE)
    with pytest.raises(ProtocolError, match="exactly one"):
        Load(package=b"", staged=True, config=Config(), nonce=NONCE)
    for size in (0, 31, 33, 64):
        with pytest.raises(ProtocolError, match=f"got {size}"):
            Load(package=b"", config=Config(), nonce=bytes(size))
    assert Load(package=None, staged=True, config=Config(), nonce=NONCE).package is None


def test_identity_with_too_many_events_is_refused() -> None:
    event = ["file", "", SHA]
    m = as_map(IDENTITY)
    ok = decode(enc({**m, "events": [event] * MAX_EVENTS}))
    assert isinstance(ok, Identity) and len(ok.events) == MAX_EVENTS
    with pytest.raises(ProtocolError, match=f"more than {MAX_EVENTS} events"):
        decode(enc({**m, "events": [event] * (MAX_EVENTS + 1)}))


def test_identity_events_keep_their_order() -> None:
    back = decode(IDENTITY.to_cbor())
    assert isinstance(back, Identity)
    assert back.events == IDENTITY.events
    assert [e.kind for e in back.events][:3] == ["runtime", "package", "signer"]
    reordered = Identity(evidence=IDENTITY.evidence, events=IDENTITY.events[::-1])
    assert decode(reordered.to_cbor()) == reordered != IDENTITY


def test_config_digest_is_sha256_of_its_deterministic_cbor() -> None:
    config = LOAD.config
    expected = hashlib.sha256(
        enc(
            {
                "args": list(config.args),
                "env": dict(config.env),
                "files": [f.to_map() for f in config.files],
                "limits": config.limits.to_map(),
            }
        )
    ).digest()
    assert config.digest() == expected
    assert Config(env=(("A", "1"), ("B", "2"))).digest() == Config(env=(("B", "2"), ("A", "1"))).digest()
    variants = [
        Config(),
        Config(args=("",)),
        Config(env=(("A", ""),)),
        Config(files=(FileEntry("a", None),)),
        Config(files=(FileEntry("a", b""),)),
        Config(limits=Limits(timeout_ms=1)),
        dataclasses.replace(config, args=(*config.args, "x")),
        dataclasses.replace(config, env=config.env[:-1]),
        dataclasses.replace(config, files=config.files[::-1]),
        dataclasses.replace(config, limits=Limits(output_bytes=2)),
    ]
    digests = {c.digest() for c in [config, *variants]}
    assert len(digests) == len(variants) + 1


@settings(max_examples=150, deadline=None)
@given(configs)
def test_round_trip_generated_configs(config: Config) -> None:
    data = enc(config.to_map())
    assert Config.from_map(cbor2.loads(data)) == config
    assert config.digest() == hashlib.sha256(data).digest()


@settings(max_examples=150, deadline=None)
@given(expects)
def test_round_trip_generated_expects(expect: Expect) -> None:
    assert Expect.from_map(cbor2.loads(enc(expect.to_map()))) == expect


@settings(max_examples=150, deadline=None)
@given(events)
def test_round_trip_generated_events(event: Event) -> None:
    assert Event.from_list(cbor2.loads(event.encoded())) == event
    assert event.encoded() == enc(event.to_list())


@settings(max_examples=150, deadline=None)
@given(st.one_of(loads, identities, releases))
def test_round_trip_generated_load_identity_release(msg: Message) -> None:
    back = decode(msg.to_cbor())
    assert back == msg
    assert type(back) is type(msg)
    assert back.to_cbor() == msg.to_cbor()


# == reprs never show secrets ========================================================================

SECRET_NEEDLES = ("hunter2", "TOPSECRET", "deadbeef", "\\xde\\xad", "STDIN-SECRET")


def _renderings(obj: object) -> list[str]:
    return [repr(obj), str(obj), f"{obj}", repr([obj]), repr({"x": obj}), repr((obj,))]


def test_release_repr_never_shows_secret_values() -> None:
    r = Release(
        secrets=(("db-password", b"hunter2-SECRET"), ("api-key", b"\xde\xad\xbe\xef-TOPSECRET")),
        stdin=b"STDIN-SECRET",
    )
    for text in _renderings(r):
        for needle in SECRET_NEEDLES:
            assert needle not in text, (needle, text)
        assert "db-password" in text and "api-key" in text  # names are fine
        assert "<12 bytes>" in text  # the stdin size is fine


def test_load_repr_shows_neither_package_nor_configuration() -> None:
    load = Load(
        package=b"PACKAGE-BYTES",
        config=Config(
            args=("ARG-VALUE",),
            env=(("TOKEN", "ENV-VALUE"),),
            files=(FileEntry("key.pem", b"FILE-CONTENT"),),
        ),
        nonce=NONCE,
    )
    for text in _renderings(load):
        for needle in ("PACKAGE-BYTES", "ARG-VALUE", "ENV-VALUE", "FILE-CONTENT"):
            assert needle not in text, (needle, text)
        assert "<13 bytes>" in text
    staged = Load(package=None, staged=True, config=Config(), nonce=NONCE)
    assert repr(staged).startswith("Load(package=staged")


def test_workload_repr_never_shows_secret_values() -> None:
    secret_values = [b"hunter2-SECRET", b"\xde\xad\xbe\xef-TOPSECRET"]
    w = Workload(
        wasm=b"\0asm-WASMBYTES",
        args=("arg1",),
        env=(("TOKEN", "ENV-SECRET-VALUE"),),
        stdin=b"STDIN-SECRET",
        files=(FileEntry("key.pem", b"FILE-SECRET-CONTENT"),),
        secrets=(("db-password", secret_values[0]), ("api-key", secret_values[1])),
    )
    for text in _renderings(w):
        for needle in (*SECRET_NEEDLES, "ENV-SECRET", "FILE-SECRET", "WASMBYTES"):
            assert needle not in text, (needle, text)
        assert "db-password" in text and "api-key" in text  # names are fine


def test_workload_is_internal_not_a_message() -> None:
    assert not issubclass(Workload, Message)
    assert not hasattr(Workload(wasm=b""), "to_cbor")
    assert "workload" not in protocol_message_types()
    data = enc({"v": 1, "t": "workload", "wasm": b"\0asm", "secrets": {}})
    with pytest.raises(ProtocolError, match="unknown message type 'workload'"):
        decode(data)


def protocol_message_types() -> set[str]:
    from stockade.wire.messages import MESSAGE_TYPES

    return set(MESSAGE_TYPES)


def _assert_no_secret_bytes(text: str, values: list[bytes]) -> None:
    for value in values:
        if len(value) >= 4:
            assert repr(value) not in text
            assert value.hex() not in text


@settings(max_examples=100, deadline=None)
@given(workloads)
def test_workload_repr_never_contains_secret_bytes(w: Workload) -> None:
    _assert_no_secret_bytes(repr(w), [v for _, v in w.secrets])


@settings(max_examples=100, deadline=None)
@given(releases)
def test_release_repr_never_contains_secret_bytes(r: Release) -> None:
    _assert_no_secret_bytes(repr(r), [*(v for _, v in r.secrets), r.stdin])


@settings(max_examples=100, deadline=None)
@given(loads)
def test_load_repr_never_contains_package_bytes(load: Load) -> None:
    # expect's digests and signers are public and printed; a package equal to one would match
    assume(load.package not in (*load.expect.digests, *load.expect.signers))
    _assert_no_secret_bytes(repr(load), [load.package or b""])


# == sans-I/O state machines =========================================================================


#: A TLS key and the report data of evidence that binds it to NONCE: what
#: the client passes to evidence_verified() once the evidence verified.
TLS_SPKI = b"the Keep's TLS key"
EVIDENCE = (report_data_for(NONCE, TLS_SPKI), TLS_SPKI)


def client_awaiting_identity() -> ClientSession:
    c = ClientSession()
    c.hello(NONCE)
    c.evidence_verified(*EVIDENCE)
    c.load(LOAD)
    return c


def client_identified() -> ClientSession:
    c = client_awaiting_identity()
    assert c.receive(frame(IDENTITY)) == [IDENTITY]
    c.identity_verified(IDENTITY)
    return c


def client_running() -> ClientSession:
    c = client_identified()
    c.release(RELEASE)
    return c


def keep_at(stage: KeepState) -> KeepSession:
    """A Keep driven through a legal session up to ``stage`` (RUNNING_STDIN:
    through a release with stdin_stream)."""
    if stage is KeepState.RUNNING_STDIN:
        k = keep_at(KeepState.AWAIT_RELEASE)
        assert k.receive_release(frame(STREAM_RELEASE)) == STREAM_RELEASE
        assert k.state is KeepState.RUNNING_STDIN
        return k
    k = KeepSession()
    if stage is KeepState.CERTIFYING:
        keep_at(KeepState.AWAIT_RELEASE)  # (checks the path)
        k = keep_at(KeepState.AWAIT_RELEASE)
        assert k.receive_release(frame(RELEASE_STEWARD)) == RELEASE_STEWARD
        assert k.state is KeepState.CERTIFYING
        return k
    steps: list[tuple[KeepState, Callable[[], object]]] = [
        (KeepState.ATTESTING, lambda: k.receive_hello(frame(HELLO))),
        (KeepState.AWAIT_LOAD, k.channel_ready),
        (KeepState.LOADING, lambda: k.receive_load(frame(LOAD))),
        (KeepState.AWAIT_RELEASE, lambda: k.identity(IDENTITY)),
        (KeepState.RUNNING, lambda: k.receive_release(frame(RELEASE))),
        (KeepState.DONE, lambda: k.exit(EXIT)),
    ]
    for state, step in steps:
        if k.state is stage:
            break
        step()
        assert k.state is state
    assert k.state is stage
    return k


def keep_running() -> KeepSession:
    return keep_at(KeepState.RUNNING)


def test_full_session_between_client_and_keep() -> None:
    c, k = ClientSession(), KeepSession()
    hello = c.hello(NONCE)
    assert k.receive_hello(hello) == HELLO
    assert (c.state, k.state) == (ClientState.AWAIT_EVIDENCE, KeepState.ATTESTING)
    k.channel_ready()
    c.evidence_verified(*EVIDENCE)
    assert (c.state, k.state) == (ClientState.VERIFIED, KeepState.AWAIT_LOAD)
    assert k.receive_load(c.load(LOAD)) == LOAD
    assert (c.state, k.state) == (ClientState.AWAIT_IDENTITY, KeepState.LOADING)
    data = k.identity(IDENTITY)
    assert k.state is KeepState.AWAIT_RELEASE
    got = [m for i in range(len(data)) for m in c.receive(data[i : i + 1])]
    assert got == [IDENTITY]
    assert c.state is ClientState.AWAIT_IDENTITY
    c.identity_verified(IDENTITY)
    assert c.state is ClientState.IDENTIFIED
    assert k.receive_release(c.release(RELEASE)) == RELEASE
    assert (c.state, k.state) == (ClientState.RUNNING, KeepState.RUNNING)
    stream = k.output(1, b"out") + k.output(2, b"err") + k.exit(EXIT)
    got = [m for i in range(len(stream)) for m in c.receive(stream[i : i + 1])]
    assert got == [Output(1, b"out"), Output(2, b"err"), EXIT]
    assert (c.state, k.state) == (ClientState.DONE, KeepState.DONE)


def test_staged_load_session() -> None:
    c, k = ClientSession(), KeepSession()
    k.receive_hello(c.hello(NONCE))
    k.channel_ready()
    c.evidence_verified(*EVIDENCE)
    got = k.receive_load(c.load(STAGED))
    assert got == STAGED
    assert got is not None and got.package is None


def test_client_cannot_send_load_before_evidence_is_verified() -> None:
    c = ClientSession()
    with pytest.raises(ProtocolMisuse, match="send the load request in state start"):
        c.load(LOAD)
    c.hello(NONCE)
    with pytest.raises(ProtocolMisuse, match="send the load request in state await-evidence"):
        c.load(LOAD)
    assert c.state is ClientState.AWAIT_EVIDENCE
    c.evidence_verified(*EVIDENCE)
    assert c.load(LOAD) == frame(LOAD)
    assert c.state is ClientState.AWAIT_IDENTITY
    with pytest.raises(ProtocolMisuse, match="send the load request"):
        c.load(LOAD)  # only once


def _client_in(state: ClientState) -> ClientSession:
    c = ClientSession()
    if state is ClientState.START:
        return c
    c.hello(NONCE)
    if state is ClientState.AWAIT_EVIDENCE:
        return c
    c.evidence_verified(*EVIDENCE)
    if state is ClientState.VERIFIED:
        return c
    c.load(LOAD)
    if state is ClientState.AWAIT_IDENTITY:
        return c
    c.receive(frame(IDENTITY))
    c.identity_verified(IDENTITY)
    if state is ClientState.IDENTIFIED:
        return c
    if state is ClientState.AWAIT_CERTIFICATE:
        c.release(RELEASE_STEWARD)
        return c
    c.release(RELEASE)
    if state is ClientState.RUNNING:
        return c
    c.receive(frame(EXIT))
    assert state is ClientState.DONE
    return c


@pytest.mark.parametrize(
    "state", [s for s in ClientState if s is not ClientState.IDENTIFIED], ids=lambda s: s.value
)
def test_client_cannot_release_secrets_unless_identified(state: ClientState) -> None:
    c = _client_in(state)
    assert c.state is state
    with pytest.raises(ProtocolMisuse, match=f"release secrets in state {state.value}"):
        c.release(RELEASE)
    assert c.state is state


def test_client_cannot_release_after_receiving_an_unverified_identity() -> None:
    c = client_awaiting_identity()
    assert c.receive(frame(IDENTITY)) == [IDENTITY]
    with pytest.raises(ProtocolMisuse, match="release secrets in state await-identity"):
        c.release(RELEASE)  # the identity arrived, but nobody checked it


def test_identity_verified_only_after_the_identity_arrived_and_once() -> None:
    for state in (ClientState.START, ClientState.AWAIT_EVIDENCE, ClientState.VERIFIED):
        with pytest.raises(ProtocolMisuse, match="accept the workload identity"):
            _client_in(state).identity_verified(IDENTITY)
    c = client_awaiting_identity()
    with pytest.raises(ProtocolMisuse, match="identity not received yet"):
        c.identity_verified(IDENTITY)
    assert c.state is ClientState.AWAIT_IDENTITY
    data = frame(IDENTITY)
    assert c.receive(data[:-1]) == []
    with pytest.raises(ProtocolMisuse, match="identity not received yet"):
        c.identity_verified(IDENTITY)  # a partial identity is no identity
    assert c.receive(data[-1:]) == [IDENTITY]
    c.identity_verified(IDENTITY)
    assert c.state is ClientState.IDENTIFIED
    with pytest.raises(ProtocolMisuse, match="accept the workload identity in state identified"):
        c.identity_verified(IDENTITY)


def test_client_cannot_send_hello_twice() -> None:
    c = ClientSession()
    c.hello(NONCE)
    with pytest.raises(ProtocolMisuse, match="send hello"):
        c.hello(NONCE)
    c.evidence_verified(*EVIDENCE)
    with pytest.raises(ProtocolMisuse):
        c.hello(NONCE)


def test_evidence_verified_only_after_hello_and_once() -> None:
    c = ClientSession()
    with pytest.raises(ProtocolMisuse, match="accept evidence"):
        c.evidence_verified(*EVIDENCE)
    c.hello(NONCE)
    c.evidence_verified(*EVIDENCE)
    with pytest.raises(ProtocolMisuse):
        c.evidence_verified(*EVIDENCE)


def test_failed_hello_does_not_advance_the_client() -> None:
    c = ClientSession()
    with pytest.raises(ProtocolError):
        c.hello(b"short nonce")
    assert c.state is ClientState.START
    with pytest.raises(ProtocolMisuse):
        c.evidence_verified(*EVIDENCE)  # no hello went out, so no evidence can be accepted
    c.hello(NONCE)


def test_failed_load_encoding_does_not_advance_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "encode_frame", functools.partial(framing.encode_frame, max_frame=200))
    c = ClientSession()
    c.hello(NONCE)
    c.evidence_verified(*EVIDENCE)
    with pytest.raises(ProtocolError, match="exceeds"):
        c.load(Load(package=b"x" * 300, config=Config(), nonce=NONCE))
    assert c.state is ClientState.VERIFIED
    with pytest.raises(ProtocolError, match="in state verified"):
        c.receive(frame(IDENTITY))  # the Keep cannot answer a load that never went out


def test_failed_release_encoding_does_not_advance_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    c = client_identified()
    monkeypatch.setattr(protocol, "encode_frame", functools.partial(framing.encode_frame, max_frame=100))
    with pytest.raises(ProtocolError, match="exceeds"):
        c.release(Release(stdin=b"x" * 200))
    assert c.state is ClientState.IDENTIFIED
    with pytest.raises(ProtocolError, match="in state identified"):
        c.receive(frame(EXIT))  # the Keep cannot answer a release that never went out
    assert c.release(Release()) == frame(Release())
    assert c.state is ClientState.RUNNING


@pytest.mark.parametrize(
    "state",
    [ClientState.START, ClientState.AWAIT_EVIDENCE, ClientState.VERIFIED, ClientState.IDENTIFIED],
    ids=lambda s: s.value,
)
@pytest.mark.parametrize("msg", [IDENTITY, Output(1, b"early"), EXIT], ids=lambda m: m.TYPE)
def test_client_refuses_keep_data_while_it_speaks(state: ClientState, msg: Message) -> None:
    c = _client_in(state)
    assert c.receive(b"") == []
    with pytest.raises(ProtocolError, match=f"Keep sent data in state {state.value}"):
        c.receive(frame(msg))
    with pytest.raises(ProtocolError, match="Keep sent data"):
        c.receive(b"\x00")  # not even the first byte of a frame


@pytest.mark.parametrize(
    "msg",
    [Output(1, b"early"), EXIT, HELLO, LOAD, RELEASE],
    ids=["output", "exit", "hello", "load", "release"],
)
def test_client_expects_the_identity_first(msg: Message) -> None:
    c = client_awaiting_identity()
    with pytest.raises(ProtocolError, match=f"Keep sent '{msg.TYPE}' where its identity was expected"):
        c.receive(frame(msg))


def test_client_accepts_a_problem_instead_of_the_identity() -> None:
    c = client_awaiting_identity()
    problem = Problem.from_error(WorkloadTrapped("package refused"))
    assert c.receive(frame(problem)) == [problem]
    assert c.state is ClientState.DONE
    with pytest.raises(ProtocolMisuse):
        c.identity_verified(IDENTITY)
    with pytest.raises(ProtocolMisuse, match="release secrets"):
        c.release(RELEASE)
    with pytest.raises(ProtocolError):
        c.receive(frame(IDENTITY))


@pytest.mark.parametrize(
    "after",
    [IDENTITY, Output(1, b"early"), EXIT, Problem.from_error(LimitExceeded("x"))],
    ids=["second-identity", "output", "exit", "problem"],
)
def test_client_refuses_data_after_the_identity_before_the_release(after: Message) -> None:
    c = client_awaiting_identity()
    with pytest.raises(ProtocolError, match="after its identity, before the release"):
        c.receive(frame(IDENTITY) + frame(after))
    c = client_awaiting_identity()
    assert c.receive(frame(IDENTITY)) == [IDENTITY]
    with pytest.raises(ProtocolError, match="after its identity, before the release"):
        c.receive(frame(after))
    c = client_awaiting_identity()
    c.receive(frame(IDENTITY))
    c.identity_verified(IDENTITY)
    with pytest.raises(ProtocolError, match="Keep sent data in state identified"):
        c.receive(frame(after))


@pytest.mark.parametrize("split", ["same-chunk", "next-chunk"])
def test_client_refuses_a_partial_frame_after_the_identity(split: str) -> None:
    c = client_awaiting_identity()
    early = frame(Output(1, b"before release"))
    with pytest.raises(ProtocolError, match="before the release"):
        if split == "same-chunk":
            c.receive(frame(IDENTITY) + early[:3])
        else:
            c.receive(frame(IDENTITY))
            c.receive(early[:3])
        c.identity_verified(IDENTITY)
        c.release(RELEASE)
        c.receive(early[3:])


def test_client_refuses_data_after_exit() -> None:
    c = client_running()
    assert c.receive(frame(EXIT)) == [EXIT]
    with pytest.raises(ProtocolError, match="done"):
        c.receive(frame(Output(1, b"late")))
    with pytest.raises(ProtocolError):
        c.receive(b"\x00")


def test_client_refuses_data_after_exit_in_the_same_chunk() -> None:
    c = client_running()
    with pytest.raises(ProtocolError, match="after the final message"):
        c.receive(frame(EXIT) + frame(Output(1, b"late")))
    c = client_running()
    with pytest.raises(ProtocolError, match="after the final message"):
        c.receive(frame(EXIT) + b"\x00\x00")  # even an incomplete frame


def test_client_refuses_data_after_problem() -> None:
    c = client_running()
    problem = Problem.from_error(LimitExceeded("slow"))
    assert c.receive(frame(problem)) == [problem]
    assert c.state is ClientState.DONE
    with pytest.raises(ProtocolError):
        c.receive(frame(EXIT))


@pytest.mark.parametrize("msg", [HELLO, LOAD, RELEASE, IDENTITY], ids=lambda m: m.TYPE)
def test_client_refuses_non_output_messages_while_running(msg: Message) -> None:
    with pytest.raises(ProtocolError, match=f"unexpected '{msg.TYPE}'"):
        client_running().receive(frame(msg))


def test_client_garbage_frame() -> None:
    with pytest.raises(ProtocolError):
        client_running().receive(encode_frame(b"\xff"))
    with pytest.raises(ProtocolError):
        client_awaiting_identity().receive(encode_frame(b"\xff"))


def test_keep_accepts_only_a_hello_first() -> None:
    for msg in (LOAD, IDENTITY, RELEASE, EXIT, Output(1, b""), Problem.from_error(ProtocolError("x"))):
        k = KeepSession()
        with pytest.raises(ProtocolError, match="expected hello"):
            k.receive_hello(frame(msg))
        assert k.state is KeepState.AWAIT_HELLO


def test_keep_hello_split_byte_by_byte() -> None:
    k = KeepSession()
    data = frame(HELLO)
    for i in range(len(data) - 1):
        assert k.receive_hello(data[i : i + 1]) is None
    assert k.receive_hello(data[-1:]) == HELLO
    assert k.state is KeepState.ATTESTING


@pytest.mark.parametrize(
    "extra",
    [b"\x16", frame(LOAD), frame(RELEASE), frame(HELLO)],
    ids=["tls-byte", "load", "release", "second-hello"],
)
def test_keep_hello_frame_must_come_alone(extra: bytes) -> None:
    k = KeepSession()
    with pytest.raises(ProtocolError, match="after hello"):
        k.receive_hello(frame(HELLO) + extra)
    k = KeepSession()
    data = frame(HELLO) + extra
    assert k.receive_hello(data[:5]) is None
    with pytest.raises(ProtocolError, match="after hello"):
        k.receive_hello(data[5:])


def test_keep_load_only_after_channel_ready() -> None:
    k = KeepSession()
    with pytest.raises(ProtocolMisuse):
        k.channel_ready()
    with pytest.raises(ProtocolMisuse, match="cannot receive the load request in state await-hello"):
        k.receive_load(frame(LOAD))
    k.receive_hello(frame(HELLO))
    with pytest.raises(ProtocolMisuse):
        k.receive_hello(frame(HELLO))
    with pytest.raises(ProtocolMisuse, match="cannot receive the load request in state attesting"):
        k.receive_load(frame(LOAD))
    k.channel_ready()
    with pytest.raises(ProtocolMisuse):
        k.channel_ready()
    data = frame(LOAD)
    assert k.receive_load(data[:100]) is None
    assert k.state is KeepState.AWAIT_LOAD
    assert k.receive_load(data[100:]) == LOAD
    assert k.state is KeepState.LOADING
    with pytest.raises(ProtocolMisuse, match="cannot receive the load request in state loading"):
        k.receive_load(frame(LOAD))


@pytest.mark.parametrize(
    "msg",
    [HELLO, RELEASE, IDENTITY, EXIT, Output(1, b""), Problem.from_error(ProtocolError("x"))],
    ids=lambda m: m.TYPE,
)
def test_keep_expects_a_load(msg: Message) -> None:
    k = keep_at(KeepState.AWAIT_LOAD)
    with pytest.raises(ProtocolError, match=f"expected load, got '{msg.TYPE}'"):
        k.receive_load(frame(msg))


@pytest.mark.parametrize(
    "msg",
    [HELLO, LOAD, IDENTITY, EXIT, Output(1, b""), Problem.from_error(ProtocolError("x"))],
    ids=lambda m: m.TYPE,
)
def test_keep_expects_a_release(msg: Message) -> None:
    k = keep_at(KeepState.AWAIT_RELEASE)
    with pytest.raises(ProtocolError, match=f"expected release, got '{msg.TYPE}'"):
        k.receive_release(frame(msg))


@pytest.mark.parametrize("extra", [b"\x00", frame(RELEASE), frame(LOAD)], ids=["byte", "release", "load"])
def test_keep_refuses_data_after_the_load(extra: bytes) -> None:
    k = keep_at(KeepState.AWAIT_LOAD)
    with pytest.raises(ProtocolError, match="after the load"):
        k.receive_load(frame(LOAD) + extra)
    k = keep_at(KeepState.AWAIT_LOAD)
    data = frame(LOAD) + extra
    assert k.receive_load(data[:7]) is None
    with pytest.raises(ProtocolError, match="after the load"):
        k.receive_load(data[7:])


def test_keep_refuses_the_release_before_it_sent_the_identity() -> None:
    k = keep_at(KeepState.LOADING)
    with pytest.raises(ProtocolMisuse, match="cannot receive the release in state loading"):
        k.receive_release(frame(RELEASE))
    with pytest.raises(ProtocolMisuse, match="cannot receive the release in state loading"):
        k.receive_release(b"\x00")
    assert k.state is KeepState.LOADING


@pytest.mark.parametrize("extra", [b"\x00", frame(RELEASE)], ids=["byte", "second-release"])
def test_keep_refuses_data_after_the_release(extra: bytes) -> None:
    k = keep_at(KeepState.AWAIT_RELEASE)
    with pytest.raises(ProtocolError, match="after the release"):
        k.receive_release(frame(RELEASE) + extra)
    k = keep_running()
    with pytest.raises(ProtocolMisuse, match="cannot receive the release in state running"):
        k.receive_release(extra)


def test_keep_release_split_byte_by_byte() -> None:
    k = keep_at(KeepState.AWAIT_RELEASE)
    data = frame(RELEASE)
    for i in range(len(data) - 1):
        assert k.receive_release(data[i : i + 1]) is None
    assert k.state is KeepState.AWAIT_RELEASE
    assert k.receive_release(data[-1:]) == RELEASE
    assert k.state is KeepState.RUNNING


@pytest.mark.parametrize(
    "stage",
    [s for s in KeepState if s is not KeepState.LOADING],
    ids=lambda s: s.value,
)
def test_keep_sends_the_identity_only_while_loading(stage: KeepState) -> None:
    k = keep_at(stage)
    with pytest.raises(ProtocolMisuse, match=f"cannot send the identity in state {stage.value}"):
        k.identity(IDENTITY)
    assert k.state is stage


def test_keep_identity_frame() -> None:
    k = keep_at(KeepState.LOADING)
    assert k.identity(IDENTITY) == frame(IDENTITY)
    with pytest.raises(ProtocolMisuse, match="cannot send the identity in state await-release"):
        k.identity(IDENTITY)  # only once


@pytest.mark.parametrize(
    "stage",
    [s for s in KeepState if s not in (KeepState.RUNNING, KeepState.RUNNING_STDIN, KeepState.DONE)],
    ids=lambda s: s.value,
)
def test_keep_output_and_exit_never_before_the_release(stage: KeepState) -> None:
    k = keep_at(stage)
    with pytest.raises(ProtocolMisuse, match="cannot send output"):
        k.output(1, b"x")
    with pytest.raises(ProtocolMisuse, match="cannot send exit"):
        k.exit(EXIT)
    assert k.state is stage


def test_keep_output_and_exit_only_while_running() -> None:
    k = keep_running()
    assert k.output(2, b"x") == frame(Output(2, b"x"))
    with pytest.raises(ProtocolError):
        k.output(3, b"x")
    assert k.exit(EXIT) == frame(EXIT)
    with pytest.raises(ProtocolMisuse):
        k.output(1, b"x")
    with pytest.raises(ProtocolMisuse):
        k.exit(EXIT)


@pytest.mark.parametrize("stage", [s for s in KeepState if s is not KeepState.DONE], ids=lambda s: s.value)
def test_keep_problem_allowed_until_done(stage: KeepState) -> None:
    k = keep_at(stage)
    data = k.problem(WorkloadTrapped("trap"))
    (payload,) = FrameDecoder().feed(data)
    assert decode(payload) == Problem.from_error(WorkloadTrapped("trap"))
    assert k.state is KeepState.DONE
    with pytest.raises(ProtocolMisuse, match="cannot send a problem in state done"):
        k.problem(WorkloadTrapped("again"))
    with pytest.raises(ProtocolMisuse, match="cannot send the identity"):
        k.identity(IDENTITY)


def test_keep_problem_after_exit_is_refused() -> None:
    k = keep_running()
    k.exit(EXIT)
    with pytest.raises(ProtocolMisuse, match="cannot send a problem in state done"):
        k.problem(LimitExceeded("late"))
    with pytest.raises(ProtocolMisuse):
        k.receive_release(b"\x00")
    with pytest.raises(ProtocolMisuse):
        k.receive_load(b"\x00")


# == local misuse vs the peer's violation ============================================================


def test_misuse_and_peer_violation_are_two_classes() -> None:
    """Our own bug is ProtocolMisuse (exit 1, internal error); only the
    peer's bytes are ProtocolError (exit 113). A peer that reports an
    internal error is still a ProtocolError to us."""
    assert not issubclass(ProtocolMisuse, ProtocolError)
    assert not issubclass(ProtocolError, ProtocolMisuse)
    assert issubclass(ProtocolMisuse, StockadeError)
    assert (ProtocolMisuse.exit_code, ProtocolError.exit_code) == (1, 113)
    assert ProtocolMisuse.problem_type == "internal-error"
    assert ProtocolMisuse not in ERROR_CLASSES
    assert error_class_for(ProtocolMisuse.problem_type) is ProtocolError
    c = client_awaiting_identity()
    with pytest.raises(ProtocolMisuse):
        c.release(RELEASE)  # our code's step out of order
    with pytest.raises(ProtocolError):
        c.receive(frame(EXIT))  # the Keep's bytes out of order


def _client_actions(c: ClientSession) -> dict[str, Callable[[], object]]:
    return {
        "send hello": lambda: c.hello(NONCE),
        "accept evidence": lambda: c.evidence_verified(*EVIDENCE),
        "send the load request": lambda: c.load(LOAD),
        "accept the workload identity": lambda: c.identity_verified(IDENTITY),
        "release secrets": lambda: c.release(RELEASE),
        "release secrets with a steward request": lambda: c.release(RELEASE_STEWARD),
        "send stdin": lambda: c.stdin(b"x"),
    }


def test_client_action_table_names_every_action() -> None:
    assert {action for _, action in CLIENT_ACTIONS} == set(_client_actions(ClientSession()))


@pytest.mark.parametrize("state", list(ClientState), ids=lambda s: s.value)
@pytest.mark.parametrize("action", list(_client_actions(ClientSession())))
def test_client_steps_outside_the_table_are_misuse(state: ClientState, action: str) -> None:
    c = _client_in(state)
    c.stdin_open = action == "send stdin"  # as after a release with stdin_stream: only the state decides
    if (state, action) in CLIENT_ACTIONS:
        if action == "accept the workload identity":
            c.receive(frame(IDENTITY))
        _client_actions(c)[action]()
        assert c.state is CLIENT_ACTIONS[state, action]
        return
    with pytest.raises(ProtocolMisuse, match=f"cannot {action} in state {state.value}"):
        _client_actions(c)[action]()
    assert c.state is state


def _keep_actions(k: KeepSession) -> dict[str, Callable[[], object]]:
    return {
        "receive the hello": lambda: k.receive_hello(frame(HELLO)),
        "open the TLS channel": k.channel_ready,
        "receive the load request": lambda: k.receive_load(frame(LOAD)),
        "send the identity": lambda: k.identity(IDENTITY),
        "receive the release": lambda: k.receive_release(frame(RELEASE)),
        "receive a release with a steward request": lambda: k.receive_release(frame(RELEASE_STEWARD)),
        "send the certificate": lambda: k.certificate(CERTIFICATE),
        "receive stdin": lambda: k.receive_stdin(frame(Stdin(data=b"x"))),
        "send output": lambda: k.output(1, b"x"),
        "send a net event": lambda: k.net(Net(event="listening", name="kv", detail="127.0.0.1:1")),
        "send exit": lambda: k.exit(EXIT),
        "send a problem": lambda: k.problem(WorkloadTrapped("trap")),
    }


def test_keep_action_table_names_every_action() -> None:
    assert {action for _, action in KEEP_ACTIONS} == set(_keep_actions(KeepSession()))


@pytest.mark.parametrize("state", list(KeepState), ids=lambda s: s.value)
@pytest.mark.parametrize("action", list(_keep_actions(KeepSession())))
def test_keep_steps_outside_the_table_are_misuse(state: KeepState, action: str) -> None:
    k = keep_at(state)
    if (state, action) in KEEP_ACTIONS:
        _keep_actions(k)[action]()
        assert k.state is KEEP_ACTIONS[state, action]
        return
    # Receiving is checked before the message is decoded: as "receive the
    # release", whatever the release turns out to ask.
    checked = "receive the release" if action.startswith("receive a release") else action
    with pytest.raises(ProtocolMisuse, match=f"cannot {checked} in state {state.value}"):
        _keep_actions(k)[action]()
    assert k.state is state


# == the steward request and the service certificate (issue 17) ======================================


def test_session_with_a_steward_request() -> None:
    """Release with a steward request: the Keep certifies, then sends the
    certificate before any output; the client takes the certificate, then
    output and exit."""
    c, k = client_identified(), keep_at(KeepState.AWAIT_RELEASE)
    assert k.receive_release(c.release(RELEASE_STEWARD)) == RELEASE_STEWARD
    assert (c.state, k.state) == (ClientState.AWAIT_CERTIFICATE, KeepState.CERTIFYING)
    with pytest.raises(ProtocolMisuse, match="cannot send output in state certifying"):
        k.output(1, b"too early")
    stream = k.certificate(CERTIFICATE) + k.output(1, b"out") + k.exit(EXIT)
    assert k.state is KeepState.DONE
    got = [m for i in range(len(stream)) for m in c.receive(stream[i : i + 1])]
    assert got == [CERTIFICATE, Output(1, b"out"), EXIT]
    assert c.state is ClientState.DONE


def test_release_without_a_steward_request_needs_no_certificate() -> None:
    k = keep_at(KeepState.AWAIT_RELEASE)
    k.receive_release(frame(RELEASE))
    assert k.state is KeepState.RUNNING
    with pytest.raises(ProtocolMisuse, match="cannot send the certificate in state running"):
        k.certificate(CERTIFICATE)


@pytest.mark.parametrize(
    "msg",
    [Output(1, b"early"), EXIT, IDENTITY, RELEASE],
    ids=["output", "exit", "identity", "release"],
)
def test_client_expects_the_certificate_first(msg: Message) -> None:
    c = _client_in(ClientState.AWAIT_CERTIFICATE)
    with pytest.raises(
        ProtocolError, match=f"Keep sent '{msg.TYPE}' where its service certificate was expected"
    ):
        c.receive(frame(msg))


def test_client_accepts_a_problem_instead_of_the_certificate() -> None:
    c = _client_in(ClientState.AWAIT_CERTIFICATE)
    problem = Problem.from_error(PolicyRejected("steward: package not allowed"))
    assert c.receive(frame(problem)) == [problem]
    assert c.state is ClientState.DONE
    with pytest.raises(ProtocolError):
        c.receive(frame(CERTIFICATE))


def test_client_refuses_a_certificate_it_did_not_ask_for() -> None:
    with pytest.raises(ProtocolError, match="unexpected 'certificate'"):
        client_running().receive(frame(CERTIFICATE))
    c = client_awaiting_identity()
    with pytest.raises(ProtocolError, match="'certificate' where its identity was expected"):
        c.receive(frame(CERTIFICATE))


def test_client_refuses_a_second_certificate() -> None:
    c = _client_in(ClientState.AWAIT_CERTIFICATE)
    with pytest.raises(ProtocolError, match="unexpected 'certificate'"):
        c.receive(frame(CERTIFICATE) + frame(CERTIFICATE))


STEWARD_URL_ERRORS = [
    pytest.param("http://steward.example", "over HTTPS only", id="http"),
    pytest.param("steward.example:8443", "over HTTPS only", id="no-scheme"),
    pytest.param("https://", "needs a host", id="no-host"),
    pytest.param("https://user@steward.example", "no user information", id="userinfo"),
    pytest.param("https://steward.example/?a=1", "no query or fragment", id="query"),
    pytest.param("https://steward.example/#x", "no query or fragment", id="fragment"),
    pytest.param("https://steward.example:99999", "not a valid URL", id="port-range"),
    pytest.param("https://steward.example:x", "not a valid URL", id="port-text"),
    pytest.param("https://steward.example:0", "port 0", id="port-0"),
    pytest.param("https://steward example", "printable ASCII without spaces", id="space"),
    pytest.param("https://st\u00e9ward.example", "printable ASCII", id="non-ascii"),
    pytest.param("https://s.example/\n", "printable ASCII", id="newline"),
    pytest.param("", "1 to 2048 characters", id="empty"),
    pytest.param("https://s.example/" + "p" * 2031, "1 to 2048 characters", id="2049"),
]


@pytest.mark.parametrize(("url", "error"), STEWARD_URL_ERRORS)
def test_steward_request_url_is_checked(url: str, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        StewardRequest(url=url, ca=b"\x30\x00")
    good = cbor2.loads(RELEASE_STEWARD.to_cbor())
    good["steward"]["url"] = url
    with pytest.raises(ProtocolError, match=error):
        decode(enc(good))


@pytest.mark.parametrize(
    ("ca", "error"),
    [
        pytest.param(b"", "1 to 16384 bytes", id="empty"),
        pytest.param(b"\x30" * 16385, "1 to 16384 bytes", id="too-long"),
        pytest.param(b"-----BEGIN CERTIFICATE-----", "no SEQUENCE tag", id="pem"),
    ],
)
def test_steward_request_ca_is_checked(ca: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=f"release steward ca: .*{error}"):
        StewardRequest(url="https://s.example", ca=ca)


def test_steward_request_fields_are_named_in_errors() -> None:
    good = cbor2.loads(RELEASE_STEWARD.to_cbor())
    for mutate, error in [
        (lambda m: m["steward"].pop("url"), "release steward: missing field 'url'"),
        (lambda m: m["steward"].pop("ca"), "release steward: missing field 'ca'"),
        (lambda m: m["steward"].update(log=b"x"), r"release steward: unknown field\(s\) \['log'\]"),
        (lambda m: m.update(steward="https://s.example"), "release: steward must be a map"),
        (lambda m: m["steward"].update(ca="0"), "'ca' has the wrong type"),
    ]:
        m = copy.deepcopy(good)
        mutate(m)
        with pytest.raises(ProtocolError, match=error):
            decode(enc(m))


CERTIFICATE_ERRORS = [
    pytest.param({"certificate": b""}, "certificate: must be 1 to 16384 bytes", id="cert-empty"),
    pytest.param({"certificate": b"\x02\x01"}, "no SEQUENCE tag", id="cert-not-der"),
    pytest.param({"chain": []}, "chain must hold 1 to 4", id="chain-empty"),
    pytest.param({"chain": [b"\x30"] * 5}, "chain must hold 1 to 4", id="chain-5"),
    pytest.param({"chain": [b"\x02"]}, "certificate chain: not a DER", id="chain-not-der"),
    pytest.param({"chain": ["0"]}, "chain and inclusion must hold byte strings", id="chain-text"),
    pytest.param({"log_index": -1}, "log_index must be an unsigned integer", id="index-negative"),
    pytest.param({"log_index": True}, "'log_index' must be an integer", id="index-bool"),
    pytest.param({"tree_head": b""}, "tree_head must be 1 to 4096 bytes", id="head-empty"),
    pytest.param({"tree_head": b"\x00" * 4097}, "tree_head must be 1 to 4096 bytes", id="head-long"),
    pytest.param({"inclusion": [b"\x00" * 31]}, "32 bytes", id="hash-31"),
    pytest.param({"inclusion": [b"\x00" * 32] * 129}, "longer than 128 hashes", id="proof-129"),
    pytest.param({"inclusion": b"\x00" * 32}, "'inclusion' has the wrong type", id="proof-bytes"),
    pytest.param({"chain": b"\x30"}, "'chain' has the wrong type", id="chain-bytes"),
    pytest.param({"extra": 1}, r"certificate: unknown field\(s\) \['extra'\]", id="extra"),
]


@pytest.mark.parametrize(("change", "error"), CERTIFICATE_ERRORS)
def test_certificate_message_is_checked(change: dict[str, Any], error: str) -> None:
    m = {**cbor2.loads(CERTIFICATE.to_cbor()), **change}
    with pytest.raises(ProtocolError, match=error):
        decode(enc(m))


@pytest.mark.parametrize("field", ["certificate", "chain", "log_index", "tree_head", "inclusion"])
def test_certificate_message_needs_every_field(field: str) -> None:
    m = cbor2.loads(CERTIFICATE.to_cbor())
    del m[field]
    with pytest.raises(ProtocolError, match=f"certificate: missing field '{field}'"):
        decode(enc(m))


def test_release_without_steward_encodes_as_before() -> None:
    """No steward request: no ``steward`` key (the release of a deploy
    without --steward is byte for byte what it was)."""
    assert "steward" not in cbor2.loads(RELEASE.to_cbor())
    assert decode(RELEASE.to_cbor()) == RELEASE


def test_release_repr_names_the_steward_not_the_ca() -> None:
    text = repr(RELEASE_STEWARD)
    assert "https://127.0.0.1:8443" in text and "s3cr3t" not in text


def test_stdin_room_counts_the_steward_request() -> None:
    secrets = (("k", b"v"),)
    plain = release_stdin_room(secrets, 10_000)
    with_steward = release_stdin_room(secrets, 10_000, RELEASE_STEWARD.steward)
    assert plain - with_steward >= len(RELEASE_STEWARD.steward.ca)  # type: ignore[union-attr]
    release = Release(secrets=secrets, stdin=b"x" * with_steward, steward=RELEASE_STEWARD.steward)
    assert len(release.to_cbor()) <= 10_000


def test_evidence_verified_must_bind_this_sessions_nonce() -> None:
    """The evidence accepted must be the evidence of this session: its report
    data binds the hello's nonce and the TLS key it came with."""
    other_nonce = bytes(32)
    wrong = [
        (report_data_for(other_nonce, TLS_SPKI), TLS_SPKI),  # another session's evidence
        (report_data_for(NONCE, TLS_SPKI), b"another key"),  # the key of another channel
        (bytes(64), TLS_SPKI),
    ]
    for report_data, spki in wrong:
        c = _client_in(ClientState.AWAIT_EVIDENCE)
        with pytest.raises(ProtocolMisuse, match="does not bind this session's hello nonce"):
            c.evidence_verified(report_data, spki)
        assert c.state is ClientState.AWAIT_EVIDENCE
        with pytest.raises(ProtocolMisuse, match="send the load request"):
            c.load(LOAD)
    c = _client_in(ClientState.AWAIT_EVIDENCE)
    c.evidence_verified(*EVIDENCE)
    assert c.state is ClientState.VERIFIED


def test_identity_verified_must_be_the_identity_received() -> None:
    other = dataclasses.replace(IDENTITY, evidence=IDENTITY.evidence + b"x")
    c = client_awaiting_identity()
    assert c.receive(frame(IDENTITY)) == [IDENTITY]
    with pytest.raises(ProtocolMisuse, match="not the one the Keep sent"):
        c.identity_verified(other)
    assert c.state is ClientState.AWAIT_IDENTITY
    with pytest.raises(ProtocolMisuse, match="release secrets"):
        c.release(RELEASE)
    received = c.receive(b"")
    assert received == []
    c.identity_verified(IDENTITY)  # an equal decoded copy is the same message
    assert c.state is ClientState.IDENTIFIED


# == binding =========================================================================================

SPKI = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004") + bytes(range(64))


def test_report_data_formula() -> None:
    rd = report_data_for(NONCE, SPKI)
    assert len(rd) == 64
    assert DOMAIN == b"stockade/keep-binding/v1\x00"
    assert rd == hashlib.sha512(DOMAIN + NONCE + hashlib.sha256(SPKI).digest()).digest()
    assert report_data_for(NONCE, SPKI) == rd


def test_report_data_depends_on_every_nonce_byte() -> None:
    base = report_data_for(NONCE, SPKI)
    seen = {base}
    for i in range(NONCE_SIZE):
        for bit in (0x01, 0x80):
            nonce = bytearray(NONCE)
            nonce[i] ^= bit
            rd = report_data_for(bytes(nonce), SPKI)
            assert rd not in seen
            seen.add(rd)


def test_report_data_depends_on_every_spki_byte() -> None:
    base = report_data_for(NONCE, SPKI)
    seen = {base}
    for i in range(len(SPKI)):
        spki = bytearray(SPKI)
        spki[i] ^= 0x01
        rd = report_data_for(NONCE, bytes(spki))
        assert rd not in seen
        seen.add(rd)
    for variant in (SPKI[:-1], SPKI + b"\x00", b"", b"\x00" + SPKI):
        assert report_data_for(NONCE, variant) not in seen


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=200), st.data())
def test_report_data_bit_flip_property(nonce: bytes, spki: bytes, data: st.DataObject) -> None:
    joined = bytearray(nonce + spki)
    assume(joined)
    pos = data.draw(st.integers(0, len(joined) - 1))
    joined[pos] ^= 1 << data.draw(st.integers(0, 7))
    assert report_data_for(bytes(joined[:32]), bytes(joined[32:])) != report_data_for(nonce, spki)


@pytest.mark.parametrize("size", [0, 1, 16, 31, 33, 48, 64])
def test_report_data_wrong_nonce_size(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        report_data_for(b"\x00" * size, SPKI)


# == launch digest ===================================================================================
# The measured set itself (module resolution, .pth refusal, tampered copies): tests/test_measurement.py
# and tests/adversarial/test_measurement_tamper.py.


def _d(content: bytes) -> bytes:
    return hashlib.sha384(content).digest()


FILES = [
    ("module:stockade.keep\x00source", _d(b"")),
    ("module:stockade.keep.main\x00source", _d(b"print(1)\n")),
    ("module:sys\x00builtin", b""),
    ("interpreter:executable\x00executable", _d(b"ELF")),
]


def test_launch_digest_is_sha384_sized_and_deterministic() -> None:
    d = launch_digest(FILES)
    assert len(d) == 48
    assert launch_digest(list(FILES)) == d


def test_launch_digest_is_order_independent() -> None:
    d = launch_digest(FILES)
    rng = random.Random(7)
    for _ in range(10):
        files = FILES[:]
        rng.shuffle(files)
        assert launch_digest(iter(files)) == d


def _swap(label: str, new: tuple[str, bytes]) -> list[tuple[str, bytes]]:
    return [new if n == label else (n, c) for n, c in FILES]


@pytest.mark.parametrize(
    "files",
    [
        _swap(
            "module:stockade.keep.main\x00source", ("module:stockade.keep.main\x00source", _d(b"print(2)\n"))
        ),
        _swap(
            "module:stockade.keep.main\x00source", ("module:stockade.keep.Main\x00source", _d(b"print(1)\n"))
        ),
        _swap("module:sys\x00builtin", ("module:sys\x00source", _d(b""))),
        _swap("module:sys\x00builtin", ("module:sys\x00builtin", b"\x00")),
        FILES[:-1],
        [*FILES, ("module:evil\x00absent", b"")],
    ],
    ids=["content", "name", "kind", "empty-vs-byte", "file-removed", "entry-added"],
)
def test_launch_digest_changes(files: list[tuple[str, bytes]]) -> None:
    assert launch_digest(files) != launch_digest(FILES)


def test_launch_digest_label_digest_boundary() -> None:
    assert launch_digest([("ab", b"c")]) != launch_digest([("a", b"bc")])


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=12), st.binary(max_size=48), max_size=6),
    st.randoms(use_true_random=False),
)
def test_launch_digest_permutation_property(files: dict[str, bytes], rng: random.Random) -> None:
    items = list(files.items())
    shuffled = items[:]
    rng.shuffle(shuffled)
    assert launch_digest(items) == launch_digest(shuffled)


def test_installed_keep_measurement_is_stable() -> None:
    assert keep_measurement() == keep_measurement()


# == DER helpers =====================================================================================


@pytest.mark.parametrize(
    ("value", "encoding"),
    [
        (0, "020100"),
        (1, "020101"),
        (127, "02017f"),
        (128, "02020080"),
        (255, "020200ff"),
        (256, "02020100"),
        (32767, "02027fff"),
        (32768, "0203008000"),
        ((1 << 64) - 1, "020900ffffffffffffffff"),
    ],
)
def test_uint_encoding(value: int, encoding: str) -> None:
    assert der.uint(value).hex() == encoding
    assert der.read_uint(bytes.fromhex(encoding), "t") == value


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=1 << 2000))
def test_uint_round_trip(value: int) -> None:
    assert der.read_uint(der.uint(value), "t") == value


@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=300))
def test_ia5_round_trip(text: str) -> None:
    assert der.read_ia5(der.ia5(text), "t") == text


@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 20])
def test_octets_round_trip_at_length_boundaries(size: int) -> None:
    body = bytes([size & 0xFF]) * size
    encoded = der.octets(body)
    assert der.read_octets(encoded, "t") == body
    header = encoded[: len(encoded) - size]
    if size < 128:
        assert header == bytes([0x04, size])
    else:
        n = (size.bit_length() + 7) // 8
        assert header == bytes([0x04, 0x80 | n]) + size.to_bytes(n, "big")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_octets_round_trip(body: bytes) -> None:
    assert der.read_octets(der.octets(body), "t") == body


@pytest.mark.parametrize(
    "hexdata",
    [
        "",  # nothing
        "02",  # no length
        "0200",  # empty INTEGER
        "020180",  # negative
        "0201ff",  # negative
        "02020001",  # non-minimal: leading zero not needed
        "0203000080",  # non-minimal: two leading zeros
        "0202ff80",  # non-minimal negative
        "02810105",  # long-form length for a short value
        "0282000105",  # long form with a leading zero
        "028005",  # indefinite length
        "02850000000001" + "05",  # more than 4 length bytes
        "0281",  # long form without its length bytes
        "02020105" + "00",  # trailing byte
        "020201",  # truncated value
        "040105",  # wrong tag (OCTET STRING)
        "1f0205",  # high-tag-number form
        "220105",  # constructed form
    ],
)
def test_read_uint_rejects(hexdata: str) -> None:
    with pytest.raises(MalformedEvidence):
        der.read_uint(bytes.fromhex(hexdata), "t")


@pytest.mark.parametrize(
    "hexdata",
    [
        "",
        "04",
        "048105" + "00" * 5,  # long form for length 5
        "0481" + "7f" + "00" * 127,  # long form for length 127
        "048200" + "80" + "00" * 128,  # long form with leading zero
        "048000",  # indefinite
        "0402aa",  # truncated
        "0401aabb",  # trailing
        "0401",  # missing value
        "2400",  # constructed OCTET STRING
        "030100",  # BIT STRING
        "0485" + "0000000001" + "00",  # 5 length bytes
    ],
)
def test_read_octets_rejects(hexdata: str) -> None:
    with pytest.raises(MalformedEvidence):
        der.read_octets(bytes.fromhex(hexdata), "t")


def test_read_ia5_rejects() -> None:
    with pytest.raises(MalformedEvidence, match="non-ASCII"):
        der.read_ia5(b"\x16\x02a\x80", "t")
    with pytest.raises(MalformedEvidence):
        der.read_ia5(b"\x0c\x01a", "t")  # UTF8String, not IA5String
    with pytest.raises(MalformedEvidence):
        der.read_ia5(b"\x16\x02a", "t")


def test_der_writers_reject_what_they_cannot_encode() -> None:
    with pytest.raises(ValueError):
        der.uint(-1)
    with pytest.raises(UnicodeEncodeError):
        der.ia5("caf\u00e9")


def test_read_errors_name_the_context() -> None:
    with pytest.raises(MalformedEvidence, match=r"^vcek bootloader: "):
        der.read_uint(b"\x02\x00", "vcek bootloader")


# == evidence bundle =================================================================================


@pytest.mark.parametrize(
    ("name", "bundle"), REPRESENTATIVE_BUNDLES, ids=[n for n, _ in REPRESENTATIVE_BUNDLES]
)
def test_bundle_round_trips_through_the_extension(name: str, bundle: EvidenceBundle) -> None:
    assert EvidenceBundle.from_cbor(bundle.to_cbor()) == bundle
    assert bundle_from_extension(extension_value(bundle)) == bundle


def test_bundle_rejects_bool_version_and_cmw_profile_violations() -> None:
    m = cbor2.loads(REPRESENTATIVE_BUNDLES[0][1].to_cbor())
    for v in (True, 1.0, 2):
        with pytest.raises(MalformedEvidence, match="version"):
            EvidenceBundle.from_cbor(enc({**m, "v": v}))
    cmw = bytes(cbor2.dumps([MEDIA_TYPE, enc(m)]))
    for bad in (cmw + b"\x00", _tag(55799, cmw), b"\x9f" + cmw[1:] + b"\xff"):
        with pytest.raises(MalformedEvidence):
            bundle_from_extension(der.octets(bad))
    assert bundle_from_extension(der.octets(cmw)) == REPRESENTATIVE_BUNDLES[0][1]


def test_bundle_cert_lookup() -> None:
    bundle = REPRESENTATIVE_BUNDLES[0][1]
    assert bundle.cert("ask") == b"S"
    assert bundle.cert("missing") is None


# == property tests ==================================================================================


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with a few random bit flips, cuts, insertions and deletions."""
    b = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(b) - 1)))
        if op == "flip" and b:
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del b[pos:]
        elif op == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and b:
            del b[pos]
    return bytes(b)


VALID_BLOBS = [m.to_cbor() for _, m in REPRESENTATIVE if len(m.to_cbor()) < 4000]
fuzz_inputs = st.one_of(
    st.binary(max_size=300),
    cbor_items,
    mutated(st.sampled_from(VALID_BLOBS)),
    mutated(messages.map(lambda m: m.to_cbor())),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzz_inputs)
def test_decode_raises_only_stockade_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=10), st.integers(0, 100))
def test_frame_decoder_raises_only_protocol_errors(chunks: list[bytes], max_frame: int) -> None:
    dec = FrameDecoder(max_frame=max_frame)
    try:
        for chunk in chunks:
            for payload in dec.feed(chunk):
                assert len(payload) <= max_frame
    except ProtocolError:
        pass


bundle_inputs = st.one_of(
    st.binary(max_size=300),
    cbor_items,
    mutated(bundles.map(lambda b: b.to_cbor())),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bundle_inputs)
def test_bundle_from_cbor_raises_only_malformed_evidence(data: bytes) -> None:
    with contextlib.suppress(MalformedEvidence):
        EvidenceBundle.from_cbor(data)


extension_inputs = st.one_of(
    st.binary(max_size=300),
    cbor_items.map(der.octets),
    mutated(bundles.map(extension_value)),
    mutated(bundles.map(lambda b: b.to_cbor())).map(
        lambda p: der.octets(bytes(cbor2.dumps([MEDIA_TYPE, p])))
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extension_inputs)
def test_bundle_from_extension_raises_only_malformed_evidence(data: bytes) -> None:
    with contextlib.suppress(MalformedEvidence):
        bundle_from_extension(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_der_readers_raise_only_malformed_evidence(data: bytes) -> None:
    for reader in (der.read_uint, der.read_ia5, der.read_octets):
        with contextlib.suppress(MalformedEvidence):
            reader(data, "fuzz")


@settings(max_examples=200, deadline=None)
@given(st.one_of(hellos, loads, identities, releases, outputs, exits, problems))
def test_round_trip_generated_messages(msg: Message) -> None:
    assert decode(msg.to_cbor()) == msg
    assert decode(msg.to_cbor()).to_cbor() == msg.to_cbor()


@settings(max_examples=100, deadline=None)
@given(bundles)
def test_round_trip_generated_bundles(bundle: EvidenceBundle) -> None:
    assert EvidenceBundle.from_cbor(bundle.to_cbor()) == bundle
    assert bundle_from_extension(extension_value(bundle)) == bundle


@settings(max_examples=100, deadline=None)
@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_framed_message_stream_round_trip(msgs: list[Message], data: st.DataObject) -> None:
    stream = b"".join(frame(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = FrameDecoder()
    got = [
        decode(p)
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)
        for p in dec.feed(stream[a:b])
    ]
    assert got == msgs


def test_expect_refuses_a_signer_listed_twice() -> None:
    key = b"\x01" * 32
    with pytest.raises(ProtocolError, match="a signer is listed twice"):
        Expect(signers=(key, key), min_signatures=2)


def test_load_staged_must_be_a_boolean() -> None:
    with pytest.raises(ProtocolError, match="staged must be a boolean"):
        Load(package=None, staged=1, config=Config(), nonce=b"\x00" * 32)  # type: ignore[arg-type]


def test_identity_refuses_too_many_events_when_built() -> None:
    event = Event("file", "f", b"\x00" * 32)
    with pytest.raises(ProtocolError, match=f"more than {MAX_EVENTS} events"):
        Identity(evidence=b"", events=(event,) * (MAX_EVENTS + 1))


def test_file_entry_error_names_the_file_not_a_workload() -> None:
    with pytest.raises(ProtocolError, match=r"^file: each file must be a map"):
        Config.from_map({"args": [], "env": {}, "files": ["a"], "limits": Limits().to_map()})
