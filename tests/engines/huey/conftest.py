"""Real Huey consumers for the engine tests: `huey_consumer tests.engines.huey.proj.huey` subprocesses
on the session's redis-server (RedisHuey) or a SQLite file (SqliteHuey), reporting to a real collector.

Each test module shares one collector per database (SQLite, PostgreSQL) and
runs its checks on both Huey storages under it (:func:`open_world`).
"""

from __future__ import annotations

import socket
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.collector import Collector, mint_agent
from tests.support.engine import WorkerProcess, db_rows, worker_env
from tests.support.engine import Stack as EngineStack

CONSUMER = [sys.executable, "-m", "huey.bin.huey_consumer", "tests.engines.huey.proj.huey"]
BOOTSTRAP_LINE = "z4j consumer bootstrap: agent runtime started"
STORAGES = ("redis", "sqlite")

pytestmark = pytest.mark.engine("huey")


class Consumer(WorkerProcess):
    """One `huey_consumer` process group; output in a log file."""

    ready = BOOTSTRAP_LINE

    def __init__(self, env: dict[str, str], log_dir: Path, *, workers: int = 2, kind: str = "thread",
                 periodic: bool = True, label: str | None = None) -> None:
        self.name = label or f"c{uuid.uuid4().hex[:6]}"
        cmd = [*CONSUMER, "-w", str(workers), "-k", kind, "-d", "0.05", "-m", "0.2", *(() if periodic else ("-n",))]
        super().__init__(cmd, env, log_dir / f"huey-{self.name}.log", "huey consumer")

    @property
    def worker(self) -> str:
        """The consumer's worker name in z4j: <huey name>@<host>:<pid>."""
        assert self.proc is not None
        return f"{self.env['Z4J_TEST_HUEY_NAME']}@{socket.gethostname()}:{self.proc.pid}"

    def start(self, ready: str = BOOTSTRAP_LINE, timeout: float = 60.0) -> Consumer:
        return super().start(ready, timeout)


class Stack(EngineStack):
    """A collector and an admin API client, for engine huey (agent credentials: per :class:`Side`)."""

    def __init__(self, collector: Collector) -> None:
        super().__init__(collector, "", "huey", agent="spare")


class Side:
    """One Huey application (storage and queue name) under one collector: its
    consumer with its own agent credentials (``agent``: commands about its
    tasks go to it), a producer Huey in this process (the agent installed,
    credentials ``producer``) and the consumer's environment."""

    def __init__(self, storage: str, stack: Stack, tmp: Path, redis_url: str, label: str) -> None:
        from tests.engines.huey import proj

        self.storage = storage
        self.stack = stack
        self.agent = f"huey-{storage}"
        self.creds = mint_agent(stack.collector, self.agent)
        self.name = f"{label}-{storage}-{uuid.uuid4().hex[:6]}"
        self.db = str(tmp / f"{self.name}.db")
        self.redis_url = redis_url
        self.huey = proj.make(storage, self.name, redis_url=redis_url, db=self.db)
        self.consumer: Consumer | None = None

    def env(self, **extra: str) -> dict[str, str]:
        return worker_env(self.redis_url, self.stack.collector.agent_env(self.creds),
                          Z4J_TEST_HUEY_STORAGE=self.storage, Z4J_TEST_HUEY_NAME=self.name, Z4J_TEST_HUEY_DB=self.db,
                          **extra)

    def start(self, tmp: Path, **options) -> Consumer:
        env = self.env(Z4J_HUEY_HEARTBEAT_S="1", Z4J_HUEY_QUEUE_DEPTH_S="0.3")
        self.consumer = Consumer(env, tmp, label=self.name, **options).start()
        return self.consumer

    def produce(self, config) -> None:
        """Install the agent on this process's producer Huey (reporting what it enqueues)."""
        from z4j_agents.huey import install

        install(self.huey, config)

    def task(self, name: str):
        """The producer's task ``proj.<name>`` (a Huey TaskWrapper: call it, .s(), .then())."""
        return self.huey.tasks[name]

    def close(self) -> None:
        from z4j_agents.huey import stop

        if self.consumer is not None:
            self.consumer.kill()
        stop(self.huey, 2.0)


def open_world(request, tmp_path_factory, label: str, **collector_env):
    """(stack, {storage: Side}) for a module fixture parametrized by database."""
    from tests.support.collector import module_collector
    from z4j_agents.config import AgentConfig, gateway_url

    collector = module_collector(request, tmp_path_factory, label, **collector_env)
    redis_server = request.getfixturevalue("redis_server")
    tmp = tmp_path_factory.mktemp(f"{label}-huey")
    stack = Stack(collector)
    producer = stack.producer = mint_agent(collector, "producer")
    config = AgentConfig(brain_url=gateway_url(collector.url), token=producer["token"],
                         hmac_secret=producer["hmac_secret"], agent_name="producer")
    sides = {s: Side(s, stack, tmp, redis_server.url, label) for s in STORAGES}
    for side in sides.values():
        request.addfinalizer(side.close)
        side.produce(config)
    return stack, sides, tmp


def stored_replay(db_url: str, task_id: str) -> list[bytes]:
    """Every sealed call the collector stores on the events of a task, read straight from the database."""
    import base64
    import json

    out = []
    for (data,) in db_rows(db_url, "SELECT data FROM task_events WHERE engine='huey' AND task_id=?", task_id):
        event = json.loads(bytes(data) if not isinstance(data, str) else data)
        if event.get("replay"):
            out.append(base64.b64decode(event["replay"]))
    return out
