"""``stockade log init|append|get|head|prove|consistency|verify|recover``:
the transparency log (stockade.translog; docs/transparency-log.md).

The operator's commands take ``--state-dir DIR`` (the log's files and
key). ``log verify --proof FILE --tree-head FILE --key FILE ENTRY`` (and
``--consistency FILE --old-tree-head FILE --tree-head FILE --key FILE``)
is the offline check anyone can run with the log's public key.

Exit codes: 0 ok; 2 usage (bad command line, unreadable file, no such
entry, no tree head of that size, a log in use); 110 a proof, tree head
signature or the log's own files do not verify (``LogProofError``); 111
an entry, tree head or proof that does not parse (``MalformedLogData``)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stockade.commands._fileio import read_file, write_atomic
from stockade.commands._output import json_option
from stockade.errors import MalformedLogData, UsageError

if TYPE_CHECKING:
    from stockade.translog import LogEntry, LogKey
    from stockade.translog.treehead import ConsistencyProof, InclusionProof, VerifiedTreeHead

KINDS = ("package-signature", "certificate", "refusal-digest")
ALGORITHMS = {"ed25519": "ed25519", "ecdsa-p256": "ecdsa-p256-sha256"}


def _echo_json(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc, indent=2))


def _head_doc(head: VerifiedTreeHead) -> dict[str, Any]:
    return {
        "log_id": head.head.log_id.hex(),
        "size": head.size,
        "root": head.root.hex(),
        "time_ms": head.head.time_ms,
        "signed_tree_head": base64.b64encode(head.raw).decode(),
    }


state_dir_option = click.option(
    "--state-dir",
    "state_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The log's state directory (entries, tree heads, key).",
)


@click.group()
def log() -> None:
    """Keep and check the transparency log (RFC 9162 Merkle tree)."""


@log.command()
@state_dir_option
@click.option(
    "--algorithm",
    type=click.Choice(sorted(ALGORITHMS)),
    default="ed25519",
    show_default=True,
    help="Tree-head signing key type (kept in DIR/log.key, mode 0600).",
)
@json_option("Print the result as JSON.")
def init(state_dir: Path, algorithm: str, as_json: bool) -> None:
    """Create an empty log with a new signing key in DIR (new or empty)."""
    from stockade.translog import TransparencyLog

    with TransparencyLog.create(state_dir, algorithm=ALGORITHMS[algorithm]) as tlog:
        doc = {
            "state_dir": str(state_dir),
            "log_id": tlog.key.log_id.hex(),
            "public_key": str(state_dir / "log.pub"),
        }
    if as_json:
        _echo_json(doc)
    else:
        click.echo(f"log {doc['log_id']} created in {state_dir}; its public key: {doc['public_key']}")


def _package_entries(path: Path, signers: tuple[Path, ...]) -> list[LogEntry]:
    """One entry per signature of the package at ``path``, each checked
    against the public key given for it with --signer."""
    from cryptography.exceptions import InvalidSignature

    from stockade.package import Package, load_public_key
    from stockade.package.signing import key_id, raw_public_key, signed_bytes
    from stockade.translog import PackageSignatureEntry

    keys = {key_id(k): k for k in (load_public_key(p) for p in signers)}
    pkg = Package.from_bytes(read_file(path))
    if not pkg.signatures:
        raise UsageError(f"{path}: the package has no signature to log")
    out: list[LogEntry] = []
    for sig in pkg.signatures:
        key = keys.get(sig.kid)
        if key is None:
            raise UsageError(
                f"{path}: signature by key {sig.kid[:16]}… ({sig.role}): give its public key with --signer"
            )
        try:
            key.verify(sig.sig, signed_bytes(pkg.digest, sig.role))
        except InvalidSignature:
            raise UsageError(
                f"{path}: signature by key {sig.kid[:16]}… ({sig.role}) does not verify"
            ) from None
        out.append(PackageSignatureEntry(pkg.digest, raw_public_key(key), sig.role, sig.sig))
    return out


def _certificate_entry(path: Path) -> LogEntry:
    from cryptography import x509

    from stockade.translog import CertificateEntry

    data = read_file(path)
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if b"-----BEGIN" in data
            else x509.load_der_x509_certificate(data)
        )
    except ValueError:
        raise UsageError(f"{path}: not a PEM or DER X.509 certificate") from None
    from cryptography.hazmat.primitives.serialization import Encoding

    return CertificateEntry(cert.public_bytes(Encoding.DER))


@log.command()
@state_dir_option
@click.option("--kind", required=True, type=click.Choice(KINDS), help="What the FILEs are.")
@click.option(
    "--signer",
    "signers",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="package-signature: public key (PEM) of a signer; every signature logged must verify under one.",
)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@json_option("Print the result as JSON.")
def append(
    state_dir: Path, kind: str, signers: tuple[Path, ...], files: tuple[Path, ...], as_json: bool
) -> None:
    """Append entries made from FILEs: each signature of a package
    (package-signature), a certificate (certificate, PEM or DER), or the
    SHA-256 of a refusal document (refusal-digest)."""
    import hashlib

    from stockade.translog import RefusalDigestEntry, TransparencyLog, verify_tree_head

    entries: list[LogEntry] = []
    for path in files:
        if kind == "package-signature":
            entries.extend(_package_entries(path, signers))
        elif kind == "certificate":
            entries.append(_certificate_entry(path))
        else:
            entries.append(RefusalDigestEntry(hashlib.sha256(read_file(path)).digest()))
    with TransparencyLog.open(state_dir) as tlog:
        first, sth = tlog.append(entries)
        head = verify_tree_head(sth, [tlog.key])
    doc = {"first_index": first, "count": len(entries), **_head_doc(head)}
    if as_json:
        _echo_json(doc)
    else:
        click.echo(
            f"appended {len(entries)} entries at {first}..{first + len(entries) - 1}; tree size {head.size}"
        )


@log.command()
@state_dir_option
@click.argument("index", type=click.IntRange(min=0))
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the entry's bytes (CBOR) here."
)
def get(state_dir: Path, index: int, out: Path | None) -> None:
    """Print entry INDEX as JSON (and write its bytes with --out)."""
    from stockade.translog import TransparencyLog, decode_entry
    from stockade.translog.entries import describe
    from stockade.translog.merkle import leaf_hash

    with TransparencyLog.open(state_dir, writable=False) as tlog:
        data = tlog.entry(index)
    if out is not None:
        write_atomic(out, data)
    _echo_json({"index": index, "leaf_hash": leaf_hash(data).hex(), **describe(decode_entry(data))})


@log.command()
@state_dir_option
@click.option("--size", type=click.IntRange(min=0), help="The tree head of this size (default: the latest).")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the signed tree head (CBOR) here."
)
def head(state_dir: Path, size: int | None, out: Path | None) -> None:
    """Print the latest signed tree head (or the one of --size) as JSON."""
    from stockade.translog import TransparencyLog, verify_tree_head

    with TransparencyLog.open(state_dir, writable=False) as tlog:
        raw = tlog.tree_head if size is None else tlog.tree_head_for(size)
        verified = verify_tree_head(raw, [tlog.key])
    if out is not None:
        write_atomic(out, raw)
    _echo_json(_head_doc(verified))


@log.command()
@state_dir_option
@click.argument("index", type=click.IntRange(min=0))
@click.option(
    "--size", type=click.IntRange(min=1), help="Prove against the tree head of this size (default: latest)."
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the proof (CBOR) here.")
def prove(state_dir: Path, index: int, size: int | None, out: Path | None) -> None:
    """Print an inclusion proof of entry INDEX with its tree head, as JSON."""
    from stockade.translog import TransparencyLog, verify_tree_head
    from stockade.translog.merkle import leaf_hash

    with TransparencyLog.open(state_dir, writable=False) as tlog:
        size = tlog.signed_size if size is None else size
        if index >= size:
            raise UsageError(f"entry {index} is not in the tree of size {size}")
        sth = tlog.tree_head_for(size)
        proof = tlog.inclusion_proof(index, size)
        entry = tlog.entry(index)
        verified = verify_tree_head(sth, [tlog.key])
    if out is not None:
        write_atomic(out, proof.to_cbor())
    _echo_json(
        {
            "inclusion_proof": proof.to_json(),
            "leaf_hash": leaf_hash(entry).hex(),
            "entry": base64.b64encode(entry).decode(),
            "tree_head": _head_doc(verified),
        }
    )


@log.command()
@state_dir_option
@click.argument("old", type=click.IntRange(min=0))
@click.argument("new", type=click.IntRange(min=0))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the proof (CBOR) here.")
def consistency(state_dir: Path, old: int, new: int, out: Path | None) -> None:
    """Print a consistency proof from the tree head of size OLD to the one
    of size NEW, with both heads, as JSON."""
    from stockade.translog import TransparencyLog, verify_tree_head

    with TransparencyLog.open(state_dir, writable=False) as tlog:
        old_sth, new_sth = tlog.tree_head_for(old), tlog.tree_head_for(new)
        proof = tlog.consistency_proof(old, new)
        heads = [verify_tree_head(s, [tlog.key]) for s in (old_sth, new_sth)]
    if out is not None:
        write_atomic(out, proof.to_cbor())
    _echo_json(
        {
            "consistency_proof": proof.to_json(),
            "old_tree_head": _head_doc(heads[0]),
            "tree_head": _head_doc(heads[1]),
        }
    )


def _hashes(doc: dict[str, Any], what: str) -> tuple[bytes, ...]:
    path = doc.get("path")
    if not isinstance(path, list) or not all(isinstance(h, str) for h in path):
        raise MalformedLogData(f"{what}: path must be a list of hex strings")
    try:
        return tuple(bytes.fromhex(h) for h in path)
    except ValueError:
        raise MalformedLogData(f"{what}: path holds a string that is not hex") from None


def _json_proof(data: bytes, key: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise MalformedLogData(f"{what}: neither CBOR nor the JSON that `stockade log` prints") from None
    inner = doc.get(key, doc) if isinstance(doc, dict) else None
    if not isinstance(inner, dict):
        raise MalformedLogData(f"{what}: JSON of the wrong shape")
    return inner


def _load_inclusion(path: Path) -> InclusionProof:
    from stockade.translog import InclusionProof

    data = read_file(path)
    if not data.lstrip().startswith(b"{"):
        return InclusionProof.from_cbor(data)
    doc = _json_proof(data, "inclusion_proof", f"{path}")
    index, size = doc.get("index"), doc.get("size")
    if type(index) is not int or type(size) is not int or index < 0 or size < 0:
        raise MalformedLogData(f"{path}: index and size must be unsigned integers")
    return InclusionProof(index, size, _hashes(doc, str(path)))


def _load_consistency(path: Path) -> ConsistencyProof:
    from stockade.translog import ConsistencyProof

    data = read_file(path)
    if not data.lstrip().startswith(b"{"):
        return ConsistencyProof.from_cbor(data)
    doc = _json_proof(data, "consistency_proof", f"{path}")
    old, new = doc.get("old_size"), doc.get("new_size")
    if type(old) is not int or type(new) is not int or old < 0 or new < 0:
        raise MalformedLogData(f"{path}: old_size and new_size must be unsigned integers")
    return ConsistencyProof(old, new, _hashes(doc, str(path)))


def _load_keys(paths: tuple[Path, ...]) -> list[LogKey]:
    from stockade.translog import LogKey

    keys = []
    for p in paths:
        try:
            keys.append(LogKey.from_pem(read_file(p)))
        except MalformedLogData as exc:
            raise UsageError(f"--key {p}: {exc}") from None
    return keys


@log.command()
@click.option(
    "--state-dir",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Recompute the whole log in DIR and check every signed tree head.",
)
@click.option(
    "--proof",
    "proof_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Inclusion proof (CBOR or JSON).",
)
@click.option(
    "--consistency",
    "consistency_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Consistency proof (CBOR or JSON) from --old-tree-head to --tree-head.",
)
@click.option(
    "--tree-head",
    "head_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Signed tree head (CBOR).",
)
@click.option(
    "--old-tree-head",
    "old_head_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The earlier tree head you hold.",
)
@click.option(
    "--key",
    "key_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trusted log public key (PEM); repeat.",
)
@click.argument("entry_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@json_option("Print the result as JSON.")
def verify(
    state_dir: Path | None,
    proof_file: Path | None,
    consistency_file: Path | None,
    head_file: Path | None,
    old_head_file: Path | None,
    key_files: tuple[Path, ...],
    entry_file: Path | None,
    as_json: bool,
) -> None:
    """Check a log: the whole state directory (--state-dir DIR), or
    offline, with the log's public key: that ENTRY (its bytes, from `log
    get --out`) is in the tree of --tree-head (--proof), or that
    --tree-head extends --old-tree-head (--consistency)."""
    from stockade.translog import TransparencyLog, verify_consistency, verify_inclusion

    modes = [m for m in (state_dir, proof_file, consistency_file) if m is not None]
    if len(modes) != 1:
        raise UsageError("give exactly one of --state-dir DIR, --proof FILE or --consistency FILE")
    doc: dict[str, Any]
    if state_dir is not None:
        if head_file or old_head_file or key_files or entry_file:
            raise UsageError("--state-dir takes no --tree-head, --old-tree-head, --key or ENTRY")
        with TransparencyLog.open(state_dir, writable=False) as tlog:
            report = tlog.verify()
        rec = report.recovery
        doc = {
            "verified": "log",
            "size": report.size,
            "root": report.root.hex(),
            "tree_heads": report.tree_heads,
            "unsigned_entries": rec.unsigned_entries,
            "torn_bytes": rec.torn_entry_bytes + rec.torn_head_bytes,
        }
        line = f"log verified: {report.size} entries, root {report.root.hex()}, {report.tree_heads} signed tree heads"
        if rec:
            line += (
                f"; an append was interrupted ({rec.unsigned_entries} entries not signed yet, "
                f"{doc['torn_bytes']} torn bytes): `stockade log recover` repairs it"
            )
    else:
        if head_file is None or not key_files:
            raise UsageError("offline verification needs --tree-head FILE and --key FILE")
        keys = _load_keys(key_files)
        sth = read_file(head_file)
        if proof_file is not None:
            if entry_file is None or old_head_file is not None:
                raise UsageError("--proof needs the ENTRY file and no --old-tree-head")
            entry = read_file(entry_file)
            result = verify_inclusion(entry, _load_inclusion(proof_file), sth, keys)
            doc = {"verified": "inclusion", "index": result.index, **_head_doc(result.tree_head)}
            line = f"entry {result.index} is in the log's tree of size {result.tree_head.size} (signed tree head verified)"
        else:
            assert consistency_file is not None
            if old_head_file is None or entry_file is not None:
                raise UsageError("--consistency needs --old-tree-head FILE and no ENTRY")
            both = verify_consistency(read_file(old_head_file), sth, _load_consistency(consistency_file), keys)
            doc = {"verified": "consistency", "old_size": both.old.size, **_head_doc(both.new)}
            line = f"the tree of size {both.new.size} extends the one of size {both.old.size} (both heads verified)"
    if as_json:
        _echo_json(doc)
    else:
        click.echo(line)


@log.command()
@state_dir_option
@json_option("Print the result as JSON.")
def recover(state_dir: Path, as_json: bool) -> None:
    """Repair an interrupted append: cut a torn last record and sign a tree
    head for complete entries that have none (opening for writing does it;
    this command only opens and says what it did)."""
    from stockade.translog import TransparencyLog

    with TransparencyLog.open(state_dir) as tlog:
        rec, size = tlog.recovery, tlog.size
    doc = {
        "size": size,
        "signed_entries": rec.unsigned_entries,
        "cut_bytes": rec.torn_entry_bytes + rec.torn_head_bytes,
    }
    if as_json:
        _echo_json(doc)
    elif rec:
        click.echo(
            f"recovered: cut {doc['cut_bytes']} torn bytes, signed a tree head for {rec.unsigned_entries} "
            f"more entries; tree size {size}"
        )
    else:
        click.echo(f"nothing to recover; tree size {size}")
