"""Must show: the console lists what real agents reported to a real collector
(SQLite and PostgreSQL), its state filter and search narrow the list, the
cursor stays on its task across refreshes, enter opens a failure with its
traceback and escape comes back, and a bad token is a notification, not a
crash. Without a token the console starts (and asks for a login)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from textual.notifications import Notify
from textual.widgets import DataTable, Input

from tests.support.collector import mint_agent, mint_tokens
from tests.tui.helpers import screen_text, until
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig
from z4j_tui.app import Z4jApp
from z4j_tui.client import Client
from z4j_tui.config import ConfigError, Settings
from z4j_tui.screens.task_detail import TaskDetailScreen
from z4j_tui.screens.tasks import TasksScreen

SIZE = (140, 45)
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/billing/tasks.py", line 42, in charge\n'
    "    gateway.charge(card, amount)\n"
    "CardDeclined: card Zorblax declined\n"
)


def emit_world(agent: Agent, now: float) -> None:
    """Four tasks, oldest first: a success, a failure, a running one, a queued one."""
    agent.task("report-1", "received", ts=now - 400, name="reports.build", queue="reports")
    agent.task("report-1", "started", ts=now - 399, worker="w1")
    agent.task("report-1", "succeeded", ts=now - 398, result={"rows": 3}, runtime=1.5)
    agent.task("charge-1", "received", ts=now - 300, name="billing.charge", queue="billing",
               args=[101, "EUR"], kwargs={"db_password": "hunter2", "note": "[bold]not markup[/bold]"})
    agent.task("charge-1", "started", ts=now - 299, worker="w1")
    agent.task("charge-1", "failed", ts=now - 298, worker="w1", exception="CardDeclined('card Zorblax declined')",
               traceback=TRACEBACK)
    agent.task("email-1", "received", ts=now - 200, name="emails.send", queue="default")
    agent.task("email-1", "started", ts=now - 199, worker="w2")
    agent.task("cleanup-1", "sent", ts=now - 100, name="maintenance.cleanup", queue="default")


def row_ids(app: Z4jApp) -> list[str]:
    table = app.screen.query_one("#tasks", DataTable)
    return [str(table.get_row_at(i)[3]) for i in range(table.row_count)]


def cursor_id(app: Z4jApp) -> str:
    table = app.screen.query_one("#tasks", DataTable)
    return str(table.get_row_at(table.cursor_row)[3])


@pytest.fixture
def world(collector):
    """A viewer token and an agent that reported the four tasks (minted outside
    the test's event loop: the store helpers run their own)."""
    agent = Agent(AgentConfig.from_env(collector.agent_env(mint_agent(collector, "tui-agent"))))
    token = mint_tokens(collector, "viewer")["viewer"]
    emit_world(agent, time.time())
    assert agent.flush(30), agent.runtime.last_error
    yield agent, token
    agent.stop()


async def test_browse_filter_and_open_a_failure(collector, world):
    agent, token = world
    client = Client(collector.url, token)
    # No periodic refresh in this part: every refresh is one the test asked for.
    app = Z4jApp(client, "default", refresh_interval=3600)
    try:
        async with app.run_test(size=SIZE) as pilot:
            # newest first, with the counts per state above
            everything = ["cleanup-1", "email-1", "charge-1", "report-1"]
            await until(pilot, lambda: row_ids(app) == everything, "the four tasks")
            # The table's rows exist before they are painted: wait for the screen.
            await until(pilot, lambda: "reports.build" in screen_text(app), "the rows on screen")
            counts = screen_text(app)
            assert "all 4" in counts and "failure 1" in counts and "success 1" in counts
            assert "reports.build" in counts and "1.500s" in counts

            # the cursor stays on its task when a newer one arrives
            await pilot.press("down", "down")
            assert cursor_id(app) == "charge-1"
            agent.task("newest-1", "received", name="reports.build", queue="reports")
            assert agent.flush(30)
            await pilot.press("r")
            await until(pilot, lambda: row_ids(app)[:1] == ["newest-1"], "the new task")
            assert cursor_id(app) == "charge-1"
            assert app.screen.query_one("#tasks", DataTable).cursor_row == 3

            # s cycles the state filter: failure, success, started, pending, retry, revoked, all
            for state, expected in [("failure", ["charge-1"]), ("success", ["report-1"]),
                                    ("started", ["email-1"]), ("pending", ["cleanup-1"]),
                                    ("retry", []), ("revoked", [])]:
                await pilot.press("s")
                assert app.screen.filter.state == state
                await until(pilot, lambda: row_ids(app) == expected, f"the {state} tasks")
            await pilot.press("s")
            await until(pilot, lambda: len(row_ids(app)) == 5, "every task again")

            # free text goes to the collector's search (here: a word of the exception)
            await pilot.press("slash")
            assert isinstance(app.focused, Input)
            await pilot.press(*"zorblax")
            await until(pilot, lambda: row_ids(app) == ["charge-1"], "the search result")
            await pilot.press("enter")  # submits the search and goes back to the table

            # enter opens the detail: fields, redacted kwargs, exception, traceback, timeline
            await pilot.press("enter")
            assert isinstance(app.screen, TaskDetailScreen)
            await until(pilot, lambda: "CardDeclined: card Zorblax declined" in screen_text(app), "the traceback")
            text = screen_text(app)
            assert 'File "/srv/app/billing/tasks.py", line 42, in charge' in text
            assert "billing.charge" in text and "failure" in text
            assert "[redacted]" in text and "hunter2" not in text
            assert "[bold]not markup[/bold]" in text
            assert "received" in text and "started" in text and "failed" in text  # the timeline

            # escape comes back to the same list, same filter, same cursor
            await pilot.press("escape")
            assert isinstance(app.screen, TasksScreen)
            assert row_ids(app) == ["charge-1"] and cursor_id(app) == "charge-1"
    finally:
        client.close()

    # a bad token: it keeps refreshing on its own, with one error notification
    # however often it fails, and no crash
    messages = []
    bad = Client(collector.url, "z4jt_not-a-token")
    app = Z4jApp(bad, "default", refresh_interval=0.1)
    try:
        async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
            def errors() -> list[Notify]:
                return [m for m in messages if isinstance(m, Notify) and m.notification.severity == "error"]

            await until(pilot, errors, "an error notification")
            await pilot.press("r")
            await until(pilot, lambda: sum(isinstance(m, TasksScreen.Failed) for m in messages) >= 4,
                        "a few periodic refreshes")
            assert len(errors()) == 1, [e.notification.message for e in errors()]
            assert errors()[0].notification.message.startswith("401")
            assert app.is_running and row_ids(app) == []
    finally:
        bad.close()


def test_without_a_token_the_console_asks_for_a_login():
    """The console starts without a token (its login prompt is in test_console.py); the
    settings say so with an empty token, while commands that need one still refuse."""
    env = {"Z4J_HOME": os.environ["Z4J_HOME"], "Z4J_URL": "http://127.0.0.1:1"}
    assert Settings.from_args([], env, require_token=False).token == ""
    with pytest.raises(ConfigError, match="z4j admin create-token --role viewer"):
        Settings.from_args([], env)


@pytest.mark.parametrize("module", ["z4j_tui.client", "z4j_tui.config"])
def test_client_side_modules_do_not_import_textual(module):
    probe = f"import sys, {module}; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
