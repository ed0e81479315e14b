"""Agent overhead: no-op job throughput of a real arq worker with and without the z4j agent.

A private redis-server holds the queue; a real collector (``z4j serve``,
SQLite) receives the agent's events. Each run puts N no-op jobs on the queue
before the clock (arq's own job encoding and keys, written in one pipeline),
then starts a fresh ``arq arq_overhead.WorkerSettings`` on them: with the
agent (the module calls ``install(WorkerSettings)`` when ``Z4J_BRAIN_URL``
is set) or without (unset: plain arq), alternating, R runs each, in one
invocation.

    .venvs/arq/bin/python benchmarks/arq_overhead.py            # table
    .venvs/arq/bin/python benchmarks/arq_overhead.py --json
    .venvs/arq/bin/python benchmarks/arq_overhead.py --jobs 5000 --runs 3

jobs/s: the worker's defaults (max_jobs 10, results kept an hour) except
``poll_delay`` 0.01 s, so that the queue, not the poll sleep, sets the pace.
In an agent run the script waits until the collector holds every job as
succeeded (``stored``) before it stops the worker. How it measures (jobs/s
between two marker jobs, CPU per job of the worker's process: its loop and
the agent's threads): benchmarks/overhead.py.

This module is also the arq application the worker runs.
"""

from __future__ import annotations

import os
import sys
import time

from arq.connections import RedisSettings

from overhead import Bench, main

REDIS = os.environ.get("Z4J_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "arq:queue"


async def noop(ctx):
    return None


async def mark(ctx, key: str, edge: str):
    """``start``: stamp when it begins (the first job taken); ``end``: when it is done (the last)."""
    await ctx["redis"].set(f"{key}:{edge}", repr(time.time()))


class WorkerSettings:
    functions = [noop, mark]
    redis_settings = RedisSettings.from_dsn(REDIS)
    queue_name = QUEUE
    poll_delay = 0.01


if os.environ.get("Z4J_BRAIN_URL"):
    from z4j_agents.arq import install

    install(WorkerSettings)


# ------------------------------------------------------------------ the driver


def enqueue(redis_url: str, n: int, key: str) -> None:
    """N no-op jobs between two markers, as ``enqueue_job`` writes them (job key + queue score)."""
    import redis
    from arq.constants import job_key_prefix
    from arq.jobs import serialize_job

    now = int(time.time() * 1000)
    jobs = [(f"{key}-start", "mark", (key, "start"), now - 1)]
    jobs += [(f"{key}-{i:07d}", "noop", (), now) for i in range(n)]
    jobs.append((f"{key}-end", "mark", (key, "end"), now + 1))
    pipe = redis.Redis.from_url(redis_url).pipeline(transaction=False)
    for job_id, function, args, score in jobs:
        pipe.psetex(job_key_prefix + job_id, 86_400_000, serialize_job(function, args, {}, None, now))
        pipe.zadd(QUEUE, {job_id: score})
    pipe.execute()


def command(args, agent: bool) -> list[str]:
    """The module installs the agent itself when Z4J_BRAIN_URL is set."""
    return [sys.executable, "-m", "arq", "arq_overhead.WorkerSettings"]


BENCH = Bench("arq", command, enqueue, __doc__, unit="job", stored_before_stop=True,
              settings=lambda args: {"max_jobs": 10, "poll_delay": 0.01})

if __name__ == "__main__":
    main(BENCH)
