"""Package signatures in the steward's log (issue 17, item 2; as Rekor
records signatures for Sigstore): ``POST /v1/log/package-signature``, and
the client's side that ``stockade package sign --log URL`` uses.

The request body is the log entry itself: a ``package-signature`` entry
(:class:`stockade.translog.PackageSignatureEntry`: package content digest,
raw Ed25519 signer key, role, signature) in its canonical CBOR encoding,
exactly the bytes the log will hash. The steward decodes it strictly,
verifies the signature over the bytes :func:`stockade.package.signing.signed_bytes`
defines for that digest and role under that key, and only then appends it
(under the same lock as every CA signature and log append) and answers
with where it is: ``{v, log-index, tree-head, inclusion}`` (the body of a
certify answer's log position, stockade.steward.api.LogPosition). A
statement already in the log is not appended again: the answer names the
existing entry, with a proof under the current tree head. A body that is
not such an entry, or whose signature does not verify, is refused (400 or
422, problem details) and not logged: unlike a certification, there is no
appraisal to account for, only input that is not a signature.

Limits: a body of at most :data:`MAX_BODY` bytes (an entry is ~200), the
same per-address rate limit as every other request of the API
(stockade.steward.service.create_app passes its limiter in).

Client side: :func:`log_signature` posts the entry and checks the answer
under the log key the pinned steward CA certifies (the log certificate of
``GET /v1/ca``, stockade.steward.logkey): the inclusion proof must put
this very entry in a tree whose signed head verifies under that key.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from stockade.errors import ProtocolError, StockadeError
from stockade.package.signing import LEGACY_V1_PREFIX, signed_bytes
from stockade.steward import api
from stockade.translog import (
    InclusionProof,
    LogKey,
    PackageSignatureEntry,
    VerifiedInclusion,
    decode_entry,
    encode_entry,
    verify_inclusion,
)
from stockade.translog.treehead import parse_signed_tree_head

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.routing import Route

    from stockade.steward.service import Steward

log = logging.getLogger("stockade.steward")

PATH: Final = "/v1/log/package-signature"
#: The largest body read: a package-signature entry is about 200 bytes.
MAX_BODY: Final = 1024
#: Problem type of a statement whose signature does not verify.
INVALID: Final = "signature-invalid"


class SignatureNotLogged(ProtocolError):
    """ProtocolError (exit 113, same problem type): the steward would not
    log the signature (not a signature entry, or a signature that does not
    verify under the key it names). A subclass only for its title."""

    title = "the steward did not log the signature"


# ---------------------------------------------------------------------------
# The steward's side
# ---------------------------------------------------------------------------


class Refusal(Exception):
    def __init__(self, status: int, problem_type: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.problem_type = problem_type
        self.detail = detail


def check_statement(body: bytes) -> PackageSignatureEntry:
    """The package-signature entry ``body`` encodes, once its signature
    verified; :class:`Refusal` otherwise."""
    try:
        entry = decode_entry(body)
    except StockadeError as exc:
        raise Refusal(400, "bad-request", f"not a log entry: {exc.detail}") from None
    if not isinstance(entry, PackageSignatureEntry):
        raise Refusal(
            400, "bad-request", f"a {entry.KIND} entry; this endpoint logs package-signature entries"
        )
    try:
        key = Ed25519PublicKey.from_public_bytes(entry.signer_key)
    except ValueError:
        raise Refusal(422, INVALID, "signer-key is not an Ed25519 public key") from None
    try:
        key.verify(entry.sig, signed_bytes(entry.package_digest, entry.role))
    except InvalidSignature:
        try:
            key.verify(entry.sig, LEGACY_V1_PREFIX + entry.package_digest)
            why = "is a v1 signature (the role unsigned); re-sign with this version of stockade"
        except InvalidSignature:
            why = f"does not verify over role {entry.role} and digest {entry.package_digest.hex()}"
        raise Refusal(422, INVALID, f"the signature {why} under the key it names") from None
    return entry


class SignatureLog:
    """The endpoint's state: which package-signature statements the log
    already holds (entry bytes -> index), caught up with the log on every
    request under the steward's lock."""

    def __init__(self, steward: Steward) -> None:
        self.steward = steward
        self._known: dict[bytes, int] = {}
        self._statements: dict[tuple[bytes, bytes, str], int] = {}
        self._scanned = 0
        self.logged = 0

    def _note(self, data: bytes, entry: PackageSignatureEntry, index: int) -> None:
        self._known[data] = index
        self._statements.setdefault((entry.package_digest, entry.signer_key, entry.role), index)

    def _catch_up(self) -> None:
        tlog = self.steward.log
        while self._scanned < tlog.size:
            data = tlog.entry(self._scanned)
            entry = decode_entry(data)
            if isinstance(entry, PackageSignatureEntry):
                self._note(data, entry, self._scanned)
            self._scanned += 1

    def holds(self, digest: bytes, signer_key: bytes, role: str, log_ids: tuple[bytes, ...]) -> bool:
        """Whether this steward's log is one of ``log_ids`` and holds a
        signature by ``signer_key`` as ``role`` over ``digest`` (the
        appraisal's ``[workload] require_log`` check; every entry was
        verified before it was appended)."""
        if self.steward.log.key.log_id not in log_ids:
            return False
        with self.steward.lock:
            self._catch_up()
            return (digest, signer_key, role) in self._statements

    def record(self, body: bytes) -> dict[str, Any]:
        """Check and log one statement; the answer body (module docstring)."""
        entry = check_statement(body)
        data = encode_entry(entry)  # == body: decode_entry checked the encoding is canonical
        with self.steward.lock:
            try:
                self._catch_up()
                index = self._known.get(data)
                if index is None:
                    index, _ = self.steward.log.append([entry])
                    self._note(data, entry, index)
                    self._scanned = max(self._scanned, index + 1)
                    self.logged += 1
                    fresh = True
                else:
                    fresh = False
                proof = self.steward.log.inclusion_proof(index)
                position = api.LogPosition(index, self.steward.log.tree_head_for(proof.size), proof.path)
            except StockadeError as exc:
                raise Refusal(500, "steward-error", f"the steward could not log: {exc.detail}") from None
        log.info(
            "%s package signature (%s, key %s) over %s; log entry %d",
            "logged" if fresh else "already logged",
            entry.role,
            entry.signer_key.hex()[:16],
            entry.package_digest.hex()[:16],
            index,
        )
        return position.to_map()


