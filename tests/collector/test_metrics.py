"""Must show: /metrics scraped and parsed by prometheus_client's parser.

A real collector per database with Z4J_METRICS_TOKEN set; a bare agent sends
tasks, a queue depth and workers; the scrape is parsed with
prometheus_client.parser and its values checked against what was sent. The
token: refused without it, with a wrong one or another scheme (the route is
public when no token is set: tests/collector/test_rbac.py).
"""

from __future__ import annotations

import math
import os
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.collector import mint_agent, mint_tokens, module_collector, wait_agent_connected, wait_until
from z4j_agents import protocol as p
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig

DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]
TOKEN = "metrics-secret-0123456789"
ENGINE = "rq"
# task id -> (final kind, runtime)
TASKS = {"m-ok-1": ("succeeded", 0.02), "m-ok-2": ("succeeded", 0.3), "m-ok-3": ("succeeded", 4.0),
         "m-bad-1": ("failed", 1.5), "m-bad-2": ("failed", 1.5), "m-run-1": ("started", None)}


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def collector(request, tmp_path_factory):
    return module_collector(request, tmp_path_factory, "metrics", Z4J_METRICS_TOKEN=TOKEN)


def scrape(collector, token: str | None = TOKEN) -> dict[str, list]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = httpx.get(f"{collector.url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def value(families: dict, family: str, sample: str | None = None, **labels: str) -> float | None:
    for s in families[family].samples:
        if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


@pytest.fixture(scope="module")
def sent(collector):
    """What one agent reported; waits until the collector has it all."""
    creds = mint_agent(collector, "metrics-agent")
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine=ENGINE, start=False)
    agent.on_command("echo", lambda args: args)
    agent.runtime.start()
    admin = collector.api(mint_tokens(collector, "admin")["admin"])
    wait_agent_connected(admin, "metrics-agent")
    for task_id, (kind, runtime) in TASKS.items():
        agent.task(task_id, "received", name="jobs.m", queue="default")
        agent.task(task_id, "started", worker="w-up")
        if kind != "started":
            agent.task(task_id, kind, runtime=runtime)
    agent.queue("default", 7)
    agent.worker("w-up", "online")
    agent.worker("w-gone", "offline")
    assert agent.flush(30)
    reply = admin.post("/api/v1/projects/default/commands", json={"action": "echo", "args": {}, "wait": 10})
    assert reply.status_code == 202 and reply.json()["state"] == "succeeded", reply.text
    yield agent
    agent.stop()


def test_metrics_parse_and_match_what_was_ingested(collector, sent):
    m = scrape(collector)
    assert value(m, "z4j_collector_info", database=("postgresql" if "postgres" in collector.db_url else "sqlite")) == 1

    tasks = {s.labels["state"]: s.value for s in m["z4j_tasks"].samples
             if s.labels["project"] == "default" and s.labels["engine"] == ENGINE}
    assert tasks == {"success": 3, "failure": 2, "started": 1}
    assert m["z4j_tasks"].type == "gauge"

    assert value(m, "z4j_queue_depth", project="default", engine=ENGINE, queue="default") == 7
    assert value(m, "z4j_worker_up", project="default", engine=ENGINE, worker="w-up") == 1
    assert value(m, "z4j_worker_up", project="default", engine=ENGINE, worker="w-gone") == 0
    assert value(m, "z4j_agents_connected", project="default") == 1
    assert value(m, "z4j_commands_total", project="default", action="echo", state="succeeded") == 1

    # the histogram: five finished tasks reported a runtime (this process saw them all)
    hist = m["z4j_task_runtime_seconds"]
    assert hist.type == "histogram"
    labels = {"project": "default", "engine": ENGINE}
    runtimes = [r for _, r in TASKS.values() if r is not None]
    assert value(m, "z4j_task_runtime_seconds", "z4j_task_runtime_seconds_count", **labels) == len(runtimes)
    assert value(m, "z4j_task_runtime_seconds", "z4j_task_runtime_seconds_sum", **labels) == pytest.approx(sum(runtimes))
    buckets = {float(s.labels["le"]): s.value for s in hist.samples
               if s.name == "z4j_task_runtime_seconds_bucket" and s.labels["engine"] == ENGINE}
    for bound, count in buckets.items():
        assert count == sum(1 for r in runtimes if r <= bound), bound
    assert buckets[math.inf] == len(runtimes)

    # ingest counters (parsed as counters: the family name drops _total)
    events = value(m, "z4j_ingest_events", "z4j_ingest_events_total")
    assert m["z4j_ingest_events"].type == "counter" and events >= 6 * 2 + 5 + 3
    assert value(m, "z4j_ingest_batches", "z4j_ingest_batches_total") >= 1
    assert value(m, "z4j_ingest_failures", "z4j_ingest_failures_total") == 0
    lag = value(m, "z4j_ingest_lag_seconds")
    assert lag is not None and 0 <= lag < 600
    assert value(m, "z4j_ingest_queue_batches") >= 0


