"""Must show: real `rq worker`s killed with SIGKILL mid-job (worker and work horse: no event, no
offline); within the configured window each job is `lost`, or its real state when RQ's job hash
knows it, with an audit entry. A survivor worker (another queue) answers the reconciler's rq.probe.
One collector per database; it reconciles every second and calls a worker gone after 4 s of silence."""

from __future__ import annotations

import pytest
from rq.job import Job
from rq.results import Result

from tests.engines.rq.conftest import Worker, module_stack
from tests.support.collector import wait_until
from tests.support.engine import DBS, P

pytestmark = pytest.mark.engine("rq")

OFFLINE_S = 4


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def stack_tmp(request, redis_server, tmp_path_factory):
    redis_server.flushall()
    return module_stack(request, redis_server, tmp_path_factory, "reconcile", Z4J_RECONCILE_INTERVAL_S=1,
                        Z4J_RECONCILE_WORKER_OFFLINE_S=OFFLINE_S)


def test_sigkill_mid_job_ends_lost_or_its_rq_state(stack_tmp):
    stack, tmp = stack_tmp
    env = stack.env(Z4J_RQ_HEARTBEAT_S="1")
    survivor = Worker(env, stack.redis_url, tmp, queues="idle", name="survivor").start()
    doomed = [Worker(env, stack.redis_url, tmp, queues="default", name=f"doomed{i}").start() for i in (1, 2)]
    try:
        q = stack.queue()
        lost, known = q.enqueue("tests.engines.rq.jobs.sleep", 120), q.enqueue("tests.engines.rq.jobs.sleep", 120)
        for job in (lost, known):
            stack.wait_task(job.id, "started", timeout=60)
        workers = {stack.task(lost.id)["worker"], stack.task(known.id)["worker"]}
        assert workers == {"doomed1", "doomed2"}
        for worker in doomed:
            worker.kill()  # SIGKILL to the process group: the worker and its horse, no event at all

        # What RQ's store may know of a job whose events never arrived: here, a result.
        known = Job.fetch(known.id, connection=stack.redis)
        with stack.redis.pipeline() as pipe:
            known.set_status("finished", pipeline=pipe)
            Result.create(known, Result.Type.SUCCESSFUL, ttl=600, return_value=42, pipeline=pipe)
            pipe.execute()
        assert Job.fetch(lost.id, connection=stack.redis).get_status() == "started"  # RQ itself still says so

        gone = stack.wait_task(lost.id, "lost", timeout=OFFLINE_S + 30)
        assert gone["engine_state"] == "LOST" and gone["worker"] in workers and gone["finished_at"]
        assert [e["kind"] for e in gone["events"]][-1] == "lost"
        settled = stack.wait_task(known.id, "success", timeout=30)
        assert settled["engine_state"] == "finished" and settled["result"] == 42

        entries = stack.audit("task.reconciled")
        by_target = {e["target"]: e for e in entries}
        assert by_target[f"task:{lost.id}"]["outcome"] == "lost"
        assert by_target[f"task:{known.id}"]["outcome"] == "settled"
        for entry in by_target.values():
            assert entry["actor"] == "system" and entry["detail"]["old"] == "started"
        assert by_target[f"task:{lost.id}"]["detail"]["new"] == "lost"

        # the survivor's jobs are not touched: its worker is alive
        quick = stack.queue("idle").enqueue("tests.engines.rq.jobs.sleep", 0.1)
        assert stack.wait_task(quick.id, "success")["engine_state"] == "finished"
        assert stack.workers()["survivor"]["state"] == "online"
        wait_until(lambda: stack.api.get(f"{P}/reconciler").json()["stuck"] == 0, what="no stuck task left")
    finally:
        for worker in (*doomed, survivor):
            worker.kill()
