"""Asking the steward for a workload certificate (runs INSIDE the Keep), and
checking the answer (runs in the deploying client).

:func:`request_certificate` is the Keep's side (issue 17; docs/steward.md):
get a challenge nonce, bind it with the service key and the event-log
register into report data
(:func:`stockade.binding.reportdata.steward_report_data`), have the
attester make evidence over it, send evidence, events and a CSR, and check
that the certificate that comes back is for this key and chains to the
pinned CA. It uses only the standard library's ``http.client``/``ssl``,
cbor2 and cryptography; the steward's HTTPS server certificate must chain
to the pinned ``ca`` (and name the URL's host), so the host that relays the
connection can neither read nor answer it.

:func:`verify_issued` is the client's side: the certificate chains to the
pinned CA, names the verified package digest, and the inclusion proof puts
it in the log under a tree head signed by the pinned log key.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stockade.binding.eventlog import Event, check_workload_events, replay
from stockade.binding.reportdata import steward_report_data
from stockade.errors import (
    CertificateRequestRefused,
    ProtocolError,
    StockadeError,
    WorkloadCertificateInvalid,
)
from stockade.steward import api
from stockade.steward.verify import WorkloadIdentity, verify_workload_certificate
from stockade.wire.evidence import EvidenceBundle

if TYPE_CHECKING:
    from stockade.translog import LogKey

_VERIFIED = object()


class StewardUnreachable(ConnectionError):
    """The steward could not be reached, or is busy (rate limit, too many
    outstanding challenges): worth retrying later. An OSError."""


@dataclass(frozen=True)
class Issued:
    certificate: bytes  # DER, the workload certificate
    chain: tuple[bytes, ...]  # DER, issuer certificates up to and including the CA
    log_index: int
    tree_head: bytes  # the signed tree head as stockade.translog serialises it
    inclusion: tuple[bytes, ...]  # RFC 9162 inclusion proof hashes for log_index in that tree head


@dataclass(frozen=True)
class VerifiedIssuance:
    """An :class:`Issued` that :func:`verify_issued` checked: the
    certificate's verified identity and its verified place in the log.
    Only :func:`verify_issued` constructs it."""

    identity: WorkloadIdentity
    certificate: bytes
    log_index: int
    tree_size: int
    root: bytes
    tree_head: bytes
    inclusion: tuple[bytes, ...]
    _token: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _VERIFIED:
            raise TypeError("VerifiedIssuance is constructed by verify_issued only")

    @property
    def certificate_pem(self) -> str:
        return (
            x509.load_der_x509_certificate(self.certificate).public_bytes(serialization.Encoding.PEM).decode()
        )

    def inclusion_json(self) -> dict[str, Any]:
        """The ``inclusion`` object of a deploy's JSON result."""
        import base64

        return {
            "index": self.log_index,
            "tree_size": self.tree_size,
            "root": self.root.hex(),
            "proof": [h.hex() for h in self.inclusion],
            "tree_head": base64.b64encode(self.tree_head).decode(),
        }


# ---------------------------------------------------------------------------
# HTTPS (stdlib)
# ---------------------------------------------------------------------------


def _split_url(url: str) -> tuple[str, int, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"steward URL {url!r}: https://HOST[:PORT] expected")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"steward URL {url!r}: no user, query or fragment")
    return parts.hostname, parts.port or 443, parts.path.rstrip("/")


