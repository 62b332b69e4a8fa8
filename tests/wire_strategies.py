"""Hypothesis strategies and representative values of the stockade wire messages.

Shared by tests/test_wire.py and tests/test_protocol_cddl.py. Generated
values are in decoded (normal) form, so that ``decode(m.to_cbor()) == m``:
env, secrets and timing_us sorted by name with unique names.
"""

from __future__ import annotations

from typing import TypeVar

import cbor2
from hypothesis import strategies as st

from stockade.binding.eventlog import KINDS, Event
from stockade.errors import ERROR_CLASSES, LimitExceeded, ProtocolError, WorkloadTrapped
from stockade.wire.evidence import PLATFORMS, EvidenceBundle
from stockade.wire.messages import (
    MAX_STDIN_DATA,
    NET_EVENTS,
    SOCKET_NAME_RE,
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
    ServiceCertificate,
    SocketAddress,
    Stdin,
    StewardRequest,
    Workload,
)

U64_MAX = (1 << 64) - 1
#: The integer range a CBOR major type 0/1 head can carry (no bignum tags).
CBOR_INT = st.integers(min_value=-(1 << 64), max_value=U64_MAX)

texts = st.text(max_size=24)
small_bytes = st.binary(max_size=64)


T = TypeVar("T")


def _sorted_items(d: dict[str, T]) -> tuple[tuple[str, T], ...]:
    return tuple(sorted(d.items()))


hellos = st.builds(Hello, nonce=st.binary(min_size=32, max_size=32))
limits = st.builds(
    Limits,
    timeout_ms=st.integers(1, U64_MAX),
    memory_bytes=st.integers(1, U64_MAX),
    output_bytes=st.integers(1, U64_MAX),
    disk_bytes=st.integers(1, U64_MAX),
)
file_entries = st.builds(FileEntry, path=texts, data=st.none() | small_bytes)
socket_addresses = st.builds(
    SocketAddress,
    kind=st.sampled_from(["listen", "connect"]),
    name=st.from_regex(SOCKET_NAME_RE, fullmatch=True),
    address=st.sampled_from(["127.0.0.1:7000", "[::1]:443", "kv.example:1", "0.0.0.0:65535"]),
)
networks = st.lists(socket_addresses, max_size=4, unique_by=lambda a: (a.kind, a.name)).map(
    lambda items: tuple(sorted(items, key=lambda a: (a.kind, a.name)))
)
configs = st.builds(
    Config,
    args=st.lists(texts, max_size=4).map(tuple),
    env=st.dictionaries(texts, texts, max_size=4).map(_sorted_items),
    files=st.lists(file_entries, max_size=4).map(tuple),
    limits=limits,
    network=networks,
)
digests32 = st.binary(min_size=32, max_size=32)


@st.composite
def _expects(draw: st.DrawFn) -> Expect:
    signers = draw(st.lists(digests32, max_size=4, unique=True))
    low = 1 if signers else 0
    return Expect(
        digests=tuple(draw(st.lists(digests32, max_size=3))),
        signers=tuple(signers),
        min_signatures=draw(st.integers(low, len(signers))),
    )


expects = _expects()


@st.composite
def _loads(draw: st.DrawFn) -> Load:
    package = draw(st.none() | small_bytes)
    return Load(
        package=package,
        staged=package is None,
        expect=draw(expects),
        config=draw(configs),
        nonce=draw(digests32),
    )


loads = _loads()
events = st.builds(Event, kind=st.sampled_from(KINDS), name=texts, digest=digests32)
bundles = st.builds(
    EvidenceBundle,
    platform=st.sampled_from(PLATFORMS),
    report=st.binary(max_size=256),
    certs=st.dictionaries(texts, small_bytes, max_size=4).map(_sorted_items),
)
identities = st.builds(
    Identity,
    evidence=bundles.map(lambda b: b.to_cbor()),
    events=st.lists(events, max_size=6).map(tuple),
)
#: A DER-shaped blob (a SEQUENCE tag first): the wire checks the shape and
#: the size, the receiver parses the certificate.
ders = st.binary(min_size=0, max_size=64).map(lambda b: b"\x30" + b)
steward_urls = st.sampled_from(
    ["https://steward.example", "https://127.0.0.1:8443", "https://[::1]:1/v1", "https://s.example/a/b"]
)
steward_requests = st.builds(StewardRequest, url=steward_urls, ca=ders)
releases = st.builds(
    Release,
    secrets=st.dictionaries(texts, small_bytes, max_size=4).map(_sorted_items),
    stdin=small_bytes,
    steward=st.none() | steward_requests,
) | st.builds(
    Release,
    secrets=st.dictionaries(texts, small_bytes, max_size=4).map(_sorted_items),
    stdin_stream=st.just(True),
    steward=st.none() | steward_requests,
)
service_certificates = st.builds(
    ServiceCertificate,
    certificate=ders,
    chain=st.lists(ders, min_size=1, max_size=4).map(tuple),
    log_index=st.integers(0, U64_MAX),
    tree_head=st.binary(min_size=1, max_size=64),
    inclusion=st.lists(digests32, max_size=8).map(tuple),
)
stdins = st.builds(Stdin, data=small_bytes)
# The internal Workload (assembled inside the Keep; not a message).
workloads = st.builds(
    Workload,
    wasm=small_bytes,
    args=st.lists(texts, max_size=4).map(tuple),
    env=st.dictionaries(texts, texts, max_size=4).map(_sorted_items),
    stdin=small_bytes,
    files=st.lists(file_entries, max_size=4).map(tuple),
    secrets=st.dictionaries(texts, small_bytes, max_size=4).map(_sorted_items),
    limits=limits,
)
outputs = st.builds(Output, fd=st.sampled_from([1, 2]), data=small_bytes)
nets = st.builds(
    Net,
    event=st.sampled_from(NET_EVENTS),
    name=st.from_regex(SOCKET_NAME_RE, fullmatch=True),
    detail=st.text(st.characters(codec="utf-8", exclude_categories=("C", "Z")), max_size=40),
)
exits = st.builds(
    Exit,
    code=CBOR_INT,
    workload_sha256=st.binary(min_size=32, max_size=32),
    timing_us=st.dictionaries(texts, st.integers(0, U64_MAX), max_size=4).map(_sorted_items),
)
problems = st.builds(Problem, problem_type=texts, title=texts, detail=texts)
messages: st.SearchStrategy[Message] = st.one_of(
    hellos, loads, identities, releases, stdins, service_certificates, outputs, nets, exits, problems
)

