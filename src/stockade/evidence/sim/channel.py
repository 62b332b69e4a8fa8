"""Messages between a Keep and the sim PSP (the sim's /dev/sev-guest).

A guest asks its PSP for a report with MSG_REPORT_REQ (64 bytes of report
data, a VMPL) and gets MSG_REPORT_RSP plus, for an extended request, the
certificate table. These are the CBOR equivalents, framed like every stockade
stream (wire.framing).
"""

from __future__ import annotations

from dataclasses import dataclass

import cbor2

from stockade.errors import ProtocolError
from stockade.wire.messages import VERSION, decode_map


@dataclass(frozen=True)
class ReportRequest:
    report_data: bytes
    vmpl: int = 0

    def to_cbor(self) -> bytes:
        return bytes(
            cbor2.dumps(
                {
                    "v": VERSION,
                    "t": "report-req",
                    "report_data": self.report_data,
                    "vmpl": self.vmpl,
                }
            )
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> ReportRequest:
        m = decode_map(data, "report request")
        rd, vmpl = m.get("report_data"), m.get("vmpl")
        if m.get("t") != "report-req" or not isinstance(rd, bytes) or len(rd) != 64:
            raise ProtocolError("report request needs 64 bytes of report_data")
        if not isinstance(vmpl, int) or not 0 <= vmpl <= 3:
            raise ProtocolError("report request VMPL must be 0..3")
        return cls(report_data=rd, vmpl=vmpl)


@dataclass(frozen=True)
class ReportResponse:
    report: bytes
    certs: tuple[tuple[str, bytes], ...]

    def to_cbor(self) -> bytes:
        return bytes(
            cbor2.dumps({"v": VERSION, "t": "report-rsp", "report": self.report, "certs": dict(self.certs)})
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> ReportResponse:
        m = decode_map(data, "report response")
        if m.get("t") == "error":
            raise ProtocolError(f"sim PSP refused: {m.get('detail')}")
        report, certs = m.get("report"), m.get("certs")
        if m.get("t") != "report-rsp" or not isinstance(report, bytes) or not isinstance(certs, dict):
            raise ProtocolError("malformed report response from the sim PSP")
        return cls(report=report, certs=tuple(sorted(certs.items())))


def error_response(detail: str) -> bytes:
    return bytes(cbor2.dumps({"v": VERSION, "t": "error", "detail": detail}))
