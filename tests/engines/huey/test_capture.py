"""Capture from real `huey_consumer` processes (thread workers; process workers at the end) into a
real collector, on both databases and both Huey storages (RedisHuey, SqliteHuey).

One collector per database for the module; under it one consumer per storage,
and this process as an instrumented producer (its own agent, reporting the
tasks it enqueues).
"""

from __future__ import annotations

import pytest

from tests.engines.huey.conftest import BOOTSTRAP_LINE, Consumer, stored_replay
from tests.engines.huey.proj import runs
from tests.support.collector import wait_until
from tests.support.engine import DBS, assert_nested_failure
from z4j_agents.huey.call import open_call
from z4j_agents.replay import ReplayError

pytestmark = pytest.mark.engine("huey")


def wait_kinds(stack, task_id: str, kinds: list[str]) -> dict:
    """The task once its timeline holds exactly these kinds (two agents report it: order of arrival varies)."""
    def done():
        task = stack.task(task_id)
        return task is not None and [e["kind"] for e in task["events"]] == kinds and task

    return wait_until(done, what=f"events {kinds} of {task_id} (now {stack.task(task_id)})")


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, tmp_path_factory):
    from tests.engines.huey.conftest import open_world

    stack, sides, tmp = open_world(request, tmp_path_factory, "capture")
    for side in sides.values():
        side.start(tmp)
    return stack, sides, tmp


def test_activation_live_tasks_and_results(world):
    stack, sides, _ = world
    for storage, side in sides.items():
        log = side.consumer.log()
        assert log.count(BOOTSTRAP_LINE) == 1, log
        results = [side.task("add")(i, i) for i in range(20)]
        ids = {r.id for r in results}
        wait_until(lambda: ids <= {t["task_id"] for t in stack.tasks(state="success", name="tests.engines.huey.proj.add")},
                   30, f"20 tasks succeeded on {storage}")
        detail = wait_kinds(stack, results[3].id, ["sent", "started", "succeeded"])
        assert detail["result"] == 6 and detail["runtime"] is not None and detail["runtime"] >= 0
        assert detail["engine_state"] == "COMPLETE" and detail["queue"] == side.name
        assert detail["worker"] == side.consumer.worker and detail["args"] == [3, 3]
        assert detail["sent_at"] is not None and detail["started_at"] >= detail["sent_at"]
        assert stack.connections(side.agent) == 1
    # the producer's agent started at its first enqueue
    agents = wait_until(lambda: {a["name"]: a for a in stack.api.get("/api/v1/projects/default/agents").json()
                                 if a["connected"]}, what="agents connected")
    assert set(agents) == {*(s.agent for s in sides.values()), "producer"}
    assert all(a["engines"] == ["huey"] for a in agents.values())


def test_failure_keeps_the_full_traceback_and_retries_are_captured(world):
    stack, sides, _ = world
    for side in sides.values():
        r = side.task("fail_nested")("x")
        task = stack.wait_task(r.id, "failure")
        assert task["engine_state"] == "ERROR"
        assert_nested_failure(task)
        assert task["args"] == ["x"] and task["runtime"] is not None

        key = f"retry-{side.name}"
        r = side.task("retry_once")(key, 7)
        stack.wait_task(r.id, "success")
        # the producer's agent reports the first enqueue; the consumer's the rest
        task = wait_kinds(stack, r.id, ["sent", "started", "retried", "sent", "started", "succeeded"])
        retried = next(e for e in task["events"] if e["kind"] == "retried")
        assert retried["exception"] == "RuntimeError: first attempt fails"
        assert "first attempt fails" in retried["traceback"] and retried["extra"]["retries_left"] == 2
        assert task["result"] == 7 and task["retries"] == 1 and task["parent_id"] is None
        assert runs(side.huey, key) == [7, 7]


def test_secret_kwargs_are_redacted_but_the_sealed_call_is_exact(world):
    stack, sides, _ = world
    db_url = stack.collector.db_url
    for side in sides.values():
        r = side.task("login")("ann", db_password="hunter2")
        task = stack.wait_task(r.id, "success")
        assert task["kwargs"] == {"db_password": "[redacted]"} and task["redacted"] is True
        assert task["args"] == ["ann"] and task["replayable"] is True
        # sealed twice: by the producer at enqueue and by the consumer when it ran, each with its own secret
        blobs = wait_until(lambda: len(b := stored_replay(db_url, r.id)) == 2 and b, what="two sealed calls")
        calls = []
        for secret in (stack.producer["hmac_secret"], side.creds["hmac_secret"]):
            opened = []
            for blob in blobs:
                try:
                    opened.append(open_call(secret, blob))
                except ReplayError:
                    pass
            assert len(opened) == 1, "each agent opens its own sealed call only"
            calls.append(opened[0])
        for call in calls:
            rebuilt = side.huey.deserialize_task(call["message"])
            assert call["task"] == "tests.engines.huey.proj.login" and call["id"] == r.id
            assert call["queue"] == side.name
            assert rebuilt.args == ("ann",) and rebuilt.kwargs == {"db_password": "hunter2"}
        with pytest.raises(ReplayError):
            open_call("another agent's secret", blobs[0])
    from tests.support.engine import db_text

    assert "hunter2" not in db_text(db_url)


