"""What every engine family's tests share: a worker process with a log file, a
collector with an admin API client (:class:`Stack`), the worker's environment,
an operator who runs actions (:class:`Actions`), and reads of the collector's
database. Each tests/engines/<engine>/conftest.py keeps only its engine's part."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.collector import Collector, mint_agent, mint_tokens, wait_until

ROOT = Path(__file__).resolve().parents[2]
P = "/api/v1/projects/default"
DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]
OPERATOR = "ops@example.com"
PASSWORD = "operator-password-1"


def worker_env(redis_url: str, agent_env: dict[str, str] | None = None, **extra: object) -> dict[str, str]:
    """A worker's environment: no Z4J_ variable of this process but the test home, the agent's
    (``agent_env``), the test Redis, ROOT on PYTHONPATH and unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k in ("Z4J_HOME", "_Z4J_TEST_HOME")}
    env.update(agent_env or {})
    # an outer PYTHONPATH stays behind ROOT: it may hold another engine release to test (docs/arq.md)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update({"Z4J_TEST_REDIS_URL": redis_url, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


class WorkerProcess:
    """One worker command in a process group of its own; its output goes to ``log_path``.

    start() waits for ``ready`` (``ready_count`` times: once per forked worker
    process where each prints it); stop() is a warm shutdown (SIGTERM to the main
    process, SIGKILL of the group if it hangs); kill() is SIGKILL of the group."""

    ready = ""
    ready_count = 1
    stop_timeout = 30.0

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, label: str) -> None:
        self.cmd, self.env, self.log_path, self.label = cmd, env, log_path, label
        self.proc: subprocess.Popen | None = None

    def start(self, ready: str | None = None, timeout: float = 60.0):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=ROOT)
        self.wait_log(ready or self.ready, timeout, self.ready_count)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        """Until ``text`` stands ``count`` times in the log; fails if the process exits first."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.label} exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the {self.label}'s log:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self, timeout: float | None = None) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def children(self) -> list[int]:
        """The main process's child processes."""
        if self.proc is None:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill(self, *pids: int) -> None:
        """SIGKILL to the process group, then to ``pids`` (processes in groups of their own)."""
        if self.proc is not None and self.proc.poll() is None:
            for kill in (lambda: os.killpg(self.proc.pid, signal.SIGKILL),
                         *(lambda pid=pid: os.kill(pid, signal.SIGKILL) for pid in pids)):
                try:
                    kill()
                except ProcessLookupError:
                    pass
            self.proc.wait(10)


