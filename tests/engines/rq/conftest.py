"""Real RQ workers for the engine tests: `rq worker -w z4j_agents.rq.Worker` subprocesses (RQ's default
forking worker, a work horse per job) on the session's redis-server, reporting to a real collector."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from rq import Queue

from tests.support.collector import Collector, mint_agent, mint_tokens, wait_until

ROOT = Path(__file__).resolve().parents[3]
RQ = [sys.executable, "-m", "rq.cli"]
BOOTSTRAP_LINE = "z4j rq worker: agent runtime started"
DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]
P = "/api/v1/projects/default"

pytestmark = pytest.mark.engine("rq")


def rq_env(redis_url: str, agent_env: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k in ("Z4J_HOME", "_Z4J_TEST_HOME")}
    env.update(agent_env or {})
    env.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Worker:
    """One `rq worker` process (its own process group); its output goes to a log file."""

    def __init__(self, env: dict[str, str], redis_url: str, log_dir: Path, *, queues: str = "default",
                 name: str | None = None, worker_class: str = "z4j_agents.rq.Worker", extra: tuple = ()) -> None:
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        self.log_path = log_dir / f"rq-{self.name}.log"
        self.cmd = [*RQ, "worker", "-w", worker_class, "--url", redis_url, "-n", self.name,
                    "--logging_level", "INFO", *extra, *queues.split()]
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self, ready: str = BOOTSTRAP_LINE, timeout: float = 60.0) -> Worker:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=ROOT)
        self.wait_log(ready, timeout)
        self.wait_log("Listening on", timeout)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"rq worker exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the worker's log:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> int | None:
        """Warm shutdown (SIGTERM to the worker), SIGKILL of the group if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def horse_pids(self) -> list[int]:
        """The worker's work horses (each in a process group of its own, as RQ makes them)."""
        if self.proc is None:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> None:
        """SIGKILL to the worker's process group and to its work horse: as when the machine dies."""
        if self.proc is not None and self.proc.poll() is None:
            horses = self.horse_pids()
            for kill in (lambda: os.killpg(self.proc.pid, signal.SIGKILL),
                         *(lambda pid=pid: os.kill(pid, signal.SIGKILL) for pid in horses)):
                try:
                    kill()
                except ProcessLookupError:
                    pass
            self.proc.wait(10)


class Stack:
    """A collector, agent credentials, an admin API client and a plain RQ connection."""

    def __init__(self, collector: Collector, redis_url: str, name: str = "w1") -> None:
        self.collector = collector
        self.redis_url = redis_url
        self.redis = redis.Redis.from_url(redis_url)
        self.creds = mint_agent(collector, name)
        self.token = mint_tokens(collector, "admin")["admin"]
        self.api = httpx.Client(base_url=collector.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def env(self, **extra: str) -> dict[str, str]:
        return rq_env(self.redis_url, self.collector.agent_env(self.creds), **extra)

    def queue(self, name: str = "default") -> Queue:
        """A plain rq.Queue (no z4j): what a producer without the agent uses."""
        return Queue(name, connection=self.redis)

    def task(self, task_id: str) -> dict | None:
        r = self.api.get(f"{P}/tasks/{task_id}", params={"engine": "rq"})
        return r.json() if r.status_code == 200 else None

    def wait_task(self, task_id: str, state: str, timeout: float = 30.0) -> dict:
        return wait_until(lambda: (t := self.task(task_id)) is not None and t["state"] == state and t,
                          timeout, f"task {task_id} in state {state} (now {self.task(task_id)})")

    def tasks(self, **params) -> list[dict]:
        params.setdefault("limit", 1000)
        params.setdefault("engine", "rq")
        return self.api.get(f"{P}/tasks", params=params).raise_for_status().json()["tasks"]

    def workers(self) -> dict[str, dict]:
        return {w["name"]: w for w in self.api.get(f"{P}/workers").raise_for_status().json()}

    def queues(self) -> dict[str, dict]:
        return {q["name"]: q for q in self.api.get(f"{P}/queues").raise_for_status().json()}

    def connections(self, name: str = "w1") -> int:
        """How many times the collector accepted a connection of agent ``name``."""
        return self.collector.log_path.read_text(errors="replace").count(f"agent {name} (default) connected from")


def module_stack(request, redis_server, tmp_path_factory, label: str, **collector_env: object):
    """(stack, tmp): a collector on a fresh database for the module (param: sqlite or postgres)."""
    tmp = tmp_path_factory.mktemp(f"rq-{label}-{request.param}")
    if request.param == "sqlite":
        db_url = f"sqlite:///{tmp}/z4j.db"
    else:
        server = request.getfixturevalue("postgres_server")
        name = f"rq_{label}_{os.urandom(5).hex()}"
        db_url = server.create_database(name)
        request.addfinalizer(lambda: server.drop_database(name))
    collector = Collector(db_url, tmp, env={k: str(v) for k, v in collector_env.items()}).start()
    request.addfinalizer(collector.stop)
    return Stack(collector, redis_server.url), tmp


class producer_agent:
    """This test process as an RQ producer with its own agent (``name``): z4j_agents.rq.Queue
    enqueues are captured; the agent is stopped and forgotten afterwards."""

    def __init__(self, stack: Stack, name: str = "producer") -> None:
        from z4j_agents.config import AgentConfig, gateway_url

        creds = mint_agent(stack.collector, name)
        self.config = AgentConfig(brain_url=gateway_url(stack.collector.url), token=creds["token"],
                                  hmac_secret=creds["hmac_secret"], project="default", agent_name=name)

    def __enter__(self):
        from z4j_agents.rq import agent

        agent.state.agent = None
        agent.state.producer_off = False
        agent.state.config = self.config
        return self

    def __exit__(self, *exc) -> None:
        from z4j_agents.rq import agent

        current, agent.state.agent = agent.state.agent, None
        agent.state.config = None
        if current is not None:
            current.runtime.stop(5.0)
