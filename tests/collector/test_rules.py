"""Notification rules on a real collector (both databases): CRUD with
one-line refusals and audit rows, and the evaluator (Z4J_RULES_INTERVAL_S
small) sending through a signed webhook channel to a loopback receiver
(allowlisted with Z4J_OUTBOUND_ALLOW) on events from a bare agent: task
failed (name filter, dedupe, cooldown), failure rate above and below the
threshold, task lost and stuck (grouped), worker offline, queue depth. The
`z4j notify rules` commands, a client of the same API, on one database."""

from __future__ import annotations

import time

import pytest

from tests.support.collector import mint_agent, mint_tokens, module_collector, wait_until, z4j
from tests.support.dbs import DBS, on_one_db
from tests.support.receiver import Receiver
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig

BASE = "/api/v1/projects/default/notifications"
SECRET = "rules-secret-" + "x" * 16
INTERVAL_S = 0.2


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def env(request, tmp_path_factory):
    rx = Receiver().start()
    request.addfinalizer(rx.stop)
    collector = module_collector(request, tmp_path_factory, "rules", Z4J_OUTBOUND_ALLOW=f"127.0.0.1:{rx.port}",
                                 Z4J_RULES_INTERVAL_S=INTERVAL_S)
    tokens = mint_tokens(collector, "viewer", "admin")
    agent = Agent(AgentConfig.from_env(collector.agent_env(mint_agent(collector, "rules-agent"))), engine="bare")
    request.addfinalizer(agent.stop)
    return {"collector": collector, "rx": rx, "agent": agent, "tokens": tokens,
            **{role: collector.api(token) for role, token in tokens.items()}}


def channel(env, name: str) -> int:
    reply = env["admin"].post(f"{BASE}/channels", json={"kind": "webhook", "name": name,
                                                        "config": {"url": env["rx"].url(f"/{name}"), "secret": SECRET}})
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def rule(env, kind: str, name: str, channel_id: int, params: dict, cooldown_s: float = 3600) -> dict:
    reply = env["admin"].post(f"{BASE}/rules", json={"kind": kind, "name": name, "channel_ids": [channel_id],
                                                     "params": params, "cooldown_s": cooldown_s})
    assert reply.status_code == 201, reply.text
    return reply.json()


def messages(env, path: str) -> list[dict]:
    return [r.json() for r in env["rx"].requests(f"/{path}")]


def wait_messages(env, path: str, count: int) -> list[dict]:
    return wait_until(lambda: (m := messages(env, path)) and len(m) >= count and m, what=f"{count} on /{path}")


def passes(n: int = 4) -> None:
    """Let the evaluator run a few times (to check that nothing was sent)."""
    time.sleep(n * INTERVAL_S + 0.3)


def finish(agent: Agent, task_id: str, name: str, kind: str = "failed", **fields) -> None:
    agent.task(task_id, "received", name=name, queue=fields.pop("queue", "default"))
    agent.task(task_id, kind, name=name, **fields)


