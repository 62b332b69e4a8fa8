"""AMD VCEK/VLEK certificate extensions (OIDs under 1.3.6.1.4.1.3704.1).

Source: AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
Interface Specification" (pub. 57230), section "VCEK Certificate Extensions",
and the VLEK addendum: structVersion .1, productName .2, blSPL .3.1, teeSPL
.3.2, snpSPL .3.3, spl_4..spl_7 .3.4-.3.7, ucodeSPL .3.8, fmcSPL .3.9
(Turin), hwID .4 (64 raw bytes; 8 on Turin), csp_id .5 (VLEK only).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography import x509

from stockade.errors import MalformedEvidence
from stockade.evidence.pki import CACHE_SIZE, CertKey
from stockade.evidence.snp.abi import Product
from stockade.wire import der as _der

AMD = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = x509.ObjectIdentifier(f"{AMD}.1")
OID_PRODUCT_NAME = x509.ObjectIdentifier(f"{AMD}.2")
OID_BL_SPL = x509.ObjectIdentifier(f"{AMD}.3.1")
OID_TEE_SPL = x509.ObjectIdentifier(f"{AMD}.3.2")
OID_SNP_SPL = x509.ObjectIdentifier(f"{AMD}.3.3")
OID_UCODE_SPL = x509.ObjectIdentifier(f"{AMD}.3.8")
OID_FMC_SPL = x509.ObjectIdentifier(f"{AMD}.3.9")
OID_HWID = x509.ObjectIdentifier(f"{AMD}.4")
OID_CSP_ID = x509.ObjectIdentifier(f"{AMD}.5")

TCB_OIDS = {
    "bootloader": OID_BL_SPL,
    "tee": OID_TEE_SPL,
    "snp": OID_SNP_SPL,
    "microcode": OID_UCODE_SPL,
}


@dataclass(frozen=True)
class EndorsementExtensions:
    product_name: str  # e.g. "Milan-B0"
    tcb: dict[str, int]
    hwid: bytes | None  # VCEK only
    csp_id: str | None  # VLEK only

    @property
    def product(self) -> Product:
        base = self.product_name.split("-", 1)[0]
        for p in Product:
            if p.value == base:
                return p
        raise MalformedEvidence(f"endorsement certificate names unknown product {self.product_name!r}")


def _raw(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise MalformedEvidence(f"extension {oid.dotted_string} has an unexpected type")
    return value.value


def read_extensions(cert: x509.Certificate) -> EndorsementExtensions:
    """The AMD extensions of ``cert``. Memoized per certificate object (a
    verifier sees the same VCEK again and again); each call returns its own
    copy, so a caller that changes ``tcb`` changes nothing for the next."""
    ext = _read_extensions_cached(CertKey(cert))
    return EndorsementExtensions(
        product_name=ext.product_name, tcb=dict(ext.tcb), hwid=ext.hwid, csp_id=ext.csp_id
    )


@functools.lru_cache(maxsize=CACHE_SIZE)
def _read_extensions_cached(key: CertKey) -> EndorsementExtensions:
    return _read_extensions(key.cert)


def _read_extensions(cert: x509.Certificate) -> EndorsementExtensions:
    try:
        exts = cert.extensions
    except ValueError as exc:
        raise MalformedEvidence(f"endorsement certificate extensions do not parse: {exc}") from None
    del exts
    name_raw = _raw(cert, OID_PRODUCT_NAME)
    if name_raw is None:
        raise MalformedEvidence("endorsement certificate lacks the productName extension")
    product_name = _der.read_ia5(name_raw, "productName")
    tcb: dict[str, int] = {}
    oids = dict(TCB_OIDS)
    if product_name.startswith(Product.TURIN.value):
        oids["fmc"] = OID_FMC_SPL
    for name, oid in oids.items():
        raw = _raw(cert, oid)
        if raw is None:
            raise MalformedEvidence(f"endorsement certificate lacks the {name} SPL extension")
        value = _der.read_uint(raw, f"{name} SPL")
        if value > 0xFF:
            raise MalformedEvidence(f"{name} SPL {value} does not fit in a byte")
        tcb[name] = value
    hwid = _raw(cert, OID_HWID)
    csp = _raw(cert, OID_CSP_ID)
    return EndorsementExtensions(
        product_name=product_name,
        tcb=tcb,
        hwid=hwid,
        csp_id=_der.read_ia5(csp, "csp_id") if csp is not None else None,
    )
