"""Trusted boot hashes before it parses (issue 13 item 7).

With pinned digests, the Keep computes the package's content digest from the
raw bytes (stockade.package.prehash: CBOR item headers only) and refuses any
other digest, or bytes that are not laid out as a package, before the strict
CBOR parser ever sees them; staged (host-provided) and inline packages alike.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.errors import WorkloadRejected
from stockade.keep import loading
from stockade.package import Package, sign
from stockade.package.format import encode
from stockade.package.manifest import Manifest
from stockade.package.prehash import MAX_ITEMS, Unhashable, content_digest
from stockade.wire.messages import Config, Expect, Load
from stockade.wire.staging import MAX_STAGED, STAGED_NAME

WASM = b"\x00asm\x01\x00\x00\x00"
NONCE = bytes(32)


def package(files: dict[str, bytes] | None = None, *, args: tuple[str, ...] = (), signed: int = 0) -> bytes:
    files = {"a.txt": b"a"} if files is None else files
    manifest = Manifest.from_map(
        {
            "name": "t",
            "version": "1",
            "entry": "main.wasm",
            "args": list(args),
            "env": {"K": "V"},
            "files": sorted(files),
            "secrets": [],
        }
    )
    data = encode(manifest, {"main.wasm": WASM, **files})
    for _ in range(signed):
        data = sign(data, Ed25519PrivateKey.generate(), "author")
    return data


@pytest.fixture
def no_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to parse a package fail the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the package was parsed before its digest was checked")

    monkeypatch.setattr(loading.Package, "from_bytes", refuse)
    monkeypatch.setattr("stockade.package.format.loads_strict", refuse)
    monkeypatch.setattr("cbor2.loads", refuse)


def staged(scratch: Path, data: bytes | None = None, *, size: int | None = None) -> Path:
    path = scratch / STAGED_NAME
    if data is not None:
        path.write_bytes(data)
    else:
        with open(path, "wb") as f:  # sparse: no disk or memory used
            f.truncate(size)
    return scratch


def load_staged(scratch: Path, *digests: bytes) -> loading.Loaded:
    return loading.load(Load(None, Config(), NONCE, Expect(digests=digests), staged=True), scratch)


def load_inline(data: bytes, *digests: bytes) -> loading.Loaded:
    return loading.load(Load(data, Config(), NONCE, Expect(digests=digests)), None)


# --- the digest from the bytes is the digest of the parsed package ---------------------


@pytest.mark.parametrize("signed", [0, 1, 3])
def test_prehash_equals_the_parsed_digest(signed: int) -> None:
    data = package({"d/x": b"x" * 70_000, "e": b""}, args=("a",) * 30, signed=signed)
    assert content_digest(data) == Package.from_bytes(data).digest


@settings(max_examples=60, deadline=None)
@given(
    files=st.dictionaries(
        st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8})?", fullmatch=True), st.binary(max_size=300), max_size=6
    ),
    args=st.lists(st.text(max_size=20), max_size=5).map(tuple),
    signed=st.integers(0, 2),
)
def test_prehash_property(files: dict[str, bytes], args: tuple[str, ...], signed: int) -> None:
    data = package(files, args=args, signed=0)
    pre = content_digest(data)  # the layout is a package's even when the content is refused
    try:
        parsed = Package.from_bytes(data)
    except WorkloadRejected:  # a file also used as a directory, say
        return
    assert parsed.digest == pre
    for _ in range(signed):
        data = sign(data, Ed25519PrivateKey.generate(), "author")
    assert content_digest(data) == pre


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(min_value=0), mask=st.integers(1, 255), cut=st.booleans())
def test_a_mutated_package_that_still_parses_has_the_prehash_digest(pos: int, mask: int, cut: bool) -> None:
    data = bytearray(package({"a.txt": b"abc", "b": b"x" * 40}, signed=1))
    if cut:
        del data[pos % len(data) :]
    else:
        data[pos % len(data)] ^= mask
    try:
        pre = content_digest(bytes(data))
    except Unhashable:
        return
    try:
        parsed = Package.from_bytes(bytes(data))
    except WorkloadRejected:
        return
    assert parsed.digest == pre


def test_the_walk_is_bounded() -> None:
    head = b"\xa4\x61v\x01\x65files"
    with pytest.raises(Unhashable, match="more than"):
        content_digest(head + b"\xbb" + (1 << 40).to_bytes(8, "big") + bytes(64))  # a map of 2**40 entries
    nested = head + b"\x81" * (MAX_ITEMS + 10) + b"\x00"
    start = time.monotonic()
    with pytest.raises(Unhashable, match="more than"):
        content_digest(nested)
    assert time.monotonic() - start < 10
    for bad, match in (
        (b"", "not a CBOR map"),
        (b"\xa5", "not a CBOR map"),
        (b"\xa4\x61w\x01", "no 'v' key"),
        (head + b"\x5f", "indefinite"),
        (head + b"\x5a\xff\xff\xff\xff", "runs past the end"),
        (head + b"\x1b\x00", "truncated"),
        (head + b"\xa0\x68manifest\xa0", "no 'signatures' key"),
    ):
        with pytest.raises(Unhashable, match=match):
            content_digest(bad)


# --- the Keep: pinned digests are checked before parsing ----------------------------------


def test_huge_garbage_staged_is_refused_unparsed(tmp_path: Path, no_parse: None) -> None:
    garbage = random.Random(1).randbytes(1 << 20) * 48  # 48 MiB, not CBOR
    staged(tmp_path, garbage)
    wanted = content_digest(package())
    with pytest.raises(
        WorkloadRejected, match=r"^trusted boot: the package staged by the host has none of the 1 pinned"
    ):
        load_staged(tmp_path, wanted)


def test_huge_staged_package_with_another_digest_is_refused_unparsed(tmp_path: Path, no_parse: None) -> None:
    other = package({"big": b"\x00" * (64 << 20)})
    staged(tmp_path, other)
    wanted = content_digest(package())
    start = time.monotonic()
    with pytest.raises(WorkloadRejected) as info:
        load_staged(tmp_path, wanted)
    assert time.monotonic() - start < 10
    assert info.value.detail == (
        f"trusted boot: the package staged by the host has digest {content_digest(other).hex()}, "
        f"which is not among the 1 pinned digest(s); refusing to run it"
    )


def test_malformed_inline_package_with_a_pinned_digest_is_refused_unparsed(no_parse: None) -> None:
    wanted = content_digest(package())
    with pytest.raises(WorkloadRejected, match="sent by the client has none of the 1 pinned digest"):
        load_inline(b"\xa4" + b"\xff" * 1000, wanted)
    other = package({"b.txt": b"b"})
    with pytest.raises(
        WorkloadRejected, match=f"sent by the client has digest {content_digest(other).hex()}"
    ):
        load_inline(other, wanted)


def test_staged_file_over_the_limit_is_refused_unread(tmp_path: Path, no_parse: None) -> None:
    staged(tmp_path, size=MAX_STAGED + 1)
    with pytest.raises(WorkloadRejected, match=f"larger than {MAX_STAGED} bytes"):
        load_staged(tmp_path, content_digest(package()))


def test_the_pinned_package_loads_and_is_measured(tmp_path: Path) -> None:
    data = package(signed=2)
    digest = content_digest(data)
    for loaded in (load_staged(staged(tmp_path, data), os.urandom(32), digest), load_inline(data, digest)):
        assert loaded.package.digest == digest
        assert next(e for e in loaded.log.events if e.kind == "package").digest == digest


def test_without_pins_the_package_is_parsed_as_before(tmp_path: Path) -> None:
    with pytest.raises(WorkloadRejected, match=r"^package staged by the host: "):
        load_staged(staged(tmp_path, b"\x00not cbor"))
    assert load_inline(package()).package.digest == content_digest(package())
