"""The keep manager's WebSocket relay: bytes between one client's WebSocket
and a Keep's stream socket (after the clear-text hello, TLS ciphertext the
host cannot read), until both directions end. docs/adr/0009-websocket-relay.md."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Final

from prometheus_client import Counter
from starlette.websockets import WebSocket, WebSocketDisconnect

#: Bytes read from the Keep at a time (one WebSocket message to the client).
RELAY_CHUNK: Final = 1 << 18


async def pump(ws: WebSocket, conn: socket.socket, relay_bytes: Counter) -> None:
    """Pump bytes between ``ws`` (accepted) and ``conn`` until both
    directions end, counting them in ``relay_bytes{direction}``. A text
    frame closes the WebSocket (1003); the end of the client's stream is
    passed on as a half-close of ``conn``. ``conn`` stays open."""
    conn.setblocking(False)
    with contextlib.suppress(OSError):
        # Room for a few deploy frames towards the Keep (capped by the kernel).
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    loop = asyncio.get_running_loop()
    to_keep = relay_bytes.labels("to_keep")
    to_client = relay_bytes.labels("to_client")

    async def keep_to_client() -> None:
        try:
            while True:
                data = await loop.sock_recv(conn, RELAY_CHUNK)
                if not data:
                    break
                await ws.send_bytes(data)
                to_client.inc(len(data))
        except (OSError, WebSocketDisconnect, RuntimeError):
            pass
        with contextlib.suppress(Exception):
            await ws.close(1000)

    async def client_to_keep() -> None:
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                data = msg.get("bytes")
                if data is None:
                    await ws.close(1003, "binary frames only")
                    break
                await loop.sock_sendall(conn, data)
                to_keep.inc(len(data))
        except (OSError, WebSocketDisconnect, RuntimeError):
            pass
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)  # the Keep sees the end of the stream

    await asyncio.gather(keep_to_client(), client_to_keep())
