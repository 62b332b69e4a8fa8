"""The messages of the stockade deploy protocol, as frozen dataclasses.

Every message is one CBOR map with the protocol version under ``"v"`` and the
message type under ``"t"``; ``docs/protocol.cddl`` is the normative schema and
a test validates encoded messages against it. Decoding is strict: a wrong
type, a missing or unknown field, or an unknown version is a ProtocolError
naming the field. Decoding never evaluates anything a peer sends.

Before cbor2 sees them, received bytes must be exactly one CBOR data item in
the strict profile of docs/protocol.cddl: definite lengths, preferred
(shortest) integer and length encodings, no tags, map keys that are integers
or text strings and unique, bounded nesting. cbor2 alone accepts trailing
bytes, duplicate keys (last one wins) and tags it turns into Python objects
(bignums, shared references, sets, ...), none of which the schema allows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import cbor2

from stockade.binding.eventlog import MAX_EVENTS, Event, events_from_list
from stockade.errors import ProtocolError, StockadeError, error_class_for
from stockade.wire.framing import HEADER as FRAME_HEADER
from stockade.wire.framing import MAX_FRAME

VERSION = 1

# RFC 9290 concise problem details: standard keys are negative integers.
PD_TITLE = -1
PD_DETAIL = -2
#: Custom problem-detail key (RFC 9290 section 3.2 allows a URI for
#: unregistered keys) holding stockade's problem type.
PD_TYPE = "tag:stockade.dev,2026:problem-type"

STDOUT = 1
STDERR = 2

#: Deepest container nesting a peer may send (messages need 3).
MAX_DEPTH = 16
_UINT64_LIMIT = 1 << 64


def _need(m: dict[Any, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in m:
        raise ProtocolError(f"{where}: missing field {key!r}")
    value = m[key]
    if isinstance(value, bool) and kind is int:
        raise ProtocolError(f"{where}: field {key!r} must be an integer, got a boolean")
    if not isinstance(value, kind):
        raise ProtocolError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _only(m: dict[Any, Any], allowed: set[str], where: str) -> None:
    extra = set(m) - allowed
    if extra:
        raise ProtocolError(f"{where}: unknown field(s) {sorted(map(str, extra))}")


def _str_list(value: list[Any], where: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{where}: every element must be a text string")
    return tuple(value)


def _str_map(value: dict[Any, Any], vtype: type, where: str) -> tuple[tuple[str, Any], ...]:
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, vtype) or (isinstance(v, bool) and vtype is int):
            raise ProtocolError(f"{where}: keys must be text and values {vtype.__name__}")
    return tuple(sorted(value.items()))


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""
    FIELDS: ClassVar[set[str]] = set()

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_cbor(self) -> bytes:
        return bytes(cbor2.dumps({"v": VERSION, "t": self.TYPE, **self.body()}, canonical=True))

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> Message:
        raise NotImplementedError


@dataclass(frozen=True)
class Hello(Message):
    """Client -> Keep, in clear: the fresh nonce the evidence must bind."""

    TYPE: ClassVar[str] = "hello"
    FIELDS: ClassVar[set[str]] = {"nonce"}
    nonce: bytes

    def __post_init__(self) -> None:
        if len(self.nonce) != 32:
            raise ProtocolError(f"hello: nonce must be 32 bytes, got {len(self.nonce)}")

    def body(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> Hello:
        return cls(nonce=_need(m, "nonce", bytes, "hello"))


@dataclass(frozen=True)
class Limits:
    timeout_ms: int = 30_000
    memory_bytes: int = 256 * 1024 * 1024
    output_bytes: int = 64 * 1024 * 1024
    #: Bytes of files (the package's, deploy-time files, secrets and what
    #: the workload writes) in the Keep's private tmpfs.
    disk_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("timeout_ms", "memory_bytes", "output_bytes", "disk_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < _UINT64_LIMIT:
                raise ProtocolError(f"limits: {name} must be a positive integer below 2**64")

    def to_map(self) -> dict[str, int]:
        return {
            "timeout_ms": self.timeout_ms,
            "memory_bytes": self.memory_bytes,
            "output_bytes": self.output_bytes,
            "disk_bytes": self.disk_bytes,
        }

    @classmethod
    def from_map(cls, m: Any) -> Limits:
        if not isinstance(m, dict):
            raise ProtocolError("limits: must be a map")
        _only(m, {"timeout_ms", "memory_bytes", "output_bytes", "disk_bytes"}, "limits")
        return cls(
            timeout_ms=_need(m, "timeout_ms", int, "limits"),
            memory_bytes=_need(m, "memory_bytes", int, "limits"),
            output_bytes=_need(m, "output_bytes", int, "limits"),
            disk_bytes=_need(m, "disk_bytes", int, "limits"),
        )


@dataclass(frozen=True)
class FileEntry:
    """A file or directory the workload sees under its preopened "/"."""

    path: str
    data: bytes | None  # None: a directory

    def to_map(self) -> dict[str, Any]:
        return (
            {"path": self.path, "data": self.data}
            if self.data is not None
            else {
                "path": self.path,
                "dir": True,
            }
        )

    @classmethod
    def from_map(cls, m: Any) -> FileEntry:
        if not isinstance(m, dict):
            raise ProtocolError("file: each file must be a map")
        _only(m, {"path", "data", "dir"}, "file")
        path = _need(m, "path", str, "file")
        if "dir" in m:
            if m["dir"] is not True or "data" in m:
                raise ProtocolError("file: 'dir' must be true and exclusive of 'data'")
            return cls(path=path, data=None)
        return cls(path=path, data=_need(m, "data", bytes, "file"))


#: A network socket's name in a manifest and on the wire (docs/package.md).
SOCKET_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
SOCKET_KINDS = ("listen", "connect")
#: Sockets of each kind a workload may declare.
MAX_SOCKETS = 8
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})?")


#: A listen address that names a Unix socket (``unix:/absolute/path``): the
#: bind address a keep manager hands out for a published port (ADR 0027
#: addendum); the manager forwards a public TCP port to it.
UNIX_PREFIX = "unix:"
#: Longest Unix socket path: sun_path is 108 bytes on Linux, one of them
#: the terminating NUL (unix(7)).
MAX_UNIX_PATH = 107


def parse_unix_address(text: str) -> str:
    """The path of ``unix:/absolute/path``; ValueError with a one-line
    reason unless the path is absolute, normalised (no ``.``/``..``/``//``
    component, no trailing ``/``), at most MAX_UNIX_PATH bytes of UTF-8 and
    free of NUL and control characters."""
    if not text.startswith(UNIX_PREFIX):
        raise ValueError(f"{text!r} is not unix:/PATH")
    path = text[len(UNIX_PREFIX) :]
    if not path.startswith("/") or path == "/":
        raise ValueError(f"{text!r}: the Unix socket path must be absolute")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise ValueError(f"{text!r}: the Unix socket path has a NUL or control character")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_UNIX_PATH:
        raise ValueError(f"{text!r}: the Unix socket path is longer than {MAX_UNIX_PATH} bytes")
    parts = path[1:].split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{text!r}: the Unix socket path is not normalised")
    return path


def check_socket_address(text: str, kind: str) -> None:
    """ValueError (one line) unless ``text`` is a valid address of a
    ``kind`` socket: HOST:PORT, or for a listen socket unix:/PATH."""
    if kind == "listen" and text.startswith(UNIX_PREFIX):
        parse_unix_address(text)
    else:
        parse_socket_address(text, kind)


def parse_socket_address(text: str, kind: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets: ``[::1]:80``) as (host, port);
    ValueError with a one-line reason. A listen port may be 0 (any free
    port); a connect port may not."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or len(port_text) > 5:
        raise ValueError(f"{text!r} is not HOST:PORT")
    port = int(port_text)
    if not (0 if kind == "listen" else 1) <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{text!r}: unbalanced brackets around an IPv6 address")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{text!r}: {host[1:-1]!r} is not an IPv6 address") from None
        return host[1:-1], port
    if not _HOST_RE.fullmatch(host):
        raise ValueError(f"{text!r}: {host!r} is not an IPv4 address or a host name")
    return host, port


@dataclass(frozen=True)
class SocketAddress:
    """A deploy-time address for a socket the package declares
    (``--listen NAME=ADDR`` / ``--connect NAME=ADDR``): not secret, part of
    the measured configuration."""

    kind: str
    name: str
    address: str

    def __post_init__(self) -> None:
        if self.kind not in SOCKET_KINDS:
            raise ProtocolError(f"config network: kind {self.kind!r} is not listen or connect")
        if not SOCKET_NAME_RE.fullmatch(self.name):
            raise ProtocolError(f"config network: socket name {self.name!r} is not [a-z][a-z0-9-]{{0,31}}")
        try:
            check_socket_address(self.address, self.kind)
        except ValueError as exc:
            raise ProtocolError(f"config network: {self.kind} {self.name}: {exc}") from None


@dataclass(frozen=True)
class Config:
    """Deploy-time configuration the client adds to a package: extra
    arguments, environment, files, the effective limits and the network
    addresses of declared sockets. It is measured into the event log (the
    "config" event) before any secret is released."""

    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    files: tuple[FileEntry, ...] = ()
    limits: Limits = field(default_factory=Limits)
    #: Sorted by (kind, name), one per socket; absent from the map when empty
    #: (the configuration of a workload without sockets is unchanged).
    network: tuple[SocketAddress, ...] = ()

    def __post_init__(self) -> None:
        keys = [(a.kind, a.name) for a in self.network]
        if keys != sorted(set(keys)):
            raise ProtocolError("config network: addresses must be sorted, one per socket")
        for kind in SOCKET_KINDS:
            if sum(1 for k, _ in keys if k == kind) > MAX_SOCKETS:
                raise ProtocolError(f"config network: more than {MAX_SOCKETS} {kind} addresses")

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {
            "args": list(self.args),
            "env": dict(self.env),
            "files": [f.to_map() for f in self.files],
            "limits": self.limits.to_map(),
        }
        if self.network:
            m["network"] = {
                kind: {a.name: a.address for a in self.network if a.kind == kind} for kind in SOCKET_KINDS
            }
        return m

    def digest(self) -> bytes:
        return hashlib.sha256(cbor2.dumps(self.to_map(), canonical=True)).digest()

    @classmethod
    def from_map(cls, m: Any) -> Config:
        if not isinstance(m, dict):
            raise ProtocolError("load: config must be a map")
        _only(m, {"args", "env", "files", "limits", "network"}, "config")
        network: list[SocketAddress] = []
        if "network" in m:
            net = _need(m, "network", dict, "config")
            _only(net, set(SOCKET_KINDS), "config network")
            for kind in SOCKET_KINDS:
                pairs = _str_map(_need(net, kind, dict, "config network"), str, f"config network {kind}")
                network += [SocketAddress(kind, name, address) for name, address in pairs]
            if not network:
                raise ProtocolError("config network: present but empty")
        return cls(
            args=_str_list(_need(m, "args", list, "config"), "config args"),
            env=_str_map(_need(m, "env", dict, "config"), str, "config env"),
            files=tuple(FileEntry.from_map(f) for f in _need(m, "files", list, "config")),
            limits=Limits.from_map(_need(m, "limits", dict, "config")),
            network=tuple(sorted(network, key=lambda a: (a.kind, a.name))),
        )


@dataclass(frozen=True)
class Expect:
    """What the deployer requires of the package, for the Keep to enforce
    before it runs anything: pinned content digests (trusted boot: refuse
    any other package) and trusted signers (raw 32-byte Ed25519 public
    keys), of which at least ``min_signatures`` must have signed."""

    digests: tuple[bytes, ...] = ()
    signers: tuple[bytes, ...] = ()
    min_signatures: int = 0

    def __post_init__(self) -> None:
        if any(len(d) != 32 for d in self.digests):
            raise ProtocolError("expect: every pinned digest must be 32 bytes")
        if any(len(k) != 32 for k in self.signers):
            raise ProtocolError("expect: every signer must be a 32-byte Ed25519 public key")
        if len(set(self.signers)) != len(self.signers):
            raise ProtocolError("expect: a signer is listed twice")
        n = self.min_signatures
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(self.signers):
            raise ProtocolError("expect: min_signatures must be between 0 and the number of signers")
        if self.signers and n == 0:
            raise ProtocolError("expect: signers are named but min_signatures is 0")

    def to_map(self) -> dict[str, Any]:
        return {
            "digests": list(self.digests),
            "signers": list(self.signers),
            "min_signatures": self.min_signatures,
        }

    @classmethod
    def from_map(cls, m: Any) -> Expect:
        if not isinstance(m, dict):
            raise ProtocolError("load: expect must be a map")
        _only(m, {"digests", "signers", "min_signatures"}, "expect")
        digests = _need(m, "digests", list, "expect")
        signers = _need(m, "signers", list, "expect")
        if not all(isinstance(x, bytes) for x in (*digests, *signers)):
            raise ProtocolError("expect: digests and signers must be byte strings")
        return cls(tuple(digests), tuple(signers), _need(m, "min_signatures", int, "expect"))


@dataclass(frozen=True)
class Load(Message):
    """Client -> Keep, inside attested TLS, after the first verification:
    the package to load (inline, or ``staged``: provided by the host, and so
    untrusted until measured), what to require of it, the deploy-time
    configuration, and a fresh nonce for the second attestation. Carries no
    secret."""

    TYPE: ClassVar[str] = "load"
    FIELDS: ClassVar[set[str]] = {"package", "staged", "expect", "config", "nonce"}
    package: bytes | None
    config: Config
    nonce: bytes
    expect: Expect = field(default_factory=Expect)
    staged: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.staged, bool):
            raise ProtocolError("load: staged must be a boolean")
        if (self.package is None) != self.staged:
            raise ProtocolError("load: exactly one of an inline package and staged must be given")
        if len(self.nonce) != 32:
            raise ProtocolError(f"load: nonce must be 32 bytes, got {len(self.nonce)}")

    def __repr__(self) -> str:
        size = "staged" if self.package is None else f"<{len(self.package)} bytes>"
        return f"Load(package={size}, expect={self.expect!r})"

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "expect": self.expect.to_map(),
            "config": self.config.to_map(),
            "nonce": self.nonce,
        }
        if self.package is None:
            body["staged"] = True
        else:
            body["package"] = self.package
        return body

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> Load:
        staged = m.get("staged", False)
        if "staged" in m and staged is not True:
            raise ProtocolError("load: 'staged' must be true when present")
        package = _need(m, "package", bytes, "load") if "package" in m else None
        return cls(
            package=package,
            staged=staged,
            expect=Expect.from_map(_need(m, "expect", dict, "load")),
            config=Config.from_map(_need(m, "config", dict, "load")),
            nonce=_need(m, "nonce", bytes, "load"),
        )


@dataclass(frozen=True)
class Identity(Message):
    """Keep -> client, after loading: fresh evidence whose report data binds
    the load nonce, the TLS key and the event-log register, and the events
    that produce that register."""

    TYPE: ClassVar[str] = "identity"
    FIELDS: ClassVar[set[str]] = {"evidence", "events"}
    evidence: bytes  # an EvidenceBundle in CBOR (stockade.wire.evidence)
    events: tuple[Event, ...]

    def __post_init__(self) -> None:
        if len(self.events) > MAX_EVENTS:
            raise ProtocolError(f"identity: more than {MAX_EVENTS} events")

    def body(self) -> dict[str, Any]:
        return {"evidence": self.evidence, "events": [e.to_list() for e in self.events]}

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> Identity:
        return cls(
            evidence=_need(m, "evidence", bytes, "identity"),
            events=events_from_list(_need(m, "events", list, "identity")),
        )


#: Longest steward URL a release may carry (characters).
MAX_STEWARD_URL = 2048
#: Largest DER certificate a steward request or a certificate message
#: carries (a workload or CA certificate of stockade's profile is ~1 KiB).
MAX_CERTIFICATE_BYTES = 16 * 1024
#: Most issuer certificates in a certificate message (the steward CA has
#: pathLenConstraint 0: its chain is the CA alone; room for a little more).
MAX_CHAIN = 4
#: Largest signed tree head (stockade.translog.treehead: ~200 bytes).
MAX_TREE_HEAD_BYTES = 4096
#: Most hashes in an inclusion proof (stockade.translog.treehead.MAX_PATH:
#: covers every tree of fewer than 2**64 leaves).
MAX_INCLUSION_HASHES = 128


def _der_certificate(value: bytes, where: str) -> bytes:
    """A plausible DER certificate: 1..MAX_CERTIFICATE_BYTES bytes starting
    with a SEQUENCE tag (the parse is the receiver's, with cryptography)."""
    if not 0 < len(value) <= MAX_CERTIFICATE_BYTES:
        raise ProtocolError(f"{where}: must be 1 to {MAX_CERTIFICATE_BYTES} bytes, got {len(value)}")
    if value[0] != 0x30:
        raise ProtocolError(f"{where}: not a DER certificate (no SEQUENCE tag)")
    return value


def check_steward_url(url: str, where: str = "steward url") -> str:
    """``url`` if it is an https URL stockade may hand to the Keep: at most
    MAX_STEWARD_URL printable ASCII characters, no spaces, a host, no
    user information, query or fragment; else ProtocolError."""
    if not 0 < len(url) <= MAX_STEWARD_URL:
        raise ProtocolError(f"{where}: must be 1 to {MAX_STEWARD_URL} characters")
    if not all("!" <= ch <= "~" for ch in url):
        raise ProtocolError(f"{where}: only printable ASCII without spaces is allowed")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ProtocolError(f"{where}: not a valid URL") from None
    if parts.scheme != "https":
        raise ProtocolError(f"{where}: the steward is reached over HTTPS only (https://HOST[:PORT])")
    if not parts.hostname or "@" in parts.netloc:
        raise ProtocolError(f"{where}: needs a host and no user information")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ProtocolError(f"{where}: no query or fragment allowed")
    if port == 0:
        raise ProtocolError(f"{where}: port 0 is not a port to connect to")
    return url


@dataclass(frozen=True)
class StewardRequest:
    """In a release: the deployer asks the Keep to get a certificate for a
    service key of its own from the steward at ``url`` (https), whose CA
    certificate (DER) ``ca`` the deployer pinned. Inside the attested
    channel, so the host can neither swap the CA nor redirect the Keep to
    another steward unnoticed (the Keep checks the steward's TLS
    certificate against ``ca``)."""

    url: str
    ca: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not isinstance(self.ca, bytes):
            raise ProtocolError("release steward: url must be text and ca a byte string")
        check_steward_url(self.url, "release steward url")
        _der_certificate(self.ca, "release steward ca")

    def to_map(self) -> dict[str, Any]:
        return {"url": self.url, "ca": self.ca}

    @classmethod
    def from_map(cls, m: Any) -> StewardRequest:
        if not isinstance(m, dict):
            raise ProtocolError("release: steward must be a map")
        _only(m, {"url", "ca"}, "release steward")
        return cls(url=_need(m, "url", str, "release steward"), ca=_need(m, "ca", bytes, "release steward"))


@dataclass(frozen=True)
class Release(Message):
    """Client -> Keep, inside attested TLS, only after the client verified
    the workload identity: the secrets and the standard input; and, when
    the deployer asked for one, the steward request (the Keep then gets a
    workload certificate before it runs the workload and sends it in a
    :class:`ServiceCertificate`).

    Two ways of sending stdin (docs/protocol.cddl, "stdin"): the whole of a
    small input here (``stdin``; the Keep hands it to the workload from
    memory), or, with ``stdin_stream``, ``stdin`` holds nothing and the input
    follows in :class:`Stdin` messages, ended by an empty one."""

    TYPE: ClassVar[str] = "release"
    FIELDS: ClassVar[set[str]] = {"secrets", "stdin", "stdin_stream", "steward"}
    secrets: tuple[tuple[str, bytes], ...] = ()
    stdin: bytes = b""
    stdin_stream: bool = False
    steward: StewardRequest | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.stdin_stream, bool):
            raise ProtocolError("release: stdin_stream must be a boolean")
        if self.stdin_stream and self.stdin:
            raise ProtocolError("release: stdin must be empty when stdin_stream is set")

    def __repr__(self) -> str:
        # Never print secret values, even in a debugger.
        stdin = "<streamed>" if self.stdin_stream else f"<{len(self.stdin)} bytes>"
        steward = "" if self.steward is None else f", steward={self.steward.url!r}"
        return f"Release(secrets={[n for n, _ in self.secrets]!r}, stdin={stdin}{steward})"

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"secrets": dict(self.secrets), "stdin": self.stdin}
        if self.stdin_stream:
            body["stdin_stream"] = True
        if self.steward is not None:
            body["steward"] = self.steward.to_map()
        return body

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> Release:
        if "stdin_stream" in m and m["stdin_stream"] is not True:
            raise ProtocolError("release: 'stdin_stream' must be true when present")
        return cls(
            secrets=_str_map(_need(m, "secrets", dict, "release"), bytes, "release secrets"),
            stdin=_need(m, "stdin", bytes, "release"),
            stdin_stream="stdin_stream" in m,
            steward=StewardRequest.from_map(m["steward"]) if "steward" in m else None,
        )


