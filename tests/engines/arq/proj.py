"""The arq test application: jobs and worker settings, with z4j installed in one line.

Run as ``arq tests.engines.arq.proj.WorkerSettings`` (or NoAbortSettings) with
``Z4J_TEST_REDIS_URL`` set. ``ARQ_TEST_QUEUE`` picks the queue. Jobs record
what they were called with in Redis (``ran:<key>``), so tests can compare a
retry's arguments with the original's.
"""

from __future__ import annotations

import asyncio
import json
import os

from arq import Retry, cron
from arq.connections import RedisSettings

from z4j_agents.arq import install

REDIS = RedisSettings.from_dsn(os.environ.get("Z4J_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
QUEUE = os.environ.get("ARQ_TEST_QUEUE", "arq:queue")


async def add(ctx, a, b):
    return a + b


async def flaky(ctx, key, items, api_token=None, when=None):
    redis = ctx["redis"]
    await redis.rpush(f"ran:{key}", json.dumps({"key": key, "items": items, "api_token": api_token,
                                                "when": when.isoformat() if when else None}))
    if not await redis.get(f"flag:{key}"):
        raise RuntimeError(f"flag {key} is not set")
    return len(items)


def _parse(config):
    raise ValueError(f"cannot connect with {config}")


async def boom(ctx, db_password=None):
    _parse(f"postgresql://app:{db_password}@db/app")


async def fanout(ctx, n):
    """Enqueues n jobs (z4j links them to this one: DAG edges)."""
    return [(await ctx["redis"].enqueue_job("add", i, i)).job_id for i in range(n)]


async def app_ctx(ctx):
    return bool(ctx.get("started_by_app"))


async def sleep(ctx, seconds):
    await asyncio.sleep(seconds)
    return seconds


async def retrying(ctx, key):
    if ctx["job_try"] < 3:
        raise Retry(defer=0.2)
    return f"ok after {ctx['job_try']} tries"


async def tick(ctx):
    return "tick"


async def startup(ctx):
    ctx["started_by_app"] = True


class WorkerSettings:
    functions = [add, flaky, boom, sleep, retrying, app_ctx, fanout]
    cron_jobs = [cron(tick, second=set(range(0, 60, 3)), keep_result=60)]
    redis_settings = REDIS
    queue_name = QUEUE
    on_startup = startup
    allow_abort_jobs = True
    poll_delay = 0.1
    max_tries = 5
    health_check_interval = 1


class NoAbortSettings:
    functions = [add, sleep, flaky]
    on_startup = startup
    redis_settings = REDIS
    queue_name = QUEUE
    poll_delay = 0.1
    health_check_interval = 1


install(WorkerSettings)
install(NoAbortSettings)
