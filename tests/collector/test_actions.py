"""Actions on a real collector with bare agents (no engine): what the
collector checks and refuses before anything reaches an agent, where a retry
is routed (the agent that sealed the call), and the bulk-retry job (capped,
each task once, resumable), on SQLite and PostgreSQL. The Celery side is in
tests/engines/celery/test_actions.py."""

from __future__ import annotations

import base64

import pytest

from tests.support.collector import mint_agent, mint_tokens, wait_agent_connected, wait_until
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig

P = "/api/v1/projects/default"
NOT_REPLAYABLE = ("the original arguments were not captured (task seen only by an observer, or published before "
                  "the agent was installed); nothing was sent")


def make_agent(collector, name: str, retry_log: list | None = None) -> Agent:
    """A bare agent of engine "celery" that declares the Celery actions and
    answers them without a broker (retry: a made-up new id)."""
    creds = mint_agent(collector, name)
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine="celery", start=False)

    def retry(args: dict) -> dict:
        if retry_log is not None:
            retry_log.append(args)
        return {"new_task_id": f"new-{args['task_id']}", "retry_of": args["task_id"]}

    agent.on_command("celery.retry", retry)
    for action in ("cancel", "purge", "worker_control"):
        agent.on_command(f"celery.{action}", lambda args, action=action: {"did": action, "args": args})
    agent.runtime.start()
    agent.creds = creds
    return agent


@pytest.fixture
def apis(collector):
    tokens = mint_tokens(collector, "viewer", "operator", "admin")
    return {role: collector.api(token) for role, token in tokens.items()}


