"""Actions of the console: what each one will do, in words, a confirmation
that shows exactly that, and the call (docs/api.md#actions).

Every action is an :class:`Action`, built by one of the functions below from
what a screen shows (a task row, a queue, a worker). ``confirm_and_run``
pushes the confirmation; on yes, a worker thread sends the request, the
dialog's handler turns the answer into a notification (the agent's result or
its error, the server's one-line refusal) and dismisses with the command, so
the calling screen can refresh. Screens show an action only to roles that may
do it (``NEEDED``); the collector checks again.

For the task screens: ``retry(task)`` and ``cancel(task)`` build the two task
actions from a task row (list or detail), ``confirm_and_run(screen, action)``
runs one, and ``BulkRetryScreen(client, project, filters)`` retries every
task matching the list's filters with a progress bar.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Input, ProgressBar, Static

from z4j_tui.client import Client, ClientError
from z4j_tui.widgets.listing import CSS, allows

NEEDED = "operator"
"""Every action here is ``actions:write``: operator and above (PRODUCT.md §5)."""
WAIT_S = 10.0
"""How long the collector waits for the agent's answer before it answers 202."""
POLL_S = 0.5
"""Seconds between two reads of a running bulk-retry job."""


@dataclass(frozen=True)
class Action:
    title: str
    """What the dialog and the notification call it ("Retry task t-1")."""
    lines: tuple[str, ...]
    """Exactly what will happen, one sentence a line."""
    path: str
    """Under /api/v1/projects/{p}/: ``tasks/ID/retry``, ``queues/Q/purge``…"""
    body: dict[str, Any] = field(default_factory=dict)
    done: Callable[[dict[str, Any]], str] = lambda result: "done"
    """The notification for the agent's result."""
    danger: bool = False
    """Cannot be undone: the confirm button is red."""
    method: str = "POST"
    command: bool = True
    """The answer is a command (its agent's result or error); else the thing changed (a schedule…)."""


def may_act(role: str | None) -> bool:
    return allows(role, NEEDED)


def _engine(row: dict[str, Any]) -> dict[str, Any]:
    return {"engine": row.get("engine")} if row.get("engine") else {}


# ------------------------------------------------------------------ the actions


def retry(task: dict[str, Any]) -> Action:
    name, queue = task.get("name") or "the task", task.get("queue")
    return Action(
        f"Retry task {task['task_id']}",
        (f"Runs {name} again as a new task, with its exact original arguments and routing"
         + (f" (queue {queue})." if queue else "."),
         f"The new task links back to {task['task_id']}; this one stays as it is.",
         "The collector sends it to the agent that captured the original call."),
        f"tasks/{task['task_id']}/retry", {**_engine(task), "wait": WAIT_S},
        lambda r: f"retried {task['task_id']} as {r.get('new_task_id')}")


FINISHED = ("success", "failure", "revoked", "rejected", "lost")


def can_cancel(task: dict[str, Any]) -> bool:
    """Whether a cancel makes sense for the task as the row shows it (the server checks again)."""
    return task.get("state") not in FINISHED


def cancel(task: dict[str, Any]) -> Action:
    """Revoke a task that has not started; terminate one that runs (its process gets SIGTERM)."""
    task_id, state = task["task_id"], task.get("state")
    if state == "started":
        where = f" on worker {task['worker']}" if task.get("worker") else ""
        return Action(
            f"Terminate task {task_id}",
            (f"Task {task_id} ({task.get('name')}) is running{where}.",
             "Its worker process is sent SIGTERM: the task stops where it is, half done.",
             "It is marked revoked, and will not run again."),
            f"tasks/{task_id}/cancel", {**_engine(task), "terminate": True, "confirm": True, "wait": WAIT_S},
            lambda r: f"terminated {task_id}", danger=True)
    return Action(
        f"Cancel task {task_id}",
        (f"Task {task_id} ({task.get('name')}) has not started ({state}).",
         "It is revoked: workers drop it instead of running it"
         + (f", and it is taken out of queue {task['queue']} where the engine allows." if task.get("queue") else "."),),
        f"tasks/{task_id}/cancel", {**_engine(task), "terminate": False, "wait": WAIT_S},
        lambda r: f"revoked {task_id}")


