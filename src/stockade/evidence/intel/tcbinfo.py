"""Intel TCB Info (v3) and Enclave Identity (v2) as served by the PCS.

Sources: Intel "Provisioning Certification Service for ECDSA Attestation"
API v4 ("TCB Info V3", "Enclave Identity V2" data models), and Intel's QVL
(``AttestationParsers``: ``TcbInfo``, ``TcbLevel``, ``EnclaveIdentityV2``,
``TdxModule``) for what it accepts.

A PCS body is ``{"tcbInfo": {...}, "signature": "<hex r||s>"}`` (or
``"enclaveIdentity"``). The signature (ECDSA P-256 / SHA-256 by the Intel
SGX TCB Signing key) covers the exact bytes of the inner object as they
appear in the body, so :func:`split_signed_body` returns those bytes by
position, never by re-serialising the parsed JSON (Intel's QVL
re-serialises with rapidjson, which only works for PCS's compact output).

Parsing is strict about what verification uses (types, lengths, hex,
dates, statuses, 16 components, duplicate keys, duplicate TCB levels) and
tolerant of additional fields, which Intel signs and may add.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stockade.errors import MalformedEvidence
from stockade.evidence.intel.tcbstatus import (
    ENCLAVE_STATUSES,
    MODULE_STATUSES,
    PLATFORM_STATUSES,
    TcbStatus,
)

_WS = re.compile(r"[ \t\n\r]*")


class _Strict(json.JSONDecoder):
    def __init__(self) -> None:
        super().__init__(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise MalformedEvidence(f"JSON object has the key {key!r} twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise MalformedEvidence(f"JSON constant {name} is not allowed")


_DECODER = _Strict()


@dataclass(frozen=True)
class SignedBody:
    name: str  # "tcbInfo" or "enclaveIdentity"
    signed_bytes: bytes  # the inner object's exact bytes
    value: dict[str, Any]  # the inner object, parsed
    signature: bytes  # 64 bytes r||s


def split_signed_body(body: bytes, name: str, what: str) -> SignedBody:
    """Split a PCS body ``{"<name>": {...}, "signature": "..."}`` into the
    exact signed bytes of the inner object, its parsed value and the
    signature. Whitespace is allowed where JSON allows it; nothing else."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedEvidence(f"{what}: not ASCII JSON") from None
    members: dict[str, tuple[Any, int, int]] = {}
    try:
        pos = _WS.match(text, 0).end()  # type: ignore[union-attr]
        if text[pos : pos + 1] != "{":
            raise MalformedEvidence(f"{what}: not a JSON object")
        pos += 1
        while True:
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            if text[pos : pos + 1] != '"':
                raise MalformedEvidence(f"{what}: expected a member name at {pos}")
            key, pos = json.decoder.scanstring(text, pos + 1, True)  # type: ignore[attr-defined]
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            if text[pos : pos + 1] != ":":
                raise MalformedEvidence(f"{what}: expected ':' at {pos}")
            pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
            value, end = _DECODER.raw_decode(text, pos)
            if key in members:
                raise MalformedEvidence(f"{what}: key {key!r} appears twice")
            members[key] = (value, pos, end)
            pos = _WS.match(text, end).end()  # type: ignore[union-attr]
            if text[pos : pos + 1] == ",":
                pos += 1
                continue
            if text[pos : pos + 1] == "}":
                pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
                break
            raise MalformedEvidence(f"{what}: expected ',' or '}}' at {pos}")
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        raise MalformedEvidence(f"{what}: invalid JSON ({exc})") from None
    if pos != len(text):
        raise MalformedEvidence(f"{what}: data after the JSON object")
    if set(members) != {name, "signature"}:
        raise MalformedEvidence(f"{what}: has keys {sorted(members)}, expected {name!r} and 'signature'")
    inner, start, end = members[name]
    if not isinstance(inner, dict):
        raise MalformedEvidence(f"{what}: {name} is not an object")
    sig_hex = members["signature"][0]
    return SignedBody(
        name=name,
        signed_bytes=body[start:end],
        value=inner,
        signature=_hex(sig_hex, 64, f"{what} signature"),
    )


