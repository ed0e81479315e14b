"""Must show, for arq (the migration checklist, part 2): purge with filters, no
dead letters said in one sentence, a cron job fires and is triggered (read-only
otherwise), a worker killed with SIGKILL does not leave a job started forever
(reconciler + arq.probe), the CLI (retry, bulk retry, purge), a warm shutdown.
Same world as part 1 (conftest.py), its own collector per database.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.engines.arq.conftest import OFFLINE_S, Worker, enqueue
from tests.support.collector import wait_until, z4j
from tests.support.engine import OPERATOR, P

pytestmark = pytest.mark.engine("arq")


def test_purge_by_name_age_and_whole_queue(world):
    w, s = world, world.stack
    old = w.produce({"function": "add", "args": [1, 2], "queue": "purgeq"},
                    {"function": "add", "args": [3, 4], "queue": "purgeq"})
    time.sleep(5)
    fresh = w.produce({"function": "add", "args": [5, 6], "queue": "purgeq"},
                      {"function": "sleep", "args": [1], "queue": "purgeq"})
    assert w.redis.zcard("purgeq") == 4

    unconfirmed = w.post("queues/purgeq/purge", {"engine": "arq"})
    assert unconfirmed.status_code == 400 and unconfirmed.json()["code"] == "confirm_required"
    by_age = w.ok("queues/purgeq/purge", {"engine": "arq", "confirm": True, "older_than": "3s"})["result"]
    assert (by_age["purged"], by_age["scanned"]) == (2, 4) and w.redis.zcard("purgeq") == 2
    assert not w.redis.exists(f"arq:job:{old[0]}") and w.redis.exists(f"arq:job:{fresh[0]}")
    assert s.wait_task(old[1], "revoked")["events"][-1]["extra"] == {"purged": True}
    by_name = w.ok("queues/purgeq/purge", {"engine": "arq", "confirm": True, "name": "sleep"})["result"]
    assert by_name["purged"] == 1 and w.redis.zscore("purgeq", fresh[0]) is not None
    whole = w.ok("queues/purgeq/purge", {"engine": "arq", "confirm": True})["result"]
    assert whole["purged"] == 1 and w.redis.zcard("purgeq") == 0

    dead = w.command("queues/purgeq/purge", {"engine": "arq", "confirm": True, "dead_letters": True})
    assert dead["state"] == "failed" and dead["error"].startswith("arq keeps no dead letters")
    requeue = w.command("queues/purgeq/requeue-dead", {"engine": "arq", "all": True, "confirm": True})
    assert requeue["state"] == "failed" and requeue["error"].startswith("arq keeps no dead letters")


def test_cron_jobs_listed_fired_and_triggered(world):
    w, s = world, world.stack

    def tick() -> dict | None:
        rows = w.operator.get(f"{P}/schedules", params={"engine": "arq"}).json()
        return next((r for r in rows if r["name"] == "cron:tick"), None)

    row = wait_until(tick, what="the cron job listed")
    assert (row["source"], row["scheduler"], row["task"], row["queue"]) == ("code", "arq-cron", "cron:tick",
                                                                             "arq:queue")
    assert row["schedule"]["kind"] == "crontab" and row["schedule"]["second"] == ",".join(map(str, range(0, 60, 3)))
    # the next run as the worker computed it when the collector last listed it (every 3 s: soon after)
    assert row["schedule"]["minute"] == "*" and row["synced_at"] - 2 <= row["next_run_at"] <= row["synced_at"] + 5

    def fires(manual: bool) -> list[dict]:
        return [f for f in w.operator.get(f"{P}/schedules/{row['id']}/fires").json() if f["manual"] is manual]

    fire = wait_until(lambda: fires(False), timeout=30, what="the cron job firing")[0]
    assert s.wait_task(fire["task_id"], "success")["result"] == "tick"

    triggered = w.post(f"schedules/{row['id']}/trigger")
    assert triggered.status_code == 202, triggered.text
    task_id = triggered.json()["task_id"]
    assert s.wait_task(task_id, "success")["name"] == "cron:tick"
    manual = wait_until(lambda: [f for f in fires(True) if f["task_id"] == task_id], what="the manual fire")[0]
    assert manual["actor"] == OPERATOR
    audit = next(e for e in s.audit("schedule.trigger") if e["target"] == "schedule:cron:tick")
    assert audit["actor"] == OPERATOR and audit["detail"]["task_id"] == task_id

    # code-defined: every change is refused in one sentence, nothing changes
    for verb in ("enable", "disable"):
        refused = w.post(f"schedules/{row['id']}/{verb}")
        assert refused.status_code == 409 and refused.json()["code"] == "read_only"
        assert refused.json()["message"] == ("schedule 'cron:tick' is defined in code (arq) (read-only): change it "
                                             "there; it can still be triggered")
    admin = s.api
    created = admin.post(f"{P}/schedules", json={"engine": "arq", "name": "x", "task": "add",
                                                 "schedule": {"kind": "interval", "every": 60}})
    assert created.status_code == 409 and created.json()["code"] == "scheduler_refused"
    assert "arq cron jobs are defined in code" in created.json()["message"]
    assert admin.delete(f"{P}/schedules/{row['id']}").status_code == 409
    assert tick()["id"] == row["id"]


def test_a_worker_killed_with_sigkill_leaves_no_job_started(world):
    w, s = world, world.stack
    from arq.jobs import serialize_result

    doomed = Worker(s.env("w3", Z4J_ARQ_HEARTBEAT_S="1"), w.tmp, settings="NoAbortSettings", queue="doomed",
                    name="doomed").start()
    try:
        lost = enqueue(s.redis_url, "sleep", 120, _queue_name="doomed")
        known = enqueue(s.redis_url, "sleep", 120, _queue_name="doomed")
        for job_id in (lost, known):
            s.wait_task(job_id, "started")
        assert s.workers()[doomed.hostname]["state"] == "online"
        doomed.kill()  # SIGKILL: no event, no offline
        # what arq may hold for a job whose events never arrived: its result
        now = int(time.time() * 1000)
        w.redis.set(f"arq:result:{known}", serialize_result("sleep", (120,), {}, 1, now, True, 42, now, now, "x",
                                                            "doomed", job_id=known))
        gone = s.wait_task(lost, "lost", timeout=OFFLINE_S + 30)
        assert gone["engine_state"] == "LOST" and gone["worker"] == doomed.hostname
        settled = s.wait_task(known, "success", timeout=30)
        assert settled["result"] == 42 and settled["engine_state"] == "complete"
        by_target = {e["target"]: e for e in s.audit("task.reconciled")}
        assert by_target[f"task:{lost}"]["outcome"] == "lost" and by_target[f"task:{known}"]["outcome"] == "settled"
        assert by_target[f"task:{lost}"]["actor"] == "system"
        assert by_target[f"task:{lost}"]["detail"]["old"] == "started"
        # the live workers' jobs are untouched
        assert s.workers()[w.main.hostname]["state"] == "online"
        assert s.wait_task(enqueue(s.redis_url, "add", 1, 1), "success")["result"] == 2
    finally:
        doomed.kill()


def test_cli_retry_bulk_retry_purge_and_a_warm_shutdown(world):
    w, s = world, world.stack
    env = {"Z4J_URL": s.collector.url, "Z4J_API_TOKEN": s.token}
    key = f"k{time.time_ns()}"
    failed = enqueue(s.redis_url, "flaky", key, ["x"])
    s.wait_task(failed, "failure")
    w.redis.set(f"flag:{key}", "1")
    out = z4j("tasks", "retry", failed, "--engine", "arq", "--wait", "20", "--json", env=env)
    assert s.wait_task(json.loads(out.stdout)["result"]["new_task_id"], "success")["result"] == 1
    # bulk retry: each matching failure once, from its sealed call
    prefix = f"bulk{time.time_ns()}"
    ids = [enqueue(s.redis_url, "flaky", f"{prefix}-{i}", [i]) for i in range(3)]
    for job_id in ids:
        s.wait_task(job_id, "failure")
    for i in range(3):
        w.redis.set(f"flag:{prefix}-{i}", "1")
    z4j("tasks", "bulk-retry", "--engine", "arq", "--name", "flaky", "--search", prefix, "--yes", "--json", env=env)
    wait_until(lambda: all(len(w.runs(f"{prefix}-{i}")) == 2 for i in range(3)), what="three retried jobs")
    assert [r["items"] for i in range(3) for r in w.runs(f"{prefix}-{i}")] == [[0], [0], [1], [1], [2], [2]]

    w.produce({"function": "add", "args": [1, 1], "queue": "cliq"}, {"function": "sleep", "args": [1], "queue": "cliq"})
    purged = z4j("queues", "purge", "cliq", "--engine", "arq", "--name", "sleep", "--yes", "--wait", "20", "--json",
                 env=env)
    assert json.loads(purged.stdout)["result"]["purged"] == 1 and w.redis.zcard("cliq") == 1

    # a warm shutdown: the worker says offline, the agent flushes, nothing is raised
    assert w.noabort.stop() == 0
    assert wait_until(lambda: s.workers()[w.noabort.hostname]["state"] == "offline", what="noabort offline")
    assert "Traceback" not in w.noabort.log()
