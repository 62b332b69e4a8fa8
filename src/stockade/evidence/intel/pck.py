"""Intel PCK certificates: the SGX extension and the strict certificate
envelope check.

Source: Intel "SGX PCK Certificate and Certificate Revocation List Profile
Specification", section "SGX Extensions" (OID 1.2.840.113741.1.13.1):
a SEQUENCE of (OID, value) pairs: PPID .1 (OCTET STRING 16), TCB .2 (a
SEQUENCE of 16 component SVNs .2.1-.2.16, PCESVN .2.17 and CPUSVN .2.18),
PCE-ID .3 (OCTET STRING 2), FMSPC .4 (OCTET STRING 6), SGX Type .5
(ENUMERATED: 0 Standard, 1 Scalable, 2 Scalable with Integrity), and for
Platform CA issued certificates PlatformInstanceID .6 (OCTET STRING 16) and
Configuration .7 (dynamicPlatform .7.1, cachedKeys .7.2, smtEnabled .7.3,
BOOLEANs). pyca/cryptography exposes the extension as raw bytes; the reader
below decodes exactly these shapes (definite lengths, minimal integers, no
unknown or duplicate OIDs) and rejects everything else.

Every Intel SGX certificate (root, PCK CAs, PCK, TCB Signing) is signed with
ecdsa-with-SHA256; :func:`check_envelope` requires that exact algorithm in
both places it appears and nothing else outside the signed TBSCertificate,
so a changed byte anywhere in a certificate either fails to parse, changes
the signed bytes, or changes the signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from stockade.errors import MalformedEvidence
from stockade.wire.der import elements, only, tlv, unsigned
from stockade.wire.der import oid as read_oid

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_ARC = "1.2.840.113741.1.13.1"

_SEQUENCE, _INTEGER, _OCTETS, _OID, _ENUM, _BOOL, _BITS = 0x30, 0x02, 0x04, 0x06, 0x0A, 0x01, 0x03
_ECDSA_SHA256_ALGID = bytes.fromhex("300a06082a8648ce3d040302")


def _uint(tag_value: tuple[int, bytes], tag: int, what: str, limit: int) -> int:
    got, body = tag_value
    if got != tag or not body:
        raise MalformedEvidence(f"{what}: expected DER tag 0x{tag:02x}")
    value = unsigned(body, what)
    if value > limit:
        raise MalformedEvidence(f"{what}: {value} is larger than {limit}")
    return value


def _octets(tag_value: tuple[int, bytes], size: int, what: str) -> bytes:
    got, body = tag_value
    if got != _OCTETS or len(body) != size:
        raise MalformedEvidence(f"{what}: expected an OCTET STRING of {size} bytes")
    return body


def _bool(tag_value: tuple[int, bytes], what: str) -> bool:
    got, body = tag_value
    if got != _BOOL or body not in (b"\x00", b"\xff"):
        raise MalformedEvidence(f"{what}: expected a DER BOOLEAN")
    return body == b"\xff"


def _pairs(data: bytes, prefix: str, what: str) -> dict[str, tuple[int, bytes]]:
    """A SEQUENCE OF SEQUENCE {OID, value} as {sub-arc: (tag, value)}, every
    OID under ``prefix`` and none twice."""
    out: dict[str, tuple[int, bytes]] = {}
    for tag, item in elements(data, what):
        if tag != _SEQUENCE:
            raise MalformedEvidence(f"{what}: expected a SEQUENCE")
        parts = elements(item, what)
        if len(parts) != 2 or parts[0][0] != _OID:
            raise MalformedEvidence(f"{what}: expected (OID, value)")
        oid = read_oid(parts[0][1], what)
        if not oid.startswith(prefix + "."):
            raise MalformedEvidence(f"{what}: unexpected OID {oid}")
        arc = oid[len(prefix) + 1 :]
        if arc in out:
            raise MalformedEvidence(f"{what}: OID {oid} appears twice")
        out[arc] = parts[1]
    return out


@dataclass(frozen=True)
class PckExtensions:
    """The SGX extension of a PCK certificate."""

    ppid: bytes
    tcb_components: tuple[int, ...]  # 16 SGX TCB component SVNs, comp01 first
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int  # 0 Standard, 1 Scalable, 2 Scalable with Integrity
    platform_instance_id: bytes | None = None
    dynamic_platform: bool | None = None
    cached_keys: bool | None = None
    smt_enabled: bool | None = None


_KNOWN = {"1", "2", "3", "4", "5", "6", "7"}
_REQUIRED = {"1", "2", "3", "4", "5"}


def parse_sgx_extension(value: bytes) -> PckExtensions:
    what = "PCK SGX extension"
    items = _pairs(only(value, _SEQUENCE, what), _ARC, what)
    if not set(items) <= _KNOWN or not set(items) >= _REQUIRED:
        raise MalformedEvidence(f"{what}: has fields {sorted(items)} (expected 1-5, optionally 6 and 7)")
    tag, tcb_raw = items["2"]
    if tag != _SEQUENCE:
        raise MalformedEvidence(f"{what}: TCB is not a SEQUENCE")
    tcb = _pairs(tcb_raw, f"{_ARC}.2", f"{what} TCB")
    if set(tcb) != {str(i) for i in range(1, 19)}:
        raise MalformedEvidence(f"{what} TCB: has fields {sorted(tcb, key=int)} (expected 1-18)")
    comps = tuple(_uint(tcb[str(i)], _INTEGER, f"{what} TCB comp{i:02d}", 0xFF) for i in range(1, 17))
    sgx_type = _uint(items["5"], _ENUM, f"{what} SGX type", 2)
    instance = _octets(items["6"], 16, f"{what} platform instance ID") if "6" in items else None
    config: dict[str, bool] = {}
    if "7" in items:
        tag, conf_raw = items["7"]
        if tag != _SEQUENCE:
            raise MalformedEvidence(f"{what}: configuration is not a SEQUENCE")
        conf = _pairs(conf_raw, f"{_ARC}.7", f"{what} configuration")
        if not set(conf) <= {"1", "2", "3"}:
            raise MalformedEvidence(f"{what} configuration: unexpected fields {sorted(conf)}")
        names = {"1": "dynamic_platform", "2": "cached_keys", "3": "smt_enabled"}
        config = {names[k]: _bool(v, f"{what} {names[k]}") for k, v in conf.items()}
    return PckExtensions(
        ppid=_octets(items["1"], 16, f"{what} PPID"),
        tcb_components=comps,
        pce_svn=_uint(tcb["17"], _INTEGER, f"{what} PCESVN", 0xFFFF),
        cpu_svn=_octets(tcb["18"], 16, f"{what} CPUSVN"),
        pce_id=_octets(items["3"], 2, f"{what} PCE-ID"),
        fmspc=_octets(items["4"], 6, f"{what} FMSPC"),
        sgx_type=sgx_type,
        platform_instance_id=instance,
        dynamic_platform=config.get("dynamic_platform"),
        cached_keys=config.get("cached_keys"),
        smt_enabled=config.get("smt_enabled"),
    )


def read_sgx_extension(cert: x509.Certificate) -> PckExtensions:
    try:
        ext = cert.extensions.get_extension_for_oid(SGX_EXTENSION_OID)
    except x509.ExtensionNotFound:
        raise MalformedEvidence("PCK certificate lacks the SGX extension") from None
    if not isinstance(ext.value, x509.UnrecognizedExtension):
        raise MalformedEvidence("PCK certificate SGX extension has an unexpected type")
    return parse_sgx_extension(ext.value.value)


def check_envelope(der: bytes, what: str) -> None:
    """Certificate ::= SEQUENCE { tbs, signatureAlgorithm, signatureValue }
    with both algorithm identifiers exactly ecdsa-with-SHA256 (no
    parameters) and a BIT STRING with no unused bits."""
    tag, cert, end = tlv(der, 0, what)
    if tag != _SEQUENCE or end != len(der):
        raise MalformedEvidence(f"{what}: not a single DER SEQUENCE")
    tag, tbs, pos = tlv(cert, 0, what)
    if tag != _SEQUENCE:
        raise MalformedEvidence(f"{what}: TBSCertificate is not a SEQUENCE")
    if cert[pos : pos + len(_ECDSA_SHA256_ALGID)] != _ECDSA_SHA256_ALGID:
        raise MalformedEvidence(f"{what}: not signed with ecdsa-with-SHA256")
    tag, bits, end = tlv(cert, pos + len(_ECDSA_SHA256_ALGID), what)
    if tag != _BITS or end != len(cert) or not bits or bits[0] != 0:
        raise MalformedEvidence(f"{what}: malformed signature BIT STRING")
    # Inside the TBS: [0] version, serial, then the signature AlgorithmIdentifier.
    tag, _, p = tlv(tbs, 0, what)
    if tag != 0xA0:
        raise MalformedEvidence(f"{what}: not an X.509 v3 certificate")
    tag, _, p = tlv(tbs, p, what)
    if tbs[p : p + len(_ECDSA_SHA256_ALGID)] != _ECDSA_SHA256_ALGID:
        raise MalformedEvidence(f"{what}: TBS signature algorithm is not ecdsa-with-SHA256")
