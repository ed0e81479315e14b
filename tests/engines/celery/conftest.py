"""Real Celery workers for the engine tests: `celery -A tests.engines.celery.proj worker` subprocesses
on the session's redis-server, reporting to a real collector (tests/support/collector.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.collector import Collector
from tests.support.engine import ROOT, WorkerProcess, worker_env
from tests.support.engine import Stack as EngineStack
from tests.support.engine import stored_replay as engine_stored_replay

CELERY = [sys.executable, "-m", "celery", "-A", "tests.engines.celery.proj"]
BOOTSTRAP_LINE = "z4j worker bootstrap: agent runtime started"

pytestmark = pytest.mark.engine("celery")

celery_env = worker_env


class Worker(WorkerProcess):
    """One `celery worker` process group; its output goes to a log file."""

    ready = " ready."

    def __init__(self, env: dict[str, str], log_dir: Path, *, pool: str = "prefork", concurrency: int = 2,
                 queues: str = "celery", name: str | None = None, loglevel: str = "info") -> None:
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        self.hostname = f"{self.name}@{os.uname().nodename}"
        cmd = [*CELERY, "worker", "-l", loglevel, "--pool", pool, "-c", str(concurrency), "-Q", queues,
               "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"{self.name}@%h"]
        super().__init__(cmd, env, log_dir / f"celery-{self.name}.log", "celery worker")

    def start(self, ready_timeout: float = 60.0) -> Worker:
        return super().start(timeout=ready_timeout)


def run_celery(env: dict[str, str], *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([*CELERY, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def producer(redis_url: str, backend: bool = False):
    """A plain Celery client (no z4j) that sends the test tasks by name. Without
    ``backend`` it never subscribes to results (chords need one)."""
    from celery import Celery

    app = Celery("producer", broker=redis_url, backend=redis_url if backend else None)
    app.conf.update(task_default_queue="celery", broker_connection_retry_on_startup=True)
    return app


class Stack(EngineStack):
    """A collector, agent credentials (``name``) and an admin API client, for engine celery."""

    def __init__(self, collector: Collector, redis_url: str, name: str = "w1") -> None:
        super().__init__(collector, redis_url, "celery", name)


@pytest.fixture
def stack(collector, redis_url) -> Stack:
    return Stack(collector, redis_url)


def stored_replay(db_url: str, task_id: str) -> bytes | None:
    return engine_stored_replay(db_url, "celery", task_id)
