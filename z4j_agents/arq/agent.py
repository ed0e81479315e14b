"""The arq agent: one per process, started from the worker's ``on_startup``.

Two threads of its own, so that the worker's event loop only ever appends
notes to a deque (capture.py):

* ``z4j-agent`` (runtime.py): redaction, batches, the collector connection,
  commands;
* ``z4j-arq``: a private asyncio loop that turns notes into events (and
  seals the calls), sends heartbeats and queue depths every few seconds, and
  runs the actions' Redis work on its own arq connection (never the
  worker's, never on the worker's loop).

Lifecycle in ``arq module.WorkerSettings`` (after ``install(WorkerSettings)``):
``on_startup`` finds the worker, wraps its job functions and
``finish_failed_job`` (on this worker object only), declares the actions,
starts both threads and reports the worker ``online``; ``on_shutdown``
reports it ``offline`` and flushes for up to 5 s without blocking the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Any, Awaitable, Callable

from z4j_agents import protocol as p
from z4j_agents.arq import capture
from z4j_agents.config import AgentConfig, ConfigError
from z4j_agents.env_options import engine_options
from z4j_agents.monitor import LogOnce
from z4j_agents.runtime import AgentRuntime, CommandError, installed_version

log = logging.getLogger("z4j.arq")
bootstrap_log = logging.getLogger("z4j.arq.worker_bootstrap")

BOOTSTRAP_LINE = "z4j worker bootstrap: agent runtime started"
DRAIN_S = 0.05
DRAIN_CHUNK = 200
MAX_FIRES = 1000

def options_from_env() -> dict[str, Any]:
    opts = engine_options(os.environ, "arq")
    name = os.environ.get("Z4J_ARQ_WORKER_NAME")
    if name:
        opts["worker_name"] = name
    return opts


class ArqAgent:
    engine = capture.ENGINE

    def __init__(self, config: AgentConfig, *, redactor: Any = None, heartbeat_s: float = 10.0,
                 queue_depth_s: float = 5.0, queues: tuple[str, ...] = (), worker_name: str | None = None) -> None:
        self.config = config
        self.runtime = AgentRuntime(config, engines=(self.engine,), version=installed_version(), redactor=redactor)
        self.heartbeat_s = heartbeat_s or 10.0
        self.queue_depth_s = queue_depth_s
        self.extra_queues = tuple(queues)
        self.worker: Any = None
        self.worker_name = worker_name or f"arq.{os.getpid()}@{socket.gethostname()}"
        self.capture: capture.WorkerCapture | None = None
        self.cron_names: frozenset[str] = frozenset()
        self.fires: deque[dict[str, Any]] = deque(maxlen=MAX_FIRES)
        self.fires_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._pool: Any = None
        self._pool_lock: asyncio.Lock | None = None
        self._once = LogOnce(log)

    @property
    def secret(self) -> str:
        return self.config.hmac_secret

    def on_command(self, action: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        self.runtime.on_command(action, handler)

    # ------------------------------------------------------------ worker

    def bind(self, worker: Any) -> None:
        """Capture this worker's jobs (its own function table, not the app's objects)."""
        self.worker = worker
        self.capture = capture.WorkerCapture(self, worker)
        self.capture.wrap_functions()
        self.cron_names = frozenset(cj.name for cj in getattr(worker, "cron_jobs", None) or ())

    def cron_fired(self, name: str, job_id: str | None, ts: float, *, manual: bool = False,
                   actor: str | None = None) -> dict[str, Any]:
        fire = {"id": p.new_id(), "schedule": name, "task": name, "task_id": job_id, "ts": ts, "manual": manual}
        if actor:
            fire["actor"] = actor[:400]
        with self.fires_lock:
            self.fires.append(fire)
        return fire

    def worker_event(self, kind: str, info: dict[str, Any] | None = None) -> None:
        if self.worker is None:
            return
        try:
            facts = {**worker_info(self), **(info or {})}
        except Exception:  # noqa: BLE001
            log.exception("z4j arq: could not read worker facts")
            facts = None
        self.runtime.emit(p.WorkerEvent(id=p.new_id(), worker=self.worker_name, engine=self.engine, kind=kind,
                                        ts=time.time(), info=facts))

    # ------------------------------------------------------------ threads

    def start(self) -> None:
        self.runtime.start()
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._thread_main, name="z4j-arq", daemon=True)
            self._thread.start()
            self._ready.wait(5.0)

    def stop(self, timeout: float = 5.0) -> bool:
        """Send what is noted, flush for up to ``timeout`` s, stop both threads (blocking: call it off the loop)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self.drain()
        return self.runtime.stop(timeout)

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception:  # noqa: BLE001
            log.exception("z4j arq: agent thread died")
        finally:
            try:
                if self._pool is not None:
                    loop.run_until_complete(_close(self._pool))
            except Exception:  # noqa: BLE001
                pass
            loop.close()

    async def _main(self) -> None:
        self._pool_lock = asyncio.Lock()
        self._ready.set()
        monitor = asyncio.create_task(self._monitor())
        try:
            while not self._stop.is_set():
                self.drain(DRAIN_CHUNK)
                # short bursts: between chunks the GIL goes back to the worker's loop
                await asyncio.sleep(DRAIN_S if not capture.state.notes else 0.001)
        finally:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)

    def drain(self, limit: int = 10_000) -> None:
        """Turn notes into events (sealing calls here, off the worker's loop)."""
        from z4j_agents.arq.call import seal_call

        notes = capture.state.notes
        emit = self.runtime.emit
        secret = self.config.hmac_secret
        if capture.state.dropped:
            dropped, capture.state.dropped = capture.state.dropped, 0
            self.runtime.dropped += dropped
        for _ in range(limit):
            try:
                ts, kind, job_id, fields, seal = notes.popleft()
            except IndexError:
                return
            try:
                if seal is not None:
                    try:
                        fields["replay"] = seal_call(secret, job_id=job_id, function=seal[0], queue=seal[1],
                                                     job=seal[2])
                    except Exception:  # noqa: BLE001 - the event still goes, without a sealed call
                        log.exception("z4j arq: could not seal the call of %s", job_id)
                emit(p.TaskEvent(id=p.new_id(), task_id=job_id, engine=self.engine, kind=kind, ts=ts, **fields))
            except Exception:  # noqa: BLE001
                log.exception("z4j arq: could not build an event for %s", job_id)

    async def _monitor(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_s
        next_depth = time.monotonic()
        while True:
            now = time.monotonic()
            if self.worker is not None:
                try:
                    if self.queue_depth_s > 0 and now >= next_depth:
                        next_depth = now + self.queue_depth_s
                        await self._sample_depths()
                    if now >= next_beat:
                        next_beat = now + self.heartbeat_s
                        await self._heartbeat()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - Redis may be down; next round
                    self._once(f"monitor:{type(exc).__name__}", logging.WARNING,
                               "z4j arq: could not sample the worker: %s: %s", type(exc).__name__, exc)
                    await self._drop_pool()
            wake = min(next_beat, next_depth if self.queue_depth_s > 0 else next_beat)
            await asyncio.sleep(max(0.05, wake - time.monotonic()))

    def queues(self) -> list[str]:
        names = [self.worker.queue_name] if self.worker is not None else []
        return names + [q for q in self.extra_queues if q not in names]

    async def _sample_depths(self) -> None:
        pool = await self.pool()
        names = self.queues()
        async with pool.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcard(name)
            depths = await pipe.execute()
        now = time.time()
        for name, depth in zip(names, depths):
            self.runtime.emit(p.QueueEvent(id=p.new_id(), queue=name, engine=self.engine, ts=now, depth=int(depth)))

    async def _heartbeat(self) -> None:
        health = None
        try:
            pool = await self.pool()
            raw = await pool.get(self.worker.health_check_key)
            health = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        except Exception:  # noqa: BLE001 - the heartbeat goes without it
            pass
        self.worker_event("heartbeat", {"health_check": health} if health else None)

    # ------------------------------------------------------------ Redis, on the agent's own loop

    async def pool(self) -> Any:
        """An ArqRedis of this agent's own, on the worker's Redis settings."""
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await _pool_like(self.worker)
            return self._pool

    async def _drop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await _close(pool)
            except Exception:  # noqa: BLE001
                pass

    def call(self, make: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
        """Run ``make()`` on the agent's loop and wait (from a command thread)."""
        if self.worker is None:
            raise CommandError(f"this process runs no arq worker; it cannot {what}")
        loop = self._loop
        if loop is None or loop.is_closed() or self._stop.is_set():
            raise CommandError(f"the agent is stopping; it cannot {what}")
        future = asyncio.run_coroutine_threadsafe(make(), loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise CommandError(f"Redis did not answer within {timeout:.0f} s; could not {what}") from None


async def _close(pool: Any) -> None:
    closer = getattr(pool, "aclose", None)  # redis-py >= 5.0.1; close() before
    await (closer() if closer is not None else pool.close(close_connection_pool=True))


async def _pool_like(worker: Any) -> Any:
    from arq.connections import ArqRedis, create_pool

    if getattr(worker, "redis_settings", None) is not None:
        return await create_pool(worker.redis_settings, job_serializer=worker.job_serializer,
                                 job_deserializer=worker.job_deserializer, default_queue_name=worker.queue_name)
    from redis.asyncio import ConnectionPool

    source = worker.pool.connection_pool
    return ArqRedis(ConnectionPool(connection_class=source.connection_class, **source.connection_kwargs),
                    job_serializer=worker.job_serializer, job_deserializer=worker.job_deserializer,
                    default_queue_name=worker.queue_name)


def worker_info(agent: ArqAgent) -> dict[str, Any]:
    import arq

    worker = agent.worker
    info: dict[str, Any] = {
        "pid": os.getpid(), "version": getattr(arq, "VERSION", "?"), "sw_ident": "arq", "pool": "asyncio",
        "concurrency": worker.max_jobs, "active": len(worker.job_tasks), "queues": agent.queues(),
        "processed": worker.jobs_complete + worker.jobs_failed + worker.jobs_retried,
        "complete": worker.jobs_complete, "failed": worker.jobs_failed, "retried": worker.jobs_retried,
        "allow_abort_jobs": bool(worker.allow_abort_jobs), "health_check_key": worker.health_check_key,
    }
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


# ------------------------------------------------------------------ bootstrap


def build_agent(config: AgentConfig | None, redactor: Any, options: dict[str, Any]) -> ArqAgent:
    """An agent from install()'s arguments or the environment; ConfigError when incomplete."""
    config = config or AgentConfig.from_env()
    return ArqAgent(config, redactor=redactor, **{**options_from_env(), **options})


def find_worker(ctx: dict) -> Any:
    """The ``arq.worker.Worker`` whose ``on_startup`` is running (its ``ctx``)."""
    import gc

    from arq.worker import Worker

    task = asyncio.current_task()
    frame = getattr(task.get_coro(), "cr_frame", None) if task is not None else None
    candidate = frame.f_locals.get("self") if frame is not None else None
    if isinstance(candidate, Worker) and candidate.ctx is ctx:
        return candidate
    for holder in gc.get_referrers(ctx):  # Worker.main() run from the application's own task
        if isinstance(holder, Worker) and holder.ctx is ctx:
            return holder
        if isinstance(holder, dict) and holder.get("ctx") is ctx:
            for owner in gc.get_referrers(holder):
                if isinstance(owner, Worker) and owner.ctx is ctx:
                    return owner
    return None


def bootstrap_worker(ctx: dict, config: AgentConfig | None, redactor: Any, options: dict[str, Any]) -> ArqAgent | None:
    """Start the agent for the worker whose ``on_startup`` runs (never raises)."""
    try:
        _borrow_arq_logging()
        worker = find_worker(ctx)
        if worker is None:
            bootstrap_log.error("z4j worker bootstrap: agent not started: the arq worker running this on_startup "
                                "was not found; the worker runs without z4j")
            return None
        agent = capture.state.agent
        if agent is not None and agent.worker is not None:
            return agent
        try:
            if agent is None:
                agent = build_agent(config, redactor, options)
        except ConfigError as exc:
            capture.state.enqueue_enabled = False  # said once here, not again at the first enqueue
            bootstrap_log.error("z4j worker bootstrap: agent not started: %s; the worker runs without z4j", exc)
            return None
        if agent.runtime._thread is not None:
            bootstrap_log.warning("z4j worker bootstrap: this process's agent connected before the worker "
                                  "started; its actions are announced at the next reconnect")
        agent.bind(worker)
        from z4j_agents.arq import actions, cron

        actions.register(agent)
        cron.register(agent)
        capture.state.agent = agent
        agent.start()
        agent.worker_event("online")
        bootstrap_log.info("%s (worker %s, queue %s)", BOOTSTRAP_LINE, agent.worker_name, worker.queue_name)
        return agent
    except Exception as exc:  # noqa: BLE001
        bootstrap_log.error("z4j worker bootstrap: agent not started: %s: %s", type(exc).__name__, exc)
        log.debug("z4j arq: bootstrap failed", exc_info=True)
        return None


async def shutdown_worker() -> None:
    """Offline, then flush (up to 5 s) on a thread: the loop keeps running meanwhile."""
    agent = capture.state.agent
    if agent is None or agent.worker is None:
        return
    try:
        agent.worker_event("offline")
        flushed = await asyncio.get_running_loop().run_in_executor(None, agent.stop, 5.0)
        if not flushed:
            log.warning("z4j arq: %d event(s) not delivered at shutdown", agent.runtime.pending)
    except Exception:  # noqa: BLE001
        log.exception("z4j arq: shutdown failed")


def _borrow_arq_logging() -> None:
    """Under the ``arq`` command only arq's logger has a handler: z4j's lines
    (the bootstrap line among them) would be lost. Use arq's handler for
    them when nothing else configured logging."""
    z4j_logger = logging.getLogger("z4j")
    if z4j_logger.handlers or logging.getLogger().handlers:
        return
    arq_logger = logging.getLogger("arq")
    if not arq_logger.handlers:
        return
    for handler in arq_logger.handlers:
        z4j_logger.addHandler(handler)
    z4j_logger.setLevel(arq_logger.getEffectiveLevel())
    z4j_logger.propagate = False
