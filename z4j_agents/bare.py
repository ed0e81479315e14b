"""The public API for emitting events by hand (custom queues, benchmarks).

    from z4j_agents.bare import Agent

    agent = Agent.from_env(engine="custom")      # Z4J_BRAIN_URL, Z4J_TOKEN, ...
    agent.task("job-1", "received", name="reports.build", args=[42], queue="default")
    agent.task("job-1", "started", worker="host-1")
    agent.task("job-1", "succeeded", result={"rows": 10}, runtime=0.42)
    agent.on_command("ping", lambda args: "pong")
    agent.stop()

Every call returns at once and never raises into the caller.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

from z4j_agents import protocol as p
from z4j_agents.config import AgentConfig
from z4j_agents.runtime import AgentRuntime, CommandHandler, installed_version

log = logging.getLogger("z4j.agent")

__all__ = ["Agent"]


class Agent:
    def __init__(self, config: AgentConfig, engine: str = "bare", *, start: bool = True) -> None:
        self.engine = engine
        self.runtime = AgentRuntime(config, engines=(engine,), version=installed_version())
        if start:
            self.runtime.start()

    @classmethod
    def from_env(cls, engine: str = "bare", **overrides: Any) -> Agent:
        return cls(AgentConfig.from_env(**overrides), engine)

    def task(self, task_id: str, kind: str, *, ts: float | None = None, **fields: Any) -> None:
        """Record that ``kind`` (sent, received, started, retried, succeeded,
        failed, revoked, rejected) happened to task ``task_id``."""
        fields.update(id=p.new_id(), task_id=task_id, engine=self.engine, kind=kind,
                      ts=time.time() if ts is None else ts)
        try:
            # Validated here, in the caller's thread, so that one bad event can
            # never become a batch the collector refuses again and again.
            event = _to_task_event(fields)
        except Exception as exc:  # noqa: BLE001 - bad fields are the caller's bug, never their crash
            log.error("z4j agent: invalid task event for %s: %s", task_id, exc)
            return
        self.runtime.emit(event)

    def worker(self, worker: str, kind: str = "heartbeat", **info: Any) -> None:
        self._emit_checked(p.WorkerEvent, {"id": p.new_id(), "worker": worker, "engine": self.engine, "kind": kind,
                                           "ts": time.time(), "info": info or None})

    def queue(self, queue: str, depth: int) -> None:
        self._emit_checked(p.QueueEvent, {"id": p.new_id(), "queue": queue, "engine": self.engine,
                                          "ts": time.time(), "depth": depth})

    def _emit_checked(self, kind: type, fields: dict[str, Any]) -> None:
        try:
            event = msgspec.convert(fields, kind)
        except Exception as exc:  # noqa: BLE001
            log.error("z4j agent: invalid %s event: %s", kind.__name__, exc)
            return
        self.runtime.emit(event)

    def on_command(self, action: str, handler: CommandHandler) -> None:
        """Register before the agent connects (``start=False``, then ``start()``):
        the actions an agent can do are announced when it connects."""
        self.runtime.on_command(action, handler)

    def start(self) -> None:
        self.runtime.start()

    def flush(self, timeout: float = 10.0) -> bool:
        return self.runtime.flush(timeout)

    def stop(self, timeout: float = 5.0) -> bool:
        return self.runtime.stop(timeout)


_TASK_FIELDS = frozenset(p.TaskEvent.__struct_fields__)


def _to_task_event(fields: dict[str, Any]) -> p.TaskEvent:
    unknown = fields.keys() - _TASK_FIELDS
    if unknown:
        raise TypeError(f"unknown field(s) {', '.join(sorted(unknown))}")
    try:
        return msgspec.convert(fields, p.TaskEvent)
    except msgspec.ValidationError:
        # Arbitrary objects in args/kwargs/result are fine (redaction turns
        # them into reprs); only the typed fields must be right.
        payload = {k: fields.pop(k) for k in ("args", "kwargs", "result", "extra") if k in fields}
        event = msgspec.convert(fields, p.TaskEvent)
        for key, value in payload.items():
            setattr(event, key, value)
        return event
