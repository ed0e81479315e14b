"""Must show: a command goes through a real collector to a real agent and its
result (or its failure, with the agent's reason) comes back and is stored;
commands nobody can run, and bad requests, are refused with a clear code."""

from __future__ import annotations

import pytest

from tests.support.collector import mint_agent, mint_tokens, wait_agent_connected, wait_until
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig
from z4j_agents.runtime import CommandError

COMMANDS = "/api/v1/projects/default/commands"


def refuse(args: dict) -> None:
    raise CommandError("nope")


def crash(args: dict) -> None:
    raise ValueError(f"bad value {args.get('x')}")


@pytest.fixture
def agent(collector):
    """A bare agent declaring echo, refuse and crash; connected when yielded."""
    creds = mint_agent(collector, "commander")
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine="bare", start=False)
    agent.on_command("echo", lambda args: {"got": args})
    agent.on_command("refuse", refuse)
    agent.on_command("crash", crash)
    agent.runtime.start()  # the actions are declared in the hello
    agent.creds = creds
    yield agent
    agent.stop()


@pytest.fixture
def apis(collector, agent):
    tokens = mint_tokens(collector, "viewer", "operator", "admin")
    apis = {role: collector.api(token) for role, token in tokens.items()}
    wait_agent_connected(apis["admin"], "commander")
    return apis


def send(api, **body) -> dict:
    response = api.post(COMMANDS, json=body)
    assert response.status_code == 202, response.text
    return response.json()


def test_command_round_trip(collector, agent, apis):
    operator, viewer = apis["operator"], apis["viewer"]

    done = send(operator, action="echo", args={"x": 1}, wait=10)
    assert done["state"] == "succeeded", done
    assert done["result"] == {"got": {"x": 1}} and done["error"] is None
    assert done["action"] == "echo" and done["args"] == {"x": 1}
    assert done["agent_id"] == agent.creds["agent_id"]
    assert done["finished_at"] >= done["dispatched_at"] >= done["created_at"]
    stored = viewer.get(f"{COMMANDS}/{done['id']}").json()  # any reader may look it up
    assert stored == done

    # the agent refuses with a reason of its own
    refused = send(operator, action="refuse", args={}, wait=10)
    assert (refused["state"], refused["error"], refused["result"]) == ("failed", "nope", None)

    # a handler that crashes: reported with the exception, and the agent lives on
    crashed = send(operator, action="crash", args={"x": 7}, wait=10)
    assert crashed["state"] == "failed"
    assert crashed["error"] == "ValueError: bad value 7"
    assert send(operator, action="echo", args={"again": True}, wait=10)["result"] == {"got": {"again": True}}
    agent.task("after-crash", "received", name="still.alive")
    assert agent.flush(30)
    assert viewer.get("/api/v1/projects/default/tasks/after-crash").status_code == 200

    # without wait the answer is immediate; the result lands later
    queued = send(operator, action="echo", args={"late": 1})
    assert queued["state"] in ("pending", "dispatched", "succeeded")
    later = wait_until(lambda: (c := viewer.get(f"{COMMANDS}/{queued['id']}").json())["state"] == "succeeded" and c,
                       what="the result of a command sent without wait")
    assert later["result"] == {"got": {"late": 1}}

    # addressed to one agent explicitly
    direct = send(operator, action="echo", args={}, agent_id=agent.creds["agent_id"], engine="bare", wait=10)
    assert direct["state"] == "succeeded"

    missing = viewer.get(f"{COMMANDS}/no-such-command")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_commands_nobody_can_run_and_bad_requests(collector, agent, apis):
    operator = apis["operator"]

    def refused(status: int, code: str | None, **body) -> dict:
        response = operator.post(COMMANDS, json=body)
        assert response.status_code == status, f"{body}: {response.text}"
        error = response.json()
        assert set(error) == {"code", "message"} and error["message"], error
        if code is not None:
            assert error["code"] == code, error
        return error

    assert "reboot" in refused(409, "no_agent", action="reboot", args={})["message"]
    refused(409, "no_agent", action="echo", args={}, engine="celery")
    refused(409, "agent_offline", action="echo", args={}, agent_id=999999)
    refused(409, "unsupported_action", action="reboot", args={}, agent_id=agent.creds["agent_id"])

    assert "colour" in refused(400, None, action="echo", args={}, colour="blue")["message"]
    refused(400, "bad_wait", action="echo", args={}, wait=31)
    refused(400, "bad_wait", action="echo", args={}, wait=-1)
    refused(400, "bad_action", action="", args={})
    refused(400, "bad_action", action="x" * 65, args={})
    refused(400, None, action="echo", args=[1, 2])
    refused(400, None, args={})
    response = operator.post(COMMANDS, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and set(response.json()) == {"code", "message"}

    # the refusals left the agent and the collector working
    assert operator.post(COMMANDS, json={"action": "echo", "args": {}, "wait": 10}).json()["state"] == "succeeded"

    # an agent that went away cannot be addressed
    agent.stop()
    wait_agent_connected(apis["admin"], "commander", connected=False)
    refused(409, "no_agent", action="echo", args={})
    refused(409, "agent_offline", action="echo", args={}, agent_id=agent.creds["agent_id"])