_STATE: weakref.WeakKeyDictionary[Steward, SignatureLog] = weakref.WeakKeyDictionary()
_STATE_LOCK = threading.Lock()


def signature_log(steward: Steward) -> SignatureLog:
    """The one :class:`SignatureLog` of ``steward`` (the endpoint and the
    appraisal share it)."""
    with _STATE_LOCK:
        state = _STATE.get(steward)
        if state is None:
            state = _STATE[steward] = SignatureLog(steward)
        return state


def routes(
    steward: Steward,
    limited: Callable[[Request], None],
    read_body: Callable[[Request, int], Any],
    problem: Callable[[int, str, str, str], Exception],
) -> list[Route]:
    """The endpoint's routes, for stockade.steward.service.create_app:
    ``limited`` is the API's rate limit, ``read_body`` its bounded body
    reader, ``problem`` makes its problem-details exception."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response
    from starlette.routing import Route

    state = signature_log(steward)

    async def package_signature(request: Request) -> Response:
        limited(request)
        body = await read_body(request, MAX_BODY)
        try:
            answer = await run_in_threadpool(state.record, body)
        except Refusal as refusal:
            titles = {400: "malformed signature statement", 422: "signature does not verify"}
            raise problem(
                refusal.status, refusal.problem_type, titles.get(refusal.status, "not logged"), refusal.detail
            ) from None
        return Response(api.dumps(answer), 200, headers={"Cache-Control": "no-store"}, media_type=api.CBOR)

    return [Route(PATH, package_signature, methods=["POST"])]


# ---------------------------------------------------------------------------
# The signer's side
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedSignature:
    """A signature the steward logged, checked: its verified inclusion and
    the log key it verified under (pinned through the steward CA)."""

    inclusion: VerifiedInclusion
    position: api.LogPosition
    log_key: LogKey


def log_signature(
    url: str,
    entry: PackageSignatureEntry,
    *,
    ca: x509.Certificate,
    timeout: float = 10.0,
    now: dt.datetime | None = None,
) -> LoggedSignature:
    """Have the steward at ``url`` log ``entry`` and check its answer: the
    inclusion proof puts exactly this entry in a tree whose signed head
    verifies under the log key that the pinned ``ca`` certifies. Raises
    SignatureNotLogged (the steward refused it), ProtocolError (an answer
    that is not the API's), LogProofError / MalformedLogData (a proof that
    does not hold), or StewardUnreachable (an OSError)."""
    from stockade.steward.logkey import log_key_from_certificate
    from stockade.steward.request import Connection

    data = encode_entry(entry)
    with Connection(url, ca, timeout) as conn:
        m = api.loads(conn.expect("GET", api.CA), {"ca", "log-certificate"}, "CA answer")
        log_key = log_key_from_certificate(
            api.bstr(m, "log-certificate", "CA answer"), ca, now or dt.datetime.now(dt.UTC)
        )
        status, media, body = conn.call("POST", PATH, data)
    if status != 200 or media != api.CBOR:
        if media == api.PROBLEM and status in (400, 422):
            pd = api.parse_problem(body)
            raise SignatureNotLogged(f"steward {url} did not log the signature: {pd[api.PD_DETAIL]}")
        from stockade.steward.request import raise_problem

        raise_problem(status, media, body, url)
    where = "package-signature answer"
    position = api.LogPosition.from_map(
        api.loads(body, {"log-index", "tree-head", "inclusion"}, where), where
    )
    size = parse_signed_tree_head(position.tree_head)[0].size
    included = verify_inclusion(
        data, InclusionProof(position.index, size, position.inclusion), position.tree_head, [log_key]
    )
    return LoggedSignature(included, position, log_key)


__all__ = [
    "MAX_BODY",
    "PATH",
    "LoggedSignature",
    "SignatureLog",
    "SignatureNotLogged",
    "check_statement",
    "log_signature",
    "routes",
]