def test_crud_refusals_and_audit(env):
    admin, viewer = env["admin"], env["viewer"]
    cid = channel(env, "crud")
    made = rule(env, "failure_rate", "crud-rate", cid, {"threshold": 0.2, "window_minutes": 5, "queue": "q*"}, 60)
    assert made["params"] == {"threshold": 0.2, "window_minutes": 5, "queue": "q*"}
    assert made["channel_ids"] == [cid] and made["cooldown_s"] == 60 and made["enabled"] is True
    assert [r["name"] for r in viewer.get(f"{BASE}/rules").raise_for_status().json()].count("crud-rate") == 1
    assert viewer.post(f"{BASE}/rules", json={}).status_code == 403

    bad = [
        ({"kind": "sms"}, "kind must be one of"),
        ({"kind": "failure_rate", "params": {"window_minutes": 5}}, "needs params.threshold"),
        ({"kind": "failure_rate", "params": {"threshold": 1.5, "window_minutes": 5}}, "from 0 to 1"),
        ({"kind": "failure_rate", "params": {"threshold": 0.1, "window_minutes": 0}}, "from 1 to 1440 minutes"),
        ({"kind": "queue_depth", "params": {"depth": -1}}, "whole number"),
        ({"kind": "queue_depth", "params": {"depth": 10, "worker": "w"}}, "unknown queue_depth param"),
        ({"kind": "task_stuck", "params": {"stuck_after_s": "soon"}}, "from 1 to 2592000 seconds"),
        ({"kind": "task_failed", "channel_ids": []}, "channel_ids must be a list"),
        ({"kind": "task_failed", "channel_ids": [999999]}, "no notification channel 999999"),
        ({"kind": "task_failed", "cooldown_s": -5}, "cooldown_s must be from 0"),
        ({"kind": "task_failed", "name": ""}, "name must be 1 to 100"),
        ({"kind": "task_failed", "name": "crud-rate"}, "already exists"),
        ({"kind": "task_failed", "colour": "red"}, "unknown field(s) colour"),
    ]
    before = admin.get(f"{BASE}/rules").json()
    for change, reason in bad:
        body = {"kind": "task_failed", "name": "crud-bad", "channel_ids": [cid], "params": {}, **change}
        reply = admin.post(f"{BASE}/rules", json=body)
        assert reply.status_code in (400, 409), reply.text
        message = reply.json()["message"]
        assert reason in message and "\n" not in message, message
    assert admin.get(f"{BASE}/rules").json() == before

    edited = admin.patch(f"{BASE}/rules/{made['id']}", json={"enabled": False, "cooldown_s": 120})
    assert edited.status_code == 200, edited.text
    assert edited.json()["enabled"] is False and edited.json()["params"] == made["params"]
    reply = admin.patch(f"{BASE}/rules/{made['id']}", json={"kind": "queue_depth"})
    assert reply.status_code == 400 and "kind cannot change" in reply.json()["message"]
    assert admin.delete(f"{BASE}/rules/{made['id']}").status_code == 204
    assert admin.get(f"{BASE}/rules/{made['id']}").status_code == 404

    entries = admin.get("/api/v1/projects/default/audit", params={"action": "notify.rule.*"}).json()["entries"]
    actions = [(e["action"], e["target"]) for e in entries]
    for expected in ("notify.rule.create", "notify.rule.update", "notify.rule.delete"):
        assert (expected, "rule:crud-rate") in actions, actions


@on_one_db("env")  # a client of the API tested above on both databases
def test_cli(env):
    admin = env["admin"]
    channel(env, "cli")
    cli_env = {"Z4J_URL": env["collector"].url, "Z4J_API_TOKEN": env["tokens"]["admin"]}
    out = z4j("notify", "rules", "create", "queue_depth", "cli-depth", "--channel", "cli", "--param", "depth=50",
              "--param", "queue=cli-*", "--cooldown", "30", env=cli_env)
    assert out.returncode == 0, out.stderr
    listed = z4j("notify", "rules", "list", env=cli_env)
    assert "cli-depth" in listed.stdout and "depth=50" in listed.stdout, listed.stdout
    bad_cli = z4j("notify", "rules", "create", "queue_depth", "cli-bad", "--channel", "cli", "--param", "depth",
                  env=cli_env, check=False)
    assert bad_cli.returncode != 0 and "key=value" in bad_cli.stderr
    assert z4j("notify", "rules", "delete", "cli-depth", env=cli_env).returncode == 0
    assert "cli-depth" not in [r["name"] for r in admin.get(f"{BASE}/rules").json()]


def test_task_failed_dedupe_filter_and_cooldown(env):
    agent, admin = env["agent"], env["admin"]
    cid = channel(env, "failed")
    made = rule(env, "task_failed", "failed", cid, {"name": "rt.fail.*"}, cooldown_s=2)
    finish(agent, "fail-a", "rt.fail.one", exception="ValueError('boom')")
    first = wait_messages(env, "failed", 1)[0]
    assert first["fields"]["task"] == "fail-a" and first["fields"]["rule"] == "failed", first
    assert "boom" in first["fields"]["exception"] and first["source"] == f"rule:{made['id']}"

    # the same task failing again is not sent again; another one waits for the cooldown; a
    # task outside the name filter is never sent
    agent.task("fail-a", "failed", name="rt.fail.one")
    finish(agent, "fail-b", "rt.fail.two")
    finish(agent, "other-c", "rt.other")
    second = wait_messages(env, "failed", 2)[1]
    assert second["fields"]["task"] == "fail-b", second
    passes()
    got = messages(env, "failed")
    assert [m["fields"]["task"] for m in got] == ["fail-a", "fail-b"], got
    log = admin.get(f"{BASE}/deliveries", params={"channel_id": cid}).json()
    assert [d["status"] for d in log] == ["sent", "sent"] and {d["source"] for d in log} == {f"rule:{made['id']}"}
    assert log[0]["created_at"] - log[1]["created_at"] >= 2.0  # the cooldown held the second message back

    # many at once: one grouped message
    for i in range(5):
        finish(agent, f"fail-g{i}", "rt.fail.many")
    grouped = wait_messages(env, "failed", 3)[2]
    assert grouped["title"] == "z4j: 5 tasks failed" and "rt.fail.many ×5" in grouped["fields"]["by_name"], grouped