def purge(queue: dict[str, Any], name: str | None = None, older_than: str | None = None,
          dead_letters: bool = False) -> Action:
    q = queue["name"]
    which = "every message" if not (name or older_than) else "the messages"
    if name:
        which += f" of task {name}"
    if older_than:
        which += f" older than {older_than}"
    lines = [f"Deletes {which} waiting in queue {q} ({queue.get('depth', '?')} waiting when last reported)."]
    if dead_letters:
        lines.append(f"Also deletes the dead letters of queue {q}, where the engine keeps them.")
    lines.append("The deleted tasks never run. This cannot be undone.")
    return Action(f"Purge queue {q}", tuple(lines), f"queues/{q}/purge",
                  {**_engine(queue), "confirm": True, "name": name or None, "older_than": older_than or None,
                   "dead_letters": dead_letters or None, "wait": WAIT_S},
                  lambda r: f"purged {r.get('purged', '?')} message(s) from {q}", danger=True)


def requeue_dead(queue: dict[str, Any], task_ids: list[str] | None = None) -> Action:
    q = queue["name"]
    if task_ids:
        lines = (f"Puts {len(task_ids)} dead letter(s) of queue {q} back on the queue: {', '.join(task_ids)}.",
                 "They run again with their original arguments.")
        body = {"task_ids": task_ids}
    else:
        lines = (f"Puts every dead letter of queue {q} back on the queue.",
                 "They all run again with their original arguments.")
        body = {"all": True, "confirm": True}
    return Action(f"Requeue dead letters of {q}", lines, f"queues/{q}/requeue-dead",
                  {**_engine(queue), **body, "wait": WAIT_S},
                  lambda r: f"requeued {r.get('requeued', '?')} dead letter(s) on {q}"
                  + (f" ({len(r['missing'])} missing)" if r.get("missing") else ""))


WORKER_OPS: dict[str, tuple[tuple[str, ...], str]] = {
    "pool_grow": (("n",), "Adds {n} process(es) to the pool of worker {worker}."),
    "pool_shrink": (("n",), "Removes {n} process(es) from the pool of worker {worker}."),
    "autoscale": (("max", "min"), "Lets worker {worker} autoscale its pool between {min} and {max} processes."),
    "add_consumer": (("queue",), "Worker {worker} starts consuming from queue {queue}."),
    "cancel_consumer": (("queue",), "Worker {worker} stops consuming from queue {queue}."),
    "rate_limit": (("task_name", "rate"), "Worker {worker} runs {task_name} at most {rate} (0: no limit)."),
    "time_limit": (("task_name", "soft", "hard"),
                   "Worker {worker} gives {task_name} a soft limit of {soft} s and a hard limit of {hard} s."),
    "pool_restart": (("reload",), "Worker {worker} restarts its pool processes (reload modules: {reload})."),
    "shutdown": ((), "Worker {worker} shuts down for good: it stops taking tasks and exits."),
}
"""Celery's worker controls (the collector checks the same list): op ->
(its parameters, what it does)."""
ENGINE_WORKER_OPS = {"celery": tuple(WORKER_OPS)}
"""The controls each engine's agent can do; the other engines have none."""


def worker_control(worker: dict[str, Any], op: str, params: dict[str, Any]) -> Action:
    given = {k: v for k, v in params.items() if v not in (None, "")}
    shown = {"n": 1, "soft": "(unchanged)", "hard": "(unchanged)", "reload": False, **given}
    sentence = WORKER_OPS[op][1].format(worker=worker["name"], **{k: shown.get(k, "?") for k in WORKER_OPS[op][0]})
    body = {**_engine(worker), "op": op, **given, "wait": WAIT_S}
    if op == "shutdown":
        body["confirm"] = True
    return Action(f"{op} on {worker['name']}", (sentence,), f"workers/{worker['name']}/control", body,
                  lambda r: f"{op} on {worker['name']}: done", danger=op == "shutdown")


def outcome(action: Action, command: dict[str, Any]) -> tuple[str, str]:
    """(severity, message) for what the collector answered."""
    if not action.command:
        return "information", action.done(command)
    state = command.get("state")
    if state == "succeeded":
        return "information", action.done(command.get("result") or {})
    if state == "failed":
        return "error", f"{action.title} failed: {command.get('error')}"
    if state == "timeout":
        return "error", f"{action.title}: the agent did not answer in time (command {command.get('id')})"
    return "warning", f"{action.title}: sent, the agent has not answered yet (command {command.get('id')})"


# ------------------------------------------------------------------ the confirmation


