"""Must show: Celery actions through the API and the CLI, on a real prefork
worker (zero-code activation), a real Redis broker and a real collector, on
both databases. One collector and one worker per database for the module.

Retry re-runs the exact original call (the task records the arguments it got
in Redis), cancel revokes or terminates, purge empties a queue or only its
matching messages (checked with LLEN on the broker), worker controls reach
the worker (checked with Celery's own inspect), bulk retry retries each match
once under a cap; the CLI verbs do the same and fail with one line."""

from __future__ import annotations

import json
import os
import time
import uuid

import httpx
import pytest
import redis

from tests.engines.celery.conftest import Stack, Worker, producer
from tests.support.collector import Collector, mint_tokens, wait_agent_connected, wait_until, z4j
from tests.support.engine import Actions, operator_user, runs

pytestmark = pytest.mark.engine("celery")

DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]
P = "/api/v1/projects/default"
SECRET = "sk_live_abcdefghijklmnop0123"


class World(Actions):
    def __init__(self, stack: Stack, worker: Worker, app, redis_url: str, operator: httpx.Client,
                 viewer: httpx.Client, operator_token: str, user_id: int) -> None:
        self.stack, self.worker, self.app = stack, worker, app
        self.redis = redis.Redis.from_url(redis_url)
        self.operator, self.viewer, self.operator_token, self.user_id = operator, viewer, operator_token, user_id

    def inspect(self):
        return self.app.control.inspect(destination=[self.worker.hostname], timeout=5)

    def enqueued(self, parent_id: str, count: int) -> list[str]:
        """The ids of the tasks ``proj.enqueue`` published (captured as sent, with the sealed call)."""
        self.stack.wait_task(parent_id, "success")
        rows = wait_until(lambda: len(r := self.stack.tasks(parent_id=parent_id, state="pending")) == count and r,
                          what=f"{count} task(s) published by {parent_id}")
        return [r["task_id"] for r in rows]

    def cli(self, *args: str, check: bool = True):
        return z4j(*args, env={"Z4J_URL": self.stack.collector.url, "Z4J_API_TOKEN": self.operator_token},
                   check=check)

    def runs(self, key: str) -> list[dict]:
        return runs(self.redis, key)


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"actions-{request.param}")
    if request.param == "sqlite":
        db_url = f"sqlite:///{tmp}/z4j.db"
    else:
        db_url = request.getfixturevalue("postgres_server").create_database(f"a_{os.urandom(6).hex()}")
    redis_server.flushall()
    collector = Collector(db_url, tmp).start()
    stack = Stack(collector, redis_server.url)
    # a real user with the operator role, so the audit names a person
    operator, user_id = operator_user(collector)
    tokens = mint_tokens(collector, "viewer", "operator")
    worker = Worker(stack.env(Z4J_CELERY_HEARTBEAT_S="1", Z4J_CELERY_QUEUE_DEPTH_S="0.5"), tmp,
                    pool="prefork", concurrency=2, name="act")
    try:
        worker.start()
        wait_agent_connected(stack.api, "w1")
        yield World(stack, worker, producer(redis_server.url), redis_server.url, operator,
                    collector.api(tokens["viewer"]), tokens["operator"], user_id)
    finally:
        worker.kill()
        collector.stop()


