"""Length-prefixed framing of CBOR items over a byte stream (sans-I/O).

A frame is a 4-byte big-endian length followed by that many bytes holding
exactly one CBOR data item. The decoder never reads from a socket: callers
feed it bytes and take complete frames out.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

from stockade.errors import ProtocolError

HEADER = struct.Struct(">I")
T = TypeVar("T")
#: Upper bound of one frame. A workload message carries the Wasm module and
#: the files, so this is generous, but it bounds what a hostile peer can make
#: us buffer.
MAX_FRAME = 256 * 1024 * 1024


def encode_frame(payload: bytes, max_frame: int = MAX_FRAME) -> bytes:
    if len(payload) > max_frame:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the {max_frame}-byte frame limit")
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Accumulates stream bytes and yields complete frame payloads."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        #: The largest frame accepted; a caller may lower it mid-stream (a
        #: frame already announced is checked against it on the next feed).
        self.max_frame = max_frame

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        self._buf += data
        frames: list[bytes] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > self.max_frame:
                raise ProtocolError(f"peer announced a {size}-byte frame, limit is {self.max_frame}")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            # One copy out of the buffer (slicing the bytearray first would
            # copy a large frame twice); the view is released before the del.
            with memoryview(self._buf) as view:
                frames.append(bytes(view[HEADER.size : end]))
            del self._buf[:end]
        return frames

    def feed_decoded(self, data: bytes | memoryview, take: Callable[[memoryview], T]) -> list[T]:
        """:meth:`feed`, with each complete frame's payload handed to
        ``take`` as a view into the buffer (which ``take`` must not keep)
        instead of copied out first: one copy less for bulk data. Frames
        after one that ``take`` refuses (raises) stay unconsumed."""
        self._buf += data
        out: list[T] = []
        pos = 0
        view = memoryview(self._buf)
        try:
            while len(view) - pos >= HEADER.size:
                (size,) = HEADER.unpack_from(view, pos)
                if size > self.max_frame:
                    raise ProtocolError(f"peer announced a {size}-byte frame, limit is {self.max_frame}")
                end = pos + HEADER.size + size
                if len(view) < end:
                    break
                frame = view[pos + HEADER.size : end]
                try:
                    out.append(take(frame))
                finally:
                    frame.release()
                pos = end
        finally:
            view.release()
        # Not after a refusal (the session is over): a traceback may still
        # hold a view of the buffer, which then cannot be resized.
        del self._buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)
