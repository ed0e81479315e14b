"""Must show: a chord of a group of 10 into a callback, and a 3-step chain
with a failing middle step, run by a real `celery worker` (prefork, agent by
zero-code activation), drawn correctly by `z4j tasks tree` and served as a
tree by the API. One collector and one worker per database for the module."""

from __future__ import annotations

import gc
import json
import os

import pytest
from celery import chain, chord

from tests.engines.celery.conftest import Stack, Worker, producer
from tests.support.collector import drawn_tree as drawn, module_collector, z4j

pytestmark = pytest.mark.engine("celery")

DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def collector(request, tmp_path_factory):
    return module_collector(request, tmp_path_factory, "celery-tree")


@pytest.fixture(scope="module")
def ran(collector, redis_server, tmp_path_factory):
    """The workflows, sent by a plain Celery client and run to their end by a real worker."""
    redis_server.flushall()
    stack = Stack(collector, redis_server.url)
    worker = Worker(stack.env(), tmp_path_factory.mktemp("tree-worker"), pool="prefork", concurrency=2, name="tree")
    try:
        worker.start()
        app = producer(redis_server.url, backend=True)  # a chord needs a result backend in the client
        big = chord([app.signature("proj.step", (i,)) for i in range(10)], app.signature("proj.tsum")).apply_async()
        bad = chain(app.signature("proj.step", (1,)), app.signature("proj.fail_step"),
                    app.signature("proj.step")).apply_async()
        nested = chain(app.signature("proj.step", (0,)),
                       chord([app.signature("proj.add", (i,)) for i in range(2)], app.signature("proj.tsum")),
                       app.signature("proj.step")).apply_async()
        flows = {
            "chord": {"body": big.id, "group": big.parent.id, "members": [r.id for r in big.parent.results]},
            "chain": {"first": bad.parent.parent.id, "middle": bad.parent.id, "never": bad.id},
            "nested": {"last": nested.id},
        }
        assert big.get(timeout=60) == sum(i + 1 for i in range(10))
        assert nested.get(timeout=60) == (1 + 0) + (1 + 1) + 1  # step(0)=1; add(1,0)+add(1,1)=3; step(3)=4
        stack.wait_task(flows["chord"]["body"], "success", 60)
        stack.wait_task(flows["chain"]["middle"], "failure", 60)
        stack.wait_task(flows["nested"]["last"], "success", 60)
        # Let go of the client's results while Redis is up (their finalizers unsubscribe).
        del big, bad, nested
        gc.collect()
        app.close()
        yield stack, flows
    finally:
        worker.kill()


def cli_env(stack: Stack) -> dict[str, str]:
    return {"Z4J_API_TOKEN": stack.token, "Z4J_URL": stack.collector.url, "COLUMNS": "250"}


def test_chord_of_ten_into_a_callback_is_drawn(ran):
    stack, flows = ran
    chord_ = flows["chord"]
    # asked from one header member: the whole chord, the member marked
    asked = chord_["members"][3]
    lines = drawn(z4j("tasks", "tree", asked, env=cli_env(stack)).stdout)
    assert lines[0] == (0, f"workflow of {asked} (11 tasks)")
    assert lines[1][0] == 1
    assert lines[1][1].startswith(f"chord {chord_['group']} → {chord_['body']} ✔ success [11 success]")
    assert lines[2][0] == 2 and lines[2][1].startswith(f"header: group {chord_['group']} (10 tasks) ✔ success")
    members = lines[3:13]
    assert [d for d, _ in members] == [3] * 10
    assert all(label.startswith("✔ success proj.step ") for _, label in members), members
    assert {label.split()[3] for _, label in members} == set(chord_["members"])
    assert [label for _, label in members if "◀" in label] == [next(l for _, l in members if asked in l)]
    assert lines[13][0] == 2 and lines[13][1].startswith(f"body: ✔ success proj.tsum {chord_['body']} ")
    assert len(lines) == 14

    tree = json.loads(z4j("tasks", "tree", chord_["body"], "--json", env=cli_env(stack)).stdout)
    (top,) = tree["roots"]
    header, body = top["children"]
    assert {m["task_id"] for m in header["children"]} == set(chord_["members"])
    assert all(m["engine_state"] == "SUCCESS" and m["runtime"] is not None and m["queue"] == "celery"
               and m["started_at"] is not None for m in header["children"])
    assert body["parent_id"] in chord_["members"] and body["children"] == []


def test_chain_with_a_failing_middle_step_is_drawn(ran):
    stack, flows = ran
    chain_ = flows["chain"]
    lines = drawn(z4j("tasks", "tree", chain_["first"], env=cli_env(stack)).stdout)
    assert [d for d, _ in lines] == [0, 1, 2], lines
    assert lines[0][1] == f"workflow of {chain_['first']} (2 tasks)"
    assert lines[1][1].startswith(f"✔ success proj.step {chain_['first']} ◀ ")
    assert lines[2][1].startswith(f"✘ failure proj.fail_step {chain_['middle']} ")
    assert lines[2][1].endswith("RuntimeError: middle step fails on 2")
    # the third step was never sent, so it is not drawn
    assert all(chain_["never"] not in label for _, label in lines)


def test_chain_into_a_chord_into_a_step(ran):
    stack, flows = ran
    tree = json.loads(z4j("tasks", "tree", flows["nested"]["last"], "--json", env=cli_env(stack)).stdout)
    assert tree["nodes"] == 5 and tree["truncated"] is False
    (first,) = tree["roots"]
    assert first["name"] == "proj.step"
    (chord_,) = first["children"]
    assert chord_["type"] == "chord" and chord_["state"] == "success"
    header, body = chord_["children"]
    assert [m["name"] for m in header["children"]] == ["proj.add", "proj.add"]
    assert body["name"] == "proj.tsum"
    assert [(c["task_id"], c["name"]) for c in body["children"]] == [(flows["nested"]["last"], "proj.step")]