def test_a_retried_task_reruns_with_the_exact_args_and_succeeds_once_fixed(world):
    w = world
    key = uuid.uuid4().hex
    items = [1, "two", {"three": 3.5, "nested": [True, None]}, -4]
    call = {"key": key, "items": items, "api_token": SECRET, "when": "2026-01-02T03:04:05"}
    first = w.app.send_task("proj.flaky", (key, items), {"api_token": SECRET, "when": call["when"]})
    old = w.stack.wait_task(first.id, "failure")
    assert old["exception"] == f"RuntimeError: flag {key} is not set"
    assert old["kwargs"]["api_token"] == "[redacted]" and old["redacted"] and old["replayable"]

    viewer = w.post(f"tasks/{first.id}/retry", api=w.viewer)
    assert viewer.status_code == 403 and viewer.json()["code"] == "forbidden"

    w.redis.set(f"flag:{key}", "1")  # the fix
    before = time.time()
    command = w.ok(f"tasks/{first.id}/retry")
    new_id = command["result"]["new_task_id"]
    assert new_id != first.id and command["result"]["retry_of"] == first.id
    new = w.stack.wait_task(new_id, "success")
    assert new["result"] == len(items) and new["name"] == "proj.flaky" and new["queue"] == "celery"
    # the same call twice: the failed run and the retry, arguments exactly as sent (the secret too)
    assert w.runs(key) == [call, call]
    # the new task links to the old one; the display copy still hides the secret
    assert any((e.get("extra") or {}).get("retry_of") == first.id for e in new["events"])
    assert new["kwargs"]["api_token"] == "[redacted]"
    assert w.stack.task(first.id)["state"] == "failure"  # the old task keeps its history

    # the audit names the user, the time and the action
    rows, sent = w.audited("command.celery.retry", f"task:{first.id}", command)
    assert before - 1 <= sent["ts"] <= time.time()
    assert SECRET not in json.dumps(rows)


def test_cancel_a_queued_task_and_terminate_a_running_one(world):
    w = world
    # published from inside the worker to a queue nobody consumes: captured as sent, sealed
    [queued_id] = w.enqueued(w.app.send_task("proj.enqueue", ("proj.add", [1, 2])).id, 1)
    assert w.redis.llen("idle") == 1
    command = w.ok(f"tasks/{queued_id}/cancel")
    assert command["result"]["removed_from_queue"] == 1 and command["result"]["workers"] >= 1
    assert w.stack.wait_task(queued_id, "revoked")["engine_state"] == "REVOKED"
    assert w.redis.llen("idle") == 0
    assert queued_id in json.dumps(w.inspect().revoked())

    running = w.app.send_task("proj.sleep", (120,))
    w.stack.wait_task(running.id, "started")
    refused = w.post(f"tasks/{running.id}/cancel")
    assert refused.status_code == 409 and refused.json()["code"] == "task_running"
    refused = w.post(f"tasks/{running.id}/cancel", {"terminate": True})
    assert refused.status_code == 400 and refused.json()["code"] == "confirm_required"
    assert w.stack.task(running.id)["state"] == "started"  # nothing was sent
    w.ok(f"tasks/{running.id}/cancel", {"terminate": True, "confirm": True})
    revoked = w.stack.wait_task(running.id, "revoked")
    assert any((e.get("extra") or {}).get("terminated") for e in revoked["events"])
    assert w.stack.wait_task(w.app.send_task("proj.add", (2, 3)).id, "success")["result"] == 5  # it lives on


def test_purge_a_queue_whole_by_name_and_by_age(world):
    w = world
    for i in range(5):
        w.app.send_task("proj.add", (i, i), queue="idle")
    assert w.redis.llen("idle") == 5
    refused = w.post("queues/idle/purge")
    assert refused.status_code == 400 and refused.json()["code"] == "confirm_required"
    assert w.redis.llen("idle") == 5
    assert w.ok("queues/idle/purge", {"confirm": True})["result"]["purged"] == 5
    assert w.redis.llen("idle") == 0

    for i in range(3):
        w.app.send_task("proj.add", (i, i), queue="idle")
    for i in range(2):
        w.app.send_task("proj.step", (i,), queue="idle")
    result = w.ok("queues/idle/purge", {"confirm": True, "name": "proj.add"})["result"]
    assert (result["purged"], result["scanned"]) == (3, 5)
    left = [json.loads(m)["headers"]["task"] for m in w.redis.lrange("idle", 0, -1)]
    assert left == ["proj.step", "proj.step"]

    # by age: only messages stamped by a producer running the agent can be dated
    w.enqueued(w.app.send_task("proj.enqueue", ("proj.add", [7, 7]), {"count": 2}).id, 2)
    assert w.redis.llen("idle") == 4
    fresh = w.ok("queues/idle/purge", {"confirm": True, "older_than": "1h"})["result"]
    assert (fresh["purged"], fresh["kept_undated"]) == (0, 2)
    time.sleep(1.2)
    aged = w.ok("queues/idle/purge", {"confirm": True, "older_than": 1})["result"]
    assert (aged["purged"], aged["kept_undated"]) == (2, 2)
    assert [json.loads(m)["headers"]["task"] for m in w.redis.lrange("idle", 0, -1)] == ["proj.step", "proj.step"]
    w.ok("queues/idle/purge", {"confirm": True})


