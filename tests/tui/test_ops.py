"""Must show, against a real collector with real data from bare agents (tests/tui/ops_world.py): for the workers, queues,
schedules, audit and trends screens, open it, filter, act, see the result;
every action confirmed with what it will do, sent through the agent that
declared it, its result or the server's refusal a notification; actions
hidden from roles that may not do them. Retry, cancel and bulk retry (the
task screens' actions) through z4j_tui.actions.

On one database (tests/support/dbs.py): the screens only talk to the API, and
what the server does for each of them on both databases is tested in
tests/collector (test_actions, test_schedules, test_audit, test_trends,
test_rbac); tests/tui/test_console.py and test_app.py keep the console on both."""

from __future__ import annotations

import pytest
from textual.notifications import Notify
from textual.widgets import DataTable, Input, OptionList, Static

from tests.support.collector import module_collector
from tests.support.dbs import ONE_DB
from tests.tui.helpers import screen_text, until
from tests.tui.ops_world import P, OpsApp, World, make_world
from z4j_tui import actions
from z4j_tui.actions import ConfirmScreen
from z4j_tui.client import Client
from z4j_tui.screens.audit import AuditScreen
from z4j_tui.screens.queues import QueuesScreen
from z4j_tui.screens.schedules import SchedulesScreen
from z4j_tui.screens.trends import TrendsScreen
from z4j_tui.screens.workers import WorkersScreen

SIZE = (120, 36)


@pytest.fixture(scope="module", params=[ONE_DB], ids=[ONE_DB])
def world(request, tmp_path_factory):
    collector = module_collector(request, tmp_path_factory, "tui-ops", Z4J_TRENDS_FLUSH_S="0.3",
                                 Z4J_SCHEDULE_SYNC_S="0.3")
    made = make_world(collector, tmp_path_factory.mktemp("beat"))
    yield made
    made.stop()


class Console:
    """The app under one role, with every notification it showed."""

    def __init__(self, world: World, role: str, start: str = "tasks") -> None:
        self.client = Client(world.collector.url, world.tokens[role])
        # The clock is the world's: ages and the rates' window do not move while the test runs.
        self.app = OpsApp(self.client, "default", refresh_interval=1.0, now=lambda: world.now, start=start)
        self.messages: list = []

    def notes(self, severity: str | None = None) -> list[str]:
        return [m.notification.message for m in self.messages if isinstance(m, Notify)
                and (severity is None or m.notification.severity == severity)]

    def rows(self) -> list[list[str]]:
        table = self.app.screen.query_one("#listing", DataTable)
        return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]

    async def open(self, pilot, kind: type) -> None:
        await until(pilot, lambda: isinstance(self.app.screen, kind), kind.__name__)

    async def confirm(self, pilot, *lines: str) -> str:
        """The confirmation is up and says ``lines``; y does it; the notification it ended with."""
        await until(pilot, lambda: isinstance(self.app.screen, ConfirmScreen) and app_has(self.app, "#confirm"),
                    "the confirmation")
        text = dialog_text(self.app)
        for line in lines:
            assert line in text, (line, text)
        before = len(self.notes())
        await pilot.press("y")
        await until(pilot, lambda: len(self.notes()) > before, "the outcome notification")
        return self.notes()[-1]


def dialog_text(app) -> str:
    """What the confirmation says (it wraps on screen)."""
    return " ".join(str(app.screen.query_one(".dialog-text", Static).content).split())


def run(console: Console, size=SIZE):
    return console.app.run_test(size=size, message_hook=console.messages.append)


async def filter_to(pilot, text: str) -> None:
    """/ focuses the filter line; the text is put in at once (a key press each
    costs a wait for the screen on a loaded machine); enter applies it."""
    await pilot.press("slash")
    pilot.app.focused.value = text
    await pilot.press("enter")


async def type_in(pilot, text: str) -> None:
    """The focused field gets ``text`` (at once, as filter_to), then the cursor is after it."""
    pilot.app.focused.value = text
    await pilot.pause()


