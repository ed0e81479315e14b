"""Must show: every filter of the task list selects exactly the designed
tasks (on SQLite and PostgreSQL alike), bad parameters get a clear 400, and
the other read routes (detail, counts, workers, queues, agents, health,
OpenAPI) answer from what real agents reported."""

from __future__ import annotations

import base64
import csv
import io
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.support.collector import mint_agent, mint_tokens, wait_agent_connected
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig

TASKS = "/api/v1/projects/default/tasks"
HOUR, DAY = 3600.0, 86400.0


def last_friday(now: float) -> float:
    """Midnight UTC of the last Friday at least three days before today, so no task
    designed relative to now (the oldest is two days old) falls on that Friday."""
    latest = datetime.fromtimestamp(now, timezone.utc).date() - timedelta(days=3)
    friday = latest - timedelta(days=(latest.weekday() - 4) % 7)
    return datetime(friday.year, friday.month, friday.day, tzinfo=timezone.utc).timestamp()


@dataclass
class Spec:
    """One designed task: what it is, and the events that make it so."""

    task_id: str
    engine: str
    name: str
    queue: str
    worker: str | None
    state: str
    created: float
    events: list[tuple[str, float, dict]] = field(default_factory=list)


def design(now: float, friday: float) -> list[Spec]:
    def run(spec: Spec, *rest: tuple[str, float, dict], args=None, kwargs=None) -> Spec:
        first = {"name": spec.name, "queue": spec.queue}
        if args is not None:
            first["args"] = args
        if kwargs is not None:
            first["kwargs"] = kwargs
        spec.events = [("received", spec.created, first), *rest]
        return spec

    t = now - HOUR
    tue = friday - 3 * DAY + 12 * HOUR
    return [
        run(Spec("charge-1", "bare", "billing.charge", "billing", "w1", "success", t),
            ("started", t + 10, {"worker": "w1"}),
            ("retried", t + 20, {"exception": "TimeoutError('gateway slow')", "retries": 1}),
            ("started", t + 30, {"worker": "w1"}),
            ("succeeded", t + 40, {"result": {"receipt": "R-777"}, "runtime": 10.0}),
            args=[101, "EUR"], kwargs={"customer": "cus_Quokka"}),
        run(Spec("refund-fri", "bare", "billing.refund", "billing", "w2", "failure", friday + 10 * HOUR),
            ("started", friday + 10 * HOUR + 1, {"worker": "w2"}),
            ("failed", friday + 10 * HOUR + 2, {"exception": "RefundError('card Zorblax declined')",
                                                 "traceback": "Traceback (most recent call last):\nRefundError"})),
        run(Spec("report-fri", "bare", "reports.build", "reports", "w1", "success", friday + 11 * HOUR),
            ("started", friday + 11 * HOUR + 1, {"worker": "w1"}),
            ("succeeded", friday + 11 * HOUR + 5, {"result": 3})),
        run(Spec("report-tue", "bare", "reports.build", "reports", "w2", "failure", tue),
            ("started", tue + 1, {"worker": "w2"}),
            ("failed", tue + 2, {"exception": "KeyError('month')"})),
        run(Spec("email-1", "bare", "emails.send", "default", None, "revoked", now - 600),
            ("revoked", now - 590, {}), kwargs={"to": "Alice@Example.COM"}),
        run(Spec("lookalike", "bare", "billingreport.daily", "reports", "w2", "success", now - 2 * DAY),
            ("started", now - 2 * DAY + 1, {"worker": "w2"}),
            ("succeeded", now - 2 * DAY + 2, {})),
        run(Spec("custom-1", "custom", "billing.charge", "billing", "cw1", "success", now - 5 * HOUR),
            ("started", now - 5 * HOUR + 1, {"worker": "cw1"}),
            ("succeeded", now - 5 * HOUR + 2, {"result": {"ok": True}}), args=["Invoice-42"]),
        run(Spec("custom-2", "custom", "imports.csv", "default", "cw1", "started", now - 1800),
            ("started", now - 1799, {"worker": "cw1"})),
        run(Spec("pct", "bare", "text.pct", "default", None, "received", now - 1200), args=["50% off", "a_b"]),
        Spec("nopct", "bare", "text.pct", "default", None, "pending", now - 1500,
             [("sent", now - 1500, {"name": "text.pct", "queue": "default", "args": ["50 off", "axb"]})]),
    ]


