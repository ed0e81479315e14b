"""Must show, for arq (the migration checklist, part 1): live jobs appear, counts
per queue match arq's own view, a failure shows its full traceback, retries, a
retry re-runs the exact call and succeeds once fixed, audited with the user,
cancel, secrets redacted. Real `arq` workers on the session redis-server and a
real collector per module, on SQLite and PostgreSQL (the ``world`` fixture in
conftest.py: workers "main" with allow_abort_jobs and a cron job every 3 s,
and "noabort"; a producer process with z4j installed enqueues some jobs, plain
arq the others).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.engines.arq.conftest import enqueue
from tests.support.collector import wait_until
from tests.support.engine import P, db_text

pytestmark = pytest.mark.engine("arq")

SECRET = "sk_live_abcdefghijklmnop0123"


def test_live_tasks_failures_retries_queues_and_workers(world):
    w, s = world, world.stack
    # queued jobs are visible before a worker takes them (producer with the agent; "idle" has no worker)
    idle = w.produce(*({"function": "add", "args": [n, n], "queue": "idle"} for n in range(3)))
    for job_id in idle:
        row = s.wait_task(job_id, "pending")
        assert (row["name"], row["queue"], row["engine_state"], row["replayable"]) == ("add", "idle", "queued", True)
    assert w.redis.zcard("idle") == 3
    # counts per queue match arq's own view (ZCARD of the queue's sorted set)
    wait_until(lambda: s.queues().get("idle", {}).get("depth") == w.redis.zcard("idle") == 3, what="idle depth")
    wait_until(lambda: s.queues().get("arq:queue", {}).get("depth") == w.redis.zcard("arq:queue"),
               what="arq:queue depth as arq counts it")
    assert len(s.tasks(queue="idle", state="pending")) == 3

    # a live job: started then success, with its result, runtime and worker; the app's own on_startup ran
    done = s.wait_task(enqueue(s.redis_url, "add", 20, 22), "success")
    assert done["result"] == 42 and done["runtime"] is not None and done["worker"] == w.main.hostname
    assert [e["kind"] for e in done["events"]] == ["started", "succeeded"]
    assert done["replayable"]  # sealed by the worker: the producer had no agent
    assert s.wait_task(enqueue(s.redis_url, "app_ctx"), "success")["result"] is True

    # a failure: the exception and the full traceback, secrets masked everywhere
    failed = s.wait_task(enqueue(s.redis_url, "boom", db_password="hunter2"), "failure")
    assert failed["exception"] == "ValueError: cannot connect with postgresql://app:[redacted]@db/app"
    tb = failed["traceback"]
    assert tb.startswith("Traceback (most recent call last):") and "in boom" in tb and "in _parse" in tb
    assert tb.rstrip().endswith(failed["exception"]) and "z4j_agents" not in tb
    assert failed["kwargs"] == {"db_password": "[redacted]"} and failed["redacted"]

    # arq's Retry: retried twice, then success on the third try
    retried = s.wait_task(enqueue(s.redis_url, "retrying", "r1"), "success")
    assert [e["kind"] for e in retried["events"]] == ["started", "retried", "started", "retried", "started",
                                                      "succeeded"]
    assert retried["result"] == "ok after 3 tries" and retried["retries"] == 2

    # jobs a job enqueues are its children (arq keeps no links: the agent knows which job was running)
    parent = s.wait_task(enqueue(s.redis_url, "fanout", 2), "success")
    children = parent["result"]
    for child in children:
        row = s.wait_task(child, "success")
        assert row["parent_id"] == parent["task_id"] and row["events"][0]["kind"] == "sent"
    tree = s.api.get(f"{P}/tasks/{parent['task_id']}/tree", params={"engine": "arq"}).raise_for_status().json()
    [top] = tree["roots"]
    assert top["task_id"] == parent["task_id"] and sorted(c["task_id"] for c in top["children"]) == sorted(children)

    # worker liveness: online, heartbeats with arq's own health check line
    worker = wait_until(lambda: (x := s.workers().get(w.main.hostname)) and x["info"].get("health_check") and x,
                        what="a heartbeat with arq's health check")
    assert worker["state"] == "online" and worker["engine"] == "arq"
    assert worker["info"]["queues"] == ["arq:queue", "idle"] and worker["info"]["allow_abort_jobs"] is True
    assert "j_complete=" in worker["info"]["health_check"]
    assert "hunter2" not in db_text(s.collector.db_url)


def test_retry_reruns_the_exact_call_and_is_audited(world):
    w, s = world, world.stack
    key = f"k{time.time_ns()}"
    items = [1, "two", {"three": 3.5, "nested": [True, None]}, -4]
    when = "2026-01-02T03:04:05"
    [first] = w.produce({"function": "flaky", "args": [key, items],
                         "kwargs": {"api_token": SECRET, "when": {"$datetime": when}}})
    old = s.wait_task(first, "failure")
    assert old["exception"] == f"RuntimeError: flag {key} is not set"
    assert old["kwargs"]["api_token"] == "[redacted]" and old["replayable"]

    viewer = w.post(f"tasks/{first}/retry", api=w.viewer)
    assert viewer.status_code == 403 and viewer.json()["code"] == "forbidden"

    w.redis.set(f"flag:{key}", "1")  # the fix
    before = time.time()
    command = w.ok(f"tasks/{first}/retry")
    new_id = command["result"]["new_task_id"]
    assert new_id != first and command["result"]["retry_of"] == first and command["result"]["queue"] == "arq:queue"
    new = s.wait_task(new_id, "success")
    assert new["result"] == len(items) and new["name"] == "flaky"
    call = {"key": key, "items": items, "api_token": SECRET, "when": when}
    assert w.runs(key) == [call, call]  # the same call twice, the secret and the datetime included
    assert any((e.get("extra") or {}).get("retry_of") == first for e in new["events"])
    assert new["kwargs"]["api_token"] == "[redacted]"
    assert s.task(first)["state"] == "failure"

    rows, sent = w.audited("command.arq.retry", f"task:{first}", command)
    assert before - 1 <= sent["ts"] <= time.time()
    assert SECRET not in json.dumps(rows) and SECRET not in db_text(s.collector.db_url)

    # enqueued without any agent: the worker's own sealed copy retries it
    key2 = f"k{time.time_ns()}"
    plain = enqueue(s.redis_url, "flaky", key2, [7])
    s.wait_task(plain, "failure")
    w.redis.set(f"flag:{key2}", "1")
    again = w.ok(f"tasks/{plain}/retry")["result"]["new_task_id"]
    assert s.wait_task(again, "success")["result"] == 1
    assert [r["items"] for r in w.runs(key2)] == [[7], [7]]


def test_cancel_queued_deferred_and_running_jobs(world):
    w, s = world, world.stack
    from arq.jobs import deserialize_result

    # queued on a queue no worker takes: out of the queue, arq's own "aborted" result written
    [queued] = w.produce({"function": "add", "args": [1, 1], "queue": "idle"})
    s.wait_task(queued, "pending")
    result = w.ok(f"tasks/{queued}/cancel")["result"]
    assert result["removed_from_queue"] == 1 and result["status"] == "aborted"
    assert s.wait_task(queued, "revoked")["engine_state"] == "complete"
    assert w.redis.zscore("idle", queued) is None and not w.redis.exists(f"arq:job:{queued}")
    assert isinstance(deserialize_result(w.redis.get(f"arq:result:{queued}")).result, asyncio.CancelledError)

    # deferred (runs in a minute)
    [deferred] = w.produce({"function": "add", "args": [2, 2], "defer_by": 60})
    assert s.wait_task(deferred, "pending")["eta"] > time.time() + 30
    assert w.ok(f"tasks/{deferred}/cancel")["result"]["removed_from_queue"] == 1
    s.wait_task(deferred, "revoked")
    assert w.redis.zscore("arq:queue", deferred) is None

    # running, on a worker that allows aborting: terminate + confirm aborts it
    running = enqueue(s.redis_url, "sleep", 60)
    s.wait_task(running, "started")
    refused = w.post(f"tasks/{running}/cancel", {"wait": 20})
    assert refused.status_code == 409 and refused.json()["code"] == "task_running"
    result = w.ok(f"tasks/{running}/cancel", {"terminate": True, "confirm": True})["result"]
    assert result["status"] == "aborted"
    gone = s.wait_task(running, "revoked")
    assert gone["events"][-1]["extra"] == {"aborted": True, "running": True}

    # running, on a worker without allow_abort_jobs: one clear sentence, nothing changed
    stuck = enqueue(s.redis_url, "sleep", 20, _queue_name="noabort")
    s.wait_task(stuck, "started")
    command = w.command(f"tasks/{stuck}/cancel", {"terminate": True, "confirm": True})
    assert command["state"] == "failed"
    assert command["error"] == (f"job {stuck} is running and this arq worker does not allow aborting jobs: set "
                                "allow_abort_jobs = True in its WorkerSettings; nothing changed")
    assert s.task(stuck)["state"] == "started" and w.redis.exists(f"arq:in-progress:{stuck}")

    finished = w.post(f"tasks/{gone['task_id']}/cancel", {"wait": 20})
    assert finished.status_code == 409 and finished.json()["code"] == "task_finished"
