"""The SNP extended-report certificate table (pure parsing, no I/O).

A guest that asks for an extended report (``SNP_GET_EXT_REPORT`` on
/dev/sev-guest, or the ``auxblob`` attribute of a configfs-tsm report) gets,
next to the report, the certificates the host provisioned, laid out as the
GHCB specification (AMD pub. 56421, "SNP Extended Guest Request") defines:
a table of 24-byte entries, each a 16-byte GUID, a little-endian u32 offset
and a little-endian u32 length, ended by an all-zero entry; offsets count
from the start of the table; the certificates (DER) follow the table.

GUIDs, as go-sev-guest ``abi/abi.go`` and AMD's sev-guest tools spell them
(the 16 bytes are the GUID in RFC 4122 order, ``uuid.UUID(...).bytes``):
VCEK 63da758d-e664-4564-adc5-f4b93be8accd, VLEK
a8074bc2-a25a-483e-aae6-39c045a0b8a1, ASK (also used for the ASVK)
4ab7b379-bbac-4fe4-a02f-05aef327c782, ARK c0b406a4-a803-4952-9743-3fb6014cd0ae.

Parsing is strict: a missing terminator, an entry pointing into the table or
past the end of the data, overlapping entries, a null GUID with a range, and
a GUID given twice are MalformedEvidence. An entry of length 0 (an empty
slot, which go-sev-guest also accepts) means no certificate. Unknown GUIDs are
kept in ``CertTable.others``, never dropped silently. The certificates are
not parsed here: they are untrusted input for the verifier like any other.
"""

from __future__ import annotations

import itertools
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from stockade.errors import MalformedEvidence

ENTRY_SIZE = 24
_ENTRY = struct.Struct("<16sII")

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")

_NAMES = {VCEK_GUID: "vcek", VLEK_GUID: "vlek", ASK_GUID: "ask", ARK_GUID: "ark"}
_NULL = uuid.UUID(int=0)


@dataclass(frozen=True)
class CertTable:
    """Named certificates of a certificate table (DER bytes, unparsed)."""

    vcek: bytes | None = None
    vlek: bytes | None = None
    ask: bytes | None = None  # the ASK, or the ASVK for a VLEK
    ark: bytes | None = None
    others: tuple[tuple[uuid.UUID, bytes], ...] = ()

    @property
    def endorsement(self) -> bytes | None:
        """The VLEK if present, else the VCEK."""
        return self.vlek if self.vlek is not None else self.vcek

    def entries(self) -> list[tuple[uuid.UUID, bytes]]:
        named = [(g, getattr(self, n)) for g, n in _NAMES.items()]
        return [(g, b) for g, b in named if b is not None] + list(self.others)


def parse_cert_table(data: bytes) -> CertTable:
    """Parse a certificate table. An empty blob is an empty table (a host
    that provisioned no certificates)."""
    data = bytes(data)
    if not data:
        return CertTable()
    raw: list[tuple[uuid.UUID, int, int]] = []
    pos = 0
    while True:
        if pos + ENTRY_SIZE > len(data):
            raise MalformedEvidence(
                f"certificate table has no terminating all-zero entry within its {len(data)} bytes"
            )
        guid_bytes, offset, length = _ENTRY.unpack_from(data, pos)
        pos += ENTRY_SIZE
        guid = uuid.UUID(bytes=guid_bytes)
        if guid == _NULL and offset == 0 and length == 0:
            break
        if guid == _NULL:
            raise MalformedEvidence(f"certificate table entry {len(raw)} has a null GUID but a range")
        raw.append((guid, offset, length))
    header_end = pos
    found: dict[uuid.UUID, bytes] = {}
    spans: list[tuple[int, int, int]] = []
    for index, (guid, offset, length) in enumerate(raw):
        name = _NAMES.get(guid, str(guid))
        if guid in found:
            raise MalformedEvidence(f"certificate table lists {name} twice")
        if length == 0:
            found[guid] = b""  # an empty slot: the GUID counts as listed, with no certificate
            continue
        if offset < header_end:
            raise MalformedEvidence(
                f"certificate table entry {index} ({name}) starts at {offset}, inside the "
                f"{header_end}-byte table"
            )
        if offset + length > len(data):
            raise MalformedEvidence(
                f"certificate table entry {index} ({name}) ends at {offset + length}, past the "
                f"{len(data)} bytes of data"
            )
        spans.append((offset, offset + length, index))
        found[guid] = data[offset : offset + length]
    spans.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise MalformedEvidence(f"certificate table entries {first} and {second} overlap")
    present = {g: b for g, b in found.items() if b}
    return CertTable(
        vcek=present.get(VCEK_GUID),
        vlek=present.get(VLEK_GUID),
        ask=present.get(ASK_GUID),
        ark=present.get(ARK_GUID),
        others=tuple((g, b) for g, b in present.items() if g not in _NAMES),
    )


def build_cert_table(entries: Iterable[tuple[uuid.UUID, bytes]]) -> bytes:
    """The table for ``entries`` in the given order, followed by the blobs in
    the same order (what a host provisions; tests and the sim use it)."""
    items = list(entries)
    if any(not blob for _, blob in items):
        raise ValueError("certificate table entries must not be empty")
    offset = ENTRY_SIZE * (len(items) + 1)
    header = bytearray()
    for guid, blob in items:
        header += _ENTRY.pack(guid.bytes, offset, len(blob))
        offset += len(blob)
    header += bytes(ENTRY_SIZE)
    return bytes(header) + b"".join(blob for _, blob in items)


__all__ = [
    "ARK_GUID",
    "ASK_GUID",
    "ENTRY_SIZE",
    "VCEK_GUID",
    "VLEK_GUID",
    "CertTable",
    "build_cert_table",
    "parse_cert_table",
]
