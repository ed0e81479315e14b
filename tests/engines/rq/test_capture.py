"""Capture from a real forking `rq worker -w z4j_agents.rq.Worker` (a work horse per job) into a real
collector, on both databases: one collector and one worker per database for the module.

Must show (issue 7, RQ): live tasks appear with args (redacted) and results, a failure keeps its full
traceback, rq Retry is captured, depends_on edges, queue depths and registry sizes match RQ's own
view, and a work horse killed with SIGKILL mid-job is reported (nothing lost)."""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from rq import Retry
from rq.registry import FailedJobRegistry

from tests.engines.rq.conftest import BOOTSTRAP_LINE, Worker, module_stack, producer_agent
from tests.support.collector import wait_agent_connected, wait_until
from tests.support.engine import DBS, P, assert_nested_failure
from z4j_agents.rq import Queue as Z4JQueue

pytestmark = pytest.mark.engine("rq")


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, redis_server, tmp_path_factory):
    redis_server.flushall()
    stack, tmp = module_stack(request, redis_server, tmp_path_factory, "capture")
    worker = Worker(stack.env(Z4J_RQ_HEARTBEAT_S="1", Z4J_RQ_QUEUE_DEPTH_S="0.5"), stack.redis_url, tmp,
                    queues="default", name="cap")
    try:
        worker.start()
        yield stack, worker
    finally:
        worker.kill()


def test_activation_success_and_one_connection(world):
    stack, worker = world
    assert worker.log().count(BOOTSTRAP_LINE) == 1
    agent = wait_agent_connected(stack.api, "w1")
    assert agent["engines"] == ["rq"]

    q = stack.queue()
    jobs = [q.enqueue("tests.engines.rq.jobs.add", i, i) for i in range(20)]
    ids = {j.id for j in jobs}
    wait_until(lambda: ids <= {t["task_id"] for t in stack.tasks(state="success")}, 60, "20 jobs succeeded")
    # 20 work horses, 20 forks: still one connection to the collector (the horses relay to the worker)
    assert stack.connections("w1") == 1
    detail = stack.task(jobs[3].id)
    assert detail["result"] == 6 and detail["runtime"] is not None and detail["runtime"] >= 0
    assert detail["name"] == "tests.engines.rq.jobs.add" and detail["args"] == [3, 3]
    assert detail["queue"] == "default" and detail["worker"] == "cap"
    assert [e["kind"] for e in detail["events"]] == ["started", "succeeded"]
    assert detail["engine_state"] == "finished" and jobs[3].get_status(refresh=True) == "finished"


def test_failure_keeps_the_full_traceback_and_secrets_are_redacted(world):
    stack, _ = world
    q = stack.queue()
    job = q.enqueue("tests.engines.rq.jobs.fail_nested", "x")
    task = stack.wait_task(job.id, "failure")
    assert task["engine_state"] == "failed"
    assert_nested_failure(task)
    assert job.id in FailedJobRegistry(queue=q).get_job_ids()

    login = q.enqueue("tests.engines.rq.jobs.login", "ann", db_password="hunter2")
    task = stack.wait_task(login.id, "success")
    assert task["kwargs"] == {"db_password": "[redacted]"} and task["redacted"] is True
    assert task["args"] == ["ann"] and task["result"] == "ann logged in"


def test_rq_retry_is_captured_then_succeeds(world):
    stack, _ = world
    key = uuid.uuid4().hex
    job = stack.queue().enqueue("tests.engines.rq.jobs.fails_twice", key, retry=Retry(max=3))
    task = stack.wait_task(job.id, "success")
    kinds = [e["kind"] for e in task["events"]]
    assert kinds == ["started", "retried", "started", "retried", "started", "succeeded"], kinds
    retried = [e for e in task["events"] if e["kind"] == "retried"]
    assert [e["exception"] for e in retried] == ["RuntimeError: attempt 1 fails", "RuntimeError: attempt 2 fails"]
    assert "attempt 1 fails" in retried[0]["traceback"] and retried[0]["traceback"].startswith("Traceback")
    assert task["result"] == 3 and task["retries"] == 2

    # a job that returns rq.Retry (RQ 3) runs again
    asked = stack.queue().enqueue("tests.engines.rq.jobs.asks_again", key)
    task = stack.wait_task(asked.id, "success")
    assert [e["kind"] for e in task["events"]] == ["started", "retried", "started", "succeeded"]
    assert task["result"] == 2


