"""A real HTTP server on loopback that records every request and answers
what a test scripted per path (status, headers, body, delay).

    with Receiver() as rx:
        rx.script("/hook", 500, times=1)                   # first call 500, then 200
        rx.script("/moved", 302, headers={"Location": "http://127.0.0.1:1/"})
        ... POST to rx.url("/hook") ...
        rx.requests("/hook")[0].json()
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"ok": true}'
    delay: float = 0.0
    times: int | None = None


class Receiver:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.answers: dict[str, list[_Answer]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                with receiver.lock:
                    receiver.received.append(Received(self.command, self.path, dict(self.headers.items()), body))
                    queue = receiver.answers.get(path) or []
                    answer = queue[0] if queue else _Answer()
                    if answer.times is not None:
                        answer.times -= 1
                        if answer.times <= 0:
                            queue.pop(0)
                if answer.delay:
                    time.sleep(answer.delay)
                try:
                    self.send_response(answer.status)
                    for key, value in {"Content-Type": "application/json", **answer.headers}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:
                    pass

            do_GET = do_POST = do_PUT = _any  # noqa: N815

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.host = host
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def script(self, path: str, status: int = 200, *, headers: dict[str, str] | None = None, body: bytes | None = None,
               delay: float = 0.0, times: int | None = None) -> None:
        """Answer ``path`` this way (``times`` calls, then the next script or 200 {"ok": true})."""
        with self.lock:
            self.answers.setdefault(path, []).append(
                _Answer(status, headers or {}, b'{"ok": true}' if body is None else body, delay, times))

    def requests(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.received if path is None or r.path.split("?", 1)[0] == path]

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
