"""The client's first message to a fresh Keep: a nonce, in clear.

Apart from :mod:`stockade.client.deploy` (which re-exports it) so that
``stockade run`` can send it as soon as its Keep is started, before it
imports the verifier, the policy engine and the package code: the Keep
attests while the client imports them (issue 18).
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stockade.errors import KeepDied
from stockade.wire.protocol import ClientSession

if TYPE_CHECKING:
    import ssl


@dataclass(frozen=True)
class SentHello:
    session: ClientSession
    nonce: bytes
    #: The TLS connection whose ClientHello followed the hello at once
    #: (``send_hello(..., start_tls=True)``); it owns the stream, and
    #: :func:`stockade.client.deploy.deploy` finishes its handshake. None:
    #: deploy starts TLS itself.
    tls: ssl.SSLSocket | None = None
    #: What sending the ClientHello raised (deploy reports it as a failed
    #: handshake, classified as any other).
    tls_error: OSError | None = None


def client_context() -> ssl.SSLContext:
    """The client's TLS 1.3 context for the attested channel. Trust comes
    from the attestation evidence, not from a CA: the Keep's certificate is
    self-signed and checked by stockade.client.attest.appraise."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def send_hello(sock: socket.socket, start_tls: bool = False) -> SentHello:
    """Send a fresh 32-byte nonce to the Keep (in clear: it is public).
    ``start_tls``: then send the TLS ClientHello at once too, so that the
    Keep, once its certificate is made, does not wait for it while this
    client plans the deploy (issue 18); the stream then belongs to the
    returned hello's ``tls``. For callers that imported ``ssl`` already
    (``stockade run`` sends the hello before that import on its cold path)."""
    session = ClientSession()
    nonce = secrets.token_bytes(32)
    try:
        sock.sendall(session.hello(nonce))
    except OSError as exc:
        raise KeepDied(f"the Keep closed the connection before the hello ({type(exc).__name__})") from None
    if not start_tls:
        return SentHello(session, nonce)
    import ssl

    sock.setblocking(False)
    tls = client_context().wrap_socket(sock, server_hostname=None, do_handshake_on_connect=False)
    error: OSError | None = None
    try:
        # Non-blocking: writes the ClientHello, then wants the Keep's answer.
        tls.do_handshake()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        pass
    except OSError as exc:
        error = exc
    return SentHello(session, nonce, tls, error)
