"""Must show: chains, groups and chords come back from the API as a tree with
state and runtime per node, and `z4j tasks tree` draws them.

The events are what Celery really records (checked against a real Celery 5
worker, docs/celery.md "DAG"): a chord's header members sent from a client
are their own roots and share only the group id and the callback's id
(chord_id); the callback inherits the header's group id and names the last
member to finish as its parent and root; a chain's later steps name the step
before as parent and the first step as root; a step after a failed one is
never sent. Sent by a real agent into a real collector, on both databases
(`z4j tasks tree`, a client of the same API, on one: tests/support/dbs.py).
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.support.collector import drawn_tree as drawn, mint_agent, mint_tokens, module_collector, with_store, z4j
from tests.support.dbs import DBS, on_one_db
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig

TASKS = "/api/v1/projects/default/tasks"
ENGINE_STATE = {"sent": "PENDING", "received": "RECEIVED", "started": "STARTED", "succeeded": "SUCCESS",
                "failed": "FAILURE", "retried": "RETRY"}


def uid() -> str:
    return str(uuid.uuid4())


class Flow:
    """Emits a task's life the way the Celery capture does."""

    def __init__(self, agent: Agent, t0: float) -> None:
        self.agent = agent
        self.t = t0

    def run(self, task_id: str, name: str, *, upto: str = "succeeded", runtime: float = 0.25,
            exception: str | None = None, **links: str | None) -> None:
        fields = {k: v for k, v in links.items() if v is not None}
        for kind in ("sent", "received", "started", upto):
            self.t += 0.01
            extra: dict = {}
            if kind == "sent":
                extra = {"name": name, "queue": "celery", **fields}
            if kind == "started":
                extra = {"worker": "celery@host"}
            if kind == "succeeded":
                extra = {"runtime": runtime, "result": 1}
            if kind == "failed":
                extra = {"runtime": runtime, "exception": exception,
                         "traceback": f"Traceback (most recent call last):\n  ...\n{exception}"}
            self.agent.task(task_id, kind, ts=self.t, engine_state=ENGINE_STATE[kind], **extra)
            if kind == upto:
                break


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def collector(request, tmp_path_factory):
    """One real collector per database for the module (the tests only read)."""
    return module_collector(request, tmp_path_factory, "tree")


@pytest.fixture(scope="module")
def flows(collector):
    """A client-sent chord of 10 into a callback, a 3-step chain whose middle
    step fails, a chain into a chord into a last step, a chord still running,
    and a few tasks with nonsense links."""
    agent = Agent(AgentConfig.from_env(collector.agent_env(mint_agent(collector, "celery-agent"))), engine="celery")
    flow = Flow(agent, time.time() - 600)
    ids: dict = {}

    # chord(group(add.s(i, i) for i in range(10)), tsum.s())
    group, body = uid(), uid()
    members = [uid() for _ in range(10)]
    for i, member in enumerate(members):
        flow.run(member, "proj.add", runtime=0.1 + i / 100, root_id=member, group_id=group, chord_id=body)
    last = members[-1]  # the last to finish publishes the callback (Redis backend)
    flow.run(body, "proj.tsum", runtime=0.05, root_id=last, parent_id=last, group_id=group)
    ids["chord"] = {"group": group, "body": body, "members": members}

    # chain(add.s(1, 1), boom.s(), add.s(3)): boom fails, so add.s(3) is never sent
    first, middle = uid(), uid()
    flow.run(first, "proj.add", runtime=0.02, root_id=first)
    flow.run(middle, "proj.boom", upto="failed", exception="ValueError('boom')", root_id=first, parent_id=first)
    ids["chain"] = {"first": first, "middle": middle}

    # chain(start.s(), chord([add.s(1), add.s(2)], tsum.s()), add.s(5))
    start, g2, b2, tail = uid(), uid(), uid(), uid()
    flow.run(start, "proj.start", root_id=start)
    m2 = [uid(), uid()]
    for member in m2:
        flow.run(member, "proj.add", root_id=start, parent_id=start, group_id=g2, chord_id=b2)
    flow.run(b2, "proj.tsum", root_id=start, parent_id=m2[-1], group_id=g2)
    flow.run(tail, "proj.add", root_id=start, parent_id=b2)
    ids["nested"] = {"start": start, "group": g2, "body": b2, "members": m2, "tail": tail}

    # a chord whose header is still running: the callback is known by id only
    g3, b3 = uid(), uid()
    m3 = [uid(), uid(), uid()]
    flow.run(m3[0], "proj.add", root_id=m3[0], group_id=g3, chord_id=b3)
    flow.run(m3[1], "proj.add", upto="started", root_id=m3[1], group_id=g3, chord_id=b3)
    flow.run(m3[2], "proj.add", upto="sent", root_id=m3[2], group_id=g3, chord_id=b3)
    ids["running"] = {"group": g3, "body": b3, "members": m3}

    # nonsense: a two-task parent cycle, a task that is its own parent
    flow.run("loop-a", "proj.a", root_id="loop-a", parent_id="loop-b")
    flow.run("loop-b", "proj.b", root_id="loop-a", parent_id="loop-a")
    flow.run("selfish", "proj.self", parent_id="selfish", root_id="selfish")

    assert agent.flush(30), agent.runtime.last_error
    yield ids
    agent.stop()


