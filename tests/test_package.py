"""Signed workload packages: format, digest, strictness, signatures, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stockade.errors import StockadeError, UsageError, VerificationFailed, WorkloadRejected
from stockade.package import (
    SIGNED_PREFIX,
    Package,
    Signature,
    VerifiedPackage,
    build,
    content_digest,
    key_id,
    sign,
    signed_bytes,
    verify_signatures,
)

HELLO = Path(__file__).resolve().parent.parent / "examples" / "hello" / "hello.wasm"
TINY_WASM = b"\x00asm\x01\x00\x00\x00"

MANIFEST = """\
name = "hello"
version = "1.0.0"
entry = "bin/hello.wasm"
args = ["Alice"]
files = ["data", "README.txt"]
secrets = ["api_token"]

[env]
GREETING = "Bonjour"

[limits]
timeout_ms = 5000
memory_bytes = 67108864

[source]
repository = "https://example.org/hello.git"
commit = "254fc93"

[build]
recipe = "examples/build.sh"
toolchain = "clang-14 wasi-libc"
"""


def make_dir(root: Path, manifest: str = MANIFEST, wasm: bytes | None = None) -> Path:
    (root / "bin").mkdir(parents=True)
    if wasm is None:
        shutil.copyfile(HELLO, root / "bin" / "hello.wasm")
    else:
        (root / "bin" / "hello.wasm").write_bytes(wasm)
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "b.txt").write_text("bee\n")
    (root / "data" / "sub" / "a.txt").write_text("ay\n")
    (root / "README.txt").write_text("hello package\n")
    (root / "Stockade.toml").write_text(manifest)
    return root


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return make_dir(tmp_path / "app")


def tiny(tmp_path: Path) -> bytes:
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "m.wasm").write_bytes(TINY_WASM)
    (d / "Stockade.toml").write_text('name = "t"\nversion = "1"\nentry = "m.wasm"\n')
    return build(d)


# -- format and digest ---------------------------------------------------------


def test_build_round_trip(app: Path) -> None:
    data = build(app)
    pkg = Package.from_bytes(data)
    assert pkg.manifest.name == "hello"
    assert pkg.manifest.entry == "bin/hello.wasm"
    assert pkg.manifest.files == ("README.txt", "data/b.txt", "data/sub/a.txt")
    assert pkg.manifest.env == (("GREETING", "Bonjour"),)
    assert pkg.manifest.limits == (("memory_bytes", 67108864), ("timeout_ms", 5000))
    assert pkg.entry_bytes == HELLO.read_bytes()
    assert dict(pkg.files)["data/sub/a.txt"] == b"ay\n"
    assert pkg.signatures == ()
    assert pkg.to_bytes() == data
    top = cbor2.loads(data)
    assert list(top) == ["v", "files", "manifest", "signatures"]  # canonical (length-first) order
    assert pkg.digest == content_digest(top["manifest"], top["files"])
    unsigned = {"v": 1, "manifest": top["manifest"], "files": top["files"]}
    assert pkg.digest == hashlib.sha256(cbor2.dumps(unsigned, canonical=True)).digest()


def test_digest_is_stable_across_builds_and_directories(tmp_path: Path) -> None:
    a = make_dir(tmp_path / "one")
    b = make_dir(tmp_path / "somewhere" / "else")
    (b / "data" / "b.txt").touch()  # new mtime, same content
    (b / "README.txt").chmod(0o600)
    first, second, other = build(a), build(a), build(b)
    assert first == second == other
    assert Package.from_bytes(first).digest == Package.from_bytes(other).digest


def test_signatures_do_not_change_the_digest(app: Path) -> None:
    data = build(app)
    signed = sign(data, Ed25519PrivateKey.generate(), "author")
    assert Package.from_bytes(signed).digest == Package.from_bytes(data).digest


def reencode(data: bytes, mutate: object) -> bytes:
    top = cbor2.loads(data)
    mutate(top)  # type: ignore[operator]
    return bytes(cbor2.dumps(top, canonical=True))


def test_dropped_file_is_refused(app: Path) -> None:
    data = reencode(build(app), lambda t: t["files"].pop("data/b.txt"))
    with pytest.raises(
        WorkloadRejected, match=r"manifest lists 'data/b.txt' but the package has no such file"
    ):
        Package.from_bytes(data)


def test_extra_file_is_refused(app: Path) -> None:
    data = reencode(build(app), lambda t: t["files"].__setitem__("extra", b"x"))
    with pytest.raises(WorkloadRejected, match=r"'extra' is in the package but not in the manifest"):
        Package.from_bytes(data)


def test_reordered_files_are_refused(app: Path) -> None:
    top = cbor2.loads(build(app))
    files = dict(reversed(list(top["files"].items())))
    # Hand-encode the top-level map in canonical order but the files map reversed.
    body = b"\xa4" + cbor2.dumps("v") + cbor2.dumps(1)
    body += cbor2.dumps("files") + bytes([0xA0 + len(files)])
    for k, v in files.items():
        body += cbor2.dumps(k) + cbor2.dumps(v)
    body += cbor2.dumps("manifest") + cbor2.dumps(top["manifest"], canonical=True)
    body += cbor2.dumps("signatures") + cbor2.dumps([])
    assert cbor2.loads(body) == top
    with pytest.raises(WorkloadRejected, match=r"package.files: file paths are not in canonical"):
        Package.from_bytes(body)


def test_trailing_bytes_are_refused(app: Path) -> None:
    with pytest.raises(WorkloadRejected, match=r"1 trailing byte"):
        Package.from_bytes(build(app) + b"\x00")


def test_non_shortest_encoding_is_refused(tmp_path: Path) -> None:
    data = tiny(tmp_path)
    # "v": 1 as a one-byte-argument integer (0x18 0x01) instead of 0x01.
    i = data.index(b"av\x01")
    bad = data[: i + 2] + b"\x18\x01" + data[i + 3 :]
    with pytest.raises(WorkloadRejected, match="deterministic encoding"):
        Package.from_bytes(bad)


def test_every_single_byte_flip_is_refused(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    data = sign(tiny(tmp_path), key, "author")
    assert verify_signatures(Package.from_bytes(data), [key.public_key()])
    for i in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            flipped = data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]
            with pytest.raises(StockadeError):
                verify_signatures(Package.from_bytes(flipped), [key.public_key()])


def test_manifest_naming_another_entry_is_refused(app: Path) -> None:
    def mutate(t: dict[str, object]) -> None:
        t["manifest"]["entry"] = "README.txt"  # type: ignore[index]
        t["manifest"]["files"] = ["bin/hello.wasm", "data/b.txt", "data/sub/a.txt"]  # type: ignore[index]

    with pytest.raises(WorkloadRejected, match=r"entry 'README.txt' is not a WebAssembly module"):
        Package.from_bytes(reencode(build(app), mutate))

    def missing(t: dict[str, object]) -> None:
        t["manifest"]["entry"] = "bin/other.wasm"  # type: ignore[index]

    with pytest.raises(WorkloadRejected, match=r"entry 'bin/other.wasm' is not a file in the package"):
        Package.from_bytes(reencode(build(app), missing))


def test_entry_not_wasm_is_a_build_error(tmp_path: Path) -> None:
    d = make_dir(tmp_path / "app", wasm=b"#!/bin/sh\necho hi\n")
    with pytest.raises(UsageError, match="not a WebAssembly module"):
        build(d)


@pytest.mark.parametrize("bad", ["../etc/passwd", "/etc/passwd", "data/../../x", ""])
def test_path_traversal_in_manifest_is_refused(tmp_path: Path, bad: str) -> None:
    d = make_dir(tmp_path / "app", manifest=MANIFEST.replace('"README.txt"', f'"{bad}"'))
    with pytest.raises(UsageError, match=r"Stockade.toml:5: files"):
        build(d)


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/./b", "a//b", "a/", "./a", "a\\b"])
def test_path_traversal_in_package_is_refused(app: Path, bad: str) -> None:
    def mutate(t: dict[str, object]) -> None:
        t["files"][bad] = b"x"  # type: ignore[index]

    with pytest.raises(WorkloadRejected, match="not a normalized relative POSIX path"):
        Package.from_bytes(reencode(build(app), mutate))


def test_file_used_as_directory_is_refused(app: Path) -> None:
    def mutate(t: dict[str, object]) -> None:
        t["files"]["README.txt/x"] = b"x"  # type: ignore[index]
        t["manifest"]["files"] = sorted([*t["manifest"]["files"], "README.txt/x"])  # type: ignore[index]

    with pytest.raises(WorkloadRejected, match="is a file but"):
        Package.from_bytes(reencode(build(app), mutate))


def test_symlink_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    d = make_dir(tmp_path / "app")
    (tmp_path / "secret").write_text("s")
    (d / "data" / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(UsageError, match="resolves outside"):
        build(d)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("colour = 1\n" + MANIFEST, "Stockade.toml:1: unknown key 'colour'"),
        (MANIFEST + "colour = 1\n", "Stockade.toml:22: unknown key build.colour"),
        (
            MANIFEST.replace("timeout_ms = 5000", "timeout_ms = 5000\ncpu = 2"),
            "Stockade.toml:13: unknown key limits.cpu",
        ),
        (MANIFEST + "[extra]\nx = 1\n", "Stockade.toml:22: unknown key 'extra'"),
        (
            MANIFEST.replace("timeout_ms = 5000", "timeout_ms = -1"),
            "Stockade.toml:12: limits.timeout_ms must be",
        ),
        (MANIFEST.replace('version = "1.0.0"\n', ""), "Stockade.toml: missing required key 'version'"),
    ],
)
def test_manifest_errors_name_file_line_and_key(tmp_path: Path, text: str, where: str) -> None:
    d = make_dir(tmp_path / "app", manifest=text)
    with pytest.raises(UsageError) as info:
        build(d)
    assert where in str(info.value)


def test_unknown_manifest_key_inside_a_package_is_refused(app: Path) -> None:
    data = reencode(build(app), lambda t: t["manifest"].__setitem__("colour", "red"))
    with pytest.raises(WorkloadRejected, match="unknown key 'colour'"):
        Package.from_bytes(data)


# -- signatures ---------------------------------------------------------------


def test_signature_covers_the_documented_bytes(app: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pkg = Package.from_bytes(sign(build(app), key, "author"))
    (s,) = pkg.signatures
    assert (s.alg, s.role, s.kid) == ("Ed25519", "author", key_id(key.public_key()))
    key.public_key().verify(s.sig, b"stockade-package-signature/v2\x00author\x00" + pkg.digest)
    assert SIGNED_PREFIX == b"stockade-package-signature/v2\x00"


# --- the role is signed (issue 13 item 7) -------------------------------------------------


def _swap_role(data: bytes) -> bytes:
    """``data`` with its only signature's role changed and nothing else."""
    return reencode(
        data,
        lambda t: t["signatures"][0].__setitem__(
            "role", "reviewer" if t["signatures"][0]["role"] == "author" else "author"
        ),
    )


