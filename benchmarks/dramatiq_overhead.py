"""Agent overhead: no-op message throughput of a real `dramatiq` worker with and without Z4JMiddleware.

A private redis-server is the broker; a real collector (``z4j serve``,
SQLite) receives the agent's events. Each run enqueues N no-op messages
before the clock (from a plain broker without the middleware), then starts a
fresh ``dramatiq`` CLI (2 processes x 4 threads) on them: with the middleware
(this module adds it when Z4J_BENCH_AGENT=1, with Z4J_BRAIN_URL and friends
set) or without, alternating, R runs each, in one invocation.

    .venvs/dramatiq/bin/python benchmarks/dramatiq_overhead.py            # table
    .venvs/dramatiq/bin/python benchmarks/dramatiq_overhead.py --json
    .venvs/dramatiq/bin/python benchmarks/dramatiq_overhead.py --messages 5000 --runs 3

messages/s: with 8 threads a few no-ops may still be finishing when the end
marker is done, the same for both sides. How it measures (messages/s between
two marker messages, CPU per message of the worker's process tree: main
process, worker processes, the agent's threads): benchmarks/overhead.py.

This module is also the broker module the worker runs (``dramatiq dramatiq_overhead``).
"""

from __future__ import annotations

import os
import sys
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from overhead import Bench, main

BROKER = os.environ.get("Z4J_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "bench"

broker = RedisBroker(url=BROKER)
if os.environ.get("Z4J_BENCH_AGENT") == "1":
    from z4j_agents.dramatiq import Z4JMiddleware

    broker.add_middleware(Z4JMiddleware())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop():
    return None


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def mark(key: str, edge: str):
    """``start``: stamp when it begins (the first message taken); ``end``: when it is done (the last)."""
    broker.client.set(f"{key}:{edge}", repr(time.time()))


# ------------------------------------------------------------------ the driver


def enqueue(redis_url: str, n: int, key: str) -> None:
    """From a plain broker without the middleware."""
    from dramatiq import Message

    plain = RedisBroker(url=redis_url)

    def message(actor: str, *args: str) -> Message:
        return Message(queue_name=QUEUE, actor_name=actor, args=args, kwargs={}, options={})

    plain.enqueue(message("mark", key, "start"))
    for _ in range(n):
        plain.enqueue(message("noop"))
    plain.enqueue(message("mark", key, "end"))
    plain.close()


def command(args, agent: bool) -> list[str]:
    return [sys.executable, "-m", "dramatiq", "dramatiq_overhead", "--processes", "2", "--threads", "4",
            "--queues", QUEUE]


BENCH = Bench("dramatiq", command, enqueue, __doc__, unit="message", agent="middleware",
              env=lambda agent: {"Z4J_BENCH_AGENT": "1" if agent else "0"},
              settings=lambda args: {"processes": 2, "threads": 4})

if __name__ == "__main__":
    main(BENCH)
