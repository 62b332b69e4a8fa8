"""The one DER reader: the few shapes found inside vendor certificate
extensions and certificate envelopes.

AMD's VCEK/VLEK extensions hold DER INTEGERs (SPL values), an IA5String
(product name) and raw bytes (hwID); Intel's SGX extension is a SEQUENCE of
(OID, value) pairs (evidence/intel/pck.py), and the Intel envelope check
walks a certificate's outer elements. pyca/cryptography exposes such
extensions only as undecoded bytes (UnrecognizedExtension), and no other
dependency of stockade decodes DER, so these strict readers cover exactly the
shapes needed, rejecting everything else (long-form tags, indefinite
lengths, trailing bytes, negative or non-minimal integers, non-minimal OID
arcs).
"""

from __future__ import annotations

from stockade.errors import MalformedEvidence

INTEGER = 0x02
OCTET_STRING = 0x04
IA5STRING = 0x16


def tlv(data: bytes, pos: int, what: str) -> tuple[int, bytes, int]:
    """(tag, value, next position) of the DER element at ``pos``: one-byte
    tag, definite minimal length of at most 4 bytes, value inside ``data``."""
    if pos + 2 > len(data):
        raise MalformedEvidence(f"{what}: truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise MalformedEvidence(f"{what}: bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        if length < 0x80 or data[pos] == 0:
            raise MalformedEvidence(f"{what}: non-minimal DER length")
        pos += n
    if pos + length > len(data):
        raise MalformedEvidence(f"{what}: DER value overruns its container")
    return tag, data[pos : pos + length], pos + length


def elements(data: bytes, what: str) -> list[tuple[int, bytes]]:
    """(tag, value) of each DER element that ``data`` is the concatenation of."""
    out = []
    pos = 0
    while pos < len(data):
        tag, value, pos = tlv(data, pos, what)
        out.append((tag, value))
    return out


def only(data: bytes, tag: int, what: str) -> bytes:
    """The value of ``data``, which must be exactly one element with ``tag``."""
    if len(data) < 2 or data[0] != tag:
        raise MalformedEvidence(f"{what}: expected DER tag 0x{tag:02x}")
    _, value, end = tlv(data, 0, what)
    if end != len(data):
        raise MalformedEvidence(f"{what}: DER length does not match the value")
    return value


def unsigned(body: bytes, what: str) -> int:
    """The value of a DER INTEGER (or ENUMERATED) body that must be a
    minimal non-negative integer."""
    if not body:
        raise MalformedEvidence(f"{what}: empty INTEGER")
    if body[0] & 0x80:
        raise MalformedEvidence(f"{what}: negative INTEGER")
    if len(body) > 1 and body[0] == 0 and not body[1] & 0x80:
        raise MalformedEvidence(f"{what}: non-minimal INTEGER")
    return int.from_bytes(body, "big")


def oid(value: bytes, what: str) -> str:
    """The dotted form of an OBJECT IDENTIFIER body (X.690 8.19; each arc
    minimal)."""
    if not value or value[-1] & 0x80:
        raise MalformedEvidence(f"{what}: bad OBJECT IDENTIFIER")
    arcs: list[int] = []
    acc = 0
    for b in value:
        if acc == 0 and b == 0x80:
            raise MalformedEvidence(f"{what}: non-minimal OBJECT IDENTIFIER arc")
        acc = acc << 7 | b & 0x7F
        if not b & 0x80:
            if not arcs:
                first = min(acc // 40, 2)
                arcs += [first, acc - 40 * first]
            else:
                arcs.append(acc)
            acc = 0
    return ".".join(map(str, arcs))


def read_uint(data: bytes, what: str) -> int:
    return unsigned(only(data, INTEGER, what), what)


def read_ia5(data: bytes, what: str) -> str:
    body = only(data, IA5STRING, what)
    if any(b > 0x7F for b in body):
        raise MalformedEvidence(f"{what}: IA5String with non-ASCII bytes")
    return body.decode("ascii")


def read_octets(data: bytes, what: str) -> bytes:
    return only(data, OCTET_STRING, what)


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def uint(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative")
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([INTEGER]) + _length(len(body)) + body


def ia5(text: str) -> bytes:
    body = text.encode("ascii")
    return bytes([IA5STRING]) + _length(len(body)) + body


def octets(body: bytes) -> bytes:
    return bytes([OCTET_STRING]) + _length(len(body)) + body
