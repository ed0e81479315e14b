"""The Huey agent: one per consumer (its main process), one per producer process.

Lifecycle in ``huey_consumer proj.huey``:

1. ``huey.create_consumer(...)`` (``install`` put a wrapper on the instance):
   the agent is built from the environment, the actions, probe and (with
   periodic tasks on) schedule commands are declared, the runtime connects,
   and under ``-k process`` the relay (relay.py) listens before the workers
   fork. The bootstrap line is logged on ``huey.z4j``.
2. ``consumer.start()`` returns (workers forked or started): the consumer
   goes ``online``; a monitor thread sends a heartbeat every ``heartbeat_s``
   (10 s) and the queue depth every ``queue_depth_s`` (5 s).
3. ``consumer.run()`` returns (SIGINT, SIGTERM): ``offline``, flush (up to
   5 s), stop.

A producer (any other process with ``install(huey)``) starts a plain agent at
its first enqueue, with no commands: it only reports what it enqueues.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Any, Callable

from z4j_agents import protocol as p
from z4j_agents.config import AgentConfig, ConfigError
from z4j_agents.env_options import engine_options
from z4j_agents.monitor import Monitor as BaseMonitor
from z4j_agents.huey.capture import ENGINE, Binding
from z4j_agents.runtime import AgentRuntime, installed_version

log = logging.getLogger("huey.z4j")

BOOTSTRAP_LINE = "z4j consumer bootstrap: agent runtime started"
MAX_ROOTS = 50_000
MAX_FIRES = 1000
_TERMINAL = frozenset({"succeeded", "failed", "revoked", "rejected", "lost", "retried"})


class HueyAgent:
    """What actions, probe and schedules get: ``huey``, ``config``, ``runtime``,
    ``store`` (a Huey whose storage this process may use from any thread),
    ``worker_name`` (consumers), ``on_command(action, handler)``."""

    engine = ENGINE

    def __init__(self, binding: Binding, config: AgentConfig, *, consumer: Any = None, redactor: Any = None,
                 heartbeat_s: float = 10.0, queue_depth_s: float = 5.0) -> None:
        self.binding = binding
        self.huey = binding.huey
        self.config = config
        self.consumer = consumer
        self.runtime = AgentRuntime(config, engines=(ENGINE,), version=installed_version(), redactor=redactor)
        self.heartbeat_s = heartbeat_s
        self.queue_depth_s = queue_depth_s
        self.worker_name = f"{self.huey.name}@{socket.gethostname()}:{os.getpid()}" if consumer is not None else None
        self.roots: dict[str, str] = {}
        self.active: dict[str, tuple[int, float]] = {}
        self.processed = 0
        self.fires: deque[dict[str, Any]] = deque(maxlen=MAX_FIRES)
        self.runs: dict[str, tuple[float, int]] = {}
        """Periodic task name -> (last fire, fires seen) by this agent."""
        self.relay: Any = None
        self.monitor: Monitor | None = None
        self._store: Any = None
        self._lock = threading.Lock()
        self._owner = os.getpid()

    def on_command(self, action: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        self.runtime.on_command(action, handler)

    @property
    def store(self) -> Any:
        """The Huey for this process's own storage calls (monitor, commands).

        Under ``-k process`` it is a copy with its own storage connection: the
        consumer forks replacement workers at any time, and a child must not
        inherit a connection (SQLite's) the parent is using.
        """
        if self._store is None:
            consumer = self.consumer
            forks = consumer is not None and getattr(consumer.environment, "forks", False)
            if forks:
                private = copy.copy(self.huey)
                private.storage = type(self.huey.storage)(self.huey.name, **self.huey.storage_kwargs)
                self._store = private
            else:
                self._store = self.huey
        return self._store

    # ------------------------------------------------------------ events

    def emit(self, event: p.Event) -> None:
        """Every event of this consumer passes here (its worker processes' through
        the relay): pipeline roots, running tasks and periodic fires are kept here."""
        try:
            if type(event) is p.TaskEvent:
                self._follow(event)
        except Exception:  # noqa: BLE001
            log.exception("z4j huey: could not follow an event")
        self.runtime.emit(event)

    def _follow(self, event: p.TaskEvent) -> None:
        roots = self.roots
        if event.parent_id is not None and event.root_id is None:
            # A pipeline step or a task enqueued by a task: its root is its parent's.
            event.root_id = roots.get(event.parent_id, event.parent_id)
            if len(roots) >= MAX_ROOTS:
                roots.pop(next(iter(roots)), None)
            roots[event.task_id] = event.root_id
        kind = event.kind
        if kind == "started":
            self.processed += 1
            pid = (event.extra or {}).get("pid")
            self.active[event.task_id] = (pid if isinstance(pid, int) else os.getpid(), event.ts)
        elif kind in _TERMINAL:
            self.active.pop(event.task_id, None)
        elif kind == "sent" and event.extra and "schedule" in event.extra and not event.extra.get("manual"):
            self.fired(event.extra["schedule"], event.name or "", event.task_id, event.ts, manual=False)

    def fired(self, schedule: str, task: str, task_id: str, ts: float, manual: bool,
              actor: str | None = None) -> dict[str, Any]:
        fire: dict[str, Any] = {"id": p.new_id(), "schedule": schedule, "task": task, "task_id": task_id,
                                "ts": ts, "manual": manual}
        if actor:
            fire["actor"] = actor[:400]
        with self._lock:
            self.fires.append(fire)
            _, count = self.runs.get(schedule, (0.0, 0))
            self.runs[schedule] = (ts, count + 1)
        return fire

    def worker_event(self, kind: str) -> None:
        if not self.worker_name:
            return
        try:
            info = self.worker_info()
        except Exception:  # noqa: BLE001
            log.exception("z4j huey: could not read the consumer's facts")
            info = None
        self.runtime.emit(p.WorkerEvent(id=p.new_id(), worker=self.worker_name, engine=ENGINE, kind=kind,
                                        ts=time.time(), info=info))

    def worker_info(self) -> dict[str, Any]:
        import huey

        consumer = self.consumer
        info: dict[str, Any] = {
            "pid": os.getpid(), "version": huey.__version__, "sw_ident": "huey",
            "pool": getattr(consumer, "worker_type", None), "concurrency": getattr(consumer, "workers", None),
            "periodic": bool(getattr(consumer, "periodic", False)), "queues": [self.huey.name],
            "storage": type(self.huey.storage).__name__, "processed": self.processed, "active": len(self.active),
        }
        try:
            info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            pass
        if self.relay is not None:
            info["relay_frames"] = self.relay.frames
        return info

    def stop(self, timeout: float = 5.0) -> bool:
        if os.getpid() != self._owner:
            return False
        if self.monitor is not None:
            self.monitor.stop()
        flushed = self.runtime.stop(timeout)
        if self.relay is not None:
            self.relay.close()
        return flushed


class Monitor(BaseMonitor):
    """Heartbeats, queue depth and dead worker processes, on one daemon thread."""

    engine = "huey"

    def __init__(self, agent: HueyAgent) -> None:
        super().__init__(agent, log)

    def heartbeat(self) -> None:
        self.reap()
        self.agent.worker_event("heartbeat")

    def sample_depths(self) -> None:
        self.sample_depth()

    def sample_depth(self) -> None:
        agent = self.agent
        try:
            depth = int(agent.store.pending_count())
        except Exception as exc:  # noqa: BLE001 - the storage may be down; try again next round
            self.once(f"err:{type(exc).__name__}", logging.WARNING,
                      "z4j huey: could not read the queue depth: %s: %s", type(exc).__name__, exc)
            return
        agent.runtime.emit(p.QueueEvent(id=p.new_id(), queue=agent.huey.name, engine=ENGINE, ts=time.time(),
                                        depth=depth))

    def reap(self) -> None:
        """A worker process that died mid-task (OOM killer, SIGKILL) sends
        nothing more: its running tasks end ``lost`` here, and the consumer
        starts a replacement on its own."""
        agent = self.agent
        main = os.getpid()
        for task_id, (pid, _) in list(agent.active.items()):
            if pid == main or not _pid_gone(pid):
                continue
            agent.active.pop(task_id, None)
            agent.runtime.emit(p.TaskEvent(
                id=p.new_id(), task_id=task_id, engine=ENGINE, kind="lost", ts=time.time(), engine_state="LOST",
                worker=agent.worker_name, exception=f"WorkerLost: worker process {pid} died while running the task",
                extra={"pid": pid}))


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return False


# ------------------------------------------------------------------ bootstrap


def _options_from_env() -> dict[str, Any]:
    return engine_options(os.environ, "huey", queues=False)


def build_agent(binding: Binding, consumer: Any = None) -> HueyAgent:
    """An agent from install()'s arguments or the environment; ConfigError when incomplete."""
    settings = binding.settings
    config = settings.config or AgentConfig.from_env()
    options = {**_options_from_env(), **settings.options}
    return HueyAgent(binding, config, consumer=consumer, redactor=settings.redactor, **options)


def start_producer_agent(binding: Binding) -> HueyAgent | None:
    """A producer's agent, at its first enqueue; None (one log line) without config."""
    try:
        agent = build_agent(binding)
    except ConfigError as exc:
        log.error("z4j huey: enqueue capture off: %s", exc)
        return None
    agent.runtime.start()
    return agent


def start_consumer_agent(binding: Binding, consumer: Any) -> HueyAgent | None:
    """Start the agent in a consumer's main process (never raises)."""
    try:
        old = binding.agent
        if old is not None and old.consumer is consumer:
            return old
        try:
            agent = build_agent(binding, consumer)
        except ConfigError as exc:
            log.error("z4j consumer bootstrap: agent not started: %s; the consumer runs without z4j", exc)
            binding.settings.capture_enqueue = False
            binding.agent = None
            if old is not None:
                old.stop(1.0)
            return None
        if old is not None:  # a producer agent started before the consumer: the consumer's replaces it
            old.stop(2.0)
        _register_commands(agent)
        binding.agent = agent
        binding.consumer = consumer
        binding.wrap_dequeue()
        if getattr(consumer.environment, "forks", False):
            _start_relay(binding, agent)
        _wrap_consumer(binding, agent, consumer)
        agent.runtime.start()
        log.info(BOOTSTRAP_LINE)
        return agent
    except Exception as exc:  # noqa: BLE001
        log.error("z4j consumer bootstrap: agent not started: %s: %s", type(exc).__name__, exc)
        log.debug("z4j huey: bootstrap failed", exc_info=True)
        return None


def _register_commands(agent: HueyAgent) -> None:
    from z4j_agents.huey import actions, probe, schedules

    for module in (actions, probe, schedules):
        try:
            module.register(agent)
        except Exception:  # noqa: BLE001
            log.exception("z4j huey: registering %s failed; the agent runs without it", module.__name__)


def _start_relay(binding: Binding, agent: HueyAgent) -> None:
    from z4j_agents.relay import RelayServer

    def add_dropped(n: int) -> None:
        agent.runtime.dropped += n

    agent.relay = RelayServer(agent.emit, add_dropped)

    def after_fork_in_child() -> None:
        try:
            current = binding.agent
            if current is agent and agent.relay is not None and binding.relay_client is None:
                from z4j_agents.relay import RelayClient

                binding.relay_client = RelayClient(agent.relay.address)
                binding.starts = {}
        except Exception:  # noqa: BLE001
            pass

    os.register_at_fork(after_in_child=after_fork_in_child)

    @binding.huey.on_shutdown(name="z4j")
    def flush_relay() -> None:  # runs in each worker (process) as it stops
        client = binding.relay_client
        if client is not None:
            client.flush(2.0)


def _wrap_consumer(binding: Binding, agent: HueyAgent, consumer: Any) -> None:
    """Hook this consumer object's start and run (instance attributes only)."""
    start, run = consumer.start, consumer.run

    def started() -> None:
        start()
        try:
            if binding.agent is agent:
                agent.worker_event("online")
                agent.monitor = Monitor(agent)
                agent.monitor.start()
        except Exception:  # noqa: BLE001
            log.exception("z4j huey: could not report the consumer online")

    def running() -> None:
        try:
            run()
        finally:
            if binding.agent is agent and os.getpid() == agent._owner:
                try:
                    if agent.monitor is not None:
                        agent.monitor.stop()
                    agent.worker_event("offline")
                    if not agent.stop(5.0):
                        log.warning("z4j huey: %d event(s) not delivered at shutdown", agent.runtime.pending)
                except Exception:  # noqa: BLE001
                    log.exception("z4j huey: shutdown failed")

    consumer.start = started
    consumer.run = running