def _processes(w: World) -> int:
    return len(w.inspect().stats()[w.worker.hostname]["pool"]["processes"])


def test_worker_controls_reach_the_worker(world):
    w = world
    host = w.worker.hostname
    assert _processes(w) == 2
    grown = w.ok(f"workers/{host}/control", {"op": "pool_grow", "n": 1})["result"]
    assert grown["reply"] == {"ok": "pool_grow sent"} and grown["processes"] in (2, 3)  # the pool grows on its own time
    wait_until(lambda: _processes(w) == 3, what="three pool processes")
    assert "shrink" in json.dumps(w.ok(f"workers/{host}/control", {"op": "pool_shrink", "n": 1})["result"])
    wait_until(lambda: _processes(w) == 2, what="two pool processes")

    w.ok(f"workers/{host}/control", {"op": "rate_limit", "task_name": "proj.add", "rate": "10/m"})
    assert "proj.add [rate_limit=10/m]" in w.inspect().registered("rate_limit")[host]
    w.ok(f"workers/{host}/control", {"op": "rate_limit", "task_name": "proj.add", "rate": "0"})
    w.ok(f"workers/{host}/control", {"op": "time_limit", "task_name": "proj.sleep", "soft": 50, "hard": 60})
    assert "proj.sleep [time_limit=60" in json.dumps(w.inspect().registered("time_limit")[host])

    w.ok(f"workers/{host}/control", {"op": "add_consumer", "queue": "idle"})
    assert "idle" in [q["name"] for q in w.inspect().active_queues()[host]]
    w.ok(f"workers/{host}/control", {"op": "cancel_consumer", "queue": "idle"})
    assert "idle" not in [q["name"] for q in w.inspect().active_queues()[host]]

    # a worker nobody has: the agent says so, in one line
    missing = w.post("workers/ghost@nowhere/control", {"op": "pool_shrink", "wait": 15}).json()
    assert missing["state"] == "failed"
    assert missing["error"] == "worker ghost@nowhere did not answer pool_shrink within 3 s (unknown name, or offline)"
    missing = w.post("workers/ghost@nowhere/control", {"op": "pool_grow", "wait": 15}).json()
    assert missing["error"] == ("worker ghost@nowhere did not answer a ping within 3 s (unknown name, or offline); "
                                "nothing was sent")


def test_bulk_retry_retries_each_match_once_under_a_cap(world):
    w = world
    key = f"bulk{uuid.uuid4().hex[:8]}"
    sent = [w.app.send_task("proj.flaky", (key, [i])) for i in range(4)]
    for r in sent:
        w.stack.wait_task(r.id, "failure")
    w.redis.set(f"flag:{key}", "1")
    job = w.post("tasks/bulk-retry", {"state": "failure", "search": key, "limit": 3}).json()
    job = wait_until(lambda: (j := w.viewer.get(f"{P}/commands/{job['id']}").json())["state"] == "succeeded" and j,
                     30, "the bulk retry")
    progress = job["result"]
    assert (progress["matched"], progress["retried"], progress["capped"]) == (3, 3, True)
    wait_until(lambda: len(w.runs(key)) == 7, what="three re-runs")  # 4 failed runs + 3 retries
    assert sorted(r["items"][0] for r in w.runs(key)[4:]) == [1, 2, 3]  # the newest three, each once
    # again, uncapped: only the one left goes
    job = w.post("tasks/bulk-retry", {"state": "failure", "search": key}).json()
    job = wait_until(lambda: (j := w.viewer.get(f"{P}/commands/{job['id']}").json())["state"] == "succeeded" and j,
                     30, "the second bulk retry")
    assert (job["result"]["retried"], job["result"]["already_retried"]) == (1, 3)
    wait_until(lambda: len(w.runs(key)) == 8, what="the last re-run")
    assert sorted(r["items"][0] for r in w.runs(key)[4:]) == [0, 1, 2, 3]