async def test_workers_filter_and_control(world):
    op = Console(world, "operator", "workers")
    async with run(op) as pilot:
        await op.open(pilot, WorkersScreen)
        await until(pilot, lambda: len(op.rows()) == 3, "three workers")
        by_name = {r[1]: r for r in op.rows()}
        assert by_name["w1"][0] == "online" and by_name["w1"][4:8] == ["2", "1234", "0.42", "prefork×4"]
        assert by_name["w2"][0] == "silent" and by_name["w2"][3] == "10m"  # online, but not heard of for 10 minutes
        assert by_name["w3"][0] == "offline"
        assert "3 workers: 1 online, 1 silent, 1 offline" in screen_text(op.app)

        await filter_to(pilot, "w1")
        assert [r[1] for r in op.rows()] == ["w1"]
        # c: the op and its parameters, then the confirmation says what will happen
        await pilot.press("c")
        await until(pilot, lambda: app_has(op.app, "#op"), "the control form")
        await pilot.press("tab", *"2", "enter")
        note = await op.confirm(pilot, "Adds 2 process(es) to the pool of worker w1.")
        assert note == "pool_grow on w1: done"
        assert world.calls[-1] == ("celery.worker_control", {"worker": "w1", "op": "pool_grow", "n": 2})

        # a bad parameter is refused in the form, nothing sent (the form found by name in the palette)
        calls = len(world.calls)
        await pilot.press("ctrl+p")
        await until(pilot, lambda: app_has(op.app, "CommandInput"), "the palette")
        op.app.screen.query_one("CommandInput").value = "control"
        await until(pilot, lambda: "Send a worker control" in screen_text(op.app), "the palette's hit")
        await pilot.press("enter")
        await until(pilot, lambda: app_has(op.app, "#op"), "the control form")
        await pilot.press("tab", *"two", "enter")
        await until(pilot, lambda: "n must be a whole number, got 'two'" in screen_text(op.app), "the form's reason")
        await pilot.press("escape")
        assert isinstance(op.app.screen, WorkersScreen) and len(world.calls) == calls

    op.client.close()


async def submit(pilot, app) -> None:
    """Enter in the form's last field submits it."""
    app.screen.query_one("#sched-queue", Input).focus()
    await pilot.pause()
    await pilot.press("enter")


def app_has(app, selector: str) -> bool:
    return bool(app.screen.query(selector))


async def test_queues_filter_purge_and_requeue(world):
    op = Console(world, "operator", "queues")
    async with run(op) as pilot:
        await op.open(pilot, QueuesScreen)
        await until(pilot, lambda: len(op.rows()) == 3, "three queues")
        billing = next(r for r in op.rows() if r[0] == "billing")
        # depth 3; 12 billing tasks in the 5 whole minutes before now, 6 of them failed: 2.4, 2.4, 1.2 a minute
        assert billing[2:6] == ["3", "2.4", "2.4", "1.2"], billing
        await filter_to(pilot, "bill")
        assert [r[0] for r in op.rows()] == ["billing"]

        await pilot.press("p")
        await until(pilot, lambda: app_has(op.app, "#purge-name"), "the purge form")
        await type_in(pilot, "billing.charge")
        await pilot.press("tab")
        await type_in(pilot, "1h")
        await pilot.press("enter")
        note = await op.confirm(pilot, "Deletes the messages of task billing.charge older than 1h waiting in queue "
                                       "billing (3 waiting when last reported).", "This cannot be undone.")
        assert note == "purged 3 message(s) from billing"
        assert world.calls[-1] == ("celery.purge", {"queue": "billing", "name": "billing.charge",
                                                    "older_than_s": 3600.0})

        await pilot.press("d")
        await until(pilot, lambda: app_has(op.app, "#requeue-ids"), "the requeue form")
        await type_in(pilot, "dead-7, dead-9")
        await pilot.press("enter")
        note = await op.confirm(pilot, "Puts 2 dead letter(s) of queue billing back on the queue: dead-7, dead-9.")
        assert note == "requeued 2 dead letter(s) on billing"
        assert world.calls[-1][0] == "celery.requeue_dead"
        assert world.calls[-1][1]["task_ids"] == ["dead-7", "dead-9"]

        # escape in the confirmation does nothing
        calls = len(world.calls)
        await pilot.press("p")
        await until(pilot, lambda: app_has(op.app, "#purge-name"), "the purge form")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(op.app.screen, ConfirmScreen), "the confirmation")
        assert "Deletes every message waiting in queue billing" in dialog_text(op.app)
        await pilot.press("escape")
        assert isinstance(op.app.screen, QueuesScreen) and len(world.calls) == calls

        # an operator may switch schedules on and off and trigger them, not create, edit or delete
        await pilot.press("4")
        await until(pilot, lambda: isinstance(op.app.screen, SchedulesScreen) and op.rows()
                    and "Trigger" in screen_text(op.app), "the schedules with their operator keys")
        text = screen_text(op.app)
        assert "On/off" in text and "New" not in text and "Edit" not in text and "Delete" not in text
    op.client.close()


