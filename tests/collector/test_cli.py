"""Must show: the ``z4j`` command line keeps its contract (PRODUCT.md §4):
--json output that parses, exit 0 only when all is well, and every failure
is one line on stderr with a non-zero exit (nothing half-printed on stdout)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import CompletedProcess

from tests.support.collector import mint_agent, mint_tokens, z4j
from tests.support.dbs import on_one_db
from tests.support.servers import free_port
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig


def run_many(calls: dict[str, tuple[tuple[str, ...], dict[str, str]]]) -> dict[str, CompletedProcess]:
    """Run independent ``z4j`` invocations side by side (each one starts a Python)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(z4j, *args, env=env, check=False) for key, (args, env) in calls.items()}
        return {key: future.result() for key, future in futures.items()}


def one_line_failure(proc: CompletedProcess, *words: str) -> str:
    """Assert the contract for failures and return the line."""
    assert proc.returncode != 0, f"expected a failure: {proc.stdout}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {proc.stderr!r}"
    assert lines[0].startswith("z4j: "), lines[0]
    assert proc.stdout == "", f"nothing on stdout on failure, got: {proc.stdout!r}"
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_server_commands_on_a_fresh_database(db_url):
    sqlite_file = Path(db_url[len("sqlite:///"):]) if db_url.startswith("sqlite") else None

    before = z4j("check", "--db", db_url, check=False)
    assert before.returncode == 1, before.stdout
    assert any(line.startswith("FAIL") and "run `z4j db upgrade`" in line for line in before.stdout.splitlines())
    assert sqlite_file is None or not sqlite_file.exists(), "check created the database"
    if sqlite_file is not None:  # a missing file is not a "reachable" database
        assert any(line.startswith("FAIL database") for line in before.stdout.splitlines()), before.stdout

    z4j("db", "upgrade", "--db", db_url)
    after = z4j("check", "--db", db_url, "--json")
    report = json.loads(after.stdout)
    assert report["ok"] is True
    assert {c["check"]: c["ok"] for c in report["checks"]} == {"config": True, "database": True, "migrations": True}

    first = json.loads(z4j("admin", "create-agent", "--name", "worker-7", "--json", "--db", db_url).stdout)
    assert first["name"] == "worker-7" and first["token"] and first["hmac_secret"]
    results = run_many({
        "again": (("admin", "create-agent", "--name", "worker-7", "--json", "--db", db_url), {}),
        "agent-nope": (("admin", "create-agent", "--project", "nope", "--name", "x", "--db", db_url), {}),
        "token-nope": (("admin", "create-token", "--project", "nope", "--db", db_url), {}),
        "status": (("status", "--json", "--db", db_url), {}),
    })
    one_line_failure(results["again"], "worker-7")
    one_line_failure(results["agent-nope"], "no project", "nope")
    one_line_failure(results["token-nope"], "no project", "nope")

    status = json.loads(results["status"].stdout)
    assert {"version", "database", "revision", "projects", "agents", "tasks", "task_events", "users"} <= set(status)
    assert status["database"] == ("postgresql" if db_url.startswith("postgresql") else "sqlite")
    assert (status["projects"], status["agents"], status["tasks"], status["task_events"]) == (1, 1, 0, 0)
    assert status["revision"] and status["revision"] in next(c["detail"] for c in report["checks"] if c["check"] == "migrations")


def test_bad_configuration_is_one_clear_line():
    dead_pg = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    results = run_many({
        "status": (("status", "--db", "mysql://x"), {}),
        "upgrade": (("db", "upgrade", "--db", "mysql://x"), {}),
        "serve": (("serve", "--db", "mysql://x"), {}),
        "check": (("check", "--db", "mysql://x"), {}),
        "port-check": (("check",), {"Z4J_PORT": "abc"}),
        "port-status": (("status",), {"Z4J_PORT": "abc"}),
        "god": (("admin", "create-token", "--role", "god"), {}),
        "dead-pg": (("check", "--db", dead_pg), {}),
    })
    for key in ("status", "upgrade", "serve"):
        one_line_failure(results[key], "mysql://x", "sqlite:///")
    one_line_failure(results["port-status"], "Z4J_PORT", "abc")
    one_line_failure(results["god"], "god", "viewer")

    # check is a report: its verdict is on stdout, and it exits 1
    for key, words in {"check": ("mysql://x",), "port-check": ("Z4J_PORT", "abc")}.items():
        proc = results[key]
        lines = proc.stdout.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stdout
        assert lines[0].startswith("FAIL config:") and all(w in lines[0] for w in words), lines[0]
    dead = results["dead-pg"]
    assert dead.returncode == 1
    assert any(line.startswith("FAIL database:") and "cannot reach" in line for line in dead.stdout.splitlines()), dead.stdout


