"""Workers: online or not, heartbeat age, active and processed tasks, load
and pool, as their agents last reported them; and the worker controls the
engine allows (Celery's: pool grow/shrink, autoscale, consumers, rate and
time limits, pool restart, shutdown), each confirmed before it is sent."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Input, Select

from z4j_tui import actions
from z4j_tui.app import ScreenSpec, register_screen
from z4j_tui.widgets.listing import Listing, age, now_of, plain

SILENT_AFTER_S = 60.0
"""An online worker not heard of for this long is shown as silent (the
reconciler's default ``worker_offline_after_s``)."""
INTS, FLOATS, BOOLS = ("n", "max", "min"), ("soft", "hard"), ("reload",)
HINTS = {"n": "how many processes (default 1)", "reload": "reload modules: yes or no",
         "rate": "10/s, 100/m, 5/h or 0 (no limit)", "soft": "soft limit, seconds", "hard": "hard limit, seconds",
         "task_name": "task name", "queue": "queue name", "max": "most processes", "min": "fewest processes"}


def load_text(info: dict[str, Any]) -> str:
    load = info.get("loadavg")
    return f"{load[0]:.2f}" if isinstance(load, list) and load and isinstance(load[0], (int, float)) else ""


def pool_text(info: dict[str, Any]) -> str:
    pool, size = info.get("pool"), info.get("concurrency")
    if pool and size:
        return f"{pool}×{size}"
    return str(pool or size or "")


class WorkersScreen(Listing):
    TITLE = "Workers"
    COLUMNS = (("state", "state"), ("worker", "name"), ("engine", "engine"), ("seen", "seen"),
               ("active", "active"), ("processed", "processed"), ("load", "load"), ("pool", "pool"))
    FILTER_HINT = "filter by worker, engine or state…  (/)"
    NEEDS = {"control": actions.NEEDED}
    BINDINGS = [Binding("c", "control", "Control", tooltip="Send a worker control (pool, consumers, limits…)",
                        id="worker-control")]

    def fetch(self) -> dict[str, Any]:
        return {"rows": self.client.workers(self.project)}

    def row_key(self, row: dict[str, Any]) -> str:
        return f"{row['engine']}:{row['name']}"

    def state_of(self, row: dict[str, Any]) -> str:
        silent = now_of(self) - row["last_seen_at"] > SILENT_AFTER_S
        return "silent" if row["state"] == "online" and silent else row["state"]

    def cells(self, row: dict[str, Any]) -> tuple[Any, ...]:
        info = row.get("info") or {}
        state = self.state_of(row)
        number = lambda key: "" if info.get(key) is None else str(info[key])  # noqa: E731
        return (self.toned(state, {"online": "good", "silent": "warn"}.get(state, "bad")), plain(row["name"]), plain(row["engine"]),
                age(now_of(self) - row["last_seen_at"]), number("active"), number("processed"), load_text(info),
                plain(pool_text(info)))

    def text_of(self, row: dict[str, Any]) -> str:
        return f"{row['name']} {row['engine']} {self.state_of(row)}"

    def status(self) -> Text:
        states = [self.state_of(r) for r in self.rows]
        parts = [f"{states.count(s)} {s}" for s in ("online", "silent", "offline") if states.count(s)]
        shown = f"showing {len(self.shown)} · " if self.filter_text else ""
        return Text(f"{shown}{len(self.rows)} workers: " + (", ".join(parts) or "none reported yet"))

    def action_control(self) -> None:
        worker = self.selected()
        if worker is None:
            return
        ops = actions.ENGINE_WORKER_OPS.get(worker["engine"])
        if not ops:
            self.notify(f"the {worker['engine']} engine has no worker controls", title="Control", markup=False)
            return
        self.app.push_screen(WorkerControlScreen(worker, ops), self.control_chosen)

    def control_chosen(self, action: actions.Action | None) -> None:
        if action is not None:
            actions.confirm_and_run(self, action, lambda command: self.reload(),
                                    client=self.client, project=self.project)


class WorkerControlScreen(actions.ActionForm):
    """Pick an op and its parameters; dismissed with the action to confirm."""

    def __init__(self, worker: dict[str, Any], ops: tuple[str, ...]) -> None:
        super().__init__()
        self.worker = worker
        self.ops = ops
        self.TITLE_TEXT = f"Control {worker['name']}"

    def fields(self) -> ComposeResult:
        yield from actions.labelled("op", Select([(op, op) for op in self.ops], allow_blank=False,
                                                 value=self.ops[0], id="op"))
        for param in sorted({p for op in self.ops for p in actions.WORKER_OPS[op][0]}):
            yield from actions.labelled(param.replace("_", " "), Input(placeholder=HINTS.get(param, param),
                                                                       id=f"param-{param}"))

    def on_mount(self) -> None:
        self.show_params()
        self.query_one("#op", Select).focus()

    @on(Select.Changed, "#op")
    def show_params(self) -> None:
        takes = actions.WORKER_OPS[self.op][0]
        for field in self.query(".form-row Input").results(Input):
            field.parent.display = (field.id or "").removeprefix("param-") in takes  # type: ignore[union-attr]

    @property
    def op(self) -> str:
        return str(self.query_one("#op", Select).value)

    def build(self) -> actions.Action:
        params: dict[str, Any] = {}
        for name in actions.WORKER_OPS[self.op][0]:
            text = self.query_one(f"#param-{name}", Input).value.strip()
            if not text:
                continue
            if name in INTS:
                if not text.isdigit():
                    raise ValueError(f"{name} must be a whole number, got {text!r}")
                params[name] = int(text)
            elif name in FLOATS:
                try:
                    params[name] = float(text)
                except ValueError:
                    raise ValueError(f"{name} must be a number of seconds, got {text!r}") from None
            elif name in BOOLS:
                if text.lower() not in ("yes", "no", "true", "false"):
                    raise ValueError(f"{name} must be yes or no, got {text!r}")
                params[name] = text.lower() in ("yes", "true")
            else:
                params[name] = text
        return actions.worker_control(self.worker, self.op, params)


def _screen(app: Any) -> WorkersScreen:
    return WorkersScreen(app.client, app.project, app.refresh_interval)


register_screen(ScreenSpec("workers", "Workers", "2", _screen, "Workers, heartbeats, load; worker controls",
                           order=20))
