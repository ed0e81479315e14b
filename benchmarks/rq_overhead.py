"""Agent overhead: no-op job throughput of a real RQ worker with and without the z4j agent.

A private redis-server holds the queue; a real collector (``z4j serve``,
SQLite) receives the agent's events. Each run enqueues N no-op jobs before
the clock, then starts a fresh ``rq worker --burst`` on them: RQ's default
forking worker (a work horse per job), ``-w rq.Worker`` without the agent or
``-w z4j_agents.rq.Worker`` with it (Z4J_BRAIN_URL and friends set),
alternating, R runs each, in one invocation. ``--worker simple`` measures
RQ's SimpleWorker (no fork) instead.

    .venvs/rq/bin/python benchmarks/rq_overhead.py            # table
    .venvs/rq/bin/python benchmarks/rq_overhead.py --json
    .venvs/rq/bin/python benchmarks/rq_overhead.py --jobs 2000 --runs 3

How it measures (jobs/s between two marker jobs, CPU per job of the worker
and its work horses): benchmarks/overhead.py.

This module is also where the jobs live (``rq_overhead.noop``).
"""

from __future__ import annotations

import sys
import time

from overhead import Bench, main

QUEUE = "bench"
WORKERS = {"fork": ("rq.Worker", "z4j_agents.rq.Worker"),
           "simple": ("rq.SimpleWorker", "z4j_agents.rq.SimpleWorker")}


def noop():
    return None


def mark(key: str, edge: str):
    """``start``: stamp when it begins (the first job taken); ``end``: when it is done (the last)."""
    from rq import get_current_job

    get_current_job().connection.set(f"{key}:{edge}", repr(time.time()))


# ------------------------------------------------------------------ the driver


def enqueue(redis_url: str, n: int, key: str) -> None:
    import redis
    from rq import Queue

    queue = Queue(QUEUE, connection=redis.Redis.from_url(redis_url))
    jobs = [Queue.prepare_data("rq_overhead.mark", (key, "start"))]
    jobs += [Queue.prepare_data("rq_overhead.noop") for _ in range(n)]
    jobs.append(Queue.prepare_data("rq_overhead.mark", (key, "end")))
    for begin in range(0, len(jobs), 1000):
        queue.enqueue_many(jobs[begin:begin + 1000])


def command(args, agent: bool) -> list[str]:
    """``rq worker --burst``: it stops by itself when the queue is empty."""
    worker_class = WORKERS[args.worker][agent]
    return [sys.executable, "-m", "rq.cli", "worker", "--burst", "-w", worker_class, "--url",
            args.redis_url, "--logging_level", "WARNING", "-n", f"bench-{time.time_ns()}", QUEUE]


def options(parser) -> None:
    parser.add_argument("--worker", choices=sorted(WORKERS), default="fork",
                        help="fork: RQ's default Worker (a work horse per job); simple: SimpleWorker")


BENCH = Bench("rq", command, enqueue, __doc__, unit="job", default_n=2000, stop=None, options=options,
              settings=lambda args: {"worker": args.worker}, title=lambda args: f"{args.worker} worker")

if __name__ == "__main__":
    main(BENCH)
