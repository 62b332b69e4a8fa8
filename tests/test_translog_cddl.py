"""docs/protocol.cddl's transparency-log rules against the real encodings
(stockade.translog), as tests/test_protocol_cddl.py does for the deploy
messages: valid bytes from the real classes validate, and mutated ones are
refused by both the schema and stockade's own decoder."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pycddl
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stockade.errors import MalformedLogData
from stockade.translog import (
    CertificateEntry,
    ConsistencyProof,
    FileSigner,
    InclusionProof,
    PackageSignatureEntry,
    RefusalDigestEntry,
    decode_entry,
    encode_entry,
)
from stockade.translog.treehead import TreeHead, parse_signed_tree_head, sign_tree_head

CDDL = (Path(__file__).resolve().parent.parent / "docs" / "protocol.cddl").read_text()


@functools.cache
def schema(rule: str) -> pycddl.Schema:
    return pycddl.Schema(f"root = {rule}\n{CDDL}")


def valid(rule: str, data: bytes) -> bool:
    try:
        schema(rule).validate_cbor(data)
    except pycddl.ValidationError:
        return False
    except BaseException as exc:  # pycddl panics on some mismatches (test_protocol_cddl.valid)
        if type(exc).__name__ != "PanicException":
            raise
        return False
    return True


ENTRIES = {
    "certificate-entry": CertificateEntry(b"\x30\x03\x02\x01\x01"),
    "refusal-digest-entry": RefusalDigestEntry(b"r" * 32),
    "package-signature-entry": PackageSignatureEntry(b"d" * 32, b"k" * 32, "author", b"s" * 64),
}
SIGNERS = [FileSigner(Ed25519PrivateKey.generate()), FileSigner(ec.generate_private_key(ec.SECP256R1()))]


def samples() -> list[tuple[str, bytes, Callable[[bytes], object]]]:
    out: list[tuple[str, bytes, Callable[[bytes], object]]] = []
    for rule, entry in ENTRIES.items():
        data = encode_entry(entry)
        out += [(rule, data, decode_entry), ("log-entry", data, decode_entry)]
    for signer in SIGNERS:
        sth = sign_tree_head(signer, 7, b"\x01" * 32, 1_700_000_000_000)
        out.append(("signed-tree-head", sth, parse_signed_tree_head))
        out.append(("tree-head", cbor2.loads(sth)["head"], TreeHead.from_cbor))
    out.append(
        ("inclusion-proof", InclusionProof(3, 9, (b"a" * 32,) * 4).to_cbor(), InclusionProof.from_cbor)
    )
    out.append(("inclusion-proof", InclusionProof(0, 1, ()).to_cbor(), InclusionProof.from_cbor))
    out.append(
        ("consistency-proof", ConsistencyProof(3, 9, (b"a" * 32,) * 3).to_cbor(), ConsistencyProof.from_cbor)
    )
    return out


SAMPLES = samples()


@pytest.mark.parametrize("rule,data,decode", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_real_encodings_validate(rule: str, data: bytes, decode: Callable[[bytes], object]) -> None:
    assert valid(rule, data)
    decode(data)


def mutations(m: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = [("extra key", {**m, "extra": 1}), ("version 2", {**m, "v": 2})]
    for key, value in m.items():
        if key == "v":
            continue
        out.append((f"no {key}", {k: v for k, v in m.items() if k != key}))
        out.append((f"{key} of another type", {**m, key: 1.5}))
        if isinstance(value, bytes) and key not in ("der", "sig", "head"):
            out.append((f"{key} one byte longer", {**m, key: value + b"\x00"}))
        if isinstance(value, str):
            out.append((f"{key} another text", {**m, key: value + "x"}))
        if isinstance(value, int) and not isinstance(value, bool):
            out.append((f"{key} negative", {**m, key: -1}))
        if isinstance(value, list):
            out.append((f"{key} with a short hash", {**m, key: [*value, b"short"]}))
    return out


@pytest.mark.parametrize("rule,data,decode", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_mutations_refused_by_schema_and_decoder(
    rule: str, data: bytes, decode: Callable[[bytes], object]
) -> None:
    m = cbor2.loads(data)
    checked = 0
    for what, bad in mutations(m):
        encoded = cbor2.dumps(bad, canonical=True)
        assert not valid(rule, encoded), what
        with pytest.raises(MalformedLogData):
            decode(encoded)
        checked += 1
    assert checked >= 4


def test_signed_tree_head_whose_head_is_not_a_tree_head() -> None:
    sth = cbor2.loads(sign_tree_head(SIGNERS[0], 1, b"\x01" * 32, 1))
    bad = cbor2.dumps({**sth, "head": cbor2.dumps({"v": 1, "size": 1}, canonical=True)}, canonical=True)
    assert not valid("signed-tree-head", bad)
    with pytest.raises(MalformedLogData):
        parse_signed_tree_head(bad)
