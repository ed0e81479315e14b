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

from tests.engines.celery.conftest import Worker as ProcessWorker
from tests.support.collector import Collector, mint_agent, mint_tokens, module_collector, wait_until

ROOT = Path(__file__).resolve().parents[3]
BOOTSTRAP_LINE = "z4j worker bootstrap: agent runtime started"
P = "/api/v1/projects/default"
DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]
OPERATOR = "ops@example.com"
PASSWORD = "operator-password-1"
OFFLINE_S = 4

pytestmark = pytest.mark.engine("arq")


def arq_env(redis_url: str, agent_env: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k in ("Z4J_HOME", "_Z4J_TEST_HOME")}
    env.update(agent_env or {})
    # an outer PYTHONPATH stays behind ROOT: it may hold another arq release to test (docs/arq.md)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update({"Z4J_TEST_REDIS_URL": redis_url, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Worker(ProcessWorker):
    """One `arq` worker process; its output goes to a log file (process handling: the Celery tests' Worker)."""

    def __init__(self, env: dict[str, str], log_dir: Path, *, settings: str = "WorkerSettings",
                 queue: str = "arq:queue", name: str | None = None) -> None:
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        self.log_path = log_dir / f"arq-{self.name}.log"
        self.cmd = [sys.executable, "-m", "arq", f"tests.engines.arq.proj.{settings}"]
        self.env = {**env, "ARQ_TEST_QUEUE": queue, "Z4J_ARQ_WORKER_NAME": f"{self.name}@{os.uname().nodename}"}
        self.hostname = self.env["Z4J_ARQ_WORKER_NAME"]
        self.queue = queue
        self.proc: subprocess.Popen | None = None

    def start(self, wait_for: str = BOOTSTRAP_LINE, timeout: float = 60.0) -> Worker:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=ROOT)
        self.wait_log(wait_for, timeout)
        return self


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


class Stack:
    """A collector, agent credentials and an admin API client."""

    def __init__(self, collector: Collector, redis_url: str) -> None:
        self.collector = collector
        self.redis_url = redis_url
        self.token = mint_tokens(collector, "admin")["admin"]
        self.api = httpx.Client(base_url=collector.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def env(self, agent: str, **extra: str) -> dict[str, str]:
        creds = mint_agent(self.collector, agent)
        return arq_env(self.redis_url, self.collector.agent_env(creds), **extra)

    def task(self, task_id: str) -> dict | None:
        r = self.api.get(f"{P}/tasks/{task_id}", params={"engine": "arq"})
        return r.json() if r.status_code == 200 else None

    def wait_task(self, task_id: str, state: str, timeout: float = 30.0) -> dict:
        return wait_until(lambda: (t := self.task(task_id)) is not None and t["state"] == state and t,
                          timeout, f"task {task_id} in state {state} (now {self.task(task_id)})")

    def tasks(self, **params) -> list[dict]:
        params.setdefault("limit", 1000)
        params.setdefault("engine", "arq")
        return self.api.get(f"{P}/tasks", params=params).raise_for_status().json()["tasks"]

    def workers(self) -> dict[str, dict]:
        return {w["name"]: w for w in self.api.get(f"{P}/workers").raise_for_status().json()}

    def queues(self) -> dict[str, dict]:
        return {q["name"]: q for q in self.api.get(f"{P}/queues").raise_for_status().json()}

    def audit(self, action: str) -> list[dict]:
        return self.api.get(f"{P}/audit", params={"action": action}).raise_for_status().json()["entries"]


# ------------------------------------------------------------------ one world per test module and database


class World:
    def __init__(self, stack: Stack, main: Worker, noabort: Worker, producer_env: dict, operator: httpx.Client,
                 viewer: httpx.Client, user_id: int, tmp) -> None:
        self.stack, self.main, self.noabort, self.producer_env = stack, main, noabort, producer_env
        self.operator, self.viewer, self.user_id, self.tmp = operator, viewer, user_id, tmp
        self.redis = redis_client(stack.redis_url)

    def post(self, path: str, body: dict | None = None, api: httpx.Client | None = None) -> httpx.Response:
        return (api or self.operator).post(f"{P}/{path}", json=body or {})

    def command(self, path: str, body: dict | None = None) -> dict:
        response = self.post(path, {"wait": 20, **(body or {})})
        assert response.status_code == 200, response.text
        return response.json()

    def ok(self, path: str, body: dict | None = None) -> dict:
        command = self.command(path, body)
        assert command["state"] == "succeeded", (command["error"], command)
        return command

    def produce(self, *calls: dict) -> list[str]:
        return produce(self.producer_env, list(calls))

    def runs(self, key: str) -> list[dict]:
        return [json.loads(x) for x in self.redis.lrange(f"ran:{key}", 0, -1)]


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, redis_server, tmp_path_factory):
    redis_server.flushall()
    collector = module_collector(request, tmp_path_factory, "arq", Z4J_RECONCILE_INTERVAL_S=1,
                                 Z4J_RECONCILE_WORKER_OFFLINE_S=OFFLINE_S)
    tmp = tmp_path_factory.mktemp(f"arq-workers-{request.param}")
    stack = Stack(collector, redis_server.url)
    root = httpx.Client(base_url=collector.url, timeout=30,
                        headers={"Authorization": f"Bearer {collector.first_superuser()}"})
    user_id = root.post("/api/v1/users", json={"email": OPERATOR, "password": PASSWORD}).raise_for_status().json()["id"]
    root.put(f"{P}/members/{user_id}", json={"role": "operator"}).raise_for_status()
    operator = collector.api(collector.login(OPERATOR, PASSWORD))
    viewer = collector.api(mint_tokens(collector, "viewer")["viewer"])
    fast = {"Z4J_ARQ_HEARTBEAT_S": "1", "Z4J_ARQ_QUEUE_DEPTH_S": "0.5"}
    main = Worker(stack.env("w1", Z4J_ARQ_QUEUES="idle", **fast), tmp, name="main")
    noabort = Worker(stack.env("w2", **fast), tmp, settings="NoAbortSettings", queue="noabort", name="noabort")
    request.addfinalizer(main.kill)
    request.addfinalizer(noabort.kill)
    main.start()
    noabort.start()
    for name in ("w1", "w2"):
        wait_until(lambda name=name: any(a["name"] == name and a["connected"]
                                         for a in stack.api.get(f"{P}/agents").json()), what=f"agent {name}")
    return World(stack, main, noabort, stack.env("producer"), operator, viewer, user_id, tmp)
