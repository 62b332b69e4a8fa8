"""``stockade package init|build|inspect|sign|verify`` and ``stockade key
generate``: signed workload packages (docs/package.md). Exit codes: 0 ok,
2 bad command line or build input, 110 a signature check failed or too few
trusted signatures, 117 the package itself is malformed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stockade.commands._fileio import read_file, write_atomic
from stockade.commands._output import json_option
from stockade.errors import UsageError

if TYPE_CHECKING:
    from cryptography import x509

    from stockade.package import Package
    from stockade.package.format import Signature


def _log_doc(sig: Signature) -> dict[str, Any] | None:
    """What a signature's log field says (unverified: `package verify
    --log-key` checks it)."""
    if sig.log is None:
        return None
    from stockade.errors import MalformedLogData
    from stockade.translog.treehead import parse_signed_tree_head

    doc: dict[str, Any] = {
        "index": sig.log.index,
        "log_id": hashlib.sha256(sig.log.key).hexdigest(),
        "proof_hashes": len(sig.log.inclusion),
    }
    try:
        head = parse_signed_tree_head(sig.log.tree_head)[0]
        doc.update(tree_size=head.size, root=head.root.hex(), time_ms=head.time_ms)
    except MalformedLogData as exc:
        doc["malformed"] = exc.detail
    return doc


def _doc(pkg: Package) -> dict[str, Any]:
    return {
        "digest": pkg.digest.hex(),
        "manifest": pkg.manifest.to_map(),
        "files": [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for p, b in pkg.files],
        "signatures": [
            {"alg": s.alg, "kid": s.kid, "role": s.role, "log": _log_doc(s)} for s in pkg.signatures
        ],
    }


@click.group()
def package() -> None:
    """Start, build, inspect, sign and verify workload packages."""


@package.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Package file to write (default: NAME.stockade in the current directory).",
)
@json_option("Print the result as JSON.")
def build(directory: Path, out: Path | None, as_json: bool) -> None:
    """Build a package from DIRECTORY/Stockade.toml (unsigned)."""
    from stockade.package import Package
    from stockade.package import build as build_package

    if not (directory / "Stockade.toml").is_file():
        raise UsageError(f"{directory}: no Stockade.toml")
    data = build_package(directory)
    pkg = Package.from_bytes(data)
    if out is None:
        name = pkg.manifest.name
        if "/" in name or "\x00" in name or name.startswith("."):
            raise UsageError(f"the package name {name!r} is not usable as a file name; give -o FILE")
        out = Path(f"{name}.stockade")
    write_atomic(out, data)
    if as_json:
        click.echo(json.dumps({"package": str(out), "digest": pkg.digest.hex(), "size": len(data)}))
    else:
        click.echo(f"{out}: {len(data)} bytes, digest sha256:{pkg.digest.hex()}")


@package.command()
@click.option(
    "--lang",
    "lang",
    required=True,
    metavar="LANG",
    help="Language of the starter project: c, cpp, rust, python or js.",
)
@click.argument("directory", required=False, default=".", type=click.Path(path_type=Path))
@click.option("--name", help="Project name (default: the directory's name).")
@click.option(
    "--force", is_flag=True, help="Write into a non-empty DIRECTORY, replacing files of the same name."
)
@json_option("Print the result as JSON.")
def init(lang: str, directory: Path, name: str | None, force: bool, as_json: bool) -> None:
    """Write a starter project for LANG into DIRECTORY (default: here; created
    if needed, refused if not empty unless --force): source, build.sh,
    Stockade.toml and a README with the commands to build and run it."""
    from stockade.package.starter import write_starter

    starter = write_starter(lang, directory, name=name, force=force)
    if as_json:
        doc = {"directory": str(directory), "name": starter.name, "files": list(starter.files)}
        click.echo(json.dumps(doc))
        return
    for rel in starter.files:
        click.echo(f"wrote {directory / rel}")
    # A Python starter runs as a package (interpreter and program); the others as a module first.
    target = f"{starter.name}.stockade" if lang == "python" else f"{starter.name}.wasm"
    click.echo(f"next: cd {directory} && ./build.sh && stockade run --allow-sim {target}")


@package.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@json_option("Print as JSON.")
def inspect(path: Path, as_json: bool) -> None:
    """Show a package's manifest, files, digest and signatures (signatures
    are listed, not verified: use `stockade package verify`)."""
    from stockade.package import Package

    pkg = Package.from_bytes(read_file(path))
    doc = _doc(pkg)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = Table(title=f"{path.name}: manifest", show_header=False)
    m.add_column("key")
    m.add_column("value", overflow="fold")
    for key, value in doc["manifest"].items():
        text = json.dumps(value) if not isinstance(value, str) else value
        m.add_row(key, text)
    console.print(m)
    f = Table(title="files")
    f.add_column("path", overflow="fold")
    f.add_column("size", justify="right")
    f.add_column("sha256", overflow="fold")
    for item in doc["files"]:
        f.add_row(item["path"], str(item["size"]), item["sha256"])
    console.print(f)
    console.print(f"digest  sha256:{doc['digest']}")
    if not doc["signatures"]:
        console.print("signatures  none")
    for s in doc["signatures"]:
        console.print(f"signature  {s['alg']} {s['role']} kid {s['kid']} (not verified)")
        log = s["log"]
        if log is not None:
            where = f"tree size {log['tree_size']}" if "tree_size" in log else log["malformed"]
            console.print(
                f"  log      entry {log['index']} of log {log['log_id']} ({where}; "
                "proof not verified: `stockade package verify --log-key`)"
            )


@package.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 private key (PEM), from `stockade key generate`.",
)
@click.option("--role", type=click.Choice(["author", "reviewer"]), default="author", show_default=True)
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the signed package here (default: replace PATH).",
)
@click.option(
    "--log",
    "log_url",
    metavar="URL",
    help="Record the signature in the transparency log of the steward at URL and store its "
    "inclusion proof with the signature (needs --steward-ca).",
)
@click.option(
    "--steward-ca",
    "steward_ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="--log: the pinned steward CA certificate (PEM); its log certificate gives the log key.",
)
@json_option("Print the result as JSON.")
def sign(
    path: Path,
    key_path: Path,
    role: str,
    out: Path | None,
    log_url: str | None,
    steward_ca: Path | None,
    as_json: bool,
) -> None:
    """Add a signature over PATH's content digest (replacing an earlier one
    by the same key); with --log URL, record it in the steward's log and
    store the inclusion proof beside it (the content digest is unchanged)."""
    from stockade.package import Package, key_id, load_private_key
    from stockade.package import sign as sign_package

    if (log_url is None) != (steward_ca is None):
        raise UsageError("--log URL and --steward-ca FILE go together")
    key = load_private_key(key_path)
    from stockade.client.steward import load_ca

    ca = load_ca(steward_ca) if steward_ca is not None else None
    data = sign_package(read_file(path), key, role)
    pkg = Package.from_bytes(data)
    kid = key_id(key.public_key())
    logged: dict[str, Any] | None = None
    if log_url is not None:
        assert ca is not None
        from stockade.package.signing import raw_public_key

        data, logged = _log_signature(pkg, raw_public_key(key.public_key()), log_url, ca)
        pkg = Package.from_bytes(data)
    write_atomic(out or path, data)
    if as_json:
        doc = {"package": str(out or path), "digest": pkg.digest.hex(), "kid": kid, "role": role}
        click.echo(json.dumps({**doc, "log": logged} if logged is not None else doc))
    else:
        click.echo(f"{out or path}: signed as {role} by {kid} (digest sha256:{pkg.digest.hex()})")
        if logged is not None:
            click.echo(
                f"  logged  entry {logged['index']} of log {logged['log_id']} (tree size "
                f"{logged['tree_size']}); inclusion proof verified and stored with the signature"
            )


def _log_signature(
    pkg: Package, signer_key: bytes, url: str, ca: x509.Certificate
) -> tuple[bytes, dict[str, Any]]:
    """Log ``pkg``'s signature by the raw Ed25519 key ``signer_key`` at the
    steward ``url``; the package bytes with the inclusion proof stored
    beside that signature, and a summary."""
    import dataclasses

    from stockade.errors import StockadeError
    from stockade.package.format import SignatureLog
    from stockade.package.logproof import signature_entry
    from stockade.package.signing import raw_key_id
    from stockade.steward.request import StewardUnreachable, _split_url
    from stockade.steward.signatures import log_signature

    try:
        _split_url(url)
    except ValueError as exc:
        raise UsageError(f"--log: {exc}") from None
    kid = raw_key_id(signer_key)
    sig = next(s for s in pkg.signatures if s.kid == kid)
    try:
        logged = log_signature(url, signature_entry(pkg.digest, signer_key, sig), ca=ca)
    except StewardUnreachable as exc:
        raise StockadeError(f"{exc}; the package was not written") from None
    pos = logged.position
    stored = SignatureLog(
        index=pos.index, tree_head=pos.tree_head, inclusion=pos.inclusion, key=logged.log_key.spki
    )
    sigs = tuple(dataclasses.replace(s, log=stored) if s.kid == kid else s for s in pkg.signatures)
    head = logged.inclusion.tree_head
    summary = {
        "index": pos.index,
        "log_id": logged.log_key.log_id.hex(),
        "tree_size": head.size,
        "root": head.root.hex(),
    }
    return dataclasses.replace(pkg, signatures=sigs).to_bytes(), summary


@package.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--signer",
    "signers",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trusted Ed25519 public key (PEM); repeat.",
)
@click.option(
    "--require",
    "required",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many valid signatures by distinct trusted keys are needed.",
)
@click.option(
    "--log-key",
    "log_keys",
    multiple=True,
    metavar="LOG_ID",
    help="Check the inclusion proofs stored with the signatures against this trusted log "
    "(64 hex digits: SHA-256 of the log key's SubjectPublicKeyInfo, as a policy's "
    "[workload] log_keys); repeat.",
)
@click.option(
    "--require-log",
    is_flag=True,
    help="Count only signatures whose inclusion proof verifies under a --log-key log "
    "(as a policy's [workload] require_log; too few: exit 112).",
)
@json_option("Print the result as JSON.")
def verify(
    path: Path,
    signers: tuple[Path, ...],
    required: int,
    log_keys: tuple[str, ...],
    require_log: bool,
    as_json: bool,
) -> None:
    """Check PATH's structure, digest and signatures against trusted keys
    (and, with --log-key, the signatures' inclusion proofs in a log)."""
    from stockade.package import Package, key_id, load_public_key, verify_signatures
    from stockade.package.logproof import logged_signers, require_logged

    keys = [load_public_key(p) for p in signers]
    names = {key_id(k): str(p) for k, p in zip(keys, signers, strict=True)}
    if required > len(names):
        raise UsageError(f"--require {required} but only {len(names)} distinct trusted key(s) given")
    log_ids = [_log_id(text) for text in log_keys]
    if require_log and not log_ids:
        raise UsageError("--require-log needs --log-key LOG_ID (the log whose tree heads you trust)")
    pkg = Package.from_bytes(read_file(path))
    if require_log:
        counted, checks = require_logged(pkg, keys, log_ids, required, rule="--require-log")
        keys = list(counted)
    else:
        checks = logged_signers(pkg, keys, log_ids) if log_ids else ()
    verified = verify_signatures(pkg, keys, required)
    by_kid = {c.kid: c for c in checks}

    def log_state(kid: str) -> str | None:
        check = by_kid.get(kid)
        if check is None:
            return None
        if check.inclusion is None:
            return f"not logged: {check.reason}"
        head = check.inclusion.tree_head
        return (
            f"logged: entry {check.inclusion.index} of log {head.head.log_id.hex()} (tree size {head.size})"
        )

    signer_docs = [
        {"kid": s.kid, "role": s.role, "key": names[s.kid], "log": log_state(s.kid)} for s in verified.signers
    ]
    doc: dict[str, Any] = {
        "package": str(path),
        "digest": verified.digest.hex(),
        "required": required,
        "require_log": require_log,
        "signers": signer_docs,
        "untrusted": list(verified.untrusted),
        "not_counted": [
            {"kid": c.kid, "role": c.role, "reason": c.reason}
            for c in checks
            if require_log and not c.counted
        ],
    }
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    logged = " logged" if require_log else ""
    click.echo(
        f"{path}: verified, {len(verified.signers)} of {required} required trusted{logged} signature(s)"
    )
    click.echo(f"  digest  sha256:{doc['digest']}")
    for s in signer_docs:
        click.echo(f"  ok      {s['role']:<8} {s['kid']} ({s['key']})")
        if s["log"] is not None:
            click.echo(f"          {s['log']}")
    for c in doc["not_counted"]:
        click.echo(f"  not counted {c['role']} {c['kid']}: {c['reason']}")
    for kid in verified.untrusted:
        if kid not in by_kid:
            click.echo(f"  ignored signature by untrusted key {kid}")


def _log_id(text: str) -> bytes:
    try:
        value = bytes.fromhex(text.removeprefix("sha256:"))
    except ValueError:
        value = b""
    if len(value) != 32:
        raise UsageError(f"--log-key {text!r}: expected 64 hex digits (a log ID)")
    return value


@click.group()
def key() -> None:
    """Manage package signing keys."""


@key.command()
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key file to create (mode 0600); the public key goes to OUT.pub.",
)
@json_option("Print the result as JSON.")
def generate(out: Path, as_json: bool) -> None:
    """Generate an Ed25519 signing key pair."""
    from stockade.package import generate_key, key_id, load_public_key
    from stockade.package.signing import raw_public_key

    priv, pub = generate_key(out)
    public = load_public_key(pub)
    kid, raw = key_id(public), raw_public_key(public).hex()
    if as_json:
        click.echo(
            json.dumps({"private_key": str(priv), "public_key": str(pub), "kid": kid, "raw_public_key": raw})
        )
    else:
        click.echo(
            f"private key {priv} (keep it secret)\npublic key  {pub}\nkid         {kid}\n"
            f"raw key     {raw} (for a policy's [workload] signers)"
        )
