"""Keep manager: the HTTP+CBOR API of the untrusted host (``stockade host serve``).

A Starlette app (:func:`create_app`) that creates, lists, inspects and kills
Keeps for holders of a bearer token, keeps the registry, and relays each
Keep's byte stream to one client over a WebSocket. Host code: it imports
``stockade.wire``, ``stockade.errors`` and ``stockade.host`` only, and never
sees plaintext workload data or secrets: after the clear-text hello (a
nonce) everything it relays is TLS ciphertext between the client and the
Keep.

API (docs: docs/adr/0009-websocket-relay.md; bodies are CBOR,
``application/cbor``, in the strict profile of stockade.wire.messages;
errors are RFC 9290 concise problem details,
``application/concise-problem-details+cbor``)::

    GET    /v1/health                 -> {"status": "ok"}            (no auth)
    GET    /v1/host                   -> {"version", "backends", "now", "fleet"}
    POST   /v1/keeps  {"backend", "limits"?, "publish"?} -> 201 Keep document
    GET    /v1/keeps                  -> {"keeps": [Keep document...]} (the caller's)
    GET    /v1/keeps/{id}             -> Keep document
    DELETE /v1/keeps/{id}             -> Keep document (SIGTERM, SIGKILL after a grace)
    GET    /v1/keeps/{id}/wait?timeout=S -> Keep document + timed_out (blocks <= 300 s)
    GET    /v1/keeps/{id}/logs?tail=N|offset=B -> text/plain: the Keep's host-side log
    GET    /v1/sim/root               -> {"ark": DER of this host's sim ARK}
    WS     /v1/keeps/{id}/connect     -> binary frames <-> the Keep's byte stream
    GET    /metrics                   -> Prometheus text exposition     (no auth)
    GET    /ui, /ui/{name}            -> the read-only status page      (no auth, no data)

/metrics exposes counts only (Keeps per state, creates, relayed bytes,
requests per route and status), no ids, tokens, owners or workload data;
each app has its own CollectorRegistry (:class:`Metrics`). The full API
description is docs/host-api.md, the bodies' schema docs/host-api.cddl.

The sim root is served for development only: a client that trusts a sim
root handed over by the host it does not trust gets no protection at all
(the host owns the sim chip's keys). sim never protects anything anyway.

Every /v1 route but health needs ``Authorization: Bearer <token>`` (401
without one, 403 for an unknown token); a token sees only its own Keeps
(another token's Keep is 404) and may have at most its quota of Keeps in a
non-final state (429).

A Keep that no client connects to within the idle timeout (``idle_timeout``,
60 s by default) is killed and recorded as ``killed`` with the reason, so
that abandoned creates do not hold quota or memory.

Host watchdog: a Keep created with a ``timeout_ms`` limit is killed (and
recorded as ``killed``) when it is still alive ``timeout_ms`` plus the
watchdog grace (``watchdog_grace``, 30 s by default: attestation, loading
and compiling) after its client connected. The Keep enforces the workload's
own time limit inside; this is the host's backstop against a Keep that does
not (a hung or hostile runtime), using only what the host was told.

Layout of this package (docs/architecture.md, "Keep manager inside"):

* ``app``: create_app, the Starlette app put together;
* ``routes``: handlers that only translate HTTP to supervisor calls;
* ``supervisor``: the Keeps' life cycle, staging, idle timer, watchdog,
  reconcile at start; no HTTP (tests/test_supervisor.py);
* ``relay``: the WebSocket <-> Keep stream pump;
* ``metrics``: Prometheus counts and the request-counting middleware;
* ``logs``: Keep log ranges and the sim PSP's served-reports line;
* ``problems``: RFC 9290 problem answers, one table from refusals to types;
* ``status``: the ``GET /v1/host`` document and the fleet membership shape;
* ``ui``: the status page's files (``static/``) and their security headers;
* ``processes``: signal, wait (pidfd) and reap a Keep's processes;
* ``portfwd``: published ports (``--keep-ports``): a public TCP port
  forwarded, bytes only, to the Unix socket a Keep listens on.
"""

from __future__ import annotations

from stockade.host.manager.app import create_app
from stockade.host.manager.logs import MAX_LOG_BYTES, MAX_TAIL_LINES
from stockade.host.manager.metrics import Metrics
from stockade.host.manager.problems import ApiProblem
from stockade.host.manager.supervisor import LiveKeep, Supervisor, SupervisorError

__all__ = [
    "MAX_LOG_BYTES",
    "MAX_TAIL_LINES",
    "ApiProblem",
    "LiveKeep",
    "Metrics",
    "Supervisor",
    "SupervisorError",
    "create_app",
]
