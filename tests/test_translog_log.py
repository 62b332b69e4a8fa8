"""stockade.translog: typed entries, signed tree heads, the file-backed log,
and the verification functions a client uses with the log's public key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.errors import LogProofError, MalformedLogData, UsageError, VerificationFailed
from stockade.translog import (
    CertificateEntry,
    ConsistencyProof,
    FileSigner,
    InclusionProof,
    LogKey,
    PackageSignatureEntry,
    RefusalDigestEntry,
    TransparencyLog,
    VerifiedConsistency,
    VerifiedInclusion,
    VerifiedTreeHead,
    decode_entry,
    encode_entry,
    merkle,
    store,
    verify_consistency,
    verify_inclusion,
    verify_tree_head,
)
from stockade.translog.treehead import ALG_P256, TreeHead, sign_tree_head


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000_000

    def __call__(self) -> int:
        self.t += 1000
        return self.t


def refusal(i: int) -> RefusalDigestEntry:
    return RefusalDigestEntry(hashlib.sha256(b"refusal %d" % i).digest())


def make_log(tmp_path: Path, n: int, name: str = "log", **kw: object) -> TransparencyLog:
    log = TransparencyLog.create(tmp_path / name, clock=Clock(), **kw)  # type: ignore[arg-type]
    for i in range(n):
        log.append([refusal(i)])
    return log


# -- entries -------------------------------------------------------------------


PKG_SIG = PackageSignatureEntry(b"d" * 32, b"k" * 32, "reviewer", b"s" * 64)
ENTRIES = [CertificateEntry(b"\x30\x03\x02\x01\x01"), RefusalDigestEntry(b"r" * 32), PKG_SIG]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.KIND)
def test_entries_round_trip(entry: object) -> None:
    data = encode_entry(entry)  # type: ignore[arg-type]
    assert decode_entry(data) == entry
    assert cbor2.loads(data)["kind"] == entry.KIND  # type: ignore[attr-defined]


def _mutations(m: dict[str, object]) -> list[dict[str, object]]:
    out = []
    for key, value in m.items():
        out.append({k: v for k, v in m.items() if k != key})  # missing
        out.append({**m, key: 7})  # wrong type
        if isinstance(value, bytes):
            out.append({**m, key: value + b"x"})
    out.append({**m, "extra": 1})
    out.append({**m, "v": 2})
    out.append({**m, "kind": "other"})
    return out


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.KIND)
def test_malformed_entries_are_refused(entry: object) -> None:
    m = cbor2.loads(encode_entry(entry))  # type: ignore[arg-type]
    refused = 0
    for bad in _mutations(m):
        data = cbor2.dumps(bad, canonical=True)
        if (
            isinstance(entry, CertificateEntry)
            and bad.get("der", b"").__class__ is bytes
            and set(bad) == set(m)
        ):
            continue  # any non-empty byte string is a certificate entry's der
        with pytest.raises(MalformedLogData):
            decode_entry(data)
        refused += 1
    assert refused >= 5
    for garbage in (b"", b"\xff", cbor2.dumps([1, 2]), cbor2.dumps(m) + b"\x00"):
        with pytest.raises(MalformedLogData):
            decode_entry(garbage)


def test_non_canonical_entry_is_refused() -> None:
    m = cbor2.loads(encode_entry(PKG_SIG))
    unsorted = dict(reversed(list(m.items())))
    with pytest.raises(MalformedLogData, match="canonical"):
        decode_entry(cbor2.dumps(unsorted))
    with pytest.raises(MalformedLogData):
        decode_entry(cbor2.dumps({**m, "v": True}, canonical=True))


def test_entry_shape_checked_when_encoding() -> None:
    for bad in (
        PackageSignatureEntry(b"d" * 31, b"k" * 32, "author", b"s" * 64),
        PackageSignatureEntry(b"d" * 32, b"k" * 32, "owner", b"s" * 64),
        PackageSignatureEntry(b"d" * 32, b"k" * 32, "author", b"s" * 64, alg="RSA"),
        RefusalDigestEntry(b"short"),
        CertificateEntry(b""),
    ):
        with pytest.raises(MalformedLogData):
            encode_entry(bad)
    with pytest.raises(MalformedLogData, match="exceeds"):
        encode_entry(CertificateEntry(b"x" * (1 << 20)))


# -- tree heads and keys -----------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ed25519", ALG_P256])
def test_log_signs_tree_heads_and_proofs_verify(tmp_path: Path, algorithm: str) -> None:
    with make_log(tmp_path, 0, algorithm=algorithm) as log:
        key = log.key
        assert key.algorithm == algorithm
        assert verify_tree_head(log.tree_head, [key]).size == 0
        heads = []
        for i in range(12):
            log.append([refusal(i)])
            heads.append(log.tree_head)
        for i in range(12):
            proof = log.inclusion_proof(i)
            result = verify_inclusion(log.entry(i), proof, log.tree_head, [key])
            assert isinstance(result, VerifiedInclusion)
            assert (result.index, result.tree_head.size) == (i, 12)
        for old in range(12):
            both = verify_consistency(heads[old], log.tree_head, log.consistency_proof(old + 1), [key])
            assert isinstance(both, VerifiedConsistency)
            assert (both.old.size, both.new.size) == (old + 1, 12)
        empty = log.tree_head_for(0)
        verify_consistency(empty, log.tree_head, log.consistency_proof(0), [key])
        with pytest.raises(LogProofError, match="empty proof"):
            verify_consistency(empty, log.tree_head, ConsistencyProof(0, 12, (b"x" * 32,)), [key])


def test_verified_types_come_from_the_verifier_only(tmp_path: Path) -> None:
    with make_log(tmp_path, 1) as log:
        head = TreeHead.from_cbor(cbor2.loads(log.tree_head)["head"])
        with pytest.raises(TypeError):
            VerifiedTreeHead(head, log.key, log.tree_head)
        real = verify_tree_head(log.tree_head, [log.key])
        with pytest.raises(TypeError):
            VerifiedInclusion(log.entry(0), 0, real)
        with pytest.raises(TypeError):
            VerifiedConsistency(real, real)


def test_tree_head_refused_under_another_key_or_when_changed(tmp_path: Path) -> None:
    with make_log(tmp_path, 3) as log, make_log(tmp_path, 3, name="other") as other:
        sth = log.tree_head
        with pytest.raises(LogProofError, match="not one of the 1 trusted"):
            verify_tree_head(sth, [other.key])
        with pytest.raises(LogProofError, match="no trusted log key"):
            verify_tree_head(sth, [])
        verify_tree_head(sth, [other.key, log.key])
        m = cbor2.loads(sth)
        # every byte of the signature
        for i in range(len(m["sig"])):
            sig = bytearray(m["sig"])
            sig[i] ^= 0x80
            with pytest.raises((LogProofError, MalformedLogData)):
                verify_tree_head(cbor2.dumps({**m, "sig": bytes(sig)}, canonical=True), [log.key])
        # every field of the signed head: size, root, time, and the log id
        head = cbor2.loads(m["head"])
        for key, value in (("size", 4), ("root", b"\x00" * 32), ("time", head["time"] + 1)):
            forged = cbor2.dumps({**head, key: value}, canonical=True)
            with pytest.raises(LogProofError, match="does not verify"):
                verify_tree_head(cbor2.dumps({**m, "head": forged}, canonical=True), [log.key])
        forged = cbor2.dumps({**head, "log": other.key.log_id}, canonical=True)
        with pytest.raises(LogProofError, match="does not verify"):
            verify_tree_head(cbor2.dumps({**m, "head": forged}, canonical=True), [log.key, other.key])
        with pytest.raises(LogProofError, match="alg"):
            verify_tree_head(cbor2.dumps({**m, "alg": ALG_P256}, canonical=True), [log.key])
        for bad in (
            b"",
            b"\xa0",
            cbor2.dumps({**m, "v": 2}),
            cbor2.dumps({**m, "alg": "rsa"}),
            sth + b"\x00",
        ):
            with pytest.raises(MalformedLogData):
                verify_tree_head(bad, [log.key])
        with pytest.raises(MalformedLogData, match="canonical"):
            verify_tree_head(cbor2.dumps(dict(reversed(list(m.items())))), [log.key])
        with pytest.raises(MalformedLogData, match="canonical"):
            unsorted = cbor2.dumps(dict(reversed(list(head.items()))))
            verify_tree_head(cbor2.dumps({**m, "head": unsorted}, canonical=True), [log.key])


def test_p256_and_ed25519_keys_do_not_mix() -> None:
    ed = FileSigner(Ed25519PrivateKey.generate())
    p256 = FileSigner(ec.generate_private_key(ec.SECP256R1()))
    sth = sign_tree_head(ed, 0, merkle.EMPTY_ROOT, 1)
    ed_key = LogKey.from_der(ed.public_key_der())
    verify_tree_head(sth, [ed_key])
    # a key cannot claim another key's log id, nor the other algorithm
    p_key = LogKey.from_der(p256.public_key_der())
    with pytest.raises(MalformedLogData, match="log_id"):
        LogKey(p_key.spki, p_key.algorithm, ed_key.log_id)
    with pytest.raises(MalformedLogData, match="algorithm"):
        LogKey(p_key.spki, "rsa", p_key.log_id)
    # a head that names the other algorithm for the trusted key is refused
    m = cbor2.loads(sth)
    with pytest.raises(LogProofError, match="alg"):
        verify_tree_head(cbor2.dumps({**m, "alg": ALG_P256}, canonical=True), [ed_key])
    p_sth = sign_tree_head(p256, 0, merkle.EMPTY_ROOT, 1)
    verify_tree_head(p_sth, [ed_key, p_key])
    with pytest.raises(LogProofError, match="alg"):
        verify_tree_head(cbor2.dumps({**cbor2.loads(p_sth), "alg": "ed25519"}, canonical=True), [p_key])
    with pytest.raises(LogProofError, match="Ed25519 or ECDSA P-256"):
        FileSigner(ec.generate_private_key(ec.SECP384R1()))  # type: ignore[arg-type]


def test_inclusion_refused_for_other_entry_size_or_head(tmp_path: Path) -> None:
    with make_log(tmp_path, 6) as log:
        key = [log.key]
        proof = log.inclusion_proof(2)
        verify_inclusion(log.entry(2), proof, log.tree_head, key)
        with pytest.raises(LogProofError, match="leads to root"):
            verify_inclusion(log.entry(3), proof, log.tree_head, key)
        with pytest.raises(LogProofError, match="size 5"):
            verify_inclusion(log.entry(2), InclusionProof(2, 5, proof.path), log.tree_head, key)
        with pytest.raises(LogProofError):
            verify_inclusion(log.entry(2), proof, log.tree_head_for(5), key)
        with pytest.raises(VerificationFailed):  # LogProofError is a VerificationFailed: exit 110
            verify_inclusion(encode_entry(refusal(99)), proof, log.tree_head, key)


def test_proof_messages_round_trip_and_refuse_garbage() -> None:
    p = InclusionProof(3, 9, (b"a" * 32, b"b" * 32))
    assert InclusionProof.from_cbor(p.to_cbor()) == p
    c = ConsistencyProof(3, 9, (b"a" * 32,))
    assert ConsistencyProof.from_cbor(c.to_cbor()) == c
    m = cbor2.loads(p.to_cbor())
    for bad in (
        {**m, "t": "consistency"},
        {**m, "index": -1},
        {**m, "path": [b"short"]},
        {**m, "path": [b"a" * 32] * 129},
        {k: v for k, v in m.items() if k != "size"},
    ):
        with pytest.raises(MalformedLogData):
            InclusionProof.from_cbor(cbor2.dumps(bad))
    with pytest.raises(MalformedLogData):
        ConsistencyProof.from_cbor(p.to_cbor())


# -- the client that holds an earlier tree head detects a rewrite or a drop -----


@pytest.mark.parametrize("change", ["rewrite", "drop"])
def test_rewritten_or_dropped_entry_detected_by_client_with_earlier_tree_head(
    tmp_path: Path, change: str
) -> None:
    """The operator holds the log key and re-signs a history without entry
    3 (or with entry 3 changed). The client kept the tree head of size 6;
    whatever consistency proof the forged log gives fails."""
    with make_log(tmp_path, 6) as honest:
        key = honest.key
        old_head = honest.tree_head
        signer = store.load_signer((tmp_path / "log" / store.KEY_FILE).read_bytes())
    forged_entries = [refusal(i) for i in range(10)]
    if change == "rewrite":
        forged_entries[3] = RefusalDigestEntry(b"\x00" * 32)
    else:
        del forged_entries[3]
    with TransparencyLog.create(tmp_path / "forged", signer=signer, clock=Clock()) as forged:
        forged.append(forged_entries)
        assert forged.key == key
        new_head = forged.tree_head
        with pytest.raises(LogProofError, match=r"rewritten or dropped|leads to"):
            verify_consistency(old_head, new_head, forged.consistency_proof(6), [key])
    # the honest continuation verifies
    with TransparencyLog.open(tmp_path / "log") as honest:
        honest.append([refusal(i) for i in range(6, 10)])
        verify_consistency(old_head, honest.tree_head, honest.consistency_proof(6), [key])
        # a forged tree head of the same size with another root: detected too
        same_size = sign_tree_head(signer, 10, merkle.MerkleTree([b"\x11" * 32] * 10).root(), 1)
        with pytest.raises(LogProofError, match="rewritten"):
            verify_consistency(honest.tree_head, same_size, ConsistencyProof(10, 10, ()), [key])
        with pytest.raises(LogProofError, match=r"fewer|above"):
            verify_consistency(honest.tree_head, old_head, ConsistencyProof(10, 6, ()), [key])


def signer_of(tmp_path: Path) -> FileSigner:
    return store.load_signer((tmp_path / "log" / store.KEY_FILE).read_bytes())


def _records(path: Path) -> list[bytes]:
    return store.read_records(path.read_bytes(), path.name).payloads


def test_log_that_does_not_match_its_own_tree_heads_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path, 5).close()
    entries = tmp_path / "log" / store.ENTRIES_FILE
    original = entries.read_bytes()
    recs = _records(entries)
    # an entry rewritten in place (with a valid record checksum)
    recs[2] = encode_entry(RefusalDigestEntry(b"\x00" * 32))
    entries.write_bytes(b"".join(store.record(r) for r in recs))
    for writable in (False, True):
        with pytest.raises(LogProofError, match="rewritten"):
            TransparencyLog.open(tmp_path / "log", writable=writable)
    # a signed entry dropped
    entries.write_bytes(original)
    entries.write_bytes(b"".join(store.record(r) for r in _records(entries)[:4]))
    with pytest.raises(LogProofError, match="dropped"):
        TransparencyLog.open(tmp_path / "log", writable=False)
    # a damaged record in the middle (not a torn tail)
    damaged = bytearray(original)
    damaged[10] ^= 0xFF
    entries.write_bytes(bytes(damaged))
    with pytest.raises(LogProofError, match="checksum"):
        TransparencyLog.open(tmp_path / "log")
    entries.write_bytes(original)
    with TransparencyLog.open(tmp_path / "log", writable=False) as log:
        assert log.verify().size == 5


def test_tree_heads_file_checked(tmp_path: Path) -> None:
    make_log(tmp_path, 3).close()
    heads = tmp_path / "log" / store.HEADS_FILE
    recs = _records(heads)
    # sizes going back
    heads.write_bytes(b"".join(store.record(r) for r in [*recs, recs[1]]))
    with pytest.raises(LogProofError, match="go back"):
        TransparencyLog.open(tmp_path / "log", writable=False)
    # a head signed by another key
    other = FileSigner(Ed25519PrivateKey.generate())
    alien = sign_tree_head(
        other, 3, merkle.MerkleTree([merkle.leaf_hash(e) for e in _records(heads)]).root(), 1
    )
    heads.write_bytes(b"".join(store.record(r) for r in [*recs, alien]))
    with pytest.raises(LogProofError, match="not one of"):
        TransparencyLog.open(tmp_path / "log", writable=False)
    # an earlier head replaced: open checks the latest head only (one
    # signature check per open), the earlier one is checked when used and
    # by verify()
    sizes = [store.parse_signed_tree_head(r)[0].size for r in recs]
    assert sizes == [0, 1, 2, 3]
    forged_root = merkle.MerkleTree([b"\x22" * 32]).root()
    for forged in (
        sign_tree_head(other, 1, forged_root, 1),
        sign_tree_head(signer_of(tmp_path), 1, forged_root, 1),
    ):
        heads.write_bytes(b"".join(store.record(r) for r in [recs[0], forged, *recs[2:]]))
        with TransparencyLog.open(tmp_path / "log", writable=False) as log:
            assert log.size == 3
            log.tree_head_for(2)
            with pytest.raises(LogProofError):
                log.tree_head_for(1)
            with pytest.raises(LogProofError):
                log.verify()
    heads.write_bytes(b"")
    with pytest.raises(LogProofError, match="no complete signed tree head"):
        TransparencyLog.open(tmp_path / "log", writable=False)


def test_wrong_signing_key_refused(tmp_path: Path) -> None:
    make_log(tmp_path, 1).close()
    with pytest.raises(LogProofError, match="not the one"):
        TransparencyLog.open(tmp_path / "log", signer=FileSigner(Ed25519PrivateKey.generate()))


def test_one_writer_at_a_time_and_read_only_changes_nothing(tmp_path: Path) -> None:
    with make_log(tmp_path, 2):
        with pytest.raises(UsageError, match="in use"):
            TransparencyLog.open(tmp_path / "log")
        with pytest.raises(UsageError, match="in use"):
            TransparencyLog.open(tmp_path / "log", writable=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "log").iterdir()}
    with (
        TransparencyLog.open(tmp_path / "log", writable=False) as a,
        TransparencyLog.open(tmp_path / "log", writable=False) as b,
    ):
        assert a.size == b.size == 2
        with pytest.raises(UsageError, match="read-only"):
            a.append([refusal(9)])
    assert {p.name: p.read_bytes() for p in (tmp_path / "log").iterdir()} == before


def test_state_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such"):
        TransparencyLog.open(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a transparency log"):
        TransparencyLog.open(tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        TransparencyLog.create(tmp_path / "full")
    with make_log(tmp_path, 2) as log:
        assert os.stat(tmp_path / "log" / store.KEY_FILE).st_mode & 0o777 == 0o600
        with pytest.raises(UsageError, match="no entry 2"):
            log.entry(2)
        with pytest.raises(UsageError, match="no signed tree head of size 7"):
            log.tree_head_for(7)
        with pytest.raises(UsageError, match="nothing"):
            log.append([])
        with pytest.raises(MalformedLogData):
            log.append([b"not an entry"])
        assert log.size == 2


# -- hostile bytes: a clear error, never another exception ----------------------

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=70) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=15) | st.integers(), inner, max_size=8)
    ),
    max_leaves=20,
)


def _shaped(kind: str) -> st.SearchStrategy[bytes]:
    """Maps with the right keys and random values, and random CBOR."""
    keys = {
        "entry": ["v", "kind", "der", "digest", "package-digest", "signer-key", "role", "alg", "sig"],
        "sth": ["v", "head", "alg", "sig"],
        "proof": ["v", "t", "index", "size", "old", "new", "path"],
    }[kind]
    shaped = st.dictionaries(st.sampled_from(keys), cbor_values, max_size=len(keys))
    return (shaped | cbor_values).map(lambda v: cbor2.dumps(v, canonical=True)) | st.binary(max_size=200)


@settings(max_examples=300, deadline=None)
@given(_shaped("entry"))
def test_property_entry_decoder_never_fails_otherwise(data: bytes) -> None:
    try:
        entry = decode_entry(data)
    except MalformedLogData:
        return
    assert encode_entry(entry) == data


@settings(max_examples=300, deadline=None)
@given(_shaped("sth"), _shaped("proof"))
def test_property_head_and_proof_decoders_never_fail_otherwise(sth: bytes, proof: bytes) -> None:
    key = LogKey.from_der(FileSigner(Ed25519PrivateKey.generate()).public_key_der())
    with pytest.raises((MalformedLogData, LogProofError)):
        verify_tree_head(sth, [key])
    for cls in (InclusionProof, ConsistencyProof):
        try:
            parsed = cls.from_cbor(proof)
        except MalformedLogData:
            continue
        assert parsed.to_cbor() == proof
