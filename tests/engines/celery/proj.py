"""The Celery app the engine tests run in real `celery -A tests.engines.celery.proj worker` processes.

Broker and result backend: Z4J_TEST_REDIS_URL (the tests' private redis-server).
No z4j code here: the agent starts through the `celery.commands` entry point
(zero-code activation), unless Z4J_TEST_INSTALL=1 asks for install(app).
"""

from __future__ import annotations

import os
import time

from celery import Celery
from kombu import Queue

REDIS = os.environ.get("Z4J_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("proj", broker=REDIS, backend=REDIS)
app.conf.update(
    task_default_queue="celery",
    task_queues=(Queue("celery"), Queue("idle")),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
    result_expires=600,
)

if os.environ.get("Z4J_TEST_INSTALL") == "1":
    from z4j_agents.celery import install

    install(app)


@app.task(name="proj.add")
def add(x, y):
    return x + y


@app.task(name="proj.login")
def login(user, db_password=None):
    return {"user": user, "ok": db_password is not None}


def _inner_parse(value):
    raise ValueError(f"cannot parse {value!r} in _inner_parse")


def _outer_load(value):
    return _inner_parse(value)


@app.task(name="proj.fail_nested")
def fail_nested(value):
    return _outer_load(value)


@app.task(name="proj.retry_once", bind=True, max_retries=3)
def retry_once(self, x):
    if self.request.retries == 0:
        raise self.retry(exc=RuntimeError("first attempt fails"), countdown=0)
    return x


@app.task(name="proj.step")
def step(x):
    return x + 1


@app.task(name="proj.fail_step")
def fail_step(x):
    raise RuntimeError(f"middle step fails on {x}")


@app.task(name="proj.tsum")
def tsum(values):
    return sum(values)


@app.task(name="proj.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


# ---- actions (tests/engines/celery/test_actions.py)


def _redis():
    import redis

    return redis.Redis.from_url(REDIS)


@app.task(name="proj.flaky")
def flaky(key, items, api_token=None, when=None):
    """Fails until the Redis flag ``flag:<key>`` is set; each run records the exact arguments it got."""
    import json

    r = _redis()
    r.rpush(f"ran:{key}", json.dumps({"key": key, "items": items, "api_token": api_token, "when": when}))
    if not r.get(f"flag:{key}"):
        raise RuntimeError(f"flag {key} is not set")
    return len(items)


@app.task(name="proj.enqueue")
def enqueue(name, args=(), count=1, queue="idle"):
    """Publish from inside the worker (captured as sent, with the sealed call)."""
    return [app.send_task(name, list(args), queue=queue).id for _ in range(count)]
