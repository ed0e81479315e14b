"""A deterministic stream of Celery task events for ingest benchmarks.

The events look like what ``celery.events.EventReceiver`` hands its
handlers: the worker's ``EventDispatcher`` fields (type, hostname,
timestamp, utcoffset, pid, clock) plus the receiver's ``local_received``.
``args``/``kwargs``/``result``/``exception`` are repr strings because Celery
saferepr's them before sending.  Stdlib only, so any benchmark can use it.
"""

from __future__ import annotations

import heapq
import itertools
import random
import uuid
from datetime import datetime, timezone

DSN = "postgres://app:s3cret@db.internal:5432/app"

# 2026-01-01T09:00:00Z: a fixed start keeps the stream identical across runs.
_START = 1_767_258_000.0
_IN_FLIGHT_PER_WORKER = 4
_HEARTBEAT_FREQ = 2.0
_P_FAIL, _P_RETRY = 0.10, 0.05
_P_CHILD = 0.08

_DB_ERRORS = (
    'connection to server at "10.0.3.17", port 5432 failed: Connection refused',
    'connection to server at "10.0.3.17", port 5432 failed: timeout expired',
    "server closed the connection unexpectedly",
    "FATAL:  remaining connection slots are reserved for non-replication superuser connections",
)


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def _charge_card(rng, now):
    customer = rng.randint(1, 250_000)
    kwargs = {"amount_cents": rng.choice((499, 999, 1299, 4900, 19900)), "currency": "usd",
              "idempotency_key": _hex(rng, 16)}
    if rng.random() < 0.3:
        kwargs["api_key"] = "sk_live_" + _hex(rng, 24)
    result = {"charge_id": "ch_" + _hex(rng, 20), "status": "succeeded",
              "amount_cents": kwargs["amount_cents"]}
    return (customer,), kwargs, result, "customer = Customer.load(db.get_session(), customer_id)"


def _send_welcome(rng, now):
    user = rng.randint(1, 2_000_000)
    kwargs = {"template": "welcome_v3", "locale": rng.choice(("en", "en", "de", "fr", "pt-BR"))}
    if rng.random() < 0.1:
        kwargs["smtp_password"] = _hex(rng, 12)
    result = {"message_id": f"<{_hex(rng, 12)}@mail.example.com>", "accepted": True}
    return (user, f"user{user}@example.com"), kwargs, result, "user = User.load(db.get_session(), user_id)"


def _build_monthly(rng, now):
    org = rng.randint(1, 5_000)
    month = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m")
    kwargs = {"format": rng.choice(("pdf", "csv", "xlsx")), "include_drafts": False,
              "user_id": rng.randint(1, 90_000)}
    result = {"url": f"s3://reports/{org}/{month}-{_hex(rng, 6)}.{kwargs['format']}",
              "pages": rng.randint(2, 180), "bytes": rng.randint(40_000, 9_000_000)}
    return (org, month), kwargs, result, "rows = fetch_ledger(db.get_session(), org_id, month)"


def _resize(rng, now):
    path = f"uploads/{_hex(rng, 2)}/{_hex(rng, 10)}.{rng.choice(('jpg', 'png', 'webp'))}"
    kwargs = {"sizes": [64, 256, 1024], "quality": 85}
    result = {"variants": 3, "bytes": rng.randint(20_000, 900_000)}
    return (path,), kwargs, result, "record = Upload.lock(db.get_session(), path)"


def _pull_crm(rng, now):
    account = rng.randint(1, 40_000)
    kwargs = {"since": _iso(now - rng.choice((900, 3600, 86400))), "page_size": 200}
    if rng.random() < 0.5:
        kwargs["token"] = "crm_tok_" + _hex(rng, 32)
    fetched = rng.randint(0, 2_000)
    result = {"fetched": fetched, "updated": rng.randint(0, fetched), "next_cursor": _hex(rng, 16)}
    return (account,), kwargs, result, "cursor = SyncCursor.load(db.get_session(), account_id)"


# name -> (weight, payload builder, median runtime in seconds)
TASKS = {
    "emails.send_welcome": (30, _send_welcome, 0.12),
    "images.resize": (30, _resize, 0.2),
    "billing.charge_card": (20, _charge_card, 0.4),
    "sync.pull_crm": (15, _pull_crm, 1.2),
    "reports.build_monthly": (5, _build_monthly, 4.0),
}
_NAMES = list(TASKS)
_WEIGHTS = [TASKS[n][0] for n in _NAMES]


