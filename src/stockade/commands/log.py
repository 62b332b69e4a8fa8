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
    from stockade.translog import LogEntry, LogKey, PackageSignatureEntry
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
@click.option(
    "--steward",
    "steward_url",
    metavar="URL",
    help="Check a running steward's log: its entries against its signed tree head, and "
    "(with --tree-head FILE saved earlier) that it extends that head.",
)
@click.option(
    "--steward-ca",
    "steward_ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="--steward: the pinned steward CA certificate (PEM); its log certificate gives the log key.",
)
@click.option(
    "--save-tree-head",
    "save_head",
    type=click.Path(dir_okay=False, path_type=Path),
    help="--steward: write the steward's current signed tree head here (for the next check).",
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
    steward_url: str | None,
    steward_ca: Path | None,
    save_head: Path | None,
    entry_file: Path | None,
    as_json: bool,
) -> None:
    """Check a log: the whole state directory (--state-dir DIR), a running
    steward's log (--steward URL --steward-ca FILE), or offline, with the
    log's public key: that ENTRY (its bytes, from `log get --out`) is in
    the tree of --tree-head (--proof), or that --tree-head extends
    --old-tree-head (--consistency)."""
    from stockade.translog import TransparencyLog, verify_consistency, verify_inclusion

    modes = [m for m in (state_dir, proof_file, consistency_file, steward_url) if m is not None]
    if len(modes) != 1:
        raise UsageError(
            "give exactly one of --state-dir DIR, --steward URL, --proof FILE or --consistency FILE"
        )
    if (steward_ca is not None or save_head is not None) and steward_url is None:
        raise UsageError("--steward-ca and --save-tree-head go with --steward URL")
    doc: dict[str, Any]
    if steward_url is not None:
        if old_head_file or entry_file:
            raise UsageError(
                "--steward takes --tree-head FILE (the head you saved), not --old-tree-head or ENTRY"
            )
        if steward_ca is None:
            raise UsageError("--steward needs --steward-ca FILE (the steward CA certificate you pinned)")
        from stockade.errors import StockadeError
        from stockade.steward.request import StewardUnreachable

        try:
            doc, line = _verify_steward(steward_url, steward_ca, head_file, key_files, save_head)
        except StewardUnreachable as exc:
            raise StockadeError(str(exc)) from None
    elif state_dir is not None:
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
            both = verify_consistency(
                read_file(old_head_file), sth, _load_consistency(consistency_file), keys
            )
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


