"""Must show (scale-out): two collector processes on one PostgreSQL behind a
load balancer. Agents connect through the balancer (so to A while it lives);
a live client on B sees every change they send; a retry issued on B runs
through the agent on A, and a reconciler pass run on B probes through an
agent on A; A is leader and runs the leader-only jobs. Then A is killed with
SIGKILL: the agents reconnect (to B), nothing acked is lost, and B takes
over the leader-only jobs."""

from __future__ import annotations

import base64
import secrets
import time

import httpx
import pytest

from tests.support.balancer import Balancer
from tests.support.collector import Collector, mint_agent, mint_tokens, wait_agent_connected, wait_until
from tests.support.stream import SignedStream
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig

P = "/api/v1/projects/default"
CLUSTER_ENV = {"Z4J_CLUSTER_HEARTBEAT_S": "0.5", "Z4J_CLUSTER_ALIVE_S": "3", "Z4J_RECONCILE_INTERVAL_S": "1"}


@pytest.fixture
def pair(postgres_server, tmp_path):
    name = f"t_cluster_{secrets.token_hex(6)}"
    db_url = postgres_server.create_database(name)
    a = Collector(db_url, tmp_path, env=CLUSTER_ENV).start()
    wait_until(lambda: health(a)["cluster"]["leader"], 15, "A leads")
    b = Collector(db_url, tmp_path, env=CLUSTER_ENV).start()
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()
        postgres_server.drop_database(name)


def health(collector: Collector) -> dict:
    return httpx.get(f"{collector.url}/health", timeout=10).json()


