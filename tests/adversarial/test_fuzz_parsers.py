"""Property fuzzing of the parsers that read host-controlled bytes (issue 13):
arbitrary and mutated-valid inputs give a value or a StockadeError of the
parser's class, never any other exception.

What exists elsewhere and is not repeated here: wire ``decode`` of random
and mutated messages, ``FrameDecoder``, ``EvidenceBundle`` and the TLS
extension, the DER readers (tests/test_wire.py); the SNP report parser
(tests/test_snp_properties.py); Intel quotes, bodies, PCK extensions,
signed JSON bodies (tests/test_intel_properties.py). Added here: the package
parser (the Keep parses host-staged packages), the SNP certificate table
(the host provisions it), the two protocol state machines fed arbitrary
decrypted streams, and real SNP and TDX vectors mutated through their
parsers. Collateral (CRLs, PEM chains) is covered by the hardening work.

Bounded for CI: ``FUZZ_EXAMPLES`` examples per test (100 when ``CI`` is
set, 200 otherwise; ``STOCKADE_FUZZ_EXAMPLES=N`` overrides). Longer runs:
the atheris harnesses in ``fuzz/``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import uuid
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.binding.reportdata import report_data_for
from stockade.errors import MalformedEvidence, ProtocolError, StockadeError, WorkloadRejected
from stockade.evidence.intel.abi import Quote
from stockade.evidence.snp.abi import AttestationReport
from stockade.evidence.snp.attester import bundle_certs
from stockade.evidence.snp.certtable import (
    ARK_GUID,
    ASK_GUID,
    ENTRY_SIZE,
    VCEK_GUID,
    VLEK_GUID,
    build_cert_table,
    parse_cert_table,
)
from stockade.package import Manifest
from stockade.package.format import Package, encode
from stockade.wire.framing import encode_frame
from stockade.wire.messages import Exit, Identity, Output, Problem
from stockade.wire.protocol import ClientSession, KeepSession

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "data" / "vectors"
FUZZ_EXAMPLES = int(os.environ.get("STOCKADE_FUZZ_EXAMPLES") or (100 if os.environ.get("CI") else 200))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes], max_ops: int = 4) -> bytes:
    """``base`` with a few byte-level edits: flip, set, truncate, insert,
    delete, duplicate a slice."""
    b = bytearray(draw(base))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "dup"]))
        pos = draw(st.integers(0, max(len(b) - 1, 0)))
        if op == "flip" and b:
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and b:
            b[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x1F, 0xBF, 0xA0]))
        elif op == "truncate":
            del b[pos:]
        elif op == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and b:
            del b[pos : pos + draw(st.integers(1, 8))]
        elif op == "dup" and b:
            end = min(len(b), pos + draw(st.integers(1, 32)))
            b[pos:pos] = b[pos:end]
    return bytes(b)


# ---------------------------------------------------------------- the package parser


def _packages() -> list[bytes]:
    wasm = b"\0asm\x01\x00\x00\x00"
    small = Manifest(name="p", version="1.0.0", entry="app.wasm")
    full = Manifest(
        name="full",
        version="2.1.0",
        entry="bin/app.wasm",
        args=("a", "b"),
        env=(("K", "V"),),
        files=("data/x.txt", "data/y"),
        secrets=("token",),
    )
    return [
        encode(small, {"app.wasm": wasm}),
        encode(full, {"bin/app.wasm": wasm, "data/x.txt": b"hello", "data/y": b""}),
    ]


PACKAGES = _packages()
cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=16) | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)


def _edit_map(pkg: bytes, key: str, value: object) -> bytes:
    top = cbor2.loads(pkg)
    top[key] = value
    return bytes(cbor2.dumps(top, canonical=True))


package_inputs = st.one_of(
    st.binary(max_size=200),
    cbor_values.map(lambda v: bytes(cbor2.dumps(v))),
    mutated(st.sampled_from(PACKAGES)),
    st.builds(
        _edit_map,
        st.sampled_from(PACKAGES),
        st.sampled_from(["v", "manifest", "files", "signatures"]),
        cbor_values,
    ),
)


@FUZZ
@given(package_inputs)
def test_package_parser_raises_only_workload_rejected(data: bytes) -> None:
    with contextlib.suppress(WorkloadRejected):
        pkg = Package.from_bytes(data)
        # What parses is self-consistent: it re-encodes to the same digest.
        assert Package.from_bytes(pkg.to_bytes()).digest == pkg.digest


# ------------------------------------------------------------ the SNP certificate table

GUIDS = [VCEK_GUID, VLEK_GUID, ASK_GUID, ARK_GUID, uuid.UUID(int=1), uuid.UUID(int=0)]


@st.composite
def raw_tables(draw: st.DrawFn) -> bytes:
    """Tables with arbitrary entries (offsets and lengths anywhere, maybe
    no terminator) followed by some data."""
    entries = draw(
        st.lists(
            st.tuples(st.sampled_from(GUIDS), st.integers(0, 400), st.integers(0, 400)),
            max_size=6,
        )
    )
    header = b"".join(g.bytes + struct.pack("<II", off, n) for g, off, n in entries)
    if draw(st.booleans()):
        header += bytes(ENTRY_SIZE)
    return header + draw(st.binary(max_size=300))


valid_tables = st.lists(
    st.tuples(st.sampled_from(GUIDS[:5]), st.binary(min_size=1, max_size=64)),
    max_size=5,
    unique_by=lambda e: e[0],
).map(build_cert_table)

table_inputs = st.one_of(st.binary(max_size=300), raw_tables(), valid_tables, mutated(valid_tables))


@FUZZ
@given(table_inputs)
def test_cert_table_parser_raises_only_malformed_evidence(data: bytes) -> None:
    try:
        table = parse_cert_table(data)
    except MalformedEvidence:
        return
    for guid, blob in table.entries():
        assert blob, guid
        assert blob in data
    with contextlib.suppress(MalformedEvidence):
        for name, der in bundle_certs(data):
            assert name in ("ark", "ask", "vcek", "vlek") and der


@FUZZ
@given(valid_tables)
def test_valid_cert_tables_round_trip(data: bytes) -> None:
    table = parse_cert_table(data)
    assert {g for g, _ in table.entries()} <= set(GUIDS[:5])


# ------------------------------------------------- the protocol state machines


def _frames(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["output", "exit", "problem", "identity", "junk", "cbor"]))
        if kind == "output":
            payload = Output(fd=draw(st.sampled_from([1, 2])), data=draw(st.binary(max_size=20))).to_cbor()
        elif kind == "exit":
            payload = Exit(code=draw(st.integers(0, 255)), workload_sha256=bytes(32)).to_cbor()
        elif kind == "problem":
            payload = Problem.from_error(ProtocolError(draw(st.text(max_size=20)))).to_cbor()
        elif kind == "identity":
            payload = Identity(evidence=draw(st.binary(max_size=40)), events=()).to_cbor()
        elif kind == "cbor":
            payload = bytes(cbor2.dumps(draw(cbor_values)))
        else:
            payload = draw(st.binary(max_size=20))
        out += encode_frame(payload)
    return out


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """A decrypted Keep->client stream (frames, some valid), mutated, cut
    into chunks."""
    data = draw(st.one_of(st.builds(lambda: b""), st.binary(max_size=100)))
    data += _frames(draw)
    if draw(st.booleans()):
        data = draw(mutated(st.just(data)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@FUZZ
@given(streams(), st.booleans())
def test_client_session_raises_only_protocol_errors(chunks: list[bytes], released: bool) -> None:
    """Whatever a Keep (or a host that broke TLS) sends, the client's state
    machine yields messages or ProtocolError (never ProtocolMisuse: a peer's
    bytes are never blamed on our code); secrets stay locked until the
    identity is verified."""
    session = ClientSession()
    session.hello(b"n" * 32)
    session.evidence_verified(report_data_for(b"n" * 32, b"spki"), b"spki")
    from stockade.wire.messages import Config, Load, Release

    session.load(Load(package=b"p", staged=False, config=Config(), nonce=b"n" * 32))
    try:
        for chunk in chunks:
            for msg in session.receive(chunk):
                if isinstance(msg, Identity) and released:
                    session.identity_verified(msg)
                    session.release(Release(secrets=(), stdin=b""))
    except ProtocolError:
        pass
    except StockadeError as exc:  # a problem's own class, raised by to_error() callers only
        raise AssertionError(f"unexpected {type(exc).__name__}") from exc


@FUZZ
@given(st.binary(max_size=120), st.sampled_from(["hello", "load", "release"]))
def test_keep_session_raises_only_protocol_errors(data: bytes, stage: str) -> None:
    """The Keep's state machine on arbitrary client (or host) bytes."""
    session = KeepSession()
    try:
        if stage == "hello":
            session.receive_hello(data)
            return
        session.receive_hello(encode_frame(cbor2.dumps({"v": 1, "t": "hello", "nonce": b"n" * 32})))
        session.channel_ready()
        session.receive_load(data)
    except ProtocolError:
        pass


