"""``z4j demo``: a whole z4j world on this machine, in one command.

It starts, each in its own process group and its own temporary folder:

- ``redis-server`` on a free loopback port, when an engine here needs it;
- a collector (``z4j serve``) on a fresh SQLite database, ``$Z4J_HOME`` in
  the folder, on a free loopback port;
- for each engine importable here (z4j_tui.demo_tasks): real workers, the
  engine's scheduler, and a producer publishing a small shop's traffic
  (successes, failures with tracebacks, retries, a chain, a chord, a
  schedule firing every few seconds);

then, through the collector's public API only, creates the demo admin
(the one-time setup token the collector prints), an agent per process and
an API token, and opens the console logged in as the admin. Quitting the
console, Ctrl-C, SIGTERM or SIGHUP stops every process it started, and the
folder goes. ``--no-tui`` runs the same world headless and prints, on
stdout, how to reach it (``Z4J_URL=…``, ``Z4J_API_TOKEN=…``).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from z4j_tui.client import Client, ClientError

DEMO_EMAIL = "demo@example.com"
PROJECT = "default"
Z4J = [sys.executable, "-c", "from z4j_tui.entry import main; main()"]
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""Put on the children's PYTHONPATH, so ``-A z4j_tui.demo_tasks…`` imports from a source checkout too."""
SETUP_TOKEN = re.compile(r"--token (z4ju_[A-Za-z0-9_-]+)")
READY_TIMEOUT_S = 90.0
"""A loaded laptop can take a while to start a prefork worker."""


class DemoError(Exception):
    """The demo cannot go on; the message is the one line the user sees."""


def say(text: str) -> None:
    try:
        sys.stderr.write(f"z4j demo: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # the terminal went away (SIGHUP): stopping matters more than saying so
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the demo dies without stopping
    it (SIGKILL, a crash), so nothing is left running (Linux; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------ processes


@dataclass
class Child:
    name: str
    """What the user reads: "collector", "Celery worker"…"""
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def last_line(self) -> str:
        lines = [ln.strip() for ln in self.log().splitlines() if ln.strip()]
        return lines[-1] if lines else "(no output)"

    def exited(self) -> DemoError:
        return DemoError(f"the {self.name} exited (code {self.proc.returncode}): {self.last_line()}")

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class World:
    """Every process the demo started, and their folder."""

    dir: Path
    children: list[Child] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """What every child gets on top of this process's environment."""

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        self.logs.mkdir(exist_ok=True)
        log_path = self.logs / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.log"
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_")}
        child_env.update(self.env)
        child_env.update(env or {})
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.dir, env=child_env, start_new_session=True,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def wait_for(self, child: Child, ready: Callable[[], Any], what: str, timeout: float = READY_TIMEOUT_S) -> Any:
        """Poll ``ready()`` until it answers something true; fail on the child's exit or the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            answer = ready()
            if answer:
                return answer
            if not child.alive():
                raise child.exited()
            if time.monotonic() > deadline:
                raise DemoError(f"the {child.name} was not {what} within {timeout:.0f} s: {child.last_line()}")
            time.sleep(0.1)

    def check(self) -> None:
        """Raise when a child has died on its own."""
        for child in self.children:
            if not child.alive():
                raise child.exited()

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every child, newest first in two waves (producers and workers,
        then collector and broker); SIGKILL what hangs, then sweep each
        process group (a prefork worker's children) so nothing is left."""
        collector_and_broker = [c for c in self.children if c.name in ("collector", "redis-server")]
        engines = [c for c in self.children if c not in collector_and_broker]
        for wave in (engines[::-1], collector_and_broker[::-1]):
            for child in wave:
                if child.alive():
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for child in wave:
                try:
                    child.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.proc.pid, signal.SIGKILL)
                    child.proc.wait(5)
        for child in self.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)
        self.children.clear()


# ------------------------------------------------------------------ redis and the collector


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(world: World) -> str:
    port = free_port()
    child = world.spawn("redis-server", [shutil.which("redis-server") or "redis-server", "--port", str(port),
                                         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                         "--dir", str(world.dir)])
    world.wait_for(child, lambda: redis_ping(port), "answering", 30)
    return f"redis://127.0.0.1:{port}/0"


def start_collector(world: World, port: int) -> Child:
    db = f"sqlite:///{world.dir / 'z4j.db'}"
    return world.spawn("collector", [*Z4J, "serve", "--db", db, "--host", "127.0.0.1", "--port", str(port)])


