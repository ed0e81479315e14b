"""The collector's live stream (docs/api.md, "Live stream"), verified.

Blocking, no Textual: a console worker thread iterates ``Stream.frames()``.
Every frame is checked (HMAC with the key derived from the token and the
hello's nonce, and ``seq`` exactly one more than the last); a frame that
fails a check ends the stream with StreamError, and the caller reconnects
and refetches over REST, as the API asks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from z4j_tui.client import SESSION_GONE, ClientError


class StreamError(ClientError):
    """The stream cannot be trusted or was cut: reconnect and refetch."""


def stream_key(token: str, nonce_hex: str) -> bytes:
    return hmac.new(hashlib.sha256(token.encode()).digest(), b"z4j-stream-v1" + bytes.fromhex(nonce_hex),
                    hashlib.sha256).digest()


class Stream:
    def __init__(self, url: str, token: str, project: str, timeout: float = 10.0) -> None:
        self.url = url.replace("http", "ws", 1).rstrip("/") + f"/api/v1/projects/{project}/stream"
        self.token = token
        self.timeout = timeout
        self.ws: ClientConnection | None = None
        self.exits = ExitStack()

    def open(self) -> dict[str, Any]:
        """Connect and read the hello; refusals become ClientError with the server's status and code."""
        try:
            self.ws = self.exits.enter_context(
                connect(self.url, additional_headers={"Authorization": f"Bearer {self.token}"},
                        open_timeout=self.timeout, max_size=None))
        except InvalidStatus as exc:
            status = exc.response.status_code
            try:
                body = json.loads(exc.response.body or b"{}")
                code, reason = body.get("code"), f"{body.get('message')} ({body.get('code')})"
            except ValueError:
                code, reason = None, exc.response.reason_phrase
            if status == 401 and code in SESSION_GONE:
                raise ClientError("session expired: log in again", 401, code) from None
            raise ClientError(f"{status}: {reason}", status, code) from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise StreamError(f"cannot reach the collector's stream at {self.url}: {exc}") from None
        hello = self.receive(self.timeout)
        if hello is None or hello.get("type") != "hello":
            self.close()
            raise StreamError(f"no hello from {self.url}")
        self.key = stream_key(self.token, hello["nonce"])
        self.seq = 0
        return hello

    def receive(self, timeout: float) -> dict[str, Any] | None:
        assert self.ws is not None
        try:
            raw = self.ws.recv(timeout=timeout)
        except TimeoutError:
            return None
        except (OSError, WebSocketException) as exc:
            raise StreamError(f"the stream was cut: {exc}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise StreamError("a stream message that is not JSON") from None

    def frames(self, timeout: float = 0.5) -> Iterator[dict[str, Any] | None]:
        """Verified frame bodies; None when nothing came within ``timeout`` (so the caller can stop)."""
        while True:
            frame = self.receive(timeout)
            if frame is None:
                yield None
                continue
            body = str(frame.get("body", "")).encode()
            mac = hmac.new(self.key, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(mac, str(frame.get("mac", ""))):
                raise StreamError("a stream frame with a bad signature: not trusting this stream")
            data = json.loads(body)
            if data.get("seq") != self.seq + 1:
                raise StreamError(f"stream frame {data.get('seq')} out of sequence (expected {self.seq + 1})")
            self.seq = data["seq"]
            yield data

    def close(self) -> None:
        self.ws = None
        self.exits.close()
