"""``z4j schedules``: periodic schedules (Celery Beat) through the collector's
API: list with next and last run, fire history, and changes that reach the
scheduler's own store (RedBeat, django-celery-beat, Z4JScheduler)."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from typing import Annotated, Any

import typer

from z4j_tui.cli_common import CliError, JsonOption, ProjectOption, UrlOption, done, pick, print_json, table, when
from z4j_tui.client import Client

schedules_app = typer.Typer(help="Periodic schedules (Celery Beat): list, fires, create, edit, delete, enable, "
                                 "disable, trigger.", no_args_is_help=True)

ScheduleArgument = Annotated[str, typer.Argument(help="Schedule name or id")]
EveryOption = Annotated[str | None, typer.Option("--every", help="Interval: seconds, or 30s, 5m, 2h, 1d")]
CronOption = Annotated[str | None, typer.Option("--cron", help="Crontab: 'minute hour day-of-month month "
                                                               "day-of-week', e.g. '*/5 * * * *'")]
AtOption = Annotated[str | None, typer.Option("--at", help="Once, at this time (ISO 8601 or epoch seconds)")]
ArgsOption = Annotated[str | None, typer.Option("--args", help="Positional arguments, a JSON array")]
KwargsOption = Annotated[str | None, typer.Option("--kwargs", help="Keyword arguments, a JSON object")]
QueueOption = Annotated[str | None, typer.Option("--queue", help="Queue to send to")]
OptionsOption = Annotated[str | None, typer.Option("--options", help="Send options, a JSON object (priority, "
                                                                     "expires, routing_key, …)")]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_BASE = "/api/v1/projects/{project}/schedules"


def _every(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise CliError(f"--every must be seconds or a number with s, m, h or d, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _at(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--at must be ISO 8601 or epoch seconds, got {text!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def _spec(every: str | None, cron: str | None, at: str | None) -> dict[str, Any] | None:
    given = [x for x in (every, cron, at) if x is not None]
    if len(given) > 1:
        raise CliError("give one of --every, --cron or --at")
    if every is not None:
        return {"kind": "interval", "every": _every(every)}
    if cron is not None:
        return {"kind": "crontab", "expr": cron}
    if at is not None:
        return {"kind": "clocked", "at": _at(at)}
    return None


def _json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"{what} is not JSON: {exc}") from None


def describe(spec: dict[str, Any] | None) -> str:
    spec = spec or {}
    kind = spec.get("kind")
    if kind == "interval":
        every = spec["every"]
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if every >= size and every % size == 0:
                return f"every {every / size:g}{unit}"
        return f"every {every:g}s"
    if kind == "crontab":
        return "cron " + " ".join(str(spec.get(f, "*")) for f in ("minute", "hour", "day_of_month", "month_of_year",
                                                                  "day_of_week"))
    if kind == "clocked":
        return f"once at {when(spec.get('at'))}"
    return f"{kind}: {spec.get('text', '')}".strip()


def _schedule_id(client: Client, project: str, wanted: str) -> int:
    return pick(client.request("GET", _BASE.format(project=project)), wanted, "name", "schedule")


def list_schedules(url: UrlOption = None, project: ProjectOption = "default",
                   source: Annotated[str | None, typer.Option(help="z4j, store or code")] = None,
                   as_json: JsonOption = False) -> None:
    """Schedules with their next and last run (viewer)."""
    params = {"source": source} if source else {}
    rows = Client(url).request("GET", _BASE.format(project=project), params=params)
    if as_json:
        print_json(rows)
        return
    table(["id", "name", "task", "schedule", "enabled", "next run", "last run", "runs", "source", "scheduler"],
          [[r["id"], r["name"], r["task"], describe(r["schedule"]), "yes" if r["enabled"] else "no",
            when(r["next_run_at"]), when(r["last_run_at"]), r["total_run_count"], r["source"], r["scheduler"]]
           for r in rows])


def fires(schedule: ScheduleArgument, url: UrlOption = None, project: ProjectOption = "default",
          limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 50,
          as_json: JsonOption = False) -> None:
    """When a schedule fired, and the task each fire sent (viewer)."""
    client = Client(url)
    sid = _schedule_id(client, project, schedule)
    rows = client.request("GET", f"{_BASE.format(project=project)}/{sid}/fires", params={"limit": limit})
    if as_json:
        print_json(rows)
        return
    table(["time", "task id", "task", "how"],
          [[when(f["ts"]), f["task_id"], f["task"], f"now, by {f['actor']}" if f["manual"] else "on schedule"]
           for f in rows])


def _body(task: str | None, every: str | None, cron: str | None, at: str | None, args: str | None,
          kwargs: str | None, queue: str | None, options: str | None) -> dict[str, Any]:
    body = {"task": task, "schedule": _spec(every, cron, at), "args": _json(args, "--args"),
            "kwargs": _json(kwargs, "--kwargs"), "queue": queue, "options": _json(options, "--options")}
    return {k: v for k, v in body.items() if v is not None}


def create(name: str, task: Annotated[str, typer.Option("--task", help="Task name")] = "",
           every: EveryOption = None, cron: CronOption = None, at: AtOption = None, args: ArgsOption = None,
           kwargs: KwargsOption = None, queue: QueueOption = None, options: OptionsOption = None,
           disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled")] = False,
           agent: Annotated[int | None, typer.Option("--agent", help="The scheduler agent's id (when several "
                                                                     "beats report to the project)")] = None,
           url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Create a schedule in the scheduler's store (admin)."""
    if not task:
        raise CliError("--task is required")
    body = _body(task, every, cron, at, args, kwargs, queue, options)
    if "schedule" not in body:
        raise CliError("give one of --every, --cron or --at")
    body["name"] = name
    if disabled:
        body["enabled"] = False
    if agent is not None:
        body["agent_id"] = agent
    row = Client(url).request("POST", _BASE.format(project=project), json=body)
    done(row, as_json, f"schedule {name} created ({describe(row['schedule'])}, next run {when(row['next_run_at'])})")


