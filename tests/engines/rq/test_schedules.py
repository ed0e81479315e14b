"""Must show: RQ schedules through the API with a real worker, a real `rqscheduler` (rq-scheduler,
checking every second) and a real `rq cron`, on both databases.

rq-scheduler entries are created, edited, disabled, enabled, triggered and deleted through z4j and
the change is in rq-scheduler's own store; a created schedule fires and its run succeeds; `rq cron`
jobs are listed with their next and last run and fires, triggered, and refused any change with one
sentence naming the config file."""

from __future__ import annotations

import subprocess

import pytest
from rq.job import Job
from rq_scheduler import Scheduler

from tests.engines.rq.conftest import RQ, Worker, module_stack
from tests.support.collector import wait_agent_connected, wait_until
from tests.support.engine import DBS, P, ROOT

pytestmark = pytest.mark.engine("rq")

ADD = "tests.engines.rq.jobs.add"


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, redis_server, tmp_path_factory):
    redis_server.flushall()
    stack, tmp = module_stack(request, redis_server, tmp_path_factory, "schedules", Z4J_SCHEDULE_SYNC_S=1)
    env = stack.env()
    worker = Worker(env, stack.redis_url, tmp, queues="default", name="sched")
    procs = []
    try:
        worker.start()
        wait_agent_connected(stack.api, "w1")
        for name, cmd in (("rqscheduler", [str(ROOT / ".venvs/rq/bin/rqscheduler"), "--url", stack.redis_url,
                                           "-i", "1"]),
                          ("cron", [*RQ, "cron", "--url", stack.redis_url, "tests.engines.rq.cronconf"])):
            log = open(tmp / f"{name}.log", "ab")
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                          start_new_session=True))
        yield stack
    finally:
        worker.kill()
        for proc in procs:
            proc.kill()
            proc.wait(10)


def schedules(stack) -> dict[str, dict]:
    return {s["name"]: s for s in stack.api.get(f"{P}/schedules", params={"engine": "rq"}).raise_for_status().json()}


def fires(stack, schedule_id: int) -> list[dict]:
    return stack.api.get(f"{P}/schedules/{schedule_id}/fires").raise_for_status().json()


def test_rq_scheduler_entries_round_trip_and_fire(world):
    stack = world
    body = {"engine": "rq", "name": "tick", "task": ADD, "schedule": {"kind": "interval", "every": 2},
            "args": [2, 3], "queue": "default"}
    created = stack.api.post(f"{P}/schedules", json=body)
    assert created.status_code == 201, created.text
    row = created.json()
    assert row["scheduler"].startswith("rq-scheduler") and row["schedule"] == {"kind": "interval", "every": 2.0}
    scheduler = Scheduler(connection=stack.redis)
    assert "tick" in scheduler and Job.fetch("tick", connection=stack.redis).args == [2, 3]

    # rqscheduler enqueues it, the worker runs it: a fire, and the run's result
    wait_until(lambda: fires(stack, row["id"]), 30, "a fire of tick")
    assert stack.wait_task("tick", "success")["result"] == 5

    edited = stack.api.patch(f"{P}/schedules/{row['id']}", json={"args": [10, 1]})
    assert edited.status_code == 200, edited.text
    assert edited.json()["args"] == [10, 1] and Job.fetch("tick", connection=stack.redis).args == [10, 1]

    assert stack.api.post(f"{P}/schedules/{row['id']}/disable").status_code == 200
    assert "tick" not in scheduler and stack.redis.hexists("z4j:rq-scheduler:disabled", "tick")
    assert schedules(stack)["tick"]["enabled"] is False
    assert stack.api.post(f"{P}/schedules/{row['id']}/enable").status_code == 200
    assert "tick" in scheduler and schedules(stack)["tick"]["enabled"] is True

    triggered = stack.api.post(f"{P}/schedules/{row['id']}/trigger")
    assert triggered.status_code == 202, triggered.text
    task_id = triggered.json()["task_id"]
    assert task_id != "tick" and stack.wait_task(task_id, "success")["result"] == 11
    manual = wait_until(lambda: [f for f in fires(stack, row["id"]) if f["manual"]], 15, "the manual fire")
    assert manual[0]["task_id"] == task_id

    bad = stack.api.patch(f"{P}/schedules/{row['id']}", json={"schedule": {"kind": "crontab", "minute": "61"}})
    assert bad.status_code == 400 and "\n" not in bad.json()["message"]
    assert Job.fetch("tick", connection=stack.redis).meta.get("interval") == 2  # unchanged

    assert stack.api.delete(f"{P}/schedules/{row['id']}").status_code == 204
    assert "tick" not in scheduler and "tick" not in schedules(stack)
    entries = stack.audit("schedule.*")
    assert {"schedule.create", "schedule.edit", "schedule.disable", "schedule.enable", "schedule.trigger",
            "schedule.delete"} <= {e["action"] for e in entries}


def test_rq_cron_jobs_are_shown_triggered_and_read_only(world):
    stack = world
    row = wait_until(lambda: (r := schedules(stack).get("cron:answer")) and r["last_run_at"] and r, 30,
                     "cron:answer listed with its last run")
    assert row["task"] == ADD and row["schedule"] == {"kind": "interval", "every": 3600.0}
    assert row["args"] == [20, 22] and row["queue"] == "default"
    assert row["next_run_at"] > row["last_run_at"]
    assert row["options"]["config_file"] == "tests.engines.rq.cronconf"
    fired = wait_until(lambda: fires(stack, row["id"]), 15, "the cron job's first run as a fire")
    assert stack.wait_task(fired[0]["task_id"], "success")["result"] == 42

    refused = stack.api.patch(f"{P}/schedules/{row['id']}", json={"args": [1, 1]})
    assert refused.status_code == 409
    message = refused.json()["message"]
    assert "defined in the config file tests.engines.rq.cronconf" in message and "\n" not in message
    assert stack.api.post(f"{P}/schedules/{row['id']}/disable").status_code == 409
    assert stack.api.delete(f"{P}/schedules/{row['id']}").status_code == 409

    triggered = stack.api.post(f"{P}/schedules/{row['id']}/trigger")
    assert triggered.status_code == 202, triggered.text
    assert stack.wait_task(triggered.json()["task_id"], "success")["result"] == 42