def collector_ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Access:
    """How the demo, the console and scripts reach the collector."""

    url: str
    password: str
    session: str
    """The admin's session token: the console's login."""
    api_token: str
    """A project API token (admin role), for scripts: ``Z4J_API_TOKEN``."""


def bootstrap(world: World, collector: Child, url: str) -> Access:
    """The demo admin (through the setup token the new collector printed) and an API token."""
    world.wait_for(collector, lambda: collector_ready(url), "answering")
    setup = world.wait_for(collector, lambda: SETUP_TOKEN.findall(collector.log()), "ready for set-up", 10)[-1]
    password = secrets.token_urlsafe(12)
    client = Client(url, "")
    try:
        session = client.setup(setup, DEMO_EMAIL, password, "Demo admin")["token"]
        client.http.headers["Authorization"] = f"Bearer {session}"
        api_token = client.create_token(PROJECT, "z4j demo", "admin", 1)["token"]
    finally:
        client.close()
    return Access(url, password, session, api_token)


def agent_env(client: Client, url: str, name: str) -> dict[str, str]:
    """A new agent of the project: the variables a worker is started with."""
    creds = client.create_agent(PROJECT, name)
    return {"Z4J_BRAIN_URL": url, "Z4J_TOKEN": creds["token"], "Z4J_HMAC_SECRET": creds["hmac_secret"],
            "Z4J_PROJECT_ID": PROJECT, "Z4J_AGENT_NAME": name}


# ------------------------------------------------------------------ engines


class Engine:
    """One engine's demo: which modules it needs, what it starts."""

    name = ""
    modules: tuple[str, ...] = ()
    needs_redis = False

    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def start(self, world: World, client: Client, url: str, redis_url: str | None, rate: float) -> list[Child]:
        """Start its processes; return the ones to wait for (``ready``)."""
        raise NotImplementedError

    def ready(self, child: Child) -> bool:
        return True


class CeleryDemo(Engine):
    """A prefork worker (2 processes), beat with z4j's file scheduler (so
    schedules can be created from the console), and the traffic producer."""

    name = "celery"
    modules = ("celery", "redis")
    needs_redis = True
    APP = "z4j_tui.demo_tasks.celery_app"

    def start(self, world: World, client: Client, url: str, redis_url: str | None, rate: float) -> list[Child]:
        env = {"Z4J_DEMO_REDIS_URL": redis_url or "", "Z4J_CELERY_HEARTBEAT_S": "5",
               "Z4J_DEMO_RATE": str(rate)}
        celery = [sys.executable, "-m", "celery", "-A", self.APP]
        worker = world.spawn("Celery worker", [
            *celery, "worker", "-l", "info", "--pool", "prefork", "-c", "2", "-n", "demo@%h",
            "--without-gossip", "--without-mingle"], {**env, **agent_env(client, url, "celery-worker")})
        beat = world.spawn("Celery beat", [
            *celery, "beat", "-l", "info", "-S", "z4j_agents.celery.beat.Z4JScheduler",
            "-s", str(world.dir / "celerybeat-schedule")], {**env, **agent_env(client, url, "celery-beat")})
        world.spawn("Celery traffic", [sys.executable, "-m", "z4j_tui.demo_tasks.celery_traffic"],
                    {**env, **agent_env(client, url, "celery-traffic")})
        return [worker, beat]

    def ready(self, child: Child) -> bool:
        return " ready." in child.log() if child.name == "Celery worker" else "beat: Starting" in child.log()


ENGINES: tuple[Engine, ...] = (CeleryDemo(),)
"""The engines the demo can run. The other four engines' demos are still to
come: each needs its own environment here (their Redis clients conflict)."""


# ------------------------------------------------------------------ the run


def preflight(no_tui: bool) -> list[Engine]:
    """The engines to run; DemoError with what to install when something is missing."""
    for module, extra in (("z4j_collector", "collector"), ("litestar", "collector")):
        if importlib.util.find_spec(module) is None:
            raise DemoError("the demo runs a collector, which is not installed here: pip install 'z4j[all,celery]'")
    if not no_tui and importlib.util.find_spec("textual") is None:
        raise DemoError("the console is not installed here: pip install 'z4j[tui]' (or run `z4j demo --no-tui`)")
    if not no_tui and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise DemoError("the console needs a terminal: run `z4j demo` in one, or `z4j demo --no-tui` from a script")
    engines = [e for e in ENGINES if e.available()]
    if not engines:
        names = ", ".join(e.name for e in ENGINES)
        raise DemoError(f"no task engine the demo can run is installed here ({names}): pip install 'z4j[celery]'")
    if any(e.needs_redis for e in engines) and shutil.which("redis-server") is None:
        needing = ", ".join(e.name for e in engines if e.needs_redis)
        raise DemoError(f"{needing} needs a Redis broker and redis-server is not installed: "
                        f"sudo apt-get install redis-server (or brew install redis)")
    return engines


