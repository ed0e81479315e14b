"""The four channel kinds: how a config is checked, masked and used to send.

Config per kind (secrets marked *; stored as given, masked in API answers):

* email    ``{"to": ["ops@example.com", …]}``: through the collector's SMTP
  server (services/mail.py, ``Z4J_SMTP_*``).
* slack    ``{"webhook_url"*: "https://hooks.slack.com/services/…"}``:
  incoming-webhook JSON ``{"text": …}``.
* telegram ``{"bot_token"*: "123:ABC…", "chat_id": "-100…", "api_base":
  "https://api.telegram.org"}``: Bot API ``sendMessage``.
* webhook  ``{"url": "https://…", "secret"*: "…"}``: the message as JSON;
  headers ``X-Z4J-Timestamp`` (unix seconds) and ``X-Z4J-Signature``
  ``sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``.

Every HTTP request goes through the SSRF-hardened OutboundClient.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec

from z4j_collector.errors import CollectorError
from z4j_collector.services.mail import Mailer
from z4j_collector.services.outbound import (
    Allowlist, OutboundClient, OutboundError, OutboundRefused, literal_address, parse_url, refusal,
)

KINDS = ("email", "slack", "telegram", "webhook")
FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("to",), "slack": ("webhook_url",), "telegram": ("bot_token", "chat_id", "api_base"),
    "webhook": ("url", "secret"),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "email": ("to",), "slack": ("webhook_url",), "telegram": ("bot_token", "chat_id"), "webhook": ("url", "secret"),
}
SECRETS = {"slack": ("webhook_url",), "telegram": ("bot_token",), "webhook": ("secret",), "email": ()}
TELEGRAM_API = "https://api.telegram.org"
MASK = "********"
_EMAIL = re.compile(r"[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+")
_TOKEN = re.compile(r"[A-Za-z0-9:_-]{1,200}")
_encode = msgspec.json.Encoder(order="sorted").encode


def _bad(message: str) -> CollectorError:
    return CollectorError(message, code="invalid_request")


@dataclass(frozen=True)
class Message:
    """What a channel sends: the same for a test and (later) a rule's alert."""

    title: str
    text: str
    severity: str = "info"
    """info · warning · critical"""
    fields: dict[str, Any] = field(default_factory=dict)
    """Facts (task, queue, worker, counts…) sent as-is to webhooks, listed in the others."""
    url: str | None = None
    """A link back to the collector, when known."""

    def body(self) -> str:
        lines = [self.text]
        lines += [f"{k}: {v}" for k, v in self.fields.items()]
        if self.url:
            lines.append(self.url)
        return "\n".join(lines)


def _url(value: Any, key: str, allowlist: Allowlist) -> str:
    if not isinstance(value, str):
        raise _bad(f"{key} must be a URL string")
    try:
        target = parse_url(value)
    except OutboundRefused as exc:
        raise _bad(f"{key}: {exc.reason}") from None
    literal = literal_address(target.host)
    if literal is not None and refusal(literal) is not None:
        # caught now as well as at send time (names are resolved and checked when sending)
        if not (allowlist.admits_host(target.host, target.port) or allowlist.admits_address(literal)):
            raise _bad(f"{key}: refused: {refusal(literal)} (not in the outbound allowlist Z4J_OUTBOUND_ALLOW)")
    return value


