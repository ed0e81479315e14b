"""threads and solo pools: the same capture as prefork (test_capture.py), on both databases."""

from __future__ import annotations

import pytest

from tests.engines.celery.conftest import BOOTSTRAP_LINE, Worker, producer
from tests.support.collector import wait_until

pytestmark = pytest.mark.engine("celery")


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_pool_delivers_every_state_and_the_worker_lifecycle(pool, stack, tmp_path):
    worker = Worker(stack.env(Z4J_CELERY_HEARTBEAT_S="1"), tmp_path, pool=pool, concurrency=2, name=pool)
    try:
        worker.start()
        assert BOOTSTRAP_LINE in worker.log()
        app = producer(stack.redis_url)
        ok = app.send_task("proj.add", (20, 22))
        bad = app.send_task("proj.fail_nested", ("y",))
        done = stack.wait_task(ok.id, "success")
        assert [e["kind"] for e in done["events"]] == ["received", "started", "succeeded"]
        assert done["result"] == 42 and done["worker"] == worker.hostname and done["runtime"] >= 0
        failed = stack.wait_task(bad.id, "failure")
        assert [e["kind"] for e in failed["events"]] == ["received", "started", "failed"]
        assert "in _inner_parse" in failed["traceback"] and "in _outer_load" in failed["traceback"]
        assert failed["exception"] == "ValueError: cannot parse 'y' in _inner_parse"
        w = wait_until(lambda: stack.workers().get(worker.hostname), what="worker online")
        assert w["state"] == "online" and w["info"]["pool"] == pool
        assert stack.connections("w1") == 1
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-2000:]
    wait_until(lambda: stack.workers()[worker.hostname]["state"] == "offline", 15, "worker offline")