async def test_task_actions_retry_cancel_and_bulk_retry(world):
    """R, C and B on the task list and the detail (the task screens take
    them from z4j_tui.actions.TaskActions)."""
    op = Console(world, "operator", "tasks")
    async with run(op) as pilot:
        await until(pilot, lambda: getattr(op.app.screen, "tasks", None), "the tasks")
        tasks = op.app.screen
        await filter_to(pilot, "name:billing.charge state:failure")
        await until(pilot, lambda: len(tasks.tasks) == 6, "the six billing failures")
        await until(pilot, lambda: "Retry" in screen_text(op.app), "R in the footer (the role is known)")
        first = tasks.cursor_task()["task_id"]
        await pilot.press("R")
        note = await op.confirm(pilot, "Runs billing.charge again as a new task, with its exact original arguments "
                                       "and routing (queue billing).")
        assert note == f"retried {first} as new-{first}"

        # B: every failure the filter matches, each once; the bar follows the job to its end
        retried = sum(1 for action, _ in world.calls if action == "celery.retry")
        await pilot.press("B")
        await until(pilot, lambda: "6 task(s) match." in screen_text(op.app), "the dry run")
        assert "state failure, name billing.charge" in screen_text(op.app)
        await pilot.press("y")
        await until(pilot, lambda: any("retried of 6 matched" in n for n in op.notes()), "the job's end")
        bar = op.app.screen.query_one("#bulk-progress")
        assert (bar.total, bar.progress) == (6, 6)
        summary = next(n for n in op.notes() if "retried of 6 matched" in n)
        assert "5 retried of 6 matched, 1 already retried." in summary  # the one R retried above
        assert sum(1 for action, _ in world.calls if action == "celery.retry") == retried + 5
        await pilot.press("escape")

        # the detail: C on a failure has nothing to cancel, and says so without asking
        await pilot.press("enter")
        await until(pilot, lambda: getattr(op.app.screen, "shown", None), "the detail")
        await pilot.press("C")
        await until(pilot, lambda: any("has ended (failure): nothing to cancel" in n for n in op.notes()),
                    "the note")
        await pilot.press("escape")

        api = world.api("viewer")
        running = api.get(f"{P}/tasks/run-1").json()
        op.app.call_next(actions.confirm_and_run, op.app.screen, actions.cancel(running))
        note = await op.confirm(pilot, "Task run-1 (reports.build) is running on worker w1.",
                                "Its worker process is sent SIGTERM")
        assert note == "terminated run-1" and world.calls[-1][1]["terminate"] is True

        # a refusal of the server is the notification, in its words: here a row
        # that still said pending when the task had ended
        done = api.get(f"{P}/tasks/reports-01").json()
        assert not actions.can_cancel(done)
        stale = {**done, "state": "pending"}
        op.app.call_next(actions.confirm_and_run, op.app.screen, actions.cancel(stale))
        note = await op.confirm(pilot, "Task reports-01 (reports.build) has not started (pending).")
        assert note.startswith("409: ") and "(task_finished)" in note
    op.client.close()



