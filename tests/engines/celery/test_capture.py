"""Capture from a real prefork worker (-c 3, zero-code activation) into a real collector, on both databases.

One collector and one worker per database for the module (started once, stopped at the end).
"""

from __future__ import annotations

import os
import time

import pytest
from celery import chain, chord

from tests.engines.celery.conftest import BOOTSTRAP_LINE, Stack, Worker, producer, stored_replay
from tests.support.collector import Collector, wait_agent_connected, wait_until
from tests.support.engine import assert_nested_failure, db_text
from z4j_agents.celery.call import open_call
from z4j_agents.replay import ReplayError

pytestmark = pytest.mark.engine("celery")

DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def prefork(request, redis_server, tmp_path_factory):
    """(stack, worker, producer app, db_url): a prefork -c 3 worker with the agent, on a fresh database."""
    tmp = tmp_path_factory.mktemp(f"celery-{request.param}")
    if request.param == "sqlite":
        db_url = f"sqlite:///{tmp}/z4j.db"
    else:
        server = request.getfixturevalue("postgres_server")
        db_url = server.create_database(f"c_{os.urandom(6).hex()}")
    redis_server.flushall()
    collector = Collector(db_url, tmp).start()
    stack = Stack(collector, redis_server.url)
    worker = Worker(stack.env(Z4J_CELERY_HEARTBEAT_S="1", Z4J_CELERY_QUEUE_DEPTH_S="0.5"), tmp,
                    pool="prefork", concurrency=3, name="pf")
    try:
        worker.start()
        yield stack, worker, producer(redis_server.url), db_url
    finally:
        worker.kill()
        collector.stop()


def test_zero_code_activation_logs_the_bootstrap_line_and_connects_once(prefork):
    stack, worker, app, _ = prefork
    assert BOOTSTRAP_LINE in worker.log()
    assert worker.log().count(BOOTSTRAP_LINE) == 1
    agent = wait_agent_connected(stack.api, "w1")
    assert agent["engines"] == ["celery"]

    # 30 tasks spread over the three pool children: every one arrives, and the
    # children never opened a connection of their own.
    results = [app.send_task("proj.add", (i, i)) for i in range(30)]
    ids = {r.id for r in results}
    wait_until(lambda: ids <= {t["task_id"] for t in stack.tasks(state="success", name="proj.add")}, 30,
               "30 tasks succeeded")
    pids = {e["extra"]["pid"] for r in results[:30] for e in stack.task(r.id)["events"] if e["kind"] == "started"}
    assert len(pids) >= 2, f"the tasks ran in {pids}: expected several pool children"
    assert stack.connections("w1") == 1
    detail = stack.task(results[3].id)
    assert detail["result"] == 6 and detail["runtime"] is not None and detail["runtime"] >= 0
    assert [e["kind"] for e in detail["events"]] == ["received", "started", "succeeded"]
    assert detail["worker"] == worker.hostname and detail["queue"] == "celery"


def test_failure_keeps_the_full_traceback(prefork):
    stack, _, app, _ = prefork
    r = app.send_task("proj.fail_nested", ("x",))
    task = stack.wait_task(r.id, "failure")
    assert task["engine_state"] == "FAILURE"
    assert_nested_failure(task)
    assert task["args"] == ["x"] and task["runtime"] is not None


def test_secret_kwargs_are_redacted_but_the_sealed_call_is_exact(prefork):
    stack, worker, app, db_url = prefork
    r = app.send_task("proj.login", ("ann",), {"db_password": "hunter2"})
    task = stack.wait_task(r.id, "success")
    assert task["kwargs"] == {"db_password": "[redacted]"} and task["redacted"] is True
    assert task["args"] == ["ann"] and task["replayable"] is True
    assert "hunter2" not in db_text(db_url)

    blob = stored_replay(db_url, r.id)
    call = open_call(stack.creds["hmac_secret"], blob)
    assert call["task"] == "proj.login" and call["id"] == r.id
    assert call["args"] == ["ann"] and call["kwargs"] == {"db_password": "hunter2"}
    assert call["queue"] == "celery" and call["routing_key"] == "celery"
    with pytest.raises(ReplayError):
        open_call("another agent's secret", blob)


