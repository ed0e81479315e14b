"""Agent overhead: no-op task throughput of a real Huey consumer with and without the z4j agent.

A private redis-server holds the queue (RedisHuey); a real collector (``z4j
serve``, SQLite) receives the agent's events. Each run enqueues N no-op tasks
before the clock (from this process, no agent), then starts a fresh
``huey_consumer huey_overhead.huey -w 2`` (thread workers, Huey's default
kind) on them: with the agent (``install(huey)`` and Z4J_BRAIN_URL and
friends set) or without (no install, no z4j), alternating, R runs each, in one
invocation.

    .venvs/huey/bin/python benchmarks/huey_overhead.py            # table
    .venvs/huey/bin/python benchmarks/huey_overhead.py --json
    .venvs/huey/bin/python benchmarks/huey_overhead.py --tasks 5000 --runs 3 --workers 2

How it measures (tasks/s between two marker tasks, CPU per task of the
consumer's process: its worker threads and the agent's thread):
benchmarks/overhead.py.

This module is also the Huey app the consumer runs.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from functools import cache

from huey import RedisHuey

from overhead import Bench, main

REDIS = os.environ.get("Z4J_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

huey = RedisHuey("bench", url=REDIS)

if os.environ.get("Z4J_BRAIN_URL"):
    from z4j_agents.huey import install

    install(huey)


@huey.task()
def noop():
    return None


@huey.task()
def mark(key: str, edge: str):
    """``start``: stamp when it begins (the first task taken); ``end``: when it is done (the last)."""
    huey.storage.conn.set(f"{key}:{edge}", repr(time.time()))


# ------------------------------------------------------------------ the driver


@cache
def producer(redis_url: str):
    """This module imported by name on the private Redis, without z4j: its task names are
    ``huey_overhead.*``, as the consumer has them (``__main__.*`` here)."""
    os.environ["Z4J_BENCH_REDIS_URL"] = redis_url
    os.environ.pop("Z4J_BRAIN_URL", None)
    import huey_overhead

    return huey_overhead


def enqueue(redis_url: str, n: int, key: str) -> None:
    app = producer(redis_url)
    app.mark(key, "start")
    for _ in range(n):
        app.noop()
    app.mark(key, "end")


def command(args, agent: bool) -> list[str]:
    """The module installs the agent itself when Z4J_BRAIN_URL is set."""
    return [sys.executable, "-m", "huey.bin.huey_consumer", "huey_overhead.huey", "-w", str(args.workers),
            "-k", "thread", "-q"]


def options(parser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="consumer worker threads")


BENCH = Bench("huey", command, enqueue, __doc__, worker="consumer", stop=signal.SIGINT, options=options,
              settings=lambda args: {"worker_type": "thread", "workers": args.workers, "storage": "RedisHuey"})

if __name__ == "__main__":
    main(BENCH)
