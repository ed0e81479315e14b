"""A hand-driven agent connection, for tests that send frames a real agent never would."""

from __future__ import annotations

import os
import time

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from z4j_agents import protocol as p


class RawAgent:
    def __init__(self, url: str, token: str, secret: str, project: str = "default") -> None:
        self.ws_url = url.replace("http://", "ws://") + "/agent/ws"
        self.token = token
        self.key = p.frame_key(secret)
        self.project = project
        self.ws: ClientConnection | None = None
        self.signer: p.Signer | None = None
        self.verifier: p.Verifier | None = None

    def connect(self) -> RawAgent:
        self._cm = connect(self.ws_url, additional_headers={"Authorization": f"Bearer {self.token}"},
                           open_timeout=10, compression=None)
        self.ws = self._cm.__enter__()
        return self

    def hello(self, key: bytes | None = None, now: float | None = None) -> bytes:
        """The signed hello envelope (not sent)."""
        self.client_nonce = os.urandom(16)
        hello = p.Hello(client_nonce=self.client_nonce, agent_name="raw", project=self.project, engines=["bare"])
        return p.Signer(key or self.key).seal(hello, now=now)

    def handshake(self) -> p.Welcome:
        assert self.ws is not None
        self.ws.send(self.hello())
        welcome = p.Verifier(self.key).open(self.ws.recv(timeout=10))
        assert isinstance(welcome, p.Welcome), welcome
        skey = p.session_key(self.key, self.client_nonce, welcome.server_nonce)
        self.signer, self.verifier = p.Signer(skey), p.Verifier(skey)
        return welcome

    def batch(self, count: int = 1, task_prefix: str = "raw") -> p.EventBatch:
        now = time.time()
        events = [p.TaskEvent(id=p.new_id(), task_id=f"{task_prefix}-{i}", engine="bare", kind="received", ts=now,
                              name="raw.task") for i in range(count)]
        return p.EventBatch(batch_id=p.new_id(), events=events)

    def send(self, data: bytes) -> None:
        """Send; if the collector already refused and closed, refusal() tells why."""
        assert self.ws is not None
        try:
            self.ws.send(data)
        except ConnectionClosed:
            pass

    def recv_frame(self) -> p.Frame:
        assert self.ws is not None and self.verifier is not None
        return self.verifier.open(self.ws.recv(timeout=10))

    def refusal(self, timeout: float = 10) -> tuple[p.ErrorFrame | None, int | None]:
        """Wait for the collector's error frame and close; return both."""
        assert self.ws is not None
        error = None
        try:
            while True:
                data = self.ws.recv(timeout=timeout)
                if isinstance(data, bytes):
                    error = p.peek_error(data) or error
        except ConnectionClosed:
            pass
        close = self.ws.protocol.close_rcvd
        return error, close.code if close else None

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