def test_cli_verbs(world):
    w = world
    host = w.worker.hostname
    key = uuid.uuid4().hex
    r = w.app.send_task("proj.flaky", (key, ["x"]))
    w.stack.wait_task(r.id, "failure")
    w.redis.set(f"flag:{key}", "1")
    out = w.cli("tasks", "retry", r.id)
    assert out.stderr.startswith(f"z4j: retried {r.id} as ") and len(out.stderr.splitlines()) == 1
    new_id = out.stderr.split()[-1]
    w.stack.wait_task(new_id, "success")

    bad = w.cli("tasks", "retry", "no-such-task", check=False)
    assert bad.returncode == 1 and bad.stderr == "z4j: 404: no task 'no-such-task' (not_found)\n"

    running = w.app.send_task("proj.sleep", (120,))
    w.stack.wait_task(running.id, "started")
    refused = w.cli("tasks", "cancel", running.id, "--terminate", check=False)
    assert refused.returncode == 1
    assert refused.stderr == "z4j: --terminate kills the process running the task: pass --yes to confirm\n"
    assert w.cli("tasks", "cancel", running.id, "--terminate", "--yes").stderr == f"z4j: terminated {running.id}\n"
    w.stack.wait_task(running.id, "revoked")

    for i in range(3):
        w.app.send_task("proj.add", (i, i), queue="idle")
    refused = w.cli("queues", "purge", "idle", check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "--yes" in refused.stderr
    assert w.cli("queues", "purge", "idle", "--name", "proj.add", "--yes").stderr == \
        "z4j: purged 3 message(s) of idle\n"
    assert w.redis.llen("idle") == 0

    grow = w.cli("workers", "control", host, "pool-grow", "n=1")
    assert grow.stderr == f"z4j: {host}: pool_grow sent\n"
    w.cli("workers", "control", host, "pool_shrink", "n=1")
    bad = w.cli("workers", "control", host, "rate_limit", "task_name=proj.add", check=False)
    assert bad.returncode == 1 and bad.stderr == "z4j: 400: rate_limit needs rate (bad_args)\n"
    bad = w.cli("workers", "control", host, "pool_grow", "n=lots", check=False)
    assert bad.stderr == "z4j: n must be a number, got 'lots'\n"

    r2 = w.app.send_task("proj.flaky", (f"cli{key}", ["y"]))
    w.stack.wait_task(r2.id, "failure")
    refused = w.cli("tasks", "bulk-retry", "--search", f"cli{key}", check=False)
    assert refused.returncode == 1 and refused.stderr == "z4j: 1 task(s) match: pass --yes to retry them\n"
    w.redis.set(f"flag:cli{key}", "1")
    out = w.cli("tasks", "bulk-retry", "--search", f"cli{key}", "--yes")
    assert out.stderr.splitlines()[-1].endswith(": 1 retried of 1 matched")
    wait_until(lambda: len(w.runs(f"cli{key}")) == 2, what="the CLI's bulk re-run")


def test_shutdown_needs_confirmation_and_stops_the_worker(world):
    w = world
    host = w.worker.hostname
    refused = w.post(f"workers/{host}/control", {"op": "shutdown"})
    assert refused.status_code == 400 and refused.json()["code"] == "confirm_required"
    assert w.worker.proc.poll() is None
    w.ok(f"workers/{host}/control", {"op": "shutdown", "confirm": True})
    wait_until(lambda: w.worker.proc.poll() is not None, 30, "the worker to exit")
