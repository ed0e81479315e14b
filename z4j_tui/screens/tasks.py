"""The task list: live from the stream, filtered and paged on the server.

- First page over REST (``limit`` PAGE), older pages with the ``next_cursor``
  keyset cursor as the cursor nears the end: a project with millions of
  tasks scrolls without loading them.
- The live stream (z4j_tui.stream) runs in a thread that only merges rows
  into ``pending`` (latest row per task); a timer applies them every
  FLUSH_INTERVAL, so a burst of thousands of changes a second costs the UI
  a few table updates a second.
- While the stream is down, the list is polled every ``refresh_interval``;
  after a reconnect or a resync frame it is refetched.
- Filters are one line: ``state:failure,retry name:reports.* queue:q
  worker:w engine:bare since:1h until:2026-11-21`` and any other words are
  the free-text search. They go to the server as the list's parameters.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.markup import escape
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, Static

from z4j_tui.actions import TaskActions
from z4j_tui.client import Client, ClientError
from z4j_tui.screens import STATE_COLORS, plain, seconds, state_text, when
from z4j_tui.stream import Stream

STATE_CYCLE = (None, "failure", "success", "started", "pending", "retry", "revoked")
"""What ``s`` steps through; None is every state."""
COLUMNS = (("created", "created"), ("state", "state"), ("name", "name"), ("task id", "task_id"),
           ("queue", "queue"), ("worker", "worker"), ("runtime", "runtime"))
PAGE = 200
"""Rows asked for at a time."""
MORE_AHEAD = 40
"""Ask for the next page when the cursor is this close to the last row."""
SEARCH_DELAY = 0.3
"""Seconds of quiet typing before the filter is sent."""
FLUSH_INTERVAL = 0.25
"""Seconds between two applications of the stream's pending rows."""
COUNTS_INTERVAL = 1.0
"""At most one counts request this often while changes stream in."""
FILTER_KEYS = ("state", "name", "queue", "worker", "engine", "since", "until")
SORTS = (("created", True), ("created", False), ("runtime", True), ("name", False), ("state", False))
"""What ``o`` steps through: (field, descending). The server sends newest first;
another order sorts the rows loaded so far."""
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class TaskFilter:
    state: str | None = None
    name: str = ""
    queue: str = ""
    worker: str = ""
    engine: str = ""
    since: str = ""
    until: str = ""
    search: str = ""

    @classmethod
    def parse(cls, text: str) -> TaskFilter:
        values: dict[str, Any] = {}
        words = []
        for word in text.split():
            key, sep, value = word.partition(":")
            if sep and key in FILTER_KEYS and value:
                values[key] = value
            else:
                words.append(word)
        return cls(**values, search=" ".join(words))

    def text(self) -> str:
        parts = [f"{f.name}:{getattr(self, f.name)}" for f in fields(self)
                 if f.name != "search" and getattr(self, f.name)]
        return " ".join([*parts, self.search]).strip()

    def params(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def matches(self, task: dict[str, Any], now: float) -> bool | None:
        """Whether a streamed task belongs in the list; None when only the server can tell (a search)."""
        if self.state and task.get("state") not in self.state.split(","):
            return False
        if self.name:
            name = task.get("name") or ""
            if not (name.startswith(self.name[:-1]) if self.name.endswith("*") else name == self.name):
                return False
        for key in ("queue", "worker", "engine"):
            if getattr(self, key) and task.get(key) != getattr(self, key):
                return False
        created = task.get("created_at") or 0
        since, until = parse_time(self.since, now), parse_time(self.until, now)
        if (since is not None and created < since) or (until is not None and created >= until):
            return False
        return None if self.search else True


def parse_time(value: str, now: float) -> float | None:
    """The list's time forms (epoch, ISO 8601, an age like 15m); None when empty or not understood."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    if value[-1] in AGE_UNITS:
        try:
            return now - float(value[:-1]) * AGE_UNITS[value[-1]]
        except ValueError:
            return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def row_key(task: dict[str, Any]) -> str:
    # A task id is unique per engine, not across engines.
    return f"{task['engine']}:{task['task_id']}"


class Stamp(str):
    """The created cell: its text, and the row it belongs to (sorting looks the task up)."""

    key: str

    def __new__(cls, text: str, key: str) -> Stamp:
        stamp = super().__new__(cls, text)
        stamp.key = key
        return stamp


class TaskTable(DataTable):
    # DataTable's own enter binding is hidden; this one shows in the footer.
    BINDINGS = [Binding("enter", "select_cursor", "Open", id="open-task"),
                Binding("end", "scroll_bottom", "Last", show=False, tooltip="The last row (loads older pages)"),
                Binding("home", "scroll_top", "First", show=False, tooltip="The first row")]


class TasksScreen(TaskActions, Screen[None]):
    BINDINGS = [*TaskActions.TASK_BINDINGS, TaskActions.BULK_BINDING,
        Binding("s", "cycle_state", "State", tooltip="Cycle the state filter", id="cycle-state"),
        Binding("slash", "focus_filter", "Filter", tooltip="Filter: state: name: queue: worker: engine: "
                "since: until: and free text", id="focus-filter"),
        Binding("o", "cycle_sort", "Sort", tooltip="Cycle the sort order", id="cycle-sort"),
        Binding("t", "tree", "Tree", tooltip="The workflow tree (DAG) of the task under the cursor", id="tree"),
        Binding("r", "reload", "Refresh", tooltip="Fetch the list again", id="refresh"),
        Binding("x", "clear_filter", "Clear", show=False, tooltip="Clear every filter", id="clear-filter"),
        Binding("escape", "focus_table", "Table", show=False, id="focus-table"),
        Binding("q", "app.quit", "Quit", id="quit"),
    ]

    class Loaded(Message):
        """A worker fetched one page of tasks (and, for a first page, the counts)."""

        def __init__(self, filter: TaskFilter, tasks: list[dict[str, Any]], counts: dict[str, int] | None,
                     next_cursor: str | None, more: bool) -> None:
            super().__init__()
            self.filter = filter
            self.tasks = tasks
            self.counts = counts
            self.next_cursor = next_cursor
            self.more = more

    class Counted(Message):
        def __init__(self, counts: dict[str, int]) -> None:
            super().__init__()
            self.counts = counts

    class Failed(Message):
        """A worker got an error from the collector."""

        def __init__(self, error: ClientError | str) -> None:
            super().__init__()
            self.exc = error
            self.error = str(error)

    class StreamUp(Message):
        """The stream (re)connected: what was missed while it was down is fetched again."""

    class StreamDown(Message):
        def __init__(self, error: ClientError) -> None:
            super().__init__()
            self.error = error

    class Resync(Message):
        """The collector dropped changes for this reader: refetch."""

    def __init__(self, client: Client, project: str, refresh_interval: float = 2.0) -> None:
        super().__init__()
        self.client = client
        self.project = project
        self.refresh_interval = refresh_interval
        self.filter = TaskFilter()
        self.sort = SORTS[0]
        self.counts: dict[str, int] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        """Rows shown, by row key."""
        self.cells_shown: dict[str, tuple[Any, ...]] = {}
        self.next_cursor: str | None = None
        self.search_timer: Timer | None = None
        self.pending: dict[str, dict[str, Any]] = {}
        """Stream rows not applied yet (latest per task), filled by the stream thread."""
        self.pending_lock = threading.Lock()
        self.stopping = threading.Event()
        self.live = False
        self.counts_due = 0.0
        self.batches = 0
        """Stream batches applied to the table (each one table update)."""
        self.streamed = 0
        """Task rows the stream delivered."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="counts")
        yield Input(placeholder="/ filter: state:failure name:reports.* queue: worker: since:1h  words…", id="filter")
        yield TaskTable(id="tasks", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#tasks", DataTable)
        for label, key in COLUMNS:
            table.add_column(label, key=key)
        table.focus()
        self.show_counts()
        self.set_interval(self.refresh_interval, self.tick)
        self.set_interval(FLUSH_INTERVAL, self.flush)
        self.follow_stream()

    def on_unmount(self) -> None:
        self.stopping.set()

    def on_screen_resume(self) -> None:
        # On start, and on coming back from another screen: don't wait for the tick.
        self.refresh_tasks()

    def tick(self) -> None:
        # The stream keeps the list current; polling is the fallback while it is down.
        # Nobody looks at the list behind another screen; and a slow collector
        # gets its answer finished, not a pile of new questions.
        busy = any(w.node is self and w.group == "refresh" and w.is_running for w in self.workers)
        if self.is_active and not busy and not self.live:
            self.refresh_tasks()

    # ------------------------------------------------------------------ I/O

    @work(exclusive=True, group="refresh")
    async def refresh_tasks(self, counts: bool = True) -> None:
        """``counts=False`` on a filter change: the counts route takes no filters."""
        filter = self.filter

        def fetch() -> tuple[dict[str, Any], dict[str, int] | None]:
            page = self.client.list_tasks(self.project, **filter.params(), limit=PAGE)
            return page, self.client.task_counts(self.project) if counts else None

        try:
            page, counts = await asyncio.to_thread(fetch)
            message = self.Loaded(filter, page["tasks"], counts, page.get("next_cursor"), more=False)
        except ClientError as exc:
            self.post_message(self.Failed(exc))
            return
        except (ValueError, KeyError, TypeError) as exc:  # a web server that is not a collector
            self.post_message(self.Failed(f"unexpected answer from {self.client.url}: {exc}"))
            return
        self.post_message(message)

    @work(exclusive=True, group="more")
    async def load_more(self, cursor: str) -> None:
        filter = self.filter
        try:
            page = await asyncio.to_thread(self.client.list_tasks, self.project, **filter.params(),
                                           limit=PAGE, cursor=cursor)
        except ClientError as exc:
            self.post_message(self.Failed(exc))
            return
        self.post_message(self.Loaded(filter, page["tasks"], None, page.get("next_cursor"), more=True))

    @work(exclusive=True, group="counts")
    async def refresh_counts(self) -> None:
        try:
            counts = await asyncio.to_thread(self.client.task_counts, self.project)
        except ClientError as exc:
            self.post_message(self.Failed(exc))
            return
        self.post_message(self.Counted(counts))

    @work(thread=True, exclusive=True, group="stream")
    def follow_stream(self) -> None:
        """Connect, verify, merge rows into ``pending``; on any failure wait and reconnect."""
        delay = 0.5
        while not self.stopping.is_set():
            stream = Stream(self.client.url, self.client.token or "", self.project)
            try:
                stream.open()
                delay = 0.5
                self.post_message(self.StreamUp())
                for data in stream.frames(timeout=0.5):
                    if self.stopping.is_set():
                        return
                    if data is None:
                        continue
                    if data.get("type") == "resync":
                        self.post_message(self.Resync())
                    rows = data.get("tasks") or []
                    if rows:
                        with self.pending_lock:
                            for task in rows:
                                self.pending[row_key(task)] = task
                            self.streamed += len(rows)
            except ClientError as exc:
                self.post_message(self.StreamDown(exc))
            finally:
                stream.close()
            self.stopping.wait(delay)
            delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------------ state

    @on(Loaded)
    def show_loaded(self, message: Loaded) -> None:
        self.app.report_ok()
        if message.filter != self.filter:
            return  # an answer to a question nobody asks any more
        if message.counts is not None:
            self.counts = message.counts
            self.show_counts()
        self.next_cursor = message.next_cursor
        tasks = {row_key(t): t for t in message.tasks}
        if message.more:
            tasks = {**self.tasks, **tasks}
        self.show_tasks(tasks)

    @on(Counted)
    def show_counted(self, message: Counted) -> None:
        self.counts = message.counts
        self.show_counts()

    @on(Failed)
    def show_failure(self, message: Failed) -> None:
        self.app.report_error(message.exc)

    @on(StreamUp)
    def stream_up(self) -> None:
        was_live, self.live = self.live, True
        self.show_counts()
        if not was_live:
            self.refresh_tasks()  # what changed while the stream was down

    @on(StreamDown)
    def stream_down(self, message: StreamDown) -> None:
        self.live = False
        self.show_counts()
        self.app.report_error(message.error)

    @on(Resync)
    def resync(self) -> None:
        self.refresh_tasks()

    def flush(self) -> None:
        """Apply what the stream delivered since the last flush: one table update."""
        with self.pending_lock:
            batch, self.pending = self.pending, {}
        if not batch:
            return
        self.batches += 1
        now = self.app.now()
        oldest = min((t.get("created_at") or 0 for t in self.tasks.values()), default=0)
        tasks = dict(self.tasks)
        refetch = False
        for key, row in batch.items():
            task = {**tasks.get(key, {}), **row}
            belongs = self.filter.matches(task, now)
            if belongs is None:  # a search: the server decides
                if key not in tasks:
                    refetch = True
                else:
                    tasks[key] = task
            elif not belongs:
                tasks.pop(key, None)
            elif key in tasks or self.next_cursor is None or (task.get("created_at") or 0) >= oldest:
                tasks[key] = task
        self.show_tasks(tasks)
        if refetch and self.next_cursor is not None and len(self.tasks) <= PAGE:
            self.refresh_tasks()
        if time.monotonic() >= self.counts_due:
            self.counts_due = time.monotonic() + COUNTS_INTERVAL
            self.refresh_counts()

    def show_counts(self) -> None:
        total = sum(self.counts.values())
        parts = [self.count_markup(None, total)]
        parts += [self.count_markup(s, n) for s, n in sorted(self.counts.items(), key=self.state_order) if n]
        if self.filter.state and not self.counts.get(self.filter.state):
            parts.append(self.count_markup(self.filter.state, 0))
        field, descending = self.sort
        if self.sort != SORTS[0]:
            parts.append(f"sort {field} {'↓' if descending else '↑'}")
        parts.append("[$text-success]● live[/]" if self.live else "[$text-muted]○ polling[/]")
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

    def sort_value(self, key: str) -> Any:
        field, descending = self.sort
        value = self.tasks[key].get(field)
        if field == "created":
            value = self.tasks[key].get("created_at") or 0
        elif field == "runtime":
            value = value if value is not None else -1.0
        else:
            value = value or ""
        return value

    def show_tasks(self, tasks: dict[str, dict[str, Any]], resort: bool = False) -> None:
        """Show these rows (in the sort order), changing only what changed; the cursor stays on its task."""
        table = self.query_one("#tasks", DataTable)
        variables = self.app.get_css_variables()
        current = self.cursor_key()
        old = self.cells_shown
        cells = {key: self.cells(key, task, variables) for key, task in tasks.items()}
        gone = [key for key in old if key not in cells]
        self.tasks = tasks
        if len(gone) > len(cells) // 2:  # mostly new rows: start again
            table.clear()
            old = {}
        else:
            for key in gone:
                table.remove_row(key)
        added = False
        for key, row in cells.items():
            if key not in old:
                table.add_row(*row, key=key)
                added = True
            elif old[key] != row:
                for (_, column), before, after in zip(COLUMNS, old[key], row):
                    if before != after:
                        table.update_cell(key, column, after)
        self.cells_shown = cells
        field, descending = self.sort
        if resort or added or gone or field != "created":
            table.sort("created", key=lambda stamp: self.sort_value(stamp.key), reverse=descending)
        if current in cells:  # the cursor stays on its task, wherever that moved
            table.move_cursor(row=table.get_row_index(current), animate=False)

    def cells(self, key: str, task: dict[str, Any], variables: dict[str, str]) -> tuple[Any, ...]:
        return (Stamp(when(task.get("created_at")), key), state_text(task["state"], variables), plain(task.get("name")),
                plain(task["task_id"]), plain(task.get("queue")), plain(task.get("worker")),
                seconds(task.get("runtime")))

    def cursor_key(self) -> str | None:
        table = self.query_one("#tasks", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def cursor_task(self) -> dict[str, Any] | None:
        return self.tasks.get(self.cursor_key() or "")

    def acted_task(self) -> dict[str, Any] | None:  # R, C (z4j_tui.actions)
        return self.cursor_task()

    def bulk_filters(self) -> dict[str, Any]:  # B
        return self.filter.params()

    def set_filter(self, filter: TaskFilter) -> None:
        if filter == self.filter:
            return
        self.filter = filter
        self.next_cursor = None
        self.show_counts()
        self.refresh_tasks(counts=False)

    # ------------------------------------------------------------------ input

    def action_reload(self) -> None:
        self.refresh_tasks()

    def action_cycle_state(self) -> None:
        index = STATE_CYCLE.index(self.filter.state) if self.filter.state in STATE_CYCLE else 0
        self.set_filter(replace(self.filter, state=STATE_CYCLE[(index + 1) % len(STATE_CYCLE)]))
        self.query_one("#filter", Input).value = self.filter.text()

    def action_cycle_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.show_counts()
        self.show_tasks(self.tasks, resort=True)

    def action_clear_filter(self) -> None:
        self.query_one("#filter", Input).value = ""
        self.set_filter(TaskFilter())

    def action_tree(self) -> None:
        task = self.cursor_task()
        if task is not None:
            from z4j_tui.screens.dag import DagScreen

            self.app.push_screen(DagScreen(self.client, self.project, task["engine"], task["task_id"]))

    @on(DataTable.RowSelected, "#tasks")
    def open_task(self) -> None:
        task = self.cursor_task()
        if task is not None:
            self.app.open_task(task["engine"], task["task_id"])

    @on(DataTable.RowHighlighted, "#tasks")
    def near_the_end(self, event: DataTable.RowHighlighted) -> None:
        table = event.data_table
        if self.next_cursor and event.cursor_row >= table.row_count - MORE_AHEAD:
            busy = any(w.node is self and w.group == "more" and w.is_running for w in self.workers)
            if not busy:
                self.load_more(self.next_cursor)

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one("#tasks", DataTable).focus()

    @on(Input.Changed, "#filter")
    def search_changed(self, event: Input.Changed) -> None:
        if self.search_timer is not None:
            self.search_timer.stop()
        filter = TaskFilter.parse(event.value)
        self.search_timer = self.set_timer(SEARCH_DELAY, lambda: self.set_filter(filter))

    @on(Input.Submitted, "#filter")
    def search_submitted(self, event: Input.Submitted) -> None:
        if self.search_timer is not None:
            self.search_timer.stop()
        self.set_filter(TaskFilter.parse(event.value))
        self.action_focus_table()