def _check_signature_entry(index: int, entry: PackageSignatureEntry) -> None:
    """A package-signature entry's signature verifies under the key it
    names, over its digest and role (stockade.package.signing)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from stockade.errors import LogProofError
    from stockade.package.signing import signed_bytes

    try:
        Ed25519PublicKey.from_public_bytes(entry.signer_key).verify(
            entry.sig, signed_bytes(entry.package_digest, entry.role)
        )
    except (InvalidSignature, ValueError):
        raise LogProofError(
            f"log entry {index}: a package signature that does not verify over its digest and role"
        ) from None


def _verify_steward(
    url: str, ca_file: Path, head_file: Path | None, key_files: tuple[Path, ...], save_head: Path | None
) -> tuple[dict[str, Any], str]:
    """`log verify --steward`: fetch the steward's head, every entry and
    (given a saved head) a consistency proof, and check them."""
    import datetime as dt

    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    from stockade.client.steward import load_ca
    from stockade.errors import LogProofError
    from stockade.steward import api
    from stockade.steward.logkey import log_key_from_certificate
    from stockade.steward.request import Connection
    from stockade.translog import (
        CertificateEntry,
        ConsistencyProof,
        PackageSignatureEntry,
        decode_entry,
        merkle,
        verify_consistency,
        verify_tree_head,
    )

    ca = load_ca(ca_file)
    now = dt.datetime.now(dt.UTC)
    with Connection(url, ca) as conn:
        if key_files:
            keys = _load_keys(key_files)
        else:
            m = api.loads(conn.expect("GET", api.CA), {"ca", "log-certificate"}, "CA answer")
            keys = [log_key_from_certificate(api.bstr(m, "log-certificate", "CA answer"), ca, now)]
        raw = api.bstr(
            api.loads(conn.expect("GET", api.LOG_HEAD), {"tree-head"}, "head answer"),
            "tree-head",
            "head answer",
        )
        head = verify_tree_head(raw, keys)
        entries: list[bytes] = []
        while len(entries) < head.size:
            page = api.loads(
                conn.expect("GET", f"{api.LOG_ENTRIES}?start={len(entries)}&count={api.MAX_ENTRIES_PAGE}"),
                {"start", "entries"},
                "entries answer",
            )
            got = api.bstr_list(page, "entries", "entries answer", api.MAX_ENTRIES_PAGE)
            if page["start"] != len(entries) or not got:
                raise LogProofError(f"steward {url} stopped serving entries at {len(entries)} of {head.size}")
            entries.extend(got[: head.size - len(entries)])
        old = None
        proof = None
        if head_file is not None:
            old_raw = read_file(head_file)
            old = verify_tree_head(old_raw, keys)
            if old.size > head.size:
                raise LogProofError(
                    f"the steward's log has {head.size} entries, fewer than the {old.size} of the tree head "
                    "you saved: entries were dropped"
                )
            m = api.loads(
                conn.expect("GET", f"{api.LOG_CONSISTENCY}?old={old.size}&new={head.size}"),
                {"proof", "old-tree-head", "tree-head"},
                "consistency answer",
            )
            proof = ConsistencyProof.from_cbor(api.bstr(m, "proof", "consistency answer"))
    tree = merkle.MerkleTree([merkle.leaf_hash(e) for e in entries])
    if tree.root() != head.root:
        raise LogProofError(
            f"the {head.size} entries steward {url} serves do not hash to its signed tree head "
            "(an entry was rewritten or dropped)"
        )
    counts: dict[str, int] = {}
    signatures: list[tuple[int, PackageSignatureEntry]] = []
    for i, e in enumerate(entries):
        entry = decode_entry(e)
        counts[entry.KIND] = counts.get(entry.KIND, 0) + 1
        if isinstance(entry, CertificateEntry):
            try:
                x509.load_der_x509_certificate(entry.der).verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                raise LogProofError(
                    f"log entry {i}: a certificate the pinned steward CA did not issue"
                ) from None
        elif isinstance(entry, PackageSignatureEntry):
            _check_signature_entry(i, entry)
            signatures.append((i, entry))
    line = (
        f"steward log verified: {head.size} entries ({counts.get('certificate', 0)} certificates, "
        f"{counts.get('refusal-digest', 0)} refusals"
        + (f", {len(signatures)} package signatures" if signatures else "")
        + ") hash to its signed tree head; every certificate in it was issued by the pinned CA"
        + (" and every package signature verifies over its digest and role" if signatures else "")
    )
    if old is not None:
        assert proof is not None
        if tree.root(old.size) != old.root:
            raise LogProofError(
                f"the first {old.size} entries the steward serves are not those of the tree head you "
                "saved: an entry was rewritten"
            )
        verify_consistency(read_file(head_file), raw, proof, keys)  # type: ignore[arg-type]
        line += f"; it extends the tree head of size {old.size} you saved (nothing before it was changed)"
    line += (
        ". This proves what this steward shows YOU; that it shows everyone the same log needs "
        "others to compare tree heads (gossip), which stockade does not do yet"
    )
    if save_head is not None:
        write_atomic(save_head, raw)
    import hashlib

    for i, se in signatures:
        line += (
            f"\n  entry {i}: package sha256:{se.package_digest.hex()} signed as {se.role} by key "
            f"{hashlib.sha256(se.signer_key).hexdigest()}"
        )

    doc = {
        "verified": "steward-log",
        "certificates": counts.get("certificate", 0),
        "refusals": counts.get("refusal-digest", 0),
        "package_signatures": [
            {
                "index": i,
                "package_digest": se.package_digest.hex(),
                "kid": hashlib.sha256(se.signer_key).hexdigest(),
                "role": se.role,
            }
            for i, se in signatures
        ],
        "extends_saved_head": old.size if old is not None else None,
        **_head_doc(head),
    }
    return doc, line
