"""The taskiq app the engine tests run in real `taskiq worker tests.engines.taskiq.proj:broker`
(and `taskiq scheduler tests.engines.taskiq.proj:scheduler`) processes.

Broker: taskiq-redis ListQueueBroker on Z4J_TEST_REDIS_URL (the tests' private
redis-server), queue Z4J_TEST_TASKIQ_QUEUE (default "taskiq"), results in
RedisAsyncResultBackend, SmartRetryMiddleware for retries. z4j is the one
line ``broker.add_middlewares(Z4JMiddleware())``, unless Z4J_TEST_NO_AGENT=1
(the benchmark's baseline).
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from taskiq import TaskiqScheduler
from taskiq.middlewares import SmartRetryMiddleware
from taskiq.schedule_sources import LabelScheduleSource
from taskiq_redis import ListQueueBroker, ListRedisScheduleSource, RedisAsyncResultBackend

REDIS = os.environ.get("Z4J_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("Z4J_TEST_TASKIQ_QUEUE", "taskiq")

# socket_timeout=None: with redis-py 8 the pool's default read timeout (5 s) ends an idle worker's BRPOP
# with TimeoutError and the worker process dies and is restarted (taskiq-redis 1.2.4; docs/taskiq.md).
broker = ListQueueBroker(REDIS, queue_name=QUEUE, socket_timeout=None).with_result_backend(
    RedisAsyncResultBackend(REDIS, result_ex_time=600))
broker.add_middlewares(SmartRetryMiddleware(default_retry_count=3, default_delay=0))
if os.environ.get("Z4J_TEST_NO_AGENT") != "1":
    from z4j_agents.taskiq import Z4JMiddleware

    broker.add_middlewares(Z4JMiddleware())

dynamic = ListRedisScheduleSource(REDIS, prefix="z4jtest")
scheduler = TaskiqScheduler(broker, sources=[LabelScheduleSource(broker), dynamic])


def _redis():
    import redis

    return redis.Redis.from_url(REDIS)


@broker.task(task_name="proj.add")
async def add(x: int, y: int) -> int:
    return x + y


@broker.task(task_name="proj.noop")
async def noop() -> None:
    return None


@broker.task(task_name="proj.login")
async def login(user, db_password=None):
    return {"user": user, "ok": db_password is not None}


def _inner_parse(value):
    raise ValueError(f"cannot parse {value!r} in _inner_parse")


def _outer_load(value):
    return _inner_parse(value)


@broker.task(task_name="proj.fail_nested")
async def fail_nested(value):
    return _outer_load(value)


@broker.task(task_name="proj.flaky", retry_on_error=True, max_retries=3)
async def flaky(key, items, api_token=None, when=None):
    """Fails until the Redis flag ``flag:<key>`` is set; each run records the exact arguments it got."""
    r = _redis()
    r.rpush(f"ran:{key}", json.dumps({"key": key, "items": items, "api_token": api_token, "when": when}))
    if not r.get(f"flag:{key}"):
        raise RuntimeError(f"flag {key} is not set")
    return len(items)


@broker.task(task_name="proj.sleep")
async def sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@broker.task(task_name="proj.sync_sleep")
def sync_sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@broker.task(task_name="proj.enqueue")
async def enqueue(name: str, args: list, count: int = 1, queue: str = "idle") -> list[str]:
    """Kick from inside the worker (captured as sent, sealed, with this task as parent)."""
    ids = []
    for _ in range(count):
        sent = await broker.find_task(name).kicker().with_labels(queue_name=queue).kiq(*args)
        ids.append(sent.task_id)
    return ids


@broker.task(task_name="proj.mark", schedule=[{"interval": 3600, "schedule_id": "code-mark", "args": ["code"]}])
async def mark(tag: str) -> str:
    """Records each run in the Redis list ``marks:<tag>``."""
    _redis().rpush(f"marks:{tag}", str(time.time()))
    return tag
