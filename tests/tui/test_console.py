"""Must show, against one real collector per database with tasks from a bare agent:

- tasks: live from the stream (no refresh asked: the poll interval is an
  hour), a burst of 2,000 tasks coalesced into few table updates, filters
  (state, queue, name prefix, time range, free text) sent to the server,
  keyset paging past the first page, sort;
- detail: links to parent and children, enter opens one; the workflow tree
  with state and runtime badges, enter on a node opens its detail;
- login with e-mail and password, a session ended elsewhere prompts for a new
  login and the console carries on, the project switcher, logout.

The tasks screen runs on both databases end to end (its filters and paging are
the store's queries); the detail, tree and login tests only talk to the API
and run on one (tests/support/dbs.py): the tree and sessions on both databases
are tested in tests/collector/test_tree.py and test_auth.py.
"""

from __future__ import annotations

import time

import httpx
import pytest
from textual.widgets import DataTable, Input, OptionList, Tree

from tests.support.collector import mint_agent, mint_tokens, module_collector
from tests.support.dbs import DBS, on_one_db
from tests.tui.helpers import screen_text, until
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig
from z4j_tui.app import Z4jApp
from z4j_tui.client import Client
from z4j_tui.screens.dag import DagScreen
from z4j_tui.screens.login import LoginScreen, ProjectScreen
from z4j_tui.screens.task_detail import TaskDetailScreen
from z4j_tui.screens.tasks import PAGE, TasksScreen

ROOT, ROOT_PW = "root@example.com", "root-password-1"
BULK = PAGE + 60
"""More than one page of bulk tasks."""


def emit_world(agent: Agent, now: float) -> None:
    # bulk tasks, oldest: two hours ago, one a second
    for i in range(BULK):
        agent.task(f"bulk-{i:04d}", "sent", ts=now - 7200 + i, name="bulk.job", queue="bulk")
    # a chord: a header group of two adds, then the callback
    agent.task("flow-root", "received", ts=now - 300, name="flow.start", queue="flows")
    agent.task("flow-root", "succeeded", ts=now - 299, runtime=0.5, worker="w1")
    for i, state in enumerate(("succeeded", "failed")):
        member = f"flow-add-{i}"
        agent.task(member, "received", ts=now - 290 + i, name="flow.add", queue="flows", parent_id="flow-root",
                   root_id="flow-root", group_id="flow-group", chord_id="flow-sum")
        agent.task(member, state, ts=now - 280 + i, runtime=0.25, worker="w1",
                   **({"exception": "ValueError('bad add')"} if state == "failed" else {}))
    agent.task("flow-sum", "sent", ts=now - 270, name="flow.sum", queue="flows", parent_id="flow-add-1",
               root_id="flow-root")
    # billing failures, recent
    for i in range(3):
        agent.task(f"charge-{i}", "received", ts=now - 60 + i, name="billing.charge", queue="billing",
                   args=[i], kwargs={"card": f"card-{i}"})
        agent.task(f"charge-{i}", "failed", ts=now - 50 + i, worker="w2", exception=f"CardDeclined('card-{i}')")


class World:
    def __init__(self, collector, agent: Agent, viewer: str, root: str) -> None:
        self.collector = collector
        self.agent = agent
        self.viewer = viewer
        self.root = root


@pytest.fixture(scope="module", params=DBS, ids=DBS)
def world(request, tmp_path_factory):
    collector = module_collector(request, tmp_path_factory, "tui-console")
    agent = Agent(AgentConfig.from_env(collector.agent_env(mint_agent(collector, "console-agent"))))
    request.addfinalizer(agent.stop)
    emit_world(agent, time.time())
    assert agent.flush(30), agent.runtime.last_error
    viewer = mint_tokens(collector, "viewer")["viewer"]
    root = collector.first_superuser(ROOT, ROOT_PW)
    httpx.post(f"{collector.url}/api/v1/projects", json={"slug": "ops", "name": "Operations"},
               headers={"Authorization": f"Bearer {root}"}, timeout=30).raise_for_status()
    return World(collector, agent, viewer, root)


def table(app: Z4jApp) -> DataTable:
    return app.screen.query_one("#tasks", DataTable)