async def test_schedules_create_edit_toggle_trigger_delete(world):
    admin = Console(world, "admin", "schedules")
    api = world.api("viewer")

    def row(name: str):
        return next((r for r in admin.rows() if r[1] == name), None)

    async with run(admin) as pilot:
        await admin.open(pilot, SchedulesScreen)
        await until(pilot, lambda: row("nightly-report") and row("cleanup-code"), "the schedules")
        assert row("nightly-report")[2:4] == ["reports.build", "cron 30 2 * * *"]
        assert row("nightly-report")[4].startswith("in ") and row("poll-mail")[0] == "off"
        assert row("cleanup-code")[6] == "code"

        # n: a new one; JSON is checked before anything is sent
        await pilot.press("n")
        await until(pilot, lambda: app_has(admin.app, "#sched-name"), "the form")
        await type_in(pilot, "hourly-sync")
        await pilot.press("tab")
        await type_in(pilot, "reports.sync")
        admin.app.screen.query_one("#sched-kind").value = "interval"
        admin.app.screen.query_one("#sched-when", Input).value = "15m"
        admin.app.screen.query_one("#sched-args", Input).value = "[1, 2"
        admin.app.screen.query_one("#sched-kwargs", Input).value = '{"full": true}'
        await submit(pilot, admin.app)
        await until(pilot, lambda: "args is not JSON" in screen_text(admin.app), "the JSON reason")
        admin.app.screen.query_one("#sched-args", Input).value = "[1, 2]"
        await submit(pilot, admin.app)
        note = await admin.confirm(pilot, "Creates hourly-sync in the scheduler's own store: reports.sync every 15m.")
        assert note == "created hourly-sync"
        await until(pilot, lambda: row("hourly-sync"), "the new schedule")
        created = next(s for s in api.get(f"{P}/schedules").json() if s["name"] == "hourly-sync")
        assert created["schedule"] == {"kind": "interval", "every": 900.0}
        assert (created["args"], created["kwargs"]) == ([1, 2], {"full": True})

        await filter_to(pilot, "hourly")
        assert [r[1] for r in admin.rows()] == ["hourly-sync"]

        # e: only what changed is sent
        await pilot.press("e")
        await until(pilot, lambda: app_has(admin.app, "#sched-when"), "the edit form")
        admin.app.screen.query_one("#sched-when", Input).value = "30m"
        await submit(pilot, admin.app)
        assert await admin.confirm(pilot, "schedule: every 30m") == "saved hourly-sync"
        await until(pilot, lambda: row("hourly-sync") and row("hourly-sync")[3] == "every 30m", "the edit")

        await pilot.press("space")
        assert await admin.confirm(pilot, "It stops firing until enabled again.") == "hourly-sync disabled"
        await until(pilot, lambda: row("hourly-sync")[0] == "off", "disabled")

        await pilot.press("t")
        assert await admin.confirm(pilot, "Sends reports.sync now") == "triggered hourly-sync"
        fires = api.get(f"{P}/schedules/{created['id']}/fires").json()
        assert [f["manual"] for f in fires] == [True]

        await pilot.press("x")
        assert await admin.confirm(pilot, "It will not run again.") == "deleted hourly-sync"
        await until(pilot, lambda: admin.rows() == [], "the schedule gone")
        assert all(s["name"] != "hourly-sync" for s in api.get(f"{P}/schedules").json())

        # entries defined in code are not edited here
        await pilot.press("escape")
        admin.app.screen.query_one("#listing-filter", Input).value = "cleanup"
        await until(pilot, lambda: [r[1] for r in admin.rows()] == ["cleanup-code"], "the code entry")
        await pilot.press("e")
        await until(pilot, lambda: any("defined in code" in n for n in admin.notes()), "the read-only note")
        assert isinstance(admin.app.screen, SchedulesScreen)
    admin.client.close()



async def test_audit_filter_detail_and_verification(world):
    # the world's two schedule creations, and a trigger: at least three entries whatever ran before
    api = world.api("operator")
    nightly = next(s for s in api.get(f"{P}/schedules").json() if s["name"] == "nightly-report")
    assert api.post(f"{P}/schedules/{nightly['id']}/trigger").status_code == 202
    op = Console(world, "operator", "audit")
    async with run(op) as pilot:
        await op.open(pilot, AuditScreen)
        await until(pilot, lambda: "✓ chain verified" in screen_text(op.app), "the verification")
        rows = world.api("admin").get(f"{P}/audit/verify").json()["rows"]
        assert f"chain verified: {rows} entries" in screen_text(op.app)
        await until(pilot, lambda: len(op.rows()) >= 3, "the entries")

        await filter_to(pilot, "action:schedule.*")
        await until(pilot, lambda: op.rows() and all(r[3].startswith("schedule.") for r in op.rows()),
                    "the schedule entries")
        assert "where action:schedule.*" in screen_text(op.app)
        op.app.screen.query_one("#listing-filter", Input).value = "action:schedule.* nightly"
        await until(pilot, lambda: op.rows() and all("nightly" in r[4] for r in op.rows()), "nightly's entries")
        await pilot.press("enter")
        await until(pilot, lambda: "seq " in screen_text(op.app) and '"actor"' in screen_text(op.app), "the detail")
    op.client.close()




