"""Schedules: each periodic entry with its schedule, next and last run and
whether it is enabled; create and edit (crontab, interval or one-off, args
and kwargs as JSON checked before anything is sent), delete, enable/disable
and trigger-now, each confirmed. Entries defined in code are read-only
(enable/disable and trigger where the scheduler allows)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Checkbox, Input, Select

from z4j_tui import actions
from z4j_tui.app import ScreenSpec, register_screen
from z4j_tui.widgets.listing import Listing, age, now_of, plain

KINDS = ("crontab", "interval", "clocked")
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
"""Crontab fields in the order of a crontab line."""


def spec_text(spec: dict[str, Any]) -> str:
    kind = spec.get("kind")
    if kind == "interval":
        every = float(spec.get("every", 0))
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if every >= size and every % size == 0:
                return f"every {int(every // size)}{unit}"
        return f"every {every:g}s"
    if kind == "crontab":
        return "cron " + " ".join(str(spec.get(f, "*")) for f in CRON_FIELDS)
    if kind == "clocked":
        at = spec.get("at")
        return f"once at {utc(at)}" if isinstance(at, (int, float)) else "once"
    return str(kind or "?")


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


def relative(ts: float | None, now: float) -> str:
    if ts is None:
        return ""
    return f"in {age(ts - now)}" if ts >= now else f"{age(now - ts)} ago"


def parse_spec(kind: str, text: str) -> dict[str, Any]:
    """The schedule from the form; ValueError with a one-line reason."""
    text = text.strip()
    if kind == "interval":
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
        try:
            every = float(number) * units[unit]
        except ValueError:
            raise ValueError(f"interval must be seconds or like 30s, 5m, 1h, got {text!r}") from None
        if every <= 0:
            raise ValueError("interval must be above 0")
        return {"kind": "interval", "every": every}
    if kind == "crontab":
        if len(text.split()) != 5:
            raise ValueError(f"crontab needs 5 fields (minute hour day month weekday), got {text!r}")
        return {"kind": "crontab", "expr": text}
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"one-off time must look like 2026-12-01 09:30 (UTC), got {text!r}") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return {"kind": "clocked", "at": at.timestamp()}


def spec_input(spec: dict[str, Any]) -> str:
    """A schedule as the form's text for its kind."""
    kind = spec.get("kind")
    if kind == "interval":
        return f"{float(spec.get('every', 0)):g}"
    if kind == "crontab":
        return " ".join(str(spec.get(f, "*")) for f in CRON_FIELDS)
    if kind == "clocked" and isinstance(spec.get("at"), (int, float)):
        return utc(spec["at"])
    return ""


