"""The ``taskiq.schedules.*`` commands, run by the agent inside ``taskiq scheduler``.

The agent of the ``taskiq scheduler`` process (the middleware's agent when
``broker.is_scheduler_process``) talks to that scheduler's own sources:

* dynamic sources (any source that implements ``add_schedule`` and
  ``delete_schedule``: taskiq-redis ``ListRedisScheduleSource``, the
  deprecated ``RedisScheduleSource``, your own) are listed, created in,
  deleted from; an edit is a delete then an add of the same schedule id (the
  sources have no update), undone when the add fails;
* ``LabelScheduleSource`` (``@broker.task(schedule=[...])``) is listed as
  code: read-only, but it can be triggered.

A schedule's z4j name is its taskiq ``schedule_id``. Sources have no
enabled flag: disabling is refused (delete the schedule instead). Every kick
the scheduler makes carries the label ``schedule_id``; the middleware's
``post_send`` records it here as a fire (with the task id), which also gives
``last_run_at`` and ``next_run_at``.

Commands (shapes as for Celery beat, docs/celery.md "Beat"):
``taskiq.schedules.list {fires_after?}``, ``taskiq.schedules.upsert {name,
create?, task?, schedule?, args?, kwargs?, queue?, options?, enabled?}``,
``taskiq.schedules.delete {name}``, ``taskiq.schedules.trigger {name, actor?}``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.runtime import CommandError

log = logging.getLogger("z4j.taskiq.schedules")

MAX_FIRES = 1000
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
NO_ENABLED_FLAG = ("taskiq schedule sources have no enabled flag: a schedule runs while it exists; delete it to "
                   "stop it (nothing changed)")


def find_scheduler(broker: Any) -> Any:
    """The ``TaskiqScheduler`` of ``broker`` among the loaded modules (``taskiq scheduler`` imported it)."""
    from taskiq.scheduler.scheduler import TaskiqScheduler

    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            if isinstance(value, TaskiqScheduler) and value.broker is broker:
                return value
    return None


def _writable(source: Any) -> bool:
    from taskiq.abc.schedule_source import ScheduleSource

    cls = type(source)
    return cls.add_schedule is not ScheduleSource.add_schedule and cls.delete_schedule is not ScheduleSource.delete_schedule


def _is_code(source: Any) -> bool:
    from taskiq.schedule_sources import LabelScheduleSource

    return isinstance(source, LabelScheduleSource)


def _seconds(interval: Any) -> float:
    return interval.total_seconds() if isinstance(interval, timedelta) else float(interval)


def to_spec(task: Any) -> dict[str, Any]:
    if task.cron is not None:
        parts = str(task.cron).split()
        spec: dict[str, Any] = ({"kind": "crontab", **dict(zip(CRON_FIELDS, parts))} if len(parts) == 5
                                else {"kind": "other", "text": str(task.cron)})
        if task.cron_offset is not None:
            spec["offset"] = str(task.cron_offset)
        return spec
    if task.interval is not None:
        return {"kind": "interval", "every": _seconds(task.interval)}
    if task.time is not None:
        at = task.time if task.time.tzinfo else task.time.replace(tzinfo=timezone.utc)
        return {"kind": "clocked", "at": at.timestamp()}
    return {"kind": "other"}


def next_cron(expr: str, after: datetime, offset: Any = None, days: int = 800) -> datetime | None:
    """The first minute after ``after`` (aware) at which taskiq's scheduler fires ``expr``:
    pycron on the time shifted by ``cron_offset`` (a timedelta or a zone name), as the scheduler does."""
    import pycron

    parts = expr.split()
    if len(parts) != 5:
        return None
    if isinstance(offset, timedelta):
        local = after + offset
    elif isinstance(offset, str) and offset:
        from zoneinfo import ZoneInfo

        local = after.astimezone(ZoneInfo(offset))
    else:
        local = after
    start = (local + timedelta(minutes=1)).replace(second=0, microsecond=0)
    day_expr = f"* * {parts[2]} {parts[3]} {parts[4]}"
    hour_expr = f"* {parts[1]} {parts[2]} {parts[3]} {parts[4]}"
    day = start.replace(hour=0, minute=0)
    for _ in range(days):
        if pycron.is_now(day_expr, day):
            for h in range(24):
                hour = day.replace(hour=h)
                if hour + timedelta(hours=1) <= start or not pycron.is_now(hour_expr, hour):
                    continue
                for m in range(60):
                    t = hour.replace(minute=m)
                    if t >= start and pycron.is_now(expr, t):
                        return t - offset if isinstance(offset, timedelta) else t
        day += timedelta(days=1)
    return None


class ScheduleAdapter:
    def __init__(self, agent: Any, scheduler: Any) -> None:
        self.agent = agent
        self.scheduler = scheduler
        self.fires: deque[dict[str, Any]] = deque(maxlen=MAX_FIRES)
        self.runs: dict[str, tuple[float, int]] = {}
        """schedule id -> (last fire, fires seen by this process)."""
        self._lock = threading.Lock()

    def register(self) -> None:
        on = self.agent.runtime.on_command
        on("taskiq.schedules.list", self.list)
        on("taskiq.schedules.upsert", self.upsert)
        on("taskiq.schedules.delete", self.delete)
        on("taskiq.schedules.trigger", self.trigger)

    # ------------------------------------------------------------ fires

    def fired(self, schedule_id: str, task: str, task_id: str, ts: float, actor: str | None) -> None:
        fire = {"id": p.new_id(), "schedule": str(schedule_id)[:200], "task": task, "task_id": task_id, "ts": ts,
                "manual": actor is not None}
        if actor:
            fire["actor"] = actor[:400]
        with self._lock:
            self.fires.append(fire)
            _, count = self.runs.get(schedule_id, (0.0, 0))
            self.runs[schedule_id] = (ts, count + 1)

    def _fire_of(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            return next((f for f in reversed(self.fires) if f["task_id"] == task_id), None)

    # ------------------------------------------------------------ reading the sources

    async def _collect(self) -> list[tuple[Any, Any]]:
        found: list[tuple[Any, Any]] = []
        seen: set[str] = set()
        for source in self.scheduler.sources:
            tasks = await self._all(source)
            for task in tasks:
                if task.schedule_id not in seen:
                    seen.add(task.schedule_id)
                    found.append((source, task))
        return found

    async def _all(self, source: Any) -> list[Any]:
        tasks = list(await source.get_schedules())
        if type(source).__name__ == "ListRedisScheduleSource":
            # get_schedules gives only the current minute's one-off schedules: read every stored one.
            tasks += await _list_source_all(source)
        return tasks

    def _find(self, name: str) -> tuple[Any, Any] | None:
        for source, task in self.agent.on_loop(self._collect, "read the schedule sources"):
            if task.schedule_id == name:
                return source, task
        return None

    def describe(self, source: Any, task: Any, now: float) -> dict[str, Any]:
        labels = {k: v for k, v in (task.labels or {}).items() if k not in ("queue_name", "schedule_id")}
        last, count = self.runs.get(task.schedule_id, (None, 0))
        spec = to_spec(task)
        row = {"name": task.schedule_id, "task": task.task_name, "schedule": spec, "args": list(task.args),
               "kwargs": dict(task.kwargs), "queue": (task.labels or {}).get("queue_name"),
               "options": {"labels": labels} if labels else {}, "enabled": True, "last_run_at": last,
               "next_run_at": self._next(task, spec, last, now), "total_run_count": count,
               "code": _is_code(source), "source": type(source).__name__}
        masked = False
        for key in ("args", "kwargs", "options"):
            row[key], hit = self.agent.runtime.redactor.redact(row[key], task.task_name)
            masked = masked or hit
        row["redacted"] = masked
        return row

    @staticmethod
    def _next(task: Any, spec: dict[str, Any], last: float | None, now: float) -> float | None:
        try:
            if spec["kind"] == "interval":
                return max(last + spec["every"], now) if last is not None else None
            if spec["kind"] == "clocked":
                return spec["at"] if last is None else None
            if spec["kind"] == "crontab":
                after = datetime.fromtimestamp(max(now, last or 0.0), timezone.utc)
                found = next_cron(str(task.cron), after, task.cron_offset)
                return found.timestamp() if found else None
        except Exception:  # noqa: BLE001 - an expression pycron cannot read: no next run
            return None
        return None

    # ------------------------------------------------------------ commands

    def list(self, args: dict[str, Any]) -> dict[str, Any]:
        after = args.get("fires_after")
        if after is not None and not isinstance(after, str):
            raise CommandError("fires_after must be a fire id")
        now = time.time()
        entries = [self.describe(s, t, now) for s, t in self.agent.on_loop(self._collect, "read the schedule sources")]
        with self._lock:
            fires = [f for f in self.fires if after is None or f["id"] > after]
        writable = any(_writable(s) for s in self.scheduler.sources)
        return {"scheduler": "taskiq", "read_only": None if writable else
                "the scheduler has no dynamic schedule source (add a ListRedisScheduleSource)",
                "entries": entries, "fires": fires}

    def _name(self, args: dict[str, Any]) -> str:
        name = args.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise CommandError("name must be 1 to 200 characters")
        return name

    def upsert(self, args: dict[str, Any]) -> dict[str, Any]:
        from taskiq.scheduler.scheduled_task import ScheduledTask

        name = self._name(args)
        unknown = set(args) - {"name", "create", "task", "schedule", "args", "kwargs", "queue", "options", "enabled"}
        if unknown:
            raise CommandError(f"unknown field(s) {', '.join(sorted(unknown))}")
        if args.get("enabled") is False:
            raise CommandError(NO_ENABLED_FLAG)
        found = self._find(name)
        if args.get("create") and found is not None:
            raise CommandError(f"a schedule named {name!r} already exists")
        if not args.get("create") and found is None:
            raise CommandError(f"no schedule named {name!r}")
        if found is not None and not _writable(found[0]):
            raise CommandError(f"schedule {name!r} comes from {type(found[0]).__name__} (defined in code, read-only): "
                               "change it there; it can still be triggered")
        source = found[0] if found else next((s for s in self.scheduler.sources if _writable(s)), None)
        if source is None:
            raise CommandError("the scheduler has no dynamic schedule source to write to (add a "
                               "ListRedisScheduleSource to TaskiqScheduler's sources); nothing changed")
        old = found[1] if found else None
        labels = dict(old.labels) if old is not None else {}
        options = args.get("options")
        if options is not None:
            if not isinstance(options, dict) or set(options) - {"queue"}:
                raise CommandError("taskiq schedules take only the option queue (a label queue_name)")
            if "queue" in options:
                args = {**args, "queue": options["queue"]}
        if "queue" in args:
            if args["queue"] in (None, ""):
                labels.pop("queue_name", None)
            elif isinstance(args["queue"], str):
                labels["queue_name"] = args["queue"]
            else:
                raise CommandError("queue must be a queue name")
        timing = self._timing(args["schedule"]) if "schedule" in args else (
            {"cron": old.cron, "cron_offset": old.cron_offset, "interval": old.interval, "time": old.time}
            if old is not None else None)
        if timing is None:
            raise CommandError("schedule is required")
        task_name = args.get("task", old.task_name if old is not None else None)
        call_args = args.get("args", list(old.args) if old is not None else [])
        call_kwargs = args.get("kwargs", dict(old.kwargs) if old is not None else {})
        if not isinstance(task_name, str) or not task_name:
            raise CommandError("task must be a task name")
        if not isinstance(call_args, list):
            raise CommandError("args must be a JSON array")
        if not isinstance(call_kwargs, dict):
            raise CommandError("kwargs must be a JSON object")
        try:
            new = ScheduledTask(task_name=task_name, labels=labels, args=call_args, kwargs=call_kwargs,
                                schedule_id=name, **timing)
        except ValueError as exc:
            raise CommandError(f"taskiq refused the schedule: {str(exc).splitlines()[-1].strip()}") from None

        async def apply() -> None:
            if old is not None:
                await source.delete_schedule(name)
            try:
                await source.add_schedule(new)
            except Exception:
                if old is not None:  # put the old one back: an edit never loses the schedule
                    await source.add_schedule(old)
                raise

        try:
            self.agent.on_loop(apply, f"write schedule {name!r}")
        except CommandError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise CommandError(f"{type(source).__name__} refused: {type(exc).__name__}: {exc}") from None
        row = self.describe(source, new, time.time())
        row["scheduler"] = "taskiq"
        return row

    @staticmethod
    def _timing(spec: Any) -> dict[str, Any]:
        if not isinstance(spec, dict):
            raise CommandError("schedule must be an object with a kind")
        kind = spec.get("kind")
        if kind == "interval":
            every = spec.get("every")
            if isinstance(every, bool) or not isinstance(every, int | float) or every < 1 or every != int(every):
                raise CommandError(f"taskiq intervals are whole seconds (at least 1), got {every!r}")
            return {"interval": int(every)}
        if kind == "crontab":
            if spec.get("expr"):
                return {"cron": str(spec["expr"]).strip()}
            return {"cron": " ".join(str(spec.get(f, "*")) for f in CRON_FIELDS)}
        if kind == "clocked":
            at = spec.get("at")
            if isinstance(at, bool) or not isinstance(at, int | float):
                raise CommandError("clocked at must be epoch seconds")
            return {"time": datetime.fromtimestamp(float(at), timezone.utc)}
        raise CommandError(f"taskiq schedules are interval, crontab or clocked, not {kind!r}")

    def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        name = self._name(args)
        found = self._find(name)
        if found is None:
            raise CommandError(f"no schedule named {name!r}")
        source = found[0]
        if not _writable(source):
            raise CommandError(f"schedule {name!r} comes from {type(source).__name__} (defined in code, read-only): "
                               "remove it there")

        async def drop() -> None:
            await source.delete_schedule(name)

        self.agent.on_loop(drop, f"delete schedule {name!r}")
        return {"deleted": name}

    def trigger(self, args: dict[str, Any]) -> dict[str, Any]:
        from taskiq.kicker import AsyncKicker

        from z4j_agents.taskiq.middleware import manual_fire

        name = self._name(args)
        found = self._find(name)
        if found is None:
            raise CommandError(f"no schedule named {name!r}")
        task = found[1]
        actor = args.get("actor") if isinstance(args.get("actor"), str) and args.get("actor") else "z4j"
        broker = self.scheduler.broker

        async def kick() -> str:
            token = manual_fire.set(actor)
            try:
                sent = await (AsyncKicker(task.task_name, broker, dict(task.labels or {}))
                              .with_labels(schedule_id=task.schedule_id).kiq(*task.args, **task.kwargs))
            finally:
                manual_fire.reset(token)
            return sent.task_id

        task_id = self.agent.on_loop(kick, f"trigger schedule {name!r}")
        fire = self._fire_of(task_id)
        if fire is None:  # the middleware did not see the kick (it is not on this broker): record it here
            self.fired(task.schedule_id, task.task_name, task_id, time.time(), actor)
            fire = self._fire_of(task_id)
        return {"task_id": task_id, "fire": fire}


async def _list_source_all(source: Any) -> list[Any]:
    """Every schedule stored by a ListRedisScheduleSource (its ``<prefix>:data:*`` keys)."""
    from redis.asyncio import Redis
    from taskiq.scheduler.scheduled_task import ScheduledTask

    prefix = getattr(source, "_prefix", "schedule")
    out = []
    async with Redis(connection_pool=source._connection_pool) as redis:
        keys = [key async for key in redis.scan_iter(f"{prefix}:data:*")]
        for start in range(0, len(keys), 100):
            for raw in await redis.mget(keys[start:start + 100]):
                if raw:
                    try:
                        out.append(ScheduledTask.model_validate(source._serializer.loadb(raw)))
                    except Exception:  # noqa: BLE001 - one unreadable entry never hides the rest
                        log.warning("z4j taskiq: an unreadable schedule in %s", prefix)
    return out
