"""A fake Intel Provisioning Certification Service on 127.0.0.1, for tests
of anything that fetches Intel collateral
(:class:`stockade.evidence.intel.collateral.PcsClient` or your own).

It serves the PCS API v4 paths with whatever collateral it is given (real
collateral from the test vectors, or :class:`stockade.testing.intel.FakeIntelPki`'s):

* ``/{sgx|tdx}/certification/v4/tcb?fmspc=`` -> TCB info body, header
  ``TCB-Info-Issuer-Chain`` (URL-encoded PEM); unknown FMSPC: 404, a
  malformed one: 400;
* ``/{sgx|tdx}/certification/v4/qe/identity`` -> QE identity body, header
  ``SGX-Enclave-Identity-Issuer-Chain``;
* ``/sgx/certification/v4/pckcrl?ca={platform|processor}&encoding=der`` ->
  DER CRL, header ``SGX-PCK-CRL-Issuer-Chain``;
* ``/IntelSGXRootCA.der`` -> the root CA CRL (Intel serves it from
  certificates.trustedservices.intel.com; here from the same server).

Faults are programmable, each for the next ``times`` requests whose path
starts with a prefix (or all): an HTTP status, a garbage 200 body, a missing
issuer-chain header, a delay. Every request is recorded (``requests``).

Usage::

    with FakePcs() as pcs:
        pcs.add("tdx", fmspc, collateral)
        client = PcsClient(cache_dir, base_url=pcs.base_url, root_crl_url=pcs.root_crl_url)
"""

from __future__ import annotations

import re
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from stockade.evidence.intel.verify import Collateral
from stockade.testing._fakeserver import FaultBase, LoopbackServer

ROOT_CRL_PATH = "/IntelSGXRootCA.der"
_TCB = re.compile(r"^/(sgx|tdx)/certification/v4/tcb$")
_QE = re.compile(r"^/(sgx|tdx)/certification/v4/qe/identity$")
_PCK_CRL = "/sgx/certification/v4/pckcrl"


@dataclass
class Fault(FaultBase):
    """Instead of the normal answer (``status``, ``garbage``, ``no_header``)
    or before it (``delay``), for the next ``times`` requests (None:
    forever) whose path starts with ``path`` (None: every path)."""

    status: int = 200
    body: bytes = b""
    seconds: float = 0.0


@dataclass(frozen=True)
class Request:
    path: str
    query: str


@dataclass
class _Answer:
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


class FakePcs(LoopbackServer[Fault, Request]):
    """The fake PCS. ``start``/``stop``, or use it as a context manager."""

    _not_started = "FakePcs is not started"

    def __init__(self) -> None:
        super().__init__()
        self.tcb_infos: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self.qe_identities: dict[str, tuple[bytes, bytes]] = {}
        self.pck_crls: dict[str, tuple[bytes, bytes]] = {}
        self.root_crl: bytes | None = None

    # --- lifecycle (start, stop, base_url: LoopbackServer) -----------------------------

    @property
    def root_crl_url(self) -> str:
        return self.base_url + ROOT_CRL_PATH

    # --- content ----------------------------------------------------------------------

    def add(self, tee: str, fmspc: str, collateral: Collateral, ca: str = "platform") -> None:
        """Serve ``collateral`` for (``tee``, ``fmspc``) and its CRLs for
        ``ca``. The TCB signing chain is also sent as the QE identity's
        issuer chain; the PCK CRL issuer chain defaults to it when absent."""
        chain = collateral.tcb_signing_chain
        with self._lock:
            self.tcb_infos[tee, fmspc.upper()] = (collateral.tcb_info, chain)
            self.qe_identities[tee] = (collateral.qe_identity, chain)
            if collateral.pck_crl is not None:
                self.pck_crls[ca] = (collateral.pck_crl, collateral.pck_crl_issuer_chain or chain)
            if collateral.root_ca_crl is not None:
                self.root_crl = collateral.root_ca_crl

    # --- faults -------------------------------------------------------------------------

    @property
    def faults(self) -> list[Fault]:
        """The programmed faults, in the order they were added."""
        return self._faults

    @faults.setter
    def faults(self, value: list[Fault]) -> None:
        self._faults = value

    def fail(self, status: int, *, path: str | None = None, times: int | None = 1) -> Fault:
        return self._add(Fault("status", path, times, status=status))

    def garbage(
        self, body: bytes = b"\x00garbage{", *, path: str | None = None, times: int | None = 1
    ) -> Fault:
        return self._add(Fault("garbage", path, times, body=body))

    def no_header(self, *, path: str | None = None, times: int | None = 1) -> Fault:
        return self._add(Fault("no_header", path, times))

    def delay(self, seconds: float, *, path: str | None = None, times: int | None = 1) -> Fault:
        return self._add(Fault("delay", path, times, seconds=seconds))

    # --- serving --------------------------------------------------------------------------

    def _take_faults(self, path: str) -> list[Fault]:
        with self._lock:
            taken = [f for f in self._faults if f.matches(path)]
            for f in taken:
                if f.times is not None:
                    f.times -= 1
            return taken

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        split = urllib.parse.urlsplit(handler.path)
        self._record(Request(split.path, split.query))
        faults = self._take_faults(split.path)
        for f in faults:
            if f.kind == "delay":
                time.sleep(f.seconds)
        for f in faults:
            if f.kind == "status":
                return self._send(handler, f.status, b"", "text/plain", {})
            if f.kind == "garbage":
                return self._send(handler, 200, f.body, "application/octet-stream", {})
        status, answer = self._route(split.path, urllib.parse.parse_qs(split.query))
        if answer is None:
            return self._send(handler, status, b"", "text/plain", {})
        headers = {} if any(f.kind == "no_header" for f in faults) else answer.headers
        return self._send(handler, status, answer.body, answer.content_type, headers)

    def _route(self, path: str, query: dict[str, list[str]]) -> tuple[int, _Answer | None]:
        with self._lock:
            if m := _TCB.match(path):
                fmspc = query.get("fmspc", [""])[0]
                if not re.fullmatch(r"[0-9A-Fa-f]{12}", fmspc):
                    return 400, None
                found = self.tcb_infos.get((m.group(1), fmspc.upper()))
                if found is None:
                    return 404, None
                return 200, _Answer(found[0], "application/json", {"TCB-Info-Issuer-Chain": _quote(found[1])})
            if m := _QE.match(path):
                qe = self.qe_identities.get(m.group(1))
                if qe is None:
                    return 404, None
                return 200, _Answer(
                    qe[0], "application/json", {"SGX-Enclave-Identity-Issuer-Chain": _quote(qe[1])}
                )
            if path == _PCK_CRL:
                ca = query.get("ca", [""])[0]
                if ca not in ("platform", "processor") or query.get("encoding", ["der"])[0] != "der":
                    return 400, None
                crl = self.pck_crls.get(ca)
                if crl is None:
                    return 404, None
                return 200, _Answer(
                    crl[0], "application/pkix-crl", {"SGX-PCK-CRL-Issuer-Chain": _quote(crl[1])}
                )
            if path == ROOT_CRL_PATH:
                if self.root_crl is None:
                    return 404, None
                return 200, _Answer(self.root_crl, "application/pkix-crl")
        return 404, None


def _quote(pem: bytes) -> str:
    return urllib.parse.quote(pem.decode("ascii"), safe="")