@dataclass(frozen=True)
class ServiceCertificate(Message):
    """Keep -> client, after a release with a steward request and before
    any output: the workload certificate the steward issued for the Keep's
    service key (DER), its issuer chain up to and including the CA (DER),
    and where the steward logged it: the leaf index, the signed tree head
    (stockade.translog's encoding) and the RFC 9162 inclusion proof. The
    client checks all of it (stockade.steward.request.verify_issued)."""

    TYPE: ClassVar[str] = "certificate"
    FIELDS: ClassVar[set[str]] = {"certificate", "chain", "log_index", "tree_head", "inclusion"}
    certificate: bytes
    chain: tuple[bytes, ...]
    log_index: int
    tree_head: bytes
    inclusion: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _der_certificate(self.certificate, "certificate")
        if not 0 < len(self.chain) <= MAX_CHAIN:
            raise ProtocolError(f"certificate: chain must hold 1 to {MAX_CHAIN} certificates")
        for der in self.chain:
            _der_certificate(der, "certificate chain")
        n = self.log_index
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < _UINT64_LIMIT:
            raise ProtocolError("certificate: log_index must be an unsigned integer below 2**64")
        if not 0 < len(self.tree_head) <= MAX_TREE_HEAD_BYTES:
            raise ProtocolError(f"certificate: tree_head must be 1 to {MAX_TREE_HEAD_BYTES} bytes")
        if len(self.inclusion) > MAX_INCLUSION_HASHES:
            raise ProtocolError(f"certificate: inclusion proof longer than {MAX_INCLUSION_HASHES} hashes")
        if any(len(h) != 32 for h in self.inclusion):
            raise ProtocolError("certificate: every inclusion proof hash must be 32 bytes")

    def body(self) -> dict[str, Any]:
        return {
            "certificate": self.certificate,
            "chain": list(self.chain),
            "log_index": self.log_index,
            "tree_head": self.tree_head,
            "inclusion": list(self.inclusion),
        }

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> ServiceCertificate:
        where = "certificate"
        chain = _need(m, "chain", list, where)
        inclusion = _need(m, "inclusion", list, where)
        if not all(isinstance(x, bytes) for x in (*chain, *inclusion)):
            raise ProtocolError(f"{where}: chain and inclusion must hold byte strings")
        return cls(
            certificate=_need(m, "certificate", bytes, where),
            chain=tuple(chain),
            log_index=_need(m, "log_index", int, where),
            tree_head=_need(m, "tree_head", bytes, where),
            inclusion=tuple(inclusion),
        )


