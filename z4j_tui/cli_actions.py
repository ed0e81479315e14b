"""Action verbs of the ``z4j`` CLI: retry, cancel, bulk-retry, purge,
requeue-dead, worker controls. Each one is one audited API call (docs/api.md#actions); the
outcome is one line on stderr (``--json``: the command on stdout), and a
refusal is one line and exit 1."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from z4j_tui.cli_common import CliError, JsonOption, ProjectOption, SinceOption, UntilOption, UrlOption, done, note
from z4j_tui.client import Client

WaitOption = Annotated[float, typer.Option("--wait", help="Seconds to wait for the agent's answer (0 to 30)")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking")]
EngineOption = Annotated[str | None, typer.Option(help="Engine, when the name is not enough")]

_INTS, _FLOATS, _BOOLS = ("n", "max", "min"), ("soft", "hard"), ("reload",)


def _post(client: Client, project: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return client.request("POST", f"/api/v1/projects/{project}/{path}",
                          json={k: v for k, v in body.items() if v is not None})


def _confirm(yes: bool, question: str, refusal: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(refusal)
    if not typer.confirm(question, default=False):
        raise CliError("nothing done")


def _outcome(command: dict[str, Any], as_json: bool, what: str, ok: str) -> None:
    """One line for a command's state: ``ok`` when the agent succeeded."""
    state = command["state"]
    if state == "failed":
        raise CliError(f"{what} failed: {command['error']} (command {command['id']})")
    if state == "timeout":
        raise CliError(f"{what}: the agent did not answer in time (command {command['id']})")
    if state != "succeeded":
        done(command, as_json, f"{what}: sent, the agent has not answered yet (command {command['id']})")
        return
    done(command, as_json, ok)


