"""Capture from a real `taskiq worker --workers 2` (taskiq-redis ListQueueBroker, the
one-line middleware) into a real collector, on both databases.

One collector and one worker (two processes) per database for the module.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from redis import Redis

from tests.engines.taskiq.conftest import BOOTSTRAP_LINE, Producer, Stack, stored_replay, worker
from tests.support.collector import Collector, wait_agent_connected, wait_until
from tests.support.engine import DBS, assert_nested_failure, db_text, module_database
from z4j_agents.replay import ReplayError
from z4j_agents.taskiq.call import open_call

pytestmark = pytest.mark.engine("taskiq")


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, redis_server, tmp_path_factory):
    db_url, tmp = module_database(request, tmp_path_factory, "capture")
    redis_server.flushall()
    collector = Collector(db_url, tmp).start()
    stack = Stack(collector, redis_server.url)
    proc = worker(stack.env(Z4J_TASKIQ_HEARTBEAT_S="1", Z4J_TASKIQ_QUEUE_DEPTH_S="0.5", Z4J_TASKIQ_QUEUES="idle"),
                  tmp, workers=2, name="cap")
    producer = Producer(redis_server.url)
    try:
        proc.start()
        yield stack, proc, producer, db_url
    finally:
        producer.close()
        proc.kill()
        collector.stop()


def formatter():
    from taskiq.formatters.proxy_formatter import ProxyFormatter
    from taskiq_redis import ListQueueBroker

    return ProxyFormatter(ListQueueBroker("redis://127.0.0.1:1"))


def test_one_line_activation_one_connection_per_worker_process(world):
    stack, proc, producer, _ = world
    assert proc.log().count(BOOTSTRAP_LINE) == 2  # one agent in each worker process, none in the supervisor
    agent = wait_agent_connected(stack.api, "tq")
    assert agent["engines"] == ["taskiq"]

    ids = [producer.kick("proj.add", i, i) for i in range(20)]
    wait_until(lambda: set(ids) <= {t["task_id"] for t in stack.tasks(state="success", name="proj.add")}, 30,
               "20 tasks succeeded")
    assert stack.connections() == 2
    detail = stack.task(ids[3])
    assert detail["result"] == 6 and detail["runtime"] is not None and detail["runtime"] >= 0
    assert [e["kind"] for e in detail["events"]] == ["started", "succeeded"]
    assert re.fullmatch(r"taskiq-\d+@.+", detail["worker"]) and detail["queue"] == "taskiq"
    assert detail["engine_state"] == "success" and detail["args"] == [3, 3]
    workers = {t["worker"] for t in stack.tasks(name="proj.add")}
    assert workers <= set(stack.workers()), "every task's worker is a listed worker"


def test_failure_keeps_the_full_traceback(world):
    stack, _, producer, _ = world
    task_id = producer.kick("proj.fail_nested", "x")
    task = stack.wait_task(task_id, "failure")
    assert task["engine_state"] == "error"
    assert_nested_failure(task)
    assert task["args"] == ["x"] and task["runtime"] is not None


def test_secrets_are_redacted_but_the_sealed_call_is_exact(world):
    stack, _, producer, db_url = world
    task_id = producer.kick("proj.login", "ann", db_password="hunter2")
    task = stack.wait_task(task_id, "success")
    assert task["kwargs"] == {"db_password": "[redacted]"} and task["redacted"] is True
    assert task["args"] == ["ann"] and task["replayable"] is True
    assert "hunter2" not in db_text(db_url)

    blob = stored_replay(db_url, task_id)
    call = open_call(stack.creds["hmac_secret"], blob, formatter())
    assert call["task"] == "proj.login" and call["id"] == task_id
    assert call["args"] == ["ann"] and call["kwargs"] == {"db_password": "hunter2"}
    with pytest.raises(ReplayError):
        open_call("another agent's secret", blob, formatter())


def test_smart_retries_show_attempts_of_one_task(world):
    stack, _, producer, _ = world
    # the flag is never set: 3 attempts (the task's labels, as its own kicker sends them), then failure
    task_id = producer.kick("proj.flaky", "never", [1], labels={"retry_on_error": True, "max_retries": 3})
    stack.wait_task(task_id, "failure")
    # the attempts ran in either process: wait until both processes' events are in
    task = wait_until(lambda: len((t := stack.task(task_id))["events"]) >= 8 and t, 15, "every attempt's events")
    kinds = [e["kind"] for e in task["events"]]
    assert kinds == ["started", "retried", "sent", "started", "retried", "sent", "started", "failed"], kinds
    assert [e["retries"] for e in task["events"] if e["kind"] == "started"] == [0, 1, 2]
    assert task["retries"] == 2 and task["exception"] == "RuntimeError: flag never is not set"
    retried = next(e for e in task["events"] if e["kind"] == "retried")
    assert "flag never is not set" in retried["traceback"]
    assert len(Redis.from_url(stack.redis_url).lrange("ran:never", 0, -1)) == 3


def test_tasks_kicked_from_a_task_are_queued_children_and_depths_match_redis(world):
    stack, _, producer, _ = world
    parent = producer.kick("proj.enqueue", "proj.add", [1, 2], count=3, queue="idle")
    stack.wait_task(parent, "success")
    children = wait_until(lambda: len(r := stack.tasks(parent_id=parent, state="pending")) == 3 and r,
                          what="3 queued children")
    for child in children:
        assert child["queue"] == "idle" and child["root_id"] == parent and child["name"] == "proj.add"
        assert stack.task(child["task_id"])["replayable"] is True
    assert stack.task(parent)["root_id"] == parent

    # "idle" has no consumer: z4j's depth is taskiq's own (the Redis list's LLEN)
    r = Redis.from_url(stack.redis_url)
    assert r.llen("idle") == 3
    wait_until(lambda: stack.queues().get("idle", {}).get("depth") == 3, 15, "idle depth == LLEN")
    pending = [t for t in stack.tasks(queue="idle", state="pending")]
    assert len(pending) == r.llen("idle")
    r.delete("idle")
    wait_until(lambda: stack.queues()["idle"]["depth"] == 0, 15, "idle depth back to 0")


def test_heartbeats_then_warm_shutdown_marks_both_processes_offline(world):
    stack, proc, producer, _ = world
    names = wait_until(lambda: len(w := {n: x for n, x in stack.workers().items() if x["state"] == "online"}) == 2
                       and w, what="two online worker processes")
    for name, w in names.items():
        assert w["info"]["broker"] == "ListQueueBroker" and w["info"]["queues"] == ["taskiq"]
        assert f"-{w['info']['pid']}@" in name
    seen = {n: w["last_seen_at"] for n, w in names.items()}
    wait_until(lambda: all(stack.workers()[n]["last_seen_at"] > s for n, s in seen.items()), 15, "new heartbeats")
    processed = sum(stack.workers()[n]["info"]["processed"] for n in names)
    assert processed >= 20

    # SIGTERM: each worker process stops fetching and shuts its broker down (the agent sends offline and
    # flushes). An idle ListQueueBroker worker waits in BRPOP (socket_timeout=None, see proj.py) until a
    # message arrives: one unreadable message per process lets that wait end (taskiq skips it).
    os.kill(proc.proc.pid, signal.SIGTERM)
    wait_until(lambda: proc.log().count("Stopped process worker-") == 2, 30, "the supervisor to signal its workers")
    time.sleep(0.2)
    Redis.from_url(stack.redis_url).lpush("taskiq", b"wake-up", b"wake-up")
    assert proc.proc.wait(60) == 0
    wait_until(lambda: all(stack.workers()[n]["state"] == "offline" for n in names), 15, "workers offline",
               log=proc.log)
    assert stack.connections() == 2