#: Most bytes of standard input one Stdin message carries. It bounds what
#: the Keep buffers per message while it feeds a workload that reads slowly
#: (the Keep's frame limit is set to it while stdin streams).
MAX_STDIN_DATA = 1 << 20


@dataclass(frozen=True)
class Stdin(Message):
    """Client -> Keep, inside attested TLS, after a Release with
    ``stdin_stream``: the next bytes of the workload's standard input, in
    order; empty ``data`` ends the input (the workload reads end of file)
    and nothing may follow it."""

    TYPE: ClassVar[str] = "stdin"
    FIELDS: ClassVar[set[str]] = {"data"}
    data: bytes

    def __post_init__(self) -> None:
        if len(self.data) > MAX_STDIN_DATA:
            raise ProtocolError(f"stdin: more than {MAX_STDIN_DATA} bytes in one message ({len(self.data)})")

    def __repr__(self) -> str:
        return f"Stdin(<{len(self.data)} bytes>)"

    def body(self) -> dict[str, Any]:
        return {"data": self.data}

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> Stdin:
        return cls(data=_need(m, "data", bytes, "stdin"))


def _cbor_head_size(length: int) -> int:
    """Bytes of the head of a CBOR byte string of ``length`` bytes (RFC 8949
    section 3: the argument inline below 24, else in 1, 2, 4 or 8 bytes)."""
    if length < 24:
        return 1
    return 1 + next(n for n in (1, 2, 4, 8) if length < 1 << (8 * n))