def edit(schedule: ScheduleArgument, task: Annotated[str | None, typer.Option("--task")] = None,
         every: EveryOption = None, cron: CronOption = None, at: AtOption = None, args: ArgsOption = None,
         kwargs: KwargsOption = None, queue: QueueOption = None, options: OptionsOption = None,
         url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Change a schedule; what is not given stays as it is (admin)."""
    body = _body(task, every, cron, at, args, kwargs, queue, options)
    if not body:
        raise CliError("nothing to change: give --task, --every/--cron/--at, --args, --kwargs, --queue or --options")
    client = Client(url)
    sid = _schedule_id(client, project, schedule)
    row = client.request("PATCH", f"{_BASE.format(project=project)}/{sid}", json=body)
    done(row, as_json, f"schedule {row['name']} changed ({describe(row['schedule'])})")


def delete(schedule: ScheduleArgument, url: UrlOption = None, project: ProjectOption = "default",
           as_json: JsonOption = False) -> None:
    """Delete a schedule from the scheduler's store (admin)."""
    client = Client(url)
    sid = _schedule_id(client, project, schedule)
    client.request("DELETE", f"{_BASE.format(project=project)}/{sid}")
    done({"id": sid, "deleted": True}, as_json, f"schedule {schedule} deleted")


def _switch(schedule: str, enabled: bool, url: str | None, project: str, as_json: bool) -> None:
    client = Client(url)
    sid = _schedule_id(client, project, schedule)
    row = client.request("POST", f"{_BASE.format(project=project)}/{sid}/{'enable' if enabled else 'disable'}")
    done(row, as_json, f"schedule {row['name']} {'enabled' if enabled else 'disabled'}")


def enable(schedule: ScheduleArgument, url: UrlOption = None, project: ProjectOption = "default",
           as_json: JsonOption = False) -> None:
    """Enable a schedule (operator)."""
    _switch(schedule, True, url, project, as_json)


def disable(schedule: ScheduleArgument, url: UrlOption = None, project: ProjectOption = "default",
            as_json: JsonOption = False) -> None:
    """Disable a schedule: beat skips it until enabled (operator)."""
    _switch(schedule, False, url, project, as_json)


def trigger(schedule: ScheduleArgument, url: UrlOption = None, project: ProjectOption = "default",
            as_json: JsonOption = False) -> None:
    """Send the schedule's task now, with its own arguments (operator); the schedule does not move."""
    client = Client(url)
    sid = _schedule_id(client, project, schedule)
    out = client.request("POST", f"{_BASE.format(project=project)}/{sid}/trigger")
    done(out, as_json, f"schedule {schedule} triggered: task {out['task_id']} sent at {when(time.time())}")


def register(app: typer.Typer) -> None:
    schedules_app.command("list")(list_schedules)
    schedules_app.command()(fires)
    schedules_app.command()(create)
    schedules_app.command()(edit)
    schedules_app.command()(delete)
    schedules_app.command()(enable)
    schedules_app.command()(disable)
    schedules_app.command()(trigger)
    app.add_typer(schedules_app, name="schedules")