@contextlib.contextmanager
def stop_signals(on_signal: Callable[[], None]) -> Iterator[None]:
    """SIGTERM, SIGHUP (the terminal went away) and SIGINT stop the demo like
    Ctrl-C. SIGINT is set here too: a process started in the background of a
    script inherits it ignored, and Python then never raises KeyboardInterrupt."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: on_signal())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def start_world(world: World, engines: list[Engine], port: int | None, rate: float) -> Access:
    world.env = {"Z4J_HOME": str(world.dir / "home"), "Z4J_SCHEDULE_SYNC_S": "3", "PYTHONUNBUFFERED": "1",
                 "PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p)}
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    collector = start_collector(world, port)  # starts while redis does
    redis_url = start_redis(world) if any(e.needs_redis for e in engines) else None
    if redis_url:
        say(f"redis-server on {redis_url}")
    access = bootstrap(world, collector, url)
    say(f"collector on {url} (SQLite in {world.dir})")
    waiting: list[tuple[Engine, Child]] = []
    client = Client(url, access.session)
    try:
        for engine in engines:
            waiting += [(engine, child) for child in engine.start(world, client, url, redis_url, rate)]
    finally:
        client.close()
    for engine, child in waiting:
        world.wait_for(child, lambda: engine.ready(child), "ready")
    say(f"{', '.join(c.name for _, c in waiting)} and traffic running; logs in {world.logs}")
    return access


def run(no_tui: bool = False, port: int | None = None, rate: float = 1.0, keep: bool = False) -> None:
    engines = preflight(no_tui)
    world = World(Path(tempfile.mkdtemp(prefix="z4j-demo-")))
    failed = False
    interrupted = False

    def interrupt() -> None:
        raise KeyboardInterrupt

    try:
        with stop_signals(interrupt):
            access = start_world(world, engines, port, rate)
            if no_tui:
                headless(world, access)
            else:
                console(world, access)
    except KeyboardInterrupt:
        interrupted = True
    except (DemoError, ClientError) as exc:
        failed = True
        raise DemoError(f"{exc} (logs kept in {world.logs})") from None
    finally:
        with stop_signals(lambda: None):  # a second Ctrl-C must not leave processes behind
            world.stop()
            say("every process it started has stopped")
            if keep or failed:
                say(f"files kept in {world.dir}")
            else:
                shutil.rmtree(world.dir, ignore_errors=True)
    if interrupted:
        say("stopped")


def headless(world: World, access: Access) -> None:
    print(f"Z4J_URL={access.url}")
    print(f"Z4J_API_TOKEN={access.api_token}")
    print(f"Z4J_DEMO_EMAIL={DEMO_EMAIL}")
    print(f"Z4J_DEMO_PASSWORD={access.password}", flush=True)
    say("running; Ctrl-C stops everything")
    while True:
        world.check()
        time.sleep(0.5)


def console(world: World, access: Access) -> None:
    from z4j_tui.demo_console import DemoApp

    client = Client(access.url, access.session, timeout=10.0)
    try:
        app = DemoApp(client, PROJECT, world)
        with stop_signals(app.stop_soon):
            app.run()
    finally:
        client.close()
    if app.failure:
        raise DemoError(app.failure)


# ------------------------------------------------------------------ the command


def demo(
    no_tui: Annotated[bool, typer.Option("--no-tui", help="No console: print the URL and a token, run until Ctrl-C")] = False,
    port: Annotated[int | None, typer.Option(help="Collector port (default: a free one)")] = None,
    rate: Annotated[float, typer.Option(help="Rounds of traffic a second (each a few tasks)")] = 1.0,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the database and logs when it stops")] = False,
) -> None:
    """A collector on SQLite, real workers of the engines installed here and their traffic; opens the console."""
    if not 0 < rate <= 50:
        say(f"--rate must be above 0 and at most 50, got {rate}")
        raise typer.Exit(2)
    if port is not None and not 0 < port < 65536:
        say(f"--port must be between 1 and 65535, got {port}")
        raise typer.Exit(2)
    try:
        run(no_tui, port, rate, keep)
    except DemoError as exc:
        say(str(exc))
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
