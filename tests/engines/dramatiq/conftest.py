"""Real Dramatiq workers for the engine tests: `python -m dramatiq tests.engines.dramatiq.app` (the forking
CLI: processes x threads) on the session's redis-server, reporting to a real collector."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from tests.support.collector import Collector
from tests.support.engine import WorkerProcess, worker_env
from tests.support.engine import Stack as EngineStack

DRAMATIQ = [sys.executable, "-m", "dramatiq", "tests.engines.dramatiq.app"]
BOOTSTRAP_LINE = "z4j worker bootstrap: agent runtime started"

pytestmark = pytest.mark.engine("dramatiq")

dramatiq_env = worker_env


class Worker(WorkerProcess):
    """One `dramatiq` CLI process group (its worker processes are forked children); output to a log file.
    Ready when every worker process says so; stop() waits up to 60 s for the warm shutdown."""

    ready = "Worker process is ready for action."
    stop_timeout = 60.0

    def __init__(self, env: dict[str, str], log_dir: Path, *, processes: int = 2, threads: int = 2,
                 queues: tuple[str, ...] = ("default", "dead"), name: str | None = None) -> None:
        self.name = name or f"d{uuid.uuid4().hex[:6]}"
        self.processes = self.ready_count = processes
        cmd = [*DRAMATIQ, "--processes", str(processes), "--threads", str(threads), "--queues", *queues]
        super().__init__(cmd, env, log_dir / f"dramatiq-{self.name}.log", "dramatiq")

    def start(self, ready_timeout: float = 60.0) -> Worker:
        return super().start(timeout=ready_timeout)


def producer(redis_url: str):
    """A plain Dramatiq client (no z4j) on the test Redis: results and group callbacks, like the workers."""
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.middleware import GroupCallbacks
    from dramatiq.rate_limits.backends import RedisBackend as RateLimiterBackend
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker = RedisBroker(url=redis_url)
    broker.add_middleware(Results(backend=RedisBackend(url=redis_url)))
    broker.add_middleware(GroupCallbacks(RateLimiterBackend(url=redis_url)))
    return broker


def msg(actor: str, *args, queue: str = "default", options: dict | None = None, **kwargs):
    """A message for a test actor, by name (the test process does not import the workers' module)."""
    from dramatiq import Message

    return Message(queue_name=queue, actor_name=actor, args=args, kwargs=kwargs, options=dict(options or {}))


def send(broker, actor: str, *args, queue: str = "default", options: dict | None = None, **kwargs):
    return broker.enqueue(msg(actor, *args, queue=queue, options=options, **kwargs))


class Stack(EngineStack):
    """A collector, agent credentials (``name``) and an admin API client, for engine dramatiq."""

    def __init__(self, collector: Collector, redis_url: str, name: str = "d1") -> None:
        super().__init__(collector, redis_url, "dramatiq", name)


def module_stack(request, tmp_path_factory, redis_server, label: str, **collector_env) -> Stack:
    """A collector on the module's database (SQLite or PostgreSQL, from ``request.param``) and a fresh Redis."""
    from tests.support.collector import module_collector

    redis_server.flushall()
    collector = module_collector(request, tmp_path_factory, label, **collector_env)
    return Stack(collector, redis_server.url)
