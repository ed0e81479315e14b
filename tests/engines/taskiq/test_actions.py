"""Must show: taskiq actions through the API, on a real `taskiq worker --workers 2`
(the one-line middleware), a real Redis broker and a real collector, on both
databases; then a worker killed with SIGKILL mid-task, whose tasks the
reconciler closes (``lost``, or the result backend's state through ``taskiq.probe``).

One collector (reconciling every second, a worker gone after 4 s without news),
the doomed worker group (queue "taskiq") and a survivor (queue "spare", one
process, which answers the probe) per database for the module.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from tests.engines.taskiq.conftest import Producer, Stack, worker
from tests.support.collector import Collector, mint_tokens, wait_until
from tests.support.engine import DBS, OPERATOR, P, Actions, module_database, operator_user, runs

pytestmark = pytest.mark.engine("taskiq")

SECRET = "sk_live_abcdefghijklmnop0123"
OFFLINE_S = 4


class World(Actions):
    def __init__(self, stack: Stack, doomed, survivor, producer: Producer, operator, viewer, user_id: int) -> None:
        self.stack, self.doomed, self.survivor, self.producer = stack, doomed, survivor, producer
        self.operator, self.viewer, self.user_id = operator, viewer, user_id
        self.redis = redis.Redis.from_url(stack.redis_url)

    def children(self, parent: str, count: int) -> list[str]:
        self.stack.wait_task(parent, "success")
        rows = wait_until(lambda: len(r := self.stack.tasks(parent_id=parent, state="pending")) == count and r,
                          what=f"{count} task(s) kicked by {parent}")
        return [r["task_id"] for r in rows]

    def runs(self, key: str) -> list[dict]:
        return runs(self.redis, key)


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, redis_server, tmp_path_factory):
    db_url, tmp = module_database(request, tmp_path_factory, "actions")
    redis_server.flushall()
    collector = Collector(db_url, tmp, env={"Z4J_RECONCILE_INTERVAL_S": "1",
                                            "Z4J_RECONCILE_WORKER_OFFLINE_S": str(OFFLINE_S)}).start()
    stack = Stack(collector, redis_server.url)
    operator, user_id = operator_user(collector)
    viewer = collector.api(mint_tokens(collector, "viewer")["viewer"])
    env = stack.env(Z4J_TASKIQ_HEARTBEAT_S="1", Z4J_TASKIQ_QUEUE_DEPTH_S="0.5", Z4J_TASKIQ_QUEUES="idle,purgeq")
    doomed = worker(env, tmp, workers=2, name="doomed")
    survivor = worker({**env, "Z4J_TEST_TASKIQ_QUEUE": "spare"}, tmp, workers=1, name="survivor")
    producer = Producer(redis_server.url)
    try:
        doomed.start()
        survivor.start()
        yield World(stack, doomed, survivor, producer, operator, viewer, user_id)
    finally:
        producer.close()
        doomed.kill()
        survivor.kill()
        collector.stop()


def test_a_retried_task_reruns_with_the_exact_args_and_the_audit_names_the_user(world):
    w = world
    key = uuid.uuid4().hex
    items = [1, "two", {"three": 3.5, "nested": [True, None]}, -4]
    call = {"key": key, "items": items, "api_token": SECRET, "when": "2026-01-02T03:04:05"}
    first = w.producer.kick("proj.flaky", key, items, api_token=SECRET, when=call["when"])
    old = w.stack.wait_task(first, "failure")
    assert old["kwargs"]["api_token"] == "[redacted]" and old["redacted"] and old["replayable"]

    viewer = w.post(f"tasks/{first}/retry", api=w.viewer)
    assert viewer.status_code == 403 and viewer.json()["code"] == "forbidden"

    w.redis.set(f"flag:{key}", "1")  # the fix
    command = w.ok(f"tasks/{first}/retry")
    new_id = command["result"]["new_task_id"]
    assert new_id != first and command["result"]["retry_of"] == first and command["result"]["queue"] == "taskiq"
    new = w.stack.wait_task(new_id, "success")
    assert new["result"] == len(items) and new["name"] == "proj.flaky" and new["queue"] == "taskiq"
    assert w.runs(key) == [call, call]  # the failed run and the retry: the same arguments, the secret too
    assert any((e.get("extra") or {}).get("retry_of") == first for e in new["events"])
    assert new["kwargs"]["api_token"] == "[redacted]"
    assert w.stack.task(first)["state"] == "failure"

    rows, _ = w.audited("command.taskiq.retry", f"task:{first}", command)
    assert SECRET not in json.dumps(rows)


def test_cancel_a_queued_task_and_a_running_one(world):
    w = world
    parent = w.producer.kick("proj.enqueue", "proj.add", [5, 5], count=2, queue="idle")
    queued, kept = w.children(parent, 2)
    assert w.redis.llen("idle") == 2
    command = w.ok(f"tasks/{queued}/cancel")
    assert command["result"]["removed_from_queue"] == 1
    assert w.stack.wait_task(queued, "revoked")["engine_state"] == "removed"
    assert w.redis.llen("idle") == 1 and w.stack.task(kept)["state"] == "pending"
    # gone meanwhile (a worker took it): refused, nothing changed
    w.redis.delete("idle")
    assert "is not waiting in queue 'idle'" in w.refused(f"tasks/{kept}/cancel")
    assert w.stack.task(kept)["state"] == "pending"

    # running async tasks: cancelled in the process that runs them (asked over pub/sub when the
    # command reaches the agent's other process), whichever process gets the command
    running = [w.producer.kick("proj.sleep", 60) for _ in range(4)]
    for task_id in running:
        w.stack.wait_task(task_id, "started")
    refused = w.post(f"tasks/{running[0]}/cancel")
    assert refused.status_code == 409 and refused.json()["code"] == "task_running"
    for task_id in running:
        result = w.ok(f"tasks/{task_id}/cancel", {"terminate": True, "confirm": True})["result"]
        assert result["cancelled"] == "running" and result["worker"].startswith("taskiq-")
        task = w.stack.wait_task(task_id, "revoked")
        assert task["engine_state"] == "cancelled" and task["events"][-1]["extra"]["terminated"] is True
    # a synchronous task runs in a thread: taskiq cannot stop it, said in one line
    sync = w.producer.kick("proj.sync_sleep", 2)
    w.stack.wait_task(sync, "started")
    error = w.refused(f"tasks/{sync}/cancel", {"terminate": True, "confirm": True})
    assert "synchronous function running in a worker thread" in error and "nothing changed" in error
    assert w.stack.wait_task(sync, "success")["result"] == 2


def test_purge_a_queue_whole_or_by_name_or_age(world):
    w = world
    for i in range(3):
        w.producer.kick("proj.add", i, 1, labels={"queue_name": "purgeq"})
    for _ in range(2):
        w.producer.kick("proj.noop", labels={"queue_name": "purgeq"})
    stamped = w.producer.kick("proj.enqueue", "proj.noop", [], count=2, queue="purgeq")
    w.stack.wait_task(stamped, "success")
    assert w.redis.llen("purgeq") == 7

    refused = w.post("queues/purgeq/purge", {"engine": "taskiq"})
    assert refused.status_code == 400 and refused.json()["code"] == "confirm_required"
    fresh = w.ok("queues/purgeq/purge", {"confirm": True, "older_than": "1h", "engine": "taskiq"})["result"]
    assert (fresh["purged"], fresh["scanned"], fresh["kept_undated"]) == (0, 7, 5)
    time.sleep(1.1)
    aged = w.ok("queues/purgeq/purge", {"confirm": True, "older_than": 1, "engine": "taskiq"})["result"]
    assert (aged["purged"], aged["kept_undated"]) == (2, 5)  # only the agent's kicks carry z4j_sent_at
    named = w.ok("queues/purgeq/purge", {"confirm": True, "name": "proj.noop", "engine": "taskiq"})["result"]
    assert named["purged"] == 2 and w.redis.llen("purgeq") == 3
    assert w.ok("queues/purgeq/purge", {"confirm": True, "engine": "taskiq"})["result"]["purged"] == 3
    assert w.redis.llen("purgeq") == 0
    error = w.refused("queues/purgeq/purge", {"confirm": True, "dead_letters": True, "engine": "taskiq"})
    assert error.startswith("taskiq keeps no dead letters")
    audit = w.audit("command.taskiq.purge")
    assert audit and all(e["actor"] == OPERATOR and e["target"] == "queue:purgeq" for e in audit)


def test_a_killed_workers_tasks_end_lost_or_as_the_result_backend_says(world):
    from taskiq.result import TaskiqResult

    w = world
    lost = w.producer.kick("proj.sleep", 120)
    known = w.producer.kick("proj.sleep", 120)
    for task_id in (lost, known):
        w.stack.wait_task(task_id, "started")
    doomed = w.stack.task(lost)["worker"]
    assert w.stack.workers()[doomed]["state"] == "online"

    w.doomed.kill()  # SIGKILL to the process group: no task event, no offline event
    # what the result backend may know of a task whose events never arrived: here, a result
    w.producer.loop.run_until_complete(w.producer.broker.result_backend.set_result(
        known, TaskiqResult(is_err=False, log=None, return_value=42, execution_time=0.5)))

    gone = w.stack.wait_task(lost, "lost", timeout=OFFLINE_S + 30)
    assert gone["engine_state"] == "LOST" and gone["worker"] == doomed and gone["finished_at"]
    settled = w.stack.wait_task(known, "success", timeout=30)
    assert settled["result"] == 42 and settled["engine_state"] == "success"

    entries = w.stack.audit("task.reconciled")
    by_target = {e["target"]: e for e in entries}
    assert by_target[f"task:{lost}"]["outcome"] == "lost"
    assert by_target[f"task:{known}"]["outcome"] == "settled"
    for target in (lost, known):
        assert by_target[f"task:{target}"]["actor"] == "system"
        assert by_target[f"task:{target}"]["detail"]["old"] == "started"

    # the survivor's tasks are untouched: its worker is alive
    quick = w.producer.kick("proj.add", 2, 2, labels={"queue_name": "spare"})
    assert w.stack.wait_task(quick, "success")["result"] == 4
    wait_until(lambda: w.stack.api.get(f"{P}/reconciler").json()["stuck"] == 0, what="no stuck task left")