def emit(agent: Agent, spec: Spec) -> None:
    for kind, ts, fields in spec.events:
        agent.task(spec.task_id, kind, ts=ts, **fields)


def ids(api: httpx.Client, **params) -> set[str]:
    response = api.get(TASKS, params={"limit": 1000, **params})
    assert response.status_code == 200, f"{params}: {response.text}"
    page = response.json()
    assert page["next_cursor"] is None
    return {t["task_id"] for t in page["tasks"]}


def assert_error(response: httpx.Response, code: str, *words: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == code, body
    for word in words:
        assert word in body["message"], body


@pytest.fixture
def world(collector):
    """Two agents (engines bare and custom) that reported the designed tasks."""
    now = time.time()
    friday = last_friday(now)
    specs = design(now, friday)
    agents = {}
    for engine in ("bare", "custom"):
        creds = mint_agent(collector, f"{engine}-agent")
        agents[engine] = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine=engine)
    for spec in specs:
        emit(agents[spec.engine], spec)
    for agent in agents.values():
        assert agent.flush(30), agent.runtime.last_error
    yield now, friday, specs, agents
    for agent in agents.values():
        agent.stop()


def test_every_task_filter(collector, world):
    now, friday, specs, _ = world
    api = collector.api(mint_tokens(collector, "viewer")["viewer"])

    def where(pred) -> set[str]:
        return {s.task_id for s in specs if pred(s)}

    everything = where(lambda s: True)
    assert ids(api) == everything

    # state, multi and comma-separated (case and blanks forgiven); not_state
    assert ids(api, state="failure") == where(lambda s: s.state == "failure") == {"refund-fri", "report-tue"}
    assert ids(api, state="failure,revoked") == where(lambda s: s.state in ("failure", "revoked"))
    assert ids(api, state="Failure, REVOKED") == where(lambda s: s.state in ("failure", "revoked"))
    assert ids(api, state="pending,received,started") == {"nopct", "pct", "custom-2"}
    assert ids(api, not_state="success") == where(lambda s: s.state != "success")
    assert ids(api, not_state="success,failure") == where(lambda s: s.state not in ("success", "failure"))
    assert ids(api, state="success", not_state="success") == set()

    # name: exact, and a prefix with a trailing *
    assert ids(api, name="billing.charge") == {"charge-1", "custom-1"}
    assert ids(api, name="billing.*") == {"charge-1", "custom-1", "refund-fri"}
    assert ids(api, name="billing*") == {"charge-1", "custom-1", "refund-fri", "lookalike"}
    assert ids(api, name="billing") == set()

    # queue, worker, engine
    for queue in ("billing", "reports", "default"):
        assert ids(api, queue=queue) == where(lambda s: s.queue == queue)
    for worker in ("w1", "w2", "cw1"):
        assert ids(api, worker=worker) == where(lambda s: s.worker == worker)
    for engine in ("bare", "custom"):
        assert ids(api, engine=engine) == where(lambda s: s.engine == engine)
    assert ids(api, queue="nope") == ids(api, worker="nope") == ids(api, engine="nope") == set()

    # time: epoch, ISO 8601 (Z, offset, naive = UTC) and ages
    on_friday = where(lambda s: friday <= s.created < friday + DAY)
    assert on_friday == {"refund-fri", "report-fri"}
    assert ids(api, since=str(friday), until=str(friday + DAY)) == on_friday
    day = datetime.fromtimestamp(friday, timezone.utc)
    next_day = day + timedelta(days=1)
    assert ids(api, since=day.strftime("%Y-%m-%dT%H:%M:%SZ"), until=next_day.isoformat()) == on_friday
    assert ids(api, since=day.strftime("%Y-%m-%dT%H:%M:%S"), until=next_day.strftime("%Y-%m-%d")) == on_friday
    recent = where(lambda s: s.created >= now - 2 * HOUR)
    assert recent == {"charge-1", "email-1", "custom-2", "pct", "nopct"}
    assert ids(api, since="2h") == recent
    assert ids(api, until="2h") == everything - recent
    assert ids(api, since="90m", until="15m") == {"charge-1", "custom-2", "pct", "nopct"}
    assert ids(api, since="1w") == where(lambda s: s.created >= now - 7 * DAY)

    # free text over args, kwargs, result and exception; case-insensitive; % and _ are literal
    assert ids(api, search="zorblax") == {"refund-fri"}  # exception
    assert ids(api, search="QUOKKA") == {"charge-1"}  # kwargs
    assert ids(api, search="r-777") == {"charge-1"}  # result
    assert ids(api, search="invoice-42") == {"custom-1"}  # args
    assert ids(api, search="alice@example.com") == {"email-1"}
    assert ids(api, search="50%") == {"pct"}
    assert ids(api, search="a_b") == {"pct"}
    assert ids(api, search="no such text anywhere") == set()

    # combinations: "what failed last Friday", and friends
    assert ids(api, state="failure", since=str(friday), until=str(friday + DAY)) == {"refund-fri"}
    assert ids(api, engine="bare", queue="billing", state="success") == {"charge-1"}
    assert ids(api, name="billing.*", search="zorblax") == {"refund-fri"}
    assert ids(api, name="reports.build", not_state="failure", worker="w1") == {"report-fri"}

    # limit bounds, one page at a time
    page = api.get(TASKS, params={"limit": 1}).json()
    assert len(page["tasks"]) == 1 and page["next_cursor"]
    assert page["tasks"][0]["task_id"] == max(specs, key=lambda s: s.created).task_id
    second = api.get(TASKS, params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert second["tasks"][0]["task_id"] == sorted(specs, key=lambda s: s.created)[-2].task_id
    assert len(api.get(TASKS, params={"limit": 1000}).json()["tasks"]) == len(specs)


def test_bad_list_parameters_get_a_clear_400(collector):
    api = collector.api(mint_tokens(collector, "viewer")["viewer"])
    assert_error(api.get(TASKS, params={"limit": "ten"}), "invalid_request", "limit")
    assert_error(api.get(TASKS, params={"cursor": "not a cursor!"}), "bad_cursor")
    forged = base64.urlsafe_b64encode(b'{"created_at": 1}').decode().rstrip("=")
    assert_error(api.get(TASKS, params={"cursor": forged}), "bad_cursor")
    assert_error(api.get(TASKS, params={"state": "done"}), "bad_state", "done")
    assert_error(api.get(TASKS, params={"state": "failure,exploded"}), "bad_state", "exploded")
    assert_error(api.get(TASKS, params={"not_state": "nope"}), "bad_state", "nope")
    # the text index is made of trigrams: a shorter text would read every task
    assert_error(api.get(TASKS, params={"search": "ab"}), "bad_search", "at least 3 characters")
    assert_error(api.get(TASKS, params={"search": " x "}), "bad_search", "at least 3 characters")
    assert_error(api.get(TASKS, params={"since": "last friday"}), "bad_time", "since")
    assert_error(api.get(TASKS, params={"until": "2x"}), "bad_time", "until")
    assert_error(api.get(TASKS, params={"since": "2024-13-45"}), "bad_time", "since")
    assert_error(api.get(TASKS, params={"format": "xml"}), "bad_format", "xml")
    for limit in (0, 1001, -5):
        response = api.get(TASKS, params={"limit": limit})
        assert response.status_code == 400, response.text
        body = response.json()
        assert set(body) == {"code", "message"} and "limit" in body["message"], body
    # not a time either, though float() accepts them
    for value in ("nan", "inf", "-inf", "1e400"):
        assert_error(api.get(TASKS, params={"since": value}), "bad_time", "since")
    # a clear message names the parameter and its bounds, without Python reprs
    for limit in (0, 1001):
        message = api.get(TASKS, params={"limit": limit}).json()["message"]
        assert "1000" in message or ">= 1" in message, message
        assert "<ParamType" not in message and "[{'" not in message, f"not a clear message: {message}"


def test_export_detail_counts_and_fleet(collector, world):
    now, friday, specs, agents = world
    tokens = mint_tokens(collector, "viewer", "admin")
    api, admin = collector.api(tokens["viewer"]), collector.api(tokens["admin"])

    # CSV export: a header row, then one row per task, honouring filters
    response = api.get(TASKS, params={"format": "csv", "state": "failure"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    header, body = rows[0], rows[1:]
    assert {"task_id", "name", "state", "queue", "worker", "engine", "exception", "created_at"} <= set(header)
    exported = [dict(zip(header, row)) for row in body]
    assert {r["task_id"] for r in exported} == {"refund-fri", "report-tue"}
    assert {r["state"] for r in exported} == {"failure"}
    assert "Zorblax" in next(r["exception"] for r in exported if r["task_id"] == "refund-fri")
    empty = api.get(TASKS, params={"format": "csv", "state": "lost"})
    assert list(csv.reader(io.StringIO(empty.text))) == [header]

    # detail: fields and the event timeline in order
    detail = api.get(f"{TASKS}/charge-1").json()
    assert [e["kind"] for e in detail["events"]] == ["received", "started", "retried", "started", "succeeded"]
    assert [e["ts"] for e in detail["events"]] == sorted(e["ts"] for e in detail["events"])
    assert (detail["state"], detail["engine"], detail["name"], detail["queue"]) == (
        "success", "bare", "billing.charge", "billing")
    assert detail["retries"] == 1 and detail["runtime"] == 10.0
    assert detail["args"] == [101, "EUR"] and detail["kwargs"] == {"customer": "cus_Quokka"}
    assert detail["result"] == {"receipt": "R-777"}
    failed = api.get(f"{TASKS}/refund-fri").json()
    assert failed["state"] == "failure" and "Zorblax" in failed["exception"]
    assert failed["traceback"].startswith("Traceback")
    custom = api.get(f"{TASKS}/custom-1", params={"engine": "custom"}).json()
    assert (custom["engine"], custom["args"]) == ("custom", ["Invoice-42"])
    missing = api.get(f"{TASKS}/no-such-task")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert api.get(f"{TASKS}/charge-1", params={"engine": "custom"}).status_code == 404

    # counts per state
    expected: dict[str, int] = {}
    for spec in specs:
        expected[spec.state] = expected.get(spec.state, 0) + 1
    assert api.get(f"{TASKS}/counts").json() == expected

    # workers and queues, as the agent reported them (the newest report wins)
    bare = agents["bare"]
    bare.worker("w1", "online", pid=1)
    bare.worker("w2", "online", pid=2)
    bare.worker("w2", "offline")  # same batch as its online report
    bare.queue("q1", 7)
    bare.queue("q2", 1)
    bare.queue("q2", 0)
    assert bare.flush(30)
    bare.worker("w1", "heartbeat")  # a later batch, without facts
    assert bare.flush(30)
    workers = {w["name"]: w for w in api.get("/api/v1/projects/default/workers").json()}
    assert set(workers) == {"w1", "w2"}
    assert (workers["w1"]["engine"], workers["w1"]["state"], workers["w1"]["info"]) == ("bare", "online", {"pid": 1})
    assert workers["w2"]["state"] == "offline"
    assert workers["w1"]["first_seen_at"] < workers["w1"]["last_seen_at"]
    queues = {q["name"]: q for q in api.get("/api/v1/projects/default/queues").json()}
    assert {name: q["depth"] for name, q in queues.items()} == {"q1": 7, "q2": 0}
    assert queues["q1"]["engine"] == "bare"

    # agents (admin): connected while running, not after they stop
    listed = {a["name"]: a for a in admin.get("/api/v1/projects/default/agents").json()}
    assert set(listed) == {"bare-agent", "custom-agent"}
    assert all(a["connected"] for a in listed.values()), listed
    assert listed["custom-agent"]["engines"] == ["custom"]
    agents["custom"].stop()
    wait_agent_connected(admin, "custom-agent", connected=False)

    # health and the OpenAPI document are public
    with httpx.Client(base_url=collector.url) as anonymous:
        health = anonymous.get("/health").json()
        assert health["status"] == "ok"
        assert health["database"] == ("postgresql" if collector.db_url.startswith("postgresql") else "sqlite")
        assert health["ingest"]["events"] >= sum(len(s.events) for s in specs)
        schema = anonymous.get("/api/v1/schema/openapi.json")
        assert schema.status_code == 200
        assert "/api/v1/projects/{project}/tasks" in schema.json()["paths"]

    # A worker's facts are kept when a later report carries none, whether that
    # report comes in a later batch (w1, above) or in the same one (w2).
    assert workers["w2"]["info"] == {"pid": 2}, "facts of an earlier report in the same batch were dropped"


def test_terminal_states_are_never_demoted(collector):
    creds = mint_agent(collector, "late")
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine="bare")
    api = collector.api(mint_tokens(collector, "viewer")["viewer"])
    t = time.time() - 600

    def state(task_id: str) -> str:
        return api.get(f"{TASKS}/{task_id}").json()["state"]

    # Each step is flushed on its own, so the store's upsert (not only the
    # in-batch fold) has to keep the precedence.
    steps = [
        [("late-start", "received", t - 2), ("late-start", "succeeded", t)],
        [("late-start", "started", t - 1)],  # late, older than the success
        [("start-after", "received", t), ("start-after", "succeeded", t + 1)],
        [("start-after", "started", t + 5)],  # late, but *newer* than the success
        [("lost-then-failed", "received", t), ("lost-then-failed", "lost", t + 60)],
        [("lost-then-failed", "failed", t + 90)],
        [("failed-then-lost", "received", t), ("failed-then-lost", "failed", t + 5)],
        [("failed-then-lost", "lost", t + 60)],
        [("retry-then-ok", "received", t), ("retry-then-ok", "started", t + 1), ("retry-then-ok", "retried", t + 2)],
        [("retry-then-ok", "started", t + 3), ("retry-then-ok", "succeeded", t + 4)],
    ]
    for step in steps:
        for task_id, kind, ts in step:
            agent.task(task_id, kind, ts=ts, name="late.task", **({"exception": "RuntimeError('x')"} if kind == "failed" else {}))
        assert agent.flush(30), agent.runtime.last_error
    # and the same within one batch
    agent.task("one-batch", "succeeded", ts=t + 1, name="late.task")
    agent.task("one-batch", "started", ts=t + 9, name="late.task")
    agent.task("one-batch", "received", ts=t, name="late.task")
    assert agent.flush(30)
    agent.stop()

    assert state("late-start") == "success"
    assert state("start-after") == "success"
    assert state("lost-then-failed") == "failure"
    assert state("failed-then-lost") == "failure"
    assert state("retry-then-ok") == "success"
    assert state("one-batch") == "success"
    # the late events are still in the timeline, in time order
    assert [e["kind"] for e in api.get(f"{TASKS}/start-after").json()["events"]] == ["received", "succeeded", "started"]
    assert ids(api, state="success", name="late.task") == {"late-start", "start-after", "retry-then-ok", "one-batch"}
    assert ids(api, state="failure", name="late.task") == {"lost-then-failed", "failed-then-lost"}
    assert ids(api, state="lost", name="late.task") == set()
