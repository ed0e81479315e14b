"""Agent credentials and the registry of connected agent sessions."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from z4j_agents import protocol as p
from z4j_collector.errors import NotFound
from z4j_collector.store.base import SqlStore


@dataclass(frozen=True)
class AgentCredentials:
    agent_id: int
    project: str
    name: str
    token: str
    hmac_secret: str


async def create_agent(store: SqlStore, project: str, name: str) -> AgentCredentials:
    """Mint a token and an HMAC secret; only their one-way images are stored."""
    project_id = await store.project_id(project)
    if project_id is None:
        raise NotFound(f"no project {project!r}")
    name = name.strip()
    if not name or len(name) > 200:
        raise_bad_name(name)
    token = "z4ja_" + secrets.token_urlsafe(32)
    secret = secrets.token_urlsafe(32)
    agent_id = await store.create_agent(project_id, name, p.token_hash(token), p.frame_key(secret))
    return AgentCredentials(agent_id, project, name, token, secret)


def raise_bad_name(name: str) -> None:
    from z4j_collector.errors import CollectorError

    raise CollectorError(f"agent name must be 1 to 200 characters, got {name!r}", code="bad_name")


class AgentSession(Protocol):
    agent_id: int
    project_id: int
    engines: list[str]
    capabilities: list[str]

    async def send_command(self, command: p.Command) -> None: ...


class AgentRegistry:
    """Which agents are connected to this collector process, right now."""

    def __init__(self) -> None:
        # One agent token may be used by several processes at once (a worker
        # and its forked children): every live connection counts.
        self._sessions: dict[int, list[AgentSession]] = {}

    def add(self, session: AgentSession) -> None:
        self._sessions.setdefault(session.agent_id, []).append(session)

    def remove(self, session: AgentSession) -> None:
        sessions = self._sessions.get(session.agent_id, [])
        if session in sessions:
            sessions.remove(session)
        if not sessions:
            self._sessions.pop(session.agent_id, None)

    def get(self, agent_id: int, action: str | None = None) -> AgentSession | None:
        """The newest live connection of the agent (that declared ``action``)."""
        for session in reversed(self._sessions.get(agent_id, [])):
            if action is None or action in session.capabilities:
                return session
        return None

    def find(self, project_id: int, action: str, engine: str | None) -> AgentSession | None:
        for sessions in self._sessions.values():
            for session in reversed(sessions):
                if session.project_id != project_id or action not in session.capabilities:
                    continue
                if engine is None or engine in session.engines:
                    return session
        return None
