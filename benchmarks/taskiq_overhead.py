"""Agent overhead: no-op task throughput of a real taskiq worker with and without the z4j middleware.

A private redis-server is the broker (taskiq-redis ListQueueBroker); a real
collector (``z4j serve``, SQLite) receives the agent's events. Each run
pushes N no-op messages before the clock, then starts a fresh ``taskiq
worker`` (``--workers 2``) on them: with ``Z4JMiddleware`` (Z4J_BENCH_AGENT=1
and the agent's environment) or without, alternating, R runs each, in one
invocation.

    .venvs/taskiq/bin/python benchmarks/taskiq_overhead.py            # table
    .venvs/taskiq/bin/python benchmarks/taskiq_overhead.py --json
    .venvs/taskiq/bin/python benchmarks/taskiq_overhead.py --tasks 5000 --runs 3

How it measures (tasks/s between two marker tasks, CPU per task of the
worker's process tree: supervisor, worker processes, the agents' threads):
benchmarks/overhead.py.

This module is also the taskiq app the worker runs (``taskiq_overhead:broker``).
"""

from __future__ import annotations

import os
import sys
import time
import uuid

from taskiq_redis import ListQueueBroker

from overhead import Bench, main

BROKER = os.environ.get("Z4J_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "bench"
WORKERS = 2

broker = ListQueueBroker(BROKER, queue_name=QUEUE, socket_timeout=None)
if os.environ.get("Z4J_BENCH_AGENT") == "1":
    from z4j_agents.taskiq import Z4JMiddleware

    broker.add_middlewares(Z4JMiddleware())


@broker.task(task_name="bench.noop")
async def noop() -> None:
    return None


@broker.task(task_name="bench.mark")
async def mark(key: str, edge: str) -> None:
    """``start``: stamp when it begins (the first task taken); ``end``: when it is done (the last)."""
    import redis

    redis.Redis.from_url(BROKER).set(f"{key}:{edge}", repr(time.time()))


# ------------------------------------------------------------------ the driver


def _message(name: str, *args: str) -> bytes:
    from taskiq.message import TaskiqMessage

    return broker.formatter.dumps(TaskiqMessage(task_id=uuid.uuid4().hex, task_name=name, labels={},
                                                labels_types={}, args=list(args), kwargs={})).message


def enqueue(redis_url: str, n: int, key: str) -> None:
    """The messages a kicker would push, pushed in bulk (LPUSH; workers BRPOP: first in, first out)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.lpush(QUEUE, _message("bench.mark", key, "start"))
    for start in range(0, n, 1000):
        client.lpush(QUEUE, *(_message("bench.noop") for _ in range(min(1000, n - start))))
    client.lpush(QUEUE, _message("bench.mark", key, "end"))


def command(args, agent: bool) -> list[str]:
    return [sys.executable, "-m", "taskiq", "worker", "taskiq_overhead:broker", "--workers", str(WORKERS),
            "--log-level", "WARNING"]


BENCH = Bench("taskiq", command, enqueue, __doc__, agent="middleware",
              env=lambda agent: {"Z4J_BENCH_AGENT": "1"} if agent else {},
              settings=lambda args: {"workers": WORKERS, "broker": "ListQueueBroker"})

if __name__ == "__main__":
    main(BENCH)
