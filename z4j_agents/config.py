"""Agent configuration from the environment (the contract in PRODUCT.md §2)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


@dataclass(frozen=True)
class AgentConfig:
    brain_url: str
    """ws:// or wss:// URL of the collector's agent gateway."""
    token: str
    hmac_secret: str
    project: str = "default"
    agent_name: str = ""
    batch_size: int = 1000
    flush_interval: float = 0.1
    buffer_max: int = 100_000
    max_inflight: int = 16
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    connect_timeout: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> AgentConfig:
        env = os.environ if env is None else env
        missing = [k for k in ("Z4J_BRAIN_URL", "Z4J_TOKEN", "Z4J_HMAC_SECRET") if not env.get(k)]
        if missing:
            raise ConfigError(f"missing environment variable(s): {', '.join(missing)}")
        values: dict[str, object] = {
            "brain_url": gateway_url(env["Z4J_BRAIN_URL"]),
            "token": env["Z4J_TOKEN"],
            "hmac_secret": env["Z4J_HMAC_SECRET"],
            "project": env.get("Z4J_PROJECT_ID") or "default",
            "agent_name": env.get("Z4J_AGENT_NAME") or default_agent_name(),
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def default_agent_name() -> str:
    return socket.gethostname() or "agent"


def gateway_url(url: str) -> str:
    """Accept http(s):// or ws(s):// collector URLs; point at the gateway."""
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ConfigError(f"Z4J_BRAIN_URL must be an http(s):// or ws(s):// URL, got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/agent/ws"):
        path += "/agent/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))
