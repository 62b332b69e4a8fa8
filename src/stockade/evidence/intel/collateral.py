"""Intel collateral: the only I/O of the Intel verifier.

* :func:`load_collateral_dir` / :func:`save_collateral_dir`: the on-disk
  layout used by the test vectors and ``stockade evidence verify
  --collateral DIR``: ``tcb_info.json``, ``qe_identity.json`` (PCS v4
  response bodies, verbatim), ``tcb_signing_chain.pem`` (the
  TCB-Info-Issuer-Chain header), ``root_ca_crl.der``, ``pck_crl.der``,
  ``pck_crl_issuer_chain.pem`` (the CRLs are optional to load; verification
  decides whether it needs them).
* :class:`PcsClient`: fetches that collateral from Intel's Provisioning
  Certification Service (API v4) or any PCS-shaped service (a PCCS, the fake
  one in :mod:`stockade.testing.pcs`), through the one on-disk collateral
  cache (evidence/collateral.py). An item is
  served from the cache while its own nextUpdate is after ``now``;
  everything fetched is parsed before it is cached (never signature-checked
  here: that is verification's job, at verification time), and garbage,
  errors and missing issuer-chain headers are CollateralUnavailable.
* :func:`verify_quote_files`: what the CLI calls.

Endpoints (PCS API v4): ``/{sgx|tdx}/certification/v4/tcb?fmspc=`` (header
``TCB-Info-Issuer-Chain``), ``/{sgx|tdx}/certification/v4/qe/identity``
(``SGX-Enclave-Identity-Issuer-Chain``),
``/sgx/certification/v4/pckcrl?ca={platform|processor}&encoding=der``
(``SGX-PCK-CRL-Issuer-Chain``); the root CA CRL from
``https://certificates.trustedservices.intel.com/IntelSGXRootCA.der``.
"""

from __future__ import annotations

import struct
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from stockade.errors import CollateralUnavailable, MalformedEvidence
from stockade.evidence.collateral import CollateralCache, HttpFetcher, write_atomic
from stockade.evidence.intel.abi import HEADER_SIZE, INTEL_QE_VENDOR_ID, Quote, TeeType
from stockade.evidence.intel.tcbinfo import parse_enclave_identity, parse_tcb_info, split_signed_body
from stockade.evidence.intel.verify import Collateral, VerifiedQuote, verify_quote
from stockade.evidence.pki import load_crl, load_pem_chain
from stockade.wire.platform import Platform

FILES = {
    "tcb_info": "tcb_info.json",
    "qe_identity": "qe_identity.json",
    "tcb_signing_chain": "tcb_signing_chain.pem",
    "root_ca_crl": "root_ca_crl.der",
    "pck_crl": "pck_crl.der",
    "pck_crl_issuer_chain": "pck_crl_issuer_chain.pem",
}
_REQUIRED = ("tcb_info", "qe_identity", "tcb_signing_chain")
MAX_RESPONSE = 1 << 20

PCS_URL = "https://api.trustedservices.intel.com"
ROOT_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"


def detect_quote(data: bytes) -> str | None:
    """ "tdx" or "sgx" when ``data`` starts like an Intel DCAP quote (version
    3-5, ECDSA P-256 key, Intel QE vendor ID, known TEE type), else None.
    Only a hint for choosing a verifier: it checks no signature."""
    if len(data) < HEADER_SIZE:
        return None
    version, key_type, tee = struct.unpack_from("<HHI", data, 0)
    if version not in (3, 4, 5) or key_type != 2 or data[12:28] != INTEL_QE_VENDOR_ID:
        return None
    return {int(TeeType.SGX): Platform.SGX.value, int(TeeType.TDX): Platform.TDX.value}.get(int(tee))


def load_collateral_dir(path: Path) -> Collateral:
    """Read a collateral directory; the three non-CRL files are required."""
    values: dict[str, bytes | None] = {}
    for field, name in FILES.items():
        try:
            values[field] = (path / name).read_bytes()
        except FileNotFoundError:
            if field in _REQUIRED:
                raise CollateralUnavailable(f"collateral directory {path} has no {name}") from None
            values[field] = None
        except OSError as exc:
            raise CollateralUnavailable(f"cannot read {path / name}: {exc.strerror}") from None
    return Collateral(**values)  # type: ignore[arg-type]


