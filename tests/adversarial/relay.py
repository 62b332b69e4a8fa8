"""A tampering relay between a deploy client and a Keep: the host as a
man-in-the-middle.

The client reaches a Keep through a byte stream that the host owns (a
socketpair from :func:`stockade.host.loader.start_keep` for a local Keep, the
manager's WebSocket relay for a remote one, ADR 0009). Either way the host
sees, and may rewrite, every byte. :class:`TamperRelay` sits on that stream:
it hands the client one end of a fresh socketpair and copies bytes to and
from the Keep's stream, cut into units (the clear-text hello frame, then TLS
records: 5-byte header, RFC 8446 section 5.1), and lets a :class:`Tamper`
policy rewrite, drop, hold or add units in either direction.

Units are labelled with the *phase* the session is in, as far as a relay can
tell without keys:

- ``hello``: the clear-text hello frame (client to Keep);
- ``handshake``: TLS records until the client's first encrypted record (its
  Finished) has gone up;
- ``load``: after that: the load request up; session tickets and the
  workload identity down;
- ``run``: after :meth:`TamperRelay.mark_released` (the test's spy on the
  client's release step calls it): the release up; output and exit down.

The relay records every unit it received (``received``) and every byte it
forwarded (``sent``), so a test can replay them into another session or
check what reached the Keep.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

#: TLS record content types (RFC 8446, section 5.1).
CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
RECORD_HEADER = 5
#: Longest TLS 1.3 record on the wire: 2^14 + 256 bytes of ciphertext.
MAX_RECORD = (1 << 14) + 256 + RECORD_HEADER

UP = "up"  # client -> Keep
DOWN = "down"  # Keep -> client


@dataclass(frozen=True)
class Unit:
    direction: str
    phase: str
    #: 0-based count of units of this direction in this phase.
    index: int
    data: bytes

    @property
    def content_type(self) -> int | None:
        """TLS content type, None for the clear-text hello."""
        return None if self.phase == "hello" else self.data[0]


class Close(Exception):
    """Raised by a policy: forward ``data`` then end both directions (EOF)."""

    def __init__(self, data: bytes = b"") -> None:
        super().__init__("relay closed by the tamper policy")
        self.data = data


class Tamper:
    """Pass-through policy; subclasses change :meth:`on_unit`. Returns the
    byte strings to forward (possibly none, possibly several)."""

    #: Set once the policy changed something (tests assert it acted).
    acted: bool = False

    def on_unit(self, unit: Unit) -> list[bytes]:
        return [unit.data]


@dataclass
class Target:
    """Which unit a policy acts on: the ``index``-th unit of ``direction``
    in ``phase`` (by default only TLS application-data records, and only
    records of at least ``min_size`` bytes)."""

    direction: str
    phase: str
    index: int = 0
    app_data_only: bool = True
    min_size: int = 0
    _seen: int = field(default=0, init=False)

    def hit(self, unit: Unit) -> bool:
        if unit.direction != self.direction or unit.phase != self.phase:
            return False
        if self.app_data_only and unit.content_type != APPLICATION_DATA:
            return False
        if len(unit.data) < self.min_size:
            return False
        self._seen += 1
        return self._seen - 1 == self.index


class Flip(Tamper):
    """Flip one bit of the target record (by default in its last byte: the
    AEAD tag; ``offset`` counts from the record's start, negative from the end)."""

    def __init__(self, target: Target, offset: int = -1, mask: int = 0x01) -> None:
        self.target, self.offset, self.mask = target, offset, mask

    def on_unit(self, unit: Unit) -> list[bytes]:
        if not self.target.hit(unit):
            return [unit.data]
        data = bytearray(unit.data)
        data[self.offset] ^= self.mask
        self.acted = True
        return [bytes(data)]


class Drop(Tamper):
    def __init__(self, target: Target) -> None:
        self.target = target

    def on_unit(self, unit: Unit) -> list[bytes]:
        if not self.target.hit(unit):
            return [unit.data]
        self.acted = True
        return []


class Duplicate(Tamper):
    def __init__(self, target: Target) -> None:
        self.target = target

    def on_unit(self, unit: Unit) -> list[bytes]:
        if not self.target.hit(unit):
            return [unit.data]
        self.acted = True
        return [unit.data, unit.data]


class Reorder(Tamper):
    """Hold the target record and send it after the next unit of the same
    direction (swap two consecutive records)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._held: bytes | None = None

    def on_unit(self, unit: Unit) -> list[bytes]:
        if self._held is not None and unit.direction == self.target.direction:
            held, self._held = self._held, None
            self.acted = True
            return [unit.data, held]
        if self.target.hit(unit):
            self._held = unit.data
            self.acted = True  # holding is already a change (and may stall both ends)
            return []
        return [unit.data]


class Truncate(Tamper):
    """Forward the first ``keep`` bytes of the target record, then end the
    stream in both directions (what a Keep dying mid-write looks like)."""

    def __init__(self, target: Target, keep: int | None = None) -> None:
        self.target, self.keep = target, keep

    def on_unit(self, unit: Unit) -> list[bytes]:
        if not self.target.hit(unit):
            return [unit.data]
        self.acted = True
        cut = self.keep if self.keep is not None else len(unit.data) // 2
        raise Close(unit.data[:cut])


class Inject(Tamper):
    """Send ``payload`` (clear-text bytes, e.g. a protocol frame) just before
    the target unit."""

    def __init__(self, target: Target, payload: bytes) -> None:
        self.target, self.payload = target, payload

    def on_unit(self, unit: Unit) -> list[bytes]:
        if not self.target.hit(unit):
            return [unit.data]
        self.acted = True
        return [self.payload, unit.data]


class Replay(Tamper):
    """Answer the client with recorded Keep records instead of the live
    ones: from the first down unit of ``phase`` on, each live down unit is
    replaced by the next recorded one (``recorded``: the down units of an
    earlier session, in order, with their phases)."""

    def __init__(self, recorded: list[Unit], phase: str = "handshake") -> None:
        self.phase = phase
        self._queue = [u.data for u in recorded if u.direction == DOWN and u.phase == phase]
        self._on = False

    def on_unit(self, unit: Unit) -> list[bytes]:
        if unit.direction != DOWN:
            return [unit.data]
        if unit.phase == self.phase:
            self._on = True
        if not self._on:
            return [unit.data]
        self.acted = True
        if not self._queue:
            return []
        if unit.phase != self.phase:
            # Out of recorded units of this phase: send the rest at once.
            rest, self._queue = self._queue, []
            return rest
        return [self._queue.pop(0)]


class _Splitter:
    """Cuts one direction's byte stream into units."""

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.buf = bytearray()
        self.hello_done = direction == DOWN

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        while True:
            if not self.hello_done:
                if len(self.buf) < 4:
                    break
                (size,) = struct.unpack_from(">I", self.buf)
                if size > 4096:  # not a hello: pass it on as one unit
                    end = len(self.buf)
                elif len(self.buf) < 4 + size:
                    break
                else:
                    end = 4 + size
                self.hello_done = True
            else:
                if len(self.buf) < RECORD_HEADER:
                    break
                (length,) = struct.unpack_from(">H", self.buf, 3)
                end = RECORD_HEADER + length
                if len(self.buf) < end:
                    break
            out.append(bytes(self.buf[:end]))
            del self.buf[:end]
        return out


class TamperRelay:
    """Interpose ``policy`` on the stream ``keep``. :attr:`client` is the
    socket to give the deploy client. ``idle_close``: after the policy acted,
    end the stream if nothing moved for that many seconds (a dropped last
    record would otherwise leave both ends waiting for their timeouts)."""

    def __init__(self, keep: socket.socket, policy: Tamper | None = None, idle_close: float = 5.0) -> None:
        self.keep = keep
        self.policy = policy or Tamper()
        self.client, self._mine = socket.socketpair()
        self.received: list[Unit] = []
        self.sent: dict[str, bytearray] = {UP: bytearray(), DOWN: bytearray()}
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._phase_up_app = 0
        self._counts: dict[tuple[str, str], int] = {}
        self._closed = threading.Event()
        self._last = time.monotonic()
        self._idle_close = idle_close
        self._threads = [
            threading.Thread(target=self._pump, args=(self._mine, keep, UP), daemon=True),
            threading.Thread(target=self._pump, args=(keep, self._mine, DOWN), daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def mark_released(self) -> None:
        """The client is releasing secrets: later units are phase ``run``."""
        self.released.set()

    def _phase(self, direction: str, first: bool) -> str:
        if direction == UP and first:
            return "hello"
        if self.released.is_set():
            return "run"
        if self._phase_up_app > 0:
            return "load"
        return "handshake"

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        splitter = _Splitter(direction)
        first = direction == UP
        try:
            while not self._closed.is_set():
                try:
                    data = src.recv(1 << 16)
                except OSError:
                    break
                if not data:
                    break
                for raw in splitter.feed(data):
                    with self._lock:
                        phase = self._phase(direction, first)
                        first = False
                        index = self._counts.get((direction, phase), 0)
                        self._counts[direction, phase] = index + 1
                        unit = Unit(direction, phase, index, raw)
                        self.received.append(unit)
                        try:
                            out = self.policy.on_unit(unit)
                        except Close as close:
                            if close.data:
                                dst.sendall(close.data)
                                self.sent[direction] += close.data
                            self.close()
                            return
                        if direction == UP and phase != "hello" and raw[0] == APPLICATION_DATA:
                            self._phase_up_app += 1
                        self._last = time.monotonic()
                    for chunk in out:
                        dst.sendall(chunk)
                        self.sent[direction] += chunk
        except OSError:
            pass
        # EOF in one direction ends the other too: a relay that lost one
        # side has nothing more to say.
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _watch(self) -> None:
        while not self._closed.wait(0.2):
            if self.policy.acted and time.monotonic() - self._last > self._idle_close:
                self.close()

    def close(self) -> None:
        """End the stream both ways (the client sees EOF)."""
        self._closed.set()
        for sock in (self._mine, self.keep):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float = 10.0) -> None:
        self.close()
        for t in self._threads:
            t.join(timeout)
        with contextlib.suppress(OSError):
            self._mine.close()

    def units(self, direction: str, phase: str | None = None) -> list[Unit]:
        return [u for u in self.received if u.direction == direction and (phase is None or u.phase == phase)]