def ids(app: Z4jApp) -> list[str]:
    t = table(app)
    return [str(t.get_row_at(i)[3]) for i in range(t.row_count)]


async def filter_to(pilot, app: Z4jApp, text: str) -> None:
    await pilot.press("slash")
    field = app.screen.query_one("#filter", Input)
    field.value = text
    await pilot.press("enter")


async def test_live_filters_paging_and_sort(world):
    client = Client(world.collector.url, world.viewer)
    app = Z4jApp(client, "default", refresh_interval=3600)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            screen = app.screen
            assert isinstance(screen, TasksScreen)
            await until(pilot, lambda: screen.live and table(app).row_count == PAGE, "the first page, live")
            assert ids(app)[:3] == ["charge-2", "charge-1", "charge-0"]
            assert screen.next_cursor

            # keyset paging: the end of the table asks for the next page
            await pilot.press("end")
            everything = BULK + 4 + 3
            await until(pilot, lambda: table(app).row_count == everything, "every task, paged")
            assert screen.next_cursor is None
            assert ids(app)[-1] == "bulk-0000"
            await until(pilot, lambda: "failure 4" in screen_text(app), "the counts")

            # filters go to the server
            await filter_to(pilot, app, "state:failure queue:billing")
            await until(pilot, lambda: ids(app) == ["charge-2", "charge-1", "charge-0"], "billing failures")
            await filter_to(pilot, app, "name:flow.* since:1h")
            await until(pilot, lambda: sorted(ids(app)) == ["flow-add-0", "flow-add-1", "flow-root", "flow-sum"],
                        "the flow tasks")
            await filter_to(pilot, app, "until:1h bulk-0007")
            await until(pilot, lambda: ids(app) == ["bulk-0007"], "one bulk task by its id, older than an hour")

            # live: a new billing failure appears without a refresh, a success does not
            await filter_to(pilot, app, "state:failure queue:billing")
            await until(pilot, lambda: len(ids(app)) == 3, "billing failures again")
            world.agent.task("charge-9", "received", name="billing.charge", queue="billing")
            world.agent.task("charge-8", "received", name="billing.charge", queue="billing")
            world.agent.task("charge-8", "succeeded", worker="w2", runtime=0.1)
            assert world.agent.flush(30)
            await pilot.pause(0.5)
            assert "charge-9" not in ids(app)  # received, not failed
            world.agent.task("charge-9", "failed", worker="w2", exception="CardDeclined('card-9')")
            assert world.agent.flush(30)
            await until(pilot, lambda: ids(app)[:1] == ["charge-9"], "the new failure, live")
            assert "charge-8" not in ids(app)

            # a burst: 2,000 new tasks, coalesced into few table updates
            await pilot.press("x")
            await until(pilot, lambda: ids(app)[:2] == ["charge-8", "charge-9"] and len(ids(app)) > 10, "everything again")
            batches, streamed = screen.batches, screen.streamed
            now = time.time()
            for i in range(2000):
                world.agent.task(f"burst-{i:04d}", "sent", ts=now + i / 1000, name="burst.job", queue="burst")
            assert world.agent.flush(60)
            await until(pilot, lambda: ids(app)[:1] == ["burst-1999"] and "burst-0000" in ids(app), "the burst")
            rows, updates = screen.streamed - streamed, screen.batches - batches
            assert rows >= 2000 and updates <= rows / 20, (rows, updates)
            assert len(set(ids(app))) == len(ids(app))

            # sort: the loaded rows, oldest first
            newest_first = ids(app)
            await pilot.press("o")
            assert screen.sort == ("created", False)
            assert ids(app) == newest_first[::-1] and ids(app)[-1] == "burst-1999"
            assert "sort created ↑" in screen_text(app)
            await pilot.press("o", "o", "o", "o")
            assert screen.sort == ("created", True) and ids(app)[0] == "burst-1999"
    finally:
        client.close()