def release_stdin_room(
    secrets: tuple[tuple[str, bytes], ...], max_frame: int, steward: StewardRequest | None = None
) -> int:
    """The most stdin one Release with these ``secrets`` (and ``steward``
    request) can carry in a frame of at most ``max_frame`` bytes (when stdin
    travels in that one message, not streamed)."""
    rest = len(Release(secrets=secrets, steward=steward).to_cbor()) - _cbor_head_size(0)
    # For each head size, the longest string with a head that short which
    # still fits; the best of them.
    caps = {1: 23, 2: 0xFF, 3: 0xFFFF, 5: 0xFFFF_FFFF, 9: 0xFFFF_FFFF_FFFF_FFFF}
    return max(0, *(min(max_frame - rest - head, cap) for head, cap in caps.items()))


@dataclass(frozen=True)
class SocketPlan:
    """A network socket of a workload, assembled inside the Keep from the
    package's manifest (name, the peers it accepts) and the configuration
    (address). ``signers`` are key ids (SHA-256 hex of raw Ed25519 keys),
    ``digests`` package SHA-256 hex; ``peers_required``: a peer must present
    a workload certificate naming one of them (always for connect)."""

    kind: str
    name: str
    address: str
    signers: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()
    peers_required: bool = False

    @property
    def env_name(self) -> str:
        """The environment variable that holds the socket's descriptor."""
        return f"STOCKADE_{self.kind.upper()}_{self.name.upper().replace('-', '_')}"


