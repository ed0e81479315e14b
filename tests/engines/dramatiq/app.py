"""The Dramatiq broker module the engine tests run in real `dramatiq tests.engines.dramatiq.app` processes.

Redis broker, results, group callbacks and dramatiq-abort on Z4J_TEST_REDIS_URL
(the tests' private redis-server), and the z4j middleware added last, as a
user would (Z4J_TEST_NO_AGENT=1 leaves it out). Each actor records what it got
in Redis, so the tests can check the exact arguments a run received.
"""

from __future__ import annotations

import json
import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend as RateLimiterBackend
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend as ResultsBackend
from dramatiq_abort import Abortable
from dramatiq_abort.backends import RedisBackend as AbortBackend

REDIS = os.environ.get("Z4J_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def make_broker(agent: bool) -> RedisBroker:
    broker = RedisBroker(url=REDIS)
    broker.add_middleware(Results(backend=ResultsBackend(url=REDIS)))
    broker.add_middleware(GroupCallbacks(RateLimiterBackend(url=REDIS)))
    broker.add_middleware(Abortable(backend=AbortBackend.from_url(REDIS)))
    if agent:
        from z4j_agents.dramatiq import Z4JMiddleware

        broker.add_middleware(Z4JMiddleware())
    return broker


broker = make_broker(os.environ.get("Z4J_TEST_NO_AGENT") != "1")
dramatiq.set_broker(broker)
r = redis.Redis.from_url(REDIS)


@dramatiq.actor(store_results=True)
def add(x, y):
    return x + y


@dramatiq.actor(store_results=True)
def login(user, db_password=None):
    return {"user": user, "ok": db_password is not None}


def _inner_parse(value):
    raise ValueError(f"cannot parse {value!r} in _inner_parse")


def _outer_load(value):
    return _inner_parse(value)


@dramatiq.actor(max_retries=0)
def fail_nested(value):
    return _outer_load(value)


@dramatiq.actor(max_retries=3, min_backoff=50, max_backoff=100)
def retry_twice(key):
    """Fails on its first two attempts, then returns how many it took."""
    attempts = r.incr(f"attempts:{key}")
    if attempts < 3:
        raise RuntimeError(f"attempt {attempts} fails")
    return attempts


@dramatiq.actor(max_retries=1, min_backoff=50, max_backoff=100)
def always_fails(key):
    r.incr(f"attempts:{key}")
    raise RuntimeError(f"{key} always fails")


@dramatiq.actor(max_retries=0)
def flaky(key, items, api_token=None, when=None):
    """Fails until the Redis flag ``flag:<key>`` is set; each run records the exact arguments it got."""
    r.rpush(f"ran:{key}", json.dumps({"key": key, "items": items, "api_token": api_token, "when": when}))
    if not r.get(f"flag:{key}"):
        raise RuntimeError(f"flag {key} is not set")
    return len(items)


@dramatiq.actor(max_retries=0, queue_name="dead")
def dead(key, i):
    """Counts its runs per i; fails (to the XQ at once) until ``flag:<key>`` is set."""
    r.hincrby(f"runs:{key}", str(i), 1)
    if not r.get(f"flag:{key}"):
        raise RuntimeError(f"{key}/{i} not yet")


@dramatiq.actor(store_results=True)
def step(x):
    return x + 1


@dramatiq.actor(max_retries=0)
def fail_step(x):
    raise RuntimeError(f"middle step fails on {x}")


@dramatiq.actor(store_results=True)
def tsum(key):
    r.set(f"tsum:{key}", "done")
    return key


@dramatiq.actor(max_retries=0, time_limit=600_000)
def sleep(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # short sleeps: dramatiq-abort interrupts between bytecodes
        time.sleep(0.05)
    return seconds


@dramatiq.actor(queue_name="idle")
def idle_job(x):
    return x


@dramatiq.actor
def enqueue_idle(n, delay=None):
    """Send ``n`` messages to the idle queue (nobody consumes it) from inside the worker: captured as sent."""
    return [idle_job.send_with_options(args=(i,), delay=delay).message_id for i in range(n)]