def test_producer_capture_and_depends_on_edges(world):
    stack, _ = world
    q = Z4JQueue("default", connection=stack.redis)
    with producer_agent(stack):
        first = q.enqueue("tests.engines.rq.jobs.sleep", 1)  # still running when the others are enqueued
        second = q.enqueue("tests.engines.rq.jobs.step", 2, depends_on=first)
        third = q.enqueue("tests.engines.rq.jobs.step", 3, depends_on=second, api_key="sk_live_abcdefghijklmnop0")
        both = q.enqueue("tests.engines.rq.jobs.add", 1, 2, depends_on=[first, second])
    for job in (first, second, third, both):
        stack.wait_task(job.id, "success")
    rows = {t["task_id"]: t for t in stack.tasks(root_id=first.id)}
    assert set(rows) == {first.id, second.id, third.id, both.id}
    assert rows[first.id]["parent_id"] is None
    assert rows[second.id]["parent_id"] == first.id and rows[third.id]["parent_id"] == second.id
    assert rows[both.id]["parent_id"] == first.id
    detail = stack.task(third.id)
    assert detail["events"][0]["kind"] == "sent" and detail["sent_at"] is not None
    assert detail["kwargs"] == {"api_key": "[redacted]"}
    sent = [e for e in stack.task(second.id)["events"] if e["kind"] == "sent"]
    assert sent and sent[0]["engine_state"] == "deferred"
    assert (stack.task(both.id)["events"][0].get("extra") or {}).get("depends_on") == [first.id, second.id]
    tree = stack.api.get(f"{P}/tasks/{third.id}/tree", params={"engine": "rq"}).raise_for_status().json()
    assert tree["nodes"] == 4


def test_queue_depths_and_registries_match_rq(world):
    stack, worker = world
    idle = stack.queue("idle")  # nobody consumes it... except that this worker does not sample it
    q = stack.queue()
    w = wait_until(lambda: stack.workers().get("cap"), what="worker listed")
    assert w["state"] == "online" and w["info"]["queues"] == ["default"]
    processed = w["info"]["processed"]
    seen = w["last_seen_at"]
    stack.wait_task(q.enqueue("tests.engines.rq.jobs.add", 1, 2).id, "success")
    wait_until(lambda: (x := stack.workers()["cap"])["last_seen_at"] > seen and x["info"]["processed"] > processed,
               15, "a later heartbeat counting the job")

    # the worker is busy with a long job: what is queued behind it stays queued
    blocker = q.enqueue("tests.engines.rq.jobs.sleep", 3)
    stack.wait_task(blocker.id, "started")
    for i in range(4):
        q.enqueue("tests.engines.rq.jobs.add", i, 0)
    assert len(q) == 4
    wait_until(lambda: stack.queues().get("default", {}).get("depth") == len(q), 15, "default depth == len(queue)")
    failed = len(FailedJobRegistry(queue=q))
    wait_until(lambda: stack.workers()["cap"]["info"]["registries"]["default"]["failed"] == failed, 15,
               "failed registry size in the heartbeat")
    wait_until(lambda: stack.queues()["default"]["depth"] == 0, 30, "default drained")
    assert idle.count == 0


def test_horse_killed_with_sigkill_mid_job_is_reported(world):
    stack, worker = world
    key = f"pid:{uuid.uuid4().hex}"
    job = stack.queue().enqueue("tests.engines.rq.jobs.pid_then_sleep", key, 60)
    stack.wait_task(job.id, "started")
    pid = int(wait_until(lambda: stack.redis.get(key), 15, "the horse's pid"))
    os.kill(pid, signal.SIGKILL)
    task = stack.wait_task(job.id, "failure", timeout=30)
    assert job.get_status(refresh=True) == "failed"
    assert task["exception"].startswith("Work-horse terminated unexpectedly")
    assert "signal 9" in task["exception"]
    failed = next(e for e in task["events"] if e["kind"] == "failed")
    assert (failed.get("extra") or {}).get("horse_killed") is True
    # the worker goes on: the next job runs in a new horse
    after = stack.queue().enqueue("tests.engines.rq.jobs.add", 2, 2)
    assert stack.wait_task(after.id, "success")["result"] == 4
    assert stack.connections("w1") == 1


def test_warm_shutdown_marks_the_worker_offline(world):
    stack, worker = world
    assert worker.stop() == 0
    w = wait_until(lambda: (x := stack.workers().get("cap")) and x["state"] == "offline" and x, 15, "worker offline")
    assert w["info"]["queues"] == ["default"]
