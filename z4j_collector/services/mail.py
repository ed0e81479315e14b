"""Outgoing e-mail (invitations, password resets) through the configured SMTP server."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from z4j_collector.settings import SmtpSettings

log = logging.getLogger("z4j.collector.mail")
_TIMEOUT_S = 15.0


class Mailer:
    def __init__(self, smtp: SmtpSettings | None) -> None:
        self.smtp = smtp

    @property
    def configured(self) -> bool:
        return self.smtp is not None

    async def send(self, to: str, subject: str, body: str) -> bool:
        """Send one plain-text message; False (and a log line) when it could not be sent."""
        if self.smtp is None:
            return False
        try:
            await self.deliver(to, subject, body)
            return True
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("could not send %r to %s via %s:%s: %s", subject, to, self.smtp.host, self.smtp.port, exc)
            return False

    async def deliver(self, to: str | list[str], subject: str, body: str) -> None:
        """Send one plain-text message to one or more addresses, or raise (OSError,
        smtplib.SMTPException; RuntimeError when no SMTP server is configured)."""
        if self.smtp is None:
            raise RuntimeError("no SMTP server is configured (Z4J_SMTP_HOST)")
        message = EmailMessage()
        message["From"], message["Subject"] = self.smtp.sender, subject
        message["To"] = to if isinstance(to, str) else ", ".join(to)
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = make_msgid("z4j", domain=self.smtp.sender.rpartition("@")[2])
        message.set_content(body)
        await asyncio.to_thread(self._deliver, message)

    def _deliver(self, message: EmailMessage) -> None:
        smtp = self.smtp
        assert smtp is not None
        context = ssl.create_default_context()
        if smtp.security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=_TIMEOUT_S, context=context)
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=_TIMEOUT_S)
        with client:
            if smtp.security == "starttls":
                client.starttls(context=context)
            if smtp.user:
                client.login(smtp.user, smtp.password or "")
            client.send_message(message)
