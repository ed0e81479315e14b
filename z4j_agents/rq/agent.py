"""The RQ agent: one per ``rq worker`` (its parent process), or one per producer.

Lifecycle in ``rq worker -w z4j_agents.rq.Worker``:

1. ``bootstrap`` (parent, after RQ set up logging): the agent is built from
   the environment, the actions, probe and schedule commands are declared,
   the relay for work horses starts listening, the runtime connects, and
   ``z4j rq worker: agent runtime started`` is logged on
   ``z4j.rq.worker_bootstrap``. The worker goes ``online``; a monitor thread
   sends a heartbeat every ``heartbeat_s`` (10 s) and samples queue depths and
   registry sizes every ``queue_depth_s`` (5 s).
2. Each job: the parent reports ``started`` and forks a work horse. The horse
   never opens a connection of its own: its events go through the relay
   (z4j_agents/relay.py) and it flushes them, bounded, before ``os._exit``.
   Whatever the parent learns itself (a horse killed, a job stopped) it
   reports directly.
3. ``teardown``: the worker goes ``offline``, the agent flushes (up to 5 s)
   and stops.

A producer (:class:`z4j_agents.rq.capture.Queue`) builds its agent at its
first enqueue; inside a work horse the same enqueue goes through the relay.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.config import AgentConfig, ConfigError
from z4j_agents.env_options import engine_options
from z4j_agents.monitor import Monitor as BaseMonitor
from z4j_agents.runtime import AgentRuntime, installed_version

log = logging.getLogger("z4j.rq")
bootstrap_log = logging.getLogger("z4j.rq.worker_bootstrap")

ENGINE = "rq"
BOOTSTRAP_LINE = "z4j rq worker: agent runtime started"


class _State:
    """Per process (module global: one agent per process)."""

    def __init__(self) -> None:
        self.agent: RQAgent | None = None
        self.relay_client: Any = None
        """Set in a work horse: where its events go."""
        self.producer_off = False
        """A producer without configuration: said once, never tried again."""
        self.lock = threading.Lock()
        self.config: AgentConfig | None = None
        self.redactor: Any = None
        self.options: dict[str, Any] = {}


state = _State()
_fork_hook = False


def configure(config: Any = None, *, redactor: Any = None, heartbeat_s: float | None = None,
              queue_depth_s: float | None = None, schedules: bool | None = None) -> None:
    try:
        if config is not None:
            state.config = config
        if redactor is not None:
            state.redactor = redactor
        for key, value in (("heartbeat_s", heartbeat_s), ("queue_depth_s", queue_depth_s)):
            if value is not None:
                state.options[key] = float(value)
        if schedules is not None:
            state.options["schedules"] = bool(schedules)
    except Exception:  # noqa: BLE001
        log.exception("z4j rq: install failed; RQ runs without z4j")


def emit(event: p.Event) -> None:
    """Hand one event on (relay in a horse, the agent elsewhere); never raises."""
    try:
        client = state.relay_client
        if client is not None:
            client.send(event)
            return
        agent = state.agent
        if agent is not None:
            agent.runtime.emit(event)
    except Exception:  # noqa: BLE001
        log.exception("z4j rq: could not hand an event on")


def _options() -> dict[str, Any]:
    opts: dict[str, Any] = {"heartbeat_s": 10.0, "queue_depth_s": 5.0, "schedules": True}
    opts.update(engine_options(os.environ, "rq", queues=False))
    if os.environ.get("Z4J_RQ_SCHEDULES", "").strip().lower() in ("0", "false", "no", "off"):
        opts["schedules"] = False
    opts.update(state.options)
    return opts


class RQAgent:
    """What the other parts get: ``config``, ``runtime``, ``connection``,
    ``worker`` (None in a producer), ``on_command(action, handler)``."""

    engine = ENGINE

    def __init__(self, config: AgentConfig, connection: Any, *, redactor: Any = None, heartbeat_s: float = 10.0,
                 queue_depth_s: float = 5.0, schedules: bool = True) -> None:
        self.config = config
        self.connection = connection
        self.runtime = AgentRuntime(config, engines=(ENGINE,), version=installed_version(), redactor=redactor)
        self.heartbeat_s = max(0.2, heartbeat_s)
        self.queue_depth_s = queue_depth_s
        self.schedules_on = schedules
        self.worker: Any = None
        self.relay: Any = None
        self.monitor: Monitor | None = None
        self.schedules: Any = None
        self.processed = 0
        """Jobs this worker started (counted in the parent: the horses' own counters live in Redis)."""
        self._owner = os.getpid()

    def on_command(self, action: str, handler: Any) -> None:
        self.runtime.on_command(action, handler)

    def worker_event(self, kind: str) -> None:
        worker = self.worker
        if worker is None:
            return
        try:
            info = worker_info(self)
        except Exception:  # noqa: BLE001
            log.exception("z4j rq: could not read worker facts")
            info = None
        self.runtime.emit(p.WorkerEvent(id=p.new_id(), worker=worker.name, engine=ENGINE, kind=kind,
                                        ts=time.time(), info=info))

    def stop(self, timeout: float = 5.0) -> bool:
        if os.getpid() != self._owner:
            return False
        if self.monitor is not None:
            self.monitor.stop()
        flushed = self.runtime.stop(timeout)
        if self.relay is not None:
            self.relay.close()
        return flushed


def private_connection(connection: Any) -> Any:
    """A Redis client of its own (same server and options) for the agent's
    threads. RQ forks a work horse per job: a lock of a shared connection
    pool held by an agent thread at that instant would be held forever in
    the horse, which uses the worker's pool."""
    try:
        pool = connection.connection_pool
        own = type(pool)(connection_class=pool.connection_class, **pool.connection_kwargs)
        return type(connection)(connection_pool=own)
    except Exception:  # noqa: BLE001 - an exotic client: share it (RQ's own commands do)
        log.debug("z4j rq: no private Redis client", exc_info=True)
        return connection


def build_agent(connection: Any) -> RQAgent:
    """An agent from install()'s settings or the environment; ConfigError when incomplete."""
    config = state.config or AgentConfig.from_env()
    return RQAgent(config, connection, redactor=state.redactor, **_options())


def worker_info(agent: RQAgent) -> dict[str, Any]:
    import rq

    worker = agent.worker
    info: dict[str, Any] = {"pid": os.getpid(), "version": rq.__version__, "sw_ident": "rq",
                            "worker_class": f"{type(worker).__module__}.{type(worker).__qualname__}",
                            "queues": list(worker.queue_names()), "concurrency": 1}
    info["processed"] = agent.processed
    horse = getattr(worker, "_horse_pid", 0)
    info["active"] = 1 if horse else 0
    if horse:
        info["horse_pid"] = horse
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if agent.monitor is not None and agent.monitor.registries:
        info["registries"] = agent.monitor.registries
    if agent.relay is not None:
        info["relay_frames"] = agent.relay.frames
    return info


class Monitor(BaseMonitor):
    """Heartbeats, queue depths and registry sizes, on one daemon thread of the parent."""

    engine = "rq"

    def __init__(self, agent: RQAgent) -> None:
        super().__init__(agent, log)
        self.registries: dict[str, dict[str, int]] = {}

    def sample_depths(self) -> None:
        """LLEN of each queue the worker serves, and its registries' sizes (ZCARD), in one round trip."""
        agent = self.agent
        worker = agent.worker
        try:
            queues = list(worker.queues)
            with agent.connection.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.llen(queue.key)
                    for registry in _registries(queue):
                        pipe.zcard(registry.key)
                counts = pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis may be away; next round
            self.once(f"err:{type(exc).__name__}", logging.WARNING,
                      "z4j rq: could not sample queue depths: %s: %s", type(exc).__name__, exc)
            return
        now = time.time()
        registries: dict[str, dict[str, int]] = {}
        step = 1 + len(REGISTRIES)
        for index, queue in enumerate(queues):
            row = counts[index * step:(index + 1) * step]
            agent.runtime.emit(p.QueueEvent(id=p.new_id(), queue=queue.name, engine=ENGINE, ts=now,
                                            depth=int(row[0])))
            registries[queue.name] = {name: int(n) for name, n in zip(REGISTRIES, row[1:])}
        self.registries = registries


REGISTRIES = ("started", "failed", "deferred", "scheduled", "finished", "canceled")


def _registries(queue: Any) -> list[Any]:
    return [queue.started_job_registry, queue.failed_job_registry, queue.deferred_job_registry,
            queue.scheduled_job_registry, queue.finished_job_registry, queue.canceled_job_registry]


# ------------------------------------------------------------------ worker side


def register_commands(agent: RQAgent) -> None:
    """Actions, probe and (when on) schedules; one failing part never stops the others."""
    try:
        from z4j_agents.rq import actions

        actions.register(agent)
    except Exception:  # noqa: BLE001
        log.exception("z4j rq: the RQ actions could not be registered; the agent runs without them")
    try:
        from z4j_agents.rq import probe

        probe.register(agent)
    except Exception:  # noqa: BLE001
        log.exception("z4j rq: rq.probe could not be registered")
    if agent.schedules_on:
        try:
            from z4j_agents.rq import schedules

            agent.schedules = schedules.register(agent)
        except Exception:  # noqa: BLE001
            log.exception("z4j rq: the schedule commands could not be registered")


def _share_rq_logging() -> None:
    """RQ gives handlers to its own loggers only: z4j's lines go where RQ's go
    (unless the application configured logging itself)."""
    z4j = logging.getLogger("z4j")
    if z4j.handlers or logging.getLogger().handlers:
        return
    rq_log = logging.getLogger("rq.worker")
    for handler in rq_log.handlers:
        z4j.addHandler(handler)
    if rq_log.level and z4j.level == logging.NOTSET:
        z4j.setLevel(rq_log.level)


def bootstrap_worker(worker: Any) -> RQAgent | None:
    """Start the agent in an ``rq worker`` parent (idempotent; never raises)."""
    try:
        _share_rq_logging()
        if state.relay_client is not None:
            return None  # a work horse: never a second agent
        agent = state.agent
        if agent is not None and agent.worker is not None:
            return agent
        try:
            if agent is None:
                agent = build_agent(worker.connection)
        except ConfigError as exc:
            bootstrap_log.error("z4j rq worker: agent not started: %s; the worker runs without z4j", exc)
            return None
        agent.worker = worker
        agent.connection = private_connection(worker.connection)
        if agent.runtime._thread is None:
            register_commands(agent)
        state.agent = agent
        _start_relay(agent)
        agent.runtime.start()
        agent.monitor = Monitor(agent)
        agent.worker_event("online")
        agent.monitor.start()
        bootstrap_log.info(BOOTSTRAP_LINE)
        return agent
    except Exception as exc:  # noqa: BLE001
        bootstrap_log.error("z4j rq worker: agent not started: %s: %s", type(exc).__name__, exc)
        log.debug("z4j rq: bootstrap failed", exc_info=True)
        return None


def shutdown_worker(worker: Any) -> None:
    try:
        agent = state.agent
        if agent is None or agent.worker is not worker or state.relay_client is not None:
            return
        if agent.monitor is not None:
            agent.monitor.stop()
        agent.worker_event("offline")
        if not agent.stop(5.0):
            log.warning("z4j rq: %d event(s) not delivered at shutdown", agent.runtime.pending)
        agent.worker = None
    except Exception:  # noqa: BLE001
        log.exception("z4j rq: shutdown handler failed")


def _start_relay(agent: RQAgent) -> None:
    global _fork_hook
    from z4j_agents.relay import RelayServer

    if agent.relay is None:
        def add_dropped(n: int) -> None:
            agent.runtime.dropped += n
        agent.relay = RelayServer(agent.runtime.emit, add_dropped)
    if not _fork_hook:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook = True


def _after_fork_in_child() -> None:
    try:
        agent = state.agent
        if agent is None or agent.relay is None:
            return
        from z4j_agents.relay import RelayClient

        state.relay_client = RelayClient(agent.relay.address)
    except Exception:  # noqa: BLE001
        pass


def flush_horse(timeout: float = 2.0) -> None:
    """In a work horse, before RQ's ``os._exit``: hand everything to the parent (bounded)."""
    client = state.relay_client
    if client is None:
        return
    try:
        if not client.flush(timeout):
            log.warning("z4j rq: the work horse could not hand %d event(s) to the worker in %.1f s",
                        len(client._queue), timeout)
    except Exception:  # noqa: BLE001
        pass


# ------------------------------------------------------------------ producer side


def producer_agent(connection: Any) -> RQAgent | None:
    """This process's agent for enqueue capture, built at the first enqueue (None without configuration)."""
    agent = state.agent
    if agent is not None or state.producer_off or state.relay_client is not None:
        return agent
    with state.lock:
        if state.agent is None and not state.producer_off:
            try:
                agent = build_agent(connection)
            except ConfigError as exc:
                log.error("z4j rq: enqueue capture off: %s", exc)
                state.producer_off = True
                return None
            agent.runtime.start()
            state.agent = agent
    return state.agent
