"""The task list: newest first, counts per state, a state filter and free text."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.markup import escape
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, Static

from z4j_tui.client import Client, ClientError
from z4j_tui.screens import STATE_COLORS, plain, seconds, state_text, when
from z4j_tui.screens.task_detail import TaskDetailScreen

STATE_CYCLE = (None, "failure", "success", "started", "pending", "retry", "revoked")
"""What ``s`` steps through; None is every state."""
COLUMNS = (("created", "created"), ("state", "state"), ("name", "name"), ("task id", "task_id"),
           ("queue", "queue"), ("worker", "worker"), ("runtime", "runtime"))
PAGE = 200
"""Newest tasks shown; paging further back comes with the full console."""
SEARCH_DELAY = 0.3
"""Seconds of quiet typing before the search is sent."""


@dataclass(frozen=True)
class TaskFilter:
    state: str | None = None
    search: str = ""


def row_key(task: dict[str, Any]) -> str:
    # A task id is unique per engine, not across engines.
    return f"{task['engine']}:{task['task_id']}"


class TaskTable(DataTable):
    # DataTable's own enter binding is hidden; this one shows in the footer.
    BINDINGS = [Binding("enter", "select_cursor", "Open", id="open-task")]


class TasksScreen(Screen[None]):
    BINDINGS = [
        Binding("s", "cycle_state", "State", id="cycle-state"),
        Binding("r", "reload", "Refresh", id="refresh"),
        Binding("slash", "focus_filter", "Filter", id="focus-filter"),
        Binding("escape", "focus_table", "Table", show=False, id="focus-table"),
        Binding("q", "app.quit", "Quit", id="quit"),
    ]

    class Loaded(Message):
        """A refresh worker fetched one page of tasks and the counts."""

        def __init__(self, filter: TaskFilter, tasks: list[dict[str, Any]], counts: dict[str, int]) -> None:
            super().__init__()
            self.filter = filter
            self.tasks = tasks
            self.counts = counts

    class Failed(Message):
        """A refresh worker got an error from the collector."""

        def __init__(self, error: ClientError | str) -> None:
            super().__init__()
            self.exc = error
            self.error = str(error)

    def __init__(self, client: Client, project: str, refresh_interval: float = 2.0) -> None:
        super().__init__()
        self.client = client
        self.project = project
        self.refresh_interval = refresh_interval
        self.filter = TaskFilter()
        self.counts: dict[str, int] = {}
        self.rows: dict[str, tuple[Any, ...]] = {}
        """Cells by row key, in table order: what the table shows now."""
        self.tasks: dict[str, dict[str, Any]] = {}
        self.search_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="counts")
        yield Input(placeholder="search args, result, exception…  (/)", id="filter")
        yield TaskTable(id="tasks", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#tasks", DataTable)
        for label, key in COLUMNS:
            table.add_column(label, key=key)
        table.focus()
        self.show_counts()
        self.set_interval(self.refresh_interval, self.tick)

    def on_screen_resume(self) -> None:
        # On start, and on coming back from the detail: don't wait for the tick.
        self.refresh_tasks()

    def tick(self) -> None:
        # Nobody looks at the list behind the detail screen; and a slow
        # collector gets its answer finished, not a pile of new questions.
        busy = any(w.node is self and w.group == "refresh" and w.is_running for w in self.workers)
        if self.is_active and not busy:
            self.refresh_tasks()

    # ------------------------------------------------------------------ I/O

    @work(exclusive=True, group="refresh")
    async def refresh_tasks(self) -> None:
        filter = self.filter

        def fetch() -> tuple[list[dict[str, Any]], dict[str, int]]:
            page = self.client.list_tasks(self.project, state=filter.state, search=filter.search, limit=PAGE)
            return page["tasks"], self.client.task_counts(self.project)

        try:
            tasks, counts = await asyncio.to_thread(fetch)
        except ClientError as exc:
            self.post_message(self.Failed(exc))
            return
        except (ValueError, KeyError, TypeError) as exc:  # a web server that is not a collector
            self.post_message(self.Failed(f"unexpected answer from {self.client.url}: {exc}"))
            return
        self.post_message(self.Loaded(filter, tasks, counts))

    # ------------------------------------------------------------------ state

    @on(Loaded)
    def show_loaded(self, message: Loaded) -> None:
        self.app.report_ok()
        if message.filter != self.filter:
            return  # an answer to a question nobody asks any more
        self.counts = message.counts
        self.show_counts()
        self.show_tasks(message.tasks)

    @on(Failed)
    def show_failure(self, message: Failed) -> None:
        self.app.report_error(message.exc)

    def show_counts(self) -> None:
        total = sum(self.counts.values())
        parts = [self.count_markup(None, total)]
        parts += [self.count_markup(s, n) for s, n in sorted(self.counts.items(), key=self.state_order) if n]
        if self.filter.state and not self.counts.get(self.filter.state):
            parts.append(self.count_markup(self.filter.state, 0))
        self.query_one("#counts", Static).update("  ".join(parts))

    def count_markup(self, state: str | None, count: int) -> str:
        label = escape(state or "all")
        color = STATE_COLORS.get(state or "", "")
        text = f"[${color}]{label}[/] {count}" if color else f"{label} {count}"
        return f"[reverse] {text} [/]" if state == self.filter.state else f" {text} "

    @staticmethod
    def state_order(item: tuple[str, int]) -> int:
        order = list(STATE_COLORS)
        return order.index(item[0]) if item[0] in order else len(order)

    def show_tasks(self, tasks: list[dict[str, Any]]) -> None:
        table = self.query_one("#tasks", DataTable)
        variables = self.app.get_css_variables()
        rows = {row_key(t): self.cells(t, variables) for t in tasks}
        self.tasks = {row_key(t): t for t in tasks}
        if list(rows) == list(self.rows):
            for key, cells in rows.items():
                for (_, column), old, new in zip(COLUMNS, self.rows[key], cells):
                    if old != new:
                        table.update_cell(key, column, new)
        else:
            current = self.cursor_key()
            table.clear()
            for key, cells in rows.items():
                table.add_row(*cells, key=key)
            if current in rows:  # the cursor stays on its task, wherever that moved
                table.move_cursor(row=list(rows).index(current), animate=False)
        self.rows = rows

    @staticmethod
    def cells(task: dict[str, Any], variables: dict[str, str]) -> tuple[Any, ...]:
        return (when(task["created_at"]), state_text(task["state"], variables), plain(task["name"]),
                plain(task["task_id"]), plain(task["queue"]), plain(task["worker"]), seconds(task["runtime"]))

    def cursor_key(self) -> str | None:
        table = self.query_one("#tasks", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def set_filter(self, **changes: Any) -> None:
        self.filter = replace(self.filter, **changes)
        self.show_counts()
        self.refresh_tasks()

    # ------------------------------------------------------------------ input

    def action_reload(self) -> None:
        self.refresh_tasks()

    def action_cycle_state(self) -> None:
        index = STATE_CYCLE.index(self.filter.state) if self.filter.state in STATE_CYCLE else 0
        self.set_filter(state=STATE_CYCLE[(index + 1) % len(STATE_CYCLE)])

    @on(DataTable.RowSelected, "#tasks")
    def open_task(self) -> None:
        task = self.tasks.get(self.cursor_key() or "")
        if task is not None:
            self.app.push_screen(TaskDetailScreen(self.client, self.project, task["engine"], task["task_id"]))

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one("#tasks", DataTable).focus()

    @on(Input.Changed, "#filter")
    def search_changed(self, event: Input.Changed) -> None:
        if self.search_timer is not None:
            self.search_timer.stop()
        search = event.value.strip()
        self.search_timer = self.set_timer(SEARCH_DELAY, lambda: self.set_filter(search=search))

    @on(Input.Submitted, "#filter")
    def search_submitted(self, event: Input.Submitted) -> None:
        if self.search_timer is not None:
            self.search_timer.stop()
        self.set_filter(search=event.value.strip())
        self.action_focus_table()
