"""The taskiq agent of one process: its runtime, its worker identity, and a
daemon thread for heartbeats and queue depths.

One per process at most, built by the middleware in the process that runs
the broker (``startup()``: a ``taskiq worker`` process after the CLI forked
it, the ``taskiq scheduler`` process, or a producer at its first kick), so a
``--workers 4`` worker has four agents, one connection each, and the CLI's
supervising process none.

Broker, result backend and schedule sources are async objects bound to the
host's event loop. Commands run on the agent's own threads and hand their
I/O to that loop as coroutines (:meth:`TaskiqAgent.on_loop`): the loop
schedules them like any other task and is never blocked; the command
thread waits for the answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.config import AgentConfig
from z4j_agents.env_options import engine_options
from z4j_agents.monitor import Monitor as BaseMonitor
from z4j_agents.runtime import AgentRuntime, CommandError, installed_version
from z4j_agents.taskiq import brokers

log = logging.getLogger("z4j.taskiq")

ENGINE = "taskiq"
WORKER, SCHEDULER, CLIENT = "worker", "scheduler", "client"
LOOP_TIMEOUT_S = 10.0


def options_from_env(env: Any = None) -> dict[str, Any]:
    return engine_options(os.environ if env is None else env, "taskiq")


class TaskiqAgent:
    engine = ENGINE

    def __init__(self, broker: Any, config: AgentConfig, role: str, *, redactor: Any = None,
                 heartbeat_s: float = 10.0, queue_depth_s: float = 5.0, queues: tuple[str, ...] = ()) -> None:
        self.broker = broker
        self.config = config
        self.role = role
        self.runtime = AgentRuntime(config, engines=(ENGINE,), version=installed_version(), redactor=redactor)
        self.heartbeat_s = heartbeat_s
        self.queue_depth_s = queue_depth_s
        self.queues: list[str] = []
        for name in (brokers.default_queue(broker), *queues):
            self.note_queue(name)
        self.pid = os.getpid()
        self.worker = f"taskiq-{self.pid}@{socket.gethostname()}" if role == WORKER else None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.processed = 0
        self.running: dict[str, tuple[float, Any, str]] = {}
        """task id -> (start time, the asyncio task running it, task name), in this process."""
        self.cancelling: set[str] = set()
        self.monitor: Monitor | None = None
        self.cancel_listener: Callable[[bytes], None] | None = None
        """Answers cancel requests other processes publish (actions.py); heard by the monitor."""

    @property
    def secret(self) -> str:
        return self.config.hmac_secret

    def note_queue(self, name: str | None) -> None:
        if name and name not in self.queues and len(self.queues) < 1000:
            self.queues.append(name)

    # ------------------------------------------------------------ the host loop

    def on_loop(self, make: Callable[[], Awaitable[Any]], what: str, timeout: float = LOOP_TIMEOUT_S) -> Any:
        """Run ``make()`` on the host's event loop from a command thread; its result."""
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            raise CommandError(f"cannot {what}: the {self.role} process's event loop is not running")

        async def run() -> Any:
            return await make()

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise CommandError(f"cannot {what}: no answer within {timeout:.0f} s (broker or backend busy or "
                               "unreachable); it may still happen") from None

    # ------------------------------------------------------------ worker events

    def worker_event(self, kind: str) -> None:
        if self.worker is None:
            return
        try:
            info = self.worker_info()
        except Exception:  # noqa: BLE001
            log.exception("z4j taskiq: could not read worker facts")
            info = None
        self.runtime.emit(p.WorkerEvent(id=p.new_id(), worker=self.worker, engine=ENGINE, kind=kind,
                                        ts=time.time(), info=info))

    def worker_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"pid": self.pid, "version": installed_version("taskiq"), "broker": type(self.broker).__name__,
                                "processed": self.processed, "active": len(self.running),
                                "queues": [q for q in (brokers.default_queue(self.broker),) if q]}
        try:
            info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            pass
        return info

    def start_monitor(self) -> None:
        if self.monitor is None:
            self.monitor = Monitor(self)
            self.monitor.start()

    def stop(self, timeout: float = 5.0) -> bool:
        if self.monitor is not None:
            self.monitor.stop()
        return self.runtime.stop(timeout)


class Monitor(BaseMonitor):
    """Heartbeats and queue depths, on one daemon thread (never the event loop); between
    rounds it answers the cancel requests of other processes."""

    engine = "taskiq"

    def __init__(self, agent: TaskiqAgent) -> None:
        super().__init__(agent, log)
        self._client: Any = None
        self._pubsub: Any = None

    def sampling(self) -> bool:
        agent = self.agent
        sampling = agent.queue_depth_s > 0 and brokers.kind(agent.broker) in (brokers.LIST, brokers.STREAM)
        if agent.queue_depth_s > 0 and not sampling:
            log.info("z4j taskiq: queue depths are sampled on taskiq-redis list and stream brokers only "
                     "(this one is %s)", type(agent.broker).__name__)
        return sampling

    def wait(self, timeout: float) -> None:
        self._listen(min(timeout, 1.0))

    def finished(self) -> None:
        self._close_pubsub()

    def _listen(self, timeout: float) -> None:
        """Wait up to ``timeout``, answering cancel requests of other processes meanwhile."""
        agent = self.agent
        if agent.cancel_listener is None or brokers.kind(agent.broker) not in (brokers.LIST, brokers.STREAM):
            self._stop.wait(timeout)
            return
        try:
            if self._pubsub is None:
                from z4j_agents.taskiq.actions import CANCEL_CHANNEL

                self._pubsub = brokers.sync_client(agent.broker).pubsub(ignore_subscribe_messages=True)
                self._pubsub.subscribe(CANCEL_CHANNEL)
            message = self._pubsub.get_message(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - Redis away: plain waiting, try again later
            self._close_pubsub()
            self.once(f"pubsub:{type(exc).__name__}", logging.WARNING,
                      "z4j taskiq: cannot listen for cancel requests: %s: %s", type(exc).__name__, exc)
            self._stop.wait(timeout)
            return
        if message and message.get("type") == "message":
            agent.cancel_listener(message["data"])

    def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass

    def sample_depths(self) -> None:
        agent = self.agent
        try:
            if self._client is None:
                self._client = brokers.sync_client(agent.broker)
            depths = {q: brokers.depth(self._client, agent.broker, q) for q in list(agent.queues)}
        except Exception as exc:  # noqa: BLE001 - Redis may be down; try again next round
            self.once(f"err:{type(exc).__name__}", logging.WARNING,
                      "z4j taskiq: could not sample queue depths: %s: %s", type(exc).__name__, exc)
            self.close()
            return
        now = time.time()
        for name, value in depths.items():
            if value is not None:
                agent.runtime.emit(p.QueueEvent(id=p.new_id(), queue=name, engine=ENGINE, ts=now, depth=value))
