"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives.

    with SmtpServer() as smtp:
        ... collector with Z4J_SMTP_HOST=127.0.0.1, Z4J_SMTP_PORT=smtp.port, Z4J_SMTP_SECURITY=none ...
        message = smtp.wait_for("ann@example.com")
        message["Subject"], message.get_content()
"""

from __future__ import annotations

import threading
import time
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller

from tests.support.servers import free_port


class _Keep:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        message = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        with self.server.lock:
            self.server.received.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"


class SmtpServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.host = "127.0.0.1"
        self.lock = threading.Lock()
        self.received: list[tuple[str, list[str], EmailMessage]] = []
        self._controller = Controller(_Keep(self), hostname=self.host, port=self.port)

    def collector_env(self, sender: str = "z4j@example.com") -> dict[str, str]:
        """The environment that points a collector at this server (plain SMTP, no TLS)."""
        return {"Z4J_SMTP_HOST": self.host, "Z4J_SMTP_PORT": str(self.port), "Z4J_SMTP_FROM": sender,
                "Z4J_SMTP_SECURITY": "none"}

    def messages_to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for _, rcpt, m in self.received if address in rcpt]

    def wait_for(self, address: str, count: int = 1, timeout: float = 20.0) -> EmailMessage:
        """The ``count``-th message received for ``address``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages_to(address)
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no message #{count} for {address} within {timeout} s "
                                     f"(received for: {[r for _, r, _ in self.received]})")
            time.sleep(0.05)

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