def reconciler_passes(collector: Collector) -> float:
    text = httpx.get(f"{collector.url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("z4j_reconciler_passes_total"))


def through(balancer: Balancer, collector: Collector, creds: dict, engine: str) -> Agent:
    env = {**collector.agent_env(creds), "Z4J_BRAIN_URL": balancer.url}
    return Agent(AgentConfig.from_env(env), engine=engine, start=False)


def test_two_collectors_share_agents_changes_commands_and_leadership(pair):
    a, b = pair
    tokens = mint_tokens(a, "operator", "admin")
    on_a = {role: a.api(token) for role, token in tokens.items()}
    on_b = {role: b.api(token) for role, token in tokens.items()}
    assert health(a)["cluster"]["leader"] and not health(b)["cluster"]["leader"]
    wait_until(lambda: health(b)["cluster"]["peers"] == 1 and health(a)["cluster"]["peers"] == 1, 15,
               "each node sees the other")

    retried: list[dict] = []
    probed: list[str] = []
    with Balancer([a.port, b.port]) as balancer:
        worker = through(balancer, a, mint_agent(a, "worker-agent"), "celery")
        worker.on_command("celery.retry", lambda args: retried.append(args) or
                          {"new_task_id": f"new-{args['task_id']}", "retry_of": args["task_id"]})
        worker.on_command("celery.probe", lambda args: probed.extend(args["task_ids"]) or
                          {"tasks": {t: {"state": "success", "engine_state": "SUCCESS"} for t in args["task_ids"]}})
        worker.runtime.start()
        try:
            # B lists the agent connected although it is connected to A
            wait_agent_connected(on_b["admin"], "worker-agent")
            assert balancer.routed == {a.port: 1}

            # -------- a live client on B sees every change sent to A
            with SignedStream(b.url, tokens["operator"]) as stream:
                seen: dict[str, str] = {}
                workers: set[str] = set()

                def read_until(done, what: str, timeout: float = 30.0) -> None:
                    deadline = time.monotonic() + timeout
                    while not done():
                        assert time.monotonic() < deadline, f"no {what} on B's stream; seen {len(seen)} tasks"
                        try:
                            frame = stream.recv(timeout=1)
                        except TimeoutError:
                            continue
                        seen.update({t["task_id"]: t["state"] for t in frame["tasks"]})
                        workers.update(w["name"] for w in frame["workers"])

                # B announces what it streams within a heartbeat; until A knows, A
                # does not ship: prime with one task, re-sent until it shows up.
                deadline = time.monotonic() + 30
                while "prime" not in seen:
                    assert time.monotonic() < deadline, "B's stream never saw a change committed by A"
                    worker.task("prime", "received", name="app.prime", queue="q")
                    try:
                        read_until(lambda: "prime" in seen, "prime", timeout=1.5)
                    except AssertionError:
                        pass

                expected = {}
                for i in range(150):
                    tid = f"live-{i:03d}"
                    worker.task(tid, "received", name="app.work", queue="q", args=[i])
                    worker.task(tid, "started", worker="w1")
                    final = "succeeded" if i % 3 else "failed"
                    worker.task(tid, final, worker="w1", **({"exception": "ValueError: odd"} if not i % 3 else {}))
                    expected[tid] = "success" if i % 3 else "failure"
                worker.worker("w1", "online")
                read_until(lambda: all(seen.get(t) == s for t, s in expected.items()) and "w1" in workers,
                           "all 150 final states and worker w1")

            # -------- a retry issued on B runs through the agent on A
            worker.task("to-retry", "sent", name="app.flaky", queue="q", args=[7], replay=b"sealed-call")
            worker.task("to-retry", "failed", name="app.flaky", worker="w1", exception="TimeoutError")
            assert worker.flush(30)
            done = on_b["operator"].post(f"{P}/tasks/to-retry/retry", json={"wait": 15})
            assert done.status_code == 200, done.text
            command = done.json()
            assert command["state"] == "succeeded", command
            assert command["result"] == {"new_task_id": "new-to-retry", "retry_of": "to-retry"}
            assert [base64.b64decode(r["replay"]) for r in retried] == [b"sealed-call"]
            # the command row and its audit trail are the same from either collector
            assert on_a["operator"].get(f"{P}/commands/{command['id']}").json()["state"] == "succeeded"
            outcomes = [r["outcome"] for r in on_b["operator"].get(
                f"{P}/audit", params={"action": "command.celery.retry*", "limit": 10}).json()["entries"]]
            assert sorted(outcomes) == ["ok", "sent"]

            # -------- an ask (unstored command) from B to the agent on A: a reconciler pass run on B
            worker.task("stuck-1", "started", name="app.work", worker="w-gone", queue="q")
            worker.worker("w-gone", "offline")
            assert worker.flush(30)
            probed.clear()
            ran = on_b["operator"].post(f"{P}/reconciler/run")
            assert ran.status_code == 200, ran.text
            assert "stuck-1" in probed and ran.json()["settled"] >= 1
            assert on_b["operator"].get(f"{P}/tasks/stuck-1").json()["state"] == "success"

            # -------- leader-only jobs run on A, not on B (B counts only the pass run by hand above)
            a_passes = reconciler_passes(a)
            wait_until(lambda: reconciler_passes(a) >= a_passes + 2, 20, "A's reconciler passes")
            assert reconciler_passes(b) == 1

            # -------- SIGKILL A: the agent reconnects to B, nothing acked is lost
            for i in range(200):
                worker.task(f"late-{i:03d}", "received", name="app.late", queue="q")
            a.kill()
            for i in range(200, 400):
                worker.task(f"late-{i:03d}", "received", name="app.late", queue="q")
            assert worker.flush(60), "the agent could not deliver its events after A died"
            assert balancer.routed.get(b.port, 0) >= 1
            wait_agent_connected(on_b["admin"], "worker-agent")
            late = on_b["operator"].get(f"{P}/tasks", params={"name": "app.late", "limit": 1000}).json()["tasks"]
            assert len(late) == 400 and worker.runtime.dropped == 0
            stored = {t["task_id"] for t in on_b["operator"].get(
                f"{P}/tasks", params={"name": "app.work", "limit": 1000}).json()["tasks"]}
            assert set(expected) <= stored

            # -------- B takes over the leader-only jobs
            wait_until(lambda: health(b)["cluster"]["leader"], 30, "B leads after A died")
            wait_until(lambda: reconciler_passes(b) >= 3, 20, "B's reconciler passes")
            wait_until(lambda: health(b)["cluster"]["peers"] == 0, 30, "B forgets A")
            # commands still work, now all on B
            again = on_b["operator"].post(f"{P}/tasks/to-retry/retry", json={"wait": 15}).json()
            assert again["state"] == "succeeded" and len(retried) == 2
        finally:
            worker.stop()
