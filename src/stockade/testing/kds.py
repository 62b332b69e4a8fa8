"""A fake AMD Key Distribution Service on 127.0.0.1, for tests of anything
that fetches SNP collateral (stockade.evidence.snp.collateral or your own).

It serves the KDS paths (AMD pub. 57230 chapter 4), with the content a
:class:`stockade.testing.amd.FakeAmdPki` gives it:

* ``/vcek/v1/{product}/{hwid}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=[&fmcSPL=]``:
  a published VCEK (DER); SPLs left out count as 0, as on KDS; a malformed
  hwID or SPL is 400, an unknown VCEK 404;
* ``/vcek/v1/{product}/cert_chain`` and ``/vlek/v1/{product}/cert_chain``
  (PEM, intermediate then ARK);
* ``/vcek/v1/{product}/crl`` and ``/vlek/v1/{product}/crl`` (DER).

Faults are programmable, each for the next ``times`` matching requests (a
path prefix, or all requests): an HTTP status (404, 429 with Retry-After,
503, ...), a delay before answering (to hit client timeouts), a garbage body
with status 200. Every request is recorded (``requests``) so tests can count
network round trips.

Usage::

    with FakeKds() as kds:
        kds.add_pki(pki)
        kds.add_vcek(pki.vcek())
        fetcher = KdsFetcher(kds.base_url)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from stockade.evidence.snp.abi import Product, SigningKey
from stockade.evidence.snp.verify import HWID_LENGTH
from stockade.testing._fakeserver import FaultBase, LoopbackServer
from stockade.testing.amd import FakeAmdPki, FakeEndorsement

_SPL_PARAMS = {"blSPL": "bootloader", "teeSPL": "tee", "snpSPL": "snp", "ucodeSPL": "microcode"}
_VCEK_PATH = re.compile(r"^/vcek/v1/([A-Za-z]+)/([^/]+)$")
_DER_CERT = "application/pkix-cert"
_PEM = "application/x-pem-file"
_DER_CRL = "application/pkix-crl"


@dataclass
class Fault(FaultBase):
    """What to do instead of (``status``, ``garbage``) or before (``delay``)
    the normal answer, for the next ``times`` requests whose path starts with
    ``path`` (None: every request; ``times`` None: forever). ``kind`` is
    "status", "delay" or "garbage"."""

    status: int = 200
    retry_after: str | None = None
    body: bytes = b""
    seconds: float = 0.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


class FakeKds(LoopbackServer[Fault, Request]):
    """The fake KDS. ``start``/``stop``, or use it as a context manager."""

    _thread_name = "fake-kds"
    _poll_interval = 0.02
    _not_started = "the fake KDS is not started"

    def __init__(self) -> None:
        super().__init__()
        self._static: dict[str, tuple[bytes, str]] = {}
        self._vceks: dict[tuple[str, str, tuple[tuple[str, int], ...]], bytes] = {}

    # --- content ---

    def add_pki(
        self,
        pki: FakeAmdPki,
        *,
        crl: bytes | None = None,
        vlek_crl: bytes | None = None,
    ) -> None:
        """Publish a product's chains and CRLs (by default empty CRLs of its ARK)."""
        p = pki.product.value
        with self._lock:
            self._static[f"/vcek/v1/{p}/cert_chain"] = (pki.cert_chain_pem(SigningKey.VCEK), _PEM)
            self._static[f"/vlek/v1/{p}/cert_chain"] = (pki.cert_chain_pem(SigningKey.VLEK), _PEM)
        self.set_crl(pki.product, crl if crl is not None else pki.crl(), SigningKey.VCEK)
        self.set_crl(pki.product, vlek_crl if vlek_crl is not None else pki.crl(), SigningKey.VLEK)

    def set_crl(self, product: Product, der: bytes, signer: SigningKey = SigningKey.VCEK) -> None:
        kind = "vcek" if signer is SigningKey.VCEK else "vlek"
        with self._lock:
            self._static[f"/{kind}/v1/{product.value}/crl"] = (der, _DER_CRL)

    def set_chain(self, product: Product, pem: bytes, signer: SigningKey = SigningKey.VCEK) -> None:
        """Serve ``pem`` (e.g. a real vector's ASK+ARK) as the product's chain."""
        kind = "vcek" if signer is SigningKey.VCEK else "vlek"
        with self._lock:
            self._static[f"/{kind}/v1/{product.value}/cert_chain"] = (pem, _PEM)

    def add_vcek_der(self, product: Product, hwid: bytes, tcb: dict[str, int], der: bytes) -> None:
        """Publish a VCEK certificate (e.g. a real vector's) for chip ``hwid``
        at ``tcb`` (components by name, as TcbVersion.components gives)."""
        with self._lock:
            self._vceks[(product.value, hwid.hex(), tuple(sorted(tcb.items())))] = der

    def add_vcek(self, endorsement: FakeEndorsement) -> None:
        """Publish a VCEK at the URL of its chip and TCB."""
        if endorsement.signer is not SigningKey.VCEK:
            raise ValueError("KDS serves VCEKs only")
        key = (
            endorsement.product.value,
            endorsement.hwid.hex(),
            tuple(sorted(endorsement.tcb.items())),
        )
        with self._lock:
            self._vceks[key] = endorsement.der

    # --- faults ---

    def fail(
        self,
        status: int,
        *,
        path: str | None = None,
        times: int | None = 1,
        retry_after: str | int | None = None,
        body: bytes = b"",
    ) -> Fault:
        """Answer ``status`` (with a Retry-After header when given)."""
        ra = None if retry_after is None else str(retry_after)
        return self._add(Fault("status", path, times, status=status, retry_after=ra, body=body))

    def delay(self, seconds: float, *, path: str | None = None, times: int | None = 1) -> Fault:
        """Wait ``seconds`` before answering (stop() cuts the wait short)."""
        return self._add(Fault("delay", path, times, seconds=seconds))

    def garbage(
        self,
        body: bytes = b"<html>not a certificate</html>",
        *,
        path: str | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Answer 200 with ``body``."""
        return self._add(Fault("garbage", path, times, body=body))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # --- serving ---

    def _take_faults(self, path: str) -> list[Fault]:
        """The delay (if any) and the answer-replacing fault (if any) for this
        request, each used up once."""
        taken: list[Fault] = []
        with self._lock:
            for kinds in (("delay",), ("status", "garbage")):
                for fault in self._faults:
                    if fault.kind in kinds and fault.matches(path):
                        if fault.times is not None:
                            fault.times -= 1
                        taken.append(fault)
                        break
        return taken

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        self._record(Request("GET", split.path, split.query))
        for fault in self._take_faults(split.path):
            if fault.kind == "delay":
                if self._stopping.wait(fault.seconds):
                    return
            elif fault.kind == "status":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                self._send(handler, fault.status, fault.body, "text/plain", headers)
                return
            else:
                self._send(handler, 200, fault.body, "application/octet-stream")
                return
        status, body, ctype = self._route(split.path, split.query)
        self._send(handler, status, body, ctype)

    def _route(self, path: str, query: str) -> tuple[int, bytes, str]:
        with self._lock:
            static = self._static.get(path)
        if static is not None:
            return 200, static[0], static[1]
        match = _VCEK_PATH.match(path)
        if match is None:
            return 404, b"Not Found", "text/plain"
        product_name, hwid = match.groups()
        try:
            product = Product(product_name)
        except ValueError:
            return 404, b"unknown product", "text/plain"
        try:
            raw = bytes.fromhex(hwid)
        except ValueError:
            return 400, b"hwid is not hex", "text/plain"
        if len(raw) != HWID_LENGTH[product]:
            return 400, b"hwid has the wrong length", "text/plain"
        params = dict(_SPL_PARAMS)
        if product is Product.TURIN:
            params["fmcSPL"] = "fmc"
        tcb: dict[str, int] = dict.fromkeys(params.values(), 0)
        for name, values in parse_qs(query, keep_blank_values=True).items():
            if name not in params:
                return 400, f"unknown parameter {name}".encode(), "text/plain"
            if len(values) != 1 or not values[0].isdigit() or int(values[0]) > 255:
                return 400, f"bad value for {name}".encode(), "text/plain"
            tcb[params[name]] = int(values[0])
        with self._lock:
            der = self._vceks.get((product.value, raw.hex(), tuple(sorted(tcb.items()))))
        if der is None:
            return 404, b"Not Found", "text/plain"
        return 200, der, _DER_CERT


def serve(pkis: Iterable[FakeAmdPki] = (), vceks: Iterable[FakeEndorsement] = ()) -> FakeKds:
    """A started FakeKds publishing ``pkis`` and ``vceks`` (stop it when done)."""
    kds = FakeKds().start()
    for pki in pkis:
        kds.add_pki(pki)
    for vcek in vceks:
        kds.add_vcek(vcek)
    return kds


__all__ = ["FakeKds", "Fault", "Request", "serve"]
