"""A client of the live stream (``/api/v1/projects/{project}/stream``) that
verifies every frame: the tests' reference reader of the stream protocol."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from websockets.sync.client import ClientConnection, connect


class StreamRefused(Exception):
    """A frame failed verification; the stream can no longer be trusted."""


def stream_key(token: str, nonce: bytes) -> bytes:
    """HMAC(sha256(token), "z4j-stream-v1" | nonce): only holders of the token can sign."""
    return hmac.new(hashlib.sha256(token.encode()).digest(), b"z4j-stream-v1" + nonce, hashlib.sha256).digest()


class SignedStream:
    """Reads ``/api/v1/projects/{project}/stream`` and verifies every frame.

    The first message is an unsigned hello carrying the nonce; every later
    message is ``{"mac": hex, "body": "<json>"}`` with the MAC over the body
    bytes and ``body.seq`` exactly one more than the previous frame's.
    """

    def __init__(self, base_url: str, token: str, project: str = "default") -> None:
        self.url = base_url.replace("http://", "ws://").replace("https://", "wss://") + f"/api/v1/projects/{project}/stream"
        self.token = token
        self.ws: ClientConnection | None = None
        self.key = b""
        self.seq = 0

    def __enter__(self) -> SignedStream:
        self._cm = connect(self.url, additional_headers={"Authorization": f"Bearer {self.token}"}, open_timeout=10)
        self.ws = self._cm.__enter__()
        hello = json.loads(self.ws.recv(timeout=10))
        if hello.get("type") != "hello":
            raise StreamRefused(f"expected a hello, got {hello!r}")
        self.hello = hello
        self.key = stream_key(self.token, bytes.fromhex(hello["nonce"]))
        return self

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)

    def open(self, raw: str | bytes) -> dict[str, Any]:
        """Verify one frame and return its body; raises StreamRefused (and keeps its state) if it fails."""
        try:
            frame = json.loads(raw)
            body, mac = frame["body"].encode(), bytes.fromhex(frame["mac"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StreamRefused(f"malformed frame: {exc}") from None
        if not hmac.compare_digest(hmac.new(self.key, body, hashlib.sha256).digest(), mac):
            raise StreamRefused("bad signature")
        data = json.loads(body)
        if data.get("seq") != self.seq + 1:
            raise StreamRefused(f"frame {data.get('seq')} out of sequence (expected {self.seq + 1})")
        self.seq += 1
        return data

    def recv_raw(self, timeout: float = 10) -> str | bytes:
        assert self.ws is not None
        return self.ws.recv(timeout=timeout)

    def recv(self, timeout: float = 10) -> dict[str, Any]:
        return self.open(self.recv_raw(timeout))