def tls_context(ca: x509.Certificate) -> ssl.SSLContext:
    """A TLS client context that trusts ``ca`` only and checks the host name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # PEM, not DER: CPython's _add_ca_certs ends a DER read by looking at
    # OpenSSL's last queued error, and OpenSSL 3 queues none at the end of
    # DER input, so an unrelated stale error of this thread (a PKCS#11
    # module's OpenSSL loading an engine, say) fails the load; the end of
    # PEM input queues PEM_R_NO_START_LINE, which CPython clears with the
    # rest (Modules/_ssl.c, _add_ca_certs).
    ctx.load_verify_locations(cadata=ca.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Connection:
    """One kept-alive HTTPS connection to a steward (stdlib http.client)."""

    def __init__(self, url: str, ca: x509.Certificate, timeout: float = 10.0) -> None:
        self.host, self.port, self.prefix = _split_url(url)
        self.url = url
        self._conn = http.client.HTTPSConnection(
            self.host, self.port, timeout=timeout, context=tls_context(ca)
        )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, str, bytes]:
        """(status, media type, body) of one request."""
        headers = {"Accept": f"{api.CBOR}, {api.PROBLEM}"}
        if body is not None:
            headers["Content-Type"] = api.CBOR
        try:
            self._conn.request(method, self.prefix + path, body=body, headers=headers)
            response = self._conn.getresponse()
            length = response.getheader("Content-Length")
            if length is not None and (not length.isdigit() or int(length) > api.MAX_RESPONSE):
                self._conn.close()
                raise ProtocolError(f"the steward's answer is larger than {api.MAX_RESPONSE} bytes")
            data = response.read(api.MAX_RESPONSE + 1)
        except ssl.SSLCertVerificationError as exc:
            self._conn.close()
            raise StewardUnreachable(
                f"steward {self.url}: its TLS certificate does not verify under the pinned steward CA "
                f"({exc.verify_message})"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            if isinstance(exc, StewardUnreachable):
                raise
            raise StewardUnreachable(f"steward {self.url}: {type(exc).__name__}: {exc}") from None
        if len(data) > api.MAX_RESPONSE:
            self._conn.close()
            raise ProtocolError(f"the steward's answer is larger than {api.MAX_RESPONSE} bytes")
        media = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        return response.status, media, data

    def expect(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """The body of a 200 answer; a problem answer raises (see :func:`raise_problem`)."""
        status, media, data = self.call(method, path, body)
        if status == 200 and media == api.CBOR:
            return data
        raise_problem(status, media, data, self.url)
        raise AssertionError("unreachable")  # pragma: no cover


def raise_problem(status: int, media: str, data: bytes, url: str) -> None:
    """Turn a non-200 answer into the error it means: a refusal
    (CertificateRequestRefused, with the steward's explanation), a busy
    steward (StewardUnreachable), or anything else (ProtocolError)."""
    if media != api.PROBLEM:
        raise ProtocolError(f"steward {url} answered HTTP {status} ({media or 'no media type'}), not CBOR")
    pd = api.parse_problem(data)
    detail = pd[api.PD_DETAIL]
    if status == 403 and pd[api.PD_TYPE] == api.REFUSED:
        err = CertificateRequestRefused(f"the steward refused the certificate: {detail}")
        err.problem = pd  # type: ignore[attr-defined]
        raise err
    if status in (429, 503):
        raise StewardUnreachable(f"steward {url} is busy (HTTP {status}): {detail}")
    raise ProtocolError(f"steward {url} answered HTTP {status}: {detail}")


# ---------------------------------------------------------------------------
# The Keep's side
# ---------------------------------------------------------------------------


def spki_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def make_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR for ``key`` (its subject is ignored: the steward sets every field)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stockade workload")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def challenge(conn: Connection) -> bytes:
    """A fresh single-use nonce from the steward."""
    where = "challenge answer"
    m = api.loads(conn.expect("POST", api.CHALLENGE, api.dumps({})), {"nonce", "expires-ms"}, where)
    api.uint(m, "expires-ms", where)
    return api.bstr(m, "nonce", where, api.NONCE_SIZE)


def parse_issued(data: bytes) -> Issued:
    where = "certify answer"
    m = api.loads(data, {"certificate", "chain", "log-index", "tree-head", "inclusion"}, where)
    pos = api.LogPosition.from_map(m, where)
    return Issued(
        certificate=api.bstr(m, "certificate", where),
        chain=api.bstr_list(m, "chain", where, 4),
        log_index=pos.index,
        tree_head=pos.tree_head,
        inclusion=pos.inclusion,
    )


def _check_answer(
    issued: Issued, key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, package: bytes, now: dt.datetime
) -> None:
    """The answer is a certificate for ``key`` naming ``package``, issued by
    ``ca``, and its inclusion proof leads to the (not yet trusted) root of
    the tree head it came with. Garbage is a ProtocolError."""
    from stockade.translog import CertificateEntry, encode_entry, merkle
    from stockade.translog.treehead import parse_signed_tree_head

    try:
        cert = x509.load_der_x509_certificate(issued.certificate)
        chain = [x509.load_der_x509_certificate(c) for c in issued.chain]
    except ValueError:
        raise ProtocolError("the steward's certificate or chain does not parse") from None
    ca_der = ca.public_bytes(serialization.Encoding.DER)
    if not issued.chain or issued.chain[-1] != ca_der:
        raise ProtocolError("the steward's chain does not end in the pinned steward CA")
    try:
        identity = verify_workload_certificate([cert, *chain], ca, now)
    except WorkloadCertificateInvalid as exc:
        raise ProtocolError(f"the steward answered with a certificate that does not verify: {exc}") from None
    if identity.public_key_der != spki_of(key):
        raise ProtocolError("the steward's certificate is not for this Keep's service key")
    if identity.package_digest != package:
        raise ProtocolError(
            f"the steward's certificate names package {identity.package_digest.hex()}, "
            f"this Keep runs {package.hex()}"
        )
    try:
        head = parse_signed_tree_head(issued.tree_head)[0]
        leaf = merkle.leaf_hash(encode_entry(CertificateEntry(issued.certificate)))
        merkle.verify_inclusion(issued.log_index, head.size, leaf, issued.inclusion, head.root)
    except StockadeError as exc:
        raise ProtocolError(f"the steward's log position does not hold: {exc}") from None


def request_certificate(
    url: str,
    *,
    ca: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    register: bytes,
    events: tuple[Event, ...],
    evidence: Callable[[bytes], EvidenceBundle],
    timeout: float = 10.0,
) -> Issued:
    """Obtain a workload certificate for ``key`` from the steward at ``url``
    (module docstring). Raises CertificateRequestRefused (exit 112, the
    steward's explanation), ProtocolError (113, an answer that is not what
    the API says or a certificate that is not for this key and CA), or
    StewardUnreachable (an OSError: no connection, TLS under another CA,
    a busy steward)."""
    if replay(events) != register:
        raise ValueError("register is not the register of events")
    package = check_workload_events(events, ValueError).digest
    with Connection(url, ca, timeout) as conn:
        nonce = challenge(conn)
        bundle = evidence(steward_report_data(nonce, spki_of(key), register))
        body = api.CertifyRequest(
            nonce=nonce, evidence=bundle.to_cbor(), events=events, csr=make_csr(key)
        ).to_cbor()
        if len(body) > api.MAX_REQUEST:
            raise ValueError(f"the certify request is {len(body)} bytes, above {api.MAX_REQUEST}")
        issued = parse_issued(conn.expect("POST", api.CERTIFY, body))
    _check_answer(issued, key, ca, package, dt.datetime.now(dt.UTC))
    return issued


# ---------------------------------------------------------------------------
# The client's side
# ---------------------------------------------------------------------------


def verify_issued(
    issued: Issued,
    *,
    ca: x509.Certificate,
    log_key: LogKey,
    expected_digest: bytes,
    now: dt.datetime,
) -> VerifiedIssuance:
    """Check what a Keep got from the steward: the certificate chains to
    the pinned ``ca`` and is valid at ``now`` (the profile,
    :func:`verify_workload_certificate`), its SAN names ``expected_digest``
    (the package digest the client verified), and the inclusion proof puts
    it at ``log_index`` of the tree whose signed head verifies under the
    pinned ``log_key`` (a :class:`stockade.translog.LogKey`; see
    :mod:`stockade.steward.logkey` for getting it from the CA). Raises
    WorkloadCertificateInvalid or LogProofError (exit 110), or
    MalformedLogData (111)."""
    from stockade.translog import CertificateEntry, InclusionProof, encode_entry, verify_inclusion
    from stockade.translog import LogKey as _LogKey
    from stockade.translog.treehead import parse_signed_tree_head

    if not isinstance(log_key, _LogKey):
        raise TypeError("log_key must be a stockade.translog.LogKey")
    try:
        cert = x509.load_der_x509_certificate(issued.certificate)
        chain = [x509.load_der_x509_certificate(c) for c in issued.chain]
    except ValueError:
        raise WorkloadCertificateInvalid("the workload certificate or its chain does not parse") from None
    identity = verify_workload_certificate([cert, *chain], ca, now)
    if identity.package_digest != expected_digest:
        raise WorkloadCertificateInvalid(
            f"the workload certificate names package {identity.package_digest.hex()}, "
            f"the verified package is {expected_digest.hex()}"
        )
    size = parse_signed_tree_head(issued.tree_head)[0].size
    proof = InclusionProof(issued.log_index, size, issued.inclusion)
    included = verify_inclusion(
        encode_entry(CertificateEntry(issued.certificate)), proof, issued.tree_head, [log_key]
    )
    return VerifiedIssuance(
        identity=identity,
        certificate=issued.certificate,
        log_index=included.index,
        tree_size=included.tree_head.size,
        root=included.tree_head.root,
        tree_head=issued.tree_head,
        inclusion=issued.inclusion,
        _token=_VERIFIED,
    )


def fetch_log_key(
    url: str, *, ca: x509.Certificate, timeout: float = 10.0, now: dt.datetime | None = None
) -> LogKey:
    """The steward's log key, from its log certificate (``GET /v1/ca``)
    checked under the pinned ``ca`` (:mod:`stockade.steward.logkey`): the
    CA pins it, the fetch only carries it."""
    from stockade.steward.logkey import log_key_from_certificate

    with Connection(url, ca, timeout) as conn:
        m = api.loads(conn.expect("GET", api.CA), {"ca", "log-certificate"}, "CA answer")
    if api.bstr(m, "ca", "CA answer") != ca.public_bytes(serialization.Encoding.DER):
        raise ProtocolError(f"steward {url} serves another CA certificate than the pinned one")
    return log_key_from_certificate(
        api.bstr(m, "log-certificate", "CA answer"), ca, now or dt.datetime.now(dt.UTC)
    )
