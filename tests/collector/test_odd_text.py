"""Must show: whatever text a task carries (NUL characters, very long names,
non-ASCII) is stored and readable on SQLite and PostgreSQL alike, and never
blocks the agent: the events it sends afterwards arrive too."""

from __future__ import annotations

import pytest

from tests.support.collector import mint_agent, mint_tokens, module_collector
from tests.support.dbs import DBS
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig

TASKS = "/api/v1/projects/default/tasks"


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def collector(request, tmp_path_factory):
    """One collector per database for the module: its tests use agents, task ids and names of their own."""
    return module_collector(request, tmp_path_factory, "odd-text")

# one agent per case, so that one stuck case does not hide the others
CASES = {
    # PostgreSQL text cannot hold a NUL character
    "nul": [("received", {"name": "odd.nul", "queue": "odd"}),
            ("failed", {"exception": "ValueError('a\x00b')", "traceback": "Traceback\nValueError: a\x00b"})],
    # longer than the columns' declared sizes
    "long": [("received", {"name": "n" * 300, "queue": "q" * 300, "worker": "w" * 300, "engine_state": "X" * 40})],
    # non-ASCII everywhere
    "uni": [("received", {"name": "rapport.génération", "queue": "files", "args": ["Ünïcödé ✓", "🎉"],
                          "kwargs": {"fichier": "résumé.pdf"}})],
}


def test_odd_text_is_stored_and_never_blocks_the_agent(collector):
    api = collector.api(mint_tokens(collector, "viewer")["viewer"])
    stuck = {}
    for case, events in CASES.items():
        creds = mint_agent(collector, f"odd-{case}")
        agent = Agent(AgentConfig.from_env(collector.agent_env(creds), backoff_max=1.0), engine="bare")
        for kind, fields in events:
            agent.task(f"{case}-1", kind, **fields)
        agent.task(f"after-{case}", "received", name="after.task")
        if not agent.flush(20):
            stuck[case] = agent.runtime.last_error
        agent.stop(timeout=0.1)
    assert not stuck, f"agents stuck behind odd text: {stuck}"

    assert {t["task_id"] for t in api.get(TASKS, params={"name": "after.task"}).json()["tasks"]} == {
        f"after-{case}" for case in CASES}
    nul = api.get(f"{TASKS}/nul-1").json()
    assert nul["state"] == "failure"
    assert nul["exception"].startswith("ValueError('a") and nul["exception"].endswith("b')"), nul["exception"]
    long = api.get(f"{TASKS}/long-1").json()
    assert long["name"].startswith("n" * 200) and long["queue"].startswith("q" * 200)
    uni = api.get(f"{TASKS}/uni-1").json()
    assert (uni["name"], uni["args"], uni["kwargs"]) == ("rapport.génération", ["Ünïcödé ✓", "🎉"], {"fichier": "résumé.pdf"})
    found = api.get(TASKS, params={"search": "génération"}).json()["tasks"]
    assert [t["task_id"] for t in found] == ["uni-1"]
    assert [t["task_id"] for t in api.get(TASKS, params={"name": "rapport.g*"}).json()["tasks"]] == ["uni-1"]


def test_unstorable_event_is_refused_alone_and_counted(collector):
    creds = mint_agent(collector, "too-long")
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine="bare")
    agent.task("k" * 300, "received", name="refused.task")   # longer than a task id may be
    agent.task("fine-1", "received", name="kept.task")
    assert agent.flush(30), agent.runtime.last_error
    assert agent.runtime.rejected == 1
    agent.stop()
    api = collector.api(mint_tokens(collector, "viewer")["viewer"])
    assert [t["task_id"] for t in api.get(TASKS, params={"name": "kept.task"}).json()["tasks"]] == ["fine-1"]
    assert api.get(TASKS, params={"name": "refused.task"}).json()["tasks"] == []
