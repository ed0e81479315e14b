"""Collector settings: command-line flags > environment > defaults."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from z4j_collector.errors import ConfigError

DEFAULT_PORT = 7400


def z4j_home() -> Path:
    return Path(os.environ.get("Z4J_HOME") or Path.home() / ".z4j").expanduser()


def default_db_url() -> str:
    return f"sqlite:///{z4j_home() / 'z4j.db'}"


def normalize_db_url(url: str) -> str:
    """Accept ``sqlite:///path``, ``postgresql://…`` (or ``postgres://…``)."""
    url = url.strip()
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql+psycopg://"):
        url = "postgresql://" + url[len("postgresql+psycopg://"):]
    if url.startswith("postgresql://"):
        return url
    if url.startswith("sqlite:///"):
        if len(url) == len("sqlite:///"):
            raise ConfigError("database URL sqlite:/// names no file")
        return url
    raise ConfigError(
        f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
    )


def dialect_of(url: str) -> str:
    return "postgresql" if url.startswith("postgresql://") else "sqlite"


def env_number(var: str, default: float) -> float:
    """A positive, finite number from the environment (``default`` when unset)."""
    raw = os.environ.get(var)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a number, got {raw!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{var} must be more than 0, got {raw!r}")
    return value


# (Settings field, environment variable, default), all in seconds.
_DURATIONS = (
    ("session_idle_s", "Z4J_SESSION_IDLE_S", 8 * 3600),
    ("session_max_s", "Z4J_SESSION_MAX_S", 7 * 86400),
    ("login_window_s", "Z4J_LOGIN_WINDOW_S", 60.0),
    ("invite_ttl_s", "Z4J_INVITE_TTL_S", 7 * 86400),
    ("reset_ttl_s", "Z4J_RESET_TTL_S", 3600.0),
    ("checkpoint_interval_s", "Z4J_AUDIT_CHECKPOINT_S", 3600.0),
    ("schedule_sync_s", "Z4J_SCHEDULE_SYNC_S", 10.0),
)


@dataclass(frozen=True)
class SmtpSettings:
    """Outgoing mail (invitations, password resets); unset: links are only returned."""

    host: str
    port: int
    sender: str
    security: str = "none"
    """none · starttls · tls"""
    user: str | None = None
    password: str | None = None

    @classmethod
    def from_env(cls) -> SmtpSettings | None:
        host = os.environ.get("Z4J_SMTP_HOST")
        if not host:
            return None
        security = os.environ.get("Z4J_SMTP_SECURITY", "starttls").lower()
        if security not in ("none", "starttls", "tls"):
            raise ConfigError(f"Z4J_SMTP_SECURITY must be none, starttls or tls, got {security!r}")
        port = int(env_number("Z4J_SMTP_PORT", {"none": 25, "starttls": 587, "tls": 465}[security]))
        sender = os.environ.get("Z4J_SMTP_FROM") or ""
        if "@" not in sender:
            raise ConfigError("Z4J_SMTP_FROM must be the sender's e-mail address when Z4J_SMTP_HOST is set")
        return cls(host, port, sender, security, os.environ.get("Z4J_SMTP_USER") or None,
                   os.environ.get("Z4J_SMTP_PASSWORD") or None)


@dataclass(frozen=True)
class Settings:
    db_url: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    heartbeat_s: float = 10.0
    ingest_queue_batches: int = 64
    """Batches waiting for the writer before gateways stop reading sockets."""
    stream_interval_s: float = 0.1
    """How often live client streams are flushed (changes are coalesced)."""
    public_url: str | None = None
    """How users and agents reach this collector (links in e-mails); $Z4J_PUBLIC_URL."""
    session_idle_s: float = 8 * 3600
    session_max_s: float = 7 * 86400
    login_window_s: float = 60.0
    login_max_failures: int = 5
    """Failed logins per account in one window before further tries wait."""
    login_max_failures_source: int = 20
    """Failed logins from one address (any account) in one window; $Z4J_LOGIN_MAX_FAILURES_SOURCE."""
    invite_ttl_s: float = 7 * 86400
    reset_ttl_s: float = 3600.0
    setup_ttl_s: float = 24 * 3600
    checkpoint_interval_s: float = 3600.0
    schedule_sync_s: float = 10.0
    """How often schedules are read from each connected scheduler's agent."""
    smtp: SmtpSettings | None = None
    metrics_token: str | None = None
    """When set, GET /metrics needs ``Authorization: Bearer <it>``; $Z4J_METRICS_TOKEN."""

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @classmethod
    def load(cls, db: str | None = None, host: str | None = None, port: int | None = None) -> Settings:
        db_url = normalize_db_url(db or os.environ.get("Z4J_DB") or default_db_url())
        host = host or os.environ.get("Z4J_HOST") or "127.0.0.1"
        if port is None:
            raw = os.environ.get("Z4J_PORT")
            try:
                port = int(raw) if raw else DEFAULT_PORT
            except ValueError:
                raise ConfigError(f"Z4J_PORT must be a number, got {raw!r}") from None
        if not 0 < port < 65536:
            raise ConfigError(f"port must be between 1 and 65535, got {port}")
        durations = {name: env_number(var, default) for name, var, default in _DURATIONS}
        return cls(
            db_url=db_url, host=host, port=port, public_url=os.environ.get("Z4J_PUBLIC_URL") or None,
            login_max_failures=int(env_number("Z4J_LOGIN_MAX_FAILURES", 5)),
            login_max_failures_source=int(env_number("Z4J_LOGIN_MAX_FAILURES_SOURCE", 20)),
            smtp=SmtpSettings.from_env(), metrics_token=os.environ.get("Z4J_METRICS_TOKEN") or None, **durations,
        )

    @property
    def dialect(self) -> str:
        return dialect_of(self.db_url)
