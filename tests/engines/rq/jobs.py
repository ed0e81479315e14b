"""The RQ test jobs (imported by real `rq worker` processes by dotted name)."""

from __future__ import annotations

import json
import os
import time

from rq import Retry, get_current_job


def _redis():
    return get_current_job().connection


def add(x, y):
    return x + y


def noop():
    return None


def _inner_parse(value):
    raise ValueError(f"cannot parse {value!r} in _inner_parse")


def _outer_load(value):
    return _inner_parse(value)


def fail_nested(value):
    return _outer_load(value)


def login(user, db_password=None):
    return f"{user} logged in"


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def pid_then_sleep(key, seconds):
    """Records the horse's pid under ``key``, then sleeps (the SIGKILL test's victim)."""
    _redis().set(key, os.getpid())
    time.sleep(seconds)
    return seconds


def flaky(key, items, api_token=None, when=None):
    """Records every call exactly; fails until ``flag:<key>`` is set."""
    r = _redis()
    r.rpush(f"ran:{key}", json.dumps({"key": key, "items": items, "api_token": api_token, "when": when}))
    if not r.get(f"flag:{key}"):
        raise RuntimeError(f"flag {key} is not set")
    return len(items)


def fails_twice(key):
    """Raises on the first two attempts (with rq Retry(max=3) it succeeds on the third)."""
    n = _redis().incr(f"attempts:{key}")
    if n <= 2:
        raise RuntimeError(f"attempt {n} fails")
    return n


def asks_again(key):
    """Returns rq.Retry once (RQ 3's job-requested retry), then succeeds."""
    n = _redis().incr(f"asks:{key}")
    if n == 1:
        return Retry(max=2)
    return n


def step(x, **options):
    return x + 1
