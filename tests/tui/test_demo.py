"""`z4j demo --no-tui` as a user runs it: a real subprocess that starts
redis-server, a collector, a Celery worker, beat and traffic; what they
report arrives through the collector's API; SIGINT stops every process it
started. Also its one-line refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.collector import Z4J, wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="walks /proc for the demo's processes")

START_TIMEOUT_S = 120.0


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (children, grandchildren…), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Demo:
    """``z4j demo --no-tui`` in its own session; its stdout read by a thread."""

    def __init__(self, tmp: Path) -> None:
        self.stderr_path = tmp / "demo.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_")}
        env["Z4J_HOME"] = str(tmp / "home")  # nothing of the user's own z4j is read
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([*Z4J, "demo", "--no-tui"], stdout=subprocess.PIPE, stderr=err, text=True,
                                         env=env, start_new_session=True)
        self.values: dict[str, str] = {}
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            key, _, value = line.strip().partition("=")
            self.values[key] = value

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Z4J_DEMO_PASSWORD" not in self.values:
            if self.proc.poll() is not None:
                raise AssertionError(f"z4j demo exited {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"z4j demo printed no URL and token within {START_TIMEOUT_S} s: {self.stderr()}")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def wait_for(check, what: str):
    return wait_until(check, 60.0, what)


def test_demo_runs_a_world_and_sigint_stops_all_of_it(tmp_path):
    demo = Demo(tmp_path)
    seen: set[int] = set()
    try:
        demo.wait_ready()
        seen |= descendants(demo.proc.pid)
        url, token = demo.values["Z4J_URL"], demo.values["Z4J_API_TOKEN"]
        assert url.startswith("http://127.0.0.1:") and token
        api = httpx.Client(base_url=f"{url}/api/v1/projects/default",
                           headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200

        def tasks(**params) -> list[dict]:
            return api.get("/tasks", params={"limit": 500, **params}).raise_for_status().json()["tasks"]

        # several states, from the real worker, with the traffic's tracebacks and retries
        def states() -> set[str] | None:
            found = {t["state"] for t in tasks()}
            return found if {"success", "failure"} <= found else None

        wait_for(states, "successes and failures")
        failed = tasks(state="failure", name="shop.charge_card")
        assert failed and "GatewayTimeout" in api.get(f"/tasks/{failed[0]['task_id']}").json()["traceback"]
        assert all(t["worker"] and t["worker"].startswith("demo@") for t in tasks(state="success"))
        wait_for(lambda: any(t["retries"] for t in tasks(name="shop.sync_inventory")), "a task that retried itself")

        # a workflow: the chain reserve_stock | pack | ship as one tree
        shipped = wait_for(lambda: tasks(name="fulfil.ship", state="success"), "a chain's last step")
        tree = api.get(f"/tasks/{shipped[0]['task_id']}/tree").raise_for_status().json()
        assert tree["nodes"] == 3, tree

        # beat's schedule (in the demo app's code) fires, and its tasks run
        digest = wait_for(lambda: [s for s in api.get("/schedules").json() if s["name"] == "digest"],
                          "beat's digest schedule")[0]
        wait_for(lambda: api.get(f"/schedules/{digest['id']}/fires").json(), "a fire of the digest schedule")
        wait_for(lambda: tasks(name="reports.digest", state="success"), "a digest task run")

        seen |= descendants(demo.proc.pid)
        assert len(seen) >= 6, f"expected redis, collector, worker (and its pool), beat, traffic: {seen}"
    finally:
        if demo.proc.poll() is None:
            os.kill(demo.proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        try:
            code = demo.proc.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise AssertionError(f"z4j demo did not stop on SIGINT: {demo.stderr()}") from None
    deadline = time.monotonic() + 10  # the pool's children may take a moment after their parent
    while (left := [p for p in seen if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"still running after the demo stopped: {left}"
    assert code == 0, demo.stderr()
    assert "stopped" in demo.stderr()
    folder = next(line.split("logs in ")[1].removesuffix("/logs") for line in demo.stderr().splitlines()
                  if "logs in " in line)
    assert not Path(folder).exists(), "the demo's temporary folder stayed"


def run_demo(*args: str, env: dict[str, str] | None = None, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_")}
    return subprocess.run([*Z4J, "demo", *args], capture_output=True, text=True, env={**base, **(env or {})},
                          stdin=stdin, timeout=120)


def test_console_needs_a_terminal_one_line():
    out = run_demo()  # stdin and stdout are not a terminal here
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0
    assert "needs a terminal" in out.stderr and "--no-tui" in out.stderr


def test_no_redis_server_says_what_to_install(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH without redis-server
    bin_dir.mkdir()
    out = run_demo("--no-tui", env={"PATH": str(bin_dir)})
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0
    assert "redis-server is not installed" in out.stderr and "apt-get install redis-server" in out.stderr
    assert out.stdout == ""


def test_bad_rate_is_refused():
    out = run_demo("--no-tui", "--rate", "0")
    assert out.returncode == 2
    assert out.stderr.strip() == "z4j demo: --rate must be above 0 and at most 50, got 0.0"
