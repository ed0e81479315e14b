"""Must show: percentiles checked against numpy on the same runtimes (within
the stated bound), on both databases.

A real collector per database (rollups flushed every 0.3 s, retention every
0.5 s); a bare agent sends 2,000 tasks with known heavy-tailed runtimes and
queue waits into one past hour (name and queue only on the sent event: the
collector fills them from the task row). The API's p50/p95/p99 must be within
1 % (sketch.ALPHA) of numpy.percentile(method="lower") on the same values;
counts and failure rates exact; minute buckets add up to the hour and the day;
retention deletes old events, tasks and rollups and keeps new ones.
"""

from __future__ import annotations

import math
import secrets
import time

import numpy as np
import pytest

from tests.support.collector import mint_agent, mint_tokens, module_collector, wait_agent_connected, wait_until, z4j
from tests.support.dbs import DBS, on_one_db
from z4j_agents import protocol as p
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig
from z4j_collector.sketch import ALPHA

ENGINE = "rq"
N = 2000
NAMES = ("jobs.fast", "jobs.slow", "jobs.heavy")
QUEUES = ("default", "high")
HOUR = math.floor(time.time() / 3600) * 3600 - 3 * 3600  # a whole past hour
QS = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def collector(request, tmp_path_factory):
    return module_collector(request, tmp_path_factory, "trends", Z4J_TRENDS_FLUSH_S="0.3",
                            Z4J_RETENTION_PASS_S="0.5")


def _plan() -> list[dict]:
    rng = np.random.default_rng(6)
    tasks = []
    for i in range(N):
        name = NAMES[i % 3]
        runtime = float({"jobs.fast": rng.exponential(0.05), "jobs.slow": rng.lognormal(0.5, 0.8),
                         "jobs.heavy": (rng.pareto(1.2) + 1) * 0.02}[name])
        runtime = min(runtime, 240.0)
        sent = HOUR + 60 + i * (3000 / N) + float(rng.uniform(0, 1))
        started = sent + min(float(rng.lognormal(-2, 1.5)), 60.0)
        tasks.append({"id": f"tr-{i}", "name": name, "queue": QUEUES[i % 2], "sent": sent, "started": started,
                      "finished": started + runtime, "runtime": runtime,
                      "kind": "failed" if i % 7 == 0 else "succeeded",
                      # what the collector computes: started - sent on the same doubles
                      "wait": started - sent})
    return tasks


@pytest.fixture(scope="module")
def sent(collector):
    plan = _plan()
    creds = mint_agent(collector, "trends-agent")
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine=ENGINE)
    admin = collector.api(mint_tokens(collector, "admin")["admin"])
    wait_agent_connected(admin, "trends-agent")
    for t in plan:
        agent.task(t["id"], "sent", ts=t["sent"], name=t["name"], queue=t["queue"])
    assert agent.flush(60)
    for t in plan:
        agent.task(t["id"], "started", ts=t["started"], worker="w1")
        agent.task(t["id"], t["kind"], ts=t["finished"], runtime=t["runtime"])
    assert agent.flush(60)

    def all_rolled_up():
        body = admin.get("/api/v1/projects/default/trends", params={
            "bucket": "day", "group_by": "engine", "since": str(HOUR - 86400), "until": str(HOUR + 86400)}).json()
        total = sum(b["counts"]["success"] + b["counts"]["failure"] for g in body["groups"] for b in g["buckets"])
        return total == N

    wait_until(all_rolled_up, timeout=60, what="every finished task in the rollups")
    yield {"agent": agent, "plan": plan, "admin": admin}
    agent.stop()


def _near(got: float | None, values: list[float], q: float, what: str) -> None:
    truth = float(np.percentile(np.array(values), q * 100, method="lower"))
    assert got is not None, what
    assert abs(got - truth) <= ALPHA * truth + 1e-9, (what, got, truth, abs(got - truth) / truth)


def _trends(admin, **params) -> dict:
    response = admin.get("/api/v1/projects/default/trends", params={k: str(v) for k, v in params.items()})
    assert response.status_code == 200, response.text
    return response.json()