# --------------------------------------------------- real vectors, mutated


def _vector_files(pattern: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(VECTORS.glob(pattern))]


SNP_REPORTS = _vector_files("snp/*/report.bin")
TDX_QUOTES = _vector_files("tdx/*/quote.bin")


@FUZZ
@given(mutated(st.sampled_from(SNP_REPORTS)))
def test_real_snp_reports_mutated(data: bytes) -> None:
    with contextlib.suppress(MalformedEvidence):
        AttestationReport.from_bytes(data)


@FUZZ
@given(mutated(st.sampled_from(TDX_QUOTES), max_ops=3), st.booleans())
def test_real_tdx_quotes_mutated(data: bytes, allow_trailing: bool) -> None:
    with contextlib.suppress(MalformedEvidence):
        Quote.from_bytes(data, allow_trailing=allow_trailing)


def test_vectors_were_found() -> None:
    """The mutated-vector tests above are not vacuous."""
    assert len(SNP_REPORTS) >= 5 and len(TDX_QUOTES) >= 5
    assert len(PACKAGES) == 2
    for pkg in PACKAGES:
        Package.from_bytes(pkg)


def test_package_with_keys_of_mixed_types_is_rejected() -> None:
    """Found by the fuzzer: a top-level map with a text and an integer key
    made the error message itself fail (TypeError from sorting the keys), a
    crash of the Keep's loader on host-staged bytes."""
    data = b"\xa2\x60\x00\x18\x18\x00"  # {"": 0, 24: 0}
    with pytest.raises(WorkloadRejected, match=r"^package: expected exactly the keys .*, got \['', 24\]$"):
        Package.from_bytes(data)
