"""Real RQ workers for the engine tests: `rq worker -w z4j_agents.rq.Worker` subprocesses (RQ's default
forking worker, a work horse per job) on the session's redis-server, reporting to a real collector."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import redis
from rq import Queue

from tests.support.collector import Collector, mint_agent
from tests.support.engine import WorkerProcess, module_database, worker_env
from tests.support.engine import Stack as EngineStack

RQ = [sys.executable, "-m", "rq.cli"]
BOOTSTRAP_LINE = "z4j rq worker: agent runtime started"

pytestmark = pytest.mark.engine("rq")

rq_env = worker_env


class Worker(WorkerProcess):
    """One `rq worker` process (its own process group); its output goes to a log file."""

    ready = BOOTSTRAP_LINE

    def __init__(self, env: dict[str, str], redis_url: str, log_dir: Path, *, queues: str = "default",
                 name: str | None = None, worker_class: str = "z4j_agents.rq.Worker", extra: tuple = ()) -> None:
        self.name = name or f"w{os.urandom(3).hex()}"
        cmd = [*RQ, "worker", "-w", worker_class, "--url", redis_url, "-n", self.name,
               "--logging_level", "INFO", *extra, *queues.split()]
        super().__init__(cmd, env, log_dir / f"rq-{self.name}.log", "rq worker")

    def start(self, ready: str = BOOTSTRAP_LINE, timeout: float = 60.0) -> Worker:
        super().start(ready, timeout)
        self.wait_log("Listening on", timeout)
        return self

    def horse_pids(self) -> list[int]:
        """The worker's work horses (each in a process group of its own, as RQ makes them)."""
        return self.children()

    def kill(self) -> None:
        """SIGKILL to the worker's process group and to its work horse: as when the machine dies."""
        super().kill(*(self.horse_pids() if self.proc is not None and self.proc.poll() is None else ()))


class Stack(EngineStack):
    """A collector, agent credentials, an admin API client and a plain RQ connection."""

    def __init__(self, collector: Collector, redis_url: str, name: str = "w1") -> None:
        super().__init__(collector, redis_url, "rq", name)
        self.redis = redis.Redis.from_url(redis_url)

    def queue(self, name: str = "default") -> Queue:
        """A plain rq.Queue (no z4j): what a producer without the agent uses."""
        return Queue(name, connection=self.redis)


def module_stack(request, redis_server, tmp_path_factory, label: str, **collector_env: object):
    """(stack, tmp): a collector on a fresh database for the module (param: sqlite or postgres)."""
    db_url, tmp = module_database(request, tmp_path_factory, f"rq-{label}")
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
