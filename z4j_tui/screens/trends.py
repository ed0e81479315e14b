"""Trends: per task name or per queue, successes and failures per bucket and
p50/p95/p99 runtime over time, drawn as terminal charts (Sparklines) from
the collector's rollups (docs/api.md#trends). ``g`` groups by name or
queue, ``b`` steps through minute (last hour), hour (last day) and day
(last 30 days) buckets; the list on the left picks the group."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, OptionList, Sparkline, Static
from textual.widgets.option_list import Option

from z4j_tui.app import ScreenSpec, register_screen
from z4j_tui.client import Client
from z4j_tui.widgets.listing import CSS, FetchFailed, asked, now_of, report_error, report_ok, tone_styles

BUCKETS = {"minute": (60, 60), "hour": (3600, 24), "day": (86400, 30)}
"""bucket -> (seconds, how many buckets are shown)."""
GROUPS = ("name", "queue")
CHARTS = (("success", "successes", "count"), ("failure", "failures", "count"), ("p50", "runtime p50", "time"),
          ("p95", "runtime p95", "time"), ("p99", "runtime p99", "time"))
REFRESH_FACTOR = 5
"""Trends move slowly: refreshed every this many app refresh intervals."""


def short(ts: float) -> str:
    """A bucket's start, short enough for the chart's border at 80 columns."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%m-%d %H:%M")


def duration(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:.0f}s"
    if value >= 1:
        return f"{value:.2f}s"
    return f"{value * 1000:.1f}ms"


@dataclass(frozen=True)
class Series:
    """One group's values per bucket, oldest first, gaps filled (counts 0, times None)."""

    group: str | None
    starts: list[float]
    values: dict[str, list[float | None]]

    def total(self, key: str) -> int:
        return int(sum(v or 0 for v in self.values[key]))


def series(body: dict[str, Any], group_by: str, step: float, first: float, count: int) -> list[Series]:
    starts = [first + i * step for i in range(count)]
    out = []
    for group in body.get("groups", []):
        by_start = {b["start"]: b for b in group["buckets"]}
        values: dict[str, list[float | None]] = {key: [] for key, _, _ in CHARTS}
        for start in starts:
            b = by_start.get(start)
            counts = (b or {}).get("counts", {})
            runtime = (b or {}).get("runtime") or {}
            values["success"].append(counts.get("success", 0))
            values["failure"].append(counts.get("failure", 0))
            for q in ("p50", "p95", "p99"):
                values[q].append(runtime.get(q))
        out.append(Series(group.get(group_by), starts, values))
    out.sort(key=lambda s: (-(s.total("success") + s.total("failure")), str(s.group)))
    return out


class Chart(Vertical):
    """A label with the figures that matter, over a Sparkline."""

    def __init__(self, key: str, title: str, kind: str) -> None:
        super().__init__(classes=f"chart chart-{key}")
        self.key, self.title, self.kind = key, title, kind

    def compose(self) -> ComposeResult:
        yield Static(classes="chart-label")
        yield Sparkline([], summary_function=max)

    def show(self, values: list[float | None]) -> None:
        known = [v for v in values if v is not None]
        if self.kind == "count":
            figures = f"total {int(sum(known))} · max {int(max(known, default=0))} per bucket"
        else:
            latest = next((v for v in reversed(values) if v is not None), None)
            figures = f"latest {duration(latest)} · max {duration(max(known, default=None) if known else None)}"
        self.query_one(".chart-label", Static).update(Text.assemble((self.title, "bold"), "  ", (figures, "dim")))
        # A Sparkline needs numbers: a bucket without runtimes draws as 0.
        self.query_one(Sparkline).data = [v or 0 for v in values]


