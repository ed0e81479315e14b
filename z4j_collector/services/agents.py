"""The registry of connected agent sessions."""

from __future__ import annotations

from collections.abc import Callable
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
    """Which agents are connected, right now: to this collector process
    (local sessions), and, in a cluster, to the other collectors (``remote``,
    kept by services/cluster.py). Lookups prefer a local connection."""

    def __init__(self) -> None:
        # One agent token may be used by several processes at once (a worker
        # and its forked children): every live connection counts.
        self._sessions: dict[int, list[AgentSession]] = {}
        self.remote: list[AgentSession] = []
        self.listener: Callable[[str, AgentSession], None] | None = None
        """Called with ("add" | "remove", session) when a local connection opens or closes."""

    def add(self, session: AgentSession) -> None:
        self._sessions.setdefault(session.agent_id, []).append(session)
        if self.listener is not None:
            self.listener("add", session)

    def remove(self, session: AgentSession) -> None:
        sessions = self._sessions.get(session.agent_id, [])
        if session not in sessions:
            return
        sessions.remove(session)
        if not sessions:
            self._sessions.pop(session.agent_id, None)
        if self.listener is not None:
            self.listener("remove", session)

    def _of(self, agent_id: int) -> list[AgentSession]:
        """The agent's connections, remote ones first, then local, each oldest first."""
        return [s for s in self.remote if s.agent_id == agent_id] + self._sessions.get(agent_id, [])

    def connected_ids(self) -> set[int]:
        """The agents with a live connection (local or remote) at this moment."""
        return {s.agent_id for s in self.remote} | {a for a, sessions in self._sessions.items() if sessions}

    def get(self, agent_id: int, action: str | None = None) -> AgentSession | None:
        """The newest live local connection of the agent (that declared
        ``action``), else a remote one."""
        for session in reversed(self._of(agent_id)):
            if action is None or action in session.capabilities:
                return session
        return None

    def local_session(self, session_id: str) -> AgentSession | None:
        for sessions in self._sessions.values():
            for session in sessions:
                if getattr(session, "session_id", None) == session_id:
                    return session
        return None

    async def disconnect(self, agent_id: int, reason: str) -> int:
        """Close every live connection of an agent, here and on the other
        collectors; how many there were."""
        sessions = self._of(agent_id)
        for session in sessions:
            await session.close(reason)
        return len(sessions)

    def local_sessions(self) -> list[AgentSession]:
        """Every live connection to this process (of one agent: oldest first)."""
        return [session for sessions in self._sessions.values() for session in sessions]

    def all_sessions(self) -> list[AgentSession]:
        """Every live connection, this process's and the other collectors'."""
        return self.remote + self.local_sessions()

    def find(self, project_id: int, action: str, engine: str | None) -> AgentSession | None:
        for session in reversed(self.all_sessions()):
            if session.project_id != project_id or action not in session.capabilities:
                continue
            if engine is None or engine in session.engines:
                return session
        return None