def test_hour_percentiles_match_numpy_and_counts_are_exact(sent):
    plan, admin = sent["plan"], sent["admin"]
    body = _trends(admin, bucket="hour", group_by="name", since=HOUR, until=HOUR + 3600)
    assert body["relative_error"] == ALPHA
    groups = {g["name"]: g["buckets"] for g in body["groups"]}
    assert set(groups) == set(NAMES)
    for name in NAMES:
        mine = [t for t in plan if t["name"] == name]
        (bucket,) = groups[name]
        assert bucket["start"] == HOUR
        counts = bucket["counts"]
        failed = sum(t["kind"] == "failed" for t in mine)
        assert counts["pending"] == counts["started"] == len(mine)
        assert counts["failure"] == failed and counts["success"] == len(mine) - failed
        assert bucket["failure_rate"] == pytest.approx(failed / len(mine), abs=1e-12)
        assert bucket["runtime"]["count"] == len(mine) and bucket["queue_wait"]["count"] == len(mine)
        for label, q in QS.items():
            _near(bucket["runtime"][label], [t["runtime"] for t in mine], q, f"{name} runtime {label}")
            _near(bucket["queue_wait"][label], [t["wait"] for t in mine], q, f"{name} wait {label}")


def test_other_groupings_and_filters(sent):
    plan, admin = sent["plan"], sent["admin"]
    body = _trends(admin, bucket="hour", group_by="queue", since=HOUR, until=HOUR + 3600)
    for group in body["groups"]:
        mine = [t for t in plan if t["queue"] == group["queue"]]
        (bucket,) = group["buckets"]
        assert bucket["counts"]["success"] + bucket["counts"]["failure"] == len(mine)
        _near(bucket["runtime"]["p99"], [t["runtime"] for t in mine], 0.99, group["queue"])
    body = _trends(admin, bucket="hour", group_by="engine", since=HOUR, until=HOUR + 3600,
                   name="jobs.heavy", queue="high")
    (group,) = body["groups"]
    mine = [t for t in plan if t["name"] == "jobs.heavy" and t["queue"] == "high"]
    assert group["engine"] == ENGINE and group["buckets"][0]["counts"]["pending"] == len(mine)
    _near(group["buckets"][0]["runtime"]["p95"], [t["runtime"] for t in mine], 0.95, "filtered")
    assert _trends(admin, bucket="hour", since=HOUR, until=HOUR + 3600, engine="celery")["groups"] == []


def test_minutes_roll_up_to_hours_and_days(sent):
    plan, admin = sent["plan"], sent["admin"]
    minutes = _trends(admin, bucket="minute", group_by="engine", since=HOUR, until=HOUR + 3600)
    (group,) = minutes["groups"]
    assert len(group["buckets"]) > 45
    finished_in: dict[float, list[dict]] = {}
    for t in plan:
        finished_in.setdefault(math.floor(t["finished"] / 60) * 60, []).append(t)
    for bucket in group["buckets"]:
        mine = finished_in.get(bucket["start"], [])
        assert bucket["counts"]["success"] + bucket["counts"]["failure"] == len(mine), bucket["start"]
        if mine:
            _near(bucket["runtime"]["p50"], [t["runtime"] for t in mine], 0.5, f"minute {bucket['start']}")
    total = {k: sum(b["counts"][k] for b in group["buckets"]) for k in ("pending", "started", "success", "failure")}
    (hour,) = _trends(admin, bucket="hour", group_by="engine", since=HOUR, until=HOUR + 3600)["groups"][0]["buckets"]
    assert {k: hour["counts"][k] for k in total} == total == {
        "pending": N, "started": N, "success": sum(t["kind"] == "succeeded" for t in plan),
        "failure": sum(t["kind"] == "failed" for t in plan)}
    _near(hour["runtime"]["p99"], [t["runtime"] for t in plan], 0.99, "hour, all")
    day_start = math.floor(HOUR / 86400) * 86400
    days = _trends(admin, bucket="day", group_by="engine", since=day_start, until=day_start + 86400)
    (day,) = days["groups"][0]["buckets"]
    if day_start <= HOUR and HOUR + 3600 <= day_start + 86400:  # the plan's hour is inside one day
        assert day["counts"]["success"] + day["counts"]["failure"] == N
        _near(day["runtime"]["p95"], [t["runtime"] for t in plan], 0.95, "day")


def test_bad_input_is_refused_with_a_reason(sent):
    admin = sent["admin"]
    for params, needle in (({"bucket": "week"}, "bucket must be"), ({"group_by": "worker"}, "group_by must be"),
                           ({"since": "yesterday"}, "since must be"), ({"since": "1h", "until": "2h"}, "before"),
                           ({"bucket": "minute", "since": "30d"}, "at most")):
        response = admin.get("/api/v1/projects/default/trends", params=params)
        assert response.status_code == 400 and needle in response.json()["message"], (params, response.text)
    for body in ({"events_days": 0}, {"tasks_days": "7"}, {"rollups": 3}, {}, {"events_days": True}):
        response = admin.put("/api/v1/projects/default/retention", json=body)
        assert response.status_code == 400, (body, response.text)
    assert admin.get("/api/v1/projects/default/retention").json()["set"] == {
        "events_days": None, "tasks_days": None, "rollups_days": None}


