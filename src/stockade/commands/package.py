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
    from stockade.package import Package


def _doc(pkg: Package) -> dict[str, Any]:
    return {
        "digest": pkg.digest.hex(),
        "manifest": pkg.manifest.to_map(),
        "files": [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for p, b in pkg.files],
        "signatures": [{"alg": s.alg, "kid": s.kid, "role": s.role} for s in pkg.signatures],
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
@json_option("Print the result as JSON.")
def sign(path: Path, key_path: Path, role: str, out: Path | None, as_json: bool) -> None:
    """Add a signature over PATH's content digest (replacing an earlier one
    by the same key)."""
    from stockade.package import Package, key_id, load_private_key
    from stockade.package import sign as sign_package

    key = load_private_key(key_path)
    data = sign_package(read_file(path), key, role)
    pkg = Package.from_bytes(data)
    write_atomic(out or path, data)
    kid = key_id(key.public_key())
    if as_json:
        click.echo(
            json.dumps({"package": str(out or path), "digest": pkg.digest.hex(), "kid": kid, "role": role})
        )
    else:
        click.echo(f"{out or path}: signed as {role} by {kid} (digest sha256:{pkg.digest.hex()})")


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
@json_option("Print the result as JSON.")
def verify(path: Path, signers: tuple[Path, ...], required: int, as_json: bool) -> None:
    """Check PATH's structure, digest and signatures against trusted keys."""
    from stockade.package import Package, key_id, load_public_key, verify_signatures

    keys = [load_public_key(p) for p in signers]
    names = {key_id(k): str(p) for k, p in zip(keys, signers, strict=True)}
    if required > len(names):
        raise UsageError(f"--require {required} but only {len(names)} distinct trusted key(s) given")
    pkg = Package.from_bytes(read_file(path))
    verified = verify_signatures(pkg, keys, required)
    signer_docs = [{"kid": s.kid, "role": s.role, "key": names[s.kid]} for s in verified.signers]
    doc: dict[str, Any] = {
        "package": str(path),
        "digest": verified.digest.hex(),
        "required": required,
        "signers": signer_docs,
        "untrusted": list(verified.untrusted),
    }
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"{path}: verified, {len(verified.signers)} of {required} required trusted signature(s)")
    click.echo(f"  digest  sha256:{doc['digest']}")
    for s in signer_docs:
        click.echo(f"  ok      {s['role']:<8} {s['kid']} ({s['key']})")
    for kid in verified.untrusted:
        click.echo(f"  ignored signature by untrusted key {kid}")


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
