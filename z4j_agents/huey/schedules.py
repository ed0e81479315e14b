"""Huey periodic tasks as z4j schedules: ``huey.schedules.*`` in a consumer with periodic tasks on.

Huey's periodic tasks are code: ``@huey.periodic_task(crontab(...))``, run by
the consumer's scheduler. So z4j can:

* list them (``huey.schedules.list {fires_after?}``): the crontab read back
  from Huey's own ``crontab()`` (``{"kind": "crontab", minute, hour,
  day_of_month, month_of_year, day_of_week}``, in UTC when ``Huey(utc=True)``,
  the default), the next run, and the last run and run count this agent saw
  (since it started); ``enabled`` is false while the task is revoked;
* enable and disable them (``huey.schedules.upsert {name, enabled}``): Huey's
  own ``restore_all`` / ``revoke_all`` of the task class, which every consumer
  of the queue obeys (a disabled task is still enqueued on time, and skipped
  as revoked);
* trigger one now (``huey.schedules.trigger {name}``): a fresh instance
  enqueued at once; refused while it is disabled (the consumer would skip it).

Create, edit and delete are refused with one sentence: the code is the
schedule. Fires (``fires``) are recorded from this consumer's scheduler.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from z4j_agents.runtime import CommandError

log = logging.getLogger("huey.z4j")

SCHEDULER = "huey periodic_task"
CODE_ONLY = ("Huey periodic tasks are defined in code (@huey.periodic_task): z4j can enable, disable and trigger "
             "them, not create, edit or delete them")
_CRON_ORDER = ("month_of_year", "day_of_month", "day_of_week", "hour", "minute")
"""The order of Huey's ``cron_settings`` (month, day, weekday, hour, minute)."""
_RANGES = {"month_of_year": range(1, 13), "day_of_month": range(1, 32), "day_of_week": range(7),
           "hour": range(24), "minute": range(60)}


def register(agent: Any) -> None:
    consumer = agent.consumer
    if consumer is None or not getattr(consumer, "periodic", False):
        return  # the schedules live where the scheduler runs
    schedules = HueySchedules(agent)
    agent.on_command("huey.schedules.list", schedules.list)
    agent.on_command("huey.schedules.upsert", schedules.upsert)
    agent.on_command("huey.schedules.delete", schedules.delete)
    agent.on_command("huey.schedules.trigger", schedules.trigger)