# --- typed field readers ---------------------------------------------------------


def _get(obj: dict[str, Any], key: str, what: str) -> Any:
    if key not in obj:
        raise MalformedEvidence(f"{what}: missing {key!r}")
    return obj[key]


def _int(value: Any, what: str, limit: int) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise MalformedEvidence(f"{what}: expected an integer 0..{limit}, got {value!r}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise MalformedEvidence(f"{what}: expected a string")
    return value


_HEX = re.compile(r"[0-9a-fA-F]*")


def _hex(value: Any, size: int, what: str) -> bytes:
    text = _str(value, what)
    if len(text) != 2 * size or not _HEX.fullmatch(text):
        raise MalformedEvidence(f"{what}: expected {size} bytes of hex")
    return bytes.fromhex(text)


def _date(value: Any, what: str) -> datetime:
    text = _str(value, what)
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", text):
        raise MalformedEvidence(f"{what}: expected an ISO 8601 UTC time, got {text!r}")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise MalformedEvidence(f"{what}: invalid date {text!r}") from None


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedEvidence(f"{what}: expected a list")
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedEvidence(f"{what}: expected an object")
    return value


def _status(value: Any, allowed: frozenset[TcbStatus], what: str) -> TcbStatus:
    text = _str(value, what)
    for status in allowed:
        if status.value == text:
            return status
    raise MalformedEvidence(f"{what}: unknown TCB status {text!r}")


def _advisories(obj: dict[str, Any], what: str) -> tuple[str, ...]:
    if "advisoryIDs" not in obj:
        return ()
    return tuple(_str(a, f"{what} advisoryIDs") for a in _list(obj["advisoryIDs"], f"{what} advisoryIDs"))


def _components(value: Any, what: str) -> tuple[int, ...]:
    items = _list(value, what)
    if len(items) != 16:
        raise MalformedEvidence(f"{what}: expected 16 components, got {len(items)}")
    return tuple(_int(_get(_obj(c, what), "svn", what), f"{what} svn", 0xFF) for c in items)


# --- TCB Info ---------------------------------------------------------------------


@dataclass(frozen=True)
class TcbLevel:
    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...] | None
    tcb_date: datetime
    status: TcbStatus
    advisory_ids: tuple[str, ...]

    def sort_key(self) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
        """Intel QVL's order (``TcbLevel::operator>``): SGX components
        lexicographically, then PCESVN, then (TDX) the TDX components."""
        return (self.sgx_components, self.pce_svn, self.tdx_components or ())


@dataclass(frozen=True)
class ModuleTcbLevel:
    isv_svn: int
    tcb_date: datetime
    status: TcbStatus
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModuleIdentity:
    id: str  # "TDX_01", ...; for the tdxModule entry: ""
    mr_signer: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[ModuleTcbLevel, ...]  # highest ISVSVN first


@dataclass(frozen=True)
class TcbInfo:
    id: str  # "SGX" or "TDX"
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModuleIdentity | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...] | None
    tcb_levels: tuple[TcbLevel, ...]  # sorted the way Intel's QVL sorts them, highest first


