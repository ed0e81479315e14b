"""The ``z4j`` command line: client one-shots, plus the server commands of
z4j_collector.cli when the collector extra is installed.

stdout is for data (``--json`` on every read); diagnostics go to stderr; every
failure is one line and a non-zero exit (set Z4J_DEBUG=1 for a traceback).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer

from z4j_tui import cli_actions, cli_identity, cli_notify, cli_reconciler, cli_schedules, cli_trends, demo
from z4j_tui.cli_common import (
    JsonOption, ProjectOption, SinceOption, UntilOption, UrlOption, done, fetch_pages, note, pick, print_json, table,
    when,
)
from z4j_tui.client import Client

app = typer.Typer(no_args_is_help=True, help="z4j: operator console for Python task queues.", add_completion=False)
tasks_app = typer.Typer(help="Tasks: list, show, tree.", no_args_is_help=True)
workers_app = typer.Typer(help="Workers.", no_args_is_help=True)
queues_app = typer.Typer(help="Queues.", no_args_is_help=True)
agents_app = typer.Typer(help="Agents: list, and (admins) create, revoke, rotate.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(workers_app, name="workers")
app.add_typer(queues_app, name="queues")
app.add_typer(agents_app, name="agents")
cli_identity.register(app)
cli_actions.register(tasks_app, queues_app, workers_app)
cli_schedules.register(app)
cli_notify.register(app)
cli_trends.register(app)
cli_reconciler.register(app)
demo.register(app)

try:  # the server commands exist only where the collector is installed
    from z4j_collector.cli import register as _register_server

    _server_groups: dict[str, typer.Typer] = _register_server(app)
except ImportError:
    _server_groups = {}
# `audit verify` and `checkpoint export` run on the collector's host; `audit
# list` goes through the API, so a CLI-only install has the group too.
audit_app = _server_groups.get("audit")
if audit_app is None:
    audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
    app.add_typer(audit_app, name="audit")

from z4j_tui import cli_agent  # noqa: E402 - `z4j agent celery` (observer mode)

cli_agent.register(app)


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
    since: SinceOption = None,
    until: UntilOption = None,
    search: Annotated[str | None, typer.Option(help="Free text in args, result, exception …")] = None,
    limit: Annotated[int, typer.Option(help="At most this many tasks (pages are fetched as needed)")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List tasks, newest first."""
    client = Client(url)

    def fetch(cursor: str | None, n: int) -> tuple[list[dict[str, Any]], str | None]:
        page = client.list_tasks(project, state=state, not_state=not_state, name=name, queue=queue, worker=worker,
                                 engine=engine, since=since, until=until, search=search, limit=n, cursor=cursor)
        return page["tasks"], page["next_cursor"] or None

    tasks = fetch_pages(fetch, limit)
    if as_json:
        print_json(tasks)
        return
    table(
        ["created", "state", "name", "task id", "queue", "worker", "runtime"],
        [[when(t["created_at"]), t["state"], t["name"], t["task_id"], t["queue"], t["worker"],
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
        print_json(task)
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
        typer.echo(f"  {when(ev['ts'])}  {ev['kind']}")


@tasks_app.command("tree")
def tasks_tree(
    task_id: str,
    url: UrlOption = None,
    project: ProjectOption = "default",
    engine: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOption = False,
) -> None:
    """The workflow around a task (chain, group, chord) as a tree, with state and runtime per node."""
    tree = Client(url).task_tree(project, task_id, engine)
    if as_json:
        print_json(tree)
        return
    from rich.console import Console

    Console(soft_wrap=True).print(draw_tree(tree))
    if tree["truncated"]:
        note(f"tree truncated at {tree['limit']} tasks")


_BADGES = {
    "success": ("green", "✔"), "failure": ("red", "✘"), "started": ("yellow", "▶"), "received": ("cyan", "●"),
    "retry": ("magenta", "↻"), "pending": ("dim", "○"), "revoked": ("red", "⊘"), "rejected": ("red", "⊘"),
    "lost": ("red", "?"),
}


def _badge(state: str | None) -> str:
    color, mark = _BADGES.get(state or "", ("dim", "○"))
    return f"[{color}]{mark} {state or 'not sent yet'}[/]"


def _secs(value: float | None) -> str:
    return "" if value is None else f" {value:.3f}s"


def draw_tree(tree: dict[str, Any]) -> Any:
    """A rich Tree of ``GET …/tasks/{id}/tree``'s answer."""
    from rich.markup import escape
    from rich.tree import Tree

    def label(node: dict[str, Any]) -> str:
        role = f"{node['role']}: " if node.get("role") else ""
        if node["type"] == "task":
            if not node["seen"]:
                return f"{role}{_badge(None)} [dim]{escape(node['task_id'])}[/]"
            ident = escape(node["task_id"])
            ident = f"[bold]{ident}[/] ◀" if node["task_id"] == tree["task_id"] else f"[dim]{ident}[/]"
            text = f"{role}{_badge(node['state'])} {escape(node['name'] or '?')} {ident}{_secs(node['runtime'])}"
            if node.get("retries"):
                text += f" retries={node['retries']}"
            if node.get("exception"):
                text += f" [red]{escape(node['exception'].splitlines()[0][:200])}[/]"
            return text
        counts = ", ".join(f"{n} {state}" for state, n in sorted(node["states"].items()))
        if node["type"] == "group":
            head = f"{role}group [dim]{escape(node['group_id'])}[/] ({node['size']} tasks)"
        else:
            head = f"{role}chord [dim]{escape(node['group_id'])}[/] → {escape(node['chord_id'])}"
        return f"{head} {_badge(node['state'])} {escape(f'[{counts}]')}{_secs(node['runtime'])}"

    def add(parent: Any, node: dict[str, Any]) -> None:
        branch = parent.add(label(node))
        for child in node["children"]:
            add(branch, child)

    top = Tree(f"workflow of {escape(tree['task_id'])} ({tree['nodes']} tasks"
               f"{', truncated' if tree['truncated'] else ''})")
    for node in tree["roots"]:
        add(top, node)
    return top


@workers_app.command("list")
def workers_list(url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Workers and when they were last heard from."""
    workers = Client(url).workers(project)
    if as_json:
        print_json(workers)
        return
    table(["engine", "worker", "state", "last seen"],
           [[w["engine"], w["name"], w["state"], when(w["last_seen_at"])] for w in workers])


@queues_app.command("list")
def queues_list(url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Queues and their last reported depth."""
    queues = Client(url).queues(project)
    if as_json:
        print_json(queues)
        return
    table(["engine", "queue", "depth", "updated"],
           [[q["engine"], q["name"], q["depth"], when(q["updated_at"])] for q in queues])


@agents_app.command("list")
def agents_list(url: UrlOption = None, project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Agents of the project (admin)."""
    agents = Client(url).agents(project)
    if as_json:
        print_json(agents)
        return
    table(["id", "name", "connected", "engines", "last seen", "dropped"],
           [[a["id"], a["name"], "yes" if a["connected"] else "no", ",".join(a["engines"]),
             when(a["last_seen_at"]), a["dropped_events"]] for a in agents])


def _agent_id(client: Client, project: str, agent: str) -> int:
    return pick(client.agents(project), agent, "name", "agent", prefer=lambda a: a["revoked_at"] is None)


def _agent_credentials(creds: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(creds)
    else:
        typer.echo(f"export Z4J_BRAIN_URL={creds['brain_url']}\nexport Z4J_TOKEN={creds['token']}\n"
                   f"export Z4J_HMAC_SECRET={creds['hmac_secret']}\nexport Z4J_PROJECT_ID={creds['project']}\n"
                   f"export Z4J_AGENT_NAME={creds['name']}")
    note("the token and secret are shown once; store them now")


@agents_app.command("create")
def agents_create(name: str, url: UrlOption = None, project: ProjectOption = "default",
                  as_json: JsonOption = False) -> None:
    """New agent (admin): prints its token and HMAC secret once, as export lines or JSON."""
    _agent_credentials(Client(url).create_agent(project, name), as_json)


@agents_app.command("revoke")
def agents_revoke(agent: Annotated[str, typer.Argument(help="Agent name or id")], url: UrlOption = None,
                  project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """Revoke an agent (admin): its connections close, its token stops working."""
    client = Client(url)
    agent_id = _agent_id(client, project, agent)
    client.revoke_agent(project, agent_id)
    done({"agent_id": agent_id, "revoked": True}, as_json, f"agent {agent} revoked")


@agents_app.command("rotate")
def agents_rotate(agent: Annotated[str, typer.Argument(help="Agent name or id")], url: UrlOption = None,
                  project: ProjectOption = "default", as_json: JsonOption = False) -> None:
    """New token and HMAC secret for an agent (admin); the old ones stop working now."""
    client = Client(url)
    _agent_credentials(client.rotate_agent(project, _agent_id(client, project, agent)), as_json)


@audit_app.command("list")
def audit_list(
    url: UrlOption = None,
    project: ProjectOption = "default",
    instance: Annotated[bool, typer.Option("--instance", help="The instance log (users, projects, logins; "
                                                               "superusers) instead of a project's")] = False,
    action: Annotated[str | None, typer.Option(help="Action, e.g. agent.create (trailing * for a prefix)")] = None,
    actor: Annotated[str | None, typer.Option(help="Who (e-mail, token or agent name)")] = None,
    outcome: Annotated[str | None, typer.Option(help="ok, denied, refused, sent …")] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[int, typer.Option(help="At most this many rows (pages are fetched as needed)")] = 100,
    as_json: JsonOption = False,
) -> None:
    """The audit log through the API, newest first (operators and up)."""
    client = Client(url)

    def fetch(before: int | None, n: int) -> tuple[list[dict[str, Any]], int | None]:
        page = client.audit(None if instance else project, action=action, actor=actor, outcome=outcome, since=since,
                            until=until, before=before, limit=n)
        return page["entries"], page["next_before"]

    rows = fetch_pages(fetch, limit)
    if as_json:
        print_json(rows)
        return
    table(["seq", "time", "actor", "source", "action", "target", "outcome"],
          [[r["seq"], when(r["ts"]), r["actor"], r["source"], r["action"], r["target"], r["outcome"]] for r in rows])


def main() -> None:
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback
        if os.environ.get("Z4J_DEBUG"):
            raise
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        sys.stderr.write(f"z4j: {message.splitlines()[0]}\n")
        raise SystemExit(1) from None