async def test_trends_and_what_a_viewer_is_offered(world):
    viewer = Console(world, "viewer", "trends")

    def groups() -> list[str]:
        options = viewer.app.screen.query_one("#trend-groups", OptionList)
        return [str(options.get_option_at_index(i).id) for i in range(options.option_count)]

    async with run(viewer) as pilot:
        await viewer.open(pilot, TrendsScreen)
        await until(pilot, lambda: set(NAMES_) <= set(groups()), "the task names")
        screen = viewer.app.screen
        assert screen.chosen == groups()[0]
        await filter_to(pilot, "billing")
        assert groups() == ["billing.charge"]
        await until(pilot, lambda: "successes  total 6" in screen_text(viewer.app), "the charts")
        text = screen_text(viewer.app)
        assert "failures  total 6" in text and "runtime p99" in text and "name billing.charge" in text
        # p99 of a minute's runtimes within the sketch's 1 %: the worst minute ran 0.2 … 1.7 s in steps of 0.3
        billing = next(s for s in screen.all_series if s.group == "billing.charge")
        assert sum(billing.values["failure"]) == 6 and abs(max(v or 0 for v in billing.values["p99"]) - 1.4) <= 0.014

        await pilot.press("g")  # by queue
        await until(pilot, lambda: groups() == ["billing"], "the billing queue (the filter stays)")
        await pilot.press("b")  # hours: the same tasks in one or two buckets
        await until(pilot, lambda: screen.bucket == "hour" and groups() == ["billing"], "hour buckets")
        assert "per hour, last day" in screen_text(viewer.app)

        # a viewer reads every screen but is offered no action, and the keys do nothing
        await pilot.press("2")
        await until(pilot, lambda: isinstance(viewer.app.screen, WorkersScreen) and len(viewer.rows()) == 3
                    and viewer.app.screen.role_known, "the workers")
        assert "Control" not in screen_text(viewer.app)
        await pilot.press("c")
        assert isinstance(viewer.app.screen, WorkersScreen)
        await pilot.press("3")
        await until(pilot, lambda: isinstance(viewer.app.screen, QueuesScreen) and viewer.app.screen.role_known,
                    "the queues")
        await pilot.press("p", "d")
        assert isinstance(viewer.app.screen, QueuesScreen) and "Purge" not in screen_text(viewer.app)
        await pilot.press("4")
        await until(pilot, lambda: isinstance(viewer.app.screen, SchedulesScreen) and viewer.rows()
                    and viewer.app.screen.role_known, "the schedules")
        await pilot.press("n", "e", "x", "space", "t")
        assert isinstance(viewer.app.screen, SchedulesScreen)
        text = screen_text(viewer.app)
        assert not any(word in text for word in ("New", "Edit", "On/off", "Trigger", "Delete"))
        await pilot.press("5")  # the audit log is for operators: the server's refusal, once
        await until(pilot, lambda: any("(forbidden)" in n for n in viewer.notes("error")), "the refusal")
        assert viewer.rows() == []
        await pilot.press("1")
        await until(pilot, lambda: getattr(viewer.app.screen, "tasks", None), "the tasks")
        await until(pilot, lambda: actions.role_of(viewer.app.screen) == "viewer", "the role")
        await pilot.press("R", "C", "B")
        assert viewer.app.screen.__class__.__name__ == "TasksScreen"
        assert "Retry" not in screen_text(viewer.app)
    viewer.client.close()


NAMES_ = ("billing.charge", "reports.build", "emails.send")


def test_recorded_answers_have_the_live_shape(world):
    """The schedules and audit snapshots run on recorded answers
    (tests/tui/test_snapshots_ops.py): they must keep the real answers' shape."""
    from tests.tui.test_snapshots_ops import RECORDED

    api = world.api("admin")
    for (method, path), recorded in RECORDED.items():
        live = api.request(method, path).raise_for_status().json()
        assert type(live) is type(recorded), path
        if isinstance(live, list):
            assert live, path
            assert all(set(row) == set(live[0]) for row in recorded), path
        else:
            assert set(live) == set(recorded), path
            for key, value in live.items():
                if isinstance(value, list) and value and isinstance(value[0], dict):
                    assert all(set(row) == set(value[0]) for row in recorded[key]), (path, key)