def test_counters_move_and_resent_events_are_not_counted_twice(collector, sent):
    before = scrape(collector)
    event = p.TaskEvent(id=p.new_id(), task_id="m-ok-4", engine=ENGINE, kind="succeeded", ts=time.time(),
                        name="jobs.m", runtime=0.001)
    sent.runtime.emit(event)
    assert sent.flush(30)
    sent.runtime.emit(event)  # resent, as after a reconnect: a duplicate
    assert sent.flush(30)
    after = wait_until(lambda: (m := scrape(collector)) and value(
        m, "z4j_tasks", project="default", engine=ENGINE, state="success") == 4 and m, what="the fourth success")
    labels = {"project": "default", "engine": ENGINE}
    count = "z4j_task_runtime_seconds_count"
    assert value(after, "z4j_task_runtime_seconds", count, **labels) == \
        value(before, "z4j_task_runtime_seconds", count, **labels) + 1
    assert value(after, "z4j_task_runtime_seconds", "z4j_task_runtime_seconds_bucket", le="0.005", **labels) == 1
    assert value(after, "z4j_ingest_events", "z4j_ingest_events_total") > \
        value(before, "z4j_ingest_events", "z4j_ingest_events_total")
    assert value(after, "z4j_ingest_duplicates", "z4j_ingest_duplicates_total") == \
        value(before, "z4j_ingest_duplicates", "z4j_ingest_duplicates_total") + 1


def test_the_token_is_required_when_set(collector):
    url = f"{collector.url}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        response = httpx.get(url, headers=headers, timeout=30)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["code"] == "bad_metrics_token"
    # a user's valid API token is not the metrics token
    admin = mint_tokens(collector, "admin")["admin"]
    assert httpx.get(url, headers={"Authorization": f"Bearer {admin}"}, timeout=30).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"bearer {TOKEN}"}, timeout=30).status_code == 200


def test_exposition_escapes_odd_label_values():
    from z4j_collector.services.metrics import Family, RuntimeHistogram, render

    odd = 'q "1"\\ back\nslash'
    family = Family("z4j_queue_depth", "gauge", "help with \\ and\nnewline")
    family.add(3, project="p", engine="e", queue=odd)
    family.add(float("nan"), project="p", engine="e", queue="nan")
    parsed = {f.name: f for f in text_string_to_metric_families(render([family]))}["z4j_queue_depth"]
    assert parsed.samples[0].labels["queue"] == odd and parsed.samples[0].value == 3
    assert math.isnan(parsed.samples[1].value)

    hist = RuntimeHistogram(buckets=(1.0, 2.0))
    hist.observe_many([(1, "e", 0.5), (1, "e", 1.0), (1, "e", 3.0), (1, "e", float("nan")), (1, "e", -1.0)])
    assert hist.snapshot() == {(1, "e"): ([2, 2, 3], 4.5)}  # le=1 is inclusive; nonsense is skipped