@pytest.mark.parametrize("role", ["author", "reviewer"])
def test_a_changed_role_breaks_the_signature(app: Path, role: str) -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign(build(app), key, role)
    assert verify_signatures(Package.from_bytes(signed), [key.public_key()]).signers[0].role == role
    tampered = Package.from_bytes(_swap_role(signed))
    assert tampered.digest == Package.from_bytes(signed).digest  # the role is outside the digest
    other = "reviewer" if role == "author" else "author"
    with pytest.raises(VerificationFailed, match=f"does not verify over role {other} and digest"):
        verify_signatures(tampered, [key.public_key()])


def test_a_v1_signature_is_refused_with_a_clear_message(app: Path) -> None:
    """v1 signed the digest only; such a signature no longer counts, and the
    message says why and what to do."""
    key = Ed25519PrivateKey.generate()
    pkg = Package.from_bytes(build(app))
    old = Signature(
        alg="Ed25519",
        kid=key_id(key.public_key()),
        role="author",
        sig=key.sign(b"stockade-package-signature/v1\x00" + pkg.digest),
    )
    v1 = Package.from_bytes(dataclasses.replace(pkg, signatures=(old,)).to_bytes())
    with pytest.raises(VerificationFailed) as info:
        verify_signatures(v1, [key.public_key()])
    assert "is a v1 signature, which does not sign the role; re-sign the package" in info.value.detail
    assert "\n" not in info.value.detail


