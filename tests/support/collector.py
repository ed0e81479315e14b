"""A real collector process (``z4j serve``) for integration tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.servers import free_port

Z4J = [sys.executable, "-c", "from z4j_tui.entry import main; main()"]


def z4j(*args: str, env: dict[str, str] | None = None, input: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run the ``z4j`` command line; ``check`` fails the test on a non-zero exit."""
    proc = subprocess.run([*Z4J, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          input=input, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"z4j {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def drawn_tree(text: str) -> list[tuple[int, str]]:
    """(depth, label) per line of a rich tree as `z4j tasks tree` prints it: a level is four columns."""
    out = []
    for line in text.splitlines():
        label = line.lstrip(" │├└─")
        out.append(((len(line) - len(label)) // 4, label))
    return out


_migrated: set[str] = set()


def migrate_once(db_url: str) -> None:
    """What `z4j db upgrade --db URL` does, in this process and once per database URL per test
    process (the command costs seconds: a Python start and alembic's imports); the command
    itself is tested in tests/collector/test_cli.py. A SQLite file deleted since is migrated anew."""
    from z4j_collector.store import migrate

    if db_url in _migrated and (not db_url.startswith("sqlite") or migrate.sqlite_path(db_url).exists()):
        return
    migrate.upgrade(db_url)
    _migrated.add(db_url)


class Collector:
    def __init__(self, db_url: str, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.db_url = db_url
        self.env = dict(env or {})
        """Extra environment of the ``z4j serve`` process (Z4J_SESSION_IDLE_S, Z4J_SMTP_HOST, …)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"collector-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        migrate_once(db_url)

    def start(self, timeout: float = 30.0) -> Collector:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*Z4J, "serve", "--db", self.db_url, "--port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"collector did not answer within {timeout} s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flush; what was committed must survive."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def create_agent(self, name: str, project: str = "default") -> dict:
        out = z4j("admin", "create-agent", "--project", project, "--name", name, "--json", "--db", self.db_url)
        creds = json.loads(out.stdout)
        creds["brain_url"] = self.url
        return creds

    def create_token(self, role: str = "admin", project: str = "default") -> str:
        out = z4j("admin", "create-token", "--project", project, "--role", role, "--json", "--db", self.db_url)
        return json.loads(out.stdout)["token"]

    def agent_env(self, creds: dict) -> dict[str, str]:
        return {"Z4J_BRAIN_URL": self.url, "Z4J_TOKEN": creds["token"], "Z4J_HMAC_SECRET": creds["hmac_secret"],
                "Z4J_PROJECT_ID": creds["project"], "Z4J_AGENT_NAME": creds["name"]}

    def api(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def setup_token(self) -> str:
        """The one-time setup token ``z4j serve`` printed to stderr (no user yet): the newest one."""
        found = re.findall(r"--token (z4ju_[A-Za-z0-9_-]+)", self.log_path.read_text(errors="replace"))
        if not found:
            raise AssertionError(f"no setup token in the collector's log: {self.log_tail()}")
        return found[-1]

    def first_superuser(self, email: str = "root@example.com", password: str = "root-password-1") -> str:
        """Redeem the setup token (POST /api/v1/setup); the superuser's session token."""
        reply = httpx.post(f"{self.url}/api/v1/setup", timeout=30,
                           json={"token": self.setup_token(), "email": email, "password": password})
        assert reply.status_code == 201, reply.text
        return reply.json()["token"]

    def login(self, email: str, password: str) -> str:
        """A session token (POST /api/v1/auth/login)."""
        reply = httpx.post(f"{self.url}/api/v1/auth/login", json={"email": email, "password": password}, timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()["token"]


@contextmanager
def running(db_url: str, log_dir: Path, **env: object) -> Iterator[Collector]:
    """A collector started with extra environment (``Z4J_LOGIN_WINDOW_S=10``…), stopped afterwards."""
    collector = Collector(db_url, log_dir, env={k: str(v) for k, v in env.items()}).start()
    try:
        yield collector
    finally:
        collector.stop()


def module_collector(request, tmp_path_factory, label: str, **env: object) -> Collector:
    """For a module-scoped fixture parametrized by database ("sqlite" or
    "postgres"): a started collector (with extra environment ``env``) on a
    fresh database, stopped (and its PostgreSQL database dropped) when the
    module is done."""
    import secrets

    tmp = tmp_path_factory.mktemp(f"{label}-{request.param}")
    if request.param == "sqlite":
        db_url = f"sqlite:///{tmp}/z4j.db"
    else:
        server = request.getfixturevalue("postgres_server")
        name = f"t_{label}_{secrets.token_hex(6)}"
        db_url = server.create_database(name)
        request.addfinalizer(lambda: server.drop_database(name))
    collector = Collector(db_url, tmp, env={k: str(v) for k, v in env.items()}).start()
    request.addfinalizer(collector.stop)
    return collector


# ------------------------------------------------------------------ in-process credentials
# The `z4j admin` commands cost seconds each (they import alembic); tests that
# need several tokens or agents mint them with the store API, as the commands do.


def with_store(db_url: str, fn):
    """Run ``await fn(store)`` on a freshly opened store of ``db_url``; return its result."""
    import asyncio

    from z4j_collector.store import make_store

    async def run():
        store = make_store(db_url)
        await store.open()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(run())


def mint_tokens(collector: Collector, *roles: str, project: str = "default",
                expires_at: float | None = None) -> dict[str, str]:
    """One project API token per role, e.g. ``mint_tokens(c, "viewer", "admin")["admin"]``."""
    import secrets

    from z4j_agents import protocol as p

    tokens = {role: "z4jt_" + secrets.token_urlsafe(32) for role in roles}

    async def make(store) -> None:
        project_id = await store.project_id(project)
        assert project_id is not None, f"no project {project!r}"
        for role, token in tokens.items():
            await store.write(lambda tx, role=role, token=token: store.insert_api_token(
                tx, project_id, None, f"test-{role}", role, p.token_hash(token), time.time(), expires_at))

    with_store(collector.db_url, make)
    return tokens


def mint_agent(collector: Collector, name: str, project: str = "default") -> dict:
    """Agent credentials shaped like ``Collector.create_agent``'s (minted
    straight into the store, as ``z4j admin create-agent`` does, unaudited)."""
    import secrets

    from z4j_agents import protocol as p

    token, secret = "z4ja_" + secrets.token_urlsafe(32), secrets.token_urlsafe(32)

    async def make(store) -> int:
        project_id = await store.project_id(project)
        assert project_id is not None, f"no project {project!r}"
        return await store.create_agent(project_id, name, p.token_hash(token), p.frame_key(secret))

    agent_id = with_store(collector.db_url, make)
    return {"agent_id": agent_id, "project": project, "name": name, "token": token, "hmac_secret": secret,
            "brain_url": collector.url}


def wait_until(predicate, timeout: float = 15.0, what: str = "condition", log=None):
    """Poll ``predicate`` until it returns something truthy; fail the test after
    ``timeout`` (with the end of ``log()``, a process's log, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f"; its log ends:\n{log()[-3000:]}" if log is not None else ""
            raise AssertionError(f"timed out waiting for {what}{tail}")
        time.sleep(0.05)


def wait_agent_connected(api: httpx.Client, name: str, connected: bool = True, project: str = "default") -> dict:
    """Wait until the collector lists agent ``name`` as (dis)connected; ``api`` needs an admin token."""
    def check():
        for agent in api.get(f"/api/v1/projects/{project}/agents").raise_for_status().json():
            if agent["name"] == name and agent["connected"] is connected:
                return agent
        return None

    return wait_until(check, what=f"agent {name!r} connected={connected}")