# Arbitrary CBOR-encodable values (no tags), for structure-aware fuzzing.
cbor_values = st.recursive(
    st.none() | st.booleans() | CBOR_INT | st.floats(allow_nan=False) | texts | small_bytes,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(CBOR_INT | texts, inner, max_size=4),
    max_leaves=12,
)
cbor_items = cbor_values.map(lambda v: bytes(cbor2.dumps(v)))


# Representative, hand-picked values: empty, typical and max-ish.
SHA = bytes(range(32))
SIM_BUNDLE = EvidenceBundle(
    "sim", b"\x03" + bytes(1183), (("ark", b"A" * 1400), ("ask", b"S"), ("vcek", b"V"))
)
LOAD_TYPICAL = Load(
    package=b"stockade-package\x00\x01",
    expect=Expect(digests=(SHA, b"\xaa" * 32), signers=(b"\x11" * 32, b"\x22" * 32), min_signatures=1),
    config=Config(
        args=("--flag", "value", ""),
        env=(("EMPTY", ""), ("LANG", "C.UTF-8")),
        files=(
            FileEntry("data", None),
            FileEntry("data/in.txt", b"line\n"),
            FileEntry("empty", b""),
        ),
        limits=Limits(timeout_ms=1, memory_bytes=65536, output_bytes=1, disk_bytes=1),
    ),
    nonce=bytes(range(100, 132)),
)
LOAD_STAGED = Load(package=None, staged=True, config=Config(), nonce=b"\xff" * 32)
RELEASE_TYPICAL = Release(secrets=(("api-key", b"s3cr3t"), ("blob", bytes(range(256)))), stdin=b"hi\n")
CA_DER = b"\x30\x82\x01\x50" + bytes(range(256)) * 2
RELEASE_STEWARD = Release(
    secrets=(("api-key", b"s3cr3t"),),
    stdin=b"",
    steward=StewardRequest(url="https://127.0.0.1:8443", ca=CA_DER),
)
CERTIFICATE_TYPICAL = ServiceCertificate(
    certificate=b"\x30\x82\x02\x00" + b"\x01" * 600,
    chain=(CA_DER,),
    log_index=7,
    tree_head=b"\xa4" + b"\x02" * 150,
    inclusion=(b"\x03" * 32, b"\x04" * 32, b"\x05" * 32),
)
IDENTITY_TYPICAL = Identity(
    evidence=SIM_BUNDLE.to_cbor(),
    events=(
        Event("runtime", "stockade-keep 0.1.0; wasmtime 50.0.1", b"\x01" * 32),
        Event("package", "hello 1.0.0", SHA),
        Event("signer", "release", b"\x02" * 32),
        Event("signer", "", b"\x03" * 32),
        Event("entry", "main.wasm", b"\x04" * 32),
        Event("file", "data/in.txt", b"\x05" * 32),
        Event("file", "d\u00e9j\u00e0/" + "x" * 4000, b"\x06" * 32),
        Event("config", "deploy", Config().digest()),
    ),
)
REPRESENTATIVE: list[tuple[str, Message]] = [
    ("hello-zero", Hello(nonce=bytes(32))),
    ("hello-ff", Hello(nonce=b"\xff" * 32)),
    ("load-minimal", Load(package=b"", config=Config(), nonce=bytes(32))),
    ("load-staged", LOAD_STAGED),
    ("load-typical", LOAD_TYPICAL),
    (
        "load-max",
        Load(
            package=b"PK" + b"\x00" * 200_000,
            expect=Expect(
                digests=tuple(bytes([i]) * 32 for i in range(50)),
                signers=tuple(bytes([i, 0xEE]) * 16 for i in range(20)),
                min_signatures=20,
            ),
            config=Config(
                args=tuple(f"a{i}" for i in range(300)),
                env=tuple(sorted((f"K{i}", "v" * 300) for i in range(50))),
                files=tuple(FileEntry(f"f/{i}\u00e9", bytes([i]) * i) for i in range(200)),
                limits=Limits(
                    timeout_ms=U64_MAX, memory_bytes=U64_MAX, output_bytes=U64_MAX, disk_bytes=U64_MAX
                ),
            ),
            nonce=b"\x80" * 32,
        ),
    ),
    ("identity-no-events", Identity(evidence=SIM_BUNDLE.to_cbor(), events=())),
    ("identity-typical", IDENTITY_TYPICAL),
    (
        "identity-large",
        Identity(
            evidence=EvidenceBundle("sgx", b"\xff" * 70_000, (("", b""),)).to_cbor(),
            events=tuple(Event("file", f"data/{i}.bin", bytes([i % 256]) * 32) for i in range(2000)),
        ),
    ),
    ("release-empty", Release()),
    ("release-typical", RELEASE_TYPICAL),
    (
        "release-max",
        Release(secrets=tuple(sorted((f"s{i}", b"\xff" * 70_000) for i in range(2))), stdin=b"x" * 100_000),
    ),
    ("release-steward", RELEASE_STEWARD),
    (
        "release-steward-max",
        Release(steward=StewardRequest(url="https://s.example/" + "p" * 2030, ca=b"\x30" * 16384)),
    ),
    ("certificate-typical", CERTIFICATE_TYPICAL),
    (
        "certificate-first-leaf",
        ServiceCertificate(
            certificate=b"\x30", chain=(b"\x30",), log_index=0, tree_head=b"\x00", inclusion=()
        ),
    ),
    (
        "certificate-max",
        ServiceCertificate(
            certificate=b"\x30" * 16384,
            chain=(b"\x30" * 16384,) * 4,
            log_index=U64_MAX,
            tree_head=b"\xff" * 4096,
            inclusion=(b"\x06" * 32,) * 128,
        ),
    ),
    ("release-stream", Release(secrets=(("k", b"v"),), stdin_stream=True)),
    ("stdin-end", Stdin(data=b"")),
    ("stdin-chunk", Stdin(data=b"line\n")),
    ("stdin-max", Stdin(data=b"\xff" * MAX_STDIN_DATA)),
    ("output-stdout-empty", Output(fd=1, data=b"")),
    ("output-stderr", Output(fd=2, data=b"oops\n")),
    ("output-large", Output(fd=1, data=b"\x00" * 65_536)),
    ("net-listening", Net(event="listening", name="kv", detail="127.0.0.1:41234")),
    ("net-accepted", Net(event="accepted", name="kv-2", detail="stockade://workload/sha256/" + "ab" * 32)),
    ("net-refused", Net(event="refused", name="a", detail="r\u00e9ason " * 40)),
    (
        "load-network",
        Load(
            package=b"",
            config=Config(
                network=(
                    SocketAddress("connect", "kv", "[::1]:7000"),
                    SocketAddress("listen", "api", "0.0.0.0:0"),
                    SocketAddress("listen", "kv", "kv.example:7000"),
                )
            ),
            nonce=bytes(32),
        ),
    ),
    ("exit-zero", Exit(code=0, workload_sha256=SHA)),
    ("exit-typical", Exit(code=3, workload_sha256=SHA, timing_us=(("compile", 1200), ("run", 5)))),
    ("exit-u64", Exit(code=U64_MAX, workload_sha256=b"\xff" * 32, timing_us=(("run", U64_MAX),))),
    ("exit-negative", Exit(code=-(1 << 64), workload_sha256=SHA, timing_us=(("", 0),))),
    ("problem-limit", Problem.from_error(LimitExceeded("workload exceeded its time limit", "time"))),
    ("problem-trap", Problem.from_error(WorkloadTrapped("workload trapped: unreachable"))),
    ("problem-protocol", Problem.from_error(ProtocolError("bad"))),
    ("problem-empty", Problem(problem_type="", title="", detail="")),
    ("problem-unknown-type", Problem(problem_type="future-type", title="t\u00fctle", detail="d" * 4000)),
    *[(f"problem-{cls.problem_type}", Problem.from_error(cls("detail"))) for cls in ERROR_CLASSES],
]

REPRESENTATIVE_BUNDLES: list[tuple[str, EvidenceBundle]] = [
    ("sim", SIM_BUNDLE),
    ("snp-no-certs", EvidenceBundle("snp", bytes(1184))),
    ("tdx-empty-report", EvidenceBundle("tdx", b"")),
    ("sgx-large", EvidenceBundle("sgx", b"\xff" * 70_000, (("", b""),))),
]
