"""The beat agent: the ``celery.schedules.*`` commands, and a record of fires.

It runs inside ``celery beat`` (started from ``beat_init``), next to the
scheduler, and talks to the store that scheduler really uses
(:mod:`z4j_agents.celery.beat.stores`). The collector asks it for
``celery.schedules.list`` every few seconds and keeps what it answers; every
change z4j makes is applied to the store here and read back.

Commands (arguments and results are JSON):

* ``celery.schedules.list {fires_after?}`` -> ``{scheduler, read_only, entries: [...], fires: [...]}``
  (arguments redacted here; ``fires`` are those after the given fire id)
* ``celery.schedules.upsert {name, create?, task?, schedule?, args?, kwargs?, queue?, options?, enabled?}``
  -> the entry as stored (``create: true`` refuses an existing name, else the name must exist; missing
  fields keep their stored values)
* ``celery.schedules.delete {name}`` -> ``{deleted: name}``
* ``celery.schedules.trigger {name}`` -> ``{task_id, fire}``: sends the task now, with the entry's own
  arguments and options; the schedule itself does not move.

Entries of ``beat_schedule`` in code are read-only (beat writes them back
from the code on every start): they can be triggered, not changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.celery.beat.stores import BeatStore, describe, store_for
from z4j_agents.redaction import Redactor, default_redactor
from z4j_agents.runtime import CommandError

log = logging.getLogger("z4j.celery.beat")

ENGINE = "celery"
ACTIONS = ("celery.schedules.list", "celery.schedules.upsert", "celery.schedules.delete",
           "celery.schedules.trigger")
OPTION_KEYS = ("queue", "exchange", "routing_key", "priority", "expires", "soft_time_limit", "time_limit",
               "headers")
MAX_FIRES = 1000


class BeatAdapter:
    def __init__(self, app: Any, scheduler: Any, agent: Any = None, redactor: Redactor | None = None) -> None:
        self.app = app
        self.scheduler = scheduler
        self.agent = agent
        self.store: BeatStore = store_for(app, scheduler)
        self.redactor = redactor or (agent.runtime.redactor if agent is not None else default_redactor())
        self.fires: deque[dict[str, Any]] = deque(maxlen=MAX_FIRES)
        self._lock = threading.Lock()

    # ------------------------------------------------------------ wiring

    def register(self, agent: Any) -> None:
        agent.on_command("celery.schedules.list", self.list)
        agent.on_command("celery.schedules.upsert", self.upsert)
        agent.on_command("celery.schedules.delete", self.delete)
        agent.on_command("celery.schedules.trigger", self.trigger)

    def watch(self) -> None:
        """Record every entry beat sends, whatever the scheduler (it is an
        attribute of this scheduler object only; beat's own call is unchanged)."""
        original = self.scheduler.apply_async

        def apply_async(entry: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(entry, *args, **kwargs)
            try:
                self._fired(entry, getattr(result, "id", None), manual=False)
            except Exception:  # noqa: BLE001 - never in beat's way
                log.exception("z4j beat: could not record a fire of %r", getattr(entry, "name", None))
            return result

        self.scheduler.apply_async = apply_async

    def code_names(self) -> set[str]:
        names = set(self.app.conf.beat_schedule or {})
        if self.app.conf.result_expires and not getattr(self.app.backend, "supports_autoexpire", True):
            names.add("celery.backend_cleanup")
        return names

    # ------------------------------------------------------------ fires

    def _fired(self, entry: Any, task_id: str | None, manual: bool, actor: str | None = None) -> dict[str, Any]:
        options = entry.options or {}
        fire = {"id": p.new_id(), "schedule": str(entry.name), "task": entry.task, "task_id": task_id,
                "ts": time.time(), "manual": manual}
        if actor:
            fire["actor"] = actor[:400]
        with self._lock:
            self.fires.append(fire)
        if self.agent is not None and task_id:
            self.agent.task(task_id, "sent", name=entry.task, queue=options.get("queue"),
                            extra={"schedule": str(entry.name), **({"manual": True} if manual else {})})
        return fire

    def fires_after(self, after: str | None) -> list[dict[str, Any]]:
        with self._lock:
            return [f for f in self.fires if after is None or f["id"] > after]

    # ------------------------------------------------------------ commands

    def list(self, args: dict[str, Any]) -> dict[str, Any]:
        after = args.get("fires_after")
        if after is not None and not isinstance(after, str):
            raise CommandError("fires_after must be a fire id")
        code = self.code_names()
        entries = []
        for item in self.store.items():
            row = describe(item, item.entry.name in code)
            self._redact(row)
            entries.append(row)
        return {"scheduler": self.store.kind, "read_only": self.store.read_only, "entries": entries,
                "fires": self.fires_after(after)}

    def _redact(self, row: dict[str, Any]) -> None:
        masked = False
        for key in ("args", "kwargs", "options"):
            row[key], hit = self.redactor.redact(row[key], row["task"])
            masked = masked or hit
        row["redacted"] = masked

    def _name(self, args: dict[str, Any]) -> str:
        name = args.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise CommandError("name must be 1 to 200 characters")
        return name

    def _writable(self, name: str) -> None:
        if self.store.read_only:
            raise CommandError(self.store.read_only)
        if name in self.code_names():
            raise CommandError(f"schedule {name!r} is defined in beat_schedule in code (read-only): change it there")

    def upsert(self, args: dict[str, Any]) -> dict[str, Any]:
        name = self._name(args)
        self._writable(name)
        unknown = set(args) - {"name", "create", "task", "schedule", "args", "kwargs", "queue", "options", "enabled"}
        if unknown:
            raise CommandError(f"unknown field(s) {', '.join(sorted(unknown))}")
        old = self.store.get(name)
        if args.get("create") and old is not None:
            raise CommandError(f"a schedule named {name!r} already exists")
        if not args.get("create") and old is None:
            raise CommandError(f"no schedule named {name!r}")
        base = describe(old, False) if old is not None else {}
        task = args.get("task", base.get("task"))
        if not isinstance(task, str) or not task:
            raise CommandError("task must be a task name")
        if "schedule" in args or old is None:
            spec = args.get("schedule")
            if spec is None:
                raise CommandError("schedule is required")
            schedule = self.store.schedule_for(spec)  # refuses bad specs with the reason
        else:  # unchanged: kept as it is, even a kind z4j does not create (solar, rrule)
            spec, schedule = base["schedule"], old.entry.schedule
        call_args = args.get("args", base.get("args", []))
        call_kwargs = args.get("kwargs", base.get("kwargs", {}))
        if not isinstance(call_args, list):
            raise CommandError("args must be a JSON array")
        if not isinstance(call_kwargs, dict):
            raise CommandError("kwargs must be a JSON object")
        options = dict(args["options"]) if isinstance(args.get("options"), dict) else dict(base.get("options") or {})
        if "options" in args and not isinstance(args["options"], dict):
            raise CommandError("options must be a JSON object")
        unknown = set(options) - set(OPTION_KEYS)
        if unknown and "options" in args:
            raise CommandError(f"unknown option(s) {', '.join(sorted(unknown))}: use {', '.join(OPTION_KEYS)}")
        if "queue" in args:
            if args["queue"] in (None, ""):
                options.pop("queue", None)
            elif isinstance(args["queue"], str):
                options["queue"] = args["queue"]
            else:
                raise CommandError("queue must be a queue name")
        enabled = args.get("enabled", old.enabled if old is not None else True)
        if not isinstance(enabled, bool):
            raise CommandError("enabled must be true or false")
        self.store.save(name, task, schedule, spec, call_args, call_kwargs, options, enabled, old)
        saved = self.store.get(name)
        if saved is None:
            raise CommandError(f"schedule {name!r} was written but cannot be read back")
        row = describe(saved, False)
        self._redact(row)
        row["scheduler"] = self.store.kind
        return row

    def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        name = self._name(args)
        self._writable(name)
        if self.store.get(name) is None:
            raise CommandError(f"no schedule named {name!r}")
        self.store.delete(name)
        return {"deleted": name}

    def trigger(self, args: dict[str, Any]) -> dict[str, Any]:
        name = self._name(args)
        item = self.store.get(name)
        if item is None:
            raise CommandError(f"no schedule named {name!r}")
        entry = item.entry
        options = dict(entry.options or {})
        options["headers"] = {**(options.get("headers") or {}), "celery_beat_task": True}
        result = self.app.send_task(entry.task, list(entry.args or ()), dict(entry.kwargs or {}), **options)
        actor = args.get("actor") if isinstance(args.get("actor"), str) else None
        fire = self._fired(entry, result.id, manual=True, actor=actor)
        return {"task_id": result.id, "fire": fire}
