"""SEV-SNP collateral from AMD's Key Distribution Service: the only I/O of the
SNP verifier's package.

Verification (verify.py) never calls anything here: a caller fetches (or
reads from a cache, or takes from the evidence's certificate table) the
VCEK, the ASK/ASVK+ARK chain and the CRL, then hands the bytes to
``verify_report``. Whatever comes from the network is untrusted: the
verifier checks every signature against the roots shipped in the package.

KDS interface (AMD pub. 57230 "VCEK Certificate and KDS Interface
Specification", chapter 4; base https://kdsintf.amd.com):

* ``GET /vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..``
  the VCEK (DER) of one chip at one TCB; ``hwid`` is CHIP_ID in hex (64
  bytes; on Turin the first 8 bytes only, with ``&fmcSPL=..`` added); the
  SPLs are REPORTED_TCB's components in decimal.
* ``GET /vcek/v1/{product}/cert_chain`` ASK then ARK (PEM);
  ``/vlek/v1/{product}/cert_chain`` ASVK then ARK.
* ``GET /vcek/v1/{product}/crl`` and ``/vlek/v1/{product}/crl``: the CRL
  (DER) signed by the ARK; these are the CRL distribution points named in
  AMD's ASK and ASVK certificates.

VLEKs are not served to the public (the cloud provider holds them); a
VLEK-signed report carries its VLEK in the certificate table
(certtable.py, re-exported here).

Fetching: httpx, per-request timeout plus an overall deadline per attempt,
bounded retries on 429, 5xx, timeouts and connection errors, honouring
Retry-After up to a cap (a server asking for a longer wait fails the fetch
at once rather than burning the budget), no retry on other statuses. Every
failure is CollateralUnavailable naming the URL and what happened. A 200
whose body is not what the endpoint serves is CollateralUnavailable too (the
source is broken; the evidence is not at fault). The optional on-disk cache
(evidence/collateral.py, the one cache of every platform) is keyed by URL; VCEKs and chains are kept until evicted, a cached CRL is
refreshed once ``now`` is past its nextUpdate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from stockade.errors import CollateralUnavailable, MalformedEvidence
from stockade.evidence.collateral import RETRYABLE_STATUS, CollateralCache, HttpFetcher
from stockade.evidence.pki import der_of, load_crl, load_der, load_pem_chain
from stockade.evidence.snp.abi import AttestationReport, Product, SigningKey, TcbVersion
from stockade.evidence.snp.certtable import (
    ARK_GUID,
    ASK_GUID,
    VCEK_GUID,
    VLEK_GUID,
    CertTable,
    build_cert_table,
    parse_cert_table,
)
from stockade.evidence.snp.verify import HWID_LENGTH

if TYPE_CHECKING:
    import httpx

DEFAULT_KDS = "https://kdsintf.amd.com"


# --- URLs --------------------------------------------------------------------------------


def _base(base_url: str) -> str:
    return base_url.rstrip("/")


def _signer_path(signer: SigningKey) -> str:
    if signer is SigningKey.VCEK:
        return "vcek"
    if signer is SigningKey.VLEK:
        return "vlek"
    raise ValueError(f"no KDS endpoints for signer {signer.name}")


def cert_chain_url(
    product: Product, signer: SigningKey = SigningKey.VCEK, *, base_url: str = DEFAULT_KDS
) -> str:
    """ASK+ARK (VCEK) or ASVK+ARK (VLEK) of a product, PEM."""
    return f"{_base(base_url)}/{_signer_path(signer)}/v1/{product.value}/cert_chain"


def crl_url(product: Product, signer: SigningKey = SigningKey.VCEK, *, base_url: str = DEFAULT_KDS) -> str:
    """The ARK-signed CRL of a product, DER."""
    return f"{_base(base_url)}/{_signer_path(signer)}/v1/{product.value}/crl"


def vcek_url(product: Product, hwid: bytes, tcb: TcbVersion, *, base_url: str = DEFAULT_KDS) -> str:
    """The VCEK of chip ``hwid`` (already cut to the product's hwID length)
    at TCB ``tcb``."""
    size = HWID_LENGTH[product]
    if len(hwid) != size:
        raise ValueError(f"a {product.value} hwID is {size} bytes, got {len(hwid)}")
    if not tcb.reserved_ok(product):
        raise MalformedEvidence(f"TCB {tcb.hex()} has non-zero reserved bytes for {product.value}")
    parts = tcb.components(product)
    query = (
        f"blSPL={parts['bootloader']}&teeSPL={parts['tee']}"
        f"&snpSPL={parts['snp']}&ucodeSPL={parts['microcode']}"
    )
    if product is Product.TURIN:
        query += f"&fmcSPL={parts['fmc']}"
    return f"{_base(base_url)}/vcek/v1/{product.value}/{hwid.hex()}?{query}"


def vcek_url_for_report(
    report: AttestationReport, product_hint: Product | None = None, *, base_url: str = DEFAULT_KDS
) -> str:
    """The VCEK URL for a report: its product (CPUID, or ``product_hint`` for
    a v2 report), CHIP_ID and REPORTED_TCB."""
    if report.signing_key is not SigningKey.VCEK:
        raise CollateralUnavailable(
            f"the report is signed by a {report.signing_key.name}, not a VCEK; KDS serves VCEKs only "
            "(a VLEK comes with the evidence, in its certificate table)"
        )
    if report.mask_chip_key or not any(report.chip_id):
        raise CollateralUnavailable("the report's CHIP_ID is masked (zero); no VCEK can be looked up for it")
    product = report.product(product_hint)
    size = HWID_LENGTH[product]
    if any(report.chip_id[size:]):
        raise MalformedEvidence(f"{product.value} CHIP_ID has non-zero bytes after its {size}-byte hwID")
    return vcek_url(product, report.chip_id[:size], report.reported_tcb, base_url=base_url)


# --- cache -----------------------------------------------------------------------------------


# --- parsing what KDS serves -------------------------------------------------------------------


def _crl_next_update(der: bytes) -> datetime:
    return load_crl(der, "CRL").next_update  # pki refuses a CRL without nextUpdate


def split_cert_chain(pem: bytes, what: str = "cert_chain") -> tuple[bytes, bytes]:
    """KDS cert_chain (PEM: ASK or ASVK, then ARK) as (intermediate DER, ARK DER)."""
    certs = load_pem_chain(pem, what)
    if len(certs) != 2:
        raise MalformedEvidence(f"{what}: expected 2 certificates (intermediate, ARK), got {len(certs)}")
    return der_of(certs[0]), der_of(certs[1])


def _check_certificate(data: bytes) -> None:
    load_der(data, "certificate")


def _check_chain(data: bytes) -> None:
    split_cert_chain(data)


def _check_crl(data: bytes) -> None:
    _crl_next_update(data)


@dataclass(frozen=True)
class SnpCollateral:
    """What ``verify_report`` needs besides the report and the roots."""

    endorsement: bytes | None  # VCEK DER; None for a VLEK-signed report
    intermediate: bytes  # ASK (or ASVK) DER
    ark: bytes  # ARK DER as KDS served it (the verifier uses its own roots)
    crl: bytes | None  # DER, when asked for


# --- fetcher -------------------------------------------------------------------------------------


class KdsFetcher(HttpFetcher):
    """Fetch VCEKs, certificate chains and CRLs from a KDS (or a mirror),
    through the one HTTP fetcher (evidence/collateral.py: timeouts, bounded
    retries, Retry-After, body cap) and the one cache.

    ``timeout``: seconds per attempt (connect, each read, and the whole
    response). ``retries``: extra attempts after a retryable failure.
    ``max_retry_after``: the longest wait honoured (Retry-After, or the
    exponential backoff from ``backoff`` seconds). ``cache``: optional.
    ``sleep`` and ``now`` are injectable for tests.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_KDS,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        max_retry_after: float = 30.0,
        backoff: float = 0.5,
        cache: CollateralCache | None = None,
        client: httpx.Client | None = None,
        max_body: int = 1 << 20,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(
            timeout=timeout,
            retries=retries,
            max_retry_after=max_retry_after,
            backoff=backoff,
            client=client,
            max_body=max_body,
            sleep=sleep,
            now=now,
        )
        self.base_url = _base(base_url)
        self.cache = cache

    def __enter__(self) -> KdsFetcher:
        return self

    # --- typed collateral, through the cache ---

    def _cached(
        self, url: str, check: Callable[[bytes], None], kind: str, refresh_crl: bool = False
    ) -> bytes:
        if self.cache is not None:
            data = self.cache.get(url)
            if data is not None:
                try:
                    check(data)
                except MalformedEvidence:
                    self.cache.discard(url)  # corrupted entry: fetch again
                else:
                    if not (refresh_crl and self._now() > _crl_next_update(data)):
                        return data
        body = self.get(url)
        try:
            check(body)
        except MalformedEvidence as exc:
            raise CollateralUnavailable(f"{url}: HTTP 200 but the body is not {kind} ({exc})") from None
        if self.cache is not None:
            self.cache.put(url, body)
        return body

    def vcek(self, report: AttestationReport | bytes, product_hint: Product | None = None) -> bytes:
        """The VCEK (DER) for a VCEK-signed report."""
        if not isinstance(report, AttestationReport):
            report = AttestationReport.from_bytes(report)
        url = vcek_url_for_report(report, product_hint, base_url=self.base_url)
        return self._cached(url, _check_certificate, "a DER certificate")

    def cert_chain(self, product: Product, signer: SigningKey = SigningKey.VCEK) -> tuple[bytes, bytes]:
        """(intermediate DER, ARK DER): ASK+ARK, or ASVK+ARK for VLEK."""
        url = cert_chain_url(product, signer, base_url=self.base_url)
        pem = self._cached(url, _check_chain, "a PEM certificate chain")
        return split_cert_chain(pem)

    def crl(self, product: Product, signer: SigningKey = SigningKey.VCEK) -> bytes:
        """The ARK-signed CRL (DER); a cached one is used until its nextUpdate."""
        url = crl_url(product, signer, base_url=self.base_url)
        return self._cached(url, _check_crl, "a DER CRL", refresh_crl=True)

    def collateral(
        self, report: AttestationReport | bytes, product_hint: Product | None = None, *, with_crl: bool = True
    ) -> SnpCollateral:
        """Everything KDS has for ``report``: the VCEK (none for a VLEK-signed
        report), the chain of its signer kind and, unless ``with_crl`` is
        False, the CRL."""
        if not isinstance(report, AttestationReport):
            report = AttestationReport.from_bytes(report)
        if report.signing_key not in (SigningKey.VCEK, SigningKey.VLEK):
            raise CollateralUnavailable("the report is unsigned; there is no collateral for it")
        product = report.product(product_hint)
        endorsement = self.vcek(report, product) if report.signing_key is SigningKey.VCEK else None
        intermediate, ark = self.cert_chain(product, report.signing_key)
        crl = self.crl(product, report.signing_key) if with_crl else None
        return SnpCollateral(endorsement=endorsement, intermediate=intermediate, ark=ark, crl=crl)


__all__ = [
    "ARK_GUID",
    "ASK_GUID",
    "DEFAULT_KDS",
    "RETRYABLE_STATUS",
    "VCEK_GUID",
    "VLEK_GUID",
    "CertTable",
    "CollateralCache",
    "KdsFetcher",
    "SnpCollateral",
    "build_cert_table",
    "cert_chain_url",
    "crl_url",
    "parse_cert_table",
    "split_cert_chain",
    "vcek_url",
    "vcek_url_for_report",
]