def save_collateral_dir(collateral: Collateral, path: Path) -> None:
    for field, name in FILES.items():
        value = getattr(collateral, field)
        if value is not None:
            write_atomic(path / name, value)


def verify_quote_files(
    quote: bytes,
    collateral_dir: Path,
    at: datetime,
    *,
    allow_trailing: bool = False,
    check_revocation: bool = True,
    root_der: bytes | None = None,
) -> VerifiedQuote:
    """Verify a TDX or SGX quote with the collateral in ``collateral_dir`` at
    ``at``: :func:`load_collateral_dir` then
    :func:`stockade.evidence.intel.verify.verify_quote`."""
    return verify_quote(
        quote,
        load_collateral_dir(collateral_dir),
        at,
        root_der=root_der,
        allow_trailing=allow_trailing,
        check_revocation=check_revocation,
    )


# --- the fetcher ------------------------------------------------------------------------


@dataclass(frozen=True)
class CollateralKey:
    """What to fetch for one quote: the TEE, the platform's FMSPC and which
    PCK CA ("platform" or "processor") issued its PCK certificate."""

    tee: str
    fmspc: str  # hex, as the PCK certificate has it
    ca: str

    @classmethod
    def for_quote(cls, quote_bytes: bytes) -> CollateralKey:
        from stockade.evidence.intel.pck import read_sgx_extension
        from stockade.evidence.pki import load_der

        quote = Quote.from_bytes(quote_bytes, allow_trailing=True)
        if len(quote.pck_chain) < 2:
            raise MalformedEvidence("PCK chain has no CA certificate")
        leaf = load_der(quote.pck_chain[0], "PCK certificate")
        ca = load_der(quote.pck_chain[1], "PCK CA certificate")
        cn = ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        kind = {"Intel SGX PCK Platform CA": "platform", "Intel SGX PCK Processor CA": "processor"}.get(
            str(cn[0].value) if cn else ""
        )
        if kind is None:
            raise MalformedEvidence("PCK CA certificate is neither the PCK Platform CA nor the Processor CA")
        tee = Platform.TDX.value if quote.tee_type is TeeType.TDX else Platform.SGX.value
        return cls(tee=tee, fmspc=read_sgx_extension(leaf).fmspc.hex(), ca=kind)


def _chain_header(headers: Any, names: tuple[str, ...], url: str) -> bytes:
    for name in names:
        value = headers.get(name)
        if value:
            pem = urllib.parse.unquote(value).encode("ascii", "replace")
            try:
                if load_pem_chain(pem, f"the {name} header"):
                    return pem
            except MalformedEvidence:
                pass
            raise CollateralUnavailable(f"{url}: the {name} header is not a PEM certificate chain")
    raise CollateralUnavailable(f"{url}: response lacks the {names[0]} header")


def _next_update_json(body: bytes, name: str) -> datetime:
    signed = split_signed_body(body, name, name)
    parsed = parse_tcb_info(signed.value) if name == "tcbInfo" else parse_enclave_identity(signed.value)
    return parsed.next_update


def _next_update_crl(der: bytes) -> datetime:
    return load_crl(der, "CRL").next_update  # pki refuses a CRL without nextUpdate