_CELERY_FRAMES = (
    '  File "/app/.venv/lib/python3.12/site-packages/celery/app/trace.py", line 453, in trace_task\n'
    "    R = retval = fun(*args, **kwargs)\n"
    "                 ^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/app/.venv/lib/python3.12/site-packages/celery/app/trace.py", line 736, in __protected_call__\n'
    "    return self.run(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^\n"
)


def _db_failure(rng, name, source_line, retry_in=None):
    """Return (exception repr, traceback) for a task that could not reach its database.

    The app puts the DSN in its error message, as careless apps do, so every
    traceback and exception repr carries a password for redaction to catch.
    With ``retry_in`` the task caught the error and called ``self.retry()``.
    """
    module, func = name.split(".")
    reason = rng.choice(_DB_ERRORS)
    exc = f"DatabaseUnavailable('cannot reach {DSN}: {reason}')"
    line = rng.randint(30, 240)
    tb = (
        "Traceback (most recent call last):\n"
        f'  File "/app/common/db.py", line {rng.randint(38, 44)}, in connect\n'
        "    return psycopg.connect(dsn, connect_timeout=5)\n"
        "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "/app/.venv/lib/python3.12/site-packages/psycopg/connection.py", line 119, in connect\n'
        "    raise last_ex.with_traceback(None)\n"
        f"psycopg.OperationalError: connection failed: {reason}\n"
        "\nThe above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n"
        + ("" if retry_in else _CELERY_FRAMES)
        + f'  File "/app/{module}/tasks.py", line {line}, in {func}\n'
        + f"    {source_line}\n"
        '  File "/app/common/db.py", line 58, in get_session\n'
        "    conn = connect(settings.DATABASE_URL)\n"
        "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "/app/common/db.py", line 47, in connect\n'
        '    raise DatabaseUnavailable(f"cannot reach {dsn}: {exc}") from exc\n'
        f"common.db.DatabaseUnavailable: cannot reach {DSN}: {reason}\n"
    )
    if retry_in:
        tb += (
            "\nDuring handling of the above exception, another exception occurred:\n\n"
            "Traceback (most recent call last):\n"
            + _CELERY_FRAMES
            + f'  File "/app/{module}/tasks.py", line {line + 3}, in {func}\n'
            + f"    raise self.retry(exc=exc, countdown={retry_in})\n"
            '  File "/app/.venv/lib/python3.12/site-packages/celery/app/task.py", line 743, in retry\n'
            "    raise ret\n"
            f"celery.exceptions.Retry: Retry in {retry_in}s: {exc}\n"
        )
    return exc, tb


class _Task:
    __slots__ = ("uuid", "name", "args", "kwargs", "result", "source", "root_id", "parent_id",
                 "retries", "eta", "expires", "host", "plan", "median", "began")


