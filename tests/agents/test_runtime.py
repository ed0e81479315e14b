"""The agent runtime as a guest: never blocks, never raises, counts what it
drops, reconnects and delivers once the collector is there."""

from __future__ import annotations

import time

from tests.support.collector import Collector, mint_agent, mint_tokens
from z4j_agents import protocol as p
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig


def test_overflow_is_counted_reported_and_the_rest_delivered(db_url, tmp_path):
    collector = Collector(db_url, tmp_path)  # port chosen, not yet listening
    creds = mint_agent(collector, "guest")
    config = AgentConfig.from_env(collector.agent_env(creds), buffer_max=100, backoff_initial=0.1, backoff_max=0.5)
    agent = Agent(config, engine="bare")
    started = time.monotonic()
    for i in range(150):
        agent.task(f"o-{i}", "received", name="overflow.task", args=[object(), {1, 2}])  # odd args too
    assert time.monotonic() - started < 5, "emit blocked while the collector was down"
    assert agent.runtime.dropped == 50
    assert not agent.runtime.connected.is_set()
    collector.start()
    try:
        assert agent.flush(30), agent.runtime.last_error
        agent.stop()
        api = collector.api(mint_tokens(collector, "admin")["admin"])
        tasks = api.get("/api/v1/projects/default/tasks", params={"limit": 1000}).json()["tasks"]
        assert len(tasks) == 100
        [row] = [a for a in api.get("/api/v1/projects/default/agents").json() if a["name"] == "guest"]
        assert row["dropped_events"] == 50
        detail = api.get("/api/v1/projects/default/tasks/o-0").json()
        assert detail["args"][0].startswith("<object object")  # repr, not a crash
    finally:
        collector.stop()


def test_bad_calls_never_raise_into_the_host():
    config = AgentConfig(brain_url="ws://127.0.0.1:9/agent/ws", token="t", hmac_secret="s")
    agent = Agent(config, engine="bare", start=False)
    agent.task("x", "exploded")                     # unknown kind: logged, dropped
    agent.task("x", "received", no_such_field=1)    # unknown field: logged, dropped
    agent.task("x", "received", ts="yesterday")     # wrong type: still never raises
    agent.runtime.emit(None)                        # garbage: contained
    assert len(agent.runtime._queue) == 0


def test_refused_agent_keeps_retrying_and_says_why(collector):
    config = AgentConfig(brain_url=collector.url.replace("http", "ws") + "/agent/ws", token="z4ja_unknown",
                         hmac_secret="s", backoff_initial=0.1, backoff_max=0.2)
    agent = Agent(config, engine="bare")
    agent.task("r", "received")
    deadline = time.monotonic() + 30
    while "unknown_token" not in (agent.runtime.last_error or "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "unknown_token" in (agent.runtime.last_error or "")
    assert agent.runtime.pending == 1  # held, not lost, not acked
    agent.stop(timeout=0.2)


def test_time_ordered_ids_are_unique():
    before = int(time.time() * 1000)
    ids = [p.new_id() for _ in range(50_000)]
    after = int(time.time() * 1000)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 for i in ids)
    # milliseconds since the epoch first (the event partitions are ranges of it), then random bits
    assert before <= int(ids[0][:12], 16) <= int(ids[-1][:12], 16) <= after


def test_forked_child_starts_empty_and_keeps_the_parents_buffer_apart():
    import os

    config = AgentConfig(brain_url="ws://127.0.0.1:9/agent/ws", token="t", hmac_secret="s", buffer_max=1)
    agent = Agent(config, engine="bare", start=False)
    agent.queue("q", 1)
    agent.queue("q", 2)  # over the bound: dropped in the parent
    assert (agent.runtime.dropped, len(agent.runtime._queue)) == (1, 1)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports what it inherited, then leaves at once
        os.write(write, f"{agent.runtime.dropped},{len(agent.runtime._queue)}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 100) == b"0,0"
    assert (agent.runtime.dropped, len(agent.runtime._queue)) == (1, 1)


def test_a_steady_trickle_goes_in_batches_not_a_frame_per_ack(collector):
    """Events that come one by one leave together: a batch when it is full, or once per
    flush_interval, or on flush; an ack alone sends nothing (it once sent whatever had gathered:
    a frame, a signature and a commit for every few events, at the round trip's pace)."""
    creds = mint_agent(collector, "trickle")
    config = AgentConfig.from_env(collector.agent_env(creds))
    agent = Agent(config, engine="bare")
    try:
        assert agent.runtime.connected.wait(30), agent.runtime.last_error
        before = agent.runtime.sent_batches
        started = time.monotonic()
        for i in range(400):
            agent.task(f"tr-{i}", "received", name="trickle.task")
            time.sleep(0.002)
        assert agent.flush(30), agent.runtime.last_error
        elapsed = time.monotonic() - started
        batches = agent.runtime.sent_batches - before
        assert 1 <= batches <= elapsed / config.flush_interval + 3, (batches, elapsed)
        api = collector.api(mint_tokens(collector, "admin")["admin"])
        tasks = api.get("/api/v1/projects/default/tasks", params={"limit": 1000, "name": "trickle.task"}).json()
        assert len(tasks["tasks"]) == 400
    finally:
        agent.stop()


def test_flush_and_stop_wait_for_the_batch_being_built(collector):
    """A batch's events leave the queue before the batch is sent and waits for its ack: flush
    (and stop, which flushes) must still count them, or a worker shutting down reports
    everything delivered and exits while its last events, its offline among them, are in hand."""
    creds = mint_agent(collector, "in-hand")
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine="bare")
    runtime = agent.runtime
    try:
        assert runtime.connected.wait(30), runtime.last_error
        prepare = runtime._prepare

        def slow(event):
            time.sleep(0.5)  # a batch that takes a while to redact
            return prepare(event)

        runtime._prepare = slow
        agent.task("in-hand-1", "received", name="slow.task")
        assert agent.flush(30), runtime.last_error
        assert runtime.acked_events == 1 and runtime.pending == 0
        agent.task("in-hand-2", "received", name="slow.task")
        assert agent.stop(30)
        assert runtime.acked_events == 2
        api = collector.api(mint_tokens(collector, "admin")["admin"])
        tasks = api.get("/api/v1/projects/default/tasks", params={"name": "slow.task"}).json()["tasks"]
        assert sorted(t["task_id"] for t in tasks) == ["in-hand-1", "in-hand-2"]
    finally:
        agent.stop()