def test_retry_is_captured_with_its_exception(prefork):
    stack, _, app, _ = prefork
    r = app.send_task("proj.retry_once", (7,))
    stack.wait_task(r.id, "success")
    # The two runs may be in two pool children, each relaying on its own
    # clock: the first run's events may land after the second's.
    task = wait_until(lambda: (t := stack.task(r.id)) and "retried" in [e["kind"] for e in t["events"]] and t, 30,
                      "the first run's retried event")
    kinds = [e["kind"] for e in task["events"]]
    assert "retried" in kinds and kinds.count("received") == 2 and kinds[-1] == "succeeded"
    retried = next(e for e in task["events"] if e["kind"] == "retried")
    assert retried["exception"] == "RuntimeError: first attempt fails"
    assert "first attempt fails" in retried["traceback"]
    assert task["result"] == 7 and task["retries"] == 1
    assert task["parent_id"] is None  # a retry is the same task, not its own child


def test_chord_and_chain_carry_their_structure(prefork):
    stack, _, app, _ = prefork
    bapp = producer(stack.redis_url, backend=True)  # a chord needs a result backend in the client
    header = [bapp.signature("proj.step", (i,)) for i in range(10)]
    result = chord(header, bapp.signature("proj.tsum")).apply_async()
    callback_id = result.id
    members = [r.id for r in result.parent.results]
    stack.wait_task(callback_id, "success")
    for member in members:
        # Members finish in several pool children, each relaying on its own clock.
        detail = stack.wait_task(member, "success")
        assert detail["group_id"] == result.parent.id
        assert detail["chord_id"] == callback_id
    callback = stack.task(callback_id)
    assert callback["result"] == sum(i + 1 for i in range(10))
    assert callback["parent_id"] in members  # published by the last header task to finish
    assert callback["root_id"] == stack.task(callback["parent_id"])["root_id"]
    # A group sent from a client: each member is its own root (Celery's ids);
    # the group and chord ids are what tie them to the callback.
    assert {stack.task(m)["root_id"] for m in members} == set(members)
    assert {t["task_id"] for t in stack.tasks(root_id=callback["root_id"])} == {callback["parent_id"], callback_id}

    c = chain(app.signature("proj.step", (1,)), app.signature("proj.fail_step"), app.signature("proj.step")).apply_async()
    middle = c.parent.id
    first = c.parent.parent.id
    stack.wait_task(middle, "failure")
    rows = {t["task_id"]: t for t in stack.tasks(root_id=first)}
    assert set(rows) == {first, middle}, "the step after the failure never runs"
    assert rows[first]["parent_id"] is None and rows[first]["state"] == "success"
    assert rows[middle]["parent_id"] == first and rows[middle]["root_id"] == first
    assert rows[middle]["exception"] == "RuntimeError: middle step fails on 2"
    # the worker published the middle step itself: the publish side was captured in the pool child
    middle_detail = stack.task(middle)
    assert middle_detail["sent_at"] is not None and middle_detail["events"][0]["kind"] == "sent"
    assert stack.task(c.id) is None


def test_worker_heartbeat_and_queue_depth(prefork):
    stack, worker, app, _ = prefork
    w = wait_until(lambda: stack.workers().get(worker.hostname), what="worker listed")
    assert w["state"] == "online"
    info = w["info"]
    assert info["pool"] == "prefork" and info["concurrency"] == 3 and "celery" in info["queues"]
    assert isinstance(info["loadavg"], list)
    seen = w["last_seen_at"]
    processed = info["processed"]
    stack.wait_task(app.send_task("proj.add", (1, 2)).id, "success")
    wait_until(lambda: (x := stack.workers()[worker.hostname])["last_seen_at"] > seen
               and x["info"]["processed"] > processed, 15, "a later heartbeat counting the task")

    # "idle" has no consumer: its depth is what Redis holds (LLEN), priority sub-queues included.
    for i in range(4):
        app.send_task("proj.add", (i, 0), queue="idle")
    app.send_task("proj.add", (9, 9), queue="idle", priority=6)
    from redis import Redis

    r = Redis.from_url(stack.redis_url)
    llen = r.llen("idle") + sum(r.llen(f"idle\x06\x16{p}") for p in (3, 6, 9))
    assert llen == 5
    wait_until(lambda: stack.queues().get("idle", {}).get("depth") == llen, 15, "idle depth == LLEN")
    r.delete("idle", *[f"idle\x06\x16{p}" for p in (3, 6, 9)])
    wait_until(lambda: stack.queues()["idle"]["depth"] == 0, 15, "idle depth back to 0")


def test_warm_shutdown_marks_the_worker_offline(prefork):
    stack, worker, _, _ = prefork
    assert worker.stop() == 0
    w = wait_until(lambda: (x := stack.workers().get(worker.hostname)) and x["state"] == "offline" and x,
                   15, "worker offline")
    assert w["info"]["pool"] == "prefork"
    assert stack.connections("w1") == 1
    time.sleep(0)
