"""The few DER shapes of the workload certificate's own extensions
(docs/steward.md, "Certificate profile"): UTF8String, OCTET STRING and
SEQUENCE OF OCTET STRING. Strict (X.690 DER): one-byte tags, definite
minimal lengths, nothing after the value. Errors are ``ValueError``; the
verifier turns them into its own error. (stockade.wire.der has a reader of
the same strictness for vendor extensions; the steward's layering does
not reach wire, so its three shapes live here.)"""

from __future__ import annotations

UTF8STRING = 0x0C
OCTET_STRING = 0x04
SEQUENCE = 0x30


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _length(len(body)) + body


def read(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, value, next position) of the element at ``pos``."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tag")
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 3 or pos + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        if length < 0x80 or data[pos] == 0:
            raise ValueError("non-minimal DER length")
        pos += n
    if pos + length > len(data):
        raise ValueError("DER value overruns its container")
    return tag, data[pos : pos + length], pos + length


def only(data: bytes, tag: int) -> bytes:
    """The value of ``data``, which must be exactly one element with ``tag``."""
    got, value, end = read(data, 0)
    if got != tag:
        raise ValueError(f"DER tag 0x{got:02x}, expected 0x{tag:02x}")
    if end != len(data):
        raise ValueError("bytes after the DER value")
    return value


def sequence_of(data: bytes, tag: int) -> list[bytes]:
    """The values of a SEQUENCE whose every element has ``tag``."""
    body = only(data, SEQUENCE)
    out = []
    pos = 0
    while pos < len(body):
        got, value, pos = read(body, pos)
        if got != tag:
            raise ValueError(f"SEQUENCE element with DER tag 0x{got:02x}, expected 0x{tag:02x}")
        out.append(value)
    return out
