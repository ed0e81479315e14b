"""Agent overhead: no-op task throughput of a real Celery worker with and without the z4j agent.

A private redis-server is the broker; a real collector (``z4j serve``,
SQLite) receives the agent's events. Each run enqueues N no-op tasks before
the clock, then starts a fresh ``celery worker`` (prefork, -c 2) on them:
with the agent (zero-code activation: Z4J_BRAIN_URL and friends set) or
without (unset), alternating, R runs each, in one invocation.

    .venvs/celery/bin/python benchmarks/celery_overhead.py            # table
    .venvs/celery/bin/python benchmarks/celery_overhead.py --json
    .venvs/celery/bin/python benchmarks/celery_overhead.py --tasks 5000 --runs 3

How it measures (tasks/s between two marker tasks, CPU per task of the
worker's process tree: main process, pool children, the agent's thread):
benchmarks/overhead.py.

This module is also the Celery app the worker runs (``-A celery_overhead``).
"""

from __future__ import annotations

import os
import sys
import time

from celery import Celery

from overhead import Bench, main

BROKER = os.environ.get("Z4J_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "bench"

app = Celery("celery_overhead", broker=BROKER)
app.conf.update(task_default_queue=QUEUE, task_ignore_result=True, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)


@app.task(name="bench.noop")
def noop():
    return None


@app.task(name="bench.mark")
def mark(key: str, edge: str):
    """``start``: stamp when it begins (the first task taken); ``end``: when it is done (the last)."""
    import redis

    redis.Redis.from_url(BROKER).set(f"{key}:{edge}", repr(time.time()))


# ------------------------------------------------------------------ the driver


def enqueue(redis_url: str, n: int, key: str) -> None:
    app.conf.broker_url = redis_url
    with app.producer_or_acquire() as producer:
        mark.apply_async((key, "start"), producer=producer)
        for _ in range(n):
            noop.apply_async(producer=producer)
        mark.apply_async((key, "end"), producer=producer)


def command(args, agent: bool) -> list[str]:
    """Zero-code activation: the same command; the agent starts when Z4J_BRAIN_URL and friends are set."""
    return [sys.executable, "-m", "celery", "-A", "celery_overhead", "worker", "--pool", "prefork", "-c", "2",
            "-Q", QUEUE, "-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-n", f"bench-{os.getpid()}@%h"]


BENCH = Bench("celery", command, enqueue, __doc__, settings=lambda args: {"pool": "prefork", "concurrency": 2})

if __name__ == "__main__":
    main(BENCH)
