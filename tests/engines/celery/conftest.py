"""Real Celery workers for the engine tests: `celery -A tests.engines.celery.proj worker` subprocesses
on the session's redis-server, reporting to a real collector (tests/support/collector.py)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.collector import Collector, mint_agent, mint_tokens, wait_until

ROOT = Path(__file__).resolve().parents[3]
CELERY = [sys.executable, "-m", "celery", "-A", "tests.engines.celery.proj"]
BOOTSTRAP_LINE = "z4j worker bootstrap: agent runtime started"

pytestmark = pytest.mark.engine("celery")


def celery_env(redis_url: str, agent_env: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k in ("Z4J_HOME", "_Z4J_TEST_HOME")}
    env.update(agent_env or {})
    env.update({"Z4J_TEST_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Worker:
    """One `celery worker` process group; its output goes to a log file."""

    def __init__(self, env: dict[str, str], log_dir: Path, *, pool: str = "prefork", concurrency: int = 2,
                 queues: str = "celery", name: str | None = None, loglevel: str = "info") -> None:
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        self.hostname = f"{self.name}@{os.uname().nodename}"
        self.log_path = log_dir / f"celery-{self.name}.log"
        self.cmd = [*CELERY, "worker", "-l", loglevel, "--pool", pool, "-c", str(concurrency), "-Q", queues,
                    "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"{self.name}@%h"]
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 60.0) -> Worker:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=ROOT)
        self.wait_log(" ready.", ready_timeout)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"celery worker exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the worker's log:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> int | None:
        """Warm shutdown (SIGTERM to the main process), SIGKILL of the group if it hangs."""
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


def run_celery(env: dict[str, str], *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([*CELERY, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def producer(redis_url: str, backend: bool = False):
    """A plain Celery client (no z4j) that sends the test tasks by name. Without
    ``backend`` it never subscribes to results (chords need one)."""
    from celery import Celery

    app = Celery("producer", broker=redis_url, backend=redis_url if backend else None)
    app.conf.update(task_default_queue="celery", broker_connection_retry_on_startup=True)
    return app


class Stack:
    """A collector, agent credentials and an admin API client."""

    def __init__(self, collector: Collector, redis_url: str, name: str = "w1") -> None:
        self.collector = collector
        self.redis_url = redis_url
        self.creds = mint_agent(collector, name)
        self.token = mint_tokens(collector, "admin")["admin"]
        self.api = httpx.Client(base_url=collector.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def env(self, **extra: str) -> dict[str, str]:
        return celery_env(self.redis_url, self.collector.agent_env(self.creds), **extra)

    def task(self, task_id: str) -> dict | None:
        r = self.api.get(f"/api/v1/projects/default/tasks/{task_id}", params={"engine": "celery"})
        return r.json() if r.status_code == 200 else None

    def wait_task(self, task_id: str, state: str, timeout: float = 30.0) -> dict:
        return wait_until(lambda: (t := self.task(task_id)) is not None and t["state"] == state and t,
                          timeout, f"task {task_id} in state {state} (now {self.task(task_id)})")

    def tasks(self, **params) -> list[dict]:
        params.setdefault("limit", 1000)
        return self.api.get("/api/v1/projects/default/tasks", params=params).raise_for_status().json()["tasks"]

    def workers(self) -> dict[str, dict]:
        return {w["name"]: w for w in self.api.get("/api/v1/projects/default/workers").raise_for_status().json()}

    def queues(self) -> dict[str, dict]:
        return {q["name"]: q for q in self.api.get("/api/v1/projects/default/queues").raise_for_status().json()}

    def connections(self, name: str = "w1") -> int:
        """How many times the collector accepted a connection of agent ``name``."""
        return self.collector.log_path.read_text(errors="replace").count(f"agent {name} (default) connected from")


@pytest.fixture
def stack(collector, redis_url) -> Stack:
    return Stack(collector, redis_url)


def db_text(db_url: str) -> str:
    """Every row of every table of the collector's database, as text (to look for leaked secrets)."""
    parts: list[str] = []
    if db_url.startswith("sqlite"):
        path = db_url.split("sqlite:///", 1)[1]
        conn = sqlite3.connect(path)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    parts.append(repr(row))
        finally:
            conn.close()
        for suffix in ("", "-wal"):
            p = Path(path + suffix)
            if p.exists():
                parts.append(p.read_bytes().decode("latin-1"))
    else:
        import psycopg

        with psycopg.connect(db_url) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            for table in tables:
                for (row,) in conn.execute(f'SELECT t::text FROM "{table}" t'):
                    parts.append(row)
    return "\n".join(parts)


def stored_replay(db_url: str, task_id: str) -> bytes | None:
    """The sealed call the collector stores for a task (tasks.replay), read straight from the database."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.split("sqlite:///", 1)[1])
        try:
            row = conn.execute("SELECT replay FROM tasks WHERE engine='celery' AND task_id=?", (task_id,)).fetchone()
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT replay FROM tasks WHERE engine='celery' AND task_id=%s", (task_id,)).fetchone()
    return None if row is None or row[0] is None else bytes(row[0])