def refused(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    return body["message"]


def audit(api, action: str) -> list[dict]:
    return api.get(f"{P}/audit", params={"action": action, "limit": 100}).json()["entries"]


def test_retry_refusals_and_routing_to_the_sealing_agent(collector, apis):
    operator, viewer, admin = apis["operator"], apis["viewer"], apis["admin"]
    seen_by_a: list[dict] = []
    sealer = make_agent(collector, "publisher", seen_by_a)
    worker = make_agent(collector, "worker-agent")
    try:
        wait_agent_connected(admin, "publisher")
        wait_agent_connected(admin, "worker-agent")
        # The publisher sealed the call; the worker's agent reported the rest
        # (so tasks.agent_id is the worker's, which cannot open the seal).
        sealer.task("t-sealed", "sent", name="proj.add", queue="q1", args=[1], replay=b"sealed-by-publisher")
        assert sealer.flush(30)
        worker.task("t-sealed", "failed", name="proj.add", worker="w1", exception="ValueError: x")
        worker.task("t-plain", "failed", name="proj.add", worker="w1", exception="ValueError: y")
        assert worker.flush(30)

        # never seen
        refused(operator.post(f"{P}/tasks/nope/retry", json={}), 404, "not_found")
        # seen without the original call: refused with the reason, nothing sent, audited
        assert refused(operator.post(f"{P}/tasks/t-plain/retry", json={}), 409, "not_replayable") == NOT_REPLAYABLE
        row = audit(operator, "command.celery.retry")[0]
        assert (row["target"], row["outcome"], row["detail"]["reason"]) == ("task:t-plain", "refused", NOT_REPLAYABLE)
        # a viewer may not
        refused(viewer.post(f"{P}/tasks/t-sealed/retry", json={}), 403, "forbidden")
        refused(operator.post(f"{P}/tasks/t-sealed/retry", json={"wait": 31}), 400, "bad_wait")
        assert not seen_by_a

        done = operator.post(f"{P}/tasks/t-sealed/retry", json={"wait": 10})
        assert done.status_code == 200, done.text
        command = done.json()
        assert command["state"] == "succeeded" and command["agent_id"] == sealer.creds["agent_id"]
        assert command["result"] == {"new_task_id": "new-t-sealed", "retry_of": "t-sealed"}
        assert [base64.b64decode(a["replay"]) for a in seen_by_a] == [b"sealed-by-publisher"]
        assert seen_by_a[0]["task_id"] == "t-sealed" and seen_by_a[0]["name"] == "proj.add"
        sent = [r for r in audit(operator, "command.celery.retry") if r["outcome"] == "sent"]
        assert sent[0]["target"] == "task:t-sealed" and sent[0]["actor"] == "token:test-operator"
        assert "replay" not in sent[0]["detail"]["args"]  # the sealed bytes stay out of the audit log
        assert sent[0]["detail"]["args"]["task_id"] == "t-sealed"

        # the sealing agent gone: refused as offline, even though another agent is connected
        sealer.stop()
        wait_agent_connected(admin, "publisher", connected=False)
        message = refused(operator.post(f"{P}/tasks/t-sealed/retry", json={}), 409, "agent_offline")
        assert str(sealer.creds["agent_id"]) in message
        assert len(seen_by_a) == 1
    finally:
        sealer.stop()
        worker.stop()


def test_cancel_purge_and_worker_control_refusals(collector, apis):
    operator, admin = apis["operator"], apis["admin"]
    agent = make_agent(collector, "celery-agent")
    try:
        wait_agent_connected(admin, "celery-agent")
        agent.task("done-1", "succeeded", name="proj.add", queue="q1")
        agent.task("run-1", "started", name="proj.slow", queue="q1", worker="w1")
        agent.task("queued-1", "sent", name="proj.add", queue="q1")
        agent.worker("w1", "online")
        assert agent.flush(30)

        assert "already success" in refused(operator.post(f"{P}/tasks/done-1/cancel", json={}), 409, "task_finished")
        assert "terminate" in refused(operator.post(f"{P}/tasks/run-1/cancel", json={}), 409, "task_running")
        refused(operator.post(f"{P}/tasks/run-1/cancel", json={"terminate": True}), 400, "confirm_required")
        refused(operator.post(f"{P}/tasks/nope/cancel", json={}), 404, "not_found")
        queued = operator.post(f"{P}/tasks/queued-1/cancel", json={}).json()
        assert queued["state"] == "succeeded" and queued["args"] == {"task_id": "queued-1", "terminate": False,
                                                                      "queue": "q1"}
        killed = operator.post(f"{P}/tasks/run-1/cancel", json={"terminate": True, "confirm": True}).json()
        assert killed["result"]["args"]["terminate"] is True

        refused(operator.post(f"{P}/queues/q1/purge", json={}), 400, "confirm_required")
        refused(operator.post(f"{P}/queues/q1/purge", json={"confirm": True, "older_than": "soon"}), 400, "bad_age")
        refused(operator.post(f"{P}/queues/q1/purge", json={"confirm": True, "older_than": -5}), 400, "bad_age")
        purge = operator.post(f"{P}/queues/q1/purge",
                              json={"confirm": True, "name": "proj.add", "older_than": "1h"}).json()
        assert purge["args"] == {"queue": "q1", "name": "proj.add", "older_than_s": 3600.0}

        def control(body: dict, status: int, code: str) -> str:
            return refused(operator.post(f"{P}/workers/w1/control", json=body), status, code)

        assert "pool_grow" in control({"op": "explode"}, 400, "bad_op")
        assert "needs queue" in control({"op": "add_consumer"}, 400, "bad_args")
        assert "does not take" in control({"op": "pool_grow", "queue": "q"}, 400, "bad_args")
        control({"op": "autoscale", "max": 2, "min": 5}, 400, "bad_args")
        control({"op": "rate_limit", "task_name": "proj.add", "rate": "fast"}, 400, "bad_args")
        control({"op": "time_limit", "task_name": "proj.add"}, 400, "bad_args")
        control({"op": "pool_shrink", "n": 0}, 400, "bad_args")
        control({"op": "shutdown"}, 400, "confirm_required")
        grow = operator.post(f"{P}/workers/w1/control", json={"op": "pool_grow"}).json()
        assert grow["args"] == {"worker": "w1", "op": "pool_grow", "n": 1}
        assert grow["agent_id"] == agent.creds["agent_id"]
        rows = audit(operator, "command.celery.worker_control")
        assert rows[0]["target"] == "worker:w1" and rows[0]["outcome"] == "sent"
        # nothing refused above reached the agent or the audit log as sent
        assert len([r for r in audit(operator, "command.celery.*") if r["outcome"] == "sent"]) == 4
    finally:
        agent.stop()
    wait_agent_connected(admin, "celery-agent", connected=False)
    refused(operator.post(f"{P}/workers/w1/control", json={"op": "pool_grow"}), 409, "no_agent")


def test_bulk_retry_is_capped_retries_each_task_once_and_resumes(collector, apis):
    operator, viewer, admin = apis["operator"], apis["viewer"], apis["admin"]
    retried: list[dict] = []
    agent = make_agent(collector, "bulk-agent", retried)
    try:
        wait_agent_connected(admin, "bulk-agent")
        for i in range(12):
            agent.task(f"f-{i:02d}", "failed", name="proj.flaky", replay=f"call-{i}".encode())
        agent.task("f-noreplay", "failed", name="proj.flaky")
        agent.task("ok-1", "succeeded", name="proj.flaky", replay=b"call-ok")
        assert agent.flush(30)

        refused(operator.post(f"{P}/tasks/bulk-retry", json={"limit": 0}), 400, "bad_limit")
        refused(operator.post(f"{P}/tasks/bulk-retry", json={"limit": 10_001}), 400, "bad_limit")
        refused(operator.post(f"{P}/tasks/bulk-retry", json={"state": "broken"}), 400, "bad_state")
        refused(viewer.post(f"{P}/tasks/bulk-retry", json={"dry_run": True}), 403, "forbidden")
        preview = operator.post(f"{P}/tasks/bulk-retry", json={"dry_run": True, "limit": 10}).json()
        assert (preview["matched"], preview["capped"]) == (10, True)
        assert operator.post(f"{P}/tasks/bulk-retry", json={"dry_run": True}).json()["matched"] == 13
        assert not retried

        # capped at 10 of the 13 failures: the newest 10
        job = operator.post(f"{P}/tasks/bulk-retry", json={"limit": 10, "wait": 30}).json()
        job = wait_until(lambda: (j := viewer.get(f"{P}/commands/{job['id']}").json())["state"] == "succeeded" and j,
                         what="the bulk retry job")
        progress = job["result"]
        assert (progress["matched"], progress["capped"], progress["done"]) == (10, True, True)
        assert progress["retried"] + progress["not_replayable"] == 10
        ids = [a["task_id"] for a in retried]
        assert len(ids) == len(set(ids)) == progress["retried"]  # each once
        assert "ok-1" not in ids
        assert job["action"] == "tasks.bulk_retry" and job["args"]["limit"] == 10

        # resume: the filter again, skipping what the job already retried
        again = operator.post(f"{P}/tasks/bulk-retry", json={"resume": job["id"], "wait": 30}).json()
        again = wait_until(lambda: (j := viewer.get(f"{P}/commands/{job['id']}").json())["state"] == "succeeded"
                           and j["result"]["done"] and j, what="the resumed job")
        assert again["result"]["already_retried"] == progress["retried"]
        assert again["result"]["retried"] == 0
        assert len(retried) == progress["retried"]  # nothing retried twice
        refused(operator.post(f"{P}/tasks/bulk-retry", json={"resume": "nope"}), 404, "not_found")

        # a new job over every failure: the tasks retried before are skipped, the rest go once
        wider = operator.post(f"{P}/tasks/bulk-retry", json={"state": "failure", "name": "proj.flaky"}).json()
        wider = wait_until(lambda: (j := viewer.get(f"{P}/commands/{wider['id']}").json())["state"] == "succeeded"
                           and j, what="the second job")["result"]
        assert (wider["matched"], wider["capped"], wider["already_retried"]) == (13, False, progress["retried"])
        assert wider["retried"] == 12 - progress["retried"] and wider["not_replayable"] == 1
        ids = [a["task_id"] for a in retried]
        assert len(ids) == len(set(ids)) == 12  # every sealed failure, each exactly once

        # a job's end and its closing audit entry commit together: once the
        # job reads finished, its entry is there
        rows = audit(operator, "tasks.bulk_retry*")
        outcomes = sorted(r["outcome"] for r in rows)
        assert outcomes == ["ok", "ok", "ok", "resumed", "started", "started"], outcomes
    finally:
        agent.stop()


def test_dead_letters_and_retry_from_the_engines_own_store(collector, apis):
    """Requeue-dead goes to the agent reporting the queue, after its checks;
    an RQ task (the job hash keeps its call) retries without a sealed call,
    through the agent that reported it; purge passes dead_letters on."""
    operator, viewer, admin = apis["operator"], apis["viewer"], apis["admin"]
    creds = mint_agent(collector, "rq-agent")
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine="rq", start=False)
    got: list[tuple[str, dict]] = []
    for verb in ("retry", "requeue_dead", "purge"):
        agent.on_command(f"rq.{verb}", lambda args, verb=verb: got.append((verb, args)) or {"requeued": 1})
    agent.runtime.start()
    try:
        wait_agent_connected(admin, "rq-agent")
        agent.queue("jobs", 3)
        agent.task("rq-1", "failed", name="app.work", queue="jobs", worker="w1", exception="ValueError: x")
        assert agent.flush(30)

        dead = f"{P}/queues/jobs/requeue-dead"
        assert "not both" in refused(operator.post(dead, json={}), 400, "bad_args")
        refused(operator.post(dead, json={"all": True, "task_ids": ["rq-1"], "confirm": True}), 400, "bad_args")
        refused(operator.post(dead, json={"task_ids": [""]}), 400, "bad_args")
        refused(operator.post(dead, json={"all": True}), 400, "confirm_required")
        refused(operator.post(dead, json={"all": True, "confirm": True, "sort": "x"}), 400, "invalid_request")
        refused(viewer.post(dead, json={"task_ids": ["rq-1"]}), 403, "forbidden")
        assert not got

        one = operator.post(dead, json={"task_ids": ["rq-1"]}).json()
        assert one["state"] == "succeeded" and one["agent_id"] == creds["agent_id"]
        assert one["args"] == {"queue": "jobs", "all": False, "task_ids": ["rq-1"]}
        every = operator.post(dead, json={"all": True, "confirm": True}).json()
        assert every["args"] == {"queue": "jobs", "all": True}
        purge = operator.post(f"{P}/queues/jobs/purge", json={"confirm": True, "dead_letters": True}).json()
        assert purge["args"] == {"queue": "jobs", "dead_letters": True}

        retried = operator.post(f"{P}/tasks/rq-1/retry", json={}).json()
        assert retried["state"] == "succeeded" and retried["agent_id"] == creds["agent_id"]
        assert retried["args"] == {"task_id": "rq-1", "name": "app.work", "engine_state": "FAILURE", "queue": "jobs"}
        assert [verb for verb, _ in got] == ["requeue_dead", "requeue_dead", "purge", "retry"]
        rows = audit(operator, "command.rq.requeue_dead")
        assert [r["outcome"] for r in rows] == ["sent", "sent"] and rows[0]["target"] == "queue:jobs"
    finally:
        agent.stop()
