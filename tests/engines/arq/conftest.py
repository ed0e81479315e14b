"""Real arq workers for the engine tests: `arq tests.engines.arq.proj.<Settings>` subprocesses on
the session's redis-server, reporting to a real collector (tests/support/collector.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.collector import Collector, mint_agent, mint_tokens, module_collector, wait_agent_connected
from tests.support.engine import DBS, ROOT, Actions, WorkerProcess, operator_user, runs, worker_env
from tests.support.engine import Stack as EngineStack

BOOTSTRAP_LINE = "z4j worker bootstrap: agent runtime started"
OFFLINE_S = 4

pytestmark = pytest.mark.engine("arq")

arq_env = worker_env


class Worker(WorkerProcess):
    """One `arq` worker process; its output goes to a log file."""

    ready = BOOTSTRAP_LINE

    def __init__(self, env: dict[str, str], log_dir: Path, *, settings: str = "WorkerSettings",
                 queue: str = "arq:queue", name: str | None = None) -> None:
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        env = {**env, "ARQ_TEST_QUEUE": queue, "Z4J_ARQ_WORKER_NAME": f"{self.name}@{os.uname().nodename}"}
        self.hostname = env["Z4J_ARQ_WORKER_NAME"]
        self.queue = queue
        super().__init__([sys.executable, "-m", "arq", f"tests.engines.arq.proj.{settings}"], env,
                         log_dir / f"arq-{self.name}.log", "arq worker")

    def start(self, wait_for: str = BOOTSTRAP_LINE, timeout: float = 60.0) -> Worker:
        return super().start(wait_for, timeout)


def enqueue(redis_url: str, function: str, *args, _queue_name: str = "arq:queue", **kwargs) -> str:
    """Enqueue from this process with plain arq (no z4j here): the job id."""
    from arq import create_pool
    from arq.connections import RedisSettings

    async def go() -> str:
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        try:
            job = await pool.enqueue_job(function, *args, _queue_name=_queue_name, **kwargs)
            return job.job_id
        finally:
            await pool.aclose()

    return asyncio.run(go())


def produce(env: dict[str, str], calls: list[dict]) -> list[str]:
    """Enqueue from a producer process with z4j installed (tests/engines/arq/produce.py): the job ids."""
    out = subprocess.run([sys.executable, "-m", "tests.engines.arq.produce", json.dumps(calls)], env=env,
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def redis_client(redis_url: str):
    import redis

    return redis.Redis.from_url(redis_url)


class Stack(EngineStack):
    """A collector and an admin API client, for engine arq (agent credentials: per :meth:`env`)."""

    def __init__(self, collector: Collector, redis_url: str) -> None:
        super().__init__(collector, redis_url, "arq", agent=None)

    def env(self, agent: str, **extra: str) -> dict[str, str]:
        """The environment of a worker whose agent has fresh credentials ``agent``."""
        creds = mint_agent(self.collector, agent)
        return arq_env(self.redis_url, self.collector.agent_env(creds), **extra)


# ------------------------------------------------------------------ one world per test module and database


class World(Actions):
    wait = 20

    def __init__(self, stack: Stack, main: Worker, noabort: Worker, producer_env: dict, operator: httpx.Client,
                 viewer: httpx.Client, user_id: int, tmp) -> None:
        self.stack, self.main, self.noabort, self.producer_env = stack, main, noabort, producer_env
        self.operator, self.viewer, self.user_id, self.tmp = operator, viewer, user_id, tmp
        self.redis = redis_client(stack.redis_url)

    def produce(self, *calls: dict) -> list[str]:
        return produce(self.producer_env, list(calls))

    def runs(self, key: str) -> list[dict]:
        return runs(self.redis, key)


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, redis_server, tmp_path_factory):
    redis_server.flushall()
    collector = module_collector(request, tmp_path_factory, "arq", Z4J_RECONCILE_INTERVAL_S=1,
                                 Z4J_RECONCILE_WORKER_OFFLINE_S=OFFLINE_S)
    tmp = tmp_path_factory.mktemp(f"arq-workers-{request.param}")
    stack = Stack(collector, redis_server.url)
    operator, user_id = operator_user(collector)
    viewer = collector.api(mint_tokens(collector, "viewer")["viewer"])
    fast = {"Z4J_ARQ_HEARTBEAT_S": "1", "Z4J_ARQ_QUEUE_DEPTH_S": "0.5"}
    main = Worker(stack.env("w1", Z4J_ARQ_QUEUES="idle", **fast), tmp, name="main")
    noabort = Worker(stack.env("w2", **fast), tmp, settings="NoAbortSettings", queue="noabort", name="noabort")
    request.addfinalizer(main.kill)
    request.addfinalizer(noabort.kill)
    main.start()
    noabort.start()
    for name in ("w1", "w2"):
        wait_agent_connected(stack.api, name)
    return World(stack, main, noabort, stack.env("producer"), operator, viewer, user_id, tmp)