def get_tree(api: httpx.Client, task_id: str) -> dict:
    reply = api.get(f"{TASKS}/{task_id}/tree")
    assert reply.status_code == 200, reply.text
    return reply.json()


def walk(node: dict, depth: int = 0):
    yield depth, node
    for child in node["children"]:
        yield from walk(child, depth + 1)


def test_chord_of_ten_into_a_callback(collector, flows):
    api = collector.api(mint_tokens(collector, "viewer")["viewer"])
    chord = flows["chord"]
    # The same tree whichever task of it is asked for.
    trees = [get_tree(api, t) for t in (chord["body"], chord["members"][0], chord["members"][-1])]
    for tree in trees:
        assert tree["nodes"] == 11 and tree["truncated"] is False and tree["engine"] == "celery"
        assert [r["type"] for r in tree["roots"]] == ["chord"]
        assert tree["roots"] == trees[0]["roots"]
    top = trees[0]["roots"][0]
    assert top["chord_id"] == chord["body"] and top["group_id"] == chord["group"]
    assert top["state"] == "success" and top["states"] == {"success": 11}
    header, body = top["children"]
    assert header["type"] == "group" and header["role"] == "header" and header["size"] == 10
    assert header["group_id"] == chord["group"] and header["state"] == "success"
    # members in the order they were sent, each with its state and runtime, nothing under them
    assert [m["task_id"] for m in header["children"]] == chord["members"]
    for i, member in enumerate(header["children"]):
        assert member["type"] == "task" and member["name"] == "proj.add" and member["seen"] is True
        assert (member["state"], member["engine_state"], member["queue"]) == ("success", "SUCCESS", "celery")
        assert member["runtime"] == pytest.approx(0.1 + i / 100)
        assert member["started_at"] < member["finished_at"]
        assert member["children"] == []
    # the callback sits in the chord, not under the member that published it
    assert body["type"] == "task" and body["role"] == "body" and body["task_id"] == chord["body"]
    assert (body["name"], body["state"], body["runtime"]) == ("proj.tsum", "success", pytest.approx(0.05))
    assert body["parent_id"] == chord["members"][-1] and body["children"] == []
    assert top["runtime"] == pytest.approx(body["finished_at"] - header["children"][0]["started_at"])


def test_chain_with_a_failing_middle_step(collector, flows):
    api = collector.api(mint_tokens(collector, "viewer")["viewer"])
    chain = flows["chain"]
    tree = get_tree(api, chain["middle"])
    assert tree["root_id"] == chain["first"] and tree["nodes"] == 2
    (first,) = tree["roots"]
    assert (first["task_id"], first["state"], first["name"]) == (chain["first"], "success", "proj.add")
    (middle,) = first["children"]
    assert (middle["task_id"], middle["state"], middle["engine_state"]) == (chain["middle"], "failure", "FAILURE")
    assert middle["exception"] == "ValueError('boom')" and middle["children"] == []
    assert get_tree(api, chain["first"])["roots"] == tree["roots"]


def test_chain_into_a_chord_into_a_step(collector, flows):
    api = collector.api(mint_tokens(collector, "viewer")["viewer"])
    nested = flows["nested"]
    tree = get_tree(api, nested["tail"])
    assert tree["nodes"] == 5
    (start,) = tree["roots"]
    assert start["task_id"] == nested["start"]
    (chord,) = start["children"]
    assert chord["type"] == "chord" and chord["chord_id"] == nested["body"]
    header, body = chord["children"]
    assert [m["task_id"] for m in header["children"]] == nested["members"]
    assert body["task_id"] == nested["body"]
    assert [c["task_id"] for c in body["children"]] == [nested["tail"]]


