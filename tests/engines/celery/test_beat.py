"""Must show, with real `celery beat` and `celery worker` processes on a real
Redis and a real collector: a schedule created in z4j fires on time and its
tasks run; entries created directly in RedBeat (and in beat_schedule) appear
in z4j; disable stops the fires and enable resumes them; trigger-now runs the
task at once; edits and deletes reach RedBeat's own keys; fires are recorded
once each; the same through z4j's file scheduler (Z4JScheduler).

The beat agent starts zero-code (the `celery.commands` entry point) and
declares only the schedule actions. One collector (SQLite: the schedule
tables on both databases are covered by tests/collector/test_schedules.py)
and one worker serve the module.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.engines.celery.conftest import CELERY, Worker, celery_env
from tests.support.collector import mint_agent, mint_tokens, running, wait_agent_connected, wait_until
from tests.support.engine import WorkerProcess

pytestmark = pytest.mark.engine("celery")

SCHEDULES = "/api/v1/projects/default/schedules"
BEAT_LINE = "z4j beat bootstrap: agent runtime started"


class Beat(WorkerProcess):
    """One `celery beat` process group (log, stop and kill as a worker's)."""

    ready = BEAT_LINE

    def __init__(self, env: dict[str, str], log_dir: Path, scheduler: str) -> None:
        self.name = f"beat{uuid.uuid4().hex[:6]}"
        self.schedule_file = log_dir / f"{self.name}-schedule"
        cmd = [*CELERY[:-1], "tests.engines.celery.beatproj", "beat", "-l", "info", "-S", scheduler,
               "-s", str(self.schedule_file)]
        super().__init__(cmd, env, log_dir / f"celery-{self.name}.log", "celery beat")

    def start(self, ready_timeout: float = 60.0) -> Beat:
        return super().start(timeout=ready_timeout)


@pytest.fixture(scope="module")
def world(redis_server, tmp_path_factory):
    """A collector syncing schedules every 0.5 s, admin and operator clients,
    one worker with its agent, the credentials for beat agents."""
    redis_server.flushall()
    redis_url = redis_server.url
    tmp = tmp_path_factory.mktemp("beat")
    with running(f"sqlite:///{tmp}/z4j.db", tmp, Z4J_SCHEDULE_SYNC_S=0.5) as collector:
        tokens = mint_tokens(collector, "admin", "operator")
        admin = httpx.Client(base_url=collector.url, headers={"Authorization": f"Bearer {tokens['admin']}"},
                             timeout=30)
        operator = httpx.Client(base_url=collector.url, headers={"Authorization": f"Bearer {tokens['operator']}"},
                                timeout=30)
        worker_env = celery_env(redis_url, collector.agent_env(mint_agent(collector, "w1")))
        worker = Worker(worker_env, tmp, pool="threads", concurrency=4, name="beatw").start()
        try:
            yield {"collector": collector, "admin": admin, "operator": operator, "redis_url": redis_url,
                   "tmp": tmp, "client": results(redis_url)}
        finally:
            worker.stop()


def beat_env(world, name: str) -> dict[str, str]:
    creds = mint_agent(world["collector"], name)
    return celery_env(world["redis_url"], world["collector"].agent_env(creds))


def row(api, name: str) -> dict | None:
    for r in api.get(SCHEDULES).raise_for_status().json():
        if r["name"] == name:
            return r
    return None


def fires(api, schedule_id: int, manual: bool | None = None) -> list[dict]:
    found = api.get(f"{SCHEDULES}/{schedule_id}/fires").raise_for_status().json()
    return [f for f in found if manual is None or f["manual"] is manual]


def results(redis_url: str):
    """A Celery client that reads the fired tasks' results."""
    from celery import Celery

    return Celery("results", broker=redis_url, backend=redis_url)


def redbeat_app(redis_url: str):
    from celery import Celery

    app = Celery("probe", broker=redis_url)
    app.conf.update(redbeat_redis_url=redis_url, redbeat_key_prefix="z4jtest:")
    from redbeat.schedulers import ensure_conf

    ensure_conf(app)
    return app


def test_redbeat_schedules_end_to_end(world):
    from celery.schedules import schedule
    from redbeat import RedBeatSchedulerEntry

    admin, operator, client = world["admin"], world["operator"], world["client"]
    beat = Beat(beat_env(world, "beat-redbeat"), world["tmp"], "redbeat.RedBeatScheduler").start()
    try:
        wait_agent_connected(admin, "beat-redbeat")
        agents = {a["name"]: a for a in admin.get("/api/v1/projects/default/agents").json()}
        assert agents["beat-redbeat"]["engines"] == ["celery"]

        # beat_schedule (code) is listed, read-only
        code = wait_until(lambda: row(admin, "code-add"), 30, "the code entry")
        assert code["source"] == "code" and code["scheduler"] == "redbeat" and code["args"] == [1, 2]

        # created in z4j: it reaches RedBeat and fires every 2 s; its tasks run
        created = admin.post(SCHEDULES, json={"name": "every-2s", "task": "proj.add",
                                              "schedule": {"kind": "interval", "every": 2}, "args": [2, 3]})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        assert created.json()["source"] == "z4j" and created.json()["scheduler"] == "redbeat"
        probe = redbeat_app(world["redis_url"])
        stored = RedBeatSchedulerEntry.from_key(RedBeatSchedulerEntry.generate_key(probe, "every-2s"), app=probe)
        assert stored.task == "proj.add" and stored.args == [2, 3] and stored.schedule.run_every.total_seconds() == 2
        auto = wait_until(lambda: (f := fires(admin, sid, manual=False)) and len(f) >= 3 and f, 40, "three fires")
        stamps = sorted(f["ts"] for f in auto)
        assert all(b - a >= 1.5 for a, b in zip(stamps, stamps[1:])), stamps  # every 2 s, not every tick
        assert len({f["id"] for f in auto}) == len(auto)
        for f in auto[:2]:
            assert client.AsyncResult(f["task_id"]).get(timeout=30) == 5
        wait_until(lambda: (r := row(admin, "every-2s")) and r["total_run_count"] >= 3, 20, "the run count")

        # created directly in RedBeat: appears in z4j as a store entry
        RedBeatSchedulerEntry("direct", "proj.add", schedule(timedelta(hours=1)), args=[1, 1], app=probe).save()
        direct = wait_until(lambda: row(admin, "direct"), 20, "the entry made in RedBeat")
        assert direct["source"] == "store" and direct["schedule"] == {"kind": "interval", "every": 3600.0}

        # disable: no more fires; enable: they resume
        disabled = operator.post(f"{SCHEDULES}/{sid}/disable")
        assert disabled.status_code == 200 and disabled.json()["enabled"] is False
        assert RedBeatSchedulerEntry.from_key(stored.key, app=probe).enabled is False
        time.sleep(2)  # a fire sent just before the change reaches the history
        before = len(fires(admin, sid))
        time.sleep(6)  # three intervals
        assert len(fires(admin, sid)) == before
        assert operator.post(f"{SCHEDULES}/{sid}/enable").json()["enabled"] is True
        wait_until(lambda: len(fires(admin, sid)) > before, 20, "fires after enable")

        # trigger-now on an hourly entry: the task runs now; a manual fire is recorded
        fired = operator.post(f"{SCHEDULES}/{direct['id']}/trigger")
        assert fired.status_code == 202, fired.text
        assert client.AsyncResult(fired.json()["task_id"]).get(timeout=30) == 2
        assert [f["task_id"] for f in fires(admin, direct["id"], manual=True)] == [fired.json()["task_id"]]

        # edits and deletes reach RedBeat's keys; an entry deleted in RedBeat leaves z4j
        edited = admin.patch(f"{SCHEDULES}/{direct['id']}", json={"args": [5, 5], "queue": "celery"})
        assert edited.status_code == 200 and edited.json()["args"] == [5, 5], edited.text
        again = RedBeatSchedulerEntry.from_key(RedBeatSchedulerEntry.generate_key(probe, "direct"), app=probe)
        assert again.args == [5, 5] and again.options.get("queue") == "celery"
        assert admin.delete(f"{SCHEDULES}/{direct['id']}").status_code == 204
        with pytest.raises(KeyError):
            RedBeatSchedulerEntry.from_key(RedBeatSchedulerEntry.generate_key(probe, "direct"), app=probe)
        RedBeatSchedulerEntry("every-2s", app=probe).delete()
        wait_until(lambda: row(admin, "every-2s") is None, 20, "the entry deleted in RedBeat to leave z4j")

        # the fired tasks are tasks in z4j too (the worker's agent), with the schedule's name on the sent event
        task = wait_until(lambda: (r := admin.get(f"/api/v1/projects/default/tasks/{auto[0]['task_id']}",
                                                   params={"engine": "celery"})).status_code == 200
                          and r.json()["state"] == "success" and r.json(), 30, "the fired task in z4j")
        assert task["name"] == "proj.add"

        refused = admin.patch(f"{SCHEDULES}/{code['id']}", json={"args": [9, 9]})
        assert refused.status_code == 409 and refused.json()["code"] == "read_only"
    finally:
        beat.stop()
    assert BEAT_LINE in beat.log() and "z4j worker bootstrap" not in beat.log()


def test_file_scheduler_schedules_end_to_end(world):
    admin, operator, client = world["admin"], world["operator"], world["client"]
    beat = Beat(beat_env(world, "beat-file"), world["tmp"], "z4j_agents.celery.beat.Z4JScheduler").start()
    try:
        wait_agent_connected(admin, "beat-file")
        created = admin.post(SCHEDULES, json={"name": "file-2s", "task": "proj.add",
                                              "schedule": {"kind": "interval", "every": 2}, "args": [20, 1]})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        assert created.json()["scheduler"] == "file"
        assert Path(f"{beat.schedule_file}.z4j.json").exists()
        auto = wait_until(lambda: (f := fires(admin, sid, manual=False)) and len(f) >= 2 and f, 40, "two fires")
        assert client.AsyncResult(auto[-1]["task_id"]).get(timeout=30) == 21

        assert operator.post(f"{SCHEDULES}/{sid}/disable").json()["enabled"] is False
        time.sleep(3)
        before = len(fires(admin, sid))
        time.sleep(5)
        assert len(fires(admin, sid)) == before

        fired = operator.post(f"{SCHEDULES}/{sid}/trigger")
        assert client.AsyncResult(fired.json()["task_id"]).get(timeout=30) == 21
        assert admin.delete(f"{SCHEDULES}/{sid}").status_code == 204
        # beat drops the entry from its running schedule at its next tick; the
        # syncs (every 0.5 s) before that tick must not bring it back
        for _ in range(30):
            assert row(admin, "file-2s") is None
            time.sleep(0.1)
    finally:
        beat.stop()
    # the shelve file kept beat's own state; z4j's entries live in the JSON file beside it
    assert "file-2s" not in Path(f"{beat.schedule_file}.z4j.json").read_text()
