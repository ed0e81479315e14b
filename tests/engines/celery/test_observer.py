"""Observer mode (`z4j agent celery -A proj`): real `celery worker` processes WITHOUT the agent
(no Z4J_* in their environment), real observer processes, a real collector, on both databases.

Per database: one collector; a worker started with -E and three observers in turn (lease,
standby, takeover when the holder gets SIGTERM and when it is SIGKILLed); then a worker without
-E: the warning, then --enable-events.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.engines.celery.conftest import BOOTSTRAP_LINE, Stack, Worker, celery_env, producer
from tests.support.collector import Z4J, Collector, mint_agent, module_collector, wait_agent_connected, wait_until
from tests.support.engine import ROOT, WorkerProcess, db_text

pytestmark = pytest.mark.engine("celery")

DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]
P = "/api/v1/projects/default"
LEASE_KEY = "z4j:observer:lease:celeryev"
EVENT_QUEUE = "celeryev.z4j-observer-celeryev"
WARNING = "run tasks but send no task events"


class Observer(Worker):
    """One `z4j agent celery -A tests.engines.celery.proj` process (a Worker's log, wait_log, stop and kill)."""

    def __init__(self, site: Site, agent: str, *args: str, **env: str) -> None:
        creds = mint_agent(site.collector, agent)
        self.agent_id = creds["agent_id"]
        self.name = agent
        env = celery_env(site.redis_url, site.collector.agent_env(creds), Z4J_CELERY_HEARTBEAT_S="1",
                         Z4J_CELERY_QUEUE_DEPTH_S="0.5", Z4J_OBSERVER_LEASE_TTL_S="5", **env)
        WorkerProcess.__init__(self, [*Z4J, "agent", "celery", "-A", "tests.engines.celery.proj", *args], env,
                               site.tmp / f"observer-{agent}-{uuid.uuid4().hex[:6]}.log", "observer")

    def start(self, ready_timeout: float = 0) -> Observer:
        """Started, not waited for: each test waits for what it expects of the observer."""
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=open(self.log_path, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        return self


class Site:
    """A collector on a fresh database and the session's Redis, emptied."""

    def __init__(self, collector: Collector, redis_url: str, db_url: str, tmp: Path) -> None:
        self.collector = collector
        self.redis_url = redis_url
        self.db_url = db_url
        self.tmp = tmp
        self.stack = Stack(collector, redis_url)
        self.app = producer(redis_url)
        self.cleanup: list = []
        self.workers: dict[str, Worker] = {}
        self.observers: list[Observer] = []

    def worker(self, name: str, *, events: bool) -> Worker:
        """A prefork worker with no z4j in it, sending heartbeats (and task events with ``events``)."""
        worker = Worker(celery_env(self.redis_url), self.tmp, pool="prefork", concurrency=2, name=name)
        worker.cmd.remove("--without-heartbeat")
        if events:
            worker.cmd.append("-E")
        self.cleanup.append(worker.kill)
        self.workers[name] = worker
        return worker.start()

    def observer(self, agent: str, *args: str, **env: str) -> Observer:
        observer = Observer(self, agent, *args, **env)
        self.cleanup.append(observer.kill)
        self.observers.append(observer)
        return observer.start()

    def redis(self):
        from redis import Redis

        return Redis.from_url(self.redis_url)

    def event_agents(self, task_ids: list[str]) -> dict[str, list[tuple[str, int]]]:
        """task id -> [(kind, agent_id)] of its stored events, as the collector wrote them."""
        marks = ", ".join("?" for _ in task_ids)
        sql = f"SELECT task_id, kind, agent_id, ts FROM task_events WHERE engine = 'celery' AND task_id IN ({marks})"
        if self.db_url.startswith("sqlite"):
            conn = sqlite3.connect(self.db_url.split("sqlite:///", 1)[1])
            try:
                rows = conn.execute(sql, task_ids).fetchall()
            finally:
                conn.close()
        else:
            import psycopg

            with psycopg.connect(self.db_url) as conn:
                rows = conn.execute(sql.replace("?", "%s"), task_ids).fetchall()
        out: dict[str, list[tuple[str, int]]] = {}
        for task_id, kind, agent_id, _ in sorted(rows, key=lambda r: r[3]):
            out.setdefault(task_id, []).append((kind, agent_id))
        return out


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def site(request, redis_server, tmp_path_factory):
    redis_server.flushall()
    collector = module_collector(request, tmp_path_factory, "observer")
    s = Site(collector, redis_server.url, collector.db_url, collector.log_path.parent)
    try:
        yield s
    finally:
        for stop in reversed(s.cleanup):
            stop()


@pytest.fixture(autouse=True)
def observers_end_with_their_test(site):
    """An observer a test started does not outlive it, even when the test fails:
    left running, it would hold the lease and stand the next test's observer by."""
    started = len(site.observers)
    yield
    ended = site.observers[started:]
    for observer in ended:
        observer.kill()
    holder = site.redis().get(LEASE_KEY) or b""
    if any(holder.startswith(f"{observer.name} ".encode()) for observer in ended):
        site.redis().delete(LEASE_KEY)  # a killed leader's lease would stand the next one by for its TTL


@pytest.fixture(scope="module")
def observed(site):
    """A worker started with -E and the first observer, leading."""
    worker = site.worker("obse", events=True)
    first = site.observer("obs1")
    first.wait_log("z4j observer: consuming events")
    return worker, first


def test_tasks_of_an_unchanged_worker_appear_through_the_observer(site, observed):
    worker, first = observed
    stack, app = site.stack, site.app
    assert BOOTSTRAP_LINE not in worker.log()  # no agent in the worker: everything below is the observer's

    ok = app.send_task("proj.add", (2, 3))
    bad = app.send_task("proj.fail_nested", ("x",))
    secret = app.send_task("proj.login", ("ann",), {"db_password": "hunter2"})
    retried = app.send_task("proj.retry_once", (7,))

    task = stack.wait_task(ok.id, "success")
    assert [e["kind"] for e in task["events"]] == ["received", "started", "succeeded"]
    assert task["engine_state"] == "SUCCESS" and task["name"] == "proj.add"
    assert task["worker"] == worker.hostname
    assert task["runtime"] is not None and task["runtime"] >= 0
    assert task["args"] == "(2, 3)" and task["result"] == "5"  # Celery's reprs, shown as strings
    assert task["replayable"] is False

    failed = stack.wait_task(bad.id, "failure")
    assert failed["engine_state"] == "FAILURE"
    assert failed["exception"] == "ValueError: cannot parse 'x' in _inner_parse"
    assert "in _outer_load" in failed["traceback"] and "in _inner_parse" in failed["traceback"]
    assert failed["runtime"] is not None and failed["runtime"] >= 0  # from its started event

    login = stack.wait_task(secret.id, "success")
    assert login["kwargs"] == "{'db_password': '[redacted]'}" and login["redacted"] is True
    assert "hunter2" not in db_text(site.db_url)

    stack.wait_task(retried.id, "success")
    # a prefork worker may report the retry after the next attempt ran: it is dated where it happened
    again = wait_until(lambda: (t := stack.task(retried.id)) and len(t["events"]) == 6 and t, 15, "six events")
    kinds = [e["kind"] for e in again["events"]]
    assert kinds == ["received", "started", "retried", "received", "started", "succeeded"]
    assert next(e for e in again["events"] if e["kind"] == "retried")["exception"] == \
        "RuntimeError: first attempt fails"

    # a retry needs the exact call, which events never carry: refused with the reason, nothing sent
    refused = stack.api.post(f"{P}/tasks/{bad.id}/retry", json={})
    assert refused.status_code == 409 and refused.json()["code"] == "not_replayable"
    assert "observer" in refused.json()["message"]

    # actions that go through the broker work from the observer
    reply = stack.api.post(f"{P}/commands", json={"action": "celery.inspect", "args": {"what": "ping"},
                                                  "agent_id": first.agent_id, "wait": 15})
    assert reply.status_code in (200, 202), reply.text
    command = reply.json()
    assert command["state"] == "succeeded", command
    assert worker.hostname in command["result"]["replies"]

    # every event came from the observer's agent
    ids = [ok.id, bad.id, secret.id, retried.id]
    assert {agent for events in site.event_agents(ids).values() for _, agent in events} == {first.agent_id}

    # heartbeats: the worker is online with its facts; depths of a queue nobody consumes
    w = wait_until(lambda: stack.workers().get(worker.hostname), what="worker listed")
    assert w["state"] == "online" and w["info"]["via"] == "observer" and w["info"]["sw_ident"] == "py-celery"
    wait_until(lambda: stack.workers()[worker.hostname]["info"]["processed"] >= 5, 15,
               "a heartbeat counting the tasks")
    for i in range(3):
        app.send_task("proj.add", (i, 0), queue="idle")
    wait_until(lambda: stack.queues().get("idle", {}).get("depth") == 3, 15, "idle depth 3")
    site.redis().delete("idle")


def shipped_once_by(site: Site, observer: Observer, n: int) -> None:
    """Run ``n`` tasks: each one's events were stored once, all from ``observer``'s agent.

    First one task until the observer has shipped its whole life: the Redis
    transport subscribes to the event fanout a moment after the consumer
    says it is ready, and events published in that moment reach no one (as
    for any Celery event consumer), which a loaded machine makes longer."""
    for _ in range(10):
        warm = site.app.send_task("proj.add", (0, 0)).id
        deadline = time.monotonic() + 15  # all its events may fall in that moment: then try again
        while ((t := site.stack.task(warm)) is None or t["state"] != "success") and time.monotonic() < deadline:
            time.sleep(0.2)
        deadline = time.monotonic() + 5
        while len(site.event_agents([warm]).get(warm, [])) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        if len(site.event_agents([warm]).get(warm, [])) == 3:
            break
    else:
        raise AssertionError(f"{observer.name} shipped no task's whole life in 10 tries")
    ids = [site.app.send_task("proj.add", (i, n)).id for i in range(n)]
    for task_id in ids:
        site.stack.wait_task(task_id, "success")
    time.sleep(1.5)  # what a second consumer would have shipped has had time to arrive
    events = site.event_agents(ids)
    for task_id in ids:
        assert events[task_id] == [(kind, observer.agent_id) for kind in ("received", "started", "succeeded")], \
            events[task_id]


def test_a_second_observer_stands_by_and_takes_over_when_the_first_stops_or_dies(site, observed):
    worker, first = observed
    r = site.redis()
    second = site.observer("obs2")
    second.wait_log("z4j observer: standby: obs1")
    wait_agent_connected(site.stack.api, "obs2")  # connected to the collector, consuming nothing

    shipped_once_by(site, first, 5)
    assert "z4j observer: leading" not in second.log()

    assert first.stop() == 0
    assert "z4j observer: stopped (lease released)" in first.log()
    second.wait_log("z4j observer: consuming events", 15)

    shipped_once_by(site, second, 5)

    # a leader that dies without a word: its lease runs out (5 s here) and a standby takes over
    assert r.get(LEASE_KEY).startswith(b"obs2 ")
    third = site.observer("obs5")
    third.wait_log("z4j observer: standby: obs2")
    second.kill()
    third.wait_log("z4j observer: consuming events", 20)
    assert r.get(LEASE_KEY).startswith(b"obs5 ")
    shipped_once_by(site, third, 3)

    # the last observer out leaves no lease and no event binding behind
    assert third.stop() == 0
    assert r.get(LEASE_KEY) is None
    assert not [m for m in r.smembers("_kombu.binding.celeryev") if EVENT_QUEUE.encode() in m]
    assert worker.stop() == 0


def test_without_task_events_the_observer_says_so_and_switches_nothing_on(site):
    # The earlier tests' worker (-E, module-scoped) consumes the same queue: left
    # running it would take some of these tasks, and send their events.
    for earlier in list(site.workers.values()):
        earlier.kill()
    worker = site.worker("plain", events=False)
    observer = site.observer("obs3", Z4J_OBSERVER_EVENTS_GRACE_S="2")
    observer.wait_log("z4j observer: consuming events")
    consuming = time.time()
    assert "task events are left as the workers have them" in observer.log()
    # A heartbeat the observer saw before the tasks run (the worker row may be
    # older): the warning compares processed counts with the first one seen.
    wait_until(lambda: (site.stack.workers().get(worker.hostname) or {}).get("last_seen_at", 0) > consuming,
               15, "a heartbeat seen by this observer")

    ids = [site.app.send_task("proj.add", (i, 3)).id for i in range(3)]
    wait_until(lambda: all(f"Task proj.add[{i}] succeeded" in worker.log() for i in ids), 30, "tasks ran")
    observer.wait_log(WARNING, 30)
    line = next(line for line in observer.log().splitlines() if WARNING in line)
    assert "WARNING" in line and worker.hostname in line and "-E" in line and "--enable-events" in line

    more = site.app.send_task("proj.add", (9, 9)).id
    wait_until(lambda: f"Task proj.add[{more}] succeeded" in worker.log(), 30, "one more task ran")
    time.sleep(3)
    assert observer.log().count(WARNING) == 1
    assert all(site.stack.task(i) is None for i in [*ids, more])
    assert "enabled by remote" not in worker.log()
    assert observer.stop() == 0


def test_enable_events_switches_a_worker_on_and_its_tasks_appear(site):
    worker = site.workers.get("plain")
    assert worker is not None, "runs after the test that starts the worker without -E"
    observer = site.observer("obs4", "--enable-events")
    observer.wait_log("z4j observer: consuming events")
    assert "--enable-events: task events are switched on in every worker" in observer.log()
    worker.wait_log("Events of group {task} enabled by remote.", 20)

    r = site.app.send_task("proj.add", (20, 22))
    task = site.stack.wait_task(r.id, "success")
    assert task["result"] == "42" and task["worker"] == worker.hostname
    assert [e["kind"] for e in task["events"]] == ["received", "started", "succeeded"]
    assert WARNING not in observer.log()
    assert observer.stop() == 0
    assert worker.stop() == 0