def _tdx_module(obj: dict[str, Any], what: str, with_levels: bool) -> TdxModuleIdentity:
    levels: list[ModuleTcbLevel] = []
    if with_levels:
        for raw in _list(_get(obj, "tcbLevels", what), f"{what} tcbLevels"):
            level = _obj(raw, f"{what} tcbLevel")
            tcb = _obj(_get(level, "tcb", what), f"{what} tcb")
            levels.append(
                ModuleTcbLevel(
                    isv_svn=_int(_get(tcb, "isvsvn", what), f"{what} isvsvn", 0xFF),
                    tcb_date=_date(_get(level, "tcbDate", what), f"{what} tcbDate"),
                    status=_status(_get(level, "tcbStatus", what), MODULE_STATUSES, f"{what} tcbStatus"),
                    advisory_ids=_advisories(level, what),
                )
            )
        if not levels:
            raise MalformedEvidence(f"{what}: no tcbLevels")
        if len({lv.isv_svn for lv in levels}) != len(levels):
            raise MalformedEvidence(f"{what}: duplicate TCB levels")
    return TdxModuleIdentity(
        id=_str(_get(obj, "id", what), f"{what} id") if with_levels else "",
        mr_signer=_hex(_get(obj, "mrsigner", what), 48, f"{what} mrsigner"),
        attributes=_hex(_get(obj, "attributes", what), 8, f"{what} attributes"),
        attributes_mask=_hex(_get(obj, "attributesMask", what), 8, f"{what} attributesMask"),
        tcb_levels=tuple(sorted(levels, key=lambda lv: lv.isv_svn, reverse=True)),
    )


def parse_tcb_info(obj: dict[str, Any]) -> TcbInfo:
    what = "TCB info"
    version = _int(_get(obj, "version", what), f"{what} version", 0xFFFF)
    if version != 3:
        raise MalformedEvidence(f"{what}: unsupported version {version} (supported: 3)")
    tcb_id = _str(_get(obj, "id", what), f"{what} id")
    if tcb_id not in ("SGX", "TDX"):
        raise MalformedEvidence(f"{what}: unknown id {tcb_id!r} (known: SGX, TDX)")
    tdx = tcb_id == "TDX"
    tcb_type = _int(_get(obj, "tcbType", what), f"{what} tcbType", 0xFFFF)
    if tcb_type != 0:
        raise MalformedEvidence(f"{what}: unsupported tcbType {tcb_type} (supported: 0)")
    module = identities = None
    if tdx:
        module = _tdx_module(_obj(_get(obj, "tdxModule", what), what), f"{what} tdxModule", False)
        if "tdxModuleIdentities" in obj:
            raw_ids = _list(obj["tdxModuleIdentities"], f"{what} tdxModuleIdentities")
            identities = tuple(_tdx_module(_obj(i, what), f"{what} tdxModuleIdentity", True) for i in raw_ids)
            if not identities:
                raise MalformedEvidence(f"{what}: empty tdxModuleIdentities")
    elif "tdxModule" in obj or "tdxModuleIdentities" in obj:
        raise MalformedEvidence(f"{what}: SGX TCB info with TDX module fields")
    levels: list[TcbLevel] = []
    for raw in _list(_get(obj, "tcbLevels", what), f"{what} tcbLevels"):
        level = _obj(raw, f"{what} tcbLevel")
        tcb = _obj(_get(level, "tcb", what), f"{what} tcb")
        levels.append(
            TcbLevel(
                sgx_components=_components(_get(tcb, "sgxtcbcomponents", what), f"{what} sgxtcbcomponents"),
                pce_svn=_int(_get(tcb, "pcesvn", what), f"{what} pcesvn", 0xFFFF),
                tdx_components=(
                    _components(_get(tcb, "tdxtcbcomponents", what), f"{what} tdxtcbcomponents")
                    if tdx
                    else None
                ),
                tcb_date=_date(_get(level, "tcbDate", what), f"{what} tcbDate"),
                status=_status(_get(level, "tcbStatus", what), PLATFORM_STATUSES, f"{what} tcbStatus"),
                advisory_ids=_advisories(level, what),
            )
        )
    if not levels:
        raise MalformedEvidence(f"{what}: no tcbLevels")
    if len({lv.sort_key() for lv in levels}) != len(levels):
        raise MalformedEvidence(f"{what}: duplicate TCB levels")
    return TcbInfo(
        id=tcb_id,
        version=version,
        issue_date=_date(_get(obj, "issueDate", what), f"{what} issueDate"),
        next_update=_date(_get(obj, "nextUpdate", what), f"{what} nextUpdate"),
        fmspc=_hex(_get(obj, "fmspc", what), 6, f"{what} fmspc"),
        pce_id=_hex(_get(obj, "pceId", what), 2, f"{what} pceId"),
        tcb_type=tcb_type,
        tcb_evaluation_data_number=_int(
            _get(obj, "tcbEvaluationDataNumber", what), f"{what} tcbEvaluationDataNumber", 0xFFFFFFFF
        ),
        tdx_module=module,
        tdx_module_identities=identities,
        tcb_levels=tuple(sorted(levels, key=TcbLevel.sort_key, reverse=True)),
    )


