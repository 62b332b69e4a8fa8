"""``stockade trust``: the offline trust report of a package (issue 8 part 6),
on packages built from the examples."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stockade.errors import UsageError, VerificationFailed, WorkloadRejected
from stockade.package import Package, Signature, build, key_id, sign
from stockade.package.trust import (
    AREAS,
    NOT_KNOWABLE,
    SCHEMA,
    IntegrityFailed,
    NotReproduced,
    Outcome,
    Status,
    TrustedKey,
    TrustReport,
    trust_report,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stockade", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rows(report: TrustReport, area: str) -> dict[str, tuple[Status, str]]:
    return {c.name: (c.status, c.detail) for c in report.area(area)}


def write_pub(path: Path, key: Ed25519PrivateKey) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.fixture(scope="module")
def hello() -> bytes:
    return build(EXAMPLES / "hello")


@pytest.fixture(scope="module")
def wordcount() -> bytes:
    return build(EXAMPLES / "wordcount")


@pytest.fixture(scope="module")
def author() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_unsigned_example(hello: bytes) -> None:
    report = trust_report(hello)
    assert report.outcome is Outcome.OK
    assert report.exit_code == 0
    assert report.error() is None
    assert report.name == "hello"
    assert report.digest == Package.from_bytes(hello).digest.hex()
    build_rows = rows(report, "build")
    assert build_rows["recipe"][0] is Status.INFO
    assert "examples/build.sh" in build_rows["recipe"][1]
    assert "clang-14 1:14.0.6-12" in build_rows["recipe"][1]
    # The recipe is never run; the report says how to run it and what to compare.
    status, detail = build_rows["recipe run"]
    assert status is Status.UNKNOWN
    assert detail.startswith("not run")
    wasm = dict(Package.from_bytes(hello).files)["hello.wasm"]
    assert hashlib.sha256(wasm).hexdigest() in detail
    assert build_rows["package rebuild"][0] is Status.UNKNOWN
    integrity = rows(report, "integrity")
    assert integrity["structure"][0] is Status.PASS
    assert integrity["trusted signatures"] == (
        Status.UNKNOWN,
        "the package is unsigned: nothing in it says who made or approved it.",
    )
    provenance = rows(report, "provenance")
    assert provenance["source commit"][0] is Status.INFO
    assert "cc9586da0e76005c4265455278d2295c7511b4d3" in provenance["source commit"][1]
    assert provenance["signers"][0] is Status.UNKNOWN


def test_cannot_be_known_offline_rows_are_always_present(hello: bytes) -> None:
    for data in (hello, b"garbage"):
        unknowable = rows(trust_report(data), "not_knowable_offline")
        assert list(unknowable) == [name for name, _ in NOT_KNOWABLE]
        assert {"maintainer responsiveness", "expertise"} <= set(unknowable)
        assert all(status is Status.UNKNOWN for status, _ in unknowable.values())


def test_signed_by_trusted_key(hello: bytes, author: Ed25519PrivateKey) -> None:
    data = sign(hello, author, "author")
    report = trust_report(data, [TrustedKey("author.pub", author.public_key())])
    assert report.outcome is Outcome.OK
    (sig,) = report.signatures
    assert (sig.kid, sig.role, sig.valid, sig.trusted, sig.key) == (
        key_id(author.public_key()),
        "author",
        True,
        True,
        "author.pub",
    )
    integrity = rows(report, "integrity")
    assert integrity[f"signature {sig.kid[:16]}…"][0] is Status.PASS
    assert integrity["trusted signatures"][0] is Status.PASS
    signer = rows(report, "provenance")[f"signer {sig.kid[:16]}…"]
    assert signer[0] is Status.INFO
    assert "author.pub" in signer[1]
    assert "signed as author (the role is signed" in signer[1]
    # The digest is the unsigned package's: signatures are not part of it.
    assert report.digest == trust_report(hello).digest


def test_signed_by_unknown_key(hello: bytes, author: Ed25519PrivateKey) -> None:
    data = sign(hello, author, "reviewer")
    report = trust_report(data)
    assert report.outcome is Outcome.OK
    (sig,) = report.signatures
    assert (sig.valid, sig.trusted, sig.key, sig.role) == (None, False, None, "reviewer")
    integrity = rows(report, "integrity")
    status, detail = integrity[f"signature {sig.kid[:16]}…"]
    assert status is Status.UNKNOWN
    assert "cannot be checked" in detail
    assert integrity["trusted signatures"][0] is Status.UNKNOWN
    assert rows(report, "provenance")[f"signer {sig.kid[:16]}…"][0] is Status.UNKNOWN


def test_trusted_key_that_did_not_sign_fails_integrity(hello: bytes, author: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    for data in (hello, sign(hello, other, "author")):
        report = trust_report(data, [TrustedKey("author.pub", author.public_key())])
        assert report.outcome is Outcome.INTEGRITY_FAILED
        assert rows(report, "integrity")["trusted signatures"][0] is Status.FAIL
        err = report.error()
        assert isinstance(err, IntegrityFailed)
        assert isinstance(err, WorkloadRejected)
        assert err.exit_code == 117
        assert "no valid signature by any of the 1 trusted key(s)" in err.detail


def flipped_signature(data: bytes) -> bytes:
    """The package with one bit of its first signature flipped, re-encoded by
    the format module (so it stays a well-formed package)."""
    pkg = Package.from_bytes(data)
    first = pkg.signatures[0]
    bad = Signature(first.alg, first.kid, first.role, bytes([first.sig[0] ^ 1]) + first.sig[1:])
    out = dataclasses.replace(pkg, signatures=(bad, *pkg.signatures[1:])).to_bytes()
    assert Package.from_bytes(out).signatures[0].sig != first.sig
    return out


def test_bad_signature_by_trusted_key(hello: bytes, author: Ed25519PrivateKey) -> None:
    data = flipped_signature(sign(hello, author, "author"))
    report = trust_report(data, [TrustedKey("author.pub", author.public_key())])
    assert report.outcome is Outcome.INTEGRITY_FAILED
    assert report.exit_code == 117
    (sig,) = report.signatures
    assert (sig.valid, sig.trusted) == (False, True)
    kid = sig.kid[:16] + "…"
    status, detail = rows(report, "integrity")[f"signature {kid}"]
    assert status is Status.FAIL
    assert "does NOT verify" in detail
    assert rows(report, "provenance")[f"signer {kid}"][0] is Status.FAIL
    assert "does not verify" in str(report.error())


def test_a_changed_role_is_an_integrity_failure(hello: bytes, author: Ed25519PrivateKey) -> None:
    """The role is signed: relabelling an author's signature as a reviewer's
    breaks it (issue 13 item 7)."""
    top = cbor2.loads(sign(hello, author, "author"))
    top["signatures"][0]["role"] = "reviewer"
    data = bytes(cbor2.dumps(top, canonical=True))
    report = trust_report(data, [TrustedKey("author.pub", author.public_key())])
    assert report.outcome is Outcome.INTEGRITY_FAILED
    (sig,) = report.signatures
    status, detail = rows(report, "integrity")[f"signature {sig.kid[:16]}…"]
    assert status is Status.FAIL and "does NOT verify over role reviewer" in detail
    assert "does not verify over role reviewer and digest" in str(report.error())


def test_a_v1_signature_is_an_integrity_failure_that_says_re_sign(
    hello: bytes, author: Ed25519PrivateKey
) -> None:
    pkg = Package.from_bytes(hello)
    old = Signature(
        "Ed25519",
        key_id(author.public_key()),
        "author",
        author.sign(b"stockade-package-signature/v1\x00" + pkg.digest),
    )
    data = dataclasses.replace(pkg, signatures=(old,)).to_bytes()
    report = trust_report(data, [TrustedKey("author.pub", author.public_key())])
    assert report.outcome is Outcome.INTEGRITY_FAILED
    status, detail = rows(report, "integrity")[f"signature {old.kid[:16]}…"]
    assert status is Status.FAIL and "v1 signature, which does not sign the role" in detail
    assert "re-sign the package" in str(report.error())


def test_bad_signature_among_valid_ones_still_fails(hello: bytes, author: Ed25519PrivateKey) -> None:
    reviewer = Ed25519PrivateKey.generate()
    signed = sign(sign(hello, author, "author"), reviewer, "reviewer")
    data = flipped_signature(signed)
    trusted = [TrustedKey("a.pub", author.public_key()), TrustedKey("r.pub", reviewer.public_key())]
    assert trust_report(signed, trusted).outcome is Outcome.OK
    report = trust_report(data, trusted)
    assert report.outcome is Outcome.INTEGRITY_FAILED
    assert sorted(s.valid for s in report.signatures if s.valid is not None) == [False, True]
    assert rows(report, "integrity")["trusted signatures"][0] is Status.FAIL


def test_tampered_content_breaks_the_trusted_signature(hello: bytes, author: Ed25519PrivateKey) -> None:
    """A byte of the module changed after signing: still a well-formed
    package, but the signature no longer covers its digest."""
    pkg = Package.from_bytes(sign(hello, author, "author"))
    files = dict(pkg.files)
    wasm = files["hello.wasm"]
    files["hello.wasm"] = wasm[:-1] + bytes([wasm[-1] ^ 0xFF])
    tampered = dataclasses.replace(pkg, files=tuple(files.items())).to_bytes()
    report = trust_report(tampered, [TrustedKey("author.pub", author.public_key())])
    assert report.outcome is Outcome.INTEGRITY_FAILED
    assert report.digest != pkg.digest.hex()
    assert report.signatures[0].valid is False


def test_malformed_package_is_an_integrity_failure(hello: bytes) -> None:
    top = cbor2.loads(hello)
    top["files"]["extra.txt"] = b"smuggled"
    tampered = cbor2.dumps(top, canonical=True)
    for data in (tampered, hello + b"\x00", hello[:-1], b"", b"garbage"):
        report = trust_report(data)
        assert report.outcome is Outcome.INTEGRITY_FAILED
        assert report.digest is None
        assert report.exit_code == 117
        status, detail = rows(report, "integrity")["structure"]
        assert status is Status.FAIL
        assert detail.startswith("malformed: package")
    assert "'extra.txt' is in the package but not in the manifest" in str(trust_report(tampered).error())


def copy_example(name: str, dest: Path) -> Path:
    shutil.copytree(EXAMPLES / name, dest)
    return dest


def test_rebuild_reproduces_both_examples(tmp_path: Path, hello: bytes, wordcount: bytes) -> None:
    for name, data in (("hello", hello), ("wordcount", wordcount)):
        src = copy_example(name, tmp_path / name)
        report = trust_report(data, rebuild_dir=src)
        assert report.outcome is Outcome.OK, report.reason
        assert report.rebuild is not None
        assert report.rebuild.reproduced
        assert report.rebuild.digest == report.digest
        status, detail = rows(report, "build")["package rebuild"]
        assert (status, detail.split(":")[0]) == (Status.PASS, "reproduced")


def test_rebuild_of_changed_source_is_not_reproduced(tmp_path: Path, wordcount: bytes) -> None:
    src = copy_example("wordcount", tmp_path / "wc")
    sample = src / "sample.txt"
    text = sample.read_bytes()
    sample.write_bytes(text[:100] + bytes([text[100] ^ 1]) + text[101:])
    report = trust_report(wordcount, rebuild_dir=src)
    assert report.outcome is Outcome.NOT_REPRODUCED
    assert report.rebuild is not None
    assert not report.rebuild.reproduced
    assert report.rebuild.difference is not None
    assert "file 'sample.txt'" in report.rebuild.difference
    assert "first differing byte at offset 100" in report.rebuild.difference
    status, detail = rows(report, "build")["package rebuild"]
    assert status is Status.FAIL
    assert detail.startswith(
        f"NOT reproduced: digest sha256:{report.digest} vs sha256:{report.rebuild.digest}"
    )
    err = report.error()
    assert isinstance(err, NotReproduced)
    assert isinstance(err, VerificationFailed)
    assert err.exit_code == 110


def test_rebuild_names_a_manifest_difference(tmp_path: Path, hello: bytes) -> None:
    src = copy_example("hello", tmp_path / "h")
    toml = src / "Stockade.toml"
    toml.write_text(toml.read_text().replace('version = "1.0.0"', 'version = "1.0.1"'))
    report = trust_report(hello, rebuild_dir=src)
    assert report.outcome is Outcome.NOT_REPRODUCED
    assert report.rebuild is not None
    assert report.rebuild.difference == "manifest key 'version': '1.0.0' in the package, '1.0.1' rebuilt"


def test_integrity_failure_takes_precedence_over_reproduction(
    tmp_path: Path, hello: bytes, author: Ed25519PrivateKey
) -> None:
    src = copy_example("hello", tmp_path / "h")
    (src / "hello.wasm").write_bytes((src / "hello.wasm").read_bytes() + b"\x00")
    data = flipped_signature(sign(hello, author, "author"))
    report = trust_report(data, [TrustedKey("a.pub", author.public_key())], rebuild_dir=src)
    assert report.rebuild is not None
    assert not report.rebuild.reproduced
    assert report.outcome is Outcome.INTEGRITY_FAILED
    assert report.exit_code == 117


def test_rebuild_directory_that_does_not_build_is_a_usage_error(tmp_path: Path, hello: bytes) -> None:
    with pytest.raises(UsageError, match="cannot read the manifest"):
        trust_report(hello, rebuild_dir=tmp_path)


JSON_KEYS = [
    "package",
    "schema",
    "digest",
    "name",
    "version",
    "outcome",
    "exit_code",
    "areas",
    "signatures",
    "rebuild",
]


def test_cli_json_schema_is_stable(tmp_path: Path, hello: bytes, author: Ed25519PrivateKey) -> None:
    pkg = tmp_path / "hello.stockade"
    pkg.write_bytes(sign(hello, author, "author"))
    pub = write_pub(tmp_path / "author.pub", author)
    p = cli("trust", pkg, "--signer", pub, "--rebuild", EXAMPLES / "hello", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert list(doc) == JSON_KEYS
    assert doc["schema"] == SCHEMA == "stockade-trust/v1"
    assert (doc["outcome"], doc["exit_code"]) == ("ok", 0)
    assert list(doc["areas"]) == list(AREAS)
    for checks in doc["areas"].values():
        assert checks
        for check in checks:
            assert list(check) == ["check", "status", "detail"]
            assert check["status"] in {"pass", "fail", "unknown", "info"}
    assert doc["signatures"] == [
        {
            "kid": key_id(author.public_key()),
            "role": "author",
            "valid": True,
            "trusted": True,
            "key": str(pub),
        }
    ]
    assert list(doc["rebuild"]) == ["directory", "digest", "reproduced", "difference"]
    assert doc["rebuild"]["reproduced"] is True
    assert doc["digest"] == doc["rebuild"]["digest"]


def test_cli_table(tmp_path: Path, hello: bytes) -> None:
    pkg = tmp_path / "hello.stockade"
    pkg.write_bytes(hello)
    p = cli("trust", pkg)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    for heading in ("BUILD", "INTEGRITY", "PROVENANCE", "CANNOT BE KNOWN OFFLINE"):
        assert heading in p.stdout
    for check in ("recipe run", "package rebuild", "structure", "maintainer responsiveness", "expertise"):
        assert check in p.stdout
    assert f"digest  sha256:{Package.from_bytes(hello).digest.hex()}" in p.stdout


def test_cli_exit_codes(tmp_path: Path, hello: bytes, author: Ed25519PrivateKey) -> None:
    pub = write_pub(tmp_path / "author.pub", author)
    bad_sig = tmp_path / "bad-sig.stockade"
    bad_sig.write_bytes(flipped_signature(sign(hello, author, "author")))
    p = cli("trust", bad_sig, "--signer", pub)
    assert p.returncode == 117
    assert "does NOT verify" in p.stdout
    assert p.stderr.startswith("stockade: package integrity check failed: package: signature by trusted key")
    assert "Traceback" not in p.stderr

    src = copy_example("hello", tmp_path / "src")
    (src / "hello.wasm").write_bytes((src / "hello.wasm").read_bytes() + b"\x00")
    unsigned = tmp_path / "hello.stockade"
    unsigned.write_bytes(hello)
    p = cli("trust", unsigned, "--rebuild", src, "--json")
    assert p.returncode == 110
    doc = json.loads(p.stdout)
    assert doc["outcome"] == "not-reproduced"
    assert doc["error"]["title"] == "package not reproduced"
    assert doc["error"]["exit_code"] == 110
    assert "file 'hello.wasm'" in doc["rebuild"]["difference"]


@pytest.mark.parametrize("content", [None, b"", b"garbage\n", b"\xa1\x61v\x01"])
def test_cli_missing_or_garbage_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "x.stockade"
    if content is not None:
        path.write_bytes(content)
    p = cli("trust", path)
    assert "Traceback" not in p.stderr
    if content is None:
        assert p.returncode == 2
        assert p.stderr == f"stockade: usage error: cannot read {path}: No such file or directory\n"
        return
    assert p.returncode == 117
    assert "malformed: package" in p.stdout
    assert p.stderr.startswith("stockade: package integrity check failed: package")
    p = cli("trust", path, "--json")
    doc = json.loads(p.stdout)
    assert (doc["outcome"], doc["exit_code"], doc["digest"]) == ("integrity-failed", 117, None)
    assert doc["error"]["type"] == "workload-rejected"


def test_cli_bad_signer_key_and_rebuild_directory(tmp_path: Path, hello: bytes) -> None:
    pkg = tmp_path / "hello.stockade"
    pkg.write_bytes(hello)
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    p = cli("trust", pkg, "--signer", garbage)
    assert p.returncode == 2
    assert p.stderr == f"stockade: usage error: {garbage}: not a PEM public key\n"
    p = cli("trust", pkg, "--rebuild", tmp_path / "nowhere")
    assert p.returncode == 2
    assert "no Stockade.toml there" in p.stderr
    assert "Traceback" not in p.stderr
