"""The world the operations screens are tested in (and their snapshots
recorded from): a real collector, one bare agent of engine "celery" that
declares the task, queue and worker actions and answers them without a
broker (each call is logged), a beat agent over a real Celery Z4JScheduler
(memory broker) for schedules, three workers, three queues, and tasks of
three names over the last minutes with runtimes, failures and sealed calls."""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from z4j_tui.app import Z4jApp
from tests.support.collector import Collector, mint_agent, mint_tokens, wait_agent_connected, wait_until
from z4j_agents import protocol as p
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig

P = "/api/v1/projects/default"
NAMES = ("billing.charge", "reports.build", "emails.send")
QUEUES = {"billing.charge": "billing", "reports.build": "reports", "emails.send": "default"}


def _app_css() -> list[str]:
    paths = [Z4jApp.CSS_PATH] if isinstance(Z4jApp.CSS_PATH, (str, Path)) else list(Z4jApp.CSS_PATH or [])
    return [str(Path(inspect.getfile(Z4jApp)).parent / p) for p in paths]


class OpsApp(Z4jApp):
    """The console opened on one screen (the tasks screen and its live
    stream are tested elsewhere; here they would only load the machine)."""

    CSS_PATH = _app_css()  # a subclass's relative CSS_PATH would be read beside this file

    def __init__(self, *args: Any, start: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start = start

    def on_mount(self, event: Any) -> None:
        event.prevent_default()  # instead of Z4jApp.on_mount, which opens the tasks
        self.show_subtitle()
        self.goto(self.start)


@dataclass
class World:
    collector: Collector
    tokens: dict[str, str]
    agent: Agent
    beat_agent: Agent
    scheduler: Any
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(action, args) of every command the agent ran, in order."""
    now: float = 0.0
    """When the world was made (its tasks are in the minutes before)."""

    def api(self, role: str = "admin"):
        return self.collector.api(self.tokens[role])

    def stop(self) -> None:
        self.agent.stop()
        self.beat_agent.stop()
        self.scheduler.close()


def _actions_agent(collector: Collector, calls: list) -> Agent:
    agent = Agent(AgentConfig.from_env(collector.agent_env(mint_agent(collector, "ops-agent"))), engine="celery",
                  start=False)

    def handler(action: str):
        def run(args: dict[str, Any]) -> Any:
            calls.append((action, args))
            if action == "celery.retry":
                return {"new_task_id": f"new-{args['task_id']}", "retry_of": args["task_id"]}
            if action == "celery.purge":
                return {"queue": args["queue"], "purged": 3}
            if action == "celery.requeue_dead":
                ids = args.get("task_ids") or ["dead-1", "dead-2"]
                return {"queue": args["queue"], "requeued": len(ids)}
            if action == "celery.cancel":
                return {"task_id": args["task_id"], "terminate": args.get("terminate", False), "workers": ["w1"],
                        "removed_from_queue": not args.get("terminate")}
            return {"worker": args.get("worker"), "op": args.get("op"), "reply": "ok"}
        return run

    for action in ("retry", "cancel", "purge", "requeue_dead", "worker_control"):
        agent.on_command(f"celery.{action}", handler(f"celery.{action}"))
    agent.start()
    return agent


def _beat(collector: Collector, tmp: Path) -> tuple[Agent, Any]:
    import celery

    from z4j_agents.celery.beat import Z4JScheduler
    from z4j_agents.celery.beat.adapter import BeatAdapter

    app = celery.Celery("tui_world", broker="memory://", backend="cache+memory://")
    app.conf.beat_schedule = {"cleanup-code": {"task": "maintenance.cleanup", "schedule": 3600.0}}
    app.conf.result_expires = None
    scheduler = Z4JScheduler(app=app, schedule_filename=str(tmp / "celerybeat-schedule"))
    agent = Agent(AgentConfig.from_env(collector.agent_env(mint_agent(collector, "beat"))), engine="celery",
                  start=False)
    BeatAdapter(app, scheduler, agent).register(agent)
    agent.start()
    return agent, scheduler


def _emit(agent: Agent, now: float) -> None:
    def worker(name: str, kind: str, ts: float, **info: Any) -> None:
        agent.runtime.emit(p.WorkerEvent(id=p.new_id(), worker=name, engine="celery", kind=kind, ts=ts,
                                         info=info or None))

    worker("w1", "online", now - 2, active=2, processed=1234, loadavg=[0.42, 0.3, 0.2], concurrency=4,
           pool="prefork")
    worker("w2", "heartbeat", now - 600, active=0, processed=77, loadavg=[1.5, 1.2, 1.0], concurrency=2,
           pool="threads")
    worker("w3", "offline", now - 3600)
    for queue, depth in (("default", 12), ("billing", 3), ("reports", 0)):
        agent.queue(queue, depth)
    minute = math.floor(now / 60) * 60
    for i in range(36):
        name = NAMES[i % 3]
        ts = minute - 60 * (1 + i % 6) + (i % 7)  # the six whole minutes before this one
        task_id = f"{name.split('.')[0]}-{i:02d}"
        failed = name == "billing.charge" and i % 2 == 0
        agent.task(task_id, "sent", ts=ts, name=name, queue=QUEUES[name], args=[i], replay=f"call-{i}".encode())
        agent.task(task_id, "started", ts=ts + 1, worker="w1")
        agent.task(task_id, "failed" if failed else "succeeded", ts=ts + 1 + 0.05 * (i + 1), runtime=0.05 * (i + 1),
                   **({"exception": "CardDeclined('declined')"} if failed else {}))
    agent.task("run-1", "sent", ts=now - 30, name="reports.build", queue="reports", replay=b"call-run")
    agent.task("run-1", "started", ts=now - 29, worker="w1")
    agent.task("wait-1", "sent", ts=now - 20, name="emails.send", queue="default", replay=b"call-wait")


def make_world(collector: Collector, tmp: Path) -> World:
    calls: list = []
    tokens = mint_tokens(collector, "viewer", "operator", "admin")
    agent = _actions_agent(collector, calls)
    beat_agent, scheduler = _beat(collector, tmp)
    world = World(collector, tokens, agent, beat_agent, scheduler, calls, time.time())
    admin = world.api("admin")
    wait_agent_connected(admin, "ops-agent")
    wait_agent_connected(admin, "beat")
    _emit(agent, world.now)
    assert agent.flush(30), agent.runtime.last_error

    def rolled_up() -> bool:
        body = admin.get(f"{P}/trends", params={"bucket": "hour", "group_by": "engine", "since": "3h"}).json()
        return sum(b["counts"]["success"] + b["counts"]["failure"] for g in body["groups"] for b in g["buckets"]) >= 36

    wait_until(rolled_up, timeout=30, what="the trends rollups")
    wait_until(lambda: any(s["name"] == "cleanup-code" for s in admin.get(f"{P}/schedules").json()), timeout=30,
               what="the code schedule")
    for body in ({"name": "nightly-report", "task": "reports.build", "args": [7], "queue": "reports",
                  "schedule": {"kind": "crontab", "expr": "30 2 * * *"}},
                 {"name": "poll-mail", "task": "emails.send", "kwargs": {"box": "ops"}, "enabled": False,
                  "schedule": {"kind": "interval", "every": 300}}):
        answer = admin.post(f"{P}/schedules", json=body)
        assert answer.status_code == 201, answer.text
    return world
