"""Messages between a Keep and the sim PSP (the sim's /dev/sev-guest).

A guest asks its PSP for a report with MSG_REPORT_REQ (64 bytes of report
data, a VMPL) and gets MSG_REPORT_RSP plus, for an extended request, the
certificate table. These are the CBOR equivalents (docs/protocol.cddl),
framed like every stockade stream (wire.framing) and decoded with the same
strict profile as the deploy protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from stockade.errors import ProtocolError
from stockade.wire.messages import VERSION, decode_map


def _encode(body: dict[str, Any]) -> bytes:
    return bytes(cbor2.dumps({"v": VERSION, **body}, canonical=True))


def _decode(data: bytes, kind: str, fields: set[str]) -> dict[Any, Any]:
    m = decode_map(data, kind)
    version = m.get("v")
    if type(version) is not int or version != VERSION:
        raise ProtocolError(f"{kind}: unsupported version {version!r}")
    if m.get("t") == "error" and set(m) == {"v", "t", "detail"} and isinstance(m["detail"], str):
        raise ProtocolError(f"sim PSP refused: {m['detail']}")
    if set(m) != fields | {"v", "t"}:
        raise ProtocolError(f"{kind}: fields {sorted(map(str, m))} are not {sorted(fields)}")
    return m


@dataclass(frozen=True)
class ReportRequest:
    report_data: bytes
    vmpl: int = 0

    def to_cbor(self) -> bytes:
        return _encode({"t": "report-req", "report_data": self.report_data, "vmpl": self.vmpl})

    @classmethod
    def from_cbor(cls, data: bytes) -> ReportRequest:
        m = _decode(data, "report request", {"report_data", "vmpl"})
        rd, vmpl = m["report_data"], m["vmpl"]
        if m["t"] != "report-req" or not isinstance(rd, bytes) or len(rd) != 64:
            raise ProtocolError("report request needs 64 bytes of report_data")
        if type(vmpl) is not int or not 0 <= vmpl <= 3:
            raise ProtocolError("report request VMPL must be an integer 0..3")
        return cls(report_data=rd, vmpl=vmpl)


@dataclass(frozen=True)
class ReportResponse:
    report: bytes
    certs: tuple[tuple[str, bytes], ...]

    def to_cbor(self) -> bytes:
        return _encode({"t": "report-rsp", "report": self.report, "certs": dict(self.certs)})

    @classmethod
    def from_cbor(cls, data: bytes) -> ReportResponse:
        m = _decode(data, "report response", {"report", "certs"})
        report, certs = m["report"], m["certs"]
        if m["t"] != "report-rsp" or not isinstance(report, bytes) or not isinstance(certs, dict):
            raise ProtocolError("malformed report response from the sim PSP")
        if not all(isinstance(k, str) and isinstance(v, bytes) for k, v in certs.items()):
            raise ProtocolError("sim PSP certificate table must map names to bytes")
        return cls(report=report, certs=tuple(sorted(certs.items())))


def error_response(detail: str) -> bytes:
    return _encode({"t": "error", "detail": detail})