class ConfirmScreen(ModalScreen[dict[str, Any] | None]):
    """Says exactly what will happen; y or enter does it, n or escape does not.
    Dismissed with the command the collector answered, or None."""

    CSS_PATH = CSS

    BINDINGS = [
        Binding("y", "confirm", "Do it", id="confirm"),
        Binding("n,escape", "cancel", "Cancel", id="cancel"),
    ]

    class Answered(Message):
        def __init__(self, command: dict[str, Any] | None, error: str | None) -> None:
            super().__init__()
            self.command = command
            self.error = error

    def __init__(self, client: Client, project: str, action: Action) -> None:
        super().__init__(classes="dialog")
        self.client = client
        self.project = project
        self.action_ = action
        self.sending = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(Text("\n".join(self.action_.lines)), classes="dialog-text")
            yield Static(id="dialog-note", classes="dialog-note")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.action_.title, id="confirm", variant="error" if self.action_.danger else "primary",
                             compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        box = self.query_one(".dialog-box")
        box.border_title = self.action_.title
        box.border_subtitle = "y: do it · n/escape: cancel"
        self.query_one("#cancel", Button).focus()  # enter on a fresh dialog must not destroy anything

    @on(Button.Pressed, "#confirm")
    def action_confirm(self) -> None:
        if self.sending:
            return
        self.sending = True
        self.query_one("#confirm", Button).disabled = True
        self.query_one("#dialog-note", Static).update("sending…")
        self.send()

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        if not self.sending:
            self.dismiss(None)

    @work(thread=True, exclusive=True, group="action", exit_on_error=False)
    def send(self) -> None:
        try:
            command = self.client.action(self.project, self.action_.path, self.action_.body,
                                         method=self.action_.method)
        except ClientError as exc:
            self.post_message(self.Answered(None, str(exc)))
            return
        self.post_message(self.Answered(command, None))

    @on(Answered)
    def answered(self, message: Answered) -> None:
        if message.error is not None:
            self.app.notify(message.error, title=self.action_.title, severity="error", markup=False)
        else:
            severity, text = outcome(self.action_, message.command or {})  # a DELETE answers nothing
            self.app.notify(text, title=self.action_.title, severity=severity, markup=False)  # type: ignore[arg-type]
        self.dismiss(message.command)


def confirm_and_run(screen: Screen, action: Action, then: Callable[[dict[str, Any] | None], None] | None = None,
                    client: Client | None = None, project: str | None = None) -> None:
    """Ask, then do ``action``; ``then`` gets the command (None: not done).
    ``client`` and ``project`` default to the app's."""
    app: Any = screen.app
    dialog = ConfirmScreen(client or app.client, project or app.project, action)
    app.push_screen(dialog, then)


# ------------------------------------------------------------------ on the task screens


ROLE_RETRY_S = 10.0
"""After a failed ask (collector away), the role is asked again no sooner than this."""


def role_of(screen: Screen) -> str | None:
    """The caller's role on the app's project, asked once per project (a
    worker thread); the screen's bindings are refreshed when it is known.
    None (no action shown) until then."""
    app: Any = screen.app
    roles: dict[Any, tuple[str | None, float]] = app.__dict__.setdefault("_z4j_roles", {})
    project = app.project
    key = (app.client.token, project)  # a new login may have another role
    role, asked_at = roles.get(key, (None, None))
    if asked_at is None or (role is None and asked_at != 0 and time.monotonic() - asked_at > ROLE_RETRY_S):
        roles[key] = (None, time.monotonic())

        def ask() -> None:
            try:
                answer = app.client.my_role(project)
            except ClientError:
                return  # asked again after ROLE_RETRY_S
            app.call_from_thread(known, answer)

        def known(answer: str | None) -> None:
            roles[key] = (answer, 0)  # 0: answered, never asked again
            screen.refresh_bindings()

        screen.run_worker(ask, thread=True, group="role", exit_on_error=False)
    return role