class HueySchedules:
    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def _classes(self) -> dict[str, type]:
        """Schedule name -> periodic task class. A schedule is named
        ``<huey name>:<task name>``: unique when several Huey applications
        report to one project."""
        huey = self.agent.huey
        return {schedule_name(huey, cls): cls for cls in list(huey._registry._periodic_tasks)}

    def _class(self, args: dict[str, Any]) -> tuple[str, type]:
        name = args.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise CommandError("name must be 1 to 200 characters")
        cls = self._classes().get(name)
        if cls is None:
            raise CommandError(f"no periodic task {name!r} in this consumer (Huey periodic tasks are defined "
                               "in code)")
        return name, cls

    def _entry(self, name: str, cls: type, now: float | None = None) -> dict[str, Any]:
        huey = self.agent.store
        task = self.agent.huey._registry.task_to_string(cls)
        sets = cron_sets(cls)
        spec = to_spec(sets) if sets is not None else {"kind": "other", "text": f"validate_datetime of {task}"}
        last, count = self.agent.runs.get(name, (None, 0))
        return {
            "name": name, "task": task, "schedule": spec, "args": [], "kwargs": {}, "queue": huey.name,
            "options": {}, "enabled": not huey.is_revoked(cls, peek=True), "code": False, "redacted": False,
            "next_run_at": next_run(sets, huey.utc, now) if sets is not None else None,
            "last_run_at": last, "total_run_count": count,
        }

    # ------------------------------------------------------------ commands

    def list(self, args: dict[str, Any]) -> dict[str, Any]:
        after = args.get("fires_after")
        if after is not None and not isinstance(after, str):
            raise CommandError("fires_after must be a fire id")
        now = time.time()
        entries = [self._entry(name, cls, now) for name, cls in sorted(self._classes().items())]
        with self.agent._lock:
            fires = [f for f in self.agent.fires if after is None or f["id"] > after]
        return {"scheduler": SCHEDULER, "read_only": CODE_ONLY, "entries": entries, "fires": fires}

    def upsert(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("create") or set(args) - {"name", "enabled", "create"} or "enabled" not in args:
            raise CommandError(CODE_ONLY)
        name, cls = self._class(args)
        enabled = args["enabled"]
        if not isinstance(enabled, bool):
            raise CommandError("enabled must be true or false")
        huey = self.agent.store
        if enabled:
            huey.restore_all(cls)
        else:
            huey.revoke_all(cls)
        log.info("z4j huey: periodic task %s %s", name, "enabled (restored)" if enabled else "disabled (revoked)")
        entry = self._entry(name, cls)
        entry["scheduler"] = SCHEDULER
        return entry

    def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        raise CommandError(CODE_ONLY)

    def trigger(self, args: dict[str, Any]) -> dict[str, Any]:
        name, cls = self._class(args)
        huey = self.agent.store
        if huey.is_revoked(cls, peek=True):
            raise CommandError(f"periodic task {name} is disabled (revoked): enable it first, or the consumer "
                               "skips the run; nothing was enqueued")
        task = cls()
        tls = self.agent.binding._tls
        tls.manual = True
        try:
            huey.enqueue(task)
        finally:
            tls.manual = False
        actor = args.get("actor") if isinstance(args.get("actor"), str) else None
        fire = self.agent.fired(name, self.agent.binding.name_of(task), task.id, time.time(), manual=True,
                                actor=actor)
        return {"task_id": task.id, "fire": fire}


def schedule_name(huey: Any, cls: type) -> str:
    return f"{huey.name}:{huey._registry.task_to_string(cls)}"


# ------------------------------------------------------------------ crontab


def cron_sets(cls: type) -> list[list[int]] | None:
    """The five value lists of the ``crontab()`` behind a periodic task class
    (month, day, weekday, hour, minute), read from Huey's own closure; None
    for a hand-written ``validate_datetime``."""
    method = getattr(cls, "validate_datetime", None)
    for cell in getattr(method, "__closure__", None) or ():
        inner = cell.cell_contents
        if callable(inner) and getattr(inner, "__name__", "") == "validate_date":
            for inner_cell in getattr(inner, "__closure__", None) or ():
                value = inner_cell.cell_contents
                if isinstance(value, list) and len(value) == 5 and all(isinstance(v, list) for v in value):
                    return value
    return None


def _field_text(values: list[int], span: range) -> str:
    chosen = sorted(set(values) & set(span))
    if chosen == list(span):
        return "*"
    if len(chosen) > 1:
        step = chosen[1] - chosen[0]
        if chosen[0] == span[0] and step > 1 and chosen == list(span[::step]):
            return f"*/{step}"
    parts: list[str] = []
    start = prev = chosen[0]
    for value in chosen[1:] + [None]:  # type: ignore[list-item]
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ",".join(parts)


def to_spec(sets: list[list[int]]) -> dict[str, Any]:
    fields = dict(zip(_CRON_ORDER, sets))
    fields["day_of_week"] = [v % 7 for v in fields["day_of_week"]]
    return {"kind": "crontab", **{f: _field_text(fields[f], _RANGES[f])
                                  for f in ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")}}


def next_run(sets: list[list[int]], utc: bool, now: float | None = None) -> float | None:
    """The start of the next minute the crontab matches (Huey's day AND
    weekday rule), in epoch seconds; None when none within five years."""
    months, days, weekdays, hours, minutes = (set(s) for s in sets)
    weekdays = {w % 7 for w in weekdays}
    stamp = time.time() if now is None else now
    t = datetime.fromtimestamp(stamp, timezone.utc).replace(tzinfo=None) if utc else datetime.fromtimestamp(stamp)
    t = (t + timedelta(minutes=1)).replace(second=0, microsecond=0)
    for _ in range(366 * 5):
        if t.month in months and t.day in days and (t.weekday() + 1) % 7 in weekdays:
            for hour in sorted(h for h in hours if h >= t.hour):
                for minute in sorted(minutes):
                    if hour == t.hour and minute < t.minute:
                        continue
                    found = t.replace(hour=hour, minute=minute)
                    return found.replace(tzinfo=timezone.utc).timestamp() if utc else found.timestamp()
        t = (t + timedelta(days=1)).replace(hour=0, minute=0)
    return None
