"""Live stream for clients (TUI, scripts): coalesced task and worker changes.

Frames are JSON text ``{"mac": hex, "body": "<json>"}``. The MAC is
HMAC-SHA256 over the body with a key derived for this stream from the
caller's token (``HMAC(sha256(token), "z4j-stream-v1" | nonce)``, the nonce
sent in the first, unsigned ``hello``), and every body carries ``seq``
(1, 2, 3, …), so a proxy can neither inject nor replay updates.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time

import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from z4j_collector.guards import access_of, bearer_token

_encode = msgspec.json.Encoder().encode


def stream_key(token: str, nonce: bytes) -> bytes:
    return hmac.new(hashlib.sha256(token.encode()).digest(), b"z4j-stream-v1" + nonce, hashlib.sha256).digest()


@websocket("/api/v1/projects/{project:str}/stream", opt={"permission": "tasks:read"})
async def project_stream(socket: WebSocket, project: str) -> None:
    state = socket.app.state
    principal = access_of(socket)
    await socket.accept()
    sub = state.hub.subscribe(principal.project_id)  # before the hello: miss nothing
    nonce = os.urandom(16)
    key = stream_key(bearer_token(socket) or "", nonce)
    await socket.send_text(_encode({"type": "hello", "nonce": nonce.hex(), "project": principal.project}).decode())
    seq = 0
    closed = asyncio.create_task(_wait_closed(socket))
    try:
        while not closed.done():
            ready = asyncio.create_task(sub.ready.wait())
            await asyncio.wait({ready, closed}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if closed.done():
                break
            # Coalesce: whatever arrives in this window goes in one frame.
            await asyncio.sleep(state.settings.stream_interval_s)
            tasks, workers, resync = sub.take()
            seq += 1
            body = _encode({
                "seq": seq, "ts": time.time(), "type": "resync" if resync else "changes",
                "tasks": tasks, "workers": workers,
            })
            mac = hmac.new(key, body, hashlib.sha256).hexdigest()
            await socket.send_text(_encode({"mac": mac, "body": body.decode()}).decode())
    except WebSocketDisconnect:
        pass
    finally:
        closed.cancel()
        state.hub.unsubscribe(sub)


async def _wait_closed(socket: WebSocket) -> None:
    try:
        while True:
            await socket.receive_data("text")
    except WebSocketDisconnect:
        return