def validate(kind: str, config: Any, allowlist: Allowlist, old: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config to store; ``old``: the stored one (a change may leave secrets out to keep them)."""
    if kind not in KINDS:
        raise _bad(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(config, dict):
        raise _bad("config must be a JSON object")
    unknown = set(config) - set(FIELDS[kind])
    if unknown:
        raise _bad(f"unknown {kind} config field(s) {', '.join(sorted(unknown))}: use {', '.join(FIELDS[kind])}")
    merged = {**(old or {}), **{k: v for k, v in config.items() if not (k in SECRETS[kind] and v == MASK)}}
    missing = [k for k in REQUIRED[kind] if merged.get(k) in (None, "", [])]
    if missing:
        raise _bad(f"a {kind} channel needs {', '.join(missing)}")
    if kind == "email":
        to = merged["to"]
        if isinstance(to, str):
            to = [a.strip() for a in re.split(r"[,;\s]+", to) if a.strip()]
        if not isinstance(to, list) or not 1 <= len(to) <= 50 or not all(isinstance(a, str) for a in to):
            raise _bad("to must be 1 to 50 e-mail addresses")
        for address in to:
            if not _EMAIL.fullmatch(address):
                raise _bad(f"to: {address!r} is not an e-mail address")
        merged["to"] = to
    elif kind == "slack":
        _url(merged["webhook_url"], "webhook_url", allowlist)
    elif kind == "telegram":
        if not isinstance(merged["bot_token"], str) or not _TOKEN.fullmatch(merged["bot_token"]):
            raise _bad("bot_token must be the bot's token (letters, digits, ':', '_', '-')")
        chat = merged["chat_id"]
        if isinstance(chat, bool) or not isinstance(chat, (str, int)) or not str(chat).strip():
            raise _bad("chat_id must be a chat id (a number) or @channelname")
        merged["chat_id"] = str(chat).strip()
        merged["api_base"] = _url(merged.get("api_base") or TELEGRAM_API, "api_base", allowlist).rstrip("/")
    elif kind == "webhook":
        _url(merged["url"], "url", allowlist)
        secret = merged["secret"]
        if not isinstance(secret, str) or not 16 <= len(secret) <= 256:
            raise _bad("secret must be a string of 16 to 256 characters")
    return merged


def mask(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """The config as the API shows it: secrets replaced by ``MASK`` (a Slack URL keeps its host)."""
    out = dict(config)
    for key in SECRETS.get(kind, ()):
        if key not in out:
            continue
        if key == "webhook_url":
            parts = urlsplit(str(out[key]))
            out[key] = f"{parts.scheme}://{parts.netloc}/{MASK}"
        else:
            out[key] = MASK
    if kind == "webhook" and "url" in out:
        parts = urlsplit(str(out["url"]))
        if parts.query:
            out["url"] = f"{parts.scheme}://{parts.netloc}{parts.path}?{MASK}"
    return out


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``"<timestamp>." + body``: what a receiver recomputes."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


async def send(kind: str, config: dict[str, Any], message: Message, context: dict[str, Any],
               outbound: OutboundClient, mailer: Mailer) -> None:
    """Send once; :class:`OutboundError` (``retryable`` set) when it did not go through.
    ``context``: project, channel, delivery id (put into webhook bodies)."""
    if kind == "email":
        try:
            await mailer.deliver(config["to"], f"[z4j] {message.title}", message.body())
        except RuntimeError as exc:
            raise OutboundError(str(exc)) from None
        except OSError as exc:
            raise OutboundError(f"SMTP: {type(exc).__name__}: {exc}", retryable=True) from None
        except Exception as exc:  # smtplib.SMTPException and its kin
            raise OutboundError(f"SMTP: {type(exc).__name__}: {exc}",
                                retryable=not type(exc).__name__.startswith("SMTPRecipients")) from None
        return
    if kind == "slack":
        await outbound.request("POST", config["webhook_url"],
                               json_body={"text": f"*{message.title}*\n{message.body()}"})
        return
    if kind == "telegram":
        url = f"{config.get('api_base') or TELEGRAM_API}/bot{config['bot_token']}/sendMessage"
        response = await outbound.request("POST", url, json_body={
            "chat_id": config["chat_id"], "text": f"{message.title}\n{message.body()}",
            "disable_web_page_preview": True})
        answer = response.json() if response.body else None
        if isinstance(answer, dict) and answer.get("ok") is False:
            raise OutboundError(f"telegram: {str(answer.get('description'))[:200]}")
        return
    if kind == "webhook":
        body = _encode({**context, "title": message.title, "text": message.text, "severity": message.severity,
                        "fields": message.fields, "url": message.url, "ts": time.time()})
        timestamp = str(int(time.time()))
        await outbound.request("POST", config["url"], content=body, headers={
            "Content-Type": "application/json", "X-Z4J-Timestamp": timestamp,
            "X-Z4J-Signature": signature(config["secret"], timestamp, body)})
        return
    raise OutboundError(f"unknown channel kind {kind!r}")
