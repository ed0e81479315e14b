"""Real taskiq processes for the engine tests: `taskiq worker tests.engines.taskiq.proj:broker`
(and `taskiq scheduler`) subprocesses on the session's redis-server, reporting to a
real collector (tests/support/collector.py), and a producer in the test process."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.engines.celery.conftest import Stack as CeleryStack
from tests.engines.celery.conftest import db_text  # noqa: F401 - shared: every row of the collector's database
from tests.support.collector import Collector

ROOT = Path(__file__).resolve().parents[3]
TASKIQ = [sys.executable, "-m", "taskiq"]
BOOTSTRAP_LINE = "z4j worker bootstrap: agent runtime started"
SCHEDULER_LINE = "z4j scheduler bootstrap: agent runtime started"
DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]
P = "/api/v1/projects/default"

pytestmark = pytest.mark.engine("taskiq")


def taskiq_env(redis_url: str, agent_env: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k in ("Z4J_HOME", "_Z4J_TEST_HOME")}
    env.update(agent_env or {})
    env.update({"Z4J_TEST_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Proc:
    """One taskiq process group; its output goes to a log file."""

    ready = "Listening started."

    def __init__(self, cmd: list[str], env: dict[str, str], log_dir: Path, name: str, count: int = 1) -> None:
        self.cmd, self.env, self.name, self.count = cmd, env, name, count
        self.log_path = log_dir / f"taskiq-{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Proc:
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.log().count(self.ready) < self.count:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the main process (it stops its workers), SIGKILL of the group if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


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


class Stack(CeleryStack):
    """A collector, agent credentials and an admin API client (the Celery tests' helpers, for engine taskiq)."""

    def __init__(self, collector: Collector, redis_url: str, name: str = "tq") -> None:
        super().__init__(collector, redis_url, name)
        self.name = name

    def env(self, **extra: str) -> dict[str, str]:
        return taskiq_env(self.redis_url, self.collector.agent_env(self.creds), **extra)

    def task(self, task_id: str) -> dict | None:
        r = self.api.get(f"{P}/tasks/{task_id}", params={"engine": "taskiq"})
        return r.json() if r.status_code == 200 else None

    def connections(self, name: str | None = None) -> int:
        return super().connections(name or self.name)


def module_db(request, tmp_path_factory, label: str) -> tuple[str, Path]:
    """(db_url, tmp dir) for a module-scoped fixture parametrized over DBS."""
    tmp = tmp_path_factory.mktemp(f"{label}-{request.param}")
    if request.param == "sqlite":
        return f"sqlite:///{tmp}/z4j.db", tmp
    server = request.getfixturevalue("postgres_server")
    name = f"tq_{label}_{os.urandom(5).hex()}"
    url = server.create_database(name)
    request.addfinalizer(lambda: server.drop_database(name))
    return url, tmp


def stored_replay(db_url: str, task_id: str) -> bytes | None:
    """The sealed call the collector stores for a task (tasks.replay), read straight from the database."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.split("sqlite:///", 1)[1])
        try:
            row = conn.execute("SELECT replay FROM tasks WHERE engine='taskiq' AND task_id=?", (task_id,)).fetchone()
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT replay FROM tasks WHERE engine='taskiq' AND task_id=%s", (task_id,)).fetchone()
    return None if row is None or row[0] is None else bytes(row[0])
