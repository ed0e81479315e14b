"""Must show, for arq: the migration checklist with real `arq` workers on a real
redis-server and a real collector, on SQLite and PostgreSQL (one collector and
two workers per database for the module).

Workers: "main" (WorkerSettings: allow_abort_jobs, a cron job every 3 s,
queue arq:queue, also samples the depth of "idle") with agent w1; "noabort"
(NoAbortSettings, queue noabort) with agent w2. A producer process with z4j
installed enqueues some jobs (captured as sent, sealed); others are enqueued
with plain arq (no agent), so the worker's own sealed copy is what retries.
The collector runs its reconciler every second and calls a worker gone after
4 s without news.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest

from tests.engines.arq.conftest import P, Stack, Worker, enqueue, produce, redis_client
from tests.engines.celery.conftest import db_text
from tests.support.collector import module_collector, wait_until, z4j

pytestmark = pytest.mark.engine("arq")

DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]
OPERATOR = "ops@example.com"
PASSWORD = "operator-password-1"
SECRET = "sk_live_abcdefghijklmnop0123"
OFFLINE_S = 4


class World:
    def __init__(self, stack: Stack, main: Worker, noabort: Worker, producer_env: dict, operator: httpx.Client,
                 viewer: httpx.Client, user_id: int, tmp) -> None:
        self.stack, self.main, self.noabort, self.producer_env = stack, main, noabort, producer_env
        self.operator, self.viewer, self.user_id, self.tmp = operator, viewer, user_id, tmp
        self.redis = redis_client(stack.redis_url)

    def post(self, path: str, body: dict | None = None, api: httpx.Client | None = None) -> httpx.Response:
        return (api or self.operator).post(f"{P}/{path}", json=body or {})

    def command(self, path: str, body: dict | None = None) -> dict:
        response = self.post(path, {"wait": 20, **(body or {})})
        assert response.status_code == 200, response.text
        return response.json()

    def ok(self, path: str, body: dict | None = None) -> dict:
        command = self.command(path, body)
        assert command["state"] == "succeeded", (command["error"], command)
        return command

    def produce(self, *calls: dict) -> list[str]:
        return produce(self.producer_env, list(calls))

    def runs(self, key: str) -> list[dict]:
        return [json.loads(x) for x in self.redis.lrange(f"ran:{key}", 0, -1)]


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, redis_server, tmp_path_factory):
    redis_server.flushall()
    collector = module_collector(request, tmp_path_factory, "arq", Z4J_RECONCILE_INTERVAL_S=1,
                                 Z4J_RECONCILE_WORKER_OFFLINE_S=OFFLINE_S)
    tmp = tmp_path_factory.mktemp(f"arq-workers-{request.param}")
    stack = Stack(collector, redis_server.url)
    root = httpx.Client(base_url=collector.url, timeout=30,
                        headers={"Authorization": f"Bearer {collector.first_superuser()}"})
    user_id = root.post("/api/v1/users", json={"email": OPERATOR, "password": PASSWORD}).raise_for_status().json()["id"]
    root.put(f"{P}/members/{user_id}", json={"role": "operator"}).raise_for_status()
    operator = collector.api(collector.login(OPERATOR, PASSWORD))
    from tests.support.collector import mint_tokens

    viewer = collector.api(mint_tokens(collector, "viewer")["viewer"])
    fast = {"Z4J_ARQ_HEARTBEAT_S": "1", "Z4J_ARQ_QUEUE_DEPTH_S": "0.5"}
    main = Worker(stack.env("w1", Z4J_ARQ_QUEUES="idle", **fast), tmp, name="main")
    noabort = Worker(stack.env("w2", **fast), tmp, settings="NoAbortSettings", queue="noabort", name="noabort")
    request.addfinalizer(main.kill)
    request.addfinalizer(noabort.kill)
    main.start()
    noabort.start()
    for name in ("w1", "w2"):
        wait_until(lambda name=name: any(a["name"] == name and a["connected"]
                                         for a in stack.api.get(f"{P}/agents").json()), what=f"agent {name}")
    return World(stack, main, noabort, stack.env("producer"), operator, viewer, user_id, tmp)


def test_live_tasks_failures_retries_queues_and_workers(world):
    w, s = world, world.stack
    # queued jobs are visible before a worker takes them (producer with the agent; "idle" has no worker)
    idle = w.produce(*({"function": "add", "args": [n, n], "queue": "idle"} for n in range(3)))
    for job_id in idle:
        row = s.wait_task(job_id, "pending")
        assert (row["name"], row["queue"], row["engine_state"], row["replayable"]) == ("add", "idle", "queued", True)
    assert w.redis.zcard("idle") == 3
    # counts per queue match arq's own view (ZCARD of the queue's sorted set)
    wait_until(lambda: s.queues().get("idle", {}).get("depth") == w.redis.zcard("idle") == 3, what="idle depth")
    wait_until(lambda: s.queues().get("arq:queue", {}).get("depth") == w.redis.zcard("arq:queue"),
               what="arq:queue depth as arq counts it")
    assert len(s.tasks(queue="idle", state="pending")) == 3

    # a live job: started then success, with its result, runtime and worker; the app's own on_startup ran
    done = s.wait_task(enqueue(s.redis_url, "add", 20, 22), "success")
    assert done["result"] == 42 and done["runtime"] is not None and done["worker"] == w.main.hostname
    assert [e["kind"] for e in done["events"]] == ["started", "succeeded"]
    assert done["replayable"]  # sealed by the worker: the producer had no agent
    assert s.wait_task(enqueue(s.redis_url, "app_ctx"), "success")["result"] is True

    # a failure: the exception and the full traceback, secrets masked everywhere
    failed = s.wait_task(enqueue(s.redis_url, "boom", db_password="hunter2"), "failure")
    assert failed["exception"] == "ValueError: cannot connect with postgresql://app:[redacted]@db/app"
    tb = failed["traceback"]
    assert tb.startswith("Traceback (most recent call last):") and "in boom" in tb and "in _parse" in tb
    assert tb.rstrip().endswith(failed["exception"]) and "z4j_agents" not in tb
    assert failed["kwargs"] == {"db_password": "[redacted]"} and failed["redacted"]

    # arq's Retry: retried twice, then success on the third try
    retried = s.wait_task(enqueue(s.redis_url, "retrying", "r1"), "success")
    assert [e["kind"] for e in retried["events"]] == ["started", "retried", "started", "retried", "started",
                                                      "succeeded"]
    assert retried["result"] == "ok after 3 tries" and retried["retries"] == 2

    # worker liveness: online, heartbeats with arq's own health check line
    worker = wait_until(lambda: (x := s.workers().get(w.main.hostname)) and x["info"].get("health_check") and x,
                        what="a heartbeat with arq's health check")
    assert worker["state"] == "online" and worker["engine"] == "arq"
    assert worker["info"]["queues"] == ["arq:queue", "idle"] and worker["info"]["allow_abort_jobs"] is True
    assert "j_complete=" in worker["info"]["health_check"]
    assert "hunter2" not in db_text(s.collector.db_url)


def test_retry_reruns_the_exact_call_and_is_audited(world):
    w, s = world, world.stack
    key = f"k{time.time_ns()}"
    items = [1, "two", {"three": 3.5, "nested": [True, None]}, -4]
    when = "2026-01-02T03:04:05"
    [first] = w.produce({"function": "flaky", "args": [key, items],
                         "kwargs": {"api_token": SECRET, "when": {"$datetime": when}}})
    old = s.wait_task(first, "failure")
    assert old["exception"] == f"RuntimeError: flag {key} is not set"
    assert old["kwargs"]["api_token"] == "[redacted]" and old["replayable"]

    viewer = w.post(f"tasks/{first}/retry", api=w.viewer)
    assert viewer.status_code == 403 and viewer.json()["code"] == "forbidden"

    w.redis.set(f"flag:{key}", "1")  # the fix
    before = time.time()
    command = w.ok(f"tasks/{first}/retry")
    new_id = command["result"]["new_task_id"]
    assert new_id != first and command["result"]["retry_of"] == first and command["result"]["queue"] == "arq:queue"
    new = s.wait_task(new_id, "success")
    assert new["result"] == len(items) and new["name"] == "flaky"
    call = {"key": key, "items": items, "api_token": SECRET, "when": when}
    assert w.runs(key) == [call, call]  # the same call twice, the secret and the datetime included
    assert any((e.get("extra") or {}).get("retry_of") == first for e in new["events"])
    assert new["kwargs"]["api_token"] == "[redacted]"
    assert s.task(first)["state"] == "failure"

    rows = w.operator.get(f"{P}/audit", params={"action": "command.arq.retry*"}).json()["entries"]
    sent = next(r for r in rows if r["action"] == "command.arq.retry" and r["target"] == f"task:{first}")
    assert (sent["actor"], sent["actor_user_id"], sent["outcome"]) == (OPERATOR, w.user_id, "sent")
    assert before - 1 <= sent["ts"] <= time.time() and sent["detail"]["command"] == command["id"]
    assert any(r["action"] == "command.arq.retry.result" and r["outcome"] == "ok" for r in rows)
    assert SECRET not in json.dumps(rows) and SECRET not in db_text(s.collector.db_url)

    # enqueued without any agent: the worker's own sealed copy retries it
    key2 = f"k{time.time_ns()}"
    plain = enqueue(s.redis_url, "flaky", key2, [7])
    s.wait_task(plain, "failure")
    w.redis.set(f"flag:{key2}", "1")
    again = w.ok(f"tasks/{plain}/retry")["result"]["new_task_id"]
    assert s.wait_task(again, "success")["result"] == 1
    assert [r["items"] for r in w.runs(key2)] == [[7], [7]]


def test_cancel_queued_deferred_and_running_jobs(world):
    w, s = world, world.stack
    from arq.jobs import deserialize_result

    # queued on a queue no worker takes: out of the queue, arq's own "aborted" result written
    [queued] = w.produce({"function": "add", "args": [1, 1], "queue": "idle"})
    s.wait_task(queued, "pending")
    result = w.ok(f"tasks/{queued}/cancel")["result"]
    assert result["removed_from_queue"] == 1 and result["status"] == "aborted"
    assert s.wait_task(queued, "revoked")["engine_state"] == "complete"
    assert w.redis.zscore("idle", queued) is None and not w.redis.exists(f"arq:job:{queued}")
    assert isinstance(deserialize_result(w.redis.get(f"arq:result:{queued}")).result, asyncio.CancelledError)

    # deferred (runs in a minute)
    [deferred] = w.produce({"function": "add", "args": [2, 2], "defer_by": 60})
    assert s.wait_task(deferred, "pending")["eta"] > time.time() + 30
    assert w.ok(f"tasks/{deferred}/cancel")["result"]["removed_from_queue"] == 1
    s.wait_task(deferred, "revoked")
    assert w.redis.zscore("arq:queue", deferred) is None

    # running, on a worker that allows aborting: terminate + confirm aborts it
    running = enqueue(s.redis_url, "sleep", 60)
    s.wait_task(running, "started")
    refused = w.post(f"tasks/{running}/cancel", {"wait": 20})
    assert refused.status_code == 409 and refused.json()["code"] == "task_running"
    result = w.ok(f"tasks/{running}/cancel", {"terminate": True, "confirm": True})["result"]
    assert result["status"] == "aborted"
    gone = s.wait_task(running, "revoked")
    assert gone["events"][-1]["extra"] == {"aborted": True, "running": True}

    # running, on a worker without allow_abort_jobs: one clear sentence, nothing changed
    stuck = enqueue(s.redis_url, "sleep", 20, _queue_name="noabort")
    s.wait_task(stuck, "started")
    command = w.command(f"tasks/{stuck}/cancel", {"terminate": True, "confirm": True})
    assert command["state"] == "failed"
    assert command["error"] == (f"job {stuck} is running and this arq worker does not allow aborting jobs: set "
                                "allow_abort_jobs = True in its WorkerSettings; nothing changed")
    assert s.task(stuck)["state"] == "started" and w.redis.exists(f"arq:in-progress:{stuck}")

    finished = w.post(f"tasks/{gone['task_id']}/cancel", {"wait": 20})
    assert finished.status_code == 409 and finished.json()["code"] == "task_finished"


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
    assert row["schedule"]["minute"] == "*" and row["next_run_at"] > time.time() - 5

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


def test_cli_retry_and_schedules(world):
    w, s = world, world.stack
    env = {"Z4J_URL": s.collector.url, "Z4J_API_TOKEN": s.token}
    key = f"k{time.time_ns()}"
    failed = enqueue(s.redis_url, "flaky", key, ["x"])
    s.wait_task(failed, "failure")
    w.redis.set(f"flag:{key}", "1")
    out = z4j("tasks", "retry", failed, "--engine", "arq", "--wait", "20", "--json", env=env)
    assert s.wait_task(json.loads(out.stdout)["result"]["new_task_id"], "success")["result"] == 1
    listed = z4j("schedules", "list", "--json", env=env)
    assert any(r["name"] == "cron:tick" for r in json.loads(listed.stdout))
