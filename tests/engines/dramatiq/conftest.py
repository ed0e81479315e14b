"""Real Dramatiq workers for the engine tests: `python -m dramatiq tests.engines.dramatiq.app` (the forking
CLI: processes x threads) on the session's redis-server, reporting to a real collector."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.engines.celery.conftest import Stack as CeleryStack
from tests.engines.celery.conftest import celery_env
from tests.engines.celery.conftest import Worker as CeleryWorker
from tests.support.collector import Collector

ROOT = Path(__file__).resolve().parents[3]
DRAMATIQ = [sys.executable, "-m", "dramatiq", "tests.engines.dramatiq.app"]
BOOTSTRAP_LINE = "z4j worker bootstrap: agent runtime started"
DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]
P = "/api/v1/projects/default"

pytestmark = pytest.mark.engine("dramatiq")


dramatiq_env = celery_env
"""The test environment of a worker: no Z4J_ variable but the agent's, the test Redis, PYTHONPATH."""


class Worker(CeleryWorker):
    """One `dramatiq` CLI process group (its worker processes are forked children); output to a log file.
    log(), stop() (warm: SIGTERM to the main process) and kill() (SIGKILL to the group) are the Celery tests'."""

    def __init__(self, env: dict[str, str], log_dir: Path, *, processes: int = 2, threads: int = 2,
                 queues: tuple[str, ...] = ("default", "dead"), name: str | None = None) -> None:
        self.name = name or f"d{uuid.uuid4().hex[:6]}"
        self.processes = processes
        self.log_path = log_dir / f"dramatiq-{self.name}.log"
        self.cmd = [*DRAMATIQ, "--processes", str(processes), "--threads", str(threads), "--queues", *queues]
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 60.0) -> Worker:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=ROOT)
        deadline = time.monotonic() + ready_timeout
        while self.log().count("Worker process is ready for action.") < self.processes:
            if self.proc.poll() is not None:
                raise AssertionError(f"dramatiq exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"dramatiq not ready:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    def stop(self, timeout: float = 60.0) -> int | None:
        return super().stop(timeout)


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


class Stack(CeleryStack):
    """A collector, agent credentials and an admin API client (the Celery tests' helper, for engine dramatiq)."""

    def __init__(self, collector: Collector, redis_url: str, name: str = "d1") -> None:
        super().__init__(collector, redis_url, name)
        self.name = name

    def env(self, **extra: str) -> dict[str, str]:
        return dramatiq_env(self.redis_url, self.collector.agent_env(self.creds), **extra)

    def task(self, task_id: str) -> dict | None:
        r = self.api.get(f"{P}/tasks/{task_id}", params={"engine": "dramatiq"})
        return r.json() if r.status_code == 200 else None

    def connections(self, name: str | None = None) -> int:
        return super().connections(name or self.name)


def module_stack(request, tmp_path_factory, redis_server, label: str, **collector_env) -> Stack:
    """A collector on the module's database (SQLite or PostgreSQL, from ``request.param``) and a fresh Redis."""
    from tests.support.collector import module_collector

    redis_server.flushall()
    collector = module_collector(request, tmp_path_factory, label, **collector_env)
    return Stack(collector, redis_server.url)