def generate(n_events: int, seed: int = 7, workers: int = 8, heartbeats: bool = True) -> list[dict]:
    """Return exactly ``n_events`` events, ordered by timestamp, identical for a given seed.

    About ``workers * 4`` tasks are in flight at once, so lifecycles interleave.  Each
    task is received, started, then succeeds (~85%), fails (~10%) or is retried once
    and then succeeds (~5%).  The stream is cut at ``n_events``, so the last tasks may
    be unfinished, as in any live capture.
    """
    if n_events < 0 or workers < 1:
        raise ValueError("n_events must be >= 0 and workers >= 1")
    rng = random.Random(seed)
    hosts = [f"celery@worker-{i}" for i in range(1, workers + 1)]
    pids = {h: rng.randint(1_000, 60_000) for h in hosts}
    active = dict.fromkeys(hosts, 0)
    processed = dict.fromkeys(hosts, 0)
    events: list[dict] = []
    agenda: list = []
    seq = itertools.count()
    clock = rng.randint(1_000, 9_000)
    last_ts = last_received = 0.0

    def at(t, step, arg):
        heapq.heappush(agenda, (t, next(seq), step, arg))

    def emit(t, type_, host, **fields):
        nonlocal clock, last_ts, last_received
        clock += 1
        last_ts = max(t, last_ts + 1e-6)
        # Broker and receiver latency of a few milliseconds.
        last_received = max(last_received, last_ts + rng.uniform(0.001, 0.015))
        events.append({"type": type_, "hostname": host, "timestamp": last_ts, "utcoffset": 0,
                       "pid": pids[host], "clock": clock, **fields, "local_received": last_received})

    def spawn(t, parent=None):
        task = _Task()
        task.name = rng.choices(_NAMES, _WEIGHTS)[0]
        _, build, median = TASKS[task.name]
        args, kwargs, result, task.source = build(rng, t)
        task.args, task.kwargs, task.result = repr(args), repr(kwargs), repr(result)
        task.uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        task.root_id = parent.root_id if parent else task.uuid
        task.parent_id = parent.uuid if parent else None
        task.retries, task.eta = 0, None
        task.expires = _iso(t + 3600) if task.name == "emails.send_welcome" else None
        task.host = rng.choice(hosts)
        roll = rng.random()
        task.plan = "fail" if roll < _P_FAIL else "retry" if roll < _P_FAIL + _P_RETRY else "ok"
        task.median = median
        at(t, received, task)

    def received(t, task):
        emit(t, "task-received", task.host, uuid=task.uuid, name=task.name, args=task.args,
             kwargs=task.kwargs, root_id=task.root_id, parent_id=task.parent_id,
             retries=task.retries, eta=task.eta and _iso(task.eta), expires=task.expires)
        wait = rng.expovariate(1 / 0.03) + 0.001
        at(max(t + wait, task.eta or 0.0), started, task)

    def started(t, task):
        emit(t, "task-started", task.host, uuid=task.uuid)
        task.began = t
        active[task.host] += 1
        processed[task.host] += 1
        at(t + task.median * rng.lognormvariate(0, 0.5) + 0.002, finished, task)

    def finished(t, task):
        host = task.host
        active[host] -= 1
        if task.plan == "retry":
            countdown = rng.choice((2, 5, 10))
            exc, tb = _db_failure(rng, task.name, task.source, retry_in=countdown)
            emit(t, "task-retried", host, uuid=task.uuid, exception=exc, traceback=tb)
            # The retry is a new message for the same id, so any worker may take it.
            task.plan, task.retries, task.eta = "ok", task.retries + 1, t + countdown
            task.host = rng.choice(hosts)
            at(t + rng.uniform(0.002, 0.02), received, task)
            return
        if task.plan == "fail":
            exc, tb = _db_failure(rng, task.name, task.source)
            emit(t, "task-failed", host, uuid=task.uuid, exception=exc, traceback=tb)
        else:
            emit(t, "task-succeeded", host, uuid=task.uuid, result=task.result,
                 runtime=t - task.began)
        parent = task if task.plan == "ok" and rng.random() < _P_CHILD else None
        spawn(t + rng.expovariate(1 / 0.01), parent)

    def heartbeat(t, host):
        load = round(rng.uniform(0.2, 3.5), 2)
        emit(t, "worker-heartbeat", host, freq=_HEARTBEAT_FREQ, active=active[host],
             processed=processed[host], loadavg=[load, round(load * 0.9, 2), round(load * 0.8, 2)],
             sw_ident="py-celery", sw_ver="5.5.3", sw_sys="Linux")
        at(t + _HEARTBEAT_FREQ + rng.uniform(-0.01, 0.01), heartbeat, host)

    for _ in range(workers * _IN_FLIGHT_PER_WORKER):
        spawn(_START + rng.uniform(0.0, 0.5))
    if heartbeats:
        for host in hosts:
            at(_START + rng.uniform(0.0, _HEARTBEAT_FREQ), heartbeat, host)

    # Every step emits exactly one event, so the count is exact.
    while len(events) < n_events:
        t, _, step, arg = heapq.heappop(agenda)
        step(t, arg)
    return events


def task_count(events: list[dict]) -> int:
    """Number of distinct task ids in ``events``."""
    return len({ev["uuid"] for ev in events if "uuid" in ev})


if __name__ == "__main__":
    import json
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    for ev in generate(n):
        print(json.dumps(ev))