def test_signed_bytes_refuses_an_unknown_role() -> None:
    with pytest.raises(UsageError, match="role 'boss'"):
        signed_bytes(bytes(32), "boss")


def test_untrusted_signer_is_not_counted(app: Path) -> None:
    signer, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pkg = Package.from_bytes(sign(build(app), signer, "author"))
    with pytest.raises(VerificationFailed, match="0 valid signature"):
        verify_signatures(pkg, [other.public_key()])
    unsigned = Package.from_bytes(build(app))
    with pytest.raises(VerificationFailed, match="0 valid signature"):
        verify_signatures(unsigned, [signer.public_key()])


def test_tampered_signature_is_refused(app: Path) -> None:
    key = Ed25519PrivateKey.generate()

    def mutate(t: dict[str, object]) -> None:
        sig = t["signatures"][0]  # type: ignore[index]
        sig["sig"] = bytes([sig["sig"][0] ^ 1]) + sig["sig"][1:]

    data = reencode(sign(build(app), key, "author"), mutate)
    with pytest.raises(VerificationFailed, match="does not verify"):
        verify_signatures(Package.from_bytes(data), [key.public_key()])


def test_signature_over_other_content_is_refused(app: Path, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    signed = Package.from_bytes(sign(build(app), key, "author"))
    other = Package.from_bytes(tiny(tmp_path))
    moved = Package(other.manifest, other.files, other.digest, signed.signatures)
    with pytest.raises(VerificationFailed, match="does not verify"):
        verify_signatures(Package.from_bytes(moved.to_bytes()), [key.public_key()])


def test_malformed_signature_entry_is_refused(app: Path) -> None:
    key = Ed25519PrivateKey.generate()
    for field, value in (("alg", "RSA"), ("role", "boss"), ("kid", "AB" * 32), ("sig", b"short")):
        data = reencode(
            sign(build(app), key, "author"),
            lambda t, f=field, v=value: t["signatures"][0].__setitem__(f, v),
        )
        with pytest.raises(WorkloadRejected, match=r"signatures\[0\]"):
            Package.from_bytes(data)


def test_author_and_reviewer_with_require_two(app: Path) -> None:
    author, reviewer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    once = sign(build(app), author, "author")
    twice = sign(once, reviewer, "reviewer")
    keys = [author.public_key(), reviewer.public_key()]
    with pytest.raises(VerificationFailed, match=r"1 valid signature.*2 required"):
        verify_signatures(Package.from_bytes(once), keys, required=2)
    verified = verify_signatures(Package.from_bytes(twice), keys, required=2)
    assert isinstance(verified, VerifiedPackage)
    assert {(s.kid, s.role) for s in verified.signers} == {
        (key_id(author.public_key()), "author"),
        (key_id(reviewer.public_key()), "reviewer"),
    }
    # Re-signing by the same key replaces its signature.
    again = Package.from_bytes(sign(twice, author, "reviewer"))
    assert len(again.signatures) == 2
    assert {s.role for s in again.signatures} == {"reviewer"}
    with pytest.raises(TypeError):
        VerifiedPackage(again, (), ())


# -- CLI ------------------------------------------------------------------------


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stockade", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_build_inspect_sign_verify(app: Path, tmp_path: Path) -> None:
    import json

    out = tmp_path / "hello.stockade"
    p = cli("package", "build", app, "-o", out, "--json")
    assert p.returncode == 0, p.stderr
    digest = json.loads(p.stdout)["digest"]
    assert out.read_bytes() == build(app)

    p = cli("package", "inspect", out, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["digest"] == digest
    # canonical order: shorter encodings first, then bytewise
    assert [f["path"] for f in doc["files"]] == [
        "README.txt",
        "data/b.txt",
        "bin/hello.wasm",
        "data/sub/a.txt",
    ]
    assert cli("package", "inspect", out).returncode == 0

    for name in ("author", "reviewer"):
        p = cli("key", "generate", "--out", tmp_path / name)
        assert p.returncode == 0, p.stderr
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
        assert (tmp_path / f"{name}.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert cli("key", "generate", "--out", tmp_path / "author").returncode == 2  # never overwrites

    p = cli("package", "verify", out, "--signer", tmp_path / "author.pub")
    assert p.returncode == 110, p.stderr
    assert cli("package", "sign", out, "--key", tmp_path / "author").returncode == 0
    p = cli("package", "verify", out, "--signer", tmp_path / "author.pub")
    assert p.returncode == 0, p.stderr
    assert "author" in p.stdout
    trusted = ("--signer", tmp_path / "author.pub", "--signer", tmp_path / "reviewer.pub")
    assert cli("package", "verify", out, *trusted, "--require", "2").returncode == 110
    assert cli("package", "sign", out, "--key", tmp_path / "reviewer", "--role", "reviewer").returncode == 0
    p = cli("package", "verify", out, *trusted, "--require", "2", "--json")
    assert p.returncode == 0, p.stderr
    assert sorted(s["role"] for s in json.loads(p.stdout)["signers"]) == ["author", "reviewer"]
    assert (
        cli("package", "verify", out, "--signer", tmp_path / "author.pub", "--require", "2").returncode == 2
    )

    bad = tmp_path / "bad.stockade"
    bad.write_bytes(out.read_bytes() + b"\x00")
    p = cli("package", "verify", bad, "--signer", tmp_path / "author.pub")
    assert p.returncode == 117
    assert "trailing" in p.stderr
    assert cli("package", "inspect", bad).returncode == 117
    (app / "Stockade.toml").write_text("oops = 1\n" + MANIFEST)
    p = cli("package", "build", app, "-o", tmp_path / "x.stockade")
    assert p.returncode == 2
    assert "Stockade.toml:1: unknown key 'oops'" in p.stderr


# -- the CDDL in docs/package.md ----------------------------------------------


def _cddl() -> str:
    text = (Path(__file__).resolve().parent.parent / "docs" / "package.md").read_text()
    return text.split("```cddl\n", 1)[1].split("```", 1)[0]


def test_built_and_signed_packages_match_the_documented_cddl(app: Path) -> None:
    import pycddl

    schema = pycddl.Schema(_cddl())
    data = build(app)
    schema.validate_cbor(data)
    signed = sign(
        sign(data, Ed25519PrivateKey.generate(), "author"), Ed25519PrivateKey.generate(), "reviewer"
    )
    schema.validate_cbor(signed)
    bad = reencode(signed, lambda t: t["signatures"][0].__setitem__("role", "boss"))
    with pytest.raises(Exception):  # noqa: B017  (pycddl raises its own ValidationError)
        schema.validate_cbor(bad)
    with pytest.raises(WorkloadRejected):
        Package.from_bytes(bad)


def test_cli_build_default_output_is_name_dot_stockade(app: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    p = subprocess.run(
        [sys.executable, "-m", "stockade", "package", "build", str(app)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert (cwd / "hello.stockade").read_bytes() == build(app)
    (app / "Stockade.toml").write_text(MANIFEST.replace('name = "hello"', 'name = "../evil"'))
    p = subprocess.run(
        [sys.executable, "-m", "stockade", "package", "build", str(app)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2
    assert "not usable as a file name; give -o FILE" in p.stderr
    assert sorted(x.name for x in cwd.iterdir()) == ["hello.stockade"]
