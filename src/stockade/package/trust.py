"""What can be checked offline about a package, area by area (docs/package.md,
"Trust report"; ``stockade trust``).

:func:`trust_report` takes the bytes of a package, the public keys the caller
trusts (each with a label, such as its file name) and, optionally, a source
directory to rebuild the package from. It never runs a build recipe and never
touches the network. It returns a :class:`TrustReport`: rows in four areas,
each row a check name, a :class:`Status` and one plain sentence.

Statuses mean:

- ``pass``: stockade checked it and it holds (a signature verified over the
  digest, the rebuilt digest is equal);
- ``fail``: stockade checked it and it does not hold;
- ``info``: a declaration or a value that is shown, not checked (the source
  commit the manifest names, the digest itself);
- ``unknown``: it could not be checked here (an unknown signer, no rebuild
  directory given, what no file can tell).

The outcome and its error class: a malformed package, a signature by a trusted
key that does not verify, or trusted keys given but none of them signed is an
integrity failure (:class:`IntegrityFailed`, a WorkloadRejected, exit 117); a
rebuild that gives another digest is :class:`NotReproduced` (a
VerificationFailed, exit 110). Integrity failures take precedence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from stockade.errors import StockadeError, VerificationFailed, WorkloadRejected
from stockade.package.format import Package, build
from stockade.package.signing import is_legacy_v1, key_id, signed_bytes

SCHEMA = "stockade-trust/v1"
AREAS = ("build", "integrity", "provenance", "not_knowable_offline")
AREA_TITLES = {
    "build": "build",
    "integrity": "integrity",
    "provenance": "provenance",
    "not_knowable_offline": "cannot be known offline",
}


class Status(StrEnum):
    PASS = "pass"  # noqa: S105 - a status, not a password
    FAIL = "fail"
    UNKNOWN = "unknown"
    INFO = "info"


class Outcome(StrEnum):
    OK = "ok"
    INTEGRITY_FAILED = "integrity-failed"
    NOT_REPRODUCED = "not-reproduced"


class IntegrityFailed(WorkloadRejected):
    """WorkloadRejected (exit 117) with a title about the package."""

    title = "package integrity check failed"


class NotReproduced(VerificationFailed):
    """VerificationFailed (exit 110) with a title about reproduction."""

    title = "package not reproduced"


@dataclass(frozen=True)
class TrustedKey:
    """A public key the caller trusts, with a label for the report."""

    label: str
    key: Ed25519PublicKey

    @property
    def kid(self) -> str:
        return key_id(self.key)


@dataclass(frozen=True)
class Check:
    area: str
    name: str
    status: Status
    detail: str

    def to_map(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status.value, "detail": self.detail}


@dataclass(frozen=True)
class SignatureCheck:
    """One signature of the package. ``valid`` is None when its key is not
    among the trusted keys: without the public key it cannot be checked."""

    kid: str
    role: str
    valid: bool | None
    trusted: bool
    key: str | None

    def to_map(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "role": self.role,
            "valid": self.valid,
            "trusted": self.trusted,
            "key": self.key,
        }


@dataclass(frozen=True)
class Rebuild:
    directory: str
    digest: str
    reproduced: bool
    difference: str | None

    def to_map(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "digest": self.digest,
            "reproduced": self.reproduced,
            "difference": self.difference,
        }


@dataclass(frozen=True)
class TrustReport:
    """The report. ``digest``, ``name`` and ``version`` are None when the
    package could not be parsed."""

    digest: str | None
    name: str | None
    version: str | None
    checks: tuple[Check, ...]
    signatures: tuple[SignatureCheck, ...]
    rebuild: Rebuild | None
    outcome: Outcome
    reason: str | None

    def area(self, area: str) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.area == area)

    def error(self) -> StockadeError | None:
        """The error whose exit code the CLI uses, or None when every check
        that ran passed."""
        if self.outcome is Outcome.INTEGRITY_FAILED:
            return IntegrityFailed(self.reason or "package integrity check failed")
        if self.outcome is Outcome.NOT_REPRODUCED:
            return NotReproduced(self.reason or "package not reproduced")
        return None

    @property
    def exit_code(self) -> int:
        err = self.error()
        return 0 if err is None else err.exit_code

    def to_map(self) -> dict[str, Any]:
        """The stable ``--json`` document (schema ``stockade-trust/v1``)."""
        return {
            "schema": SCHEMA,
            "digest": self.digest,
            "name": self.name,
            "version": self.version,
            "outcome": self.outcome.value,
            "exit_code": self.exit_code,
            "areas": {a: [c.to_map() for c in self.area(a)] for a in AREAS},
            "signatures": [s.to_map() for s in self.signatures],
            "rebuild": None if self.rebuild is None else self.rebuild.to_map(),
        }


NOT_KNOWABLE = (
    (
        "maintainer responsiveness",
        "Whether the maintainers answer reports and ship fixes cannot be known from a package; "
        "look at their track record.",
    ),
    (
        "expertise",
        "Whether the authors and reviewers understand this code well enough cannot be known offline: "
        "a signature says who approved the package, not how carefully.",
    ),
    (
        "key custody",
        "Whether each signing key is still held only by its owner, or was lost or revoked, cannot be "
        "checked offline: packages carry no revocation information.",
    ),
    (
        "declared source",
        "Whether the declared repository and commit exist and hold the source of these files needs "
        "that repository; the package does not contain it.",
    ),
)


def _short(kid: str) -> str:
    return kid[:16] + "…"


def _first_difference(ours: Package, theirs: Package) -> str:
    """Where a rebuilt package (``theirs``) first differs from ``ours``."""
    a, b = ours.manifest.to_map(), theirs.manifest.to_map()
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"manifest key {key!r}: {a.get(key)!r} in the package, {b.get(key)!r} rebuilt"
    fa, fb = dict(ours.files), dict(theirs.files)
    for path in sorted(set(fa) | set(fb)):
        if path not in fb:
            return f"file {path!r} is in the package but not in the rebuild"
        if path not in fa:
            return f"file {path!r} is in the rebuild but not in the package"
        if fa[path] != fb[path]:
            at = next((i for i, (x, y) in enumerate(zip(fa[path], fb[path], strict=False)) if x != y), None)
            where = (
                f"first differing byte at offset {at}" if at is not None else "one is a prefix of the other"
            )
            return (
                f"file {path!r}: sha256 {hashlib.sha256(fa[path]).hexdigest()} in the package, "
                f"{hashlib.sha256(fb[path]).hexdigest()} rebuilt ({len(fa[path])} vs {len(fb[path])} bytes, "
                f"{where})"
            )
    return "no difference found in the manifest or the files"  # pragma: no cover - digests differ


def _build_checks(pkg: Package, rebuild_dir: Path | None) -> tuple[list[Check], Rebuild | None]:
    rows: list[Check] = []
    build_decl = dict(pkg.manifest.build)
    entry = pkg.manifest.entry
    entry_sha = hashlib.sha256(pkg.entry_bytes).hexdigest()
    if build_decl:
        rows.append(
            Check(
                "build",
                "recipe",
                Status.INFO,
                f"declared: recipe {build_decl['recipe']!r}, toolchain {build_decl['toolchain']!r}.",
            )
        )
        rows.append(
            Check(
                "build",
                "recipe run",
                Status.UNKNOWN,
                "not run: stockade trust never runs build recipes. To check the module, run "
                f"{build_decl['recipe']!r} with that toolchain on the declared source and compare the "
                f"SHA-256 of what it builds with {entry!r}: {entry_sha}.",
            )
        )
    else:
        rows.append(
            Check(
                "build",
                "recipe",
                Status.UNKNOWN,
                f"not declared: the package does not say how {entry!r} was built, so nobody can "
                "rebuild it from source by following the package.",
            )
        )
    if rebuild_dir is None:
        rows.append(
            Check(
                "build",
                "package rebuild",
                Status.UNKNOWN,
                "not attempted: give --rebuild DIR (a directory with Stockade.toml and the files) "
                "to rebuild the package and compare digests.",
            )
        )
        return rows, None
    theirs = Package.from_bytes(build(rebuild_dir))
    same = theirs.digest == pkg.digest
    difference = None if same else _first_difference(pkg, theirs)
    rebuilt = Rebuild(str(rebuild_dir), theirs.digest.hex(), same, difference)
    if same:
        rows.append(
            Check(
                "build",
                "package rebuild",
                Status.PASS,
                f"reproduced: rebuilding from {rebuild_dir} gives the same digest.",
            )
        )
    else:
        rows.append(
            Check(
                "build",
                "package rebuild",
                Status.FAIL,
                f"NOT reproduced: digest sha256:{pkg.digest.hex()} vs sha256:{theirs.digest.hex()} "
                f"rebuilt from {rebuild_dir}; first difference: {difference}.",
            )
        )
    return rows, rebuilt


def _integrity_checks(
    pkg: Package, trusted: Sequence[TrustedKey]
) -> tuple[list[Check], list[SignatureCheck], str | None]:
    """Rows, signature checks and the integrity failure (or None)."""
    size = sum(len(b) for _, b in pkg.files)
    rows = [
        Check(
            "integrity",
            "structure",
            Status.PASS,
            f"well-formed: deterministic CBOR, {len(pkg.files)} file(s) ({size} bytes) exactly as the "
            "manifest lists them, the entry is a WebAssembly module.",
        ),
        Check(
            "integrity",
            "digest",
            Status.INFO,
            f"sha256:{pkg.digest.hex()} over the manifest and the files (signatures are not part of it).",
        ),
    ]
    by_kid = {t.kid: t for t in trusted}
    sigs: list[SignatureCheck] = []
    failure: str | None = None
    for s in pkg.signatures:
        name = f"signature {_short(s.kid)}"
        t = by_kid.get(s.kid)
        if t is None:
            sigs.append(SignatureCheck(s.kid, s.role, None, False, None))
            rows.append(
                Check(
                    "integrity",
                    name,
                    Status.UNKNOWN,
                    f"role {s.role}; its key (kid {s.kid}) is not among the trusted keys given "
                    "with --signer, so its signature and role cannot be checked.",
                )
            )
            continue
        try:
            t.key.verify(s.sig, signed_bytes(pkg.digest, s.role))
        except InvalidSignature:
            legacy = is_legacy_v1(t.key, s, pkg.digest)
            sigs.append(SignatureCheck(s.kid, s.role, False, True, t.label))
            why = (
                "is a v1 signature, which does not sign the role: re-sign the package"
                if legacy
                else f"does NOT verify over role {s.role} and the digest"
            )
            rows.append(Check("integrity", name, Status.FAIL, f"{why}, though its key {t.label} is trusted."))
            failure = failure or (
                f"package: signature by trusted key {t.label} ({_short(s.kid)}) "
                + (
                    "is a v1 signature, which does not sign the role; re-sign the package"
                    if legacy
                    else f"does not verify over role {s.role} and digest {pkg.digest.hex()}"
                )
            )
            continue
        sigs.append(SignatureCheck(s.kid, s.role, True, True, t.label))
        rows.append(
            Check(
                "integrity",
                name,
                Status.PASS,
                f"valid over the digest and role {s.role}, by trusted key {t.label}.",
            )
        )
    valid = sum(1 for s in sigs if s.valid)
    if not pkg.signatures:
        rows.append(
            Check(
                "integrity",
                "trusted signatures",
                Status.UNKNOWN if not trusted else Status.FAIL,
                "the package is unsigned: nothing in it says who made or approved it."
                + (f" None of the {len(by_kid)} trusted key(s) signed it." if trusted else ""),
            )
        )
    elif not trusted:
        rows.append(
            Check(
                "integrity",
                "trusted signatures",
                Status.UNKNOWN,
                f"{len(pkg.signatures)} signature(s), none checked: give the signers' public keys "
                "with --signer.",
            )
        )
    elif valid:
        rows.append(
            Check(
                "integrity",
                "trusted signatures",
                Status.PASS if failure is None else Status.FAIL,
                f"{valid} valid signature(s) by the {len(by_kid)} trusted key(s) given.",
            )
        )
    else:
        rows.append(
            Check(
                "integrity",
                "trusted signatures",
                Status.FAIL,
                f"no valid signature by any of the {len(by_kid)} trusted key(s) given.",
            )
        )
    if trusted and not valid and failure is None:
        failure = (
            f"package: no valid signature by any of the {len(by_kid)} trusted key(s) given "
            f"(digest {pkg.digest.hex()}; {len(pkg.signatures)} signature(s) in the package)"
        )
    return rows, sigs, failure


def _provenance_checks(pkg: Package, sigs: Sequence[SignatureCheck]) -> list[Check]:
    source = dict(pkg.manifest.source)
    rows: list[Check] = []
    if source:
        rows.append(
            Check("provenance", "source repository", Status.INFO, f"declared: {source['repository']}")
        )
        rows.append(
            Check(
                "provenance",
                "source commit",
                Status.INFO,
                f"declared: {source['commit']} (a claim of whoever built the package, not checked offline).",
            )
        )
    else:
        rows.append(
            Check(
                "provenance",
                "source",
                Status.UNKNOWN,
                "not declared: the package does not say which repository and commit it comes from.",
            )
        )
    if not sigs:
        rows.append(Check("provenance", "signers", Status.UNKNOWN, "no signer: the package is unsigned."))
    for s in sigs:
        if s.valid:
            who = (
                f"key {s.key} (kid {s.kid}) signed as {s.role} (the role is signed; whether this key "
                "may act in that role is your trust configuration's call)."
            )
            rows.append(Check("provenance", f"signer {_short(s.kid)}", Status.INFO, who))
        elif s.valid is False:
            rows.append(
                Check(
                    "provenance",
                    f"signer {_short(s.kid)}",
                    Status.FAIL,
                    f"key {s.key} is named in the package but its signature is not valid: it did not "
                    "sign this content.",
                )
            )
        else:
            rows.append(
                Check(
                    "provenance",
                    f"signer {_short(s.kid)}",
                    Status.UNKNOWN,
                    f"kid {s.kid}, role {s.role} (unchecked): who holds this key is not known here.",
                )
            )
    return rows


def _not_knowable() -> list[Check]:
    return [Check("not_knowable_offline", name, Status.UNKNOWN, text) for name, text in NOT_KNOWABLE]


def trust_report(
    data: bytes, trusted: Sequence[TrustedKey] = (), rebuild_dir: Path | None = None
) -> TrustReport:
    """The trust report of the package ``data``. A malformed package gives a
    report (outcome integrity-failed), not an exception; a rebuild directory
    that cannot be built raises UsageError."""
    try:
        pkg = Package.from_bytes(data)
    except WorkloadRejected as exc:
        unknown = "the package could not be parsed, so nothing more can be checked."
        checks = (
            Check("build", "package rebuild", Status.UNKNOWN, unknown),
            Check("integrity", "structure", Status.FAIL, f"malformed: {exc.detail}"),
            Check("provenance", "source", Status.UNKNOWN, unknown),
            *_not_knowable(),
        )
        return TrustReport(None, None, None, checks, (), None, Outcome.INTEGRITY_FAILED, exc.detail)
    build_rows, rebuilt = _build_checks(pkg, rebuild_dir)
    integrity_rows, sigs, failure = _integrity_checks(pkg, trusted)
    provenance_rows = _provenance_checks(pkg, sigs)
    if failure is not None:
        outcome, reason = Outcome.INTEGRITY_FAILED, failure
    elif rebuilt is not None and not rebuilt.reproduced:
        outcome = Outcome.NOT_REPRODUCED
        reason = (
            f"package: digest {pkg.digest.hex()} is not reproduced from {rebuilt.directory} "
            f"(rebuilt {rebuilt.digest}); first difference: {rebuilt.difference}"
        )
    else:
        outcome, reason = Outcome.OK, None
    return TrustReport(
        digest=pkg.digest.hex(),
        name=pkg.manifest.name,
        version=pkg.manifest.version,
        checks=(*build_rows, *integrity_rows, *provenance_rows, *_not_knowable()),
        signatures=tuple(sigs),
        rebuild=rebuilt,
        outcome=outcome,
        reason=reason,
    )
