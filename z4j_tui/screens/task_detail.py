"""One task: its fields, redacted payload, exception, traceback and timeline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from itertools import zip_longest
from typing import Any

from rich.console import RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, OptionList, Static
from textual.widgets.option_list import Option

from z4j_tui.actions import TaskActions
from z4j_tui.client import Client, ClientError
from z4j_tui.screens import plain, seconds, state_text, when

FIELDS = ("task_id", "name", "engine", "state", "engine_state", "queue", "worker", "runtime", "retries",
          "created_at", "started_at", "finished_at", "parent_id", "root_id", "group_id", "chord_id")
PAYLOADS = ("args", "kwargs", "result")
CHILDREN = 20
"""Children listed under links; the tree has them all."""


class TaskDetailScreen(TaskActions, Screen[None]):
    BINDINGS = [*TaskActions.TASK_BINDINGS, Binding("escape", "app.pop_screen", "Back", id="back"),
                Binding("t", "tree", "Tree", tooltip="The workflow tree (DAG) this task belongs to", id="detail-tree"),
                Binding("l", "focus_links", "Links", tooltip="Parent, root and children: enter opens one",
                        id="focus-links")]

    class Loaded(Message):
        def __init__(self, task: dict[str, Any], children: list[dict[str, Any]]) -> None:
            super().__init__()
            self.task = task
            self.children = children

    class Failed(Message):
        def __init__(self, error: ClientError | str) -> None:
            super().__init__()
            self.exc = error
            self.error = str(error)

    def __init__(self, client: Client, project: str, engine: str, task_id: str) -> None:
        super().__init__()
        self.client = client
        self.project = project
        self.engine = engine
        self.task_id = task_id

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="summary"):
            yield Static("loading…", id="fields", classes="section")
            yield OptionList(id="links", classes="section")
            for name in (*PAYLOADS, "exception", "events"):
                yield Static(id=name, classes="section")
        with ScrollableContainer(id="traceback-pane"):
            yield Static(id="traceback")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.task_id
        for section in self.query(".section"):
            section.border_title = {"fields": "task", "links": "links (l)"}.get(section.id or "", section.id)
            section.display = section.id == "fields"  # the others appear when there is something to show
        pane = self.query_one("#traceback-pane")
        pane.border_title = "traceback"
        pane.display = False
        self.load()

    @work(exclusive=True, group="detail")
    async def load(self) -> None:
        try:
            task = await asyncio.to_thread(self.client.task, self.project, self.task_id, self.engine)
            page = await asyncio.to_thread(self.client.list_tasks, self.project, parent_id=self.task_id,
                                           engine=self.engine, limit=CHILDREN)
        except ClientError as exc:
            self.post_message(self.Failed(exc))
            return
        except ValueError as exc:  # a web server that is not a collector
            self.post_message(self.Failed(f"unexpected answer from {self.client.url}: {exc}"))
            return
        self.post_message(self.Loaded(task, page["tasks"]))

    @on(Failed)
    def show_failure(self, message: Failed) -> None:
        self.query_one("#fields", Static).update(plain(message.error))
        self.app.report_error(message.exc)

    def acted_task(self) -> dict[str, Any] | None:  # R, C (z4j_tui.actions)
        return getattr(self, "shown", None)

    def after_action(self) -> None:
        self.load()

    @on(Loaded)
    def show_task(self, message: Loaded) -> None:
        self.app.report_ok()
        task = self.shown = message.task
        self.show_links(task, message.children)
        self.sub_title = f"{task['name'] or ''}  {task['task_id']}"
        self.query_one("#fields", Static).update(self.fields_table(task))
        for name in PAYLOADS:
            self.show_section(name, task.get(name), lambda v: self.highlight(json_text(v), "json"))
        self.show_section("exception", task.get("exception"), plain)
        self.show_section("events", task.get("events"), events_table)
        self.query_one("#traceback", Static).update(self.highlight(task.get("traceback") or "", "pytb"))
        self.query_one("#traceback-pane").display = bool(task.get("traceback"))
        self.set_class(not task.get("traceback"), "-no-traceback")

    def show_links(self, task: dict[str, Any], children: list[dict[str, Any]]) -> None:
        links = self.query_one("#links", OptionList)
        links.clear_options()
        variables = self.app.get_css_variables()
        for role in ("parent", "root"):
            linked = task.get(f"{role}_id")
            if linked and linked != task["task_id"] and not (role == "root" and linked == task.get("parent_id")):
                links.add_option(Option(Text.assemble((f"{role:<7}", "bold"), linked), id=f"{role}:{linked}"))
        for child in children:
            label = Text.assemble(("child  ", "bold"), child["task_id"], "  ", plain(child.get("name")), "  ",
                                  state_text(child["state"], variables))
            links.add_option(Option(label, id=f"child:{child['task_id']}"))
        if len(children) == CHILDREN:
            links.add_option(Option(Text(f"… the first {CHILDREN} children; t shows the whole tree", style="dim"),
                                    disabled=True))
        links.display = links.option_count > 0

    def action_focus_links(self) -> None:
        links = self.query_one("#links", OptionList)
        if links.display:
            links.focus()

    def action_tree(self) -> None:
        from z4j_tui.screens.dag import DagScreen

        self.app.push_screen(DagScreen(self.client, self.project, self.engine, self.task_id))

    @on(OptionList.OptionSelected, "#links")
    def open_link(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.app.open_task(self.engine, event.option.id.partition(":")[2])

    def show_section(self, name: str, value: Any, render: Callable[[Any], RenderableType]) -> None:
        section = self.query_one(f"#{name}", Static)
        section.display = value not in (None, "", [], {})
        if section.display:
            section.update(render(value))

    def highlight(self, code: str, lexer: str) -> Syntax:
        theme = "monokai" if self.app.current_theme.dark else "default"
        return Syntax(code, lexer, theme=theme, background_color="default", word_wrap=lexer == "json")

    def fields_table(self, task: dict[str, Any]) -> Table:
        """The fields that are set, two key/value pairs a line to leave room for the traceback."""
        variables = self.app.get_css_variables()
        cells: list[tuple[str, Text]] = []
        for key in FIELDS:
            value = task.get(key)
            if value is None:
                continue
            if key == "state":
                cell = state_text(value, variables)
            elif key.endswith("_at"):
                cell = plain(when(value))
            elif key == "runtime":
                cell = plain(seconds(value))
            else:
                cell = plain(value)
            cells.append((key.replace("_", " "), cell))
        if task.get("redacted"):
            cells.append(("redacted", plain("yes, by the agent")))
        grid = Table.grid(padding=(0, 1), expand=True)
        for _ in range(2):
            grid.add_column(style="bold", justify="right")
            grid.add_column(ratio=1)
        half = (len(cells) + 1) // 2
        for left, right in zip_longest(cells[:half], cells[half:], fillvalue=("", plain(""))):
            grid.add_row(left[0], left[1], right[0], right[1])
        return grid


def json_text(value: Any) -> str:
    """One line when it is short, indented when it is not."""
    flat = json.dumps(value, ensure_ascii=False, default=str)
    return flat if len(flat) <= 100 else json.dumps(value, indent=2, ensure_ascii=False, default=str)


def events_table(events: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, expand=True)
    for column in ("time", "kind", "worker", ""):
        table.add_column(column)
    for event in events:
        note = event.get("exception") or (f"runtime {seconds(event['runtime'])}" if event.get("runtime") else "")
        if event.get("retries"):
            note = f"retry {event['retries']}  {note}".strip()
        table.add_row(plain(when(event.get("ts"))), plain(event.get("kind")), plain(event.get("worker")), plain(note))
    return table