class TaskActions:
    """Mixed into a screen that shows tasks (before ``Screen``): R retries
    and C cancels the task it names (``acted_task``), with a confirmation;
    both hidden from roles below operator. ``TASK_BINDINGS`` go into the
    screen's BINDINGS; a list adds ``BULK_BINDING`` and ``bulk_filters``."""

    TASK_BINDINGS = [
        Binding("R", "retry_task", "Retry", tooltip="Run the task again with its original arguments (asks first)",
                id="retry-task"),
        Binding("C", "cancel_task", "Cancel", tooltip="Revoke a waiting task, terminate a running one (asks first)",
                id="cancel-task"),
    ]
    BULK_BINDING = Binding("B", "bulk_retry", "Bulk retry", tooltip="Retry every task the filter matches (asks "
                           "first; failures when no state is chosen)", id="bulk-retry")

    def acted_task(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def bulk_filters(self) -> dict[str, Any]:
        raise NotImplementedError

    def after_action(self) -> None:
        """The action went through (or was refused): show the task's news."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("retry_task", "cancel_task", "bulk_retry"):
            return may_act(role_of(self))  # type: ignore[arg-type]
        return True

    def action_retry_task(self) -> None:
        task = self.acted_task()
        if task is not None:
            confirm_and_run(self, retry(task), lambda command: self.after_action())  # type: ignore[arg-type]

    def action_cancel_task(self) -> None:
        task = self.acted_task()
        if task is None:
            return
        if not can_cancel(task):
            self.notify(f"{task['task_id']} has ended ({task.get('state')}): nothing to cancel",  # type: ignore[attr-defined]
                        title="Cancel", markup=False)
            return
        confirm_and_run(self, cancel(task), lambda command: self.after_action())  # type: ignore[arg-type]

    def action_bulk_retry(self) -> None:
        app: Any = self.app  # type: ignore[attr-defined]
        app.push_screen(BulkRetryScreen(app.client, app.project, self.bulk_filters()),
                        lambda job: self.after_action())


# ------------------------------------------------------------------ forms before a confirmation


class ActionForm(ModalScreen[Any]):
    """A dialog that asks for an action's parameters: subclasses yield the
    fields (``fields``) and turn them into the result (``build``, raising
    ValueError with a one-line reason shown in the dialog). Enter in a field
    or the first button submits; escape cancels (None)."""

    CSS_PATH = CSS
    BINDINGS = [Binding("escape", "dismiss_none", "Cancel", id="cancel-form")]
    TITLE_TEXT = ""
    SUBMIT = "Next"

    def __init__(self, box_id: str | None = None) -> None:
        super().__init__(classes="dialog")
        self.box_id = box_id

    def fields(self) -> ComposeResult:
        raise NotImplementedError

    def build(self) -> Any:
        raise NotImplementedError

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box", id=self.box_id):
            yield from self.fields()
            yield Static(id="dialog-note", classes="dialog-note")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.SUBMIT, id="submit", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        box = self.query_one(".dialog-box")
        box.border_title = self.TITLE_TEXT
        box.border_subtitle = "enter: next · escape: cancel"

    @on(Input.Submitted)
    @on(Button.Pressed, "#submit")
    def submit(self) -> None:
        try:
            result = self.build()
        except ValueError as exc:
            self.query_one("#dialog-note", Static).update(Text(str(exc)))
            return
        self.dismiss(result)

    @on(Button.Pressed, "#cancel")
    def action_dismiss_none(self) -> None:
        self.dismiss(None)


def labelled(label: str, widget: Any) -> ComposeResult:
    """One line of a form: the label, then the field (compact: forms must fit 80x24)."""
    widget.compact = True
    yield Horizontal(Static(label, classes="dialog-label"), widget, classes="form-row")


# ------------------------------------------------------------------ bulk retry


BULK_FILTERS = ("state", "name", "queue", "worker", "engine", "since", "until", "search")


class BulkRetryScreen(ModalScreen[dict[str, Any] | None]):
    """Retry every task matching ``filters`` (the task list's): first a dry run
    says how many match; y starts the job; the bar follows its progress
    (polled); escape closes (the job goes on, resumable by id)."""

    CSS_PATH = CSS

    BINDINGS = [
        Binding("y", "confirm", "Retry them", id="confirm"),
        Binding("n,escape", "close", "Close", id="close"),
    ]

    class Previewed(Message):
        def __init__(self, preview: dict[str, Any] | None, error: str | None) -> None:
            super().__init__()
            self.preview = preview
            self.error = error

    class Progressed(Message):
        def __init__(self, job: dict[str, Any] | None, error: str | None) -> None:
            super().__init__()
            self.job = job
            self.error = error

        def can_replace(self, message: Message) -> bool:  # only the latest reading matters
            return isinstance(message, BulkRetryScreen.Progressed) and message.error is None

    def __init__(self, client: Client, project: str, filters: dict[str, Any], limit: int = 1000) -> None:
        super().__init__(classes="dialog")
        self.client = client
        self.project = project
        self.filters = {k: v for k, v in filters.items() if k in BULK_FILTERS and v not in (None, "")}
        self.filters.setdefault("state", "failure")
        self.limit = limit
        self.preview: dict[str, Any] | None = None
        self.job: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(Text(self.describe_filter()), classes="dialog-text")
            yield Static("counting the matching tasks…", id="dialog-note", classes="dialog-note")
            yield ProgressBar(total=None, show_eta=False, id="bulk-progress")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Retry them", id="confirm", variant="primary", disabled=True, compact=True)
                yield Button("Close", id="close", compact=True)

    def describe_filter(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in self.filters.items())
        return (f"Retries every task with {parts} (at most {self.limit}), each once, with its original "
                "arguments and routing. Tasks already retried are skipped.")

    def on_mount(self) -> None:
        box = self.query_one(".dialog-box")
        box.border_title = "Bulk retry"
        box.border_subtitle = "y: retry · escape: close"
        self.query_one("#close", Button).focus()
        self.count()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "confirm":
            return bool(self.preview and self.preview.get("matched")) and self.job is None
        return True

    @work(thread=True, exclusive=True, group="bulk", exit_on_error=False)
    def count(self) -> None:
        try:
            preview = self.client.action(self.project, "tasks/bulk-retry",
                                         {**self.filters, "limit": self.limit, "dry_run": True})
        except ClientError as exc:
            self.post_message(self.Previewed(None, str(exc)))
            return
        self.post_message(self.Previewed(preview, None))

    @on(Previewed)
    def previewed(self, message: Previewed) -> None:
        note = self.query_one("#dialog-note", Static)
        if message.error is not None:
            note.update(Text(message.error))
            self.app.notify(message.error, title="Bulk retry", severity="error", markup=False)
            return
        self.preview = message.preview or {}
        matched = self.preview.get("matched", 0)
        capped = " (capped: more match)" if self.preview.get("capped") else ""
        note.update(f"{matched} task(s) match{capped}." if matched else "No task matches: nothing to retry.")
        self.query_one("#confirm", Button).disabled = not matched
        self.refresh_bindings()

    @on(Button.Pressed, "#confirm")
    def action_confirm(self) -> None:
        if self.job is not None or not (self.preview and self.preview.get("matched")):
            return
        self.job = {}
        self.query_one("#confirm", Button).disabled = True
        self.query_one("#bulk-progress", ProgressBar).update(total=self.preview["matched"], progress=0)
        self.refresh_bindings()
        self.run_job()

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(self.job or None)

    @work(thread=True, exclusive=True, group="bulk", exit_on_error=False)
    def run_job(self) -> None:
        try:
            job = self.client.action(self.project, "tasks/bulk-retry", {**self.filters, "limit": self.limit,
                                                                         "wait": 1.0})
            while True:
                self.post_message(self.Progressed(job, None))
                if job["state"] not in ("pending", "dispatched"):
                    return
                time.sleep(POLL_S)
                job = self.client.command(self.project, job["id"])
        except ClientError as exc:
            self.post_message(self.Progressed(None, str(exc)))

    @on(Progressed)
    def progressed(self, message: Progressed) -> None:
        note = self.query_one("#dialog-note", Static)
        if message.error is not None:
            note.update(Text(message.error))
            self.app.notify(message.error, title="Bulk retry", severity="error", markup=False)
            return
        job = self.job = message.job or {}
        progress = job.get("result") or {}
        walked = sum(progress.get(k, 0) for k in ("retried", "already_retried", "not_replayable", "agent_offline",
                                                  "failed"))
        self.query_one("#bulk-progress", ProgressBar).update(total=progress.get("matched") or None,
                                                             progress=walked)
        summary = bulk_summary(job)
        note.update(Text(summary))
        if job.get("state") == "succeeded":
            trouble = progress.get("failed") or progress.get("agent_offline")
            self.app.notify(summary, title="Bulk retry", severity="warning" if trouble else "information",
                            markup=False)
        elif job.get("state") in ("failed", "timeout"):
            self.app.notify(summary, title="Bulk retry", severity="error", markup=False)


def bulk_summary(job: dict[str, Any]) -> str:
    progress = job.get("result") or {}
    line = (f"job {job.get('id')}: {progress.get('retried', 0)} retried of {progress.get('matched', 0)} matched"
            + "".join(f", {progress[k]} {k.replace('_', ' ')}" for k in
                      ("already_retried", "not_replayable", "agent_offline", "failed") if progress.get(k)))
    if job.get("state") in ("pending", "dispatched"):
        return line + " …"
    if job.get("state") != "succeeded":
        return f"{line}; stopped: {job.get('error')}"
    return line + (f"; capped at {progress['limit']}" if progress.get("capped") else "") + "."
