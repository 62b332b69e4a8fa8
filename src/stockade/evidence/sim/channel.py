"""Messages between a Keep and the sim PSP (the sim's /dev/sev-guest).

A guest asks its PSP for a report with MSG_REPORT_REQ (64 bytes of report
data, a VMPL) and gets MSG_REPORT_RSP plus, for an extended request, the
certificate table. For sealing (the Keep's compile cache) it asks for a
derived key with MSG_KEY_REQ and gets MSG_KEY_RSP (SEV-SNP Firmware ABI
spec, pub. 56860, "MSG_KEY_REQ" / "MSG_KEY_RSP": ROOT_KEY_SELECT,
GUEST_FIELD_SELECT, VMPL, GUEST_SVN, TCB_VERSION in; a 32-byte key out).
These are the CBOR equivalents (docs/protocol.cddl),
framed like every stockade stream (wire.framing) and decoded with the same
strict profile as the deploy protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from stockade.errors import ProtocolError
from stockade.evidence.snp.abi import DERIVED_KEY_SIZE, FIELD_ALL, ROOT_VCEK
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


@dataclass(frozen=True)
class KeyRequest:
    """MSG_KEY_REQ: derive a key from the root key and the selected fields."""

    field_select: int
    tcb_version: int
    root_key_select: int = ROOT_VCEK
    vmpl: int = 0
    guest_svn: int = 0

    def to_cbor(self) -> bytes:
        return _encode(
            {
                "t": "key-req",
                "root_key_select": self.root_key_select,
                "field_select": self.field_select,
                "vmpl": self.vmpl,
                "guest_svn": self.guest_svn,
                "tcb_version": self.tcb_version,
            }
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> KeyRequest:
        m = _decode(
            data, "key request", {"root_key_select", "field_select", "vmpl", "guest_svn", "tcb_version"}
        )
        if m["t"] != "key-req":
            raise ProtocolError("malformed key request")
        limits = {
            "root_key_select": 1,
            "field_select": FIELD_ALL,
            "vmpl": 3,
            "guest_svn": 0xFFFFFFFF,
            "tcb_version": 0xFFFFFFFFFFFFFFFF,
        }
        for name, top in limits.items():
            value = m[name]
            if type(value) is not int or not 0 <= value <= top:
                raise ProtocolError(f"key request {name} must be an integer 0..{top:#x}")
        return cls(
            field_select=m["field_select"],
            tcb_version=m["tcb_version"],
            root_key_select=m["root_key_select"],
            vmpl=m["vmpl"],
            guest_svn=m["guest_svn"],
        )


@dataclass(frozen=True)
class KeyResponse:
    """MSG_KEY_RSP: the 32-byte derived key."""

    key: bytes

    def to_cbor(self) -> bytes:
        return _encode({"t": "key-rsp", "key": self.key})

    @classmethod
    def from_cbor(cls, data: bytes) -> KeyResponse:
        m = _decode(data, "key response", {"key"})
        key = m["key"]
        if m["t"] != "key-rsp" or not isinstance(key, bytes) or len(key) != DERIVED_KEY_SIZE:
            raise ProtocolError(f"key response needs a {DERIVED_KEY_SIZE}-byte key")
        return cls(key=key)


def request_type(data: bytes) -> str:
    """The ``t`` of a request frame (its fields are checked by its decoder)."""
    m = decode_map(data, "sim PSP request")
    t = m.get("t")
    return t if isinstance(t, str) else ""
