"""Must show: a real `dramatiq` worker killed with SIGKILL mid-message does not leave its messages
`started` forever: the reconciler asks a live Dramatiq agent (``dramatiq.probe``: results backend, then
the broker's keys) and closes each one `lost`, or with what the results backend knows, with an audit
entry. Both databases; the collector reconciles every second and calls a worker gone after 4 s."""

from __future__ import annotations

import pytest
from dramatiq import Message

from tests.engines.dramatiq.conftest import Worker, module_stack, producer, send
from tests.support.collector import wait_until
from tests.support.engine import DBS, P

pytestmark = pytest.mark.engine("dramatiq")
OFFLINE_S = 4


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def stack(request, redis_server, tmp_path_factory):
    return module_stack(request, tmp_path_factory, redis_server, "dq-reconcile", Z4J_RECONCILE_INTERVAL_S=1,
                        Z4J_RECONCILE_WORKER_OFFLINE_S=OFFLINE_S)


def test_sigkill_mid_message_ends_lost_or_its_results_backend_state(stack):
    env = stack.env(Z4J_DRAMATIQ_HEARTBEAT_S="1")
    log_dir = stack.collector.log_path.parent
    survivor = Worker(env, log_dir, processes=1, threads=1, queues=("idle",), name="survivor").start()
    doomed = Worker(env, log_dir, processes=1, threads=2, queues=("default",), name="doomed").start()
    broker = producer(stack.redis_url)
    try:
        lost = send(broker, "sleep", 120)
        known = send(broker, "sleep", 120)
        for message in (lost, known):
            stack.wait_task(message.message_id, "started", timeout=60)
        worker = stack.task(lost.message_id)["worker"]
        assert stack.workers()[worker]["state"] == "online"

        doomed.kill()  # SIGKILL to the whole process group: no event, no worker-offline
        # what the results backend may know of a message whose events never arrived: here, a result
        backend = broker.get_results_backend()
        backend.store_result(Message(queue_name="default", actor_name="sleep", args=(), kwargs={}, options={},
                                     message_id=known.message_id), 42, 600_000)

        gone = stack.wait_task(lost.message_id, "lost", timeout=OFFLINE_S + 30)
        assert gone["engine_state"] == "LOST" and gone["worker"] == worker and gone["finished_at"]
        assert [e["kind"] for e in gone["events"]][-1] == "lost"
        settled = stack.wait_task(known.message_id, "success", timeout=30)
        assert settled["engine_state"] == "SUCCESS" and settled["result"] == 42

        by_target = {e["target"]: e for e in stack.audit("task.reconciled")}
        assert by_target[f"task:{lost.message_id}"]["outcome"] == "lost"
        assert by_target[f"task:{known.message_id}"]["outcome"] == "settled"
        for entry in by_target.values():
            assert entry["actor"] == "system" and entry["detail"]["old"] == "started"
            assert entry["detail"]["worker"] == worker
        # the message the dead process held is still in Redis, fetched and never acked: the probe said so
        assert by_target[f"task:{lost.message_id}"]["detail"]["reason"] == \
            "worker gone and the engine's store still says started"

        # the survivor's messages are not touched: its worker is alive
        quick = send(broker, "idle_job", 1, queue="idle")
        assert stack.wait_task(quick.message_id, "success")["engine_state"] == "SUCCESS"
        wait_until(lambda: stack.api.get(f"{P}/reconciler").json()["stuck"] == 0, what="no stuck task left")
    finally:
        doomed.kill()
        survivor.kill()