class PcsClient:
    """Fetch Intel collateral through an on-disk cache.

    ``base_url`` is Intel's PCS by default (a PCCS or the fake PCS of
    :mod:`stockade.testing.pcs` work the same); ``transport`` is passed to
    httpx (tests). Nothing here verifies signatures: verification does,
    with an explicit time, over the bytes cached here.
    """

    def __init__(
        self,
        cache_dir: Path,
        *,
        base_url: str = PCS_URL,
        root_crl_url: str = ROOT_CRL_URL,
        timeout: float = 10.0,
        retries: int = 0,
        transport: Any = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        #: The one collateral cache (evidence/collateral.py), laid out by name.
        self.cache = CollateralCache(self.cache_dir)
        self.base_url = base_url.rstrip("/")
        self.root_crl_url = root_crl_url
        self.timeout = timeout
        self.transport = transport
        self.retries = retries
        self._http: HttpFetcher | None = None
        self._http_client: Any = None

    def _get(self, url: str) -> tuple[bytes, Mapping[str, str]]:
        """Through the one HTTP fetcher (evidence/collateral.py); one
        connection pool per collateral() call, made on first need."""
        if self._http is None:
            import httpx

            client = httpx.Client(timeout=self.timeout, transport=self.transport)
            self._http = HttpFetcher(
                timeout=self.timeout, retries=self.retries, client=client, max_body=MAX_RESPONSE
            )
            self._http_client = client
        return self._http.fetch(url)

    def _item(
        self,
        path: Path,
        url: str,
        now: datetime,
        offline: bool,
        next_update: Any,
        chain_headers: tuple[str, ...] = (),
    ) -> tuple[bytes, bytes | None]:
        """(body, issuer chain) from the cache while fresh, else fetched,
        checked to parse, and cached."""
        name = path.relative_to(self.cache_dir).as_posix()
        chain_name = name + ".issuer_chain.pem"
        body = self.cache.get(name)
        chain = self.cache.get(chain_name) if chain_headers else None
        whole = body is not None and (not chain_headers or chain is not None)
        if whole and (offline or self.cache.fresh(name, next_update, now) is not None):
            assert body is not None
            return body, chain
        if offline:
            raise CollateralUnavailable(f"{path.name} is not cached and fetching is off")
        body, headers = self._get(url)
        try:
            nu = next_update(body)
        except MalformedEvidence as exc:
            raise CollateralUnavailable(f"{url}: PCS returned malformed data ({exc})") from None
        if nu <= now:
            raise CollateralUnavailable(f"{url}: PCS returned collateral that expired at {nu.isoformat()}")
        chain = _chain_header(headers, chain_headers, url) if chain_headers else None
        if chain is not None:
            self.cache.put(chain_name, chain)
        self.cache.put(name, body)
        return body, chain

    def collateral(self, key: CollateralKey, now: datetime, *, offline: bool = False) -> Collateral:
        """The collateral for ``key``, fresh at ``now`` (from the cache when
        possible; with ``offline``, only from the cache, fresh or not)."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if key.tee not in (Platform.TDX, Platform.SGX) or key.ca not in ("platform", "processor"):
            raise ValueError(f"bad collateral key {key}")
        try:
            return self._collateral(key, now, offline)
        finally:
            if self._http is not None:
                self._http_client.close()
                self._http = None

    def _collateral(self, key: CollateralKey, now: datetime, offline: bool) -> Collateral:
        fmspc = key.fmspc.upper()
        tee_dir = self.cache_dir / key.tee
        api = f"{self.base_url}/{key.tee}/certification/v4"
        tcb_info, tcb_chain = self._item(
            tee_dir / fmspc / "tcb_info.json",
            f"{api}/tcb?fmspc={fmspc}",
            now,
            offline,
            lambda b: _next_update_json(b, "tcbInfo"),
            ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"),
        )
        signed = split_signed_body(tcb_info, "tcbInfo", "TCB info")
        if parse_tcb_info(signed.value).fmspc.hex().upper() != fmspc:
            raise CollateralUnavailable(f"PCS returned TCB info for another FMSPC than {fmspc}")
        qe_identity, _ = self._item(
            tee_dir / "qe_identity.json",
            f"{api}/qe/identity",
            now,
            offline,
            lambda b: _next_update_json(b, "enclaveIdentity"),
            ("SGX-Enclave-Identity-Issuer-Chain",),
        )
        pck_crl, pck_chain = self._item(
            self.cache_dir / f"pck_crl_{key.ca}.der",
            f"{self.base_url}/sgx/certification/v4/pckcrl?ca={key.ca}&encoding=der",
            now,
            offline,
            _next_update_crl,
            ("SGX-PCK-CRL-Issuer-Chain",),
        )
        root_crl, _ = self._item(
            self.cache_dir / "root_ca_crl.der", self.root_crl_url, now, offline, _next_update_crl
        )
        assert tcb_chain is not None
        return Collateral(
            tcb_info=tcb_info,
            qe_identity=qe_identity,
            tcb_signing_chain=tcb_chain,
            root_ca_crl=root_crl,
            pck_crl=pck_crl,
            pck_crl_issuer_chain=pck_chain,
        )

    def collateral_for_quote(self, quote: bytes, now: datetime, *, offline: bool = False) -> Collateral:
        return self.collateral(CollateralKey.for_quote(quote), now, offline=offline)
