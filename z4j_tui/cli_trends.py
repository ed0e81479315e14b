"""``z4j trends``: counts by state, failure rate and p50/p95/p99 runtime and
queue wait per task name, queue or engine over minute/hour/day buckets; and
``z4j retention show|set`` for the project's retention (days)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from z4j_tui.cli_common import (
    CliError, JsonOption, ProjectOption, SinceOption, UntilOption, UrlOption, done, print_json, table, when,
)
from z4j_tui.client import Client

retention_app = typer.Typer(help="How long a project keeps task events, tasks and trend rollups.",
                            no_args_is_help=True)
DaysOption = Annotated[str | None, typer.Option(help="Days, or 'default'")]


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value >= 100:
        return f"{value:.0f}s"
    if value >= 1:
        return f"{value:.2f}s"
    return f"{value * 1000:.1f}ms"


def trends(
    url: UrlOption = None,
    project: ProjectOption = "default",
    by: Annotated[str, typer.Option("--by", help="Group by name, queue or engine")] = "name",
    bucket: Annotated[str, typer.Option(help="minute, hour or day")] = "hour",
    since: SinceOption = None,
    until: UntilOption = None,
    name: Annotated[str | None, typer.Option(help="Only this task name")] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue")] = None,
    engine: Annotated[str | None, typer.Option(help="Only this engine")] = None,
    as_json: JsonOption = False,
) -> None:
    """Counts, failure rate and p50/p95/p99 runtime and queue wait per group and bucket (viewer)."""
    params = {"group_by": by, "bucket": bucket, "since": since, "until": until, "name": name, "queue": queue,
              "engine": engine}
    body = Client(url).request("GET", f"/api/v1/projects/{project}/trends",
                               params={k: v for k, v in params.items() if v is not None})
    if as_json:
        print_json(body)
        return
    rows: list[list[Any]] = []
    for group in body["groups"]:
        for b in group["buckets"]:
            c, rt, qw = b["counts"], b["runtime"], b["queue_wait"]
            rate = b["failure_rate"]
            rows.append([group[by] or "(none)", when(b["start"]), c["pending"], c["started"], c["success"],
                         c["failure"], c["retry"] or "", c["lost"] or "",
                         "" if rate is None else f"{rate:.1%}", _seconds(rt["p50"]), _seconds(rt["p95"]),
                         _seconds(rt["p99"]), _seconds(qw["p50"]), _seconds(qw["p95"]), _seconds(qw["p99"])])
    table([by, f"{bucket} (UTC)", "sent", "started", "ok", "failed", "retry", "lost", "fail %",
           "run p50", "run p95", "run p99", "wait p50", "wait p95", "wait p99"], rows)
    typer.echo(f"percentiles within {body['relative_error']:.0%} relative error", err=True)


def retention_show(url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """The retention in force (viewer); 'default' marks values not set on the project."""
    body = Client(url).request("GET", f"/api/v1/projects/{project}/retention")
    if as_json:
        print_json(body)
        return
    table(["kept", "days", "source"],
          [[k.removesuffix("_days"), body[k], "set" if body["set"][k] is not None else "default"]
           for k in ("events_days", "tasks_days", "rollups_days")])


def retention_set(
    url: UrlOption = None,
    project: ProjectOption = "default",
    events: DaysOption = None,
    tasks: DaysOption = None,
    rollups: DaysOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change retention in days (admin; audited); 'default' goes back to the default."""
    body: dict[str, int | None] = {}
    for key, value in (("events_days", events), ("tasks_days", tasks), ("rollups_days", rollups)):
        if value is None:
            continue
        if value == "default":
            body[key] = None
        elif value.isdigit():
            body[key] = int(value)
        else:
            raise CliError(f"--{key.removesuffix('_days')} must be a number of days or 'default', got {value!r}")
    if not body:
        raise CliError("give one or more of --events, --tasks, --rollups")
    result = Client(url).request("PUT", f"/api/v1/projects/{project}/retention", json=body)
    done(result, as_json, "retention: " + ", ".join(
        f"{k.removesuffix('_days')} {result[k]} days" for k in ("events_days", "tasks_days", "rollups_days")))


def register(app: typer.Typer) -> None:
    app.command("trends")(trends)
    retention_app.command("show")(retention_show)
    retention_app.command("set")(retention_set)
    app.add_typer(retention_app, name="retention")