@on_one_db("world")
async def test_detail_links_and_tree(world):
    client = Client(world.collector.url, world.viewer)
    app = Z4jApp(client, "default", refresh_interval=3600)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, TasksScreen) and table(app).row_count > 0, "tasks")
            await filter_to(pilot, app, "flow-add-1")
            await until(pilot, lambda: ids(app) == ["flow-add-1"], "the failed add")
            await pilot.press("enter")
            assert isinstance(app.screen, TaskDetailScreen)
            await until(pilot, lambda: "ValueError('bad add')" in screen_text(app), "the detail")
            text = screen_text(app)
            assert "parent flow-root" in text and "root   flow-root" not in text  # the root is the parent: one line
            assert "child  flow-sum" in text and "flow.sum" in text

            # l focuses the links; enter opens the child; escape comes back
            await pilot.press("l")
            assert isinstance(app.focused, OptionList)
            await pilot.press("end", "enter")
            await until(pilot, lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.task_id == "flow-sum",
                        "the child's detail")
            await pilot.press("escape")
            assert app.screen.task_id == "flow-add-1"

            # t: the tree, the cursor on this task, state and runtime badges
            await pilot.press("t")
            assert isinstance(app.screen, DagScreen)
            await until(pilot, lambda: "4 tasks, root flow-root" in screen_text(app), "the tree")
            text = screen_text(app)
            lines = [line for line in text.splitlines() if "flow-" in line and "│" in line]
            order = ["flow-root", "chord", "header: group of 2", "flow-add-0", "flow-add-1", "body: flow.sum"]
            positions = [next(i for i, line in enumerate(lines) if word in line) for word in order]
            assert positions == sorted(positions), lines
            assert "flow.add  flow-add-1  [failure] 0.250s  ◀" in text
            assert "flow.start  flow-root  [success] 0.500s" in text
            tree = app.screen.query_one("#dag", Tree)
            assert tree.cursor_node is not None and tree.cursor_node.data["task_id"] == "flow-add-1"
            await pilot.press("up", "enter")
            await until(pilot, lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.task_id == "flow-add-0",
                        "a node's detail")
    finally:
        client.close()


@on_one_db("world")
async def test_login_expired_session_projects_and_logout(world):
    client = Client(world.collector.url, "")
    app = Z4jApp(client, "default", refresh_interval=3600)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, LoginScreen), "the login prompt")
            await pilot.press(*ROOT, "enter", *"wrong-password", "enter")
            await until(pilot, lambda: "bad_credentials" in screen_text(app), "the refusal")
            await pilot.press(*ROOT_PW, "enter")
            await until(pilot, lambda: isinstance(app.screen, TasksScreen) and table(app).row_count > 0,
                        "the tasks, logged in")
            assert client.token.startswith("z4js_")

            # the session ends elsewhere: the next request prompts, the console carries on
            httpx.post(f"{world.collector.url}/api/v1/auth/logout", timeout=30,
                       headers={"Authorization": f"Bearer {client.token}"}).raise_for_status()
            tasks = app.screen
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, LoginScreen), "the prompt after the session ended")
            assert "session expired: log in again" in screen_text(app)
            assert app.screen.query_one("#login-email", Input).value == ROOT  # remembered
            await pilot.press(*ROOT_PW, "enter")
            await until(pilot, lambda: app.screen is tasks, "the same tasks screen")
            await pilot.press("r")
            await until(pilot, lambda: table(app).row_count > 0 and app.last_error is None, "tasks again")

            # the project switcher
            await pilot.press("P")
            assert isinstance(app.screen, ProjectScreen)
            await until(pilot, lambda: "Operations" in screen_text(app), "the projects")
            await pilot.press("down", "enter")
            await until(pilot, lambda: isinstance(app.screen, TasksScreen) and app.screen.project == "ops",
                        "the ops project")
            assert app.sub_title.startswith("ops ·")
            await pilot.pause(0.5)
            assert table(app).row_count == 0
            assert not [m for m in app._modes if m.startswith("default:")]

            # logout: the session ends on the server, the prompt comes back
            token = client.token
            await pilot.press("L")
            await until(pilot, lambda: isinstance(app.screen, LoginScreen), "the prompt after logout")
            assert "logged out" in screen_text(app)
            answer = httpx.get(f"{world.collector.url}/api/v1/auth/me", timeout=30,
                               headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 401
    finally:
        client.close()
