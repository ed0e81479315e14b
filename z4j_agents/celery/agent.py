"""The Celery agent: one per worker (its MainProcess), started from the worker's own signals.

Lifecycle in ``celery worker``:

1. ``worker_init`` (MainProcess, before the pool starts): the agent is built,
   the actions module (if present) registers its commands, the runtime
   connects, and the prefork relay starts listening. The bootstrap line is
   logged once Celery has set up logging (``celeryd_after_setup`` or
   ``worker_ready``).
2. ``worker_ready``: the worker goes ``online``; a monitor thread sends a
   heartbeat every ``heartbeat_s`` (10 s) and samples queue depths every
   ``queue_depth_s`` (5 s) on a Redis broker.
3. ``worker_shutdown``: the worker goes ``offline``, the agent flushes (up to
   5 s) and stops.

Prefork children inherit the agent object but never use its connection:
after the fork their events go through the relay (relay.py).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

from z4j_agents import protocol as p
from z4j_agents.celery import capture
from z4j_agents.config import AgentConfig, ConfigError
from z4j_agents.env_options import engine_options
from z4j_agents.monitor import Monitor as BaseMonitor
from z4j_agents.runtime import AgentRuntime, installed_version

log = logging.getLogger("z4j.celery")
bootstrap_log = logging.getLogger("z4j.celery.worker_bootstrap")

BOOTSTRAP_LINE = "z4j worker bootstrap: agent runtime started"

CAPABILITIES = (
    "celery.retry",
    "celery.cancel",
    "celery.purge",
    "celery.worker_control",
    "celery.inspect",
)
"""The commands a Celery worker agent can declare; the handlers are
registered by ``z4j_agents.celery.actions.register(agent, app)``. Only the
actions that module registers are declared in the hello."""


class CeleryAgent:
    """What other parts (actions, beat) get: ``app``, ``config``, ``runtime``,
    ``hostname`` (the worker's node name), ``on_command(action, handler)``."""

    engine = capture.ENGINE

    def __init__(self, app: Any, config: AgentConfig, *, redactor: Any = None,
                 heartbeat_s: float = 10.0, queue_depth_s: float = 5.0, queues: tuple[str, ...] = ()) -> None:
        self.app = app
        self.config = config
        self.runtime = AgentRuntime(config, engines=(self.engine,), version=installed_version(), redactor=redactor)
        self.heartbeat_s = heartbeat_s
        self.queue_depth_s = queue_depth_s
        self.extra_queues = tuple(queues)
        self.worker: Any = None
        self.consumer: Any = None
        self.hostname: str | None = None
        self.relay: Any = None
        self.monitor: Monitor | None = None
        self._owner = os.getpid()

    def on_command(self, action: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        self.runtime.on_command(action, handler)

    @property
    def secret(self) -> str:
        return self.config.hmac_secret

    def emit(self, event: p.Event) -> None:
        capture.emit(event)

    def worker_event(self, kind: str) -> None:
        if not self.hostname:
            return
        try:
            info = worker_info(self)
        except Exception:  # noqa: BLE001
            log.exception("z4j celery: could not read worker facts")
            info = None
        self.runtime.emit(p.WorkerEvent(id=p.new_id(), worker=self.hostname, engine=self.engine, kind=kind,
                                        ts=time.time(), info=info))

    def stop(self, timeout: float = 5.0) -> None:
        if os.getpid() != self._owner:
            return
        if self.monitor is not None:
            self.monitor.stop()
        self.runtime.stop(timeout)
        if self.relay is not None:
            self.relay.close()


def worker_info(agent: CeleryAgent) -> dict[str, Any]:
    import celery
    from celery.worker import state as wstate

    info: dict[str, Any] = {"pid": os.getpid(), "version": celery.__version__, "sw_ident": "py-celery"}
    worker = agent.worker
    pool = getattr(worker, "pool", None)
    if pool is not None:
        info["pool"] = _pool_name(pool)
        try:
            info["concurrency"] = int(pool.num_processes)
        except Exception:  # noqa: BLE001
            info["concurrency"] = getattr(worker, "concurrency", None)
    elif worker is not None:
        info["concurrency"] = getattr(worker, "concurrency", None)
    info["active"] = len(wstate.active_requests)
    info["reserved"] = len(wstate.reserved_requests)
    info["processed"] = int(sum(wstate.total_count.values()))
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    queues = consumed_queues(agent)
    if queues:
        info["queues"] = queues
    if agent.relay is not None:
        info["relay_frames"] = agent.relay.frames
    return info


def _pool_name(pool: Any) -> str:
    """The name ``--pool`` takes (prefork, threads, solo, ...)."""
    from celery.concurrency import ALIASES

    path = f"{type(pool).__module__}:{type(pool).__qualname__}"
    for alias, target in ALIASES.items():
        if target == path and alias != "processes":
            return alias
    return path


def consumed_queues(agent: CeleryAgent) -> list[str]:
    consumer = agent.consumer
    task_consumer = getattr(consumer, "task_consumer", None)
    names: list[str] = []
    for queue in getattr(task_consumer, "queues", None) or ():
        name = getattr(queue, "name", None)
        if name and name not in names:
            names.append(name)
    return names


def sampled_queues(agent: CeleryAgent) -> list[str]:
    """The worker's queues, every queue the app declares, and extra ones asked for."""
    names = consumed_queues(agent)
    try:
        for name in agent.app.amqp.queues.keys():
            if name not in names:
                names.append(name)
    except Exception:  # noqa: BLE001
        pass
    for name in agent.extra_queues:
        if name not in names:
            names.append(name)
    return names


class Monitor(BaseMonitor):
    """Heartbeats and queue depths, on one daemon thread of the MainProcess."""

    engine = "celery"

    def __init__(self, agent: CeleryAgent) -> None:
        super().__init__(agent, log)
        self._conn: Any = None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # noqa: BLE001
                pass

    def sample_depths(self) -> None:
        agent = self.agent
        try:
            if self._conn is None:
                self._conn = agent.app.connection_for_read()
            conn = self._conn
            driver = conn.transport.driver_type
            if driver != "redis":
                self.once("driver", logging.INFO,
                           "z4j celery: queue depths are sampled on a Redis broker only (this one is %s)", driver)
                return
            channel = conn.default_channel
            depths = {name: int(channel._size(name)) for name in sampled_queues(agent)}
        except Exception as exc:  # noqa: BLE001 - the broker may be down; try again next round
            self.once(f"err:{type(exc).__name__}", logging.WARNING,
                      "z4j celery: could not sample queue depths: %s: %s", type(exc).__name__, exc)
            self.close()
            return
        now = time.time()
        for name, depth in depths.items():
            agent.runtime.emit(p.QueueEvent(id=p.new_id(), queue=name, engine=agent.engine, ts=now, depth=depth))


# ------------------------------------------------------------------ bootstrap


class _Pending:
    """Log lines held until Celery has configured logging."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def add(self, level: int, message: str) -> None:
        self.lines.append((level, message))

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        for level, message in lines:
            bootstrap_log.log(level, message)


pending = _Pending()


class Settings:
    """What ``install(app, ...)`` was given (explicit code path)."""

    def __init__(self) -> None:
        self.app: Any = None
        self.config: AgentConfig | None = None
        self.redactor: Any = None
        self.options: dict[str, Any] = {}


settings = Settings()
_fork_hook = False
_worker_signals = False


def _options_from_env() -> dict[str, Any]:
    return engine_options(os.environ, "celery")


def build_agent(app: Any) -> CeleryAgent:
    """An agent for ``app`` from install()'s arguments or the environment; ConfigError when incomplete."""
    config = settings.config or AgentConfig.from_env()
    options = {**_options_from_env(), **settings.options}
    return CeleryAgent(app, config, redactor=settings.redactor, **options)


def register_actions(agent: CeleryAgent, app: Any) -> None:
    """The seam to the actions engineer's module: ``actions.register(agent, app)``."""
    try:
        from z4j_agents.celery import actions
    except ModuleNotFoundError as exc:
        if exc.name != "z4j_agents.celery.actions":
            log.exception("z4j celery: the actions module cannot be imported")
        return
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: the actions module cannot be imported")
        return
    register = getattr(actions, "register", None)
    if register is None:
        return
    try:
        register(agent, app)
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: registering the Celery actions failed; the agent runs without them")


def bootstrap_worker(worker: Any) -> CeleryAgent | None:
    """Start the agent in a worker's MainProcess (idempotent; never raises)."""
    try:
        if capture.state.relay_client is not None:
            return None  # a pool child: never a second agent
        agent = capture.state.agent
        if agent is not None and agent.worker is not None:
            return agent
        app = worker.app
        try:
            if agent is None:
                agent = build_agent(app)
        except ConfigError as exc:
            pending.add(logging.ERROR, f"z4j worker bootstrap: agent not started: {exc}; the worker runs without z4j")
            return None
        agent.worker = worker
        agent.hostname = getattr(worker, "hostname", None)
        capture.connect_task_signals()
        if agent.runtime._thread is None:
            register_actions(agent, app)
        capture.state.agent = agent
        _start_relay(agent)
        agent.runtime.start()
        pending.add(logging.INFO, BOOTSTRAP_LINE)
        return agent
    except Exception as exc:  # noqa: BLE001
        pending.add(logging.ERROR, f"z4j worker bootstrap: agent not started: {type(exc).__name__}: {exc}")
        log.debug("z4j celery: bootstrap failed", exc_info=True)
        return None


def _start_relay(agent: CeleryAgent) -> None:
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
        agent = capture.state.agent
        if agent is None or agent.relay is None:
            return
        from z4j_agents.relay import RelayClient

        capture.state.relay_client = RelayClient(agent.relay.address)
        capture.state.starts = {}
    except Exception:  # noqa: BLE001
        pass


def on_worker_init(sender: Any = None, **_: Any) -> None:
    bootstrap_worker(sender)


def on_celeryd_init(sender: Any = None, instance: Any = None, **_: Any) -> None:
    # celeryd_init comes first for `celery worker`; worker_init does the work
    # (it also covers WorkController started from code). Nothing to do here
    # but be connected, so that the activation module hooks `celery worker` only.
    return None


def on_after_setup(**_: Any) -> None:
    pending.flush()


def on_worker_ready(sender: Any = None, **_: Any) -> None:
    try:
        pending.flush()
        agent = capture.state.agent
        if agent is None or agent.worker is None or capture.state.relay_client is not None:
            return
        agent.consumer = sender
        agent.hostname = getattr(sender, "hostname", None) or agent.hostname
        agent.worker_event("online")
        if agent.monitor is None:
            agent.monitor = Monitor(agent)
            agent.monitor.start()
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: worker_ready handler failed")


def on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    try:
        agent = capture.state.agent
        if agent is None or agent.worker is None or capture.state.relay_client is not None:
            return
        if agent.monitor is not None:
            agent.monitor.stop()
        agent.worker_event("offline")
        flushed = agent.runtime.stop(5.0)
        if agent.relay is not None:
            agent.relay.close()
        if not flushed:
            log.warning("z4j celery: %d event(s) not delivered at shutdown", agent.runtime.pending)
    except Exception:  # noqa: BLE001
        log.exception("z4j celery: worker_shutdown handler failed")


def on_process_shutdown(**_: Any) -> None:
    client = capture.state.relay_client
    if client is not None:
        try:
            client.flush(2.0)
        except Exception:  # noqa: BLE001
            pass


def on_beat_init(**_: Any) -> None:
    # `celery beat` publishes tasks, but it is not a producer we capture from
    # on our own: the beat adapter has its own agent.
    capture.state.publish_enabled = False


def connect_worker_signals() -> None:
    """Connect the worker lifecycle handlers once (cheap, no side effects)."""
    global _worker_signals
    if _worker_signals:
        return
    from celery import signals

    for signal, handler in (
        (signals.celeryd_init, on_celeryd_init),
        (signals.worker_init, on_worker_init),
        (signals.celeryd_after_setup, on_after_setup),
        (signals.worker_ready, on_worker_ready),
        (signals.worker_shutdown, on_worker_shutdown),
        (signals.worker_process_shutdown, on_process_shutdown),
        (signals.beat_init, on_beat_init),
    ):
        signal.connect(handler, weak=False, dispatch_uid=f"z4j.celery.{handler.__name__}")
    _worker_signals = True
