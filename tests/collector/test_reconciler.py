"""Must show: the reconciler settles stuck tasks, fairly and bounded.

A real collector (both databases) with the timed loop out of the way
(Z4J_RECONCILE_INTERVAL_S=3600): passes run through POST …/reconciler/run.
Stuck tasks are stored straight into the database (started on a worker last
heard of long ago); the engine's store is a bare agent answering
``<engine>.probe`` through the collector, so the collector side runs for real.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from tests.support.collector import (
    mint_agent, mint_tokens, module_collector, wait_agent_connected, with_store, z4j,
)
from z4j_agents import protocol as p
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig
from z4j_collector.store.base import IngestItem

N = 10_000
BATCH = 500
FAILING = 1_500
BACKOFF = 3600.0
DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def collector(request, tmp_path_factory):
    return module_collector(request, tmp_path_factory, "reconciler", Z4J_RECONCILE_INTERVAL_S=3600,
                            Z4J_RECONCILE_BACKOFF_S=BACKOFF, Z4J_RECONCILE_BACKOFF_MAX_S=4 * BACKOFF)


@pytest.fixture(scope="module")
def root(collector):
    return collector.api(collector.first_superuser())


def project(collector, root, slug: str) -> dict:
    assert root.post("/api/v1/projects", json={"slug": slug, "name": slug}).status_code == 201
    tokens = mint_tokens(collector, "viewer", "operator", "admin", project=slug)
    apis = {role: collector.api(token) for role, token in tokens.items()}
    for api in apis.values():
        api.slug = slug
    return apis


def probe_agent(collector, apis, slug: str, engine: str, handler) -> Agent:
    creds = mint_agent(collector, f"{engine}-prober", project=slug)
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine=engine, start=False)
    agent.on_command(f"{engine}.probe", handler)
    agent.runtime.start()
    wait_agent_connected(apis["admin"], f"{engine}-prober", project=slug)
    return agent


def seed(collector, slug: str, engine: str, tasks: list[tuple[str, float, str]], beats: dict[str, float]) -> None:
    """Tasks (id, started at, worker) received and started; workers last heard of at ``beats``."""
    creds = mint_agent(collector, f"{engine}-seed-{len(tasks)}-{time.monotonic_ns()}", project=slug)

    async def fn(store):
        pid = await store.project_id(slug)
        events: list = []
        for task_id, ts, worker in tasks:
            events.append(p.TaskEvent(id=p.new_id(), task_id=task_id, engine=engine, kind="received", ts=ts - 1,
                                      name="jobs.work", worker=worker, queue="q"))
            events.append(p.TaskEvent(id=p.new_id(), task_id=task_id, engine=engine, kind="started", ts=ts,
                                      worker=worker))
        events += [p.WorkerEvent(id=p.new_id(), worker=w, engine=engine, kind="heartbeat", ts=ts)
                   for w, ts in beats.items()]
        for start in range(0, len(events), 4000):
            await store.ingest([IngestItem(pid, creds["agent_id"], events[start:start + 4000])])

    with_store(collector.db_url, fn)


def sql(collector, query: str, params=()) -> list[tuple]:
    async def fn(store):
        return await store.fetchall(query, params)
    return with_store(collector.db_url, fn)


def run(api) -> dict:
    response = api.post("/api/v1/projects/" + api.slug + "/reconciler/run")
    assert response.status_code == 200, response.text
    return response.json()


def task(api, task_id: str) -> dict:
    return api.get(f"/api/v1/projects/{api.slug}/tasks/{task_id}").raise_for_status().json()


def test_ten_thousand_stuck_tasks_all_settled_none_starved(collector, root):
    slug, engine = "bulk", "bulkq"
    apis = project(collector, root, slug)
    now = time.time()
    ids = [f"t{i:05d}" for i in range(N)]
    # oldest first: the failing ones are the oldest, where "oldest first" would pick them every pass
    seed(collector, slug, engine, [(tid, now - 900 + i * 0.01, "w-dead") for i, tid in enumerate(ids)],
         {"w-dead": now - 900})
    failing = set(ids[:FAILING])
    probed: list[str] = []
    lock = threading.Lock()

    def handler(args):
        out = {}
        with lock:
            probed.extend(args["task_ids"])
        for tid in args["task_ids"]:
            i = int(tid[1:])
            if tid in failing:
                out[tid] = {"error": "backend unreachable"}
            elif i % 3 == 0:
                out[tid] = {"state": "success", "engine_state": "SUCCESS", "result": {"i": i, "password": "hunter2"},
                            "date_done": now - 60}
            elif i % 3 == 1:
                out[tid] = {"state": "unknown", "engine_state": "PENDING"}
            else:
                out[tid] = {"state": "failure", "engine_state": "FAILURE", "exception": "KeyError: 'x'",
                            "traceback": "Traceback (most recent call last):\nKeyError: 'x'"}
        return {"tasks": out}

    agent = probe_agent(collector, apis, slug, engine, handler)
    try:
        # settings per project: bad input is refused and changes nothing; then the batch size
        bad = apis["admin"].put(f"/api/v1/projects/{slug}/reconciler", json={"reconcile_batch": 0})
        assert bad.status_code == 400 and "reconcile_batch must be" in bad.json()["message"]
        assert apis["operator"].put(f"/api/v1/projects/{slug}/reconciler", json={"reconcile_batch": BATCH}
                                    ).status_code == 403
        shown = apis["admin"].put(f"/api/v1/projects/{slug}/reconciler", json={"reconcile_batch": BATCH}).json()
        assert shown["settings"]["reconcile_batch"] == BATCH and shown["stuck"] == N
        assert apis["viewer"].get(f"/api/v1/projects/{slug}/reconciler").json()["project"]["reconcile_batch"] == BATCH

        passes = [run(apis["operator"]) for _ in range(N // BATCH)]
        assert all(s["looked"] == BATCH and not s["errors"] for s in passes), passes
        # every task was looked at exactly once in N/BATCH passes: none starved behind the failing oldest
        assert len(probed) == N and set(probed) == set(ids)
        assert sum(s["later"] for s in passes) == FAILING
        settled = sum(s["settled"] for s in passes)
        lost = sum(s["lost"] for s in passes)
        assert settled + lost == N - FAILING
        assert lost == sum(1 for i in range(FAILING, N) if i % 3 == 1)

        # the failing ones are backed off: the next pass finds nothing due
        assert run(apis["operator"])["looked"] == 0
        rows = sql(collector, "SELECT state, COUNT(*), MIN(reconcile_attempts), MAX(reconcile_attempts), "
                              "MIN(reconcile_after) FROM tasks t JOIN projects p ON p.id = t.project_id "
                              "WHERE p.slug = ? GROUP BY state ORDER BY state", (slug,))
        by_state = {r[0]: r for r in rows}
        assert {s: r[1] for s, r in by_state.items()} == {
            "started": FAILING, "lost": lost, "success": sum(1 for i in range(FAILING, N) if i % 3 == 0),
            "failure": sum(1 for i in range(FAILING, N) if i % 3 == 2)}
        assert by_state["started"][2:4] == (1, 1) and by_state["started"][4] >= now + BACKOFF - 5

        # when they are due again and still fail, the wait doubles
        sql_update(collector, "UPDATE tasks SET reconcile_after = 1 WHERE state = 'started' AND engine = ?", (engine,))
        again = [run(apis["operator"]) for _ in range(FAILING // BATCH)]
        assert [s["later"] for s in again] == [BATCH] * (FAILING // BATCH)
        (attempts, after), = sql(collector, "SELECT MIN(reconcile_attempts), MIN(reconcile_after) FROM tasks "
                                            "WHERE state = 'started' AND engine = ?", (engine,))
        assert attempts == 2 and after >= time.time() + 2 * BACKOFF - 600

        # what each closed task looks like, and its timeline
        viewer = apis["viewer"]
        ok_task, lost_task, failed_task = task(viewer, "t01503"), task(viewer, "t01501"), task(viewer, "t01502")
        assert (ok_task["state"], ok_task["engine_state"]) == ("success", "SUCCESS")
        assert ok_task["result"]["i"] == 1503 and ok_task["result"]["password"] != "hunter2"  # redacted again
        assert (lost_task["state"], lost_task["engine_state"]) == ("lost", "LOST") and lost_task["finished_at"]
        assert (failed_task["state"], failed_task["exception"]) == ("failure", "KeyError: 'x'")
        assert "KeyError" in failed_task["traceback"]
        assert [e["kind"] for e in lost_task["events"]] == ["received", "started", "lost"]

        # one audit row per change, old -> new state, in the project's chain
        audit = sql(collector, "SELECT outcome, COUNT(*) FROM audit_log a JOIN projects p ON p.id = a.project_id "
                               "WHERE p.slug = ? AND action = 'task.reconciled' AND actor = 'system' "
                               "GROUP BY outcome", (slug,))
        assert dict(audit) == {"lost": lost, "settled": settled}
        (detail,), = sql(collector, "SELECT detail FROM audit_log WHERE action = 'task.reconciled' AND target = ?",
                         ("task:t01501",))
        assert '"old":"started"' in detail and '"new":"lost"' in detail and '"worker":"w-dead"' in detail

        # counted for Prometheus
        from prometheus_client.parser import text_string_to_metric_families

        scraped = {(s.labels.get("project"), s.labels.get("outcome")): s.value
                   for f in text_string_to_metric_families(viewer.get("/metrics").text)
                   for s in f.samples if s.name == "z4j_reconciler_tasks_total"}
        assert scraped[(slug, "lost")] == lost and scraped[(slug, "settled")] == settled
        assert scraped[(slug, "later")] == 2 * FAILING

        # lost is a guess: a real terminal event that arrives later wins
        seed_event(collector, slug, engine, "t01501", "succeeded")
        assert task(viewer, "t01501")["state"] == "success"
    finally:
        agent.stop()


def sql_update(collector, query: str, params=()) -> int:
    async def fn(store):
        return await store.execute(query, params)
    return with_store(collector.db_url, fn)


def seed_event(collector, slug: str, engine: str, task_id: str, kind: str) -> None:
    creds = mint_agent(collector, f"late-{task_id}", project=slug)

    async def fn(store):
        pid = await store.project_id(slug)
        await store.ingest([IngestItem(pid, creds["agent_id"], [p.TaskEvent(
            id=p.new_id(), task_id=task_id, engine=engine, kind=kind, ts=time.time() - 3600, engine_state="SUCCESS")])])

    with_store(collector.db_url, fn)


def test_no_agent_marks_for_later_then_lost_after_the_grace(collector, root):
    slug, engine = "lonely", "lonelyq"
    apis = project(collector, root, slug)
    now = time.time()
    seed(collector, slug, engine, [("gone-1", now - 600, "w-gone"), ("gone-2", now - 590, "w-gone"),
                                   ("ancient", now - 7200, "w-ancient"), ("long", now - 7300, "w-live"),
                                   ("fresh", now - 5, "w-live")],
         {"w-gone": now - 600, "w-ancient": now - 7200, "w-live": now})
    operator = apis["operator"]

    # nobody can probe: the tasks are marked for a later look; only the one gone for over an hour is lost
    first = run(operator)
    assert (first["looked"], first["no_agent"], first["lost"], first["later"]) == (4, 4, 1, 3), first
    assert task(apis["viewer"], "ancient")["state"] == "lost"
    assert {t: task(apis["viewer"], t)["state"] for t in ("gone-1", "gone-2", "long", "fresh")} == dict.fromkeys(
        ("gone-1", "gone-2", "long", "fresh"), "started")
    (reason,), = sql(collector, "SELECT detail FROM audit_log WHERE target = 'task:ancient'")
    assert "no agent could probe" in reason
    assert run(operator)["looked"] == 0  # marked: not looked at again before their time

    # an agent comes; their time comes: the engine's store knows nothing of the gone worker's
    # tasks (lost), and the long task on a live worker is still running there (left open)
    asked: list[str] = []

    def handler(args):
        asked.extend(args["task_ids"])
        return {"tasks": {tid: {"state": "started", "engine_state": "STARTED"} if tid == "long"
                          else {"state": "unknown", "engine_state": "PENDING"} for tid in args["task_ids"]}}

    agent = probe_agent(collector, apis, slug, engine, handler)
    try:
        sql_update(collector, "UPDATE tasks SET reconcile_after = 1 WHERE engine = ? AND state = 'started'", (engine,))
        second = run(operator)
        assert (second["looked"], second["lost"], second["later"]) == (3, 2, 1), second
        assert sorted(asked) == ["gone-1", "gone-2", "long"]  # a fresh task on a live worker is not stuck
        states = {t: task(apis["viewer"], t)["state"] for t in ("gone-1", "gone-2", "long", "fresh")}
        assert states == {"gone-1": "lost", "gone-2": "lost", "long": "started", "fresh": "started"}
        # the probe is per project and engine: a change of setting makes "fresh" stuck too
        apis["admin"].put(f"/api/v1/projects/{slug}/reconciler", json={"stuck_after_s": 1}).raise_for_status()
        third = run(operator)
        assert (third["looked"], third["later"], third["lost"]) == (1, 1, 0), third

        # the same through the CLI
        admin = {"Z4J_URL": collector.url, "Z4J_API_TOKEN": mint_tokens(collector, "admin", project=slug)["admin"],
                 "COLUMNS": "200"}
        refused = z4j("reconciler", "set", "--project", slug, "--batch", "many", env=admin, check=False)
        assert refused.returncode != 0 and "--batch must be a number" in refused.stderr
        z4j("reconciler", "set", "--project", slug, "--stuck-after", "default", env=admin)
        shown = json.loads(z4j("reconciler", "show", "--project", slug, "--json", env=admin).stdout)
        assert shown["settings"]["stuck_after_s"] == 3600 and shown["project"]["stuck_after_s"] is None
        assert shown["stuck"] == 1  # "long": its worker lives, the store says it runs
        assert "stuck-after" not in z4j("reconciler", "show", "--project", slug, env=admin).stdout
        assert json.loads(z4j("reconciler", "run", "--project", slug, "--json", env=admin).stdout)["looked"] == 0
    finally:
        agent.stop()


def test_each_task_is_probed_by_the_agent_that_reported_it(collector, root):
    """Two apps of one engine in a project (two Huey instances, say): each
    knows only its own result store, so each stuck task is probed by the
    agent that reported it, not by whichever agent of the engine comes first."""
    slug, engine = "twoapps", "appq"
    apis = project(collector, root, slug)
    asked: dict[str, list[str]] = {"app-a": [], "app-b": []}
    agents = []
    for name in asked:
        creds = mint_agent(collector, name, project=slug)
        agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine=engine, start=False)
        agent.on_command(f"{engine}.probe", lambda args, name=name: asked[name].extend(args["task_ids"]) or {
            "tasks": {t: ({"state": "success", "engine_state": "done"} if t.startswith(name) else
                          {"state": "unknown"}) for t in args["task_ids"]}})
        agent.runtime.start()
        agents.append(agent)
    try:
        for agent, name in zip(agents, asked):
            wait_agent_connected(apis["admin"], name, project=slug)
            for i in range(3):
                agent.task(f"{name}-{i}", "started", name="jobs.work", worker=f"w-{name}", queue=name)
            agent.worker(f"w-{name}", "offline")
            assert agent.flush(30)
        stats = run(apis["operator"])
        assert stats["settled"] == 6, stats
        assert sorted(asked["app-a"]) == [f"app-a-{i}" for i in range(3)]
        assert sorted(asked["app-b"]) == [f"app-b-{i}" for i in range(3)]
    finally:
        for agent in agents:
            agent.stop()