@dataclass(frozen=True)
class Workload:
    """What a Keep runs, assembled inside the Keep from a verified package,
    the load's configuration and the release. Never sent as one message."""

    wasm: bytes
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    stdin: bytes = b""
    files: tuple[FileEntry, ...] = ()
    secrets: tuple[tuple[str, bytes], ...] = ()
    limits: Limits = field(default_factory=Limits)
    #: The network sockets the package declares (empty for most workloads).
    sockets: tuple[SocketPlan, ...] = ()

    def __repr__(self) -> str:
        # Never print secret values or workload bytes, even in a debugger.
        names = [n for n, _ in self.secrets]
        return (
            f"Workload(wasm=<{len(self.wasm)} bytes>, args={self.args!r}, "
            f"env=<{len(self.env)} vars>, files=<{len(self.files)}>, secrets={names!r})"
        )


@dataclass(frozen=True)
class Output(Message):
    """Keep -> client: a chunk the workload wrote to stdout (1) or stderr (2)."""

    TYPE: ClassVar[str] = "output"
    FIELDS: ClassVar[set[str]] = {"fd", "data"}
    fd: int
    data: bytes

    def __post_init__(self) -> None:
        if self.fd not in (STDOUT, STDERR):
            raise ProtocolError(f"output: fd must be 1 or 2, got {self.fd}")

    def body(self) -> dict[str, Any]:
        return {"fd": self.fd, "data": self.data}

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> Output:
        return cls(fd=_need(m, "fd", int, "output"), data=_need(m, "data", bytes, "output"))