def test_pipelines_chords_and_tasks_enqueued_by_tasks_are_dag_edges(world):
    stack, sides, _ = world
    from huey.api import group  # group(...).then(...) builds a chord

    for side in sides.values():
        step, fail_step, tsum, spawn = (side.task(n) for n in ("step", "fail_step", "tsum", "spawn"))
        pipe = step.s(1).then(step).then(step)
        ids = [pipe.id, pipe.on_complete.id, pipe.on_complete.on_complete.id]
        side.huey.enqueue(pipe)
        last = stack.wait_task(ids[2], "success")
        assert last["result"] == 4
        rows = {t["task_id"]: t for t in stack.tasks(root_id=ids[0])}
        assert set(rows) == set(ids[1:])
        assert rows[ids[1]]["parent_id"] == ids[0] and rows[ids[2]]["parent_id"] == ids[1]
        tree = stack.api.get(f"/api/v1/projects/default/tasks/{ids[0]}/tree", params={"engine": "huey"}).json()
        assert tree["nodes"] == 3

        broken = step.s(1).then(fail_step).then(step)
        middle, after = broken.on_complete.id, broken.on_complete.on_complete.id
        side.huey.enqueue(broken)
        failed = stack.wait_task(middle, "failure")
        assert failed["parent_id"] == broken.id and failed["root_id"] == broken.id
        assert failed["exception"] == "RuntimeError: middle step fails on 2"
        assert stack.task(after) is None, "the step after the failure never runs"

        members = [step.s(i) for i in range(5)]
        result = side.huey.enqueue(group(members).then(tsum))
        callback_id = result.callback.id
        callback = stack.wait_task(callback_id, "success")
        assert callback["result"] == sum(i + 1 for i in range(5))
        rows = [stack.task(m.id) for m in members]
        cids = {row["group_id"] for row in rows}
        assert len(cids) == 1 and None not in cids
        assert {row["chord_id"] for row in rows} == {callback_id}
        assert callback["group_id"] == cids.pop() and callback["parent_id"] in {m.id for m in members}

        parent = spawn(5)
        child_id = stack.wait_task(parent.id, "success")["result"]
        child = stack.wait_task(child_id, "success")
        assert child["parent_id"] == parent.id and child["root_id"] == parent.id and child["result"] == 10


def test_consumer_heartbeat_and_queue_depth_match_huey(world):
    stack, sides, _ = world
    for side in sides.values():
        w = wait_until(lambda: stack.workers().get(side.consumer.worker), what="consumer listed")
        assert w["state"] == "online"
        info = w["info"]
        assert info["pool"] == "thread" and info["concurrency"] == 2 and info["queues"] == [side.name]
        assert info["storage"] in ("RedisStorage", "SqliteStorage") and isinstance(info["loadavg"], list)
        processed = info["processed"]
        sleep, add = side.task("sleep"), side.task("add")
        busy = [sleep(2) for _ in range(2)]  # both workers busy
        for r in busy:
            stack.wait_task(r.id, "started")
        waiting = [add(i, 1) for i in range(5)]
        assert side.huey.pending_count() == 5
        wait_until(lambda: stack.queues().get(side.name, {}).get("depth") == side.huey.pending_count(), 15,
                   f"{side.name} depth == Huey's pending_count()")
        # the producer's agent saw them queued: z4j lists the same tasks as pending
        wait_until(lambda: {t["task_id"] for t in stack.tasks(queue=side.name, state="pending")}
                   == {r.id for r in waiting}, what="the queued tasks listed pending")
        for r in waiting:
            stack.wait_task(r.id, "success")
        wait_until(lambda: stack.queues()[side.name]["depth"] == 0 == side.huey.pending_count(), 15,
                   "depth back to 0")
        wait_until(lambda: stack.workers()[side.consumer.worker]["info"]["processed"] >= processed + 7, 15,
                   "a heartbeat counting the tasks")


def test_process_workers_report_through_one_connection_and_stop_marks_offline(world):
    stack, sides, tmp = world
    side = sides["redis"] if "redis" in sides else next(iter(sides.values()))
    side.consumer.stop()
    before = stack.connections(side.agent)
    consumer = Consumer(side.env(Z4J_HUEY_HEARTBEAT_S="1"), tmp, workers=3, kind="process",
                        label=f"{side.name}-proc").start()
    try:
        # Tasks that take a while: instant ones could all be taken by one
        # process before its siblings poll again (seen once on CI).
        results = [side.task("sleep")(0.5) for _ in range(6)] + [side.task("add")(i, 2) for i in range(24)]
        for r in results:
            stack.wait_task(r.id, "success")
        pids = {e["extra"]["pid"] for r in results for e in stack.task(r.id)["events"] if e["kind"] == "started"}
        assert len(pids) >= 2 and consumer.proc.pid not in pids, pids
        assert stack.connections(side.agent) == before + 1
        assert stack.workers()[consumer.worker]["info"]["pool"] == "process"
        assert consumer.stop() == 0
        w = wait_until(lambda: (x := stack.workers().get(consumer.worker)) and x["state"] == "offline" and x,
                       15, "consumer offline")
        assert w["info"]["pool"] == "process"
    finally:
        consumer.kill()
