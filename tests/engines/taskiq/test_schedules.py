"""Must show, with a real `taskiq scheduler` (its agent manages the scheduler's sources) and a
real `taskiq worker` on a real Redis and a real collector: a label schedule (code) is listed
read-only, fires, and can be triggered now; a schedule created in z4j lands in the
ListRedisScheduleSource, fires on time and its tasks run; an edit is a delete + add of the same
schedule id (one audited action); disable is refused with the reason; delete removes it.

One collector (SQLite: the schedule tables on both databases are covered by
tests/collector/test_schedules.py) for the module.
"""

from __future__ import annotations

import pickle
import time

import httpx
import pytest
import redis

from tests.engines.taskiq.conftest import SCHEDULER_LINE, scheduler, taskiq_env, worker
from tests.support.collector import mint_agent, mint_tokens, running, wait_agent_connected, wait_until
from tests.support.engine import P

pytestmark = pytest.mark.engine("taskiq")

SCHEDULES = f"{P}/schedules"


def row(api, name: str) -> dict | None:
    return next((r for r in api.get(SCHEDULES).raise_for_status().json() if r["name"] == name), None)


def fires(api, schedule_id: int, manual: bool | None = None) -> list[dict]:
    found = api.get(f"{SCHEDULES}/{schedule_id}/fires").raise_for_status().json()
    return [f for f in found if manual is None or f["manual"] is manual]


def test_schedule_sources_end_to_end(redis_server, tmp_path):
    redis_server.flushall()
    r = redis.Redis.from_url(redis_server.url)
    with running(f"sqlite:///{tmp_path}/z4j.db", tmp_path, Z4J_SCHEDULE_SYNC_S=0.5) as collector:
        tokens = mint_tokens(collector, "admin", "operator")
        admin = httpx.Client(base_url=collector.url, headers={"Authorization": f"Bearer {tokens['admin']}"}, timeout=30)
        operator = httpx.Client(base_url=collector.url, headers={"Authorization": f"Bearer {tokens['operator']}"},
                                timeout=30)
        work = worker(taskiq_env(redis_server.url, collector.agent_env(mint_agent(collector, "tq"))), tmp_path,
                      workers=1).start()
        sched = scheduler(taskiq_env(redis_server.url, collector.agent_env(mint_agent(collector, "sched"))), tmp_path)
        try:
            sched.start()
            assert SCHEDULER_LINE in sched.log()
            wait_agent_connected(admin, "sched")

            # the label schedule: listed as code, fired once at start (interval, first run now), triggerable
            code = wait_until(lambda: row(admin, "code-mark"), 30, "the label schedule")
            assert code["source"] == "code" and code["engine"] == "taskiq" and code["scheduler"] == "taskiq"
            assert code["task"] == "proj.mark" and code["args"] == ["code"]
            assert code["schedule"] == {"kind": "interval", "every": 3600.0}
            wait_until(lambda: r.llen("marks:code") == 1, 30, "the label schedule's first run")
            auto = wait_until(lambda: fires(admin, code["id"], manual=False), 20, "its fire recorded")
            assert wait_until(lambda: (t := admin.get(f"{P}/tasks/{auto[0]['task_id']}").json()).get("state")
                              == "success" and t, 30, "the fired task in z4j")["name"] == "proj.mark"
            refused = admin.patch(f"{SCHEDULES}/{code['id']}", json={"args": ["x"]})
            assert refused.status_code == 409 and refused.json()["code"] == "read_only"
            fired = operator.post(f"{SCHEDULES}/{code['id']}/trigger")
            assert fired.status_code == 202, fired.text
            wait_until(lambda: r.llen("marks:code") == 2, 30, "the triggered run")
            manual = fires(admin, code["id"], manual=True)
            assert [f["task_id"] for f in manual] == [fired.json()["task_id"]]
            assert wait_until(lambda: row(admin, "code-mark")["next_run_at"], 10, "next run") > time.time() + 3000

            # created in z4j: stored in the ListRedisScheduleSource, fired every 2 s, tasks run
            created = admin.post(SCHEDULES, json={"engine": "taskiq", "name": "every-2s", "task": "proj.mark",
                                                  "schedule": {"kind": "interval", "every": 2}, "args": ["dyn"]})
            assert created.status_code == 201, created.text
            sid = created.json()["id"]
            assert created.json()["source"] == "z4j" and r.exists("z4jtest:data:every-2s")
            auto = wait_until(lambda: (f := fires(admin, sid, manual=False)) and len(f) >= 3 and f, 40, "three fires")
            stamps = sorted(f["ts"] for f in auto)
            assert all(b - a >= 1.5 for a, b in zip(stamps, stamps[1:])), stamps
            wait_until(lambda: r.llen("marks:dyn") >= 3, 20, "the fired tasks ran")
            listed = wait_until(lambda: (x := row(admin, "every-2s")) and x["total_run_count"] >= 3 and x, 20,
                                "run count")
            assert listed["last_run_at"] and listed["next_run_at"] >= listed["last_run_at"]

            # edit: delete + add of the same schedule id, one audited action
            edited = admin.patch(f"{SCHEDULES}/{sid}", json={"args": ["dyn2"]})
            assert edited.status_code == 200 and edited.json()["args"] == ["dyn2"], edited.text
            stored = pickle.loads(r.get("z4jtest:data:every-2s"))  # the source's own (pickle) serializer
            assert stored["args"] == ["dyn2"] and stored["interval"] == 2
            assert r.lrange("z4jtest:interval", 0, -1) == [b"every-2s"]
            wait_until(lambda: r.llen("marks:dyn2") >= 1, 30, "the edited schedule fires")
            audit = admin.get(f"{P}/audit", params={"action": "schedule.*"}).json()["entries"]
            edits = [e for e in audit if e["action"] == "schedule.edit" and e["target"] == "schedule:every-2s"]
            assert len(edits) == 1 and edits[0]["detail"]["changed"] == ["args"]

            # what the sources cannot do is refused with the reason; bad specs too
            off = operator.post(f"{SCHEDULES}/{sid}/disable")
            assert off.status_code == 409 and "no enabled flag" in off.json()["message"]
            half = admin.post(SCHEDULES, json={"engine": "taskiq", "name": "half", "task": "proj.mark",
                                               "schedule": {"kind": "interval", "every": 1.5}, "args": ["h"]})
            assert half.status_code == 409 and "whole seconds" in half.json()["message"]
            assert row(admin, "half") is None and not r.exists("z4jtest:data:half")
            cron = admin.post(SCHEDULES, json={"engine": "taskiq", "name": "cron", "task": "proj.mark",
                                               "schedule": {"kind": "crontab", "expr": "*/5 * * * *"}, "args": ["c"]})
            assert cron.status_code == 201 and cron.json()["next_run_at"] % 300 == 0, cron.text

            # delete: gone from the source, no more fires
            assert admin.delete(f"{SCHEDULES}/{sid}").status_code == 204
            assert not r.exists("z4jtest:data:every-2s") and row(admin, "every-2s") is None
            time.sleep(2)
            before = r.llen("marks:dyn2")
            time.sleep(4)
            assert r.llen("marks:dyn2") == before
        finally:
            sched.stop()
            work.stop()
    assert "z4j worker bootstrap" not in sched.log()