@dataclass(frozen=True)
class Exit(Message):
    """Keep -> client: the workload finished with this exit code."""

    TYPE: ClassVar[str] = "exit"
    FIELDS: ClassVar[set[str]] = {"code", "workload_sha256", "timing_us"}
    code: int
    workload_sha256: bytes
    timing_us: tuple[tuple[str, int], ...] = ()

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "workload_sha256": self.workload_sha256,
            "timing_us": dict(self.timing_us),
        }

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> Exit:
        digest = _need(m, "workload_sha256", bytes, "exit")
        if len(digest) != 32:
            raise ProtocolError("exit: workload_sha256 must be 32 bytes")
        timing_us = _str_map(_need(m, "timing_us", dict, "exit"), int, "exit timing_us")
        if any(us < 0 for _, us in timing_us):
            raise ProtocolError("exit: timing_us values must not be negative")
        return cls(code=_need(m, "code", int, "exit"), workload_sha256=digest, timing_us=timing_us)


#: The events of a ``net`` message (docs/steward.md, "Networked workloads").
NET_EVENTS = ("listening", "accepted", "connected", "refused")
MAX_NET_DETAIL = 512


@dataclass(frozen=True)
class Net(Message):
    """Keep -> client, while the workload runs: what the Keep runtime did
    with one of the workload's network sockets. ``detail``: the bound
    address (listening), the peer's workload URI or "anonymous" (accepted),
    the server's workload URI (connected), the reason (refused)."""

    TYPE: ClassVar[str] = "net"
    FIELDS: ClassVar[set[str]] = {"event", "name", "detail"}
    event: str
    name: str
    detail: str

    def __post_init__(self) -> None:
        if self.event not in NET_EVENTS:
            raise ProtocolError(f"net: event {self.event!r} is not one of {', '.join(NET_EVENTS)}")
        if not SOCKET_NAME_RE.fullmatch(self.name):
            raise ProtocolError(f"net: socket name {self.name!r} is not [a-z][a-z0-9-]{{0,31}}")
        if len(self.detail) > MAX_NET_DETAIL or not self.detail.isprintable():
            raise ProtocolError(f"net: detail must be printable text of at most {MAX_NET_DETAIL} characters")

    def body(self) -> dict[str, Any]:
        return {"event": self.event, "name": self.name, "detail": self.detail}

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> Net:
        return cls(
            event=_need(m, "event", str, "net"),
            name=_need(m, "name", str, "net"),
            detail=_need(m, "detail", str, "net"),
        )