def tasks_retry(
    task_id: str,
    url: UrlOption = None,
    project: ProjectOption = "default",
    engine: EngineOption = None,
    wait: WaitOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Run a task again with its exact original arguments and routing (a new task that links to it)."""
    command = _post(Client(url), project, f"tasks/{task_id}/retry", {"engine": engine, "wait": wait})
    result = command.get("result") or {}
    _outcome(command, as_json, f"retry of {task_id}", f"retried {task_id} as {result.get('new_task_id')}")


def tasks_cancel(
    task_id: str,
    terminate: Annotated[bool, typer.Option(help="Kill the process running the task (SIGTERM)")] = False,
    yes: YesOption = False,
    url: UrlOption = None,
    project: ProjectOption = "default",
    engine: EngineOption = None,
    wait: WaitOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Revoke a queued task; with --terminate, kill a running one (asks first; --yes does not)."""
    if terminate:
        _confirm(yes, f"Kill the process running task {task_id}?",
                 "--terminate kills the process running the task: pass --yes to confirm")
    command = _post(Client(url), project, f"tasks/{task_id}/cancel",
                    {"terminate": terminate, "confirm": terminate, "engine": engine, "wait": wait})
    verb = "terminated" if terminate else "revoked"
    _outcome(command, as_json, f"cancel of {task_id}", f"{verb} {task_id}")


def tasks_bulk_retry(
    state: Annotated[str, typer.Option(help="State(s) to retry, comma-separated")] = "failure",
    name: Annotated[str | None, typer.Option(help="Task name (trailing * for a prefix)")] = None,
    queue: Annotated[str | None, typer.Option()] = None,
    worker: Annotated[str | None, typer.Option()] = None,
    engine: EngineOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    search: Annotated[str | None, typer.Option(help="Free text in args, result, exception …")] = None,
    limit: Annotated[int, typer.Option(help="At most this many tasks (max 10000)")] = 1000,
    resume: Annotated[str | None, typer.Option(help="Job id: run it again, skipping the tasks it retried")] = None,
    yes: YesOption = False,
    url: UrlOption = None,
    project: ProjectOption = "default",
    as_json: JsonOption = False,
) -> None:
    """Retry every task matching the filters, each once (a capped, resumable job)."""
    client = Client(url)
    body = {"state": state, "name": name, "queue": queue, "worker": worker, "engine": engine, "since": since,
            "until": until, "search": search, "limit": limit, "resume": resume}
    if resume is None:
        preview = _post(client, project, "tasks/bulk-retry", {**body, "dry_run": True})
        more = " (capped: more match)" if preview["capped"] else ""
        if preview["matched"] == 0:
            done(preview, as_json, "no task matches; nothing to retry")
            return
        _confirm(yes, f"Retry {preview['matched']} task(s){more}?",
                 f"{preview['matched']} task(s) match{more}: pass --yes to retry them")
    job = _post(client, project, "tasks/bulk-retry", {**body, "wait": 1.0})
    last = None
    while job["state"] in ("pending", "dispatched"):
        progress = job.get("result") or {}
        line = f"matched {progress.get('matched', 0)}, retried {progress.get('retried', 0)}"
        if line != last and not as_json:
            note(f"job {job['id']}: {line}")
            last = line
        time.sleep(1.0)
        job = client.request("GET", f"/api/v1/projects/{project}/commands/{job['id']}")
    progress = job.get("result") or {}
    if job["state"] != "succeeded":
        raise CliError(f"bulk retry {job['id']} {job['state']}: {job.get('error')}; resume with --resume {job['id']}")
    summary = (f"bulk retry {job['id']}: {progress['retried']} retried of {progress['matched']} matched"
               + "".join(f", {progress[k]} {k.replace('_', ' ')}" for k in
                         ("already_retried", "not_replayable", "agent_offline", "failed") if progress.get(k))
               + (f"; capped at {progress['limit']}" if progress.get("capped") else ""))
    done(job, as_json, summary)
    if progress.get("failed") or progress.get("agent_offline"):
        raise CliError(f"some retries did not go out: resume with --resume {job['id']}")


def queues_purge(
    queue: str,
    name: Annotated[str | None, typer.Option("--name", help="Only messages of this task name")] = None,
    older_than: Annotated[str | None, typer.Option(help="Only messages older than this (90s, 15m, 1h, 2d)")] = None,
    dead_letters: Annotated[bool, typer.Option("--dead-letters", help="Also delete the queue's dead letters")] = False,
    yes: YesOption = False,
    url: UrlOption = None,
    project: ProjectOption = "default",
    engine: EngineOption = None,
    wait: WaitOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Delete the messages of a queue (all, or those matching --name/--older-than) for good."""
    what = ("matching messages" if name or older_than else "every message") + (
        " and dead letter" if dead_letters else "")
    _confirm(yes, f"Delete {what} of queue {queue}?", f"purging deletes {what} of {queue} for good: pass --yes")
    command = _post(Client(url), project, f"queues/{queue}/purge",
                    {"confirm": True, "name": name, "older_than": older_than, "engine": engine, "wait": wait,
                     "dead_letters": dead_letters or None})
    purged = (command.get("result") or {}).get("purged")
    _outcome(command, as_json, f"purge of {queue}", f"purged {purged} message(s) of {queue}")


def queues_requeue_dead(
    queue: str,
    task: Annotated[list[str] | None, typer.Option("--task", help="A dead letter's task id (repeatable)")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every dead letter of the queue")] = False,
    yes: YesOption = False,
    url: UrlOption = None,
    project: ProjectOption = "default",
    engine: EngineOption = None,
    wait: WaitOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Put dead letters (RQ failed registry, Dramatiq XQ) back on their queue: --task ID... or --all."""
    if bool(task) == every:
        raise CliError("give --task ID (repeatable) or --all, not both")
    if every:
        _confirm(yes, f"Requeue every dead letter of {queue}?",
                 f"requeueing every dead letter of {queue} runs them all again: pass --yes")
    command = _post(Client(url), project, f"queues/{queue}/requeue-dead",
                    {"task_ids": task or None, "all": every, "confirm": every or None, "engine": engine,
                     "wait": wait})
    count = (command.get("result") or {}).get("requeued")
    _outcome(command, as_json, f"requeue of {queue}'s dead letters", f"requeued {count} dead letter(s) of {queue}")


def workers_control(
    worker: str,
    op: Annotated[str, typer.Argument(help="pool_grow, pool_shrink, autoscale, add_consumer, cancel_consumer, "
                                           "rate_limit, time_limit, shutdown, pool_restart")],
    params: Annotated[list[str] | None, typer.Argument(help="key=value: n=2, max=8 min=2, queue=q, "
                                                            "task_name=t rate=10/m, soft=30 hard=60, reload=true")] = None,
    yes: YesOption = False,
    url: UrlOption = None,
    project: ProjectOption = "default",
    engine: EngineOption = None,
    wait: WaitOption = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Flower's worker controls, sent to one worker."""
    op = op.replace("-", "_")
    body: dict[str, Any] = {"op": op, "engine": engine, "wait": wait}
    for item in params or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CliError(f"parameters are key=value, got {item!r}")
        body[key] = _value(key, value.strip())
    if op == "shutdown":
        _confirm(yes, f"Shut worker {worker} down?", "shutdown stops the worker for good: pass --yes")
        body["confirm"] = True
    command = _post(Client(url), project, f"workers/{worker}/control", body)
    reply = (command.get("result") or {}).get("reply")
    _outcome(command, as_json, f"{op} on {worker}", f"{worker}: {_reply_text(reply)}")


def _value(key: str, value: str) -> Any:
    try:
        if key in _INTS:
            return int(value)
        if key in _FLOATS:
            return float(value)
    except ValueError:
        raise CliError(f"{key} must be a number, got {value!r}") from None
    if key in _BOOLS:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise CliError(f"{key} must be true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    return value


def _reply_text(reply: Any) -> str:
    if isinstance(reply, dict) and len(reply) == 1:
        return str(next(iter(reply.values())))
    return str(reply)


def register(tasks_app: typer.Typer, queues_app: typer.Typer, workers_app: typer.Typer) -> None:
    tasks_app.command("retry")(tasks_retry)
    tasks_app.command("cancel")(tasks_cancel)
    tasks_app.command("bulk-retry")(tasks_bulk_retry)
    queues_app.command("purge")(queues_purge)
    queues_app.command("requeue-dead")(queues_requeue_dead)
    workers_app.command("control")(workers_control)