@on_one_db("collector")  # a client of the API tested above on both
def test_cli_prints_trends(collector, sent):
    env = {"Z4J_URL": collector.url, "Z4J_API_TOKEN": mint_tokens(collector, "viewer")["viewer"], "COLUMNS": "200"}
    out = z4j("trends", "--bucket", "hour", "--by", "name", "--since", str(HOUR), "--until", str(HOUR + 3600),
              "--json", env=env).stdout
    import json

    groups = {g["name"]: g for g in json.loads(out)["groups"]}
    assert set(groups) == set(NAMES)
    table = z4j("trends", "--bucket", "hour", "--by", "name", "--since", str(HOUR), "--until", str(HOUR + 3600),
                env=env).stdout
    assert "jobs.heavy" in table and "p99" in table


def test_retention_deletes_old_rows_and_keeps_new(collector, sent):
    agent, admin = sent["agent"], sent["admin"]
    old = time.time() - 5 * 86400
    for i in range(30):  # events made 5 days ago carry ids of that time (protocol.new_id)
        for kind, ts, fields in (("sent", old + i, {"name": "jobs.old", "queue": "default"}),
                                 ("succeeded", old + i + 1, {"runtime": 1.0})):
            agent.runtime.emit(p.TaskEvent(id=f"{int(ts * 1000):012x}{secrets.randbits(80):020x}",
                                           task_id=f"old-{i}", engine=ENGINE, kind=kind, ts=ts, **fields))
    assert agent.flush(60)
    wait_until(lambda: _trends(admin, bucket="day", group_by="name", since=old - 86400, until=old + 86400,
                               name="jobs.old")["groups"], timeout=30, what="old rollups")
    assert admin.get("/api/v1/projects/default/tasks/old-0").status_code == 200

    response = admin.put("/api/v1/projects/default/retention",
                         json={"events_days": 2, "tasks_days": 2, "rollups_days": 3})
    assert response.status_code == 200, response.text
    assert response.json()["events_days"] == 2 and response.json()["rollups_days"] == 3
    wait_until(lambda: admin.get("/api/v1/projects/default/tasks/old-0").status_code == 404, timeout=30,
               what="old tasks deleted")
    wait_until(lambda: not _trends(admin, bucket="day", group_by="name", since=old - 86400, until=old + 86400,
                                   name="jobs.old")["groups"], timeout=30, what="old rollups deleted")
    # new ones stay: the plan's tasks, their events and rollups
    task = admin.get("/api/v1/projects/default/tasks/tr-1")
    assert task.status_code == 200 and len(task.json()["events"]) == 3, task.text

    def old_events_gone(store):
        async def count():
            rows = await store.fetchall("SELECT COUNT(*) FROM task_events WHERE task_id LIKE 'old-%'")
            return rows[0][0]
        return count()

    from tests.support.collector import with_store
    wait_until(lambda: with_store(collector.db_url, old_events_gone) == 0, timeout=30, what="old events deleted")
    assert _trends(admin, bucket="hour", group_by="name", since=HOUR, until=HOUR + 3600)["groups"]
    rows = admin.get("/api/v1/projects/default/audit", params={"action": "retention.set"}).json()["entries"]
    assert len(rows) == 1 and rows[0]["detail"]["after"] == {"events_days": 2, "tasks_days": 2, "rollups_days": 3}


def test_a_flush_of_many_events_lets_the_event_loop_run_between_slices():
    """At full ingest rate a flush aggregates 150,000 events; in one go that
    held the loop (and ingest's next commit) for half a second. Another
    coroutine must get its turns while a flush aggregates, also when the
    events are spread over many projects, none with a slice of its own."""
    import asyncio

    from z4j_collector.services.trends import AGGREGATE_SLICE, Trends

    n = AGGREGATE_SLICE * 5
    events = [p.TaskEvent(id=f"e{i}", task_id=f"t{i}", engine=ENGINE, kind="succeeded", ts=HOUR + i,
                          name="jobs.fast", queue="default", runtime=0.01) for i in range(n)]

    async def main() -> tuple[int, dict]:
        turns = 0
        done = False

        async def other() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(other())
        await asyncio.sleep(0)
        before = turns
        # Every event carries name, queue and runtime: no task row is read.
        spread = [(k + 1, events[k::10]) for k in range(10)]
        rows = await Trends(store=None)._aggregate(spread)  # type: ignore[arg-type]
        done = True
        await ticker
        return turns - before, rows

    turns, rows = asyncio.run(main())
    assert turns >= 4, turns
    minutes = [counts for (_, size, *_), (counts, _, _) in rows.items() if size == "minute"]
    assert sum(sum(c) for c in minutes) == n
