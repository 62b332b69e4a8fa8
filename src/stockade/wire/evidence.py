"""Evidence as it travels: a CBOR bundle inside the Keep's TLS certificate.

The Keep's self-signed certificate carries its evidence in an X.509
extension with OID 2.23.133.5.4.9 (tcg-dice-conceptual-message-wrapper, the
reference of the CCC interoperable RA-TLS work). Its value follows the CBOR
form of a Conceptual Message Wrapper (draft-ietf-rats-msg-wrap): the
extension's DER OCTET STRING holds a CBOR array ``[media-type, payload]``,
and the payload is our :class:`EvidenceBundle` (see docs/protocol.cddl).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from stockade.errors import MalformedEvidence, ProtocolError
from stockade.wire import der
from stockade.wire.messages import VERSION, decode_map, loads_strict
from stockade.wire.platform import PLATFORMS

EVIDENCE_OID = "2.23.133.5.4.9"
MEDIA_TYPE = "application/vnd.stockade.evidence+cbor; v=1"


@dataclass(frozen=True)
class EvidenceBundle:
    """Raw evidence from a backend plus the certificates that endorse it."""

    platform: str
    report: bytes
    certs: tuple[tuple[str, bytes], ...] = ()

    def cert(self, name: str) -> bytes | None:
        return dict(self.certs).get(name)

    def to_cbor(self) -> bytes:
        body = {
            "v": VERSION,
            "platform": self.platform,
            "report": self.report,
            "certs": dict(self.certs),
        }
        return bytes(cbor2.dumps(body, canonical=True))

    @classmethod
    def from_cbor(cls, data: bytes) -> EvidenceBundle:
        try:
            m = decode_map(data, "evidence bundle")
        except ProtocolError as exc:
            raise MalformedEvidence(str(exc)) from None
        if set(m) != {"v", "platform", "report", "certs"}:
            raise MalformedEvidence(f"evidence bundle has fields {sorted(map(str, m))}")
        if type(m["v"]) is not int or m["v"] != VERSION:  # not True, not 1.0
            raise MalformedEvidence(f"evidence bundle version {m['v']!r} is not supported")
        platform, report, certs = m["platform"], m["report"], m["certs"]
        if platform not in PLATFORMS:
            raise MalformedEvidence(f"unknown evidence platform {platform!r}")
        if not isinstance(report, bytes) or not isinstance(certs, dict):
            raise MalformedEvidence("evidence bundle report/certs have the wrong type")
        if not all(isinstance(k, str) and isinstance(v, bytes) for k, v in certs.items()):
            raise MalformedEvidence("evidence bundle certs must map names to bytes")
        return cls(platform=platform, report=report, certs=tuple(sorted(certs.items())))


def extension_value(bundle: EvidenceBundle) -> bytes:
    """The DER extnValue content: OCTET STRING of the CBOR CMW record."""
    return der.octets(bytes(cbor2.dumps([MEDIA_TYPE, bundle.to_cbor()])))


def bundle_from_extension(value: bytes) -> EvidenceBundle:
    cmw_bytes = der.read_octets(value, "evidence extension")
    try:
        cmw: Any = loads_strict(cmw_bytes, "evidence extension")
    except ProtocolError as exc:
        raise MalformedEvidence(str(exc)) from None
    if not (isinstance(cmw, list) and len(cmw) == 2 and cmw[0] == MEDIA_TYPE and isinstance(cmw[1], bytes)):
        raise MalformedEvidence("evidence extension is not a stockade CMW record")
    return EvidenceBundle.from_cbor(cmw[1])
