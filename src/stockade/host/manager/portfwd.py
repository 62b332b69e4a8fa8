"""Published ports: the keep manager forwards a public TCP port to a Unix
socket a Keep listens on (``stockade host serve --keep-ports LOW-HIGH``,
``publish`` in the create request; ADR 0027 addendum).

The Keep binds ``unix:SCRATCH/net-NAME.sock`` itself (mode 0600) and
terminates TLS there (stockade.keep.netsock); the manager only moves bytes,
both ways, without parsing them: all it ever sees are TLS records. Each
published port takes at most ``max_connections`` connections at a time (the
next one is closed at once), and its listener is closed, its connections
dropped and the socket file removed when the Keep ends.

Host code: asyncio only, no plaintext, no secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from stockade.wire.messages import MAX_SOCKETS, SOCKET_NAME_RE, UNIX_PREFIX, parse_unix_address

log = logging.getLogger("stockade.host.manager")

#: Names one create request may publish (the listen sockets a package may declare).
MAX_PUBLISH: Final = MAX_SOCKETS
#: Connections one published port forwards at a time.
MAX_FORWARD_CONNECTIONS: Final = 64
#: Bytes read at a time in each direction.
CHUNK: Final = 64 * 1024
#: How long connecting to the Keep's socket may take.
CONNECT_TIMEOUT_S: Final = 5.0
_RANGE_RE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})")

#: A test hook: sees every chunk forwarded (direction "in": client to
#: Keep, "out": Keep to client). None in production.
Tap = Callable[[str, bytes], None]


class NoFreePort(Exception):
    """Every port of the range is taken (by other Keeps or other programs)."""


@dataclass(frozen=True)
class PortRange:
    """The host TCP ports the manager may publish (inclusive)."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high <= 65535:
            raise ValueError(f"{self.low}-{self.high} is not a port range within 1-65535")

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """``LOW-HIGH``; ValueError with a one-line reason."""
        m = _RANGE_RE.fullmatch(text.strip())
        if m is None:
            raise ValueError(f"{text!r} is not LOW-HIGH (ports)")
        return cls(int(m[1]), int(m[2]))

    def __len__(self) -> int:
        return self.high - self.low + 1