def parse_json(name: str, text: str, kind: type) -> Any:
    try:
        value = json.loads(text or ("[]" if kind is list else "{}"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, kind):
        want = "an array, like [1, \"a\"]" if kind is list else "an object, like {\"key\": 1}"
        raise ValueError(f"{name} must be a JSON {want}, got {type(value).__name__}")
    return value


class SchedulesScreen(Listing):
    TITLE = "Schedules"
    COLUMNS = (("on", "enabled"), ("name", "name"), ("task", "task"), ("schedule", "schedule"),
               ("next run", "next"), ("last run", "last"), ("source", "source"))
    FILTER_HINT = "filter by name, task or queue…  (/)"
    NEEDS = {"new": "admin", "edit": "admin", "delete": "admin", "toggle": "operator", "trigger": "operator"}
    BINDINGS = [
        Binding("n", "new", "New", tooltip="Create a schedule (crontab, interval or one-off)", id="new-schedule"),
        Binding("e", "edit", "Edit", tooltip="Change the schedule under the cursor", id="edit-schedule"),
        Binding("space", "toggle", "On/off", tooltip="Enable or disable the schedule", id="toggle-schedule"),
        Binding("t", "trigger", "Trigger", tooltip="Send the schedule's task now", id="trigger-schedule"),
        Binding("x", "delete", "Delete", tooltip="Delete the schedule", id="delete-schedule"),
    ]

    def fetch(self) -> dict[str, Any]:
        return {"rows": self.client.schedules(self.project)}

    def row_key(self, row: dict[str, Any]) -> str:
        return str(row["id"])

    def cells(self, row: dict[str, Any]) -> tuple[Any, ...]:
        now = now_of(self)
        on_ = self.toned("on", "good") if row["enabled"] else self.toned("off", "dim")
        source = row.get("source") or ""
        return (on_, plain(row["name"]), plain(row["task"]), plain(spec_text(row.get("schedule") or {})),
                relative(row.get("next_run_at") if row["enabled"] else None, now),
                relative(row.get("last_run_at"), now), Text(source, style="dim" if source == "code" else ""))

    def text_of(self, row: dict[str, Any]) -> str:
        return f"{row['name']} {row['task']} {row.get('queue') or ''}"

    def status(self) -> Text:
        on_ = sum(1 for r in self.rows if r["enabled"])
        shown = f"showing {len(self.shown)} · " if self.filter_text else ""
        return Text(f"{shown}{len(self.rows)} schedules, {on_} enabled · times in UTC, runs relative to now")

    def go(self, action: actions.Action | None) -> None:
        if action is not None:
            actions.confirm_and_run(self, action, lambda answer: self.reload(),
                                    client=self.client, project=self.project)

    def writable(self) -> dict[str, Any] | None:
        row = self.selected()
        if row is not None and row.get("source") == "code":
            self.notify(f"{row['name']} is defined in code: change it there", title="Schedules", markup=False)
            return None
        return row

    def action_new(self) -> None:
        self.app.push_screen(ScheduleForm(None), self.go)

    def action_edit(self) -> None:
        row = self.writable()
        if row is not None:
            self.app.push_screen(ScheduleForm(row), self.go)

    def action_delete(self) -> None:
        row = self.writable()
        if row is not None:
            self.go(actions.Action(f"Delete schedule {row['name']}",
                                   (f"Deletes {row['name']} ({row['task']}, {spec_text(row['schedule'])}) from the "
                                    "scheduler's own store.", "It will not run again. Its fire history is kept."),
                                   f"schedules/{row['id']}", method="DELETE", command=False, danger=True,
                                   done=lambda answer: f"deleted {row['name']}"))

    def action_toggle(self) -> None:
        row = self.selected()
        if row is None:
            return
        verb = "disable" if row["enabled"] else "enable"
        what = ("It stops firing until enabled again." if row["enabled"]
                else f"It fires again: {spec_text(row['schedule'])}.")
        self.go(actions.Action(f"{verb.capitalize()} {row['name']}", (f"{verb.capitalize()}s schedule {row['name']} "
                                                                    f"in the scheduler's store.", what),
                               f"schedules/{row['id']}/{verb}", command=False,
                               done=lambda answer: f"{row['name']} {verb}d"))

    def action_trigger(self) -> None:
        row = self.selected()
        if row is not None:
            self.go(actions.Action(f"Trigger {row['name']}",
                                   (f"Sends {row['task']} now, with the schedule's own arguments and options.",
                                    "The schedule itself does not move."),
                                   f"schedules/{row['id']}/trigger", command=False,
                                   done=lambda answer: f"triggered {row['name']}"))


class ScheduleForm(actions.ActionForm):
    """Create (``row`` None) or edit a schedule. An edit sends only the
    fields that changed, so a redacted argument is never written back."""

    SUBMIT = "Save"

    def __init__(self, row: dict[str, Any] | None) -> None:
        super().__init__(box_id="schedule-form")
        self.row = row
        self.TITLE_TEXT = f"Edit {row['name']}" if row else "New schedule"
        spec = (row or {}).get("schedule") or {"kind": "crontab", "minute": "0", "hour": "*"}
        self.initial = {
            "name": (row or {}).get("name", ""), "task": (row or {}).get("task", ""),
            "kind": spec.get("kind") if spec.get("kind") in KINDS else "crontab", "when": spec_input(spec),
            "args": json.dumps((row or {}).get("args") or []), "kwargs": json.dumps((row or {}).get("kwargs") or {}),
            "queue": (row or {}).get("queue") or "", "enabled": bool((row or {}).get("enabled", True)),
        }

    def fields(self) -> ComposeResult:
        i = self.initial
        yield from actions.labelled("name", Input(i["name"], id="sched-name", disabled=self.row is not None))
        yield from actions.labelled("task", Input(i["task"], placeholder="proj.tasks.report", id="sched-task"))
        yield from actions.labelled("kind", Select([(k, k) for k in KINDS], allow_blank=False, value=i["kind"],
                                                   id="sched-kind"))
        yield from actions.labelled("when", Input(i["when"], id="sched-when"))
        yield from actions.labelled("args", Input(i["args"], placeholder="a JSON array", id="sched-args"))
        yield from actions.labelled("kwargs", Input(i["kwargs"], placeholder="a JSON object", id="sched-kwargs"))
        yield from actions.labelled("queue", Input(i["queue"], placeholder="empty: the task's default",
                                                   id="sched-queue"))
        yield Checkbox("enabled", i["enabled"], id="sched-enabled", compact=True)

    def on_mount(self) -> None:
        self.kind_changed()
        self.query_one("#sched-task" if self.row else "#sched-name", Input).focus()

    @on(Select.Changed, "#sched-kind")
    def kind_changed(self) -> None:
        self.query_one("#sched-when", Input).placeholder = {
            "crontab": "minute hour day month weekday, like */5 9-17 * * mon-fri",
            "interval": "seconds, or 30s, 5m, 1h", "clocked": "once, at 2026-12-01 09:30 (UTC)"}[self.kind]

    @property
    def kind(self) -> str:
        return str(self.query_one("#sched-kind", Select).value)

    def values(self) -> dict[str, Any]:
        value = lambda name: self.query_one(f"#sched-{name}", Input).value.strip()  # noqa: E731
        if not value("name"):
            raise ValueError("name is required")
        if not value("task"):
            raise ValueError("task is required")
        return {"name": value("name"), "task": value("task"), "kind": self.kind, "when": value("when"),
                "args": value("args"), "kwargs": value("kwargs"), "queue": value("queue"),
                "enabled": self.query_one("#sched-enabled", Checkbox).value}

    def build(self) -> actions.Action:
        v = self.values()
        changed = {k for k in v if v[k] != self.initial[k]} if self.row else set(v)
        body: dict[str, Any] = {}
        if "task" in changed:
            body["task"] = v["task"]
        if changed & {"kind", "when"}:
            body["schedule"] = parse_spec(v["kind"], v["when"])
        if "args" in changed:
            body["args"] = parse_json("args", v["args"], list)
        if "kwargs" in changed:
            body["kwargs"] = parse_json("kwargs", v["kwargs"], dict)
        if "queue" in changed:
            body["queue"] = v["queue"] or None
        if "enabled" in changed:
            body["enabled"] = v["enabled"]
        if self.row is None:
            body["name"] = v["name"]
            return actions.Action(
                f"Create schedule {v['name']}",
                (f"Creates {v['name']} in the scheduler's own store: {v['task']} "
                 f"{spec_text(body['schedule'])}" + (f" on queue {v['queue']}" if v["queue"] else "") + ".",
                 f"args {json.dumps(body['args'])}, kwargs {json.dumps(body['kwargs'])}; "
                 + ("enabled." if v["enabled"] else "disabled.")),
                "schedules", body, command=False, done=lambda answer: f"created {v['name']}")
        if not body:
            raise ValueError("nothing changed")
        shown = {k: (spec_text(val) if k == "schedule" else val) for k, val in body.items()}
        return actions.Action(
            f"Edit schedule {v['name']}",
            (f"Changes {v['name']} in the scheduler's own store:",
             *(f"  {k}: {json.dumps(val) if not isinstance(val, str) else val}" for k, val in shown.items())),
            f"schedules/{self.row['id']}", body, method="PATCH", command=False,
            done=lambda answer: f"saved {v['name']}")


def _screen(app: Any) -> SchedulesScreen:
    return SchedulesScreen(app.client, app.project, app.refresh_interval)


register_screen(ScreenSpec("schedules", "Schedules", "4", _screen,
                           "Periodic schedules: create, edit, enable/disable, trigger", order=40))
