"""Must show: a bare agent's events all arrive with correct states, and
nothing is lost or duplicated when the collector is SIGKILLed mid-stream."""

from __future__ import annotations

import json
import time

from tests.support.collector import mint_agent, mint_tokens, wait_until, z4j
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig

TASKS = 1500  # x 3 events = 4,500 events


def emit_task(agent: Agent, i: int) -> None:
    agent.task(f"job-{i}", "received", name="demo.resize", args=[i, "photo.jpg"],
               kwargs={"size": 128, "api_key": "sk_live_abcdefghijklmnop1234"}, queue="images")
    agent.task(f"job-{i}", "started", worker="worker-1")
    if i % 5 == 0:
        agent.task(f"job-{i}", "failed", exception="OSError('disk full')",
                   traceback="Traceback (most recent call last):\n  File \"x.py\", line 1\nOSError: disk full")
    else:
        agent.task(f"job-{i}", "succeeded", result={"bytes": i}, runtime=0.05)


def test_sigkill_mid_stream_loses_and_duplicates_nothing(collector):
    # credentials from `z4j admin create-agent` / `create-token`, as an operator makes them
    creds = collector.create_agent("bare-1")
    config = AgentConfig.from_env(collector.agent_env(creds), backoff_initial=0.2, backoff_max=1.0)
    agent = Agent(config, engine="bare")
    api = collector.api(collector.create_token("viewer"))
    killed = False
    for i in range(TASKS):
        emit_task(agent, i)
        if i % 50 == 49:
            time.sleep(0.01)  # a steady stream, not one burst
        if i == TASKS // 2:
            # mid-stream: the agent has delivered some (it connects on its own clock), holds the rest
            wait_until(lambda: agent.runtime.acked_events > 0, timeout=30, what="an ack before the kill")
            collector.kill()
            killed = True
        if killed and i == TASKS // 2 + 200:
            collector.start()  # same database, same port: the agent reconnects
    assert agent.flush(60), f"agent still holds {agent.runtime.pending} events: {agent.runtime.last_error}"
    agent.stop()

    status = json.loads(z4j("status", "--json", "--db", collector.db_url).stdout)
    assert status["task_events"] == TASKS * 3, "events lost or duplicated"
    assert status["tasks"] == TASKS

    counts = api.get("/api/v1/projects/default/tasks/counts").json()
    assert counts == {"success": TASKS - TASKS // 5, "failure": TASKS // 5}

    failed = api.get("/api/v1/projects/default/tasks", params={"state": "failure", "limit": 1000}).json()["tasks"]
    assert len(failed) == TASKS // 5
    detail = api.get("/api/v1/projects/default/tasks/job-5").json()
    assert detail["state"] == "failure"
    assert [e["kind"] for e in detail["events"]] == ["received", "started", "failed"]
    assert detail["kwargs"]["api_key"] == "[redacted]" and detail["kwargs"]["size"] == 128
    assert detail["args"] == [5, "photo.jpg"]
    assert detail["queue"] == "images" and detail["worker"] == "worker-1"


def test_every_page_of_the_task_list_is_complete(collector):
    creds = mint_agent(collector, "bare-2")
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine="bare")
    base = time.time() - 3600
    for i in range(250):
        agent.task(f"p-{i:03d}", "received", name="paged.task", ts=base + i // 2)  # ties on created_at
    assert agent.flush(30)
    agent.stop()
    api = collector.api(mint_tokens(collector, "viewer")["viewer"])
    seen, cursor = [], None
    while True:
        page = api.get("/api/v1/projects/default/tasks", params={"limit": 40, "cursor": cursor}).json()
        seen.extend(t["task_id"] for t in page["tasks"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 250
    assert seen == sorted(seen, reverse=True)
