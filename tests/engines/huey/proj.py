"""The Huey app the engine tests run in real `huey_consumer tests.engines.huey.proj.huey` processes.

The storage comes from the environment: Z4J_TEST_HUEY_STORAGE ``redis`` (on
Z4J_TEST_REDIS_URL, the tests' private redis-server) or ``sqlite`` (the file
Z4J_TEST_HUEY_DB), queue name Z4J_TEST_HUEY_NAME. The one z4j line is
``install(huey)`` below. The test process builds its own producer instances
with :func:`make` (same task names, so either end reads the other's messages).

Tasks keep what they were called with in Huey's own key/value store
(``ran:<key>:<n>``), and read their "fix" there (``flag:<key>``), so the
tests check the exact arguments of every run on either storage.
"""

from __future__ import annotations

import os
import time
from typing import Any

from huey import RedisHuey, SqliteHuey, crontab

from z4j_agents.huey import install


def make(storage: str, name: str, *, redis_url: str | None = None, db: str | None = None, **options: Any):
    if storage == "redis":
        huey = RedisHuey(name, url=redis_url or "redis://127.0.0.1:6379/0", **options)
    elif storage == "sqlite":
        huey = SqliteHuey(name, filename=db or "huey.db", **options)
    else:
        raise ValueError(f"unknown storage {storage!r}")
    huey.tasks = define_tasks(huey)
    return huey


def runs(huey, key: str) -> list[Any]:
    """What the tasks recorded for ``key``, in order."""
    count = huey.storage.incr(f"runs:{key}", 0)
    return [huey.get(f"ran:{key}:{i}", peek=True) for i in range(1, count + 1)]


def define_tasks(huey) -> dict[str, Any]:
    """The test tasks on ``huey``, by short name (their Huey names are ``tests.engines.huey.proj.<name>``)."""
    def record(key, call):
        n = huey.storage.incr(f"runs:{key}")
        huey.put(f"ran:{key}:{n}", call)

    @huey.task()
    def add(x, y):
        return x + y

    @huey.task()
    def login(user, db_password=None):
        return {"user": user, "ok": db_password is not None}

    def _inner_parse(value):
        raise ValueError(f"cannot parse {value!r} in _inner_parse")

    def _outer_load(value):
        return _inner_parse(value)

    @huey.task()
    def fail_nested(value):
        return _outer_load(value)

    @huey.task(retries=2)
    def retry_once(key, x):
        record(key, x)
        if len(runs(huey, key)) == 1:
            raise RuntimeError("first attempt fails")
        return x

    @huey.task()
    def flaky(key, items, api_token=None, when=None):
        record(key, {"items": items, "api_token": api_token, "when": when})
        if huey.get(f"flag:{key}", peek=True) is None:
            raise RuntimeError(f"flag {key} is not set")
        return len(items)

    @huey.task()
    def sleep(seconds):
        time.sleep(seconds)
        return seconds

    @huey.task()
    def step(x):
        return x + 1

    @huey.task()
    def tsum(values):
        return sum(values)

    @huey.task()
    def fail_step(x):
        raise RuntimeError(f"middle step fails on {x}")

    @huey.task()
    def spawn(x):
        return add(x, x).id

    @huey.periodic_task(crontab(minute="*"))
    def every_minute():
        return "tick"

    @huey.periodic_task(crontab(minute="0", hour="3", day_of_week="1-5"))
    def nightly():
        return "report"

    return {name: value for name, value in locals().items() if hasattr(value, "task_class")}


def __getattr__(name: str):
    # `huey_consumer tests.engines.huey.proj.huey` builds it from the environment;
    # the test process never does.
    if name != "huey":
        raise AttributeError(name)
    instance = make(os.environ["Z4J_TEST_HUEY_STORAGE"], os.environ.get("Z4J_TEST_HUEY_NAME", "proj"),
                    redis_url=os.environ.get("Z4J_TEST_REDIS_URL"), db=os.environ.get("Z4J_TEST_HUEY_DB"))
    install(instance)
    globals()["huey"] = instance
    return instance
