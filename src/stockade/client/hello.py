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

from stockade.errors import KeepDied
from stockade.wire.protocol import ClientSession


@dataclass(frozen=True)
class SentHello:
    session: ClientSession
    nonce: bytes


def send_hello(sock: socket.socket) -> SentHello:
    """Send a fresh 32-byte nonce to the Keep (in clear: it is public)."""
    session = ClientSession()
    nonce = secrets.token_bytes(32)
    try:
        sock.sendall(session.hello(nonce))
    except OSError as exc:
        raise KeepDied(f"the Keep closed the connection before the hello ({type(exc).__name__})") from None
    return SentHello(session, nonce)