@on_one_db()  # client commands: what the server answers on each database is in test_read_api.py
def test_client_commands_against_a_collector(collector):
    creds = mint_agent(collector, "cli-agent")
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine="bare")
    base = time.time() - 60
    for i in range(8):
        agent.task(f"cli-{i}", "received", ts=base + i, name="cli.export", queue="exports", args=[i])
        if i % 4 == 0:
            agent.task(f"cli-{i}", "failed", ts=base + i + 0.5, exception="IOError('tape jammed')")
        else:
            agent.task(f"cli-{i}", "succeeded", ts=base + i + 0.5, result=i * 2, runtime=0.25)
    agent.worker("cli-worker", "online", pid=9)
    agent.queue("exports", 3)
    assert agent.flush(30)
    agent.stop()

    token = mint_tokens(collector, "viewer")["viewer"]
    env = {"Z4J_API_TOKEN": token}
    url = ("--url", collector.url)
    results = run_many({
        "list": (("tasks", "list", "--json", *url), env),
        "failed": (("tasks", "list", "--json", "--state", "failure", *url), env),
        "limit": (("tasks", "list", "--json", "--limit", "5", *url), env),
        "show": (("tasks", "show", "cli-4", "--json", *url), env),
        "workers": (("workers", "list", "--json", *url), env),
        "queues": (("queues", "list", "--json", *url), env),
        "table": (("tasks", "list", *url), {**env, "COLUMNS": "200"}),
        "via-env": (("tasks", "list", "--json", "--search", "TAPE"), {**env, "Z4J_URL": collector.url}),
        "bad-token": (("tasks", "list", *url), {"Z4J_API_TOKEN": "z4jt_not-a-token"}),
        "no-token": (("tasks", "list", *url), {"Z4J_API_TOKEN": ""}),
        "bad-since": (("tasks", "list", "--since", "someday", *url), env),
        "missing": (("tasks", "show", "no-such-task", *url), env),
        "agents": (("agents", "list", *url), env),  # viewers see the fleet
        "unreachable": (("tasks", "list", "--url", f"http://127.0.0.1:{free_port()}"), env),
    })
    for key, proc in results.items():
        assert proc.returncode == 0 or key in {"bad-token", "no-token", "bad-since", "missing", "unreachable"}, (
            f"{key}: {proc.stderr}")

    listed = json.loads(results["list"].stdout)
    assert [t["task_id"] for t in listed] == [f"cli-{i}" for i in reversed(range(8))]
    assert {t["task_id"] for t in json.loads(results["failed"].stdout)} == {"cli-0", "cli-4"}
    assert [t["task_id"] for t in json.loads(results["limit"].stdout)] == [f"cli-{i}" for i in (7, 6, 5, 4, 3)]
    assert {t["task_id"] for t in json.loads(results["via-env"].stdout)} == {"cli-0", "cli-4"}
    shown = json.loads(results["show"].stdout)
    assert (shown["task_id"], shown["state"], shown["args"]) == ("cli-4", "failure", [4])
    assert [e["kind"] for e in shown["events"]] == ["received", "failed"]
    workers = json.loads(results["workers"].stdout)
    assert [(w["name"], w["state"], w["info"]) for w in workers] == [("cli-worker", "online", {"pid": 9})]
    assert [(q["name"], q["depth"]) for q in json.loads(results["queues"].stdout)] == [("exports", 3)]
    table = results["table"].stdout
    assert "cli.export" in table and "cli-7" in table and "failure" in table

    one_line_failure(results["bad-token"], "401")
    one_line_failure(results["no-token"], "401")
    one_line_failure(results["bad-since"], "400", "since")
    one_line_failure(results["missing"], "404", "no-such-task")
    assert "cli-agent" in results["agents"].stdout
    one_line_failure(results["unreachable"], "cannot reach")