def test_failure_rate_above_not_below(env):
    agent = env["agent"]
    cid = channel(env, "rate")
    rule(env, "failure_rate", "rate", cid, {"threshold": 0.5, "window_minutes": 5, "name": "rt.rate",
                                            "min_finished": 4})
    for i in range(3):
        finish(agent, f"rate-ok{i}", "rt.rate", "succeeded")
    finish(agent, "rate-bad0", "rt.rate")
    agent.flush()
    passes()
    assert messages(env, "rate") == []  # 25 %
    for i in range(1, 5):
        finish(agent, f"rate-bad{i}", "rt.rate")
    got = wait_messages(env, "rate", 1)
    assert got[0]["fields"]["failure_rate"] == "62.5%" and got[0]["fields"]["finished"] == 8, got
    assert got[0]["severity"] == "critical"
    passes()
    assert len(messages(env, "rate")) == 1  # still above, within the cooldown: not again


def test_task_lost_and_stuck(env):
    agent = env["agent"]
    lost_cid, stuck_cid = channel(env, "lost"), channel(env, "stuck")
    rule(env, "task_lost", "lost", lost_cid, {"name": "rt.lost"})
    rule(env, "task_stuck", "stuck", stuck_cid, {"stuck_after_s": 5, "queue": "rt-stuck"})
    agent.task("lost-1", "received", name="rt.lost", queue="q")
    agent.task("lost-1", "lost", name="rt.lost")
    got = wait_messages(env, "lost", 1)
    assert got[0]["fields"]["task"] == "lost-1" and got[0]["title"] == "z4j: task rt.lost lost", got

    old = time.time() - 60
    agent.task("stuck-1", "started", name="rt.stuck", queue="rt-stuck", ts=old)
    agent.task("fresh-1", "started", name="rt.stuck", queue="rt-stuck")  # not past stuck_after_s
    one = wait_messages(env, "stuck", 1)
    assert one[0]["fields"]["task"] == "stuck-1", one
    for i in range(4):
        agent.task(f"stuck-g{i}", "started", name="rt.stuck", queue="rt-stuck", ts=old)
    grouped = wait_messages(env, "stuck", 2)[1]
    assert grouped["title"] == "z4j: 4 tasks stuck", grouped  # stuck-1 already sent, within its cooldown
    passes()
    assert len(messages(env, "stuck")) == 2 and len(messages(env, "lost")) == 1


def test_worker_offline_and_queue_depth(env):
    agent = env["agent"]
    w_cid, q_cid = channel(env, "workers"), channel(env, "queues")
    rule(env, "worker_offline", "workers", w_cid, {"worker": "rt-worker-*", "offline_after_s": 600})
    rule(env, "queue_depth", "queues", q_cid, {"depth": 100, "queue": "rt-q*"})
    agent.worker("rt-worker-1", "online")
    agent.worker("rt-worker-2", "online")
    agent.queue("rt-q1", 50)
    agent.flush()
    passes()
    assert messages(env, "workers") == [] and messages(env, "queues") == []
    agent.worker("rt-worker-1", "offline")
    agent.queue("rt-q1", 500)
    agent.queue("other-q", 5000)
    w = wait_messages(env, "workers", 1)
    q = wait_messages(env, "queues", 1)
    assert w[0]["fields"]["worker"] == "rt-worker-1" and w[0]["title"] == "z4j: worker rt-worker-1 offline", w
    assert q[0]["fields"] == {"project": "default", "rule": "queues", "queue": "rt-q1", "engine": "bare",
                              "depth": 500}, q
    passes()
    assert len(messages(env, "workers")) == 1 and len(messages(env, "queues")) == 1
