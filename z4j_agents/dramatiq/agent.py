"""The Dramatiq agent: one per process, started from the broker's own hooks.

The ``dramatiq`` CLI forks worker processes (each runs several worker
threads) and each child imports the broker module for itself, so each child
builds its own :class:`Z4JMiddleware` and its own agent:

1. ``after_process_boot`` (in the child, right after the broker module was
   imported): the agent is built, the actions are declared, the runtime
   connects; the bootstrap line is logged. A ``Worker`` started from code
   (no CLI) gets its agent at ``before_worker_boot`` instead.
2. ``after_worker_boot``: the worker goes ``online``; a monitor thread sends
   a heartbeat every ``heartbeat_s`` (10 s) and samples queue depths every
   ``queue_depth_s`` (5 s) on a Redis broker (one process of the fleet at a
   time: a Redis ``SET NX PX`` token decides which).
3. ``after_worker_shutdown`` (every worker thread has stopped): ``offline``,
   then the agent flushes (up to 5 s) and stops, so nothing captured is lost.

A process that only sends messages (a web application importing the broker
module) starts its agent at its first enqueue.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.config import AgentConfig
from z4j_agents.env_options import engine_options
from z4j_agents.monitor import Monitor as BaseMonitor
from z4j_agents.runtime import AgentRuntime, installed_version

log = logging.getLogger("z4j.dramatiq")
bootstrap_log = logging.getLogger("z4j.dramatiq.worker_bootstrap")

ENGINE = "dramatiq"
BOOTSTRAP_LINE = "z4j worker bootstrap: agent runtime started"
SAMPLER_KEY = "z4j:dramatiq:depth-sampler"


def options_from_env() -> dict[str, Any]:
    return engine_options(os.environ, "dramatiq")


class DramatiqAgent:
    """One process's agent: ``broker``, ``config``, ``runtime``, ``worker_name``."""

    engine = ENGINE

    def __init__(self, broker: Any, config: AgentConfig, *, redactor: Any = None, heartbeat_s: float = 10.0,
                 queue_depth_s: float = 5.0, queues: tuple[str, ...] = ()) -> None:
        self.broker = broker
        self.config = config
        self.runtime = AgentRuntime(config, engines=(ENGINE,), version=installed_version(), redactor=redactor)
        self.heartbeat_s = heartbeat_s or 10.0
        self.queue_depth_s = queue_depth_s
        self.extra_queues = tuple(queues)
        self.pid = os.getpid()
        self.worker_name = f"dramatiq@{socket.gethostname()}:{self.pid}"
        self.worker: Any = None
        self.monitor: Monitor | None = None
        self.active = 0
        self.processed = 0

    def emit(self, event: p.Event) -> None:
        self.runtime.emit(event)

    def worker_event(self, kind: str) -> None:
        try:
            info = self.worker_info()
        except Exception:  # noqa: BLE001
            log.exception("z4j dramatiq: could not read worker facts")
            info = None
        self.runtime.emit(p.WorkerEvent(id=p.new_id(), worker=self.worker_name, engine=ENGINE, kind=kind,
                                        ts=time.time(), info=info))

    def worker_info(self) -> dict[str, Any]:
        import dramatiq

        worker = self.worker
        info: dict[str, Any] = {"pid": self.pid, "version": dramatiq.__version__, "broker": type(self.broker).__name__,
                                "active": self.active, "processed": self.processed}
        if worker is not None:
            info["concurrency"] = worker.worker_threads
            info["queues"] = sorted(worker.consumer_whitelist or self.queue_names())
        try:
            info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            pass
        return info

    def queue_names(self) -> list[str]:
        """The broker's declared queues (canonical names) and the extra ones asked for."""
        names = [q for q in sorted(self.broker.get_declared_queues()) if not q.endswith((".DQ", ".XQ"))]
        for name in self.extra_queues:
            if name not in names:
                names.append(name)
        return names

    def start_worker(self, worker: Any) -> None:
        self.worker = worker
        self.worker_event("online")
        if self.monitor is None:
            self.monitor = Monitor(self)
            self.monitor.start()

    def stop_worker(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        self.worker_event("offline")
        if not self.runtime.stop(5.0):
            log.warning("z4j dramatiq: %d event(s) not delivered at shutdown", self.runtime.pending)


class Monitor(BaseMonitor):
    """Heartbeats and queue depths, on one daemon thread of a worker process."""

    engine = "dramatiq"

    def __init__(self, agent: DramatiqAgent) -> None:
        super().__init__(agent, log)

    def sample_depths(self) -> None:
        from z4j_agents.dramatiq import redisq

        agent = self.agent
        if not redisq.is_redis(agent.broker):
            self.once("broker", logging.INFO, "z4j dramatiq: queue depths are sampled on a Redis broker only "
                       "(this one is %s)", type(agent.broker).__name__)
            return
        try:
            # One sampler per interval for the whole fleet, not one per process.
            ttl_ms = max(100, int(agent.queue_depth_s * 1000) - 50)
            if not agent.broker.client.set(SAMPLER_KEY, agent.worker_name, nx=True, px=ttl_ms):
                return
            depths = redisq.depths(agent.broker, agent.queue_names())
        except Exception as exc:  # noqa: BLE001 - Redis may be down; try again next round
            self.once(f"err:{type(exc).__name__}", logging.WARNING,
                      "z4j dramatiq: could not sample queue depths: %s: %s", type(exc).__name__, exc)
            return
        now = time.time()
        for name, depth in depths.items():
            agent.runtime.emit(p.QueueEvent(id=p.new_id(), queue=name, engine=ENGINE, ts=now, depth=depth))
