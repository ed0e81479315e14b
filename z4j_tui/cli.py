"""The ``z4j`` command line: client one-shots, plus the server commands of
z4j_collector.cli when the collector extra is installed.

stdout is for data (``--json`` on every read); diagnostics go to stderr; every
failure is one line and a non-zero exit (set Z4J_DEBUG=1 for a traceback).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import Annotated, Any

import typer

from z4j_tui.client import Client

app = typer.Typer(no_args_is_help=True, help="z4j: operator console for Python task queues.", add_completion=False)
tasks_app = typer.Typer(help="Tasks: list, show.", no_args_is_help=True)
workers_app = typer.Typer(help="Workers.", no_args_is_help=True)
queues_app = typer.Typer(help="Queues.", no_args_is_help=True)
agents_app = typer.Typer(help="Agents.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(workers_app, name="workers")
app.add_typer(queues_app, name="queues")
app.add_typer(agents_app, name="agents")

UrlOption = Annotated[str | None, typer.Option("--url", help="Collector URL (default $Z4J_URL or http://127.0.0.1:7400)")]
ProjectOption = Annotated[str, typer.Option("--project", "-p", envvar="Z4J_PROJECT", help="Project slug")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout")]

try:  # the server commands exist only where the collector is installed
    from z4j_collector.cli import register as _register_server

    _register_server(app)
except ImportError:
    pass


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _table(columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None, pad_edge=False)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console(soft_wrap=True).print(table)


@tasks_app.command("list")
def tasks_list(
    url: UrlOption = None,
    project: ProjectOption = "default",
    state: Annotated[str | None, typer.Option(help="State(s), comma-separated")] = None,
    not_state: Annotated[str | None, typer.Option(help="Exclude state(s)")] = None,
    name: Annotated[str | None, typer.Option(help="Task name (trailing * for a prefix)")] = None,
    queue: Annotated[str | None, typer.Option()] = None,
    worker: Annotated[str | None, typer.Option()] = None,
    engine: Annotated[str | None, typer.Option()] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, epoch or age (2h, 7d)")] = None,
    until: Annotated[str | None, typer.Option()] = None,
    search: Annotated[str | None, typer.Option(help="Free text in args, result, exception …")] = None,
    limit: Annotated[int, typer.Option(help="At most this many tasks (pages are fetched as needed)")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List tasks, newest first."""
    if limit < 1:
        raise ValueError("--limit must be at least 1")
    client = Client(url)
    tasks: list[dict[str, Any]] = []
    cursor = None
    while len(tasks) < limit:
        page = client.list_tasks(
            project, state=state, not_state=not_state, name=name, queue=queue, worker=worker, engine=engine,
            since=since, until=until, search=search, limit=min(1000, limit - len(tasks)), cursor=cursor,
        )
        tasks.extend(page["tasks"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    if as_json:
        _print_json(tasks)
        return
    _table(
        ["created", "state", "name", "task id", "queue", "worker", "runtime"],
        [[_when(t["created_at"]), t["state"], t["name"], t["task_id"], t["queue"], t["worker"],
          f"{t['runtime']:.3f}s" if t["runtime"] is not None else ""] for t in tasks],
    )


@tasks_app.command("show")
def tasks_show(
    task_id: str,
    url: UrlOption = None,
    project: ProjectOption = "default",
    engine: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOption = False,
) -> None:
    """One task: fields, redacted args/result, traceback, event timeline."""
    task = Client(url).task(project, task_id, engine)
    if as_json:
        _print_json(task)
        return
    for key in ("task_id", "name", "engine", "state", "engine_state", "queue", "worker", "runtime", "retries",
                "parent_id", "root_id", "group_id"):
        if task.get(key) is not None:
            typer.echo(f"{key:>12}: {task[key]}")
    for key in ("args", "kwargs", "result"):
        if task.get(key) is not None:
            typer.echo(f"{key:>12}: {json.dumps(task[key])}")
    if task.get("exception"):
        typer.echo(f"{'exception':>12}: {task['exception']}")
    if task.get("traceback"):
        typer.echo(task["traceback"].rstrip())
    typer.echo("events:")
    for ev in task["events"]:
        typer.echo(f"  {_when(ev['ts'])}  {ev['kind']}")


@workers_app.command("list")
def workers_list(url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Workers and when they were last heard from."""
    workers = Client(url).workers(project)
    if as_json:
        _print_json(workers)
        return
    _table(["engine", "worker", "state", "last seen"],
           [[w["engine"], w["name"], w["state"], _when(w["last_seen_at"])] for w in workers])


@queues_app.command("list")
def queues_list(url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Queues and their last reported depth."""
    queues = Client(url).queues(project)
    if as_json:
        _print_json(queues)
        return
    _table(["engine", "queue", "depth", "updated"],
           [[q["engine"], q["name"], q["depth"], _when(q["updated_at"])] for q in queues])


@agents_app.command("list")
def agents_list(url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Agents of the project (admin)."""
    agents = Client(url).agents(project)
    if as_json:
        _print_json(agents)
        return
    _table(["id", "name", "connected", "engines", "last seen", "dropped"],
           [[a["id"], a["name"], "yes" if a["connected"] else "no", ",".join(a["engines"]),
             _when(a["last_seen_at"]), a["dropped_events"]] for a in agents])


def main() -> None:
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback
        if os.environ.get("Z4J_DEBUG"):
            raise
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        sys.stderr.write(f"z4j: {message.splitlines()[0]}\n")
        raise SystemExit(1) from None