def check_publish(names: object) -> tuple[str, ...]:
    """The ``publish`` field of a create request: a list of at most
    MAX_PUBLISH distinct socket names; ValueError (one line) otherwise."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("publish must be a list of socket names")
    if len(names) > MAX_PUBLISH:
        raise ValueError(f"publish names at most {MAX_PUBLISH} sockets")
    for name in names:
        if not SOCKET_NAME_RE.fullmatch(name):
            raise ValueError(f"publish: {name[:40]!r} is not a socket name ([a-z][a-z0-9-]{{0,31}})")
    if len(set(names)) != len(names):
        raise ValueError("publish names a socket twice")
    return tuple(names)


def bind_path(scratch: Path, name: str) -> str:
    """Where the Keep binds the published socket ``name``: a Unix socket in
    its scratch directory, as a listen address (``unix:/...``); ValueError
    when the path is too long for a Unix socket."""
    address = f"{UNIX_PREFIX}{scratch / f'net-{name}.sock'}"
    parse_unix_address(address)
    return address


@dataclass(frozen=True)
class Published:
    """One published socket: its name, the public ``host:port`` and the
    address the Keep must bind."""

    name: str
    public: str
    bind: str


@dataclass
class _Port:
    name: str
    port: int
    server: asyncio.Server
    path: str | None = None  # set once the Keep's scratch directory is known
    open: set[asyncio.StreamWriter] = field(default_factory=set)


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PortForwarder:
    """The published ports of one manager, by Keep."""

    def __init__(
        self,
        host: str,
        ports: PortRange | None,
        *,
        max_connections: int = MAX_FORWARD_CONNECTIONS,
        tap: Tap | None = None,
    ) -> None:
        self.host = host
        self.ports = ports
        self.max_connections = max_connections
        self.tap = tap
        self._keeps: dict[str, list[_Port]] = {}

    @property
    def enabled(self) -> bool:
        return self.ports is not None

    def in_use(self) -> set[int]:
        return {p.port for ports in self._keeps.values() for p in ports}

    async def reserve(self, keep_id: str, names: tuple[str, ...]) -> None:
        """Bind one public port per name for ``keep_id`` (before the Keep
        starts: a refusal costs nothing). NoFreePort when the range has no
        port left; nothing stays bound then."""
        assert self.ports is not None
        taken: list[_Port] = []
        try:
            for name in names:
                taken.append(await self._bind(name, self.in_use() | {p.port for p in taken}))
        except BaseException:
            for p in taken:
                p.server.close()
            raise
        self._keeps[keep_id] = taken

    async def _bind(self, name: str, busy: set[int]) -> _Port:
        assert self.ports is not None
        for port in range(self.ports.low, self.ports.high + 1):
            if port in busy:
                continue
            holder: list[_Port] = []
            try:
                server = await asyncio.start_server(
                    self._handler(holder), self.host, port, reuse_address=True
                )
            except OSError:  # another program has it
                continue
            entry = _Port(name, port, server)
            holder.append(entry)
            return entry
        raise NoFreePort(f"every port of {self.ports.low}-{self.ports.high} is in use")

    def rename(self, old: str, new: str) -> None:
        """Ports reserved under ``old`` belong to ``new`` now."""
        if old in self._keeps:
            self._keeps[new] = self._keeps.pop(old)

    def attach(self, keep_id: str, scratch: Path) -> list[Published]:
        """The Keep started with ``scratch``: point its public ports at its
        sockets there; the published names, public and bind addresses.
        ValueError when a socket path would be too long."""
        out = []
        for p in self._keeps.get(keep_id, []):
            p.path = bind_path(scratch, p.name)
            out.append(Published(p.name, _fmt(self.host, p.port), p.path))
        return out

    def published(self, keep_id: str) -> list[Published]:
        return [
            Published(p.name, _fmt(self.host, p.port), p.path)
            for p in self._keeps.get(keep_id, [])
            if p.path is not None
        ]

    async def release(self, keep_id: str) -> None:
        """The Keep ended: close its listeners and connections, remove its
        socket files (all before the first await), then wait briefly for
        the listeners to be closed."""
        ports = self._keeps.pop(keep_id, [])
        for p in ports:
            p.server.close()
            for writer in list(p.open):
                writer.close()
            if p.path is not None:
                with contextlib.suppress(OSError):
                    Path(p.path.removeprefix(UNIX_PREFIX)).unlink(missing_ok=True)
            log.info("Keep %s: port %d (%s) no longer published", keep_id, p.port, p.name)
        for p in ports:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.server.wait_closed(), 5)

    def _handler(
        self, holder: list[_Port]
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._forward(holder[0], reader, writer)

        return handle

    async def _forward(self, p: _Port, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if p.path is None or len(p.open) >= self.max_connections:
            writer.close()
            return
        p.open.add(writer)
        opened = [writer]
        try:
            try:
                up_reader, upstream = await asyncio.wait_for(
                    asyncio.open_unix_connection(p.path.removeprefix(UNIX_PREFIX)), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError):
                return  # the Keep does not listen (yet, or any more)
            p.open.add(upstream)
            opened.append(upstream)
            await asyncio.gather(
                self._pump(reader, upstream, "in"),
                self._pump(up_reader, writer, "out"),
                return_exceptions=True,
            )
        finally:
            for w in opened:
                p.open.discard(w)
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        """Copy bytes as they come until EOF, then half-close."""
        try:
            while data := await reader.read(CHUNK):
                if self.tap is not None:
                    self.tap(direction, data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            writer.close()
