"""Collector settings: command-line flags > environment > defaults."""

from __future__ import annotations

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
        return cls(db_url=db_url, host=host, port=port)

    @property
    def dialect(self) -> str:
        return dialect_of(self.db_url)
