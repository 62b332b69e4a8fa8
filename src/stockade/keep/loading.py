"""Loading a package inside the Keep: check it, measure it, refuse it.

The Keep trusts nothing about the package bytes it receives: they may come
from the client inside the attested channel, or be *staged* by the host
(untrusted), in which case a hostile host may have swapped them. Loading:

1. trusted boot: if the load request pins digests, computes the content
   digest from the raw bytes *before parsing them*
   (stockade.package.prehash: item headers only, nothing decoded) and
   refuses any other digest, or bytes without the layout of a package;
2. parses the package strictly and recomputes its content digest
   (stockade.package.format: a flipped byte, a dropped, added or reordered
   file, a manifest naming another entry are refused); with pinned digests
   it must equal the one computed in step 1;
3. if the load request names trusted signers, verifies their signatures
   over the digest and requires ``min_signatures`` of them;
4. measures into the event log, in this order: the runtime, the package
   digest, each verified signer, the entry module, every other file, the
   deploy-time configuration.

Refusals raise WorkloadRejected (or SignatureRejected, exit 110) before
anything runs; the client sees them as problems.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from stockade import __version__
from stockade.binding.eventlog import MAX_EVENTS, EventLog
from stockade.errors import WorkloadRejected
from stockade.package.format import Package
from stockade.package.manifest import Socket
from stockade.package.prehash import Unhashable, content_digest
from stockade.package.signing import verify_signatures
from stockade.wire.messages import Config, FileEntry, Load, SocketPlan, Workload
from stockade.wire.staging import MAX_STAGED, STAGED_NAME


@functools.cache
def runtime_name() -> str:
    return f"stockade-keep {__version__}; wasmtime {distribution_version('wasmtime')}"


def distribution_version(name: str) -> str:
    """The ``Version`` of the first ``NAME-*.dist-info/METADATA`` on
    ``sys.path``: the file and the order ``importlib.metadata.version`` uses
    (a VM Keep's image ships that file, stockade.image.build), without
    importing ``importlib.metadata`` (with email, csv and zipfile, more start-up
    work than the rest of the package loader). "unknown" if there is none."""
    prefix = f"{name}-"
    for entry in sys.path:
        try:
            found = sorted(
                n for n in os.listdir(entry or ".") if n.startswith(prefix) and n.endswith(".dist-info")
            )
        except OSError:
            continue
        for dist in found:
            try:
                with open(os.path.join(entry or ".", dist, "METADATA"), encoding="utf-8") as f:
                    for line in f:
                        if not line.strip():
                            break  # end of the header block (core metadata, RFC 822 style)
                        key, sep, value = line.partition(":")
                        if sep and key.strip().lower() == "version":
                            return value.strip()
            except OSError:
                continue
    return "unknown"


@dataclass(frozen=True)
class Loaded:
    """A package checked and measured; the workload lacks only the release."""

    workload: Workload
    log: EventLog
    package: Package


def read_staged(scratch: Path | None) -> bytes:
    """The staged package, refused unread when the file is larger than
    MAX_STAGED. Read once, into memory: the host could change the file
    between two reads, so the bytes that are hashed (check_pinned) are the
    bytes that are parsed."""
    if scratch is None:
        raise WorkloadRejected("the client asked for a staged package, but this Keep has no staging area")
    path = scratch / STAGED_NAME
    too_large = WorkloadRejected(f"the staged package is larger than {MAX_STAGED} bytes")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_STAGED:
                raise too_large
            data = f.read(size + 1)
            if len(data) > size:  # the file grew since fstat: the rest, bounded
                data += f.read(MAX_STAGED + 1 - len(data))
            if len(data) > MAX_STAGED:
                raise too_large
    except FileNotFoundError:
        raise WorkloadRejected("the client asked for a staged package, but the host staged none") from None
    except OSError as exc:
        raise WorkloadRejected(f"the staged package cannot be read ({exc.strerror})") from None
    return data


def check_pinned(data: bytes, digests: tuple[bytes, ...], origin: str) -> bytes:
    """Trusted boot, before any parsing: the content digest of ``data``
    (stockade.package.prehash) must be one of ``digests``; returns it."""
    try:
        digest = content_digest(data)
    except Unhashable as exc:
        raise WorkloadRejected(
            f"trusted boot: the package {origin} has none of the {len(digests)} pinned digest(s): "
            f"it is not laid out as a package ({exc.reason}); refusing it without parsing it"
        ) from None
    if digest not in digests:
        raise WorkloadRejected(
            f"trusted boot: the package {origin} has digest {digest.hex()}, "
            f"which is not among the {len(digests)} pinned digest(s); refusing to run it"
        )
    return digest


def load(request: Load, scratch: Path | None) -> Loaded:
    data = request.package if request.package is not None else read_staged(scratch)
    origin = "staged by the host" if request.staged else "sent by the client"
    expect = request.expect
    pinned = check_pinned(data, expect.digests, origin) if expect.digests else None
    try:
        package = Package.from_bytes(data)
    except WorkloadRejected as exc:
        raise WorkloadRejected(f"package {origin}: {exc.detail}") from None
    if pinned is not None and package.digest != pinned:  # the strict parse makes them equal
        raise WorkloadRejected(
            f"trusted boot: the package {origin} parsed to digest {package.digest.hex()}, not the "
            f"pinned {pinned.hex()} computed from its bytes; refusing to run it"
        )
    # runtime, package, signers, entry, files, config: all must fit the log.
    if 3 + len(expect.signers) + len(package.files) > MAX_EVENTS:
        raise WorkloadRejected(
            f"package {origin} has more files than a Keep measures ({MAX_EVENTS - 3} at most)"
        )
    log = EventLog()
    name = runtime_name()
    log.measure("runtime", name, hashlib.sha256(name.encode()).digest())
    manifest = package.manifest
    log.measure("package", f"{manifest.name} {manifest.version}", package.digest)
    if expect.signers:
        keys = [Ed25519PublicKey.from_public_bytes(raw) for raw in expect.signers]
        verified = verify_signatures(package, keys, expect.min_signatures)
        for signer in verified.signers:
            log.measure("signer", signer.role, bytes.fromhex(signer.kid))
    entry = package.entry_bytes
    log.measure("entry", manifest.entry, hashlib.sha256(entry).digest())
    contents = dict(package.files)
    files: list[FileEntry] = []
    for path in manifest.files:
        content = contents[path]
        log.measure("file", path, hashlib.sha256(content).digest())
        files.append(FileEntry("/" + path, content))
    config = request.config
    log.measure("config", "deploy", config.digest())
    guest_paths = {f.path for f in files}
    clash = sorted(guest_paths & {f.path for f in config.files})
    if clash:
        raise WorkloadRejected(f"deploy-time file {clash[0]} would replace a file of the package")
    env = dict(manifest.env)
    env.update(config.env)
    workload = Workload(
        wasm=entry,
        args=(*manifest.args, *config.args),
        env=tuple(sorted(env.items())),
        files=(*files, *config.files),
        limits=config.limits,
        sockets=socket_plans(manifest.network, config),
    )
    return Loaded(workload=workload, log=log, package=package)


#: Where a listen socket binds when the deploy names no address.
DEFAULT_LISTEN = "127.0.0.1:0"


def socket_plans(declared: tuple[Socket, ...], config: Config) -> tuple[SocketPlan, ...]:
    """The workload's sockets: each one the manifest declares, with its
    deploy-time address (a listen socket defaults to DEFAULT_LISTEN; a
    connect socket must have one). An address for a socket the package
    does not declare is refused."""
    addresses = {(a.kind, a.name): a.address for a in config.network}
    plans: list[SocketPlan] = []
    for sock in declared:
        address = addresses.pop((sock.kind, sock.name), None)
        if address is None and sock.kind == "connect":
            raise WorkloadRejected(
                f"the package's connect socket {sock.name!r} has no address: deploy with --connect {sock.name}=HOST:PORT"
            )
        peers = sock.peers
        plans.append(
            SocketPlan(
                kind=sock.kind,
                name=sock.name,
                address=address or DEFAULT_LISTEN,
                signers=peers.signers if peers else (),
                digests=peers.digests if peers else (),
                peers_required=peers is not None,
            )
        )
    if addresses:
        kind, name = sorted(addresses)[0]
        raise WorkloadRejected(
            f"the deploy gives an address for {kind} socket {name!r}, which the package does not declare"
        )
    return tuple(plans)


__all__ = ["STAGED_NAME", "Loaded", "check_pinned", "load", "read_staged", "runtime_name"]
