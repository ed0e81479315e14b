"""Queues: depth as the agents last reported it, and the rate in and out
(tasks sent and finished per minute over the last minutes, from the trends
rollups); purge (the whole queue, or by task name and age, with or without
its dead letters) and requeue from the dead-letter store, each confirmed."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Checkbox, Input

from z4j_tui import actions
from z4j_tui.app import ScreenSpec, register_screen
from z4j_tui.widgets.listing import Listing, age, now_of, plain

RATE_WINDOW_MIN = 5
"""Minutes the rates are averaged over (whole minutes before this one)."""


def per_minute(count: int | None) -> str:
    if count is None:
        return ""
    rate = count / RATE_WINDOW_MIN
    return f"{rate:.1f}" if rate < 10 else f"{rate:.0f}"


class QueuesScreen(Listing):
    TITLE = "Queues"
    COLUMNS = (("queue", "name"), ("engine", "engine"), ("depth", "depth"), ("in/min", "in"),
               ("done/min", "done"), ("failed/min", "failed"), ("updated", "updated"))
    FILTER_HINT = "filter by queue or engine…  (/)"
    NEEDS = {"purge": actions.NEEDED, "requeue_dead": actions.NEEDED}
    BINDINGS = [
        Binding("p", "purge", "Purge", tooltip="Delete waiting messages of the queue (asks first)", id="purge"),
        Binding("d", "requeue_dead", "Requeue dead", tooltip="Put dead letters back on the queue (asks first)",
                id="requeue-dead"),
    ]

    def fetch(self) -> dict[str, Any]:
        queues = self.client.queues(self.project)
        end = now_of(self) // 60 * 60  # the current minute is still being counted
        trends = self.client.trends(self.project, group_by="queue", bucket="minute",
                                    since=end - RATE_WINDOW_MIN * 60, until=end)
        rates: dict[str, dict[str, int]] = {}
        for group in trends["groups"]:
            total = rates.setdefault(group["queue"] or "", {"in": 0, "done": 0, "failed": 0})
            for bucket in group["buckets"]:
                if bucket["start"] >= end:
                    continue
                counts = bucket["counts"]
                total["in"] += counts["pending"]
                total["done"] += counts["success"] + counts["failure"]
                total["failed"] += counts["failure"]
        return {"rows": queues, "rates": rates}

    def row_key(self, row: dict[str, Any]) -> str:
        return f"{row['engine']}:{row['name']}"

    def cells(self, row: dict[str, Any]) -> tuple[Any, ...]:
        rate = self.data.get("rates", {}).get(row["name"], {})
        depth = Text(str(row["depth"]), style="bold" if row["depth"] else "dim")  # the theme's text, stronger or not
        failed = per_minute(rate.get("failed"))
        return (plain(row["name"]), plain(row["engine"]), depth, per_minute(rate.get("in")),
                per_minute(rate.get("done")), self.toned(failed, "bad" if rate.get("failed") else ""),
                age(now_of(self) - row["updated_at"]))

    def text_of(self, row: dict[str, Any]) -> str:
        return f"{row['name']} {row['engine']}"

    def status(self) -> Text:
        waiting = sum(r["depth"] for r in self.rows)
        shown = f"showing {len(self.shown)} · " if self.filter_text else ""
        return Text(f"{shown}{len(self.rows)} queues, {waiting} waiting · rates: mean of the last "
                    f"{RATE_WINDOW_MIN} minutes")

    def action_purge(self) -> None:
        queue = self.selected()
        if queue is not None:
            self.app.push_screen(PurgeForm(queue), self.confirm)

    def action_requeue_dead(self) -> None:
        queue = self.selected()
        if queue is not None:
            self.app.push_screen(RequeueForm(queue), self.confirm)

    def confirm(self, action: actions.Action | None) -> None:
        if action is not None:
            actions.confirm_and_run(self, action, lambda command: self.reload(),
                                    client=self.client, project=self.project)


class PurgeForm(actions.ActionForm):
    """Which messages of the queue to purge: all, or by task name and age."""

    def __init__(self, queue: dict[str, Any]) -> None:
        super().__init__()
        self.queue = queue
        self.TITLE_TEXT = f"Purge {queue['name']}"

    def fields(self) -> ComposeResult:
        yield from actions.labelled("task name", Input(placeholder="only this task (empty: every task)",
                                                      id="purge-name"))
        yield from actions.labelled("older than", Input(placeholder="90s, 15m, 1h, 2d (empty: any age)",
                                                       id="purge-age"))
        yield Checkbox("also delete the queue's dead letters", id="purge-dead", compact=True)

    def on_mount(self) -> None:
        self.query_one("#purge-name", Input).focus()

    def build(self) -> actions.Action:
        older = self.query_one("#purge-age", Input).value.strip()
        if older and not (older[:-1] if older[-1] in "smhdw" else older).replace(".", "", 1).isdigit():
            raise ValueError(f"older than must be seconds or an age like 15m, 1h, 2d, got {older!r}")
        return actions.purge(self.queue, self.query_one("#purge-name", Input).value.strip() or None,
                             older or None, self.query_one("#purge-dead", Checkbox).value)


class RequeueForm(actions.ActionForm):
    """Which dead letters to put back: the ids given, or every one."""

    def __init__(self, queue: dict[str, Any]) -> None:
        super().__init__()
        self.queue = queue
        self.TITLE_TEXT = f"Requeue dead letters of {queue['name']}"

    def fields(self) -> ComposeResult:
        yield from actions.labelled("task ids", Input(placeholder="spaces or commas between (empty: every one)",
                                                     id="requeue-ids"))

    def on_mount(self) -> None:
        self.query_one("#requeue-ids", Input).focus()

    def build(self) -> actions.Action:
        ids = self.query_one("#requeue-ids", Input).value.replace(",", " ").split()
        return actions.requeue_dead(self.queue, ids or None)


def _screen(app: Any) -> QueuesScreen:
    return QueuesScreen(app.client, app.project, app.refresh_interval)


register_screen(ScreenSpec("queues", "Queues", "3", _screen, "Depths and rates; purge, requeue dead letters",
                           order=30))
