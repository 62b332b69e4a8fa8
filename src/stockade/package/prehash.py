"""The content digest of package bytes, computed *before* they are parsed.

A Keep that was told which digests to accept (trusted boot) must not decode
up to 256 MiB of bytes a hostile host staged before it knows they are the
pinned package: decoding builds Python objects for every item and copies
every file. This module computes the digest from the raw bytes instead,
reading only CBOR item *headers* (no value is decoded, no byte string is
copied) and hashing the bytes in place.

Why that gives the same digest: a package is exactly one deterministic CBOR
map (docs/package.md) whose keys sort length-first, so its bytes are::

    a4  61 "v" <v>  65 "files" <files>  68 "manifest" <manifest>  6a "signatures" <sigs>

and the content digest is SHA-256 over the deterministic encoding of the
same map without ``"signatures"``, which is ``a3`` followed by the same
bytes up to the ``"signatures"`` key. :func:`content_digest` finds where
that key starts by skipping items by their headers (at most
:data:`MAX_ITEMS` of them, so the work is bounded whatever the bytes), and
hashes ``a3 || data[1:end]``. Bytes that do not have this shape are no
package whose digest can be pinned: :class:`Unhashable`.

If the bytes later parse (``Package.from_bytes`` is strict: they must be the
deterministic encoding of what they decode to), ``Package.digest`` equals
this digest; the loader checks that too.
"""

from __future__ import annotations

import hashlib

#: Items (headers) skipped at most before the signatures: far above any real
#: package (a Keep measures at most 100,000 files), and about a second of work.
MAX_ITEMS = 1 << 20
#: Bytes hashed per update.
CHUNK = 1 << 20

_KEYS = (b"\x61v", b"\x65files", b"\x68manifest")
_SIGNATURES_KEY = b"\x6asignatures"


class Unhashable(ValueError):
    """The bytes do not have the layout of a package; ``reason`` says where."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _skip(view: memoryview, pos: int, budget: int) -> tuple[int, int]:
    """The position after the one data item at ``pos``, and the budget left.
    Definite lengths only (deterministic CBOR has no other)."""
    size = len(view)
    pending = 1
    while pending:
        pending -= 1
        budget -= 1
        if budget < 0 or pending > budget:
            raise Unhashable(f"more than {MAX_ITEMS} CBOR items before the signatures")
        if pos >= size:
            raise Unhashable(f"truncated at byte {pos}")
        initial = view[pos]
        major, info = initial >> 5, initial & 0x1F
        pos += 1
        if info < 24:
            arg = info
        elif info <= 27:
            width = 1 << (info - 24)
            if pos + width > size:
                raise Unhashable(f"truncated at byte {pos}")
            arg = int.from_bytes(view[pos : pos + width], "big")
            pos += width
        else:
            raise Unhashable(f"byte {pos - 1}: indefinite length or reserved value (not deterministic CBOR)")
        if major in (2, 3):  # byte or text string: skip its content unread
            if arg > size - pos:
                raise Unhashable(f"a string at byte {pos} runs past the end")
            pos += arg
        elif major == 4:
            pending += arg
        elif major == 5:
            pending += 2 * arg
        elif major == 6:
            pending += 1
        # majors 0, 1 and 7: the header was the whole item
    return pos, budget


def content_digest(data: bytes | bytearray | memoryview) -> bytes:
    """SHA-256 content digest of the package in ``data`` (see the module
    docstring), without decoding it; Unhashable if it has not the layout of
    a package."""
    view = memoryview(data).cast("B")
    if len(view) == 0 or view[0] != 0xA4:
        raise Unhashable("not a CBOR map of 4 entries")
    pos, budget = 1, MAX_ITEMS
    for key in _KEYS:
        if view[pos : pos + len(key)] != key:
            raise Unhashable(f"no {key[1:].decode()!r} key at byte {pos}")
        pos, budget = _skip(view, pos + len(key), budget)
    if view[pos : pos + len(_SIGNATURES_KEY)] != _SIGNATURES_KEY:
        raise Unhashable(f"no 'signatures' key at byte {pos}")
    digest = hashlib.sha256(b"\xa3")
    for start in range(1, pos, CHUNK):
        digest.update(view[start : min(pos, start + CHUNK)])
    return digest.digest()


__all__ = ["MAX_ITEMS", "Unhashable", "content_digest"]
