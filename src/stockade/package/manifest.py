"""The workload manifest: ``Stockade.toml`` on disk, a CBOR map in a package.

The TOML file is what a developer writes; :func:`load_toml` checks it
strictly (unknown keys and wrong types are errors naming the file, the line
and the key). :class:`Manifest` is the normalized form that goes into a
package: paths normalized, ``files`` expanded by the builder to the exact
list of packaged files (the entry excluded), lists of secrets sorted.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from stockade.errors import ProtocolError, UsageError
from stockade.wire.messages import check_steward_url

_UINT64_LIMIT = 1 << 64
TOP_KEYS = (
    "name",
    "version",
    "entry",
    "args",
    "env",
    "files",
    "secrets",
    "limits",
    "source",
    "build",
    "network",
    "steward",
)
LIMIT_KEYS = ("timeout_ms", "memory_bytes", "output_bytes", "disk_bytes")
SOURCE_KEYS = ("repository", "commit")
BUILD_KEYS = ("recipe", "toolchain")
#: ``[steward] url``: the steward a deploy of this package asks for a
#: service certificate (docs/steward.md); the deployer gives the CA.
STEWARD_KEYS = ("url",)
_TABLES = {"limits": LIMIT_KEYS, "source": SOURCE_KEYS, "build": BUILD_KEYS, "steward": STEWARD_KEYS}
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
#: Network sockets (docs/package.md, "Network sockets"): names and limits.
SOCKET_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_SOCKETS = 8
MAX_PEERS = 16
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A manifest value is wrong; ``key`` is the dotted key it concerns."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def normalize_path(text: str, what: str) -> str:
    """A relative POSIX path in normal form ("a/b.txt"), or ManifestError."""
    if not text or "\\" in text or "\x00" in text:
        raise ManifestError(what, f"{what}: {text!r} is not a usable relative POSIX path")
    p = PurePosixPath(text)
    if p.is_absolute():
        raise ManifestError(what, f"{what}: {text!r} is absolute; paths are relative to the package")
    if ".." in p.parts:
        raise ManifestError(what, f"{what}: {text!r} contains '..'")
    norm = str(p)
    if norm in (".", ""):
        raise ManifestError(what, f"{what}: {text!r} names the package root, not a file")
    return norm


def is_normal_path(text: str) -> bool:
    try:
        return normalize_path(text, "path") == text
    except ManifestError:
        return False


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ManifestError(key, f"{key} must be a non-empty string")
    return value


def _str_list(value: Any, key: str, allow_empty_items: bool = True) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(key, f"{key} must be a list of strings")
    if not allow_empty_items and not all(value):
        raise ManifestError(key, f"{key} must not contain empty strings")
    return tuple(value)


def _table(value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(key, f"{key} must be a table")
    for k in value:
        if k not in allowed:
            raise ManifestError(f"{key}.{k}", f"unknown key {key}.{k} (allowed: {', '.join(allowed)})")
    return value


@dataclass(frozen=True)
class Peers:
    """Whom the Keep runtime accepts at the other end of a socket: a peer
    whose workload certificate names one of ``digests`` (package SHA-256,
    hex) or one of ``signers`` (key ids: SHA-256 hex of a raw Ed25519 key)."""

    signers: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()

    def to_map(self) -> dict[str, Any]:
        return {"signers": list(self.signers), "digests": list(self.digests)}


@dataclass(frozen=True)
class Socket:
    """One ``[[network.listen]]`` or ``[[network.connect]]`` entry."""

    kind: str
    name: str
    peers: Peers | None

    def to_map(self) -> dict[str, Any]:
        return {"name": self.name} | ({"peers": self.peers.to_map()} if self.peers is not None else {})


def _peers(value: Any, key: str) -> Peers:
    t = _table(value, key, ("signers", "digests"))
    lists: dict[str, tuple[str, ...]] = {}
    for k, what in (("signers", "key ids (64 lowercase hex digits)"), ("digests", "package SHA-256 digests")):
        items = _str_list(t.get(k, []), f"{key}.{k}")
        bad = next((i for i in items if not _HEX64.fullmatch(i)), None)
        if bad is not None:
            raise ManifestError(f"{key}.{k}", f"{key}.{k}: {bad!r} is not 64 lowercase hex digits ({what})")
        if len(set(items)) != len(items):
            raise ManifestError(f"{key}.{k}", f"{key}.{k}: duplicate entry")
        if len(items) > MAX_PEERS:
            raise ManifestError(f"{key}.{k}", f"{key}.{k}: at most {MAX_PEERS} entries")
        lists[k] = tuple(sorted(items))
    if not lists["signers"] and not lists["digests"]:
        raise ManifestError(key, f"{key} must name at least one signer or digest")
    return Peers(signers=lists["signers"], digests=lists["digests"])


def _network(value: Any) -> tuple[Socket, ...]:
    t = _table(value, "network", ("listen", "connect"))
    sockets: list[Socket] = []
    for kind in ("listen", "connect"):
        entries = t.get(kind, [])
        key = f"network.{kind}"
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ManifestError(key, f"{key} must be an array of tables ([[{key}]])")
        if len(entries) > MAX_SOCKETS:
            raise ManifestError(key, f"{key}: at most {MAX_SOCKETS} sockets")
        names: set[str] = set()
        for entry in entries:
            e = _table(entry, key, ("name", "peers"))
            if "name" not in e:
                raise ManifestError(f"{key}.name", f"missing required key {key}.name")
            name = _str(e["name"], f"{key}.name")
            if not SOCKET_NAME.fullmatch(name):
                raise ManifestError(f"{key}.name", f"{key}.name: {name!r} is not [a-z][a-z0-9-]{{0,31}}")
            if name in names:
                raise ManifestError(f"{key}.name", f"{key}.name: {name!r} is declared twice")
            names.add(name)
            if kind == "connect" and "peers" not in e:
                raise ManifestError(
                    f"{key}.peers",
                    f"{key} {name!r}: peers is required (the server workloads the runtime accepts)",
                )
            peers = _peers(e["peers"], f"{key}.peers") if "peers" in e else None
            sockets.append(Socket(kind=kind, name=name, peers=peers))
    if not sockets:
        raise ManifestError("network", "network declares no socket (remove it, or add [[network.listen]])")
    return tuple(sorted(sockets, key=lambda s: (s.kind, s.name)))


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    entry: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    files: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    limits: tuple[tuple[str, int], ...] = ()
    source: tuple[tuple[str, str], ...] = ()
    build: tuple[tuple[str, str], ...] = ()
    #: Network sockets, sorted by (kind, name); () for most workloads.
    network: tuple[Socket, ...] = ()
    #: ``[steward] url`` (None: the manifest names no steward).
    steward_url: str | None = None

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Manifest:
        """Check a manifest map (from TOML or from a package); ManifestError
        names the offending key."""
        if not isinstance(m, dict):
            raise ManifestError("", "the manifest must be a map")
        for k in m:
            if k not in TOP_KEYS:
                raise ManifestError(str(k), f"unknown key {k!r} (allowed: {', '.join(TOP_KEYS)})")
        for k in ("name", "version", "entry"):
            if k not in m:
                raise ManifestError(k, f"missing required key {k!r}")
        env = m.get("env", {})
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
        ):
            raise ManifestError("env", 'env must be a table of NAME = "value" strings')
        secrets = _str_list(m.get("secrets", []), "secrets")
        for s in secrets:
            if not _SECRET_NAME.match(s) or s in (".", ".."):
                raise ManifestError("secrets", f"secrets: {s!r} is not a valid secret name ([A-Za-z0-9_.-]+)")
        if len(set(secrets)) != len(secrets):
            raise ManifestError("secrets", "secrets: duplicate name")
        files = tuple(normalize_path(f, "files") for f in _str_list(m.get("files", []), "files"))
        limits: dict[str, int] = {}
        for k, v in _table(m.get("limits", {}), "limits", LIMIT_KEYS).items():
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < _UINT64_LIMIT:
                raise ManifestError(f"limits.{k}", f"limits.{k} must be a positive integer below 2**64")
            limits[k] = v
        pairs: dict[str, tuple[tuple[str, str], ...]] = {}
        for name, keys in (("source", SOURCE_KEYS), ("build", BUILD_KEYS)):
            if name not in m:
                pairs[name] = ()
                continue
            t = _table(m[name], name, keys)
            for k in keys:
                if k not in t:
                    raise ManifestError(f"{name}.{k}", f"missing required key {name}.{k}")
            pairs[name] = tuple((k, _str(t[k], f"{name}.{k}")) for k in keys)
        steward_url = None
        if "steward" in m:
            t = _table(m["steward"], "steward", STEWARD_KEYS)
            if "url" not in t:
                raise ManifestError("steward.url", "missing required key steward.url")
            steward_url = _str(t["url"], "steward.url")
            try:
                check_steward_url(steward_url, "steward.url")
            except ProtocolError as exc:
                raise ManifestError("steward.url", str(exc)) from None
        return cls(
            name=_str(m["name"], "name"),
            version=_str(m["version"], "version"),
            entry=normalize_path(_str(m["entry"], "entry"), "entry"),
            args=_str_list(m.get("args", []), "args"),
            env=tuple(sorted(env.items())),
            files=files,
            secrets=tuple(sorted(secrets)),
            limits=tuple(sorted(limits.items())),
            source=pairs["source"],
            build=pairs["build"],
            network=_network(m["network"]) if "network" in m else (),
            steward_url=steward_url,
        )

    def to_map(self) -> dict[str, Any]:
        """The CBOR/JSON form. ``args``, ``env``, ``files`` and ``secrets``
        are always present; ``limits``, ``source``, ``build``, ``steward``
        only when set."""
        m: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "entry": self.entry,
            "args": list(self.args),
            "env": dict(self.env),
            "files": list(self.files),
            "secrets": list(self.secrets),
        }
        for key in ("limits", "source", "build"):
            value = getattr(self, key)
            if value:
                m[key] = dict(value)
        if self.network:
            m["network"] = {
                kind: [s.to_map() for s in self.network if s.kind == kind] for kind in ("listen", "connect")
            }
        if self.steward_url is not None:
            m["steward"] = {"url": self.steward_url}
        return m


def _find_line(text: str, dotted: str) -> int | None:
    """The 1-based line of ``dotted`` (``key`` or ``table.key``) in a TOML
    text, found with a simple scan of ``[table]`` headers and ``key =`` lines
    (inline tables: the line of the table's key). None if not found."""
    parts = dotted.split(".") if dotted else []
    if not parts:
        return None
    table, key = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
    current = ""
    inline_line = None
    header = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$")
    for number, line in enumerate(text.splitlines(), start=1):
        h = header.match(line)
        if h:
            current = h.group(1).strip().strip('"')
            if not table and current.split(".")[0] == key:
                return number
            continue
        m = re.match(r'^\s*"?([A-Za-z0-9_.-]+)"?\s*=', line)
        if not m:
            continue
        name = m.group(1)
        if table:
            if current == table and name == key:
                return number
            if current == "" and name == table:
                inline_line = number
            if current == "" and name == f"{table}.{key}":
                return number
        elif current == "" and (name == key or name.startswith(key + ".")):
            return number
    return inline_line


def load_toml(path: Path) -> Manifest:
    """Read and check ``Stockade.toml``; UsageError names file, line, key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the manifest: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Manifest.from_map(data)
    except ManifestError as exc:
        line = _find_line(text, exc.key)
        where = f"{path}:{line}" if line else str(path)
        raise UsageError(f"{where}: {exc}") from None