class TrendsScreen(Screen[None]):
    TITLE = "Trends"
    CSS_PATH = CSS
    BINDINGS = [
        Binding("g", "group_by", "Name/queue", tooltip="Group by task name or by queue", id="trend-group"),
        Binding("b", "bucket", "Bucket", tooltip="Minute (last hour), hour (last day) or day (last 30 days)",
                id="trend-bucket"),
        Binding("r", "reload", "Refresh", id="refresh"),
        Binding("slash", "focus_filter", "Filter", id="focus-filter"),
        Binding("escape", "focus_groups", "Groups", show=False, id="focus-groups"),
    ]

    class Loaded(Message):
        def __init__(self, ask: tuple[str, str], first: float, body: dict[str, Any]) -> None:
            super().__init__()
            self.ask = ask
            self.first = first
            self.body = body

    def __init__(self, client: Client, project: str, refresh_interval: float = 2.0) -> None:
        super().__init__()
        self.client = client
        self.project = project
        self.refresh_interval = refresh_interval
        self.group_by = "name"
        self.bucket = "minute"
        self.all_series: list[Series] = []
        self.filter_text = ""
        self.chosen: str | None = None
        """The group shown in the charts; kept across refreshes."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="listing-status")
        yield Input(placeholder="filter groups…  (/)", id="listing-filter")
        with Horizontal():
            yield OptionList(id="trend-groups")
            with VerticalScroll(id="trend-charts"):
                for key, title, kind in CHARTS:
                    yield Chart(key, title, kind)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#trend-groups", OptionList).focus()
        self.set_interval(self.refresh_interval * REFRESH_FACTOR, self.tick)
        self.show_status()

    def on_screen_resume(self) -> None:
        self.reload()

    def tick(self) -> None:
        if self.is_active and not any(w.group == "trends" and w.is_running for w in self.workers):
            self.reload()

    # ------------------------------------------------------------------ I/O

    def window(self) -> tuple[float, float, int]:
        step, count = BUCKETS[self.bucket]
        last = math.floor(now_of(self) / step) * step
        return step, last - (count - 1) * step, count

    def reload(self) -> None:
        step, first, count = self.window()
        self.fetch((self.group_by, self.bucket), first, first + count * step)

    @work(thread=True, exclusive=True, group="trends", exit_on_error=False)
    def fetch(self, ask: tuple[str, str], first: float, until: float) -> None:
        body = asked(self, lambda: self.client.trends(self.project, group_by=ask[0], bucket=ask[1], since=first,
                                                      until=until))
        if body is not None:
            self.post_message(self.Loaded(ask, first, body))

    @on(Loaded)
    def loaded(self, message: Loaded) -> None:
        if message.ask != (self.group_by, self.bucket):
            return
        report_ok(self)
        step, count = BUCKETS[self.bucket]
        self.all_series = series(message.body, self.group_by, step, message.first, count)
        self.show_groups()

    @on(FetchFailed)
    def failed(self, message: FetchFailed) -> None:
        report_error(self, message.error)

    # ------------------------------------------------------------------ state

    def visible(self) -> list[Series]:
        needle = self.filter_text.lower()
        return [s for s in self.all_series if needle in str(s.group or "(none)").lower()]

    def show_groups(self) -> None:
        groups = self.query_one("#trend-groups", OptionList)
        shown = self.visible()
        groups.clear_options()
        tones = tone_styles(self)
        for s in shown:
            ok, bad = s.total("success"), s.total("failure")
            label = Text.assemble((str(s.group) if s.group is not None else "(none)"), "  ",
                                  (f"{ok}", tones["good"]), "/", (f"{bad}", tones["bad"] if bad else "dim"))
            groups.add_option(Option(label, id=str(s.group)))
        ids = [str(s.group) for s in shown]
        if shown:
            if self.chosen not in ids:
                self.chosen = ids[0]
            groups.highlighted = ids.index(self.chosen)
        else:
            self.chosen = None
        self.show_charts()
        self.show_status()

    def show_charts(self) -> None:
        chosen = next((s for s in self.all_series if str(s.group) == self.chosen), None)
        pane = self.query_one("#trend-charts")
        step, first, count = self.window()
        for chart in self.query(Chart):
            chart.show(chosen.values[chart.key] if chosen else [])
            chart.display = chosen is not None
        if chosen is None:
            pane.border_title = "no trend data in this window" if not self.all_series else "no group matches"
            pane.border_subtitle = ""
        else:
            pane.border_title = f"{self.group_by} {chosen.group if chosen.group is not None else '(none)'}"
            pane.border_subtitle = f"per {self.bucket}, {short(chosen.starts[0])} → {short(chosen.starts[-1] + step)} UTC"

    def show_status(self) -> None:
        step, count = BUCKETS[self.bucket]
        span = {"minute": "last hour", "hour": "last day", "day": "last 30 days"}[self.bucket]
        self.query_one("#listing-status", Static).update(
            f"by {self.group_by} · per {self.bucket}, {span} · {len(self.all_series)} groups (UTC)")

    # ------------------------------------------------------------------ input

    @on(OptionList.OptionHighlighted, "#trend-groups")
    def group_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id != self.chosen:
            self.chosen = event.option.id
            self.show_charts()

    def action_group_by(self) -> None:
        self.group_by = GROUPS[(GROUPS.index(self.group_by) + 1) % len(GROUPS)]
        self.changed()

    def action_bucket(self) -> None:
        order = list(BUCKETS)
        self.bucket = order[(order.index(self.bucket) + 1) % len(order)]
        self.changed()

    def changed(self) -> None:
        self.all_series, self.chosen = [], None
        self.show_groups()
        self.reload()

    def action_reload(self) -> None:
        self.reload()

    def action_focus_filter(self) -> None:
        self.query_one("#listing-filter", Input).focus()

    def action_focus_groups(self) -> None:
        self.query_one("#trend-groups", OptionList).focus()

    @on(Input.Changed, "#listing-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.show_groups()

    @on(Input.Submitted, "#listing-filter")
    def filter_submitted(self) -> None:
        self.action_focus_groups()


def _screen(app: Any) -> TrendsScreen:
    return TrendsScreen(app.client, app.project, app.refresh_interval)


register_screen(ScreenSpec("trends", "Trends", "6", _screen,
                           "Successes, failures and p50/p95/p99 runtime over time", order=60))
