"""The agent gateway: one WebSocket per agent, signed frames both ways.

Bad input is refused with an unsigned error frame (a stable code and a human
message) followed by a close with a 44xx code; nothing of the refused frame
is stored, and other connections are not affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import os
import typing
from typing import Any

import msgspec

from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from z4j_agents import protocol as p
from z4j_agents.redaction import Redactor, redact_event, redact_info
from z4j_collector.services.agents import AgentRegistry
from z4j_collector.services.commands import CommandService
from z4j_collector.services.ingest import IngestWriter
from z4j_collector.store.base import AgentRow, IngestItem, SqlStore

log = logging.getLogger("z4j.collector.gateway")

CLOSE_BAD_FRAME = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TIMEOUT = 4408
CLOSE_UNAVAILABLE = 4503
HANDSHAKE_TIMEOUT_S = 10.0
MAX_UNACKED_PER_CONNECTION = 16
CLEAN_SLICE = 250  # events cleaned (redacted again) between two turns of the event loop


class Refused(Exception):
    def __init__(self, code: str, message: str, close_code: int) -> None:
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code


class GatewaySession:
    """One connected agent (implements services.agents.AgentSession)."""

    def __init__(self, socket: WebSocket, agent: AgentRow, hello: p.Hello, key: bytes, session_id: str) -> None:
        self.socket = socket
        self.session_id = session_id
        self.agent_id = agent.id
        self.project_id = agent.project_id
        self.engines = list(hello.engines)
        self.capabilities = list(hello.capabilities)
        self.signer = p.Signer(key)
        self.verifier = p.Verifier(key)
        self.send_lock = asyncio.Lock()
        self.inflight = asyncio.Semaphore(MAX_UNACKED_PER_CONNECTION)

    async def send(self, frame: p.Frame) -> None:
        async with self.send_lock:
            await self.socket.send_bytes(self.signer.seal(frame))

    async def send_command(self, command: p.Command) -> None:
        await self.send(command)

    async def close(self, reason: str) -> None:
        """End this connection (the agent was revoked or its secret rotated)."""
        with contextlib.suppress(Exception):
            await self.socket.close(code=CLOSE_FORBIDDEN, reason=reason[:120])


@websocket("/agent/ws", opt={"permission": "agent"})
async def agent_gateway(socket: WebSocket) -> None:
    state = socket.app.state
    await Gateway(state.store, state.writer, state.registry, state.commands, state.redactor).serve(socket)


class Gateway:
    def __init__(
        self, store: SqlStore, writer: IngestWriter, registry: AgentRegistry, commands: CommandService,
        redactor: Redactor,
    ) -> None:
        self.store = store
        self.writer = writer
        self.registry = registry
        self.commands = commands
        self.redactor = redactor

    async def serve(self, socket: WebSocket) -> None:
        await socket.accept()
        session: GatewaySession | None = None
        pending: set[asyncio.Task[None]] = set()
        try:
            session = await self._handshake(socket)
            self.registry.add(session)
            while True:
                frame = session.verifier.open(await socket.receive_bytes())
                if isinstance(frame, p.EventBatch):
                    await session.inflight.acquire()
                    task = asyncio.create_task(self._ingest(session, frame))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                elif isinstance(frame, p.CommandResult):
                    await self.commands.on_result(session.agent_id, frame)
                elif isinstance(frame, p.Heartbeat):
                    await self.store.agent_heartbeat(session.agent_id, frame.dropped)
                else:
                    raise Refused("unexpected_frame", f"agents may not send {type(frame).__name__} frames", CLOSE_BAD_FRAME)
        except WebSocketDisconnect:
            pass
        except p.ProtocolError as exc:
            await self._refuse(socket, session, Refused(exc.code, exc.message, CLOSE_BAD_FRAME))
        except Refused as exc:
            await self._refuse(socket, session, exc)
        except Exception as exc:  # noqa: BLE001 - e.g. the database went away
            log.exception("agent gateway failure")
            await self._refuse(socket, session, Refused("unavailable", f"collector error: {exc}", CLOSE_UNAVAILABLE))
        finally:
            for task in pending:
                task.cancel()
            if session is not None:
                self.registry.remove(session)

    async def _handshake(self, socket: WebSocket) -> GatewaySession:
        auth = socket.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refused("unauthorized", "missing agent token (Authorization: Bearer …)", CLOSE_UNAUTHORIZED)
        agent = await self.store.agent_by_token(p.token_hash(token.strip()))
        if agent is None:
            raise Refused("unknown_token", "unknown agent token", CLOSE_UNAUTHORIZED)
        if agent.revoked:
            raise Refused("revoked", f"agent {agent.name!r} has been revoked", CLOSE_FORBIDDEN)
        try:
            raw = await asyncio.wait_for(socket.receive_bytes(), timeout=HANDSHAKE_TIMEOUT_S)
        except TimeoutError:
            raise Refused("timeout", "no hello within 10 s", CLOSE_TIMEOUT) from None
        hello = p.Verifier(agent.frame_key).open(raw)
        if not isinstance(hello, p.Hello):
            raise Refused("unexpected_frame", f"expected hello, got {type(hello).__name__}", CLOSE_BAD_FRAME)
        if hello.project != agent.project:
            raise Refused(
                "wrong_project", f"this token belongs to project {agent.project!r}, not {hello.project!r}",
                CLOSE_FORBIDDEN,
            )
        server_nonce = os.urandom(16)
        welcome = p.Welcome(
            server_nonce=server_nonce, session_id=p.new_id(), agent_id=agent.id, project=agent.project,
            heartbeat_s=socket.app.state.settings.heartbeat_s,
        )
        await socket.send_bytes(p.Signer(agent.frame_key).seal(welcome))
        await self.store.agent_seen(agent.id, hello.hostname, hello.version, hello.engines)
        log.info("agent %s (%s) connected from %s", agent.name, agent.project, hello.hostname)
        key = p.session_key(agent.frame_key, hello.client_nonce, server_nonce)
        return GatewaySession(socket, agent, hello, key, welcome.session_id)

    async def _ingest(self, session: GatewaySession, batch: p.EventBatch) -> None:
        try:
            if len(batch.events) > p.MAX_EVENTS_PER_BATCH:
                raise Refused(
                    "too_many_events", f"batch of {len(batch.events)} events exceeds {p.MAX_EVENTS_PER_BATCH}",
                    CLOSE_BAD_FRAME,
                )
            events, rejected, reason = [], 0, None
            for start in range(0, len(batch.events), CLEAN_SLICE):
                if start:
                    # The ingest writer runs on this loop too and waits behind
                    # whatever holds it: let its next step in between slices.
                    await asyncio.sleep(0)
                kept, refused, why = self._clean(batch.events[start:start + CLEAN_SLICE])
                events.extend(kept)
                if refused:
                    rejected, reason = rejected + refused, why
            if rejected:
                log.warning("agent %s: %d event(s) refused: %s", session.agent_id, rejected, reason)
            item = IngestItem(session.project_id, session.agent_id, events, batch.dropped)
            outcome = await (await self.writer.submit(item))
            await session.send(p.BatchAck(
                batch_id=batch.batch_id, accepted=outcome.accepted, duplicates=outcome.duplicates,
                rejected=rejected, reason=reason,
            ))
        except Refused as exc:
            await self._refuse(session.socket, session, exc)
        except (WebSocketDisconnect, asyncio.CancelledError):
            pass
        except Exception as exc:  # noqa: BLE001 - not acked: the agent resends after reconnecting
            log.warning("batch %s not committed: %s", batch.batch_id, exc)
            await self._refuse(session.socket, session, Refused("unavailable", f"batch not committed: {exc}", CLOSE_UNAVAILABLE))
        finally:
            session.inflight.release()

    def _clean(self, events: list[Any]) -> tuple[list[Any], int, str | None]:
        """Redact again, remove NUL characters, refuse events that cannot be
        stored. An agent may be old, misconfigured or not ours; a refused
        event is counted in the ack instead of holding the batch back forever."""
        kept, rejected, reason = [], 0, None
        for ev in events:
            problem = _key_problem(ev)
            if problem is not None:
                rejected, reason = rejected + 1, problem
                continue
            typed, loose = _STRING_FIELDS[type(ev)]
            if "\x00" in "".join(filter(None, typed(ev))) or (loose and str in map(type, loose(ev)) and any(
                    "\x00" in v for v in loose(ev) if type(v) is str)):
                for field, value in zip(ev.__struct_fields__, astuple(ev)):
                    if type(value) is str and "\x00" in value:
                        setattr(ev, field, value.replace("\x00", "\ufffd"))
            if type(ev) is p.TaskEvent:
                redact_event(self.redactor, ev)
            elif type(ev) is p.WorkerEvent:
                redact_info(self.redactor, ev)
            kept.append(ev)
        return kept, rejected, reason

    async def _refuse(self, socket: WebSocket, session: GatewaySession | None, exc: Refused) -> None:
        who = f"agent {session.agent_id}" if session else "unauthenticated agent"
        log.warning("refused %s: %s: %s", who, exc.code, exc.message)
        try:
            await socket.send_bytes(p.encode_error(exc.code, exc.message))
            await socket.close(code=exc.close_code, reason=exc.message[:120])
        except Exception:  # noqa: BLE001 - the peer is already gone
            pass


# What the store can keep (column sizes in migrations/versions/…_initial.py):
# the fields that are keys, per event type.
_LIMITS = {
    p.TaskEvent: (("id", 64), ("engine", 32), ("task_id", 255)),
    p.WorkerEvent: (("id", 64), ("engine", 32), ("worker", 255)),
    p.QueueEvent: (("id", 64), ("engine", 32), ("queue", 255)),
}
astuple = msgspec.structs.astuple


def _string_fields(cls: type) -> tuple[Any, Any]:
    """Getters for the fields of ``cls`` that are always str or None, and for
    those that may hold a str (``Any``): together every field a str can be
    decoded into, so one join finds a NUL without a Python loop per field."""
    typed, loose = [], []
    for f in msgspec.structs.fields(cls):
        if f.type is Any:
            loose.append(f.name)
        elif f.type is str or f.type == (str | None) or typing.get_origin(f.type) is typing.Literal:
            typed.append(f.name)
    # attrgetter of one name returns the value, not a tuple: name it twice.
    return operator.attrgetter(*typed), (operator.attrgetter(*loose, *loose[:1]) if loose else None)


_STRING_FIELDS = {cls: _string_fields(cls) for cls in _LIMITS}


def _key_problem(ev: Any) -> str | None:
    for field, limit in _LIMITS[type(ev)]:
        value = getattr(ev, field)
        if not value or len(value) > limit or "\x00" in value:
            return f"{type(ev).__name__}.{field} must be 1 to {limit} characters without NUL"
    return None
