"""`celery beat` for the beat tests: the tasks and broker of proj.py, plus a
beat_schedule entry in code and RedBeat's settings. No z4j code: the beat
agent starts through the `celery.commands` entry point (zero-code)."""

from __future__ import annotations

from tests.engines.celery.proj import REDIS, app

app.conf.update(
    beat_schedule={"code-add": {"task": "proj.add", "schedule": 3600.0, "args": (1, 2)}},
    redbeat_redis_url=REDIS,
    redbeat_key_prefix="z4jtest:",
    beat_max_loop_interval=1,
)