@dataclass(frozen=True)
class Problem(Message):
    """Either side: an error, as RFC 9290 concise problem details."""

    TYPE: ClassVar[str] = "problem"
    FIELDS: ClassVar[set[str]] = {"problem"}
    problem_type: str
    title: str
    detail: str

    @classmethod
    def from_error(cls, err: StockadeError) -> Problem:
        return cls(problem_type=err.problem_type, title=err.title, detail=err.detail)

    def to_error(self) -> StockadeError:
        return error_class_for(self.problem_type)(self.detail)

    def body(self) -> dict[str, Any]:
        return {"problem": {PD_TITLE: self.title, PD_DETAIL: self.detail, PD_TYPE: self.problem_type}}

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> Problem:
        pd = _need(m, "problem", dict, "problem")
        extra = set(pd) - {PD_TITLE, PD_DETAIL, PD_TYPE}
        if extra:
            raise ProtocolError(f"problem: unknown problem-detail key(s) {sorted(map(str, extra))}")
        title, detail, ptype = pd.get(PD_TITLE), pd.get(PD_DETAIL), pd.get(PD_TYPE)
        if not all(isinstance(x, str) for x in (title, detail, ptype)):
            raise ProtocolError("problem: title, detail and type must be text")
        return cls(problem_type=ptype, title=title, detail=detail)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, Load, Identity, Release, Stdin, ServiceCertificate, Output, Net, Exit, Problem)
}


def _reject_tag(decoder: Any, tag: Any) -> Any:
    raise ProtocolError(f"CBOR tags are not allowed (tag {tag.tag})")


def _rejecter(number: int) -> Any:
    def reject(decoder: Any) -> Any:
        raise ProtocolError(f"CBOR tags are not allowed (tag {number})")

    return reject


#: Tags cbor2 decodes itself (dates, bignums, shared references, sets, ...):
#: overridden so that every tag is refused while decoding, before any value
#: (such as a reference cycle) is built.
_NO_SEMANTIC_TAGS = {
    n: _rejecter(n)
    for n in (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004, 55799)
}


def _check_keys(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, int | str):
                raise ProtocolError(f"{where}: CBOR map keys must be integers or text")
            _check_keys(item, where)
    elif isinstance(value, list):
        for item in value:
            _check_keys(item, where)


def loads_strict(data: bytes, where: str = "message") -> Any:
    """Decode exactly one CBOR data item of stockade's strict profile.

    The profile (docs/protocol.cddl): deterministic encoding as cbor2's
    ``canonical=True`` produces it (shortest integers and lengths, sorted map
    keys), no indefinite lengths, no duplicate keys, no tags, integer or text
    map keys, nesting at most MAX_DEPTH, nothing after the item. cbor2
    enforces what its options allow; the rest is checked by re-encoding the
    decoded value and comparing it with the received bytes.
    """
    try:
        value = cbor2.loads(
            data,
            tag_hook=_reject_tag,
            semantic_decoders=_NO_SEMANTIC_TAGS,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=MAX_DEPTH,
        )
    except ProtocolError as exc:
        raise ProtocolError(f"{where}: {exc}") from None
    except Exception as exc:  # cbor2 raises several types on garbage
        cause = exc.__cause__ if isinstance(exc.__cause__, ProtocolError) else None
        if cause is not None:
            raise ProtocolError(f"{where}: {cause}") from None
        text = str(exc)
        if "Duplicate map key" in text:
            raise ProtocolError(f"{where}: duplicate CBOR map key") from None
        if "nesting depth" in text:
            raise ProtocolError(f"{where}: CBOR nested deeper than {MAX_DEPTH} levels") from None
        raise ProtocolError(f"{where}: not valid CBOR ({type(exc).__name__}: {text})") from None
    _check_keys(value, where)
    try:
        canonical = cbor2.dumps(value, canonical=True)
    except Exception as exc:  # e.g. a built-in tag decoded to an odd type
        raise ProtocolError(f"{where}: CBOR item outside the strict profile ({type(exc).__name__})") from None
    if canonical != data:
        raise ProtocolError(
            f"{where}: CBOR is not in deterministic encoding "
            "(non-shortest form, unsorted keys, tags or trailing bytes)"
        )
    return value


def decode_map(data: bytes, where: str = "message") -> dict[Any, Any]:
    """Decode one CBOR map, turning every decoder failure into ProtocolError."""
    value = loads_strict(data, where)
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: expected a CBOR map, got {type(value).__name__}")
    return value


