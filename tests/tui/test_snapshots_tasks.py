"""SVG snapshots of helper A's screens (tasks, detail, workflow tree, help, login,
projects) at 80x24 and 160x48, from a real collector (SQLite) with pinned content:
every time an agent sent is fixed (2026-11-21), ids and runtimes are fixed, the
header names the collector instead of its random port, and the login prompt
points at a URL nobody contacts (it sends nothing before a submit).
Update with ``--snapshot-update`` after checking the SVGs by eye."""

from __future__ import annotations

import httpx
import pytest

from tests.support.collector import mint_agent, mint_tokens, module_collector
from tests.tui.helpers import screen_text, steady, until
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig
from z4j_tui.app import Z4jApp
from z4j_tui.client import Client
from z4j_tui.screens.tasks import TasksScreen

T0 = 1795291669.0
"""2026-11-21 21:27:49 UTC: the first event."""
SIZES = [(80, 24), (160, 48)]
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/billing/tasks.py", line 42, in charge\n'
    "    gateway.charge(card, amount)\n"
    '  File "/srv/app/billing/gateway.py", line 7, in charge\n'
    "    raise CardDeclined(card)\n"
    "CardDeclined: card 4242 declined\n"
)


class PinnedApp(Z4jApp):
    def show_subtitle(self) -> None:
        self.sub_title = f"{self.project} · collector"


def emit(agent: Agent) -> None:
    agent.task("report-1", "received", ts=T0, name="reports.build", queue="reports")
    agent.task("report-1", "started", ts=T0 + 1, worker="w1")
    agent.task("report-1", "succeeded", ts=T0 + 2.5, result={"rows": 3}, runtime=1.5)
    agent.task("flow-root", "received", ts=T0 + 10, name="flow.start", queue="flows")
    agent.task("flow-root", "succeeded", ts=T0 + 11, runtime=0.5, worker="w1")
    for i, kind in enumerate(("succeeded", "failed")):
        agent.task(f"flow-add-{i}", "received", ts=T0 + 12 + i, name="flow.add", queue="flows",
                   parent_id="flow-root", root_id="flow-root", group_id="flow-group", chord_id="flow-sum")
        agent.task(f"flow-add-{i}", kind, ts=T0 + 14 + i, runtime=0.25, worker="w1")
    agent.task("flow-sum", "sent", ts=T0 + 16, name="flow.sum", queue="flows", parent_id="flow-add-1",
               root_id="flow-root")
    agent.task("charge-1", "received", ts=T0 + 20, name="billing.charge", queue="billing",
               args=[101, "EUR"], kwargs={"db_password": "hunter2", "note": "monthly"})
    agent.task("charge-1", "started", ts=T0 + 21, worker="w2")
    agent.task("charge-1", "retried", ts=T0 + 22, worker="w2", retries=1, exception="Timeout('gateway')")
    agent.task("charge-1", "started", ts=T0 + 32, worker="w2")
    agent.task("charge-1", "failed", ts=T0 + 33, worker="w2", exception="CardDeclined('card 4242 declined')",
               traceback=TRACEBACK, runtime=0.75, retries=1)
    agent.task("email-1", "received", ts=T0 + 40, name="emails.send", queue="default")
    agent.task("email-1", "started", ts=T0 + 41, worker="w2")


@pytest.fixture(scope="module", params=["sqlite"])
def pinned(request, tmp_path_factory):
    # The reconciler would mark the pinned (old) running task lost halfway through.
    collector = module_collector(request, tmp_path_factory, "tui-snap", Z4J_RECONCILE_INTERVAL_S=86400,
                                 Z4J_RECONCILE_STUCK_AFTER_S=10**9, Z4J_RECONCILE_LOST_UNPROBED_S=10**9,
                                 Z4J_RECONCILE_WORKER_OFFLINE_S=10**9)
    agent = Agent(AgentConfig.from_env(collector.agent_env(mint_agent(collector, "snap-agent"))))
    emit(agent)
    assert agent.flush(30), agent.runtime.last_error
    agent.stop()
    root = collector.first_superuser()
    httpx.post(f"{collector.url}/api/v1/projects", json={"slug": "ops", "name": "Operations"},
               headers={"Authorization": f"Bearer {root}"}, timeout=30).raise_for_status()
    return collector, mint_tokens(collector, "viewer")["viewer"], root


def app_for(collector, token: str) -> PinnedApp:
    return PinnedApp(Client(collector.url, token), "default", refresh_interval=3600, now=lambda: T0 + 60)


async def tasks_ready(pilot) -> None:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, TasksScreen) and app.screen.live
                and len(app.screen.tasks) == 7 and "email-1" in screen_text(app), "the pinned tasks")


async def open_charge(pilot) -> None:
    await tasks_ready(pilot)
    await pilot.press("slash", *"charge-1", "enter")
    await until(pilot, lambda: list(pilot.app.screen.tasks) == ["bare:charge-1"], "the charge")
    await pilot.press("enter")
    await until(pilot, lambda: "CardDeclined: card 4242 declined" in screen_text(pilot.app), "the detail")


async def open_tree(pilot) -> None:
    await tasks_ready(pilot)
    await pilot.press("slash", *"flow-add-1", "enter")
    await until(pilot, lambda: list(pilot.app.screen.tasks) == ["bare:flow-add-1"], "the add")
    await pilot.press("t")
    await until(pilot, lambda: "4 tasks, root flow-root" in screen_text(pilot.app), "the tree")


async def open_help(pilot) -> None:
    await tasks_ready(pilot)
    await pilot.press("question_mark")
    await until(pilot, lambda: "this screen" in screen_text(pilot.app), "the help")


async def open_projects(pilot) -> None:
    await tasks_ready(pilot)
    await pilot.press("P")
    await until(pilot, lambda: "Operations" in screen_text(pilot.app), "the projects")


async def login_ready(pilot) -> None:
    await until(pilot, lambda: "log in to http://z4j.example:7400" in screen_text(pilot.app), "the login")


SCREENS = {"tasks": tasks_ready, "detail": open_charge, "tree": open_tree, "help": open_help,
           "projects": open_projects, "login": login_ready}


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("screen", list(SCREENS))
def test_snapshot(pinned, snap_compare, screen, size):
    collector, viewer, root = pinned
    if screen == "login":
        app = PinnedApp(Client("http://z4j.example:7400", ""), "default", refresh_interval=3600)
    else:
        app = app_for(collector, root if screen == "projects" else viewer)
    try:
        assert snap_compare(app, terminal_size=size, run_before=steady(SCREENS[screen]))
    finally:
        app.client.close()
