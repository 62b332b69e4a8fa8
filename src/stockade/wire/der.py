"""The few DER shapes found inside vendor certificate extensions.

AMD's VCEK/VLEK extensions hold DER INTEGERs (SPL values), an IA5String
(product name) and raw bytes (hwID). pyca/cryptography exposes such
extensions only as undecoded bytes (UnrecognizedExtension), and no other
dependency of stockade decodes DER, so these strict readers cover exactly the
shapes needed, rejecting everything else (long-form tags, indefinite
lengths, trailing bytes, negative or non-minimal integers).
"""

from __future__ import annotations

from stockade.errors import MalformedEvidence

INTEGER = 0x02
OCTET_STRING = 0x04
IA5STRING = 0x16


def _tlv(data: bytes, tag: int, what: str) -> bytes:
    if len(data) < 2 or data[0] != tag:
        raise MalformedEvidence(f"{what}: expected DER tag 0x{tag:02x}")
    length = data[1]
    offset = 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or len(data) < 2 + n:
            raise MalformedEvidence(f"{what}: bad DER length")
        length = int.from_bytes(data[2 : 2 + n], "big")
        if length < 0x80 or data[2] == 0:
            raise MalformedEvidence(f"{what}: non-minimal DER length")
        offset = 2 + n
    if len(data) != offset + length:
        raise MalformedEvidence(f"{what}: DER length does not match the value")
    return data[offset:]


def read_uint(data: bytes, what: str) -> int:
    body = _tlv(data, INTEGER, what)
    if not body:
        raise MalformedEvidence(f"{what}: empty INTEGER")
    if body[0] & 0x80:
        raise MalformedEvidence(f"{what}: negative INTEGER")
    if len(body) > 1 and body[0] == 0 and not body[1] & 0x80:
        raise MalformedEvidence(f"{what}: non-minimal INTEGER")
    return int.from_bytes(body, "big")


def read_ia5(data: bytes, what: str) -> str:
    body = _tlv(data, IA5STRING, what)
    if any(b > 0x7F for b in body):
        raise MalformedEvidence(f"{what}: IA5String with non-ASCII bytes")
    return body.decode("ascii")


def read_octets(data: bytes, what: str) -> bytes:
    return _tlv(data, OCTET_STRING, what)


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