class Stack:
    """A collector, agent credentials (``agent``; none when None) and an admin API client, for one engine."""

    def __init__(self, collector: Collector, redis_url: str, engine: str, agent: str | None = "w1") -> None:
        self.collector, self.redis_url, self.engine, self.name = collector, redis_url, engine, agent
        self.creds = mint_agent(collector, agent) if agent else None
        self.token = mint_tokens(collector, "admin")["admin"]
        self.api = httpx.Client(base_url=collector.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def env(self, **extra: object) -> dict[str, str]:
        """The environment of a worker whose agent uses this stack's credentials."""
        return worker_env(self.redis_url, self.collector.agent_env(self.creds), **extra)

    def task(self, task_id: str) -> dict | None:
        r = self.api.get(f"{P}/tasks/{task_id}", params={"engine": self.engine})
        return r.json() if r.status_code == 200 else None

    def wait_task(self, task_id: str, state: str, timeout: float = 30.0) -> dict:
        return wait_until(lambda: (t := self.task(task_id)) is not None and t["state"] == state and t,
                          timeout, f"task {task_id} in state {state} (now {self.task(task_id)})")

    def tasks(self, **params) -> list[dict]:
        params.setdefault("limit", 1000)
        params.setdefault("engine", self.engine)
        return self.api.get(f"{P}/tasks", params=params).raise_for_status().json()["tasks"]

    def workers(self) -> dict[str, dict]:
        return {w["name"]: w for w in self.api.get(f"{P}/workers").raise_for_status().json()}

    def queues(self) -> dict[str, dict]:
        return {q["name"]: q for q in self.api.get(f"{P}/queues").raise_for_status().json()
                if q["engine"] == self.engine}

    def connections(self, name: str | None = None) -> int:
        """How many times the collector accepted a connection of agent ``name`` (default: this stack's)."""
        name = name or self.name
        return self.collector.log_path.read_text(errors="replace").count(f"agent {name} (default) connected from")

    def audit(self, action: str) -> list[dict]:
        return self.api.get(f"{P}/audit", params={"action": action}).raise_for_status().json()["entries"]


def operator_user(collector: Collector, email: str = OPERATOR, password: str = PASSWORD) -> tuple[httpx.Client, int]:
    """(API client, user id) of a real user with the operator role, so the audit names a person
    (the setup token is redeemed for a superuser who creates it)."""
    root = collector.api(collector.first_superuser())
    user_id = root.post("/api/v1/users", json={"email": email, "password": password}).raise_for_status().json()["id"]
    root.put(f"{P}/members/{user_id}", json={"role": "operator"}).raise_for_status()
    return collector.api(collector.login(email, password)), user_id


class Actions:
    """Actions posted as the operator (``self.operator``), waiting ``wait`` seconds for the agent's answer."""

    operator: httpx.Client
    user_id: int
    wait = 15

    def post(self, path: str, body: dict | None = None, api: httpx.Client | None = None) -> httpx.Response:
        return (api or self.operator).post(f"{P}/{path}", json=body or {})

    def command(self, path: str, body: dict | None = None) -> dict:
        response = self.post(path, {"wait": self.wait, **(body or {})})
        assert response.status_code == 200, response.text
        return response.json()

    def ok(self, path: str, body: dict | None = None) -> dict:
        command = self.command(path, body)
        assert command["state"] == "succeeded", (command["error"], command)
        return command

    def refused(self, path: str, body: dict | None = None) -> str:
        """The error of a command the agent answered with failure."""
        command = self.command(path, body)
        assert command["state"] == "failed", command
        return command["error"]

    def audit(self, action: str) -> list[dict]:
        return self.operator.get(f"{P}/audit", params={"action": action}).raise_for_status().json()["entries"]

    def audited(self, action: str, target: str, command: dict) -> tuple[list[dict], dict]:
        """(every ``action*`` audit row, the ``sent`` row) of a command this world's operator user
        sent about ``target``, whose ``action.result`` row says ok."""
        rows = self.audit(f"{action}*")
        sent = next(r for r in rows if r["action"] == action and r["target"] == target)
        assert (sent["actor"], sent["actor_user_id"], sent["outcome"]) == (OPERATOR, self.user_id, "sent")
        assert sent["detail"]["command"] == command["id"]
        result = next(r for r in rows
                      if r["action"] == f"{action}.result" and r["target"] == f"command:{command['id']}")
        assert result["outcome"] == "ok", result
        return rows, sent


def assert_nested_failure(task: dict) -> None:
    """What every engine reports of its ``fail_nested("x")`` test task: the exception line and
    the whole traceback, through the task's own frames."""
    assert task["exception"] == "ValueError: cannot parse 'x' in _inner_parse"
    tb = task["traceback"]
    assert tb.startswith("Traceback (most recent call last):")
    assert "in fail_nested" in tb and "in _outer_load" in tb and "in _inner_parse" in tb
    assert tb.rstrip().endswith("ValueError: cannot parse 'x' in _inner_parse")


def runs(redis, key: str) -> list[dict]:
    """What the test tasks recorded under ``ran:<key>`` (a Redis list of JSON)."""
    return [json.loads(x) for x in redis.lrange(f"ran:{key}", 0, -1)]


def module_database(request, tmp_path_factory, label: str) -> tuple[str, Path]:
    """(db_url, tmp dir) for a module fixture parametrized by database ("sqlite" or "postgres"):
    a fresh database, a PostgreSQL one dropped when the module is done."""
    tmp = tmp_path_factory.mktemp(f"{label}-{request.param}")
    if request.param == "sqlite":
        return f"sqlite:///{tmp}/z4j.db", tmp
    server = request.getfixturevalue("postgres_server")
    name = f"t_{label.replace('-', '_')}_{os.urandom(6).hex()}"
    url = server.create_database(name)
    request.addfinalizer(lambda: server.drop_database(name))
    return url, tmp


# ------------------------------------------------------------------ the collector's database, read directly


def db_text(db_url: str) -> str:
    """Every row of every table of the collector's database, as text (to look for leaked secrets)."""
    parts: list[str] = []
    if db_url.startswith("sqlite"):
        path = db_url.split("sqlite:///", 1)[1]
        conn = sqlite3.connect(path)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    parts.append(repr(row))
        finally:
            conn.close()
        for suffix in ("", "-wal"):
            p = Path(path + suffix)
            if p.exists():
                parts.append(p.read_bytes().decode("latin-1"))
    else:
        import psycopg

        with psycopg.connect(db_url) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            for table in tables:
                for (row,) in conn.execute(f'SELECT t::text FROM "{table}" t'):
                    parts.append(row)
    return "\n".join(parts)


def db_rows(db_url: str, sql: str, *params: object) -> list[tuple]:
    """Rows of one query (``?`` placeholders) on SQLite or PostgreSQL."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.split("sqlite:///", 1)[1])
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(db_url) as conn:
        return conn.execute(sql.replace("?", "%s"), params).fetchall()


def stored_replay(db_url: str, engine: str, task_id: str) -> bytes | None:
    """The sealed call the collector stores for a task (tasks.replay), read straight from the database."""
    rows = db_rows(db_url, "SELECT replay FROM tasks WHERE engine=? AND task_id=?", engine, task_id)
    return None if not rows or rows[0][0] is None else bytes(rows[0][0])
