"""Real taskiq processes for the engine tests: `taskiq worker tests.engines.taskiq.proj:broker`
(and `taskiq scheduler`) subprocesses on the session's redis-server, reporting to a
real collector (tests/support/collector.py), and a producer in the test process."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.collector import Collector
from tests.support.engine import WorkerProcess, worker_env
from tests.support.engine import Stack as EngineStack
from tests.support.engine import stored_replay as engine_stored_replay

TASKIQ = [sys.executable, "-m", "taskiq"]
BOOTSTRAP_LINE = "z4j worker bootstrap: agent runtime started"
SCHEDULER_LINE = "z4j scheduler bootstrap: agent runtime started"

pytestmark = pytest.mark.engine("taskiq")

taskiq_env = worker_env


class Proc(WorkerProcess):
    """One taskiq process group (``count`` processes saying they are ready); its output goes to a log file."""

    ready = "Listening started."

    def __init__(self, cmd: list[str], env: dict[str, str], log_dir: Path, name: str, count: int = 1) -> None:
        self.name, self.count, self.ready_count = name, count, count
        super().__init__(cmd, env, log_dir / f"taskiq-{name}.log", name)

    def start(self, timeout: float = 60.0) -> Proc:
        return super().start(timeout=timeout)


def worker(env: dict[str, str], log_dir: Path, workers: int = 2, name: str | None = None,
           *extra: str) -> Proc:
    return Proc([*TASKIQ, "worker", "tests.engines.taskiq.proj:broker", "--workers", str(workers),
                 "--log-level", "INFO", *extra], env, log_dir, name or f"w{uuid.uuid4().hex[:6]}", count=workers)


def scheduler(env: dict[str, str], log_dir: Path) -> Proc:
    proc = Proc([*TASKIQ, "scheduler", "tests.engines.taskiq.proj:scheduler", "--update-interval", "1",
                 "--log-level", "INFO"], env, log_dir, f"sched{uuid.uuid4().hex[:6]}")
    proc.ready = "Startup completed."
    return proc


class Producer:
    """A plain taskiq client (no z4j) on its own event loop: kicks the test tasks by name."""

    def __init__(self, redis_url: str, queue: str = "taskiq") -> None:
        from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

        self.loop = asyncio.new_event_loop()
        self.broker = ListQueueBroker(redis_url, queue_name=queue).with_result_backend(
            RedisAsyncResultBackend(redis_url))
        self.loop.run_until_complete(self.broker.startup())

    def kick(self, name: str, *args, labels: dict | None = None, **kwargs) -> str:
        from taskiq.kicker import AsyncKicker

        sent = self.loop.run_until_complete(AsyncKicker(name, self.broker, labels or {}).kiq(*args, **kwargs))
        return sent.task_id

    def result(self, task_id: str):
        return self.loop.run_until_complete(self.broker.result_backend.get_result(task_id))

    def close(self) -> None:
        self.loop.run_until_complete(self.broker.shutdown())
        self.loop.close()


class Stack(EngineStack):
    """A collector, agent credentials (``name``) and an admin API client, for engine taskiq."""

    def __init__(self, collector: Collector, redis_url: str, name: str = "tq") -> None:
        super().__init__(collector, redis_url, "taskiq", name)


def stored_replay(db_url: str, task_id: str) -> bytes | None:
    return engine_stored_replay(db_url, "taskiq", task_id)