def test_running_chord_shows_its_callback_as_not_sent(collector, flows):
    api = collector.api(mint_tokens(collector, "viewer")["viewer"])
    running = flows["running"]
    tree = get_tree(api, running["members"][2])
    assert tree["nodes"] == 3
    (chord,) = tree["roots"]
    assert chord["state"] == "started"
    assert chord["states"] == {"success": 1, "started": 1, "pending": 2}  # the callback counts as pending
    header, body = chord["children"]
    assert [m["state"] for m in header["children"]] == ["success", "started", "pending"]
    assert header["finished_at"] is None and header["runtime"] is None
    assert body["task_id"] == running["body"] and body["seen"] is False and body["state"] is None


def test_bad_links_and_unknown_tasks(collector, flows):
    api = collector.api(mint_tokens(collector, "viewer")["viewer"])
    loop = get_tree(api, "loop-b")
    assert loop["nodes"] == 2
    assert sorted(n["task_id"] for r in loop["roots"] for _, n in walk(r)) == ["loop-a", "loop-b"]
    selfish = get_tree(api, "selfish")
    assert [(r["task_id"], r["children"]) for r in selfish["roots"]] == [("selfish", [])]

    missing = api.get(f"{TASKS}/no-such-task/tree")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert api.get(f"{TASKS}/{flows['chain']['first']}/tree", params={"engine": "rq"}).status_code == 404
    assert httpx.get(f"{collector.url}{TASKS}/{flows['chain']['first']}/tree").status_code == 401


def test_tree_is_bounded(collector, flows):
    from z4j_collector.services.tree import task_tree

    chord = flows["chord"]

    async def build(store, limit):
        return await task_tree(store, await store.project_id("default"), chord["body"], limit=limit)

    small = with_store(collector.db_url, lambda store: build(store, 4))
    assert small["truncated"] is True and small["nodes"] == 4 and small["limit"] == 4
    assert sum(1 for r in small["roots"] for _, n in walk(r) if n["type"] == "task" and n["seen"]) == 4
    exact = with_store(collector.db_url, lambda store: build(store, 11))
    assert exact["truncated"] is False and exact["nodes"] == 11


@on_one_db("collector")  # a client of the API tested above on both
def test_cli_draws_the_tree(collector, flows):
    env = {"Z4J_API_TOKEN": mint_tokens(collector, "viewer")["viewer"], "Z4J_URL": collector.url,
           "COLUMNS": "250"}
    chord, chain = flows["chord"], flows["chain"]

    lines = drawn(z4j("tasks", "tree", chord["body"], env=env).stdout)
    assert lines[0] == (0, f"workflow of {chord['body']} (11 tasks)")
    assert lines[1][0] == 1 and lines[1][1].startswith(f"chord {chord['group']} → {chord['body']} ✔ success [11 success]")
    assert lines[2][0] == 2 and lines[2][1].startswith(f"header: group {chord['group']} (10 tasks) ✔ success")
    for (depth, label), member in zip(lines[3:13], chord["members"]):
        assert depth == 3 and label.startswith("✔ success proj.add ") and f" {member} " in label, label
    assert lines[13][0] == 2 and lines[13][1].startswith(f"body: ✔ success proj.tsum {chord['body']} ◀ 0.050s")
    assert len(lines) == 14

    lines = drawn(z4j("tasks", "tree", chain["middle"], env=env).stdout)
    assert [d for d, _ in lines] == [0, 1, 2]
    assert lines[1][1] == f"✔ success proj.add {chain['first']} 0.020s"
    assert lines[2][1] == f"✘ failure proj.boom {chain['middle']} ◀ 0.250s ValueError('boom')"

    running = flows["running"]
    lines = drawn(z4j("tasks", "tree", running["members"][0], env=env).stdout)
    assert lines[-1] == (2, f"body: ○ not sent yet {running['body']}")

    as_json = json.loads(z4j("tasks", "tree", chord["body"], "--json", env=env).stdout)
    api = collector.api(env["Z4J_API_TOKEN"])
    assert as_json == get_tree(api, chord["body"])

    missing = z4j("tasks", "tree", "no-such-task", env=env, check=False)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == ["z4j: 404: no task 'no-such-task' (not_found)"]
