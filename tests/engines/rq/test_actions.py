"""Must show: RQ actions through the API, on a real forking `rq worker -w z4j_agents.rq.Worker`, a real
Redis and a real collector, on both databases; one collector and one worker per database.

Retry reads the exact call from the RQ job hash (no sealed copy: the collector sends none) and re-runs it
under a new id linked to the old one; cancel cancels a queued job and stops a running one (stop-job
command); purge empties a queue or only the matching jobs, and the failed registry with dead_letters;
requeue_dead puts failed jobs back (RQ's own requeue, same id); bad input is one line, nothing changes;
the audit names the user and the action."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from rq.registry import FailedJobRegistry

from tests.engines.rq.conftest import Stack, Worker, module_stack, producer_agent
from tests.support.collector import mint_tokens, wait_agent_connected
from tests.support.engine import DBS, OPERATOR, Actions, operator_user, runs
from z4j_agents.rq import Queue as Z4JQueue

pytestmark = pytest.mark.engine("rq")

SECRET = "sk_live_abcdefghijklmnop0123"


class World(Actions):
    def __init__(self, stack: Stack, worker: Worker, operator: httpx.Client, viewer: httpx.Client,
                 user_id: int) -> None:
        self.stack, self.worker, self.operator, self.viewer, self.user_id = stack, worker, operator, viewer, user_id

    def runs(self, key: str) -> list[dict]:
        return runs(self.stack.redis, key)


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, redis_server, tmp_path_factory):
    redis_server.flushall()
    stack, tmp = module_stack(request, redis_server, tmp_path_factory, "actions")
    collector = stack.collector
    operator, user_id = operator_user(collector)
    viewer = collector.api(mint_tokens(collector, "viewer")["viewer"])
    worker = Worker(stack.env(Z4J_RQ_HEARTBEAT_S="1", Z4J_RQ_QUEUE_DEPTH_S="0.5"), stack.redis_url, tmp,
                    queues="default", name="act")
    try:
        worker.start()
        wait_agent_connected(stack.api, "w1")
        yield World(stack, worker, operator, viewer, user_id)
    finally:
        worker.kill()


def test_a_retried_job_reruns_with_the_exact_args_and_succeeds_once_fixed(world):
    w = world
    key = uuid.uuid4().hex
    items = [1, "two", {"three": 3.5, "nested": [True, None]}, -4]
    call = {"key": key, "items": items, "api_token": SECRET, "when": "2026-01-02T03:04:05"}
    first = w.stack.queue().enqueue("tests.engines.rq.jobs.flaky", key, items, api_token=SECRET, when=call["when"])
    old = w.stack.wait_task(first.id, "failure")
    assert old["exception"] == f"RuntimeError: flag {key} is not set"
    assert old["kwargs"]["api_token"] == "[redacted]" and old["redacted"]
    assert first.id in FailedJobRegistry("default", connection=w.stack.redis).get_job_ids()

    viewer = w.post(f"tasks/{first.id}/retry", api=w.viewer)
    assert viewer.status_code == 403 and viewer.json()["code"] == "forbidden"

    w.stack.redis.set(f"flag:{key}", "1")  # the fix
    command = w.ok(f"tasks/{first.id}/retry")
    new_id = command["result"]["new_task_id"]
    assert new_id != first.id and command["result"]["retry_of"] == first.id
    assert command["result"]["queue"] == "default" and command["result"]["name"] == "tests.engines.rq.jobs.flaky"
    new = w.stack.wait_task(new_id, "success")
    assert new["result"] == len(items) and new["queue"] == "default"
    # the same call twice: the failed run and the retry, arguments exactly as enqueued (the secret too)
    assert w.runs(key) == [call, call]
    assert any((e.get("extra") or {}).get("retry_of") == first.id for e in new["events"])
    assert new["kwargs"]["api_token"] == "[redacted]"
    assert w.stack.task(first.id)["state"] == "failure"  # the old job keeps its history
    assert first.id not in FailedJobRegistry("default", connection=w.stack.redis).get_job_ids()

    rows, _ = w.audited("command.rq.retry", f"task:{first.id}", command)
    assert SECRET not in json.dumps(rows)

    # a job whose hash expired cannot be retried: one line, nothing enqueued
    gone = w.stack.queue().enqueue("tests.engines.rq.jobs.fail_nested", "y")
    w.stack.wait_task(gone.id, "failure")
    gone.delete()
    before = len(w.stack.queue())
    refused = w.command(f"tasks/{gone.id}/retry")
    assert refused["state"] == "failed" and "no longer in Redis" in refused["error"]
    assert "\n" not in refused["error"] and len(w.stack.queue()) == before


def test_cancel_a_queued_job_and_stop_a_running_one(world):
    w = world
    idle = Z4JQueue("idle", connection=w.stack.redis)  # nobody consumes "idle"
    with producer_agent(w.stack):
        queued = idle.enqueue("tests.engines.rq.jobs.add", 1, 2)
    w.stack.wait_task(queued.id, "pending")
    assert len(idle) == 1
    command = w.ok(f"tasks/{queued.id}/cancel")
    assert command["result"]["was"] == "queued" and command["result"]["now"] == "canceled"
    assert w.stack.wait_task(queued.id, "revoked")["engine_state"] == "canceled"
    assert queued.get_status(refresh=True) == "canceled" and len(idle) == 0

    running = w.stack.queue().enqueue("tests.engines.rq.jobs.sleep", 120)
    w.stack.wait_task(running.id, "started")
    refused = w.post(f"tasks/{running.id}/cancel", {"wait": 15})
    assert refused.status_code == 409 and refused.json()["code"] == "task_running"
    command = w.ok(f"tasks/{running.id}/cancel", {"terminate": True, "confirm": True})
    assert command["result"]["now"] == "stop sent" and command["result"]["worker"] == "act"
    task = w.stack.wait_task(running.id, "revoked")
    assert task["engine_state"] == "stopped"
    assert running.get_status(refresh=True) == "stopped"
    # the worker goes on with the next job
    assert w.stack.wait_task(w.stack.queue().enqueue("tests.engines.rq.jobs.add", 3, 4).id, "success")["result"] == 7

    finished = w.post(f"tasks/{queued.id}/cancel")
    assert finished.status_code == 409 and finished.json()["code"] == "task_finished"


def test_purge_with_filters_dead_letters_and_requeue(world):
    w = world
    idle = w.stack.queue("idle")
    w.stack.redis.delete(idle.key)
    for i in range(3):
        idle.enqueue("tests.engines.rq.jobs.add", i, i)
    idle.enqueue("tests.engines.rq.jobs.step", 1)
    assert len(idle) == 4

    unconfirmed = w.post("queues/idle/purge", {"engine": "rq"})
    assert unconfirmed.status_code == 400 and unconfirmed.json()["code"] == "confirm_required"
    assert len(idle) == 4
    command = w.ok("queues/idle/purge", {"engine": "rq", "confirm": True, "name": "tests.engines.rq.jobs.step"})
    assert command["result"]["purged"] == 1 and command["result"]["scanned"] == 4
    assert len(idle) == 3 and all(j.func_name == "tests.engines.rq.jobs.add" for j in idle.jobs)
    command = w.ok("queues/idle/purge", {"engine": "rq", "confirm": True, "older_than": "1h"})
    assert command["result"]["purged"] == 0 and len(idle) == 3
    command = w.ok("queues/idle/purge", {"engine": "rq", "confirm": True})
    assert command["result"]["purged"] == 3 and len(idle) == 0

    # dead letters: three failures in the failed registry of "default"
    failed = FailedJobRegistry("default", connection=w.stack.redis)
    keys = [uuid.uuid4().hex for _ in range(3)]
    jobs = [w.stack.queue().enqueue("tests.engines.rq.jobs.flaky", k, [k]) for k in keys]
    for job in jobs:
        w.stack.wait_task(job.id, "failure")
    assert set(j.id for j in jobs) <= set(failed.get_job_ids())

    w.stack.redis.set(f"flag:{keys[0]}", "1")
    command = w.ok("queues/default/requeue-dead", {"engine": "rq", "task_ids": [jobs[0].id, "no-such-job"]})
    assert command["result"]["requeued"] == 1 and command["result"]["missing"] == ["no-such-job"]
    assert w.stack.wait_task(jobs[0].id, "success")["result"] == 1  # same id, run again, fixed
    assert w.runs(keys[0]) == [{"key": keys[0], "items": [keys[0]], "api_token": None, "when": None}] * 2

    everything = w.post("queues/default/requeue-dead", {"engine": "rq", "all": True})
    assert everything.status_code == 400 and everything.json()["code"] == "confirm_required"
    command = w.ok("queues/default/purge", {"engine": "rq", "confirm": True, "dead_letters": True,
                                            "name": "tests.engines.rq.jobs.flaky"})
    assert command["result"]["dead_letters_purged"] == 2
    assert not set(j.id for j in jobs[1:]) & set(failed.get_job_ids())
    assert not w.stack.redis.exists(jobs[1].key)  # the job hash is deleted too

    rows = w.audit("command.rq.*")
    actions = {r["action"] for r in rows if r["actor"] == OPERATOR}
    assert {"command.rq.purge", "command.rq.requeue_dead", "command.rq.cancel"} <= actions