# --- Enclave Identity ---------------------------------------------------------------


@dataclass(frozen=True)
class EnclaveTcbLevel:
    isv_svn: int
    tcb_date: datetime
    status: TcbStatus
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class EnclaveIdentity:
    id: str  # "QE", "TD_QE" (also "QVE" exists; rejected by the verifier)
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    misc_select: bytes  # 4 bytes, report byte order
    misc_select_mask: bytes
    attributes: bytes  # 16 bytes
    attributes_mask: bytes
    mr_signer: bytes
    isv_prod_id: int
    tcb_levels: tuple[EnclaveTcbLevel, ...]  # highest ISVSVN first


def parse_enclave_identity(obj: dict[str, Any]) -> EnclaveIdentity:
    what = "QE identity"
    version = _int(_get(obj, "version", what), f"{what} version", 0xFFFF)
    if version != 2:
        raise MalformedEvidence(f"{what}: unsupported version {version} (supported: 2)")
    levels: list[EnclaveTcbLevel] = []
    for raw in _list(_get(obj, "tcbLevels", what), f"{what} tcbLevels"):
        level = _obj(raw, f"{what} tcbLevel")
        tcb = _obj(_get(level, "tcb", what), f"{what} tcb")
        levels.append(
            EnclaveTcbLevel(
                isv_svn=_int(_get(tcb, "isvsvn", what), f"{what} isvsvn", 0xFFFF),
                tcb_date=_date(_get(level, "tcbDate", what), f"{what} tcbDate"),
                status=_status(_get(level, "tcbStatus", what), ENCLAVE_STATUSES, f"{what} tcbStatus"),
                advisory_ids=_advisories(level, what),
            )
        )
    if not levels:
        raise MalformedEvidence(f"{what}: no tcbLevels")
    if len({lv.isv_svn for lv in levels}) != len(levels):
        raise MalformedEvidence(f"{what}: duplicate TCB levels")
    return EnclaveIdentity(
        id=_str(_get(obj, "id", what), f"{what} id"),
        version=version,
        issue_date=_date(_get(obj, "issueDate", what), f"{what} issueDate"),
        next_update=_date(_get(obj, "nextUpdate", what), f"{what} nextUpdate"),
        tcb_evaluation_data_number=_int(
            _get(obj, "tcbEvaluationDataNumber", what), f"{what} tcbEvaluationDataNumber", 0xFFFFFFFF
        ),
        misc_select=_hex(_get(obj, "miscselect", what), 4, f"{what} miscselect"),
        misc_select_mask=_hex(_get(obj, "miscselectMask", what), 4, f"{what} miscselectMask"),
        attributes=_hex(_get(obj, "attributes", what), 16, f"{what} attributes"),
        attributes_mask=_hex(_get(obj, "attributesMask", what), 16, f"{what} attributesMask"),
        mr_signer=_hex(_get(obj, "mrsigner", what), 32, f"{what} mrsigner"),
        isv_prod_id=_int(_get(obj, "isvprodid", what), f"{what} isvprodid", 0xFFFF),
        tcb_levels=tuple(sorted(levels, key=lambda lv: lv.isv_svn, reverse=True)),
    )
