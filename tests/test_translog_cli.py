"""``stockade log ...``: the operator's commands and the offline check
anyone runs with the log's public key, with their exit codes."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from stockade.cli import main
from stockade.package import build, sign
from stockade.translog import TransparencyLog, decode_entry, store

TINY_WASM = b"\x00asm\x01\x00\x00\x00"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args: str | Path) -> Result:
    result = run(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def fails(code: int, *args: str | Path) -> str:
    result = run(*args)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stderr.startswith("stockade: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def signed_package(tmp_path: Path, name: str = "t") -> tuple[Path, Path, Path]:
    """A package signed by an author key and a reviewer key, and their public keys."""
    d = tmp_path / f"pkg-{name}"
    d.mkdir()
    (d / "m.wasm").write_bytes(TINY_WASM)
    (d / "Stockade.toml").write_text(f'name = "{name}"\nversion = "1"\nentry = "m.wasm"\n')
    author, reviewer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pkg = tmp_path / f"{name}.stockade"
    pkg.write_bytes(sign(sign(build(d), author, "author"), reviewer, "reviewer"))
    pubs = []
    for role, key in (("author", author), ("reviewer", reviewer)):
        pub = tmp_path / f"{name}-{role}.pub"
        pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        pubs.append(pub)
    return pkg, pubs[0], pubs[1]


def certificate(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workload")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def flip_role(m: dict[str, object]) -> dict[str, object]:
    return m | {"role": "author" if m["role"] == "reviewer" else "reviewer"}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "log"
    out = json.loads(ok("log", "init", "--state-dir", d, "--json").stdout)
    assert len(out["log_id"]) == 64 and (d / "log.pub").is_file()
    pkg, author, reviewer = signed_package(tmp_path)
    signers = ["--signer", author, "--signer", reviewer]
    doc = json.loads(
        ok("log", "append", "--state-dir", d, "--kind", "package-signature", *signers, pkg, "--json").stdout
    )
    assert (doc["first_index"], doc["count"], doc["size"]) == (0, 2, 2)
    ok("log", "append", "--state-dir", d, "--kind", "certificate", certificate(tmp_path))
    refusal = tmp_path / "refusal.json"
    refusal.write_text('{"rule": "measurement", "expected": "a", "actual": "b"}')
    assert "tree size 4" in ok("log", "append", "--state-dir", d, "--kind", "refusal-digest", refusal).stdout
    return d


def test_get_prove_and_verify_offline(state: Path, tmp_path: Path) -> None:
    got = json.loads(ok("log", "get", "--state-dir", state, "1", "--out", tmp_path / "e1").stdout)
    assert got["kind"] == "package-signature" and got["role"] in ("author", "reviewer")
    assert decode_entry((tmp_path / "e1").read_bytes()).KIND == "package-signature"
    assert json.loads(ok("log", "get", "--state-dir", state, "2").stdout)["kind"] == "certificate"
    assert json.loads(ok("log", "get", "--state-dir", state, "3").stdout)["kind"] == "refusal-digest"
    ok("log", "head", "--state-dir", state, "--out", tmp_path / "head")
    proof_json = ok("log", "prove", "--state-dir", state, "1", "--out", tmp_path / "proof.cbor").stdout
    (tmp_path / "proof.json").write_text(proof_json)
    assert json.loads(proof_json)["tree_head"]["size"] == 4
    key = state / "log.pub"
    for proof in (tmp_path / "proof.cbor", tmp_path / "proof.json"):
        out = ok(
            "log", "verify", "--proof", proof, "--tree-head", tmp_path / "head", "--key", key, tmp_path / "e1"
        )
        assert "entry 1 is in the log's tree of size 4" in out.stdout
    # another entry, another log's key, a proof for another tree size
    (tmp_path / "e2").write_bytes(
        cbor2.dumps(flip_role(cbor2.loads((tmp_path / "e1").read_bytes())), canonical=True)
    )
    assert "leads to root" in fails(
        110,
        "log",
        "verify",
        "--proof",
        tmp_path / "proof.cbor",
        "--tree-head",
        tmp_path / "head",
        "--key",
        key,
        tmp_path / "e2",
    )
    other = tmp_path / "other"
    ok("log", "init", "--state-dir", other, "--algorithm", "ecdsa-p256")
    assert "trusted log key" in fails(
        110,
        "log",
        "verify",
        "--proof",
        tmp_path / "proof.cbor",
        "--tree-head",
        tmp_path / "head",
        "--key",
        other / "log.pub",
        tmp_path / "e1",
    )
    ok("log", "prove", "--state-dir", state, "1", "--size", "2", "--out", tmp_path / "proof2.cbor")
    assert "size 2" in fails(
        110,
        "log",
        "verify",
        "--proof",
        tmp_path / "proof2.cbor",
        "--tree-head",
        tmp_path / "head",
        "--key",
        key,
        tmp_path / "e1",
    )
    # malformed inputs: 111; usage: 2
    (tmp_path / "garbage").write_bytes(b"\xff\x00")
    fails(
        111,
        "log",
        "verify",
        "--proof",
        tmp_path / "garbage",
        "--tree-head",
        tmp_path / "head",
        "--key",
        key,
        tmp_path / "e1",
    )
    fails(
        111,
        "log",
        "verify",
        "--proof",
        tmp_path / "proof.cbor",
        "--tree-head",
        tmp_path / "garbage",
        "--key",
        key,
        tmp_path / "e1",
    )
    fails(
        2,
        "log",
        "verify",
        "--proof",
        tmp_path / "proof.cbor",
        "--tree-head",
        tmp_path / "head",
        tmp_path / "e1",
    )
    fails(
        2,
        "log",
        "verify",
        "--proof",
        tmp_path / "proof.cbor",
        "--tree-head",
        tmp_path / "head",
        "--key",
        tmp_path / "head",
        tmp_path / "e1",
    )
    fails(2, "log", "verify", "--state-dir", state, "--proof", tmp_path / "proof.cbor")
    fails(2, "log", "verify")


def test_consistency_offline_and_forged_history(state: Path, tmp_path: Path) -> None:
    ok("log", "head", "--state-dir", state, "--size", "2", "--out", tmp_path / "old")
    ok("log", "head", "--state-dir", state, "--out", tmp_path / "new")
    doc = json.loads(
        ok("log", "consistency", "--state-dir", state, "2", "4", "--out", tmp_path / "c.cbor").stdout
    )
    assert doc["consistency_proof"]["old_size"] == 2
    key = state / "log.pub"
    out = ok(
        "log",
        "verify",
        "--consistency",
        tmp_path / "c.cbor",
        "--old-tree-head",
        tmp_path / "old",
        "--tree-head",
        tmp_path / "new",
        "--key",
        key,
    )
    assert "extends the one of size 2" in out.stdout
    # the operator (who has the key) rewrites entry 0 and re-signs a history
    signer = store.load_signer((state / store.KEY_FILE).read_bytes())
    with TransparencyLog.open(state, writable=False) as log:
        entries = [log.entry(i) for i in range(log.size)]
    m = cbor2.loads(entries[0])
    entries[0] = cbor2.dumps(flip_role(m), canonical=True)
    with TransparencyLog.create(tmp_path / "forged", signer=signer) as forged:
        forged.append(entries[:2])
        forged.append(entries[2:])
    ok("log", "head", "--state-dir", tmp_path / "forged", "--out", tmp_path / "forged-head")
    ok("log", "consistency", "--state-dir", tmp_path / "forged", "2", "4", "--out", tmp_path / "fc.cbor")
    err = fails(
        110,
        "log",
        "verify",
        "--consistency",
        tmp_path / "fc.cbor",
        "--old-tree-head",
        tmp_path / "old",
        "--tree-head",
        tmp_path / "forged-head",
        "--key",
        key,
    )
    # power-of-two old size: the proof starts from the client's own old
    # root, so the forgery shows as a new root the proof cannot reach
    assert "consistency proof from 2 to 4 leads to new root" in err
    fails(
        2,
        "log",
        "verify",
        "--consistency",
        tmp_path / "c.cbor",
        "--tree-head",
        tmp_path / "new",
        "--key",
        key,
    )


def test_state_dir_verify_and_recover(state: Path) -> None:
    out = json.loads(ok("log", "verify", "--state-dir", state, "--json").stdout)
    assert (out["size"], out["tree_heads"], out["unsigned_entries"]) == (4, 4, 0)
    entries = state / store.ENTRIES_FILE
    full = entries.read_bytes()
    entries.write_bytes(full + full[:10])  # a torn append
    assert "an append was interrupted" in ok("log", "verify", "--state-dir", state).stdout
    assert "recovered: cut 10 torn bytes" in ok("log", "recover", "--state-dir", state).stdout
    assert "nothing to recover" in ok("log", "recover", "--state-dir", state).stdout
    recs = store.read_records(full, "entries").payloads
    recs[3] = recs[2]
    entries.write_bytes(b"".join(store.record(r) for r in recs))
    assert "rewritten" in fails(110, "log", "verify", "--state-dir", state)


def test_operator_errors(state: Path, tmp_path: Path) -> None:
    pkg, author, _reviewer = signed_package(tmp_path, "u")
    assert "--signer" in fails(2, "log", "append", "--state-dir", state, "--kind", "package-signature", pkg)
    assert "--signer" in fails(
        2, "log", "append", "--state-dir", state, "--kind", "package-signature", "--signer", author, pkg
    )
    _pkg2, other_pub, _ = signed_package(tmp_path, "v")
    fails(2, "log", "append", "--state-dir", state, "--kind", "package-signature", "--signer", other_pub, pkg)
    fails(2, "log", "append", "--state-dir", state, "--kind", "certificate", pkg)
    fails(117, "log", "append", "--state-dir", state, "--kind", "package-signature", tmp_path / "cert.pem")
    assert "no entry 9" in fails(2, "log", "get", "--state-dir", state, "9")
    assert "no signed tree head of size 1" in fails(
        2, "log", "prove", "--state-dir", state, "0", "--size", "1"
    )
    fails(2, "log", "prove", "--state-dir", state, "3", "--size", "2")
    fails(2, "log", "consistency", "--state-dir", state, "4", "2")
    fails(2, "log", "init", "--state-dir", state)
    fails(2, "log", "get", "--state-dir", tmp_path / "absent", "0")
    with TransparencyLog.open(state, writable=False):
        assert "in use" in fails(2, "log", "append", "--state-dir", state, "--kind", "refusal-digest", pkg)
    with TransparencyLog.open(state, writable=False) as log:
        assert log.size == 4


def test_offline_verify_in_a_real_process(state: Path, tmp_path: Path) -> None:
    ok("log", "get", "--state-dir", state, "2", "--out", tmp_path / "entry")
    ok("log", "head", "--state-dir", state, "--out", tmp_path / "head")
    ok("log", "prove", "--state-dir", state, "2", "--out", tmp_path / "proof")
    base = [
        sys.executable,
        "-m",
        "stockade",
        "log",
        "verify",
        "--proof",
        str(tmp_path / "proof"),
        "--tree-head",
    ]
    good = subprocess.run(
        [*base, str(tmp_path / "head"), "--key", str(state / "log.pub"), str(tmp_path / "entry")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    bad = subprocess.run(
        [*base, str(tmp_path / "head"), "--key", str(state / "log.pub"), str(tmp_path / "proof")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 110
    assert bad.stderr.startswith("stockade: transparency log verification failed: inclusion proof")