def _bstr_head(length: int) -> bytes:
    """The head of a CBOR byte string of ``length`` bytes, shortest form
    (RFC 8949 sections 3 and 4.2.1)."""
    if length < 24:
        return bytes([0x40 | length])
    size = next(n for n in (1, 2, 4, 8) if length < 1 << (8 * n))
    return bytes([0x40 | {1: 24, 2: 25, 4: 26, 8: 27}[size]]) + length.to_bytes(size, "big")


def _bulk_prefix(message: Message) -> bytes:
    """The deterministic encoding of ``message`` (whose ``data`` is empty)
    up to the head of its ``data`` byte string, which canonical key order
    puts last: every message of its type and stream is this prefix, the
    head and the data."""
    empty = message.to_cbor()
    full = dataclasses.replace(message, data=b"x").to_cbor()  # type: ignore[call-arg]
    if not (empty.endswith(b"\x40") and full == empty[:-1] + b"\x41x"):  # pragma: no cover - cbor2 changed
        raise AssertionError(f"{message.TYPE}: data is not the last item of its encoding")
    return empty[:-1]


#: The messages that carry bulk data (output chunks, stdin chunks), by the
#: bytes every one of them starts with. decode() takes these apart without
#: cbor2 and encode_bulk() builds them with one copy of the data; the bytes
#: are exactly those of the strict profile (tests/test_wire.py compares
#: them with cbor2 on both sides).
_BULK: dict[bytes, Callable[[bytes], Message]] = {}


def encode_bulk(message: Output | Stdin, max_frame: int = MAX_FRAME) -> bytes:
    """The frame of an Output or Stdin message: the same bytes as
    ``encode_frame(message.to_cbor())``, with one copy of the data."""
    prefix = _BULK_PREFIX_OUTPUT[message.fd] if isinstance(message, Output) else _BULK_PREFIX_STDIN
    return _bulk_head(prefix, len(message.data), max_frame) + message.data


def stdin_frame_head(length: int) -> bytes:
    """The bytes of the frame of a Stdin message with ``length`` bytes of
    data that come before the data (frame header, map, keys, data head)."""
    if length > MAX_STDIN_DATA:
        raise ProtocolError(f"stdin: more than {MAX_STDIN_DATA} bytes in one message ({length})")
    return _bulk_head(_BULK_PREFIX_STDIN, length, MAX_FRAME)


def _bulk_head(prefix: bytes, length: int, max_frame: int) -> bytes:
    head = _bstr_head(length)
    size = len(prefix) + len(head) + length
    if size > max_frame:
        raise ProtocolError(f"message of {size} bytes exceeds the {max_frame}-byte frame limit")
    return FRAME_HEADER.pack(size) + prefix + head


def _decode_bulk(data: bytes | memoryview) -> Message | None:
    """A bulk message in ``data`` taken apart without cbor2 (one copy of its
    data out of ``data``), or None when ``data`` is not exactly one in the
    strict profile (then the general decoder decides, and names what is
    wrong)."""
    for prefix, make in _BULK.items():
        at = len(prefix)
        if data[:at] != prefix:
            continue
        if len(data) <= at:
            return None
        initial = data[at]
        if initial >> 5 != 2:  # not a byte string
            return None
        info = initial & 0x1F
        if info < 24:
            length, start = info, at + 1
        elif info in (24, 25, 26, 27):
            size = 1 << (info - 24)
            length, start = int.from_bytes(data[at + 1 : at + 1 + size], "big"), at + 1 + size
            if start > len(data) or _bstr_head(length) != data[at:start]:
                return None  # not the shortest head
        else:
            return None
        if start + length != len(data):
            return None
        return make(bytes(data[start:]))
    return None


def decode_view(view: memoryview) -> Message:
    """:func:`decode` of a frame still in the frame decoder's buffer: a
    bulk message's data is copied out once, any other message is copied
    whole and decoded as usual. Keeps no reference to ``view``."""
    bulk = _decode_bulk(view)
    if bulk is not None:
        return bulk
    return decode(bytes(view))


def decode(data: bytes) -> Message:
    bulk = _decode_bulk(data)
    if bulk is not None:
        return bulk
    m = decode_map(data)
    version = m.get("v")
    if type(version) is not int or version != VERSION:  # not True, not 1.0
        raise ProtocolError(f"unsupported protocol version {version!r} (this side speaks {VERSION})")
    mtype = m.get("t")
    cls = MESSAGE_TYPES.get(mtype) if isinstance(mtype, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {mtype!r}")
    body = {k: v for k, v in m.items() if k not in ("v", "t")}
    _only(body, cls.FIELDS, cls.TYPE)
    return cls.from_map(body)


_BULK_PREFIX_OUTPUT = {fd: _bulk_prefix(Output(fd=fd, data=b"")) for fd in (STDOUT, STDERR)}
_BULK_PREFIX_STDIN = _bulk_prefix(Stdin(data=b""))
_BULK.update(
    {
        _BULK_PREFIX_OUTPUT[STDOUT]: lambda d: Output(fd=STDOUT, data=d),
        _BULK_PREFIX_OUTPUT[STDERR]: lambda d: Output(fd=STDERR, data=d),
        _BULK_PREFIX_STDIN: lambda d: Stdin(data=d),
    }
)
