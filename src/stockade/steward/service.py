"""``stockade steward serve``: the steward's HTTPS API (docs/steward.md,
docs/steward-api.cddl), a Starlette app served by uvicorn like the keep
manager.

- ``POST /v1/challenge``: a single-use 32-byte nonce, valid 60 s (at most
  :data:`stockade.steward.appraise.MAX_OUTSTANDING` outstanding);
- ``POST /v1/certify``: nonce, evidence bundle, event log, CSR; appraised
  (:mod:`stockade.steward.appraise`), then either a certificate
  (:func:`stockade.steward.profile.issue`) appended to the log as a
  ``certificate`` entry, or a refusal (403, problem details with the
  explanation) whose request digest (SHA-256 of the request body) is
  appended as a ``refusal-digest`` entry. Both answers carry the signed tree
  head and the inclusion proof of their entry;
- ``GET /v1/ca``: the CA certificate and the log certificate (the log key,
  certified by the CA: :mod:`stockade.steward.logkey`);
- ``GET /v1/log/head``, ``/v1/log/entries?start=&count=``,
  ``/v1/log/inclusion?index=&size=``, ``/v1/log/consistency?old=&new=``.

Limits: a request body of at most ``max_request`` bytes (413), a token
bucket per client address over every request (429 with Retry-After), the
connection cap and request-head timeout of the keep manager's guard
(applied by the command, stockade.commands.steward), and uvicorn's
``limit_concurrency``. Requests refused at this level (malformed, too
large, rate-limited) are answered but not logged: only appraisals are.

The server's TLS certificate is issued by the steward CA at start for the
names it serves (``--server-name``, default the listen host), lives
:data:`SERVER_CERT_LIFETIME` and is renewed in place before it expires;
its key exists only in this process's memory (and, for the instant
``SSLContext.load_cert_chain`` reads it, in a mode-0600 file in a
mode-0700 temporary directory, removed at once: the ssl module loads keys
from files only).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stockade.errors import ProtocolError, StockadeError, UsageError
from stockade.steward import api
from stockade.steward.appraise import Challenges, Refused, StewardTrust, TooManyChallenges, appraise_request
from stockade.steward.ca import CertificateAuthority, build_certificate, write_new
from stockade.steward.profile import DEFAULT_LIFETIME, KEY_USAGE, issue
from stockade.steward.signatures import signature_log
from stockade.translog import CertificateEntry, RefusalDigestEntry, TransparencyLog

log = logging.getLogger("stockade.steward")

SERVER_CERT_LIFETIME = dt.timedelta(hours=24)
DEFAULT_RATE = 120.0  # requests per minute per client address
DEFAULT_BURST = 30
#: Client addresses whose buckets are remembered (least recently seen dropped).
MAX_PEERS = 10_000
NO_STORE = {"Cache-Control": "no-store"}


# ---------------------------------------------------------------------------
# The server's own TLS certificate
# ---------------------------------------------------------------------------


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def server_certificate(
    ca: CertificateAuthority, names: tuple[str, ...], now: dt.datetime, lifetime: dt.timedelta
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS server certificate under the CA for ``names`` (IP addresses or
    DNS names), with a new P-256 key: EKU serverAuth only, CA:false."""
    if not names:
        raise UsageError("the steward's TLS certificate needs at least one name (--server-name)")
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_after = min(now + lifetime, ca.certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            KEY_USAGE,  # digitalSignature only, as a workload certificate
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    return build_certificate(builder, ca.signer), key


class ServerTls:
    """The server's TLS context and its certificate, renewed in place."""

    def __init__(
        self,
        ca: CertificateAuthority,
        names: tuple[str, ...],
        lifetime: dt.timedelta = SERVER_CERT_LIFETIME,
        lock: threading.Lock | None = None,
    ) -> None:
        self.ca = ca
        self.names = names
        self.lifetime = lifetime
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.not_after = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._lock = lock or threading.Lock()
        self.renew(dt.datetime.now(dt.UTC))

    def renew(self, now: dt.datetime) -> None:
        with self._lock:  # the CA key is shared with certify
            cert, key = server_certificate(self.ca, self.names, now, self.lifetime)
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.ca.certificate.public_bytes(
            serialization.Encoding.PEM
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with tempfile.TemporaryDirectory(prefix="stockade-steward-tls-") as tmp:
            path = Path(tmp) / "server.pem"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(chain + pem)
            self.context.load_cert_chain(path)
        self.not_after = cert.not_valid_after_utc
        log.info("TLS certificate for %s valid until %s", ", ".join(self.names), self.not_after.isoformat())

    def renew_if_due(self, now: dt.datetime) -> None:
        if self.not_after - now < self.lifetime / 4:
            self.renew(now)


# ---------------------------------------------------------------------------
# Rate limit
# ---------------------------------------------------------------------------


class RateLimit:
    """A token bucket per client address: ``rate`` requests per minute,
    bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise UsageError("the rate limit needs a positive rate and a burst of at least 1")
        self.per_second = rate / 60.0
        self.burst = float(burst)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, peer: str) -> float:
        """0 if ``peer`` may make a request now, else the seconds to wait."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(peer, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.per_second)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.per_second
            self._buckets[peer] = (tokens, now)
            while len(self._buckets) > MAX_PEERS:
                self._buckets.popitem(last=False)
        return wait


# ---------------------------------------------------------------------------
# The steward
# ---------------------------------------------------------------------------


class ApiProblem(Exception):
    def __init__(self, status: int, problem_type: str, title: str, detail: str, **headers: str) -> None:
        super().__init__(detail)
        self.status = status
        self.problem_type = problem_type
        self.title = title
        self.detail = detail
        self.headers = headers

    def response(self) -> Response:
        return Response(
            api.problem(self.title, self.detail, self.problem_type),
            self.status,
            headers={**NO_STORE, **self.headers},
            media_type=api.PROBLEM,
        )


def _cbor(doc: dict[str, Any]) -> Response:
    return Response(api.dumps(doc), 200, headers=NO_STORE, media_type=api.CBOR)


@dataclass
class Outcome:
    """What a certify request came to (for the answer and the log line)."""

    status: int
    body: bytes
    media: str


class Steward:
    """The CA, the log and the trust, and what the API does with them. Every
    CA signature and every log append happens under one lock (a PKCS#11
    session and the log are not shared between threads)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        tlog: TransparencyLog,
        log_certificate: x509.Certificate,
        trust: StewardTrust,
        *,
        lifetime: dt.timedelta = DEFAULT_LIFETIME,
        challenge_ttl_ms: int = api.CHALLENGE_TTL_MS,
        max_outstanding: int | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.ca = ca
        self.log = tlog
        self.log_certificate = log_certificate
        self.trust = trust
        self.lifetime = lifetime
        self.clock = clock
        self.challenges = (
            Challenges(challenge_ttl_ms)
            if max_outstanding is None
            else Challenges(challenge_ttl_ms, max_outstanding)
        )
        self.lock = threading.Lock()
        self.issued = 0
        self.refused = 0

    def _now_ms(self, now: dt.datetime) -> int:
        return int(now.timestamp() * 1000)

    def challenge(self) -> dict[str, Any]:
        now = self.clock()
        try:
            nonce, expires = self.challenges.issue(self._now_ms(now))
        except TooManyChallenges as exc:
            raise ApiProblem(
                503, "busy", "too many outstanding challenges", exc.detail, **{"Retry-After": "5"}
            ) from None
        return {"nonce": nonce, "expires-ms": expires}

    def _position(self, index: int) -> api.LogPosition:
        proof = self.log.inclusion_proof(index)
        return api.LogPosition(index, self.log.tree_head_for(proof.size), proof.path)

    def certify(self, body: bytes) -> Outcome:
        """Appraise one certify request body and answer it (module docstring)."""
        try:
            request = api.CertifyRequest.from_cbor(body)
        except StockadeError as exc:
            raise ApiProblem(400, "bad-request", "malformed certify request", exc.detail) from None
        now = self.clock()
        try:
            self.challenges.take(request.nonce, self._now_ms(now))
            appraised = appraise_request(request, True, self.trust, now, logged=signature_log(self).holds)
        except Refused as refusal:
            digest = hashlib.sha256(body).digest()
            with self.lock:
                try:
                    index, _ = self.log.append([RefusalDigestEntry(digest)])
                    position = self._position(index)
                except StockadeError as exc:
                    log.error("cannot log a refusal: %s", exc.detail)
                    raise ApiProblem(500, "steward-error", "the steward could not log", exc.detail) from None
                self.refused += 1
            log.info(
                "refused (%s) request sha256:%s; log entry %d", refusal.rule[:80], digest.hex()[:16], index
            )
            doc = api.problem(
                "certificate request refused",
                refusal.detail,
                api.REFUSED,
                **{"refusal": refusal.to_map(), "refusal-digest": digest, **position.to_map()},
            )
            return Outcome(403, doc, api.PROBLEM)
        not_before = now.replace(microsecond=0)
        with self.lock:
            try:
                cert = issue(
                    self.ca, appraised.csr, appraised.claims, not_before=not_before, lifetime=self.lifetime
                )
                der = cert.public_bytes(serialization.Encoding.DER)
                # Answered only once its entry is durable in the log and
                # under a signed tree head: a certificate that is not in
                # the log never leaves the steward.
                index, _ = self.log.append([CertificateEntry(der)])
                position = self._position(index)
            except StockadeError as exc:
                log.error("cannot issue: %s", exc.detail)
                raise ApiProblem(500, "steward-error", "the steward could not issue", exc.detail) from None
            self.issued += 1
        log.info(
            "issued serial %x for %s (%s); log entry %d",
            cert.serial_number,
            appraised.claims.uri,
            appraised.claims.platform,
            index,
        )
        answer = {
            "certificate": der,
            "chain": [self.ca.certificate.public_bytes(serialization.Encoding.DER)],
            **position.to_map(),
        }
        return Outcome(200, api.dumps(answer), api.CBOR)

    # -- the log, read-only ---------------------------------------------

    def head(self) -> dict[str, Any]:
        with self.lock:
            return {"tree-head": self.log.tree_head}

    def entries(self, start: int, count: int) -> dict[str, Any]:
        with self.lock:
            size = self.log.signed_size
            if not 0 <= start <= size:
                raise ApiProblem(404, "not-found", "no such entry", f"the log has {size} signed entries")
            end = min(size, start + min(count, api.MAX_ENTRIES_PAGE))
            return {"start": start, "entries": [self.log.entry(i) for i in range(start, end)]}

    def inclusion(self, index: int, size: int | None) -> dict[str, Any]:
        with self.lock:
            size = self.log.signed_size if size is None else size
            if not 0 <= index < size <= self.log.signed_size:
                raise ApiProblem(
                    404, "not-found", "no such proof", f"need 0 <= index < size <= {self.log.signed_size}"
                )
            proof = self.log.inclusion_proof(index, size)
            return {"proof": proof.to_cbor(), "tree-head": self.log.tree_head_for(size)}

    def consistency(self, old: int, new: int | None) -> dict[str, Any]:
        with self.lock:
            new = self.log.signed_size if new is None else new
            if not 0 <= old <= new <= self.log.signed_size:
                raise ApiProblem(
                    404, "not-found", "no such proof", f"need 0 <= old <= new <= {self.log.signed_size}"
                )
            proof = self.log.consistency_proof(old, new)
            return {
                "proof": proof.to_cbor(),
                "old-tree-head": self.log.tree_head_for(old),
                "tree-head": self.log.tree_head_for(new),
            }


# ---------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------


def _int_param(request: Request, name: str, *, required: bool = True) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        if required:
            raise ApiProblem(400, "bad-request", "missing parameter", f"?{name}=N is required")
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise ApiProblem(400, "bad-request", "bad parameter", f"{name} must be an unsigned integer")
    return int(raw)


async def _read_body(request: Request, limit: int) -> bytes:
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media != api.CBOR:
        raise ApiProblem(415, "unsupported-media-type", "unsupported media type", f"send {api.CBOR}")
    declared = request.headers.get("content-length")
    too_large = ApiProblem(413, "too-large", "request body too large", f"at most {limit} bytes")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def create_app(
    steward: Steward,
    *,
    rate: float = DEFAULT_RATE,
    burst: int = DEFAULT_BURST,
    max_request: int = api.MAX_REQUEST,
) -> Starlette:
    limiter = RateLimit(rate, burst)

    def limited(request: Request) -> None:
        peer = request.client.host if request.client else "?"
        wait = limiter.take(peer)
        if wait > 0:
            raise ApiProblem(
                429,
                "rate-limited",
                "too many requests",
                f"at most {rate:g} requests per minute per address",
                **{"Retry-After": str(max(1, int(wait + 0.999)))},
            )

    async def challenge(request: Request) -> Response:
        limited(request)
        body = await _read_body(request, 64)
        try:
            api.loads(body, set(), "challenge request")
        except ProtocolError as exc:
            raise ApiProblem(400, "bad-request", "malformed challenge request", exc.detail) from None
        return _cbor(steward.challenge())

    async def certify(request: Request) -> Response:
        limited(request)
        body = await _read_body(request, max_request)
        outcome = await run_in_threadpool(steward.certify, body)
        return Response(outcome.body, outcome.status, headers=NO_STORE, media_type=outcome.media)

    async def ca(request: Request) -> Response:
        limited(request)
        return _cbor(
            {
                "ca": steward.ca.certificate.public_bytes(serialization.Encoding.DER),
                "log-certificate": steward.log_certificate.public_bytes(serialization.Encoding.DER),
            }
        )

    async def head(request: Request) -> Response:
        limited(request)
        return _cbor(await run_in_threadpool(steward.head))  # the lock may be held by an append

    async def entries(request: Request) -> Response:
        limited(request)
        start = _int_param(request, "start")
        count = _int_param(request, "count", required=False)
        assert start is not None
        return _cbor(
            await run_in_threadpool(steward.entries, start, api.MAX_ENTRIES_PAGE if count is None else count)
        )

    async def inclusion(request: Request) -> Response:
        limited(request)
        index = _int_param(request, "index")
        assert index is not None
        return _cbor(
            await run_in_threadpool(steward.inclusion, index, _int_param(request, "size", required=False))
        )

    async def consistency(request: Request) -> Response:
        limited(request)
        old = _int_param(request, "old")
        assert old is not None
        return _cbor(
            await run_in_threadpool(steward.consistency, old, _int_param(request, "new", required=False))
        )

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblem)
        return exc.response()

    async def on_http(request: Request, exc: Exception) -> Response:
        from starlette.exceptions import HTTPException

        assert isinstance(exc, HTTPException)
        return ApiProblem(exc.status_code, "http", str(exc.detail), str(exc.detail)).response()

    from starlette.exceptions import HTTPException

    from stockade.steward.signatures import routes as signature_routes

    app = Starlette(
        routes=[
            Route(api.CHALLENGE, challenge, methods=["POST"]),
            Route(api.CERTIFY, certify, methods=["POST"]),
            Route(api.CA, ca, methods=["GET"]),
            Route(api.LOG_HEAD, head, methods=["GET"]),
            Route(api.LOG_ENTRIES, entries, methods=["GET"]),
            Route(api.LOG_INCLUSION, inclusion, methods=["GET"]),
            Route(api.LOG_CONSISTENCY, consistency, methods=["GET"]),
            *signature_routes(steward, limited, _read_body, ApiProblem),  # package signatures
        ],
        exception_handlers={ApiProblem: on_problem, HTTPException: on_http},
    )
    app.state.steward = steward
    return app


# ---------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------


def uvicorn_config(
    app: Starlette,
    host: str,
    port: int,
    tls: ServerTls,
    *,
    http: Any = "h11",
    limit_concurrency: int | None = 256,
    backlog: int = 128,
    log_level: str = "info",
) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        server_header=False,
        ssl_context_factory=lambda config, default: tls.context,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
        http=http,
        limit_concurrency=limit_concurrency,
        backlog=backlog,
    )


def make_server(config: Any, tls: ServerTls) -> Any:
    """A uvicorn server that renews the TLS certificate before it expires."""
    import uvicorn

    class Server(uvicorn.Server):
        async def on_tick(self, counter: int) -> bool:
            if counter % 600 == 0:  # every minute (ticks are 0.1 s)
                await asyncio.get_running_loop().run_in_executor(
                    None, tls.renew_if_due, dt.datetime.now(dt.UTC)
                )
            return bool(await super().on_tick(counter))

    return Server(config)


# ---------------------------------------------------------------------------
# The steward's state: the CA and its log
# ---------------------------------------------------------------------------

LOG_DIR = "log"
LOG_CERT_FILE = "log-cert.pem"
LOG_KEY_REF_FILE = "log-key.json"


def open_log(
    ca: CertificateAuthority, state_dir: Path, pin: str | None, now: dt.datetime
) -> tuple[TransparencyLog, x509.Certificate, Callable[[], None]]:
    """The steward's log in ``DIR/log`` (created on first use), its log
    certificate ``DIR/log-cert.pem`` (issued on first use), and a closer.

    The log key lives where the CA key lives: with a file CA key, an
    Ed25519 key in ``DIR/log/log.key`` (mode 0600, the translog's own
    file); with a token CA key, an ECDSA P-256 key generated in the same
    token (:func:`stockade.steward.pkcs11.generate_log_key`), recorded in
    ``DIR/log-key.json`` (no secret in it)."""
    import json

    from stockade.steward.ca import read_state
    from stockade.steward.logkey import issue_log_certificate
    from stockade.translog import LogKey

    doc, _ = read_state(state_dir)
    log_dir = state_dir / LOG_DIR
    closers: list[Callable[[], None]] = []
    signer: Any = None
    if doc["key"].get("kind") == "pkcs11":
        from stockade.steward.pkcs11 import Pkcs11TreeHeadSigner, TokenKeyRef, generate_log_key

        if pin is None:
            raise UsageError("the steward's keys are in a PKCS#11 token: its PIN is needed")
        ref_path = state_dir / LOG_KEY_REF_FILE
        if ref_path.exists():
            try:
                ref = TokenKeyRef.from_json(json.loads(ref_path.read_bytes()), LOG_KEY_REF_FILE)
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read {ref_path}: {exc}") from None
        else:
            ca_ref = TokenKeyRef.from_json(doc["key"], "steward.json")
            ref = generate_log_key(ca_ref.module, ca_ref.token_label, pin)
            write_new(ref_path, json.dumps(ref.to_json(), indent=2).encode() + b"\n", 0o600)
        signer = Pkcs11TreeHeadSigner(ref, pin)
        closers.append(signer.close)
    try:
        if log_dir.exists():
            tlog = TransparencyLog.open(log_dir, signer=signer)
        else:
            tlog = TransparencyLog.create(log_dir, signer=signer)
    except BaseException:
        for close in closers:
            close()
        raise
    closers.insert(0, tlog.close)
    cert_path = state_dir / LOG_CERT_FILE
    try:
        if cert_path.exists():
            from stockade.steward.logkey import log_key_from_certificate

            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = log_key_from_certificate(cert.public_bytes(serialization.Encoding.DER), ca.certificate, now)
            if key != tlog.key:
                raise UsageError(f"{cert_path} certifies another key than the log's in {log_dir}")
        else:
            cert = issue_log_certificate(ca, LogKey.from_der(tlog.key.spki), now)
            write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        for close in closers:
            close()
        raise

    def close_all() -> None:
        for close in closers:
            close()

    return tlog, cert, close_all


@contextlib.contextmanager
def serving(
    steward: Steward,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    rate: float = DEFAULT_RATE,
    burst: int = DEFAULT_BURST,
    max_request: int = api.MAX_REQUEST,
    log_level: str = "warning",
    start_timeout: float = 20.0,
) -> Iterator[str]:
    """Serve ``steward`` in a thread of this process (tests, benchmarks,
    embedding); yields its URL (``https://HOST:PORT``, the port the
    kernel chose for 0) and stops the server on exit."""
    tls = ServerTls(steward.ca, (host,), lock=steward.lock)
    app = create_app(steward, rate=rate, burst=burst, max_request=max_request)
    server = make_server(uvicorn_config(app, host, port, tls, log_level=log_level), tls)
    thread = threading.Thread(target=server.run, name="steward", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise UsageError(f"the steward did not start on {host}:{port}")
            time.sleep(0.02)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"https://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout)
