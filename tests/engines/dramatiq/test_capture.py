"""Capture from the real forking `dramatiq` CLI (2 processes x 2 threads) into a real collector, on both databases.

One collector and one worker per database for the module (started once, stopped at the end).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
import redis
from dramatiq import group, pipeline

from tests.engines.dramatiq.conftest import BOOTSTRAP_LINE, Worker, module_stack, msg, producer, send
from tests.support.collector import wait_until
from tests.support.engine import DBS, ROOT, assert_nested_failure, db_text
from z4j_agents.dramatiq.call import open_call
from z4j_agents.replay import ReplayError

pytestmark = pytest.mark.engine("dramatiq")


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, redis_server, tmp_path_factory):
    stack = module_stack(request, tmp_path_factory, redis_server, "dq-capture")
    worker = Worker(stack.env(Z4J_DRAMATIQ_HEARTBEAT_S="1", Z4J_DRAMATIQ_QUEUE_DEPTH_S="0.5"),
                    stack.collector.log_path.parent, processes=2, threads=2)
    try:
        worker.start()
        yield stack, worker, producer(redis_server.url), redis.Redis.from_url(redis_server.url)
    finally:
        worker.kill()


def stored_replay(db_url: str, task_id: str) -> bytes:
    import sqlite3

    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.split("sqlite:///", 1)[1])
        try:
            row = conn.execute("SELECT replay FROM tasks WHERE engine='dramatiq' AND task_id=?", (task_id,)).fetchone()
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT replay FROM tasks WHERE engine='dramatiq' AND task_id=%s",
                               (task_id,)).fetchone()
    return bytes(row[0])


def test_each_worker_process_starts_one_agent_and_every_message_arrives(world):
    stack, worker, broker, _ = world
    assert worker.log().count(BOOTSTRAP_LINE) == 2, worker.log()[-2000:]
    wait_until(lambda: stack.connections() == 2, what="one connection per worker process")
    agents = [a for a in stack.api.get("/api/v1/projects/default/agents").json() if a["name"] == stack.name]
    assert agents[0]["engines"] == ["dramatiq"] and agents[0]["connected"]

    ids = [send(broker, "add", i, i).message_id for i in range(40)]
    wait_until(lambda: set(ids) <= {t["task_id"] for t in stack.tasks(state="success", name="add")}, 30,
               "40 messages succeeded")
    pids = {e["extra"]["pid"] for i in ids for e in stack.task(i)["events"] if e["kind"] == "started"}
    assert pids <= set(worker.children()), pids
    # Quick messages may all go to one process's prefetch: slow ones (more
    # than one process's threads and prefetch hold) reach both, each
    # reported by its own process's agent.
    slow = [send(broker, "sleep", 0.3).message_id for _ in range(12)]
    wait_until(lambda: set(slow) <= {t["task_id"] for t in stack.tasks(state="success", name="sleep")}, 60,
               "12 slow messages succeeded")
    pids = {e["extra"]["pid"] for i in slow for e in stack.task(i)["events"] if e["kind"] == "started"}
    assert pids <= set(worker.children()) and len(pids) == 2, pids
    detail = stack.task(ids[3])
    assert detail["result"] == 6 and detail["runtime"] is not None and detail["runtime"] >= 0
    assert [e["kind"] for e in detail["events"]] == ["started", "succeeded"]
    assert detail["engine_state"] == "SUCCESS" and detail["queue"] == "default"
    assert detail["worker"].startswith("dramatiq@") and detail["root_id"] == ids[3]
    assert stack.connections() == 2  # the threads share their process's connection


def test_failure_keeps_the_full_traceback_and_dead_letters(world):
    stack, _, broker, r = world
    m = send(broker, "fail_nested", "x")
    task = stack.wait_task(m.message_id, "failure")
    assert task["engine_state"] == "DEAD_LETTERED"
    assert_nested_failure(task)
    assert task["args"] == ["x"] and task["runtime"] is not None
    dead = [redis_id for redis_id in r.zrange("dramatiq:default.XQ", 0, -1)]
    assert any(m.message_id.encode() in r.hget("dramatiq:default.XQ.msgs", d) for d in dead)


def test_retries_are_attempts_of_one_task(world):
    stack, _, broker, _ = world
    key = uuid.uuid4().hex
    m = send(broker, "retry_twice", key)
    task = stack.wait_task(m.message_id, "success")
    kinds = [e["kind"] for e in task["events"]]
    assert kinds == ["started", "retried", "started", "retried", "started", "succeeded"], kinds
    retried = [e for e in task["events"] if e["kind"] == "retried"]
    assert [e["exception"] for e in retried] == ["RuntimeError: attempt 1 fails", "RuntimeError: attempt 2 fails"]
    assert "in retry_twice" in retried[0]["traceback"] and retried[0]["eta"] is not None
    assert task["result"] == 3 and task["retries"] == 2 and task["parent_id"] is None
    assert len(stack.tasks(name="retry_twice")) >= 1 and not [t for t in stack.tasks(name="retry_twice")
                                                              if t["task_id"] != m.message_id
                                                              and t.get("root_id") == m.message_id]

    gone = send(broker, "always_fails", key)
    task = stack.wait_task(gone.message_id, "failure")
    assert task["engine_state"] == "DEAD_LETTERED" and task["retries"] == 1
    assert [e["kind"] for e in task["events"]] == ["started", "retried", "started", "failed"]


def test_secret_kwargs_are_redacted_but_the_sealed_message_is_exact(world):
    stack, _, broker, _ = world
    m = send(broker, "login", "ann", db_password="hunter2")
    task = stack.wait_task(m.message_id, "success")
    assert task["kwargs"] == {"db_password": "[redacted]"} and task["redacted"] is True
    assert task["args"] == ["ann"] and task["replayable"] is True
    assert "hunter2" not in db_text(stack.collector.db_url)
    blob = stored_replay(stack.collector.db_url, m.message_id)
    call = open_call(stack.creds["hmac_secret"], blob)
    message = call["message"]
    assert (call["actor"], call["queue"], message.message_id) == ("login", "default", m.message_id)
    assert message.args == ("ann",) and message.kwargs == {"db_password": "hunter2"}
    with pytest.raises(ReplayError):
        open_call("another agent's secret", blob)


def test_pipelines_and_groups_are_dag_edges(world):
    stack, _, broker, r = world
    pipe = pipeline([msg("step", 1), msg("fail_step"), msg("step")], broker=broker).run()
    first, middle, last = (m.message_id for m in pipe.messages)
    stack.wait_task(middle, "failure")
    # The middle step's "sent" (with its root and parent) is captured by the
    # process that ran the first step, its "failed" by whichever process ran
    # it, and the first step's own root by the process that ran it: several
    # agents, so the failure may be stored before either link.
    wait_until(lambda: {first, middle} <= {t["task_id"] for t in stack.tasks(root_id=first)}, 30,
               "the first and middle steps under the first as root")
    rows = {t["task_id"]: t for t in stack.tasks(root_id=first)}
    assert set(rows) == {first, middle}, "the step after the failure never runs"
    assert rows[first]["parent_id"] is None and rows[first]["state"] == "success"
    assert stack.task(first)["result"] == 2
    assert rows[middle]["parent_id"] == first and rows[middle]["root_id"] == first
    assert rows[middle]["exception"] == "RuntimeError: middle step fails on 2"
    assert stack.task(middle)["args"] == [2]
    assert stack.task(middle)["events"][0]["kind"] == "sent"  # the worker enqueued it: captured there
    assert stack.task(last) is None

    key = uuid.uuid4().hex
    g = group([msg("step", i) for i in range(5)], broker=broker)
    callback = msg("tsum", key)
    g.add_completion_callback(callback)
    g.run()
    wait_until(lambda: r.get(f"tsum:{key}"), 30, "the group's completion callback")
    cb = stack.wait_task(callback.message_id, "success")
    members = [stack.task(m.message_id) for m in g.children]
    group_ids = {m["group_id"] for m in members}
    assert len(group_ids) == 1 and None not in group_ids
    assert {m["chord_id"] for m in members} == {callback.message_id}
    assert cb["parent_id"] in {m["task_id"] for m in members}
    tree = stack.api.get(f"/api/v1/projects/default/tasks/{callback.message_id}/tree",
                         params={"engine": "dramatiq"}).raise_for_status().json()
    assert callback.message_id in str(tree) and members[0]["task_id"] in str(tree)


def test_queue_depths_and_counts_match_dramatiqs_own(world):
    stack, _, broker, r = world
    parent = send(broker, "enqueue_idle", 4)
    delayed = send(broker, "enqueue_idle", 3, 3_600_000)
    stack.wait_task(parent.message_id, "success")
    stack.wait_task(delayed.message_id, "success")
    # Dramatiq's own count of a queue (what broker.join waits on): the queue's and its delay queue's messages
    assert broker.do_qsize("idle") == 7
    wait_until(lambda: (q := stack.queues()).get("idle", {}).get("depth") == 4 and q["idle.DQ"]["depth"] == 3,
               15, "idle 4, idle.DQ 3")
    pending = stack.tasks(queue="idle", state="pending")
    assert len(pending) == 7 == broker.do_qsize("idle")
    assert {t["parent_id"] for t in pending} == {parent.message_id, delayed.message_id}
    assert sum(t["engine_state"] == "DELAYED" for t in pending) == 3
    # dead letters: the XQ's size, and as many dead-lettered tasks of the queue in z4j
    xq = r.zcard("dramatiq:default.XQ")
    wait_until(lambda: stack.queues().get("default.XQ", {}).get("depth") == xq, 15, "default.XQ == ZCARD")
    assert len(stack.tasks(queue="default", state="failure")) == xq
    broker.flush("idle")
    wait_until(lambda: stack.queues()["idle"]["depth"] == 0 and stack.queues()["idle.DQ"]["depth"] == 0, 15,
               "idle back to 0")


def test_a_sending_process_captures_the_enqueue(world):
    stack = world[0]
    collector = stack.collector
    before = stack.connections()
    script = (
        "from tests.engines.dramatiq import app\n"
        "from z4j_agents.dramatiq import current_agent\n"
        "m = app.login.send_with_options(args=('bob',), kwargs={'db_password': 'hunter2'}, delay=3_600_000)\n"
        "assert current_agent().runtime.flush(20)\n"
        "print(m.message_id)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=stack.env(), cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip().splitlines()[-1]
    task = stack.wait_task(task_id, "pending")
    assert task["queue"] == "default" and task["name"] == "login" and task["sent_at"] is not None
    assert task["engine_state"] == "DELAYED" and task["eta"] > time.time() + 3000
    assert task["kwargs"] == {"db_password": "[redacted]"} and task["replayable"] is True
    assert task["root_id"] == task_id and task["parent_id"] is None
    call = open_call(stack.creds["hmac_secret"], stored_replay(collector.db_url, task_id))
    assert call["message"].args == ("bob",) and call["message"].kwargs == {"db_password": "hunter2"}
    assert "z4j worker bootstrap" not in out.stderr  # a sender is not a worker
    assert stack.connections() == before + 1  # the sender's one connection


def test_worker_heartbeats(world):
    stack, worker, broker, _ = world
    rows = wait_until(lambda: len(w := {k: v for k, v in stack.workers().items() if v["state"] == "online"}) == 2
                      and w, 15, "two worker processes online")
    for name, row in rows.items():
        info = row["info"]
        assert info["pid"] in worker.children() and name == row["name"]
        assert info["concurrency"] == 2 and set(info["queues"]) == {"default", "dead"}
    before = {n: (w["last_seen_at"], w["info"]["processed"]) for n, w in rows.items()}
    for i in range(10):
        send(broker, "add", i, 1)
    wait_until(lambda: all(stack.workers()[n]["last_seen_at"] > seen for n, (seen, _) in before.items()),
               15, "later heartbeats")
    wait_until(lambda: sum(w["info"]["processed"] for w in stack.workers().values() if w["name"] in before)
               >= sum(p for _, p in before.values()) + 10, 15, "processed counts the messages")


def test_warm_shutdown_loses_nothing_and_marks_the_processes_offline(world):
    stack, worker, broker, _ = world
    ids = [send(broker, "sleep", 0.3).message_id for _ in range(8)]
    wait_until(lambda: any((t := stack.task(i)) and t["state"] == "started" for i in ids), 15, "one started")
    assert worker.stop() == 0
    # every message a worker thread started was finished and its events flushed before the process exited
    started = [t for i in ids if (t := stack.task(i)) is not None]
    assert started and all(t["state"] == "success" for t in started), [t["state"] for t in started]
    wait_until(lambda: [w for w in stack.workers().values() if w["state"] == "offline"] and
               all(w["state"] == "offline" for w in stack.workers().values()), 15, "workers offline")
