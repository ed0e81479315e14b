"""Must show, for Huey: actions through the API (audited, with the user's name), periodic tasks as
schedules, and a consumer killed with SIGKILL mid-task. Real `huey_consumer` processes on RedisHuey and
SqliteHuey, one real collector per database (SQLite, PostgreSQL) for the module, reconciling every
second and calling a consumer gone after 4 s without news.

Retry re-runs the exact original call (the task records the arguments it got
in Huey's own store), cancel revokes a queued task (the consumer then skips
it) and refuses to "terminate" a running one, purge empties the queue or one
task name's messages (checked with Huey's pending_count), what Huey cannot do
is refused in one line and changes nothing.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import pytest

from tests.engines.huey.conftest import Consumer
from tests.engines.huey.proj import runs
from tests.support.collector import mint_tokens, wait_until
from tests.support.engine import DBS, OPERATOR, Actions, operator_user

pytestmark = pytest.mark.engine("huey")

P = "/api/v1/projects/default"
SECRET = "sk_live_abcdefghijklmnop0123"
OFFLINE_S = 4


class World(Actions):
    def __init__(self, stack, sides, tmp, operator: httpx.Client, viewer: httpx.Client, user_id: int) -> None:
        self.stack, self.sides, self.tmp = stack, sides, tmp
        self.operator, self.viewer, self.user_id = operator, viewer, user_id


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, tmp_path_factory):
    from tests.engines.huey.conftest import open_world

    stack, sides, tmp = open_world(request, tmp_path_factory, "actions", Z4J_RECONCILE_INTERVAL_S=1,
                                   Z4J_RECONCILE_WORKER_OFFLINE_S=OFFLINE_S, Z4J_SCHEDULE_SYNC_S=0.5)
    collector = stack.collector
    operator, user_id = operator_user(collector)
    viewer = collector.api(mint_tokens(collector, "viewer")["viewer"])
    for side in sides.values():
        side.start(tmp)
    return World(stack, sides, tmp, operator, viewer, user_id)


def test_a_retried_task_reruns_with_the_exact_args_and_succeeds_once_fixed(world):
    w = world
    for side in w.sides.values():
        key = uuid.uuid4().hex
        items = [1, "two", {"three": 3.5, "nested": [True, None]}, -4]
        when = "2026-01-02T03:04:05"
        first = side.task("flaky")(key, items, api_token=SECRET, when=when)
        old = w.stack.wait_task(first.id, "failure")
        assert old["exception"] == f"RuntimeError: flag {key} is not set"
        assert old["kwargs"]["api_token"] == "[redacted]" and old["redacted"] and old["replayable"]

        viewer = w.post(f"tasks/{first.id}/retry", api=w.viewer)
        assert viewer.status_code == 403 and viewer.json()["code"] == "forbidden"

        side.huey.put(f"flag:{key}", "1")  # the fix
        before = time.time()
        command = w.ok(f"tasks/{first.id}/retry")
        new_id = command["result"]["new_task_id"]
        assert new_id != first.id and command["result"]["retry_of"] == first.id
        assert command["result"]["queue"] == side.name
        new = w.stack.wait_task(new_id, "success")
        assert new["result"] == len(items) and new["name"] == "tests.engines.huey.proj.flaky"
        # the same call twice: the failed run and the retry, arguments exactly as sent (the secret too)
        call = {"items": items, "api_token": SECRET, "when": when}
        assert runs(side.huey, key) == [call, call]
        assert any((e.get("extra") or {}).get("retry_of") == first.id for e in new["events"])
        assert new["kwargs"]["api_token"] == "[redacted]"
        assert w.stack.task(first.id)["state"] == "failure"  # the old task keeps its history

        # the audit names the user, the time and the action
        rows, sent = w.audited("command.huey.retry", f"task:{first.id}", command)
        assert before - 1 <= sent["ts"] <= time.time()
        assert SECRET not in json.dumps(rows)

        # a sealed call this agent cannot open: one line, nothing enqueued
        pending = side.huey.pending_count()
        bogus = base64.b64encode(b"Z4R\x01\x00" + bytes(48)).decode()
        sent = w.post("commands", {"action": "huey.retry", "agent_id": side.creds["agent_id"],
                                   "args": {"task_id": first.id, "replay": bogus}})
        assert sent.status_code == 202, sent.text
        error = sent.json()
        error = wait_until(lambda: (c := w.operator.get(f"{P}/commands/{error['id']}").json())["state"] == "failed"
                           and c, what="the refused retry")["error"]
        assert error.startswith(f"cannot open the sealed call of {first.id}: sealed call does not verify")
        assert error.endswith("; nothing was enqueued") and "\n" not in error
        assert side.huey.pending_count() == pending


def test_cancel_and_purge_on_a_busy_consumer(world):
    w = world
    for side in w.sides.values():
        sleep, add, step = side.task("sleep"), side.task("add"), side.task("step")
        busy = [sleep(4) for _ in range(2)]  # both workers busy: what follows waits in the queue
        for r in busy:
            w.stack.wait_task(r.id, "started")

        for i in range(3):
            add(i, i)
        refused = w.post(f"queues/{side.name}/purge")
        assert refused.status_code == 400 and refused.json()["code"] == "confirm_required"
        assert side.huey.pending_count() == 3
        purged = w.ok(f"queues/{side.name}/purge", {"confirm": True})
        assert purged["result"]["purged"] == 3 and side.huey.pending_count() == 0

        for i in range(3):
            add(i, i)
        kept = [step(i) for i in range(2)]
        result = w.ok(f"queues/{side.name}/purge", {"confirm": True, "name": "tests.engines.huey.proj.add"})["result"]
        assert (result["purged"], result["scanned"]) == (3, 5)
        assert sorted(t.id for t in side.huey.pending()) == sorted(r.id for r in kept)
        assert w.refused(f"queues/{side.name}/purge", {"confirm": True, "older_than": "1h"}) == (
            "Huey's queued messages carry no enqueue time, so a purge by age cannot be done; nothing was purged")
        assert w.refused(f"queues/{side.name}/purge", {"confirm": True, "dead_letters": True}) == (
            "Huey has no dead-letter store; nothing was purged")
        assert side.huey.pending_count() == 2
        entry = next(r for r in w.audit("command.huey.purge") if r["target"] == f"queue:{side.name}")
        assert entry["actor"] == OPERATOR

        # cancel: the queued task is revoked at once, and the consumer skips it when it comes to it
        doomed, spared = kept
        # the producer's agent reports the enqueue on its own clock: wait until the collector knows it
        w.stack.wait_task(doomed.id, "pending")
        command = w.ok(f"tasks/{doomed.id}/cancel")
        assert command["result"] == {"task_id": doomed.id, "terminate": False, "revoked": True}
        assert w.stack.wait_task(doomed.id, "revoked")["engine_state"] == "REVOKED"
        running = w.post(f"tasks/{busy[0].id}/cancel")
        assert running.status_code == 409 and running.json()["code"] == "task_running"
        assert w.refused(f"tasks/{busy[0].id}/cancel", {"terminate": True, "confirm": True}) == (
            "Huey cannot stop a running task (revoking only skips a task that has not started); nothing was changed")
        assert w.stack.wait_task(spared.id, "success")["result"] == 2
        skipped = wait_until(lambda: [e for e in w.stack.task(doomed.id)["events"] if e.get("worker")],
                             what="the consumer's own REVOKED")
        assert skipped[0]["kind"] == "revoked" and skipped[0]["worker"] == side.consumer.worker
        assert side.huey.result(doomed.id) is None and w.stack.task(doomed.id)["state"] == "revoked"
        for r in busy:
            w.stack.wait_task(r.id, "success", timeout=30)


def test_periodic_tasks_are_schedules_that_fire_and_can_be_disabled_and_triggered(world):
    w = world
    for side in w.sides.values():
        name = f"{side.name}:tests.engines.huey.proj.every_minute"

        def schedules():
            return {s["name"]: s for s in w.operator.get(f"{P}/schedules", params={"engine": "huey"}).json()
                    if s["name"].startswith(f"{side.name}:")}

        rows = wait_until(lambda: len(s := schedules()) == 2 and s, what=f"{side.name}'s periodic tasks listed")
        minute, nightly = rows[name], rows[f"{side.name}:tests.engines.huey.proj.nightly"]
        assert minute["schedule"] == {"kind": "crontab", "minute": "*", "hour": "*", "day_of_week": "*",
                                      "day_of_month": "*", "month_of_year": "*"}
        assert nightly["schedule"] == {"kind": "crontab", "minute": "0", "hour": "3", "day_of_week": "1-5",
                                       "day_of_month": "*", "month_of_year": "*"}
        assert nightly["next_run_at"] > time.time() and time.gmtime(nightly["next_run_at"]).tm_hour == 3
        assert minute["queue"] == side.name and minute["enabled"] is True and minute["scheduler"] == "huey periodic_task"

        # Huey's scheduler fired it when the consumer started: a fire, and the task ran
        fires = wait_until(lambda: w.operator.get(f"{P}/schedules/{minute['id']}/fires").json(),
                           what="the consumer's first fire")
        assert fires[0]["manual"] is False
        assert w.stack.wait_task(fires[0]["task_id"], "success")["result"] == "tick"
        assert schedules()[name]["last_run_at"] is not None

        # code is the schedule: create, edit and delete are refused in one sentence
        code_only = ("the scheduler refused: Huey periodic tasks are defined in code (@huey.periodic_task): z4j can "
                     "enable, disable and trigger them, not create, edit or delete them")
        edit = w.operator.patch(f"{P}/schedules/{minute['id']}", json={"schedule": {"kind": "interval", "every": 5}})
        assert edit.status_code == 403  # an operator may not edit at all
        admin = w.stack.api
        edit = admin.patch(f"{P}/schedules/{minute['id']}", json={"schedule": {"kind": "interval", "every": 5}})
        assert edit.status_code == 409 and edit.json()["message"] == code_only
        deleted = admin.delete(f"{P}/schedules/{minute['id']}")
        assert deleted.status_code == 409 and deleted.json()["message"] == code_only
        created = admin.post(f"{P}/schedules", json={"engine": "huey", "name": "new", "task": "x",
                                                    "schedule": {"kind": "interval", "every": 60}})
        assert created.status_code == 409 and created.json()["message"] == code_only

        # disable = Huey's revoke_all of the task class; trigger is then refused; enable restores it
        off = w.post(f"schedules/{minute['id']}/disable")
        assert off.status_code == 200 and off.json()["enabled"] is False
        cls = side.huey._registry.string_to_task("tests.engines.huey.proj.every_minute")
        assert side.huey.is_revoked(cls)
        refused = w.post(f"schedules/{minute['id']}/trigger")
        assert refused.status_code == 409 and "is disabled (revoked): enable it first" in refused.json()["message"]
        on = w.post(f"schedules/{minute['id']}/enable")
        assert on.status_code == 200 and on.json()["enabled"] is True and not side.huey.is_revoked(cls)
        fired = w.post(f"schedules/{minute['id']}/trigger").json()
        assert w.stack.wait_task(fired["task_id"], "success")["result"] == "tick"
        manual = w.operator.get(f"{P}/schedules/{minute['id']}/fires").json()[0]
        assert manual["manual"] is True and manual["actor"] == OPERATOR and manual["task_id"] == fired["task_id"]
        audited = {r["action"] for r in w.audit("schedule.*") if r["target"] == f"schedule:{name}"}
        assert {"schedule.disable", "schedule.enable", "schedule.trigger", "schedule.edit"} <= audited


def test_sigkill_mid_task_ends_lost_or_its_result_store_state(world):
    """Each storage in turn, alone (the reconciler asks any agent that declared
    huey.probe; docs/huey.md, Reconciler): its consumer is killed with two tasks
    running, and another consumer of the same Huey answers the probe."""
    w = world
    for side in w.sides.values():
        side.consumer.kill()
    for side in w.sides.values():
        doomed = side.consumer = Consumer(side.env(Z4J_HUEY_HEARTBEAT_S="1"), w.tmp,
                                          label=f"{side.name}-doomed").start()
        sleep = side.task("sleep")
        lost, known = sleep(120), sleep(120)
        for task in (lost, known):
            w.stack.wait_task(task.id, "started", timeout=60)
        assert w.stack.workers()[doomed.worker]["state"] == "online"
        # a second consumer of the same Huey, idle (the queue is empty), reads the same result store
        survivor = Consumer(side.env(Z4J_HUEY_HEARTBEAT_S="1"), w.tmp, label=f"{side.name}-survivor").start()
        doomed.kill()  # SIGKILL to the process group: no task event, no offline event
        # What Huey's result store may know of a task whose events never arrived: here, a result.
        side.huey.put_result(known.id, 42)
        side.consumer = survivor

        gone = w.stack.wait_task(lost.id, "lost", timeout=OFFLINE_S + 30)
        assert gone["engine_state"] == "LOST" and gone["worker"] == doomed.worker and gone["finished_at"]
        assert [e["kind"] for e in gone["events"]][-1] == "lost"
        settled = w.stack.wait_task(known.id, "success", timeout=30)
        assert settled["engine_state"] == "COMPLETE" and settled["result"] == 42

        entries = {e["target"]: e for e in w.audit("task.reconciled")}
        assert entries[f"task:{lost.id}"]["outcome"] == "lost"
        assert entries[f"task:{known.id}"]["outcome"] == "settled"
        for task in (lost, known):
            entry = entries[f"task:{task.id}"]
            assert entry["actor"] == "system" and entry["detail"]["old"] == "started"
            assert entry["detail"]["worker"] == doomed.worker
        # the other consumer works, and its worker is not touched
        assert w.stack.wait_task(side.task("add")(2, 3).id, "success")["result"] == 5
        assert w.stack.workers()[survivor.worker]["state"] == "online"
        survivor.kill()
