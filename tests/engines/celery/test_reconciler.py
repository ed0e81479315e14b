"""Must show: a real `celery worker` killed with SIGKILL mid-task; within the
configured window the task is `lost` (or its real state when the result
backend knows), with an audit entry.

Two prefork workers with the agent on one Redis (broker and result backend):
the doomed one takes the "celery" queue, the survivor only "idle" and stays
to answer the reconciler's ``celery.probe``. The collector runs the
reconciler every second and calls a worker gone after 4 s without news.
"""

from __future__ import annotations

import pytest

from tests.engines.celery.conftest import Stack, Worker, producer
from tests.support.collector import running, wait_until

OFFLINE_S = 4


@pytest.fixture
def collector(db_url, tmp_path):
    with running(db_url, tmp_path, Z4J_RECONCILE_INTERVAL_S=1, Z4J_RECONCILE_WORKER_OFFLINE_S=OFFLINE_S) as c:
        yield c


def test_sigkill_mid_task_ends_lost_or_its_backend_state(collector, redis_url, tmp_path):
    stack = Stack(collector, redis_url)
    env = stack.env(Z4J_CELERY_HEARTBEAT_S="1")
    survivor = Worker(env, tmp_path, queues="idle", name="survivor").start()
    doomed = Worker(env, tmp_path, queues="celery", name="doomed", concurrency=2).start()
    client = producer(redis_url, backend=True)
    try:
        lost = client.send_task("proj.sleep", args=(120,))
        known = client.send_task("proj.sleep", args=(120,))
        for task in (lost, known):
            stack.wait_task(task.id, "started", timeout=60)
        assert stack.workers()[doomed.hostname]["state"] == "online"

        doomed.kill()  # SIGKILL to the whole process group: no task event, no worker-offline event
        # What the result backend may know of a task whose events never arrived: here, a result.
        client.backend.store_result(known.id, 42, "SUCCESS")

        gone = stack.wait_task(lost.id, "lost", timeout=OFFLINE_S + 30)
        assert gone["engine_state"] == "LOST" and gone["worker"] == doomed.hostname and gone["finished_at"]
        assert [e["kind"] for e in gone["events"]][-1] == "lost"
        settled = stack.wait_task(known.id, "success", timeout=30)
        assert settled["engine_state"] == "SUCCESS" and settled["result"] == 42

        by_target = {e["target"]: e for e in stack.audit("task.reconciled")}
        assert by_target[f"task:{lost.id}"]["outcome"] == "lost"
        assert by_target[f"task:{known.id}"]["outcome"] == "settled"
        for entry in by_target.values():
            assert entry["actor"] == "system"
            assert entry["detail"]["old"] == "started" and entry["detail"]["worker"] == doomed.hostname
        assert by_target[f"task:{lost.id}"]["detail"]["new"] == "lost"
        assert "PENDING" not in by_target[f"task:{lost.id}"]["detail"]["reason"]

        # the survivor's tasks are not touched: its worker is alive
        quick = client.send_task("proj.sleep", args=(0.1,), queue="idle")
        assert stack.wait_task(quick.id, "success")["engine_state"] == "SUCCESS"
        assert stack.workers()[survivor.hostname]["state"] == "online"
        wait_until(lambda: stack.api.get("/api/v1/projects/default/reconciler").json()["stuck"] == 0,
                   what="no stuck task left")
    finally:
        doomed.kill()
        survivor.kill()
        client.close()
