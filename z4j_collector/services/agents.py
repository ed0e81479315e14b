"""The registry of connected agent sessions."""

from __future__ import annotations

from typing import Protocol

from z4j_agents import protocol as p
from z4j_collector.errors import CollectorError


def raise_bad_name(name: str) -> None:
    raise CollectorError(f"agent name must be 1 to 200 characters, got {name!r}", code="bad_name")


class AgentSession(Protocol):
    agent_id: int
    project_id: int
    engines: list[str]
    capabilities: list[str]

    async def send_command(self, command: p.Command) -> None: ...

    async def close(self, reason: str) -> None: ...


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

    async def disconnect(self, agent_id: int, reason: str) -> int:
        """Close every live connection of an agent; how many there were."""
        sessions = list(self._sessions.get(agent_id, []))
        for session in sessions:
            await session.close(reason)
        return len(sessions)

    def all_sessions(self) -> list[AgentSession]:
        """Every live connection (of one agent: oldest first)."""
        return [session for sessions in self._sessions.values() for session in sessions]

    def find(self, project_id: int, action: str, engine: str | None) -> AgentSession | None:
        for sessions in self._sessions.values():
            for session in reversed(sessions):
                if session.project_id != project_id or action not in session.capabilities:
                    continue
                if engine is None or engine in session.engines:
                    return session
        return None
