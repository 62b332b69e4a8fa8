"""The Keep's event log (stockade.binding.eventlog) and the identity binding
(stockade.binding.reportdata.identity_report_data).

The expected registers and report data are computed here from the formulas
in docs/protocol.cddl with hashlib and cbor2 (and, for one event, with CBOR
bytes written out by hand), never with ``extend`` or ``replay``, so that a
change to the construction cannot go unnoticed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.binding.eventlog import (
    INITIAL_REGISTER,
    KINDS,
    MAX_EVENTS,
    REGISTER_SIZE,
    Event,
    EventLog,
    events_from_list,
    extend,
    replay,
    sha256,
)
from stockade.binding.reportdata import (
    DOMAIN,
    IDENTITY_DOMAIN,
    NONCE_SIZE,
    identity_report_data,
    report_data_for,
)
from stockade.errors import ProtocolError
from wire_strategies import events as event_strategy

D = [bytes([i]) * 32 for i in range(8)]
LOG = [
    Event("runtime", "stockade-keep 0.1.0; wasmtime 50.0.1", D[1]),
    Event("package", "hello 1.0.0", D[2]),
    Event("signer", "release", D[3]),
    Event("entry", "main.wasm", D[4]),
    Event("file", "data/a.txt", D[5]),
    Event("file", "data/b.txt", D[6]),
    Event("config", "deploy", D[7]),
]


def reference_register(items: list[tuple[str, str, bytes]]) -> bytes:
    """register_i = SHA-256(register_{i-1} || SHA-256(CBOR([kind, name, digest])))."""
    register = bytes(32)
    for item in items:
        event_hash = hashlib.sha256(cbor2.dumps(list(item), canonical=True)).digest()
        register = hashlib.sha256(register + event_hash).digest()
    return register


def as_items(events: list[Event]) -> list[tuple[str, str, bytes]]:
    return [(e.kind, e.name, e.digest) for e in events]


def measured(events: list[Event]) -> EventLog:
    log = EventLog()
    for e in events:
        log.measure(e.kind, e.name, e.digest)
    return log


# == the register ====================================================================================


def test_empty_log_is_the_zero_register() -> None:
    assert REGISTER_SIZE == 32
    assert bytes(32) == INITIAL_REGISTER
    log = EventLog()
    assert log.register == INITIAL_REGISTER
    assert log.events == ()
    assert replay([]) == INITIAL_REGISTER


def test_replaying_the_log_reproduces_the_register() -> None:
    log = measured(LOG)
    assert log.events == tuple(LOG)
    assert replay(log.events) == log.register
    assert replay(iter(LOG)) == log.register  # any iterable
    assert log.register != INITIAL_REGISTER
    # every prefix too: the register after i events is the replay of those i
    for i in range(len(LOG) + 1):
        assert replay(LOG[:i]) == measured(LOG[:i]).register


def test_log_events_are_a_snapshot() -> None:
    log = measured(LOG[:2])
    snapshot = log.events
    log.measure("file", "late", D[0])
    assert len(snapshot) == 2
    assert len(log.events) == 3
    assert replay(snapshot) != log.register


def test_register_known_answer_independent_of_extend() -> None:
    assert measured(LOG).register == reference_register(as_items(LOG))
    assert replay(LOG) == reference_register(as_items(LOG))


def test_event_encoding_known_answer_written_by_hand() -> None:
    # [ "entry", "main.wasm", h'0404...04' ] in deterministic CBOR
    event = Event("entry", "main.wasm", D[4])
    expected = b"\x83" + b"\x65entry" + b"\x69main.wasm" + b"\x58\x20" + D[4]
    assert event.encoded() == expected
    one = hashlib.sha256(bytes(32) + hashlib.sha256(expected).digest()).digest()
    assert extend(INITIAL_REGISTER, event) == one
    assert replay([event]) == one
    # long names use the longer text heads
    long_name = Event("file", "n" * 300, D[5])
    assert long_name.encoded() == b"\x83\x64file\x79\x01\x2c" + b"n" * 300 + b"\x58\x20" + D[5]


def _head(major: int, n: int) -> bytes:
    """A CBOR head in its shortest form (RFC 8949 section 3), written out by hand."""
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError(n)


def _event_cbor_by_hand(kind: str, name: str, digest: bytes) -> bytes:
    k, n = kind.encode(), name.encode()
    return _head(4, 3) + _head(3, len(k)) + k + _head(3, len(n)) + n + _head(2, len(digest)) + digest


#: The register of LOG (computed once with _event_cbor_by_hand and hashlib;
#: pinned so that a change to the formula or the encoding is noticed).
LOG_REGISTER = "0f2c4bbb2930d7e8dfceb34c244beca9d5e75bc63db8cad9c82a6d6b64658dcc"


def test_register_known_answer_pinned() -> None:
    register = bytes(32)
    for e in LOG:
        register = hashlib.sha256(
            register + hashlib.sha256(_event_cbor_by_hand(e.kind, e.name, e.digest)).digest()
        ).digest()
    assert register.hex() == LOG_REGISTER
    assert reference_register(as_items(LOG)).hex() == LOG_REGISTER
    assert replay(LOG).hex() == LOG_REGISTER
    assert measured(LOG).register.hex() == LOG_REGISTER
    for e in [*LOG, Event("file", "\u00e9" * 200, D[0]), Event("file", "n" * 4096, D[0])]:
        assert e.encoded() == _event_cbor_by_hand(e.kind, e.name, e.digest)


def test_sha256_helper() -> None:
    assert sha256(b"abc") == hashlib.sha256(b"abc").digest()
    assert sha256(b"").hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _mutations() -> list[Any]:
    cases: list[Any] = []
    for i in range(len(LOG)):
        cases.append(pytest.param([e for j, e in enumerate(LOG) if j != i], id=f"remove-{i}"))
    for i in range(len(LOG) + 1):
        cases.append(pytest.param([*LOG[:i], Event("file", "extra", D[0]), *LOG[i:]], id=f"add-at-{i}"))
    cases.append(pytest.param([*LOG, LOG[-1]], id="duplicate-last"))
    for i, e in enumerate(LOG):
        other_kind = next(k for k in KINDS if k != e.kind)
        cases.append(
            pytest.param([*LOG[:i], dataclasses.replace(e, kind=other_kind), *LOG[i + 1 :]], id=f"kind-{i}")
        )
        cases.append(
            pytest.param([*LOG[:i], dataclasses.replace(e, name=e.name + "x"), *LOG[i + 1 :]], id=f"name-{i}")
        )
        flipped = bytes([e.digest[0] ^ 1]) + e.digest[1:]
        cases.append(
            pytest.param([*LOG[:i], dataclasses.replace(e, digest=flipped), *LOG[i + 1 :]], id=f"digest-{i}")
        )
    for i in range(len(LOG) - 1):
        swapped = [*LOG]
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
        cases.append(pytest.param(swapped, id=f"swap-{i}-{i + 1}"))
    cases.append(pytest.param(LOG[::-1], id="reversed"))
    # two events with the same kind: only the order of their names and digests differs
    files_swapped = [*LOG[:4], LOG[5], LOG[4], LOG[6]]
    cases.append(pytest.param(files_swapped, id="swap-files"))
    # moving bytes between the name and the digest is not the same event
    cases.append(
        pytest.param(
            [*LOG[:3], Event("entry", "main.wasm\x04", D[4][:31] + b"\x00"), *LOG[4:]],
            id="name-digest-boundary",
        )
    )
    return cases


@pytest.mark.parametrize("events", _mutations())
def test_a_changed_log_does_not_reproduce_the_register(events: list[Event]) -> None:
    register = measured(LOG).register
    assert events != LOG
    assert replay(events) != register
    assert reference_register(as_items(events)) == replay(events)


@settings(max_examples=150, deadline=None)
@given(st.lists(event_strategy, max_size=8), st.data())
def test_replay_property(events: list[Event], data: st.DataObject) -> None:
    log = measured(events)
    assert replay(log.events) == log.register == reference_register(as_items(events))
    if not events:
        return
    i = data.draw(st.integers(0, len(events) - 1))
    assert replay(events[:i] + events[i + 1 :]) != log.register
    j = data.draw(st.integers(0, len(events) - 1))
    if events[i] != events[j]:
        swapped = [*events]
        swapped[i], swapped[j] = swapped[j], swapped[i]
        assert replay(swapped) != log.register


# == event validation ================================================================================


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_accepted(kind: str) -> None:
    assert Event(kind, "", D[0]).kind == kind
    assert set(KINDS) == {"runtime", "package", "signer", "entry", "file", "config"}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"kind": "secret"}, "unknown event kind 'secret'"),
        ({"kind": "File"}, "unknown event kind 'File'"),
        ({"kind": ""}, "unknown event kind ''"),
        ({"kind": b"file"}, "unknown event kind b'file'"),
        ({"kind": 1}, "unknown event kind 1"),
        ({"name": b"a"}, "at most 4096 characters"),
        ({"name": None}, "at most 4096 characters"),
        ({"name": "n" * 4097}, "at most 4096 characters"),
        ({"digest": b""}, "needs a 32-byte digest"),
        ({"digest": bytes(31)}, "needs a 32-byte digest"),
        ({"digest": bytes(33)}, "needs a 32-byte digest"),
        ({"digest": bytes(64)}, "needs a 32-byte digest"),
        ({"digest": "x" * 32}, "needs a 32-byte digest"),
        ({"digest": bytearray(32)}, "needs a 32-byte digest"),
    ],
)
def test_event_validation(kwargs: dict[str, Any], error: str) -> None:
    fields: dict[str, Any] = {"kind": "file", "name": "a", "digest": D[0], **kwargs}
    with pytest.raises(ProtocolError, match=f"^event log: .*{error}"):
        Event(**fields)


def test_event_name_limit_counts_characters() -> None:
    assert Event("file", "n" * 4096, D[0]).name == "n" * 4096
    assert Event("file", "\u00e9" * 4096, D[0]).name == "\u00e9" * 4096  # 8192 UTF-8 bytes
    with pytest.raises(ProtocolError, match="4096"):
        Event("file", "\u00e9" * 4097, D[0])


def test_the_digest_error_names_the_event() -> None:
    with pytest.raises(ProtocolError, match=r"file event 'data/a\.txt' needs a 32-byte digest"):
        Event("file", "data/a.txt", bytes(31))


def test_measure_validates_too() -> None:
    log = EventLog()
    with pytest.raises(ProtocolError, match="unknown event kind"):
        log.measure("secret", "x", D[0])
    with pytest.raises(ProtocolError, match="32-byte digest"):
        log.measure("file", "x", b"")
    assert log.events == ()
    assert log.register == INITIAL_REGISTER  # a refused event is not measured


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, "each event must be an array"),
        ("file", "each event must be an array"),
        (("file", "a", bytes(32)), "each event must be an array"),  # a tuple is no CBOR array
        ({"kind": "file"}, "each event must be an array"),
        ([], "each event must be an array"),
        (["file", "a"], "each event must be an array"),
        (["file", "a", bytes(32), b""], "each event must be an array"),
        ([b"file", "a", bytes(32)], r"an event is \[text, text, bytes\]"),
        (["file", b"a", bytes(32)], r"an event is \[text, text, bytes\]"),
        (["file", 1, bytes(32)], r"an event is \[text, text, bytes\]"),
        (["file", "a", "x" * 32], r"an event is \[text, text, bytes\]"),
        (["file", "a", None], r"an event is \[text, text, bytes\]"),
        (["nope", "a", bytes(32)], "unknown event kind 'nope'"),
        (["file", "a", bytes(31)], "needs a 32-byte digest"),
    ],
)
def test_event_from_list_errors(value: Any, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        Event.from_list(value)


def test_event_list_round_trip() -> None:
    for e in LOG:
        assert Event.from_list(e.to_list()) == e
        assert Event.from_list(cbor2.loads(e.encoded())) == e
    assert events_from_list([e.to_list() for e in LOG]) == tuple(LOG)
    assert events_from_list([]) == ()


@pytest.mark.parametrize("value", [None, (), {}, "events", b""], ids=repr)
def test_events_from_list_needs_an_array(value: Any) -> None:
    with pytest.raises(ProtocolError, match="events must be an array"):
        events_from_list(value)


def test_events_from_list_bounds_the_count_before_parsing() -> None:
    with pytest.raises(ProtocolError, match=f"more than {MAX_EVENTS} events"):
        events_from_list([None] * (MAX_EVENTS + 1))  # refused before any element is looked at
    with pytest.raises(ProtocolError, match="each event must be an array"):
        events_from_list([None] * MAX_EVENTS)  # at the limit, the elements are checked
    assert len(events_from_list([["file", "", D[0]]] * MAX_EVENTS)) == MAX_EVENTS


def test_one_bad_event_fails_the_list() -> None:
    items = [e.to_list() for e in LOG]
    items[3] = ["entry", "main.wasm", b"short"]
    with pytest.raises(ProtocolError, match=r"entry event 'main\.wasm' needs a 32-byte digest"):
        events_from_list(items)


# == identity binding ================================================================================

NONCE = bytes(range(32))
SPKI = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004") + bytes(range(64))
REGISTER = reference_register(as_items(LOG))


#: identity_report_data(NONCE, SPKI, REGISTER), computed once with hashlib from the formula.
IDENTITY_RD = (
    "8298c68deba9d2e74b297820fdc8f24addc91a727a949bc2be464b0384dae68c"
    "cfc4e43b72d930b303c35766b917261319a5ea48ad4a898803e208af7e40e9d5"
)


def test_identity_report_data_known_answer() -> None:
    assert IDENTITY_DOMAIN == b"stockade/workload-identity/v1\x00"
    assert REGISTER.hex() == LOG_REGISTER
    rd = identity_report_data(NONCE, SPKI, REGISTER)
    assert len(rd) == 64
    expected = hashlib.sha512(
        b"stockade/workload-identity/v1\x00" + NONCE + hashlib.sha256(SPKI).digest() + REGISTER
    ).digest()
    assert rd == expected
    assert rd.hex() == IDENTITY_RD
    assert identity_report_data(NONCE, SPKI, REGISTER) == rd


def test_identity_binding_is_not_the_session_binding() -> None:
    # domain separation: the first report's data never verifies as the second's
    assert DOMAIN != IDENTITY_DOMAIN
    assert identity_report_data(NONCE, SPKI, INITIAL_REGISTER) != report_data_for(NONCE, SPKI)
    rd = report_data_for(NONCE, SPKI)
    assert rd not in {identity_report_data(NONCE, SPKI, r) for r in (INITIAL_REGISTER, REGISTER)}


@pytest.mark.parametrize("which", ["nonce", "spki", "register"])
def test_identity_report_data_depends_on_every_byte_of_every_input(which: str) -> None:
    inputs = {"nonce": NONCE, "spki": SPKI, "register": REGISTER}
    base = identity_report_data(NONCE, SPKI, REGISTER)
    seen = {base}
    for i in range(len(inputs[which])):
        for bit in (0x01, 0x80):
            changed = bytearray(inputs[which])
            changed[i] ^= bit
            args = {**inputs, which: bytes(changed)}
            rd = identity_report_data(args["nonce"], args["spki"], args["register"])
            assert rd not in seen, (which, i, bit)
            seen.add(rd)


def test_identity_report_data_depends_on_the_whole_spki() -> None:
    base = identity_report_data(NONCE, SPKI, REGISTER)
    for spki in (SPKI[:-1], SPKI + b"\x00", b"", b"\x00" + SPKI):
        assert identity_report_data(NONCE, spki, REGISTER) != base


def test_identity_report_data_binds_the_event_log() -> None:
    base = identity_report_data(NONCE, SPKI, replay(LOG))
    assert identity_report_data(NONCE, SPKI, replay(LOG[:-1])) != base
    assert identity_report_data(NONCE, SPKI, replay(LOG[::-1])) != base
    assert identity_report_data(NONCE, SPKI, measured(LOG).register) == base


@pytest.mark.parametrize("size", [0, 1, 16, 31, 33, 64])
def test_identity_report_data_wrong_nonce_size(size: int) -> None:
    assert NONCE_SIZE == 32
    with pytest.raises(ValueError, match=f"nonce must be 32 bytes, got {size}"):
        identity_report_data(bytes(size), SPKI, REGISTER)


@pytest.mark.parametrize("size", [0, 1, 31, 33, 48, 64])
def test_identity_report_data_wrong_register_size(size: int) -> None:
    with pytest.raises(ValueError, match=f"register must be 32 bytes, got {size}"):
        identity_report_data(NONCE, SPKI, bytes(size))


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    st.binary(max_size=120),
    st.binary(min_size=32, max_size=32),
    st.data(),
)
def test_identity_report_data_bit_flip_property(
    nonce: bytes, spki: bytes, register: bytes, data: st.DataObject
) -> None:
    joined = bytearray(nonce + register + spki)
    pos = data.draw(st.integers(0, len(joined) - 1))
    joined[pos] ^= 1 << data.draw(st.integers(0, 7))
    changed = identity_report_data(bytes(joined[:32]), bytes(joined[64:]), bytes(joined[32:64]))
    assert changed != identity_report_data(nonce, spki, register)
