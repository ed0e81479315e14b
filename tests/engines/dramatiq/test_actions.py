"""Must show: Dramatiq actions through the API on the real forking `dramatiq` CLI, a real Redis broker
and a real collector, on both databases (one collector and one worker per database for the module).

Retry re-runs the exact original message under a new id (the actor records the arguments it got in
Redis); cancel takes a waiting message out of Redis or aborts a running one through dramatiq-abort;
purge empties a queue whole, by actor or by age, and its dead letters when asked (checked on the
broker's keys); requeue of 1,000 dead letters from the XQ runs each once more, never twice, even with
two requeues at once; schedules say clearly that Dramatiq has none; each action is audited with its user."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest
import redis

from tests.engines.dramatiq.conftest import Worker, module_stack, producer, send
from tests.support.collector import mint_tokens, wait_until
from tests.support.engine import DBS, OPERATOR, P, Actions, operator_user, runs

pytestmark = pytest.mark.engine("dramatiq")

SECRET = "sk_live_abcdefghijklmnop0123"


class World(Actions):
    wait = 30

    def __init__(self, stack, worker, redis_url: str, operator: httpx.Client, viewer: httpx.Client,
                 admin: httpx.Client, user_id: int) -> None:
        self.stack, self.worker, self.broker = stack, worker, producer(redis_url)
        self.redis = redis.Redis.from_url(redis_url)
        self.operator, self.viewer, self.admin, self.user_id = operator, viewer, admin, user_id

    def runs(self, key: str) -> list[dict]:
        return runs(self.redis, key)


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, redis_server, tmp_path_factory):
    stack = module_stack(request, tmp_path_factory, redis_server, "dq-actions")
    collector = stack.collector
    operator, user_id = operator_user(collector)
    tokens = mint_tokens(collector, "viewer")
    worker = Worker(stack.env(Z4J_DRAMATIQ_HEARTBEAT_S="1", Z4J_DRAMATIQ_QUEUE_DEPTH_S="0.5"),
                    collector.log_path.parent, processes=2, threads=4)
    try:
        worker.start()
        wait_until(lambda: stack.connections() == 2, what="the workers' agents")
        wait_until(lambda: "idle" in stack.queues(), what="queue depths reported")
        yield World(stack, worker, redis_server.url, operator, collector.api(tokens["viewer"]), stack.api, user_id)
    finally:
        worker.kill()


def test_retry_reruns_the_exact_message_under_a_new_id_and_is_audited(world):
    w = world
    key = uuid.uuid4().hex
    items = [1, "two", {"three": 3.5, "nested": [True, None]}, -4]
    call = {"key": key, "items": items, "api_token": SECRET, "when": "2026-01-02T03:04:05"}
    first = send(w.broker, "flaky", key, items, api_token=SECRET, when=call["when"])
    old = w.stack.wait_task(first.message_id, "failure")
    assert old["kwargs"]["api_token"] == "[redacted]" and old["redacted"] and old["replayable"]

    viewer = w.post(f"tasks/{first.message_id}/retry", api=w.viewer)
    assert viewer.status_code == 403 and viewer.json()["code"] == "forbidden"

    w.redis.set(f"flag:{key}", "1")  # the fix
    command = w.ok(f"tasks/{first.message_id}/retry")
    result = command["result"]
    new_id = result["new_task_id"]
    assert new_id != first.message_id and result == {"new_task_id": new_id, "retry_of": first.message_id,
                                                     "name": "flaky", "queue": "default"}
    new = w.stack.wait_task(new_id, "success")
    assert new["result"] == len(items)  # what the actor returned (no results backend needed)
    assert w.runs(key) == [call, call]  # the same call twice, the secret too
    assert all((e.get("extra") or {}).get("retry_of") == first.message_id
               for e in new["events"] if e["kind"] in ("sent", "started"))
    assert new["retries"] in (None, 0) and new["kwargs"]["api_token"] == "[redacted]"
    assert w.stack.task(first.message_id)["state"] == "failure"  # the old task keeps its history

    rows, _ = w.audited("command.dramatiq.retry", f"task:{first.message_id}", command)
    assert SECRET not in json.dumps(rows)


def test_cancel_a_waiting_message_and_abort_a_running_one(world):
    w = world
    parent = send(w.broker, "enqueue_idle", 2)
    w.stack.wait_task(parent.message_id, "success")
    queued = wait_until(lambda: len(r := w.stack.tasks(parent_id=parent.message_id, state="pending")) == 2 and r,
                        what="two captured idle messages")
    assert w.redis.hlen("dramatiq:idle.msgs") == 2
    command = w.ok(f"tasks/{queued[0]['task_id']}/cancel")
    assert command["result"]["removed_from_queue"] == 1
    assert w.stack.wait_task(queued[0]["task_id"], "revoked")["engine_state"] == "CANCELLED"
    assert w.redis.hlen("dramatiq:idle.msgs") == 1 and w.redis.llen("dramatiq:idle") == 1

    running = send(w.broker, "sleep", 120)
    w.stack.wait_task(running.message_id, "started")
    refused = w.post(f"tasks/{running.message_id}/cancel")
    assert refused.status_code == 409 and refused.json()["code"] == "task_running"
    result = w.ok(f"tasks/{running.message_id}/cancel", {"terminate": True, "confirm": True})["result"]
    assert result["aborted"] is True and result["mode"] == "abort"  # dramatiq-abort on redis-py 8
    aborted = w.stack.wait_task(running.message_id, "revoked")
    assert aborted["engine_state"] == "ABORTED" and aborted["exception"].startswith("Abort")
    assert w.stack.wait_task(send(w.broker, "add", 2, 3).message_id, "success")["result"] == 5  # it lives on
    w.ok("queues/idle/purge", {"confirm": True})


def test_purge_whole_by_actor_by_age_and_dead_letters(world):
    w = world
    for i in range(3):
        send(w.broker, "idle_job", i, queue="idle")
    for i in range(2):
        send(w.broker, "add", i, i, queue="idle")
    send(w.broker, "idle_job", 9, queue="idle", options={"eta": int(time.time() * 1000) + 3_600_000})
    assert w.broker.do_qsize("idle") == 6
    refused = w.post("queues/idle/purge")
    assert refused.status_code == 400 and refused.json()["code"] == "confirm_required"
    by_name = w.ok("queues/idle/purge", {"confirm": True, "name": "add"})["result"]
    assert (by_name["purged"], by_name["scanned"]) == (2, 6)
    fresh = w.ok("queues/idle/purge", {"confirm": True, "older_than": "1h"})["result"]
    assert fresh["purged"] == 0
    time.sleep(1.2)
    aged = w.ok("queues/idle/purge", {"confirm": True, "older_than": 1})["result"]
    assert aged["purged"] == 4 and w.broker.do_qsize("idle") == 0

    key = uuid.uuid4().hex
    dead = [send(w.broker, "dead", key, i, queue="dead").message_id for i in range(3)]
    for task_id in dead:
        w.stack.wait_task(task_id, "failure")
    assert w.redis.zcard("dramatiq:dead.XQ") == 3
    for i in range(2):
        send(w.broker, "idle_job", i, queue="dead", options={"eta": int(time.time() * 1000) + 3_600_000})
    kept = w.ok("queues/dead/purge", {"confirm": True})["result"]
    assert kept["purged"] == 2 and w.redis.zcard("dramatiq:dead.XQ") == 3  # dead letters stay unless asked
    gone = w.ok("queues/dead/purge", {"confirm": True, "dead_letters": True})["result"]
    assert gone["dead_letters"] == 3 and w.redis.zcard("dramatiq:dead.XQ") == 0
    assert w.redis.hlen("dramatiq:dead.XQ.msgs") == 0


def test_requeue_of_1000_dead_letters_runs_each_once_more_and_none_twice(world):
    w = world
    key = uuid.uuid4().hex
    ids = [m.message_id for m in (send(w.broker, "dead", key, i, queue="dead") for i in range(1000))]
    wait_until(lambda: w.redis.zcard("dramatiq:dead.XQ") == 1000, 120, "1,000 dead letters")
    wait_until(lambda: len(w.stack.tasks(queue="dead", state="failure")) == 1000, 60, "1,000 failures in z4j")
    runs = {int(k): int(v) for k, v in w.redis.hgetall(f"runs:{key}").items()}
    assert runs == {i: 1 for i in range(1000)}

    # some by id (one not a dead letter: it is named as missing), then all, twice at once;
    # fixed first, so a requeued letter that runs at once does not die again
    w.redis.set(f"flag:{key}", "1")
    few = w.ok("queues/dead/requeue-dead", {"task_ids": [*ids[:5], "no-such-message"]})["result"]
    assert few == {"queue": "dead", "requeued": 5, "missing": ["no-such-message"]}
    answers: list[dict] = []

    def requeue_all() -> None:
        answers.append(w.ok("queues/dead/requeue-dead", {"all": True, "confirm": True})["result"])

    threads = [threading.Thread(target=requeue_all) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(a["requeued"] for a in answers) == 995, answers
    wait_until(lambda: w.redis.zcard("dramatiq:dead.XQ") == 0 and w.broker.do_qsize("dead") == 0, 120,
               "every dead letter run again")
    wait_until(lambda: len(w.stack.tasks(queue="dead", state="success")) == 1000, 60, "1,000 successes in z4j")
    time.sleep(1)  # a second run would show up here
    runs = {int(k): int(v) for k, v in w.redis.hgetall(f"runs:{key}").items()}
    assert runs == {i: 2 for i in range(1000)}
    task = w.stack.task(ids[7])
    assert [e["kind"] for e in task["events"]][-3:] == ["sent", "started", "succeeded"]
    assert task["events"][-3]["engine_state"] == "REQUEUED"
    rows = w.audit("command.dramatiq.requeue_dead")
    assert len(rows) == 3 and all(r["actor"] == OPERATOR for r in rows)


def test_schedules_say_dramatiq_has_none(world):
    w = world
    assert w.viewer.get(f"{P}/schedules", params={"engine": "dramatiq"}).json() == []
    refused = w.admin.post(f"{P}/schedules", json={"engine": "dramatiq", "name": "nightly", "task": "add",
                                                    "schedule": {"kind": "interval", "every": 60}, "args": [1, 2]})
    assert refused.status_code == 409 and refused.json()["code"] == "scheduler_refused"
    assert "Dramatiq has no scheduler in core" in refused.json()["message"]
    rows = w.admin.get(f"{P}/audit", params={"action": "schedule.create"}).json()["entries"]
    assert rows[0]["outcome"] == "refused" and "Dramatiq has no scheduler" in json.dumps(rows[0])
