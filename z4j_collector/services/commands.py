"""Commands: actions sent to agents, with their results stored.

A command is stored ``pending``, sent to one connected agent that declared
the action (``dispatched``), and closed by the agent's result
(``succeeded``/``failed``) or by the timeout (``timeout``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.redaction import default_redactor
from z4j_collector.errors import Conflict, NotFound
from z4j_collector.services.agents import AgentRegistry
from z4j_collector.services.audit import Actor, Audit
from z4j_collector.store.base import SqlStore


class CommandService:
    def __init__(self, store: SqlStore, registry: AgentRegistry, audit: Audit, timeout_s: float = 60.0) -> None:
        self.store = store
        self.registry = registry
        self.audit = audit
        self.timeout_s = timeout_s
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._asks: dict[str, tuple[int, asyncio.Future[p.CommandResult]]] = {}
        # Commands another node sent through one of this node's agent
        # connections: command id -> (that node, whether it is an ask).
        self._forwarded: dict[str, tuple[str, bool]] = {}
        self.cluster: Any = None

    async def send(
        self,
        project_id: int,
        action: str,
        args: dict[str, Any],
        *,
        actor: Actor,
        agent_id: int | None = None,
        engine: str | None = None,
        wait_s: float = 0.0,
        shown_args: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        # The audit log shows redacted arguments (``shown_args`` instead, when
        # the args hold something only an agent reads, such as a sealed replay).
        shown = default_redactor().redact(args if shown_args is None else shown_args)[0]
        try:
            session = self._pick(project_id, action, agent_id, engine)
        except Conflict as exc:
            await self.audit.write(actor.entry(project_id, f"command.{action}", _target(args, agent_id, engine),
                                               outcome="refused", args=shown, reason=exc.message))
            raise
        command_id = p.new_id()

        async def tx_fn(tx: Any) -> None:
            await self.store.insert_command(tx, command_id, project_id, session.agent_id, action, args, actor.name)
            await self.audit.record(tx, actor.entry(project_id, f"command.{action}", _target(args, agent_id, engine),
                                                    outcome="sent", args=shown, command=command_id,
                                                    agent=session.agent_id))

        await self.store.write(tx_fn)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[command_id] = done
        asyncio.get_running_loop().call_later(self.timeout_s, self._expire, command_id)
        try:
            sent_at = time.time()
            await session.send_command(p.Command(command_id=command_id, action=action, args=args, engine=engine))
            await self.store.command_dispatched(command_id, sent_at)
        except Exception as exc:  # noqa: BLE001 - the agent went away while we sent
            await self._finish(command_id, "failed", None, f"could not reach the agent: {exc}")
        if wait_s > 0:
            try:
                await asyncio.wait_for(asyncio.shield(done), timeout=wait_s)
            except TimeoutError:
                pass
        return await self.get(project_id, command_id)

    def _pick(self, project_id: int, action: str, agent_id: int | None, engine: str | None) -> Any:
        if agent_id is not None:
            session = self.registry.get(agent_id)
            if session is None or session.project_id != project_id:
                raise Conflict(f"agent {agent_id} is not connected", code="agent_offline")
            session = self.registry.get(agent_id, action)
            if session is None:
                raise Conflict(f"agent {agent_id} cannot do {action!r}", code="unsupported_action")
            return session
        session = self.registry.find(project_id, action, engine)
        if session is None:
            where = f" for engine {engine!r}" if engine else ""
            raise Conflict(f"no connected agent can do {action!r}{where}", code="no_agent")
        return session

    async def _finish(self, command_id: str, state: str, result: Any, error: str | None,
                      agent_id: int | None = None) -> bool:
        """Close the command and audit its outcome in one transaction."""

        async def tx_fn(tx: Any) -> bool:
            closed = await self.store.command_finished(tx, command_id, state, result, error, agent_id)
            if closed is None:
                return False
            project_id, action = closed
            outcome = {"succeeded": "ok", "failed": "failed", "timeout": "timeout"}[state]
            detail = {"command": command_id} | ({"error": error[:500]} if error else {})
            await self.audit.record(tx, Actor(f"agent:{agent_id}" if agent_id else "system").entry(
                project_id, f"command.{action}.result", f"command:{command_id}", outcome=outcome, **detail))
            return True

        return await self.store.write(tx_fn)

    async def get(self, project_id: int, command_id: str) -> dict[str, Any]:
        command = await self.store.get_command(project_id, command_id)
        if command is None:
            raise NotFound(f"no command {command_id!r}")
        return command

    async def ask(self, session: Any, action: str, args: dict[str, Any], timeout_s: float = 15.0,
                  engine: str | None = None) -> p.CommandResult:
        """Send ``action`` to one connected agent session and wait for its result,
        neither stored nor audited here: reads (a schedule sync), or changes whose
        caller audits them with the change (services/schedules.py). TimeoutError
        after ``timeout_s``."""
        command_id = p.new_id()
        future: asyncio.Future[p.CommandResult] = asyncio.get_running_loop().create_future()
        self._asks[command_id] = (session.agent_id, future)
        try:
            await session.send_command(p.Command(command_id=command_id, action=action, args=args, engine=engine))
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._asks.pop(command_id, None)

    async def on_result(self, agent_id: int, result: p.CommandResult) -> None:
        forwarded = self._forwarded.pop(result.command_id, None)
        if forwarded is not None and self.cluster is not None:
            origin, is_ask = forwarded
            if is_ask:
                await self.cluster.send({"t": "res", "command_id": result.command_id, "ask": True, "ok": result.ok,
                                         "result": result.result, "error": result.error}, to=origin)
                return
            # A stored command: closed here, where the result arrived; the
            # node that sent it only has to wake whoever waits for it.
            await self._finish(result.command_id, "succeeded" if result.ok else "failed", result.result,
                               result.error, agent_id)
            await self.cluster.send({"t": "done", "command_id": result.command_id}, to=origin)
            return
        ask = self._asks.get(result.command_id)
        if ask is not None and ask[0] == agent_id:
            if not ask[1].done():
                ask[1].set_result(result)
            return
        state = "succeeded" if result.ok else "failed"
        if not await self._finish(result.command_id, state, result.result, result.error, agent_id):
            return  # not this agent's command, or already closed: ignore
        self.wake(result.command_id)

    # ------------------------------------------------------------ across nodes (services/cluster.py)

    def is_ask(self, command_id: str) -> bool:
        return command_id in self._asks

    def accept_forwarded(self, command_id: str, origin: str, is_ask: bool) -> None:
        self._forwarded[command_id] = (origin, is_ask)
        asyncio.get_running_loop().call_later(self.timeout_s, self._forwarded.pop, command_id, None)

    def forget_forwarded(self, command_id: str) -> None:
        self._forwarded.pop(command_id, None)

    async def on_remote_result(self, msg: dict[str, Any]) -> None:
        """The answer to a command this node sent to an agent on another node:
        an ask's result, or a refusal the other node could not store."""
        result = p.CommandResult(command_id=msg["command_id"], ok=bool(msg["ok"]), result=msg.get("result"),
                                 error=msg.get("error"))
        ask = self._asks.get(result.command_id)
        if ask is not None:
            if not ask[1].done():
                ask[1].set_result(result)
            return
        await self._finish(result.command_id, "succeeded" if result.ok else "failed", result.result, result.error)
        self.wake(result.command_id)

    def wake(self, command_id: str) -> None:
        waiter = self._waiters.pop(command_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self, command_id: str) -> None:
        waiter = self._waiters.pop(command_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
            asyncio.ensure_future(
                self._finish(command_id, "timeout", None, f"no result within {self.timeout_s:.0f} s")
            )


def _target(args: dict[str, Any], agent_id: int | None, engine: str | None) -> str:
    for key in ("task_id", "queue", "schedule", "worker"):
        if isinstance(args.get(key), str):
            return f"{key.split('_')[0]}:{args[key]}"
    if agent_id is not None:
        return f"agent:{agent_id}"
    return f"engine:{engine}" if engine else "project"
