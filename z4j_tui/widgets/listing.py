"""A screen that lists what the collector answers (workers, queues,
schedules, audit entries) in a table: refreshed by a worker thread every
``app.refresh_interval`` seconds while it is shown, filtered as you type,
the cursor kept on its row across refreshes, and actions shown only to the
roles allowed to do them (``NEEDS``: action name -> least role)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from z4j_tui.client import Client, ClientError

ROLES = ("viewer", "operator", "admin", "owner")
CSS = str(Path(__file__).with_name("ops.tcss"))
"""The stylesheet of these screens and their dialogs (a screen's CSS_PATH applies to the whole app)."""


def allows(role: str | None, needed: str) -> bool:
    """Whether ``role`` is ``needed`` or above (docs/api.md: roles are ordered)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def age(seconds: float | None) -> str:
    """A short age: 4s, 3m, 2h, 5d."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def plain(value: object) -> Text:
    """Server data as literal text, never Rich markup."""
    return Text("" if value is None else str(value))


TONES = {"good": "text-success", "warn": "text-warning", "bad": "text-error"}


def tone_styles(screen: Screen) -> dict[str, str]:
    """Rich styles for the tones, from the theme (light or dark): good, warn,
    bad, dim, and "" for none."""
    variables = screen.app.get_css_variables()
    styles = {"": "", "dim": "dim"}
    for tone, name in TONES.items():
        color = variables.get(name, "")
        styles[tone] = color if color.startswith("#") else ""
    return styles


def now_of(screen: Screen) -> float:
    """The app's clock (``app.now``, pinned in snapshot tests), else the wall clock."""
    clock: Callable[[], float] = getattr(screen.app, "now", time.time)
    return clock()


def report_error(screen: Screen, error: ClientError | str, title: str = "collector") -> None:
    """Through the app's ``report_error`` (once per error, connection tracking), else a notification."""
    report = getattr(screen.app, "report_error", None)
    if report is not None:
        report(error, title=title)
    else:
        screen.notify(str(error), title=title, severity="error", markup=False)


def report_ok(screen: Screen) -> None:
    report = getattr(screen.app, "report_ok", None)
    if report is not None:
        report()


def same(old: object, new: object) -> bool:
    """Cells equal as shown: Rich's Text equality ignores the base style (a
    theme switch changes only that)."""
    if isinstance(old, Text) and isinstance(new, Text):
        return old.plain == new.plain and old.style == new.style and old.spans == new.spans
    return old == new


class FetchFailed(Message):
    """A worker got an error from the collector (or an answer that is not the collector's)."""

    def __init__(self, error: ClientError | str) -> None:
        super().__init__()
        self.error = error


def asked(screen: Screen, ask: Callable[[], Any]) -> Any:
    """``ask()`` in a worker thread; on failure, post ``FetchFailed`` to the
    screen and return None."""
    try:
        return ask()
    except ClientError as exc:
        screen.post_message(FetchFailed(exc))
    except (ValueError, KeyError, TypeError) as exc:  # a web server that is not a collector
        client = getattr(screen, "client", None)
        screen.post_message(FetchFailed(f"unexpected answer from {getattr(client, 'url', '?')}: {exc}"))
    return None


class ListingTable(DataTable):
    DEFAULT_CSS = "ListingTable { height: 1fr; }"


class Listing(Screen[None]):
    """Subclasses give ``COLUMNS`` ((label, key), …) and ``fetch``, ``row_key``,
    ``cells`` and ``text_of`` (what the filter searches)."""

    CSS_PATH = CSS
    COLUMNS: ClassVar[tuple[tuple[str, str], ...]] = ()
    NEEDS: ClassVar[dict[str, str]] = {}
    """Action name -> the least role that may do it; hidden from the others."""
    FILTER_HINT: ClassVar[str] = "filter…  (/)"
    BINDINGS = [
        Binding("r", "reload", "Refresh", id="refresh"),
        Binding("slash", "focus_filter", "Filter", id="focus-filter"),
        Binding("escape", "focus_table", "Table", show=False, id="focus-table"),
    ]

    class Loaded(Message):
        """A refresh worker's answer: ``data`` as ``fetch`` returned it."""

        def __init__(self, generation: int, data: dict[str, Any], role: str | None) -> None:
            super().__init__()
            self.generation = generation
            self.data = data
            self.role = role

    def __init__(self, client: Client, project: str, refresh_interval: float = 2.0) -> None:
        super().__init__()
        self.client = client
        self.project = project
        self.refresh_interval = refresh_interval
        self.rows: list[dict[str, Any]] = []
        """Every row of the last answer, before the filter."""
        self.shown: dict[str, tuple[Any, ...]] = {}
        """Cells by row key, in table order: what the table shows now."""
        self.data: dict[str, Any] = {}
        self.filter_text = ""
        self.role: str | None = None
        self.role_known = False
        self.tones: dict[str, str] = {}
        """Styles of the theme's tones (``tone_styles``), for the cells."""
        self.generation = 0
        """Raised by every change of what is asked; older answers are dropped."""

    # ------------------------------------------------------------------ for subclasses

    def fetch(self) -> dict[str, Any]:
        """In a worker thread: ``{"rows": [...], …}`` from the collector."""
        raise NotImplementedError

    def row_key(self, row: dict[str, Any]) -> str:
        raise NotImplementedError

    def cells(self, row: dict[str, Any]) -> tuple[Any, ...]:
        raise NotImplementedError

    def text_of(self, row: dict[str, Any]) -> str:
        return " ".join(str(v) for v in row.values() if isinstance(v, (str, int, float)))

    def status(self) -> Text | str:
        """The line above the table."""
        return f"{len(self.shown)} of {len(self.rows)}" if self.filter_text else f"{len(self.rows)}"

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="listing-status")
        yield Input(placeholder=self.FILTER_HINT, id="listing-filter")
        yield ListingTable(id="listing", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#listing", DataTable)
        for label, key in self.COLUMNS:
            table.add_column(label, key=key)
        table.focus()
        self.set_interval(self.refresh_interval, self.tick)

    def on_screen_resume(self) -> None:
        self.reload()

    def tick(self) -> None:
        busy = any(w.group == "listing" and w.is_running for w in self.workers)
        if self.is_active and not busy:
            self.reload()

    # ------------------------------------------------------------------ I/O

    def reload(self, with_role: bool = False) -> None:
        self.generation += 1
        self.fetch_worker(self.generation, with_role or not self.role_known)

    @work(thread=True, exclusive=True, group="listing", exit_on_error=False)
    def fetch_worker(self, generation: int, with_role: bool) -> None:
        def ask() -> tuple[str | None, dict[str, Any]]:
            return self.client.my_role(self.project) if with_role else self.role, self.fetch()

        answer = asked(self, ask)
        if answer is not None:
            self.post_message(self.Loaded(generation, answer[1], answer[0]))

    @on(Loaded)
    def loaded(self, message: Loaded) -> None:
        if message.generation != self.generation:
            return  # an answer to a question nobody asks any more
        report_ok(self)
        if message.role != self.role or not self.role_known:
            self.role, self.role_known = message.role, True
            self.refresh_bindings()
        self.data = message.data
        self.rows = list(message.data.get("rows", []))
        self.took(message.data)
        self.show_rows()

    def took(self, data: dict[str, Any]) -> None:
        """A fresh answer arrived (for subclasses that show more than the rows)."""

    @on(FetchFailed)
    def failed(self, message: FetchFailed) -> None:
        report_error(self, message.error)

    # ------------------------------------------------------------------ state

    def toned(self, text: str, tone: str) -> Text:
        return Text(text, style=self.tones.get(tone, ""))

    def show_rows(self) -> None:
        self.tones = tone_styles(self)
        table = self.query_one("#listing", DataTable)
        needle = self.filter_text.lower()
        rows = [r for r in self.rows if needle in self.text_of(r).lower()]
        cells = {self.row_key(r): self.cells(r) for r in rows}
        if list(cells) == list(self.shown):
            for key, new in cells.items():
                for (_, column), old, value in zip(self.COLUMNS, self.shown[key], new):
                    if not same(old, value):
                        table.update_cell(key, column, value)
        else:
            current = self.cursor_key()
            table.clear()
            for key, values in cells.items():
                table.add_row(*values, key=key)
            if current in cells:  # the cursor stays on its row, wherever that moved
                table.move_cursor(row=list(cells).index(current), animate=False)
        self.shown = cells
        self.query_one("#listing-status", Static).update(self.status())

    def cursor_key(self) -> str | None:
        table = self.query_one("#listing", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def selected(self) -> dict[str, Any] | None:
        key = self.cursor_key()
        return next((r for r in self.rows if self.row_key(r) == key), None)

    def allows(self, needed: str) -> bool:
        return allows(self.role, needed)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        needed = self.NEEDS.get(action)
        return True if needed is None else self.allows(needed)

    # ------------------------------------------------------------------ input

    def action_reload(self) -> None:
        self.reload(with_role=True)

    def action_focus_filter(self) -> None:
        self.query_one("#listing-filter", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one("#listing", DataTable).focus()

    @on(Input.Changed, "#listing-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.set_filter(event.value)

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip()
        self.show_rows()

    @on(Input.Submitted, "#listing-filter")
    def filter_submitted(self) -> None:
        self.action_focus_table()
