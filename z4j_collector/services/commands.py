"""Commands: actions sent to agents, with their results stored.

A command is stored ``pending``, sent to one connected agent that declared
the action (``dispatched``), and closed by the agent's result
(``succeeded``/``failed``) or by the timeout (``timeout``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from z4j_agents import protocol as p
from z4j_collector.errors import Conflict, NotFound
from z4j_collector.services.agents import AgentRegistry
from z4j_collector.store.base import SqlStore


class CommandService:
    def __init__(self, store: SqlStore, registry: AgentRegistry, timeout_s: float = 60.0) -> None:
        self.store = store
        self.registry = registry
        self.timeout_s = timeout_s
        self._waiters: dict[str, asyncio.Future[None]] = {}

    async def send(
        self,
        project_id: int,
        action: str,
        args: dict[str, Any],
        *,
        requested_by: str,
        agent_id: int | None = None,
        engine: str | None = None,
        wait_s: float = 0.0,
    ) -> dict[str, Any]:
        if agent_id is not None:
            session = self.registry.get(agent_id)
            if session is None or session.project_id != project_id:
                raise Conflict(f"agent {agent_id} is not connected", code="agent_offline")
            session = self.registry.get(agent_id, action)
            if session is None:
                raise Conflict(f"agent {agent_id} cannot do {action!r}", code="unsupported_action")
        else:
            session = self.registry.find(project_id, action, engine)
            if session is None:
                where = f" for engine {engine!r}" if engine else ""
                raise Conflict(f"no connected agent can do {action!r}{where}", code="no_agent")
        command_id = p.new_id()
        await self.store.create_command(command_id, project_id, session.agent_id, action, args, requested_by)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[command_id] = done
        asyncio.get_running_loop().call_later(self.timeout_s, self._expire, command_id)
        try:
            await session.send_command(p.Command(command_id=command_id, action=action, args=args, engine=engine))
            await self.store.command_dispatched(command_id)
        except Exception as exc:  # noqa: BLE001 - the agent went away while we sent
            await self.store.command_finished(command_id, "failed", None, f"could not reach the agent: {exc}")
        if wait_s > 0:
            try:
                await asyncio.wait_for(asyncio.shield(done), timeout=wait_s)
            except TimeoutError:
                pass
        return await self.get(project_id, command_id)

    async def get(self, project_id: int, command_id: str) -> dict[str, Any]:
        command = await self.store.get_command(project_id, command_id)
        if command is None:
            raise NotFound(f"no command {command_id!r}")
        return command

    async def on_result(self, agent_id: int, result: p.CommandResult) -> None:
        state = "succeeded" if result.ok else "failed"
        if not await self.store.command_finished(result.command_id, state, result.result, result.error, agent_id):
            return  # not this agent's command, or already closed: ignore
        waiter = self._waiters.pop(result.command_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self, command_id: str) -> None:
        waiter = self._waiters.pop(command_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
            asyncio.ensure_future(
                self.store.command_finished(command_id, "timeout", None, f"no result within {self.timeout_s:.0f} s")
            )
