"""The stores beat really reads its schedule from, behind one small interface.

* :class:`RedBeatStore`: RedBeat's Redis hashes and its ``<prefix>:schedule``
  sorted set, through ``redbeat.RedBeatSchedulerEntry`` (so the entries are
  exactly what RedBeat itself writes and reads).
* :class:`FileStore`: the JSON file of :class:`~z4j_agents.celery.beat.Z4JScheduler`
  (the default shelve file cannot be changed from outside beat).
* :class:`DjangoStore`: django-celery-beat's tables through Django's ORM.
* :class:`ReadOnlyStore`: any other scheduler (Celery's own
  PersistentScheduler included): entries are listed and can be triggered,
  changes are refused with the reason.

Every store returns ``Item``s: a Celery ScheduleEntry plus what the entry
itself does not say (enabled, never run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from z4j_agents.celery.beat.specs import Clocked, from_spec, to_spec
from z4j_agents.runtime import CommandError

MAX_ENTRIES = 5000


@dataclass
class Item:
    entry: Any
    """A celery.beat.ScheduleEntry (or subclass): name, task, schedule, args, kwargs, options."""
    enabled: bool = True
    last_run_at: float | None = None
    total_run_count: int = 0
    next_run_at: float | None = None


def _epoch(dt: Any) -> float | None:
    if not isinstance(dt, datetime):
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def next_run(entry: Any, enabled: bool) -> float | None:
    """When the entry fires next, by its own schedule (None: disabled or never again)."""
    if not enabled:
        return None
    try:
        due, wait = entry.is_due()
    except Exception:  # noqa: BLE001 - a schedule beat cannot compute either
        return None
    if due:
        return time.time()
    if wait is None:
        return None
    if isinstance(entry.schedule, Clocked):
        return entry.schedule.at.timestamp()
    return time.time() + float(wait)


class BeatStore:
    kind = "unknown"
    read_only: str | None = None
    """Why this store cannot be changed from z4j (None: it can)."""
    clocked_as_rrule = False

    def __init__(self, app: Any, scheduler: Any) -> None:
        self.app = app
        self.scheduler = scheduler

    def items(self) -> list[Item]:
        raise NotImplementedError

    def get(self, name: str) -> Item | None:
        raise NotImplementedError

    def save(self, name: str, task: str, schedule: Any, spec: dict[str, Any], args: list[Any],
             kwargs: dict[str, Any], options: dict[str, Any], enabled: bool, old: Item | None) -> None:
        raise CommandError(self.read_only or "this scheduler cannot be changed")

    def delete(self, name: str) -> None:
        raise CommandError(self.read_only or "this scheduler cannot be changed")

    def schedule_for(self, spec: Any) -> Any:
        return from_spec(spec, self.app, clocked_as_rrule=self.clocked_as_rrule)

    def _live(self) -> dict[str, Any]:
        live = getattr(self.scheduler, "live_entries", None)
        if live is not None:
            return live()
        for _ in range(5):
            try:
                return dict(self.scheduler.schedule)
            except RuntimeError:
                continue
        return {}

    def _item(self, entry: Any, enabled: bool = True) -> Item:
        return Item(entry, enabled, _epoch(entry.last_run_at), int(entry.total_run_count or 0),
                    next_run(entry, enabled))


class ReadOnlyStore(BeatStore):
    kind = "persistent"

    def __init__(self, app: Any, scheduler: Any) -> None:
        super().__init__(app, scheduler)
        cls = type(scheduler)
        self.read_only = (
            f"beat runs {cls.__module__}.{cls.__qualname__}, whose store z4j cannot change from outside: start "
            f"beat with -S z4j_agents.celery.beat.Z4JScheduler (or RedBeat, or django-celery-beat)"
        )

    def items(self) -> list[Item]:
        return [self._item(e) for e in list(self._live().values())[:MAX_ENTRIES]]

    def get(self, name: str) -> Item | None:
        entry = self._live().get(name)
        return None if entry is None else self._item(entry)


class RedBeatStore(BeatStore):
    kind = "redbeat"
    clocked_as_rrule = True

    def __init__(self, app: Any, scheduler: Any) -> None:
        super().__init__(app, scheduler)
        from redbeat.schedulers import RedBeatSchedulerEntry, ensure_conf, get_redis

        ensure_conf(app)
        self.Entry = RedBeatSchedulerEntry
        self.redis = lambda: get_redis(app)

    def _load(self, key: str) -> Item | None:
        try:
            entry = self.Entry.from_key(key, app=self.app)
        except KeyError:
            return None
        last = entry.last_run_at  # None: never ran (RedBeat: due now)
        enabled = bool(entry.enabled)
        due = entry.due_at if enabled else None
        return Item(entry, enabled, _epoch(last), int(entry.total_run_count or 0),
                    _epoch(due) if due is not None else None)

    def items(self) -> list[Item]:
        keys = self.redis().zrange(self.app.redbeat_conf.schedule_key, 0, MAX_ENTRIES - 1)
        return [item for item in map(self._load, keys) if item is not None]

    def get(self, name: str) -> Item | None:
        return self._load(self.Entry.generate_key(self.app, name))

    def save(self, name, task, schedule, spec, args, kwargs, options, enabled, old) -> None:  # noqa: ANN001
        entry = self.Entry(name=name, task=task, schedule=schedule, args=args, kwargs=kwargs,
                           options=options, enabled=enabled, app=self.app)
        if old is not None and old.entry.last_run_at is not None:
            entry.last_run_at = old.entry.last_run_at  # an edit keeps its place in time
        entry.save()

    def delete(self, name: str) -> None:
        self.Entry(name=name, app=self.app).delete()


class FileStore(BeatStore):
    kind = "file"

    def _defined(self) -> dict[str, dict[str, Any]]:
        from z4j_agents.celery.beat.scheduler import read_file

        try:
            return read_file(self.scheduler.z4j_path)
        except Exception as exc:  # noqa: BLE001
            raise CommandError(f"cannot read {self.scheduler.z4j_path}: {exc}") from None

    def _from_definition(self, name: str, d: dict[str, Any], live: Any) -> Item:
        from celery.beat import ScheduleEntry

        try:
            sched = from_spec(d.get("schedule"), self.app)
        except CommandError:
            sched = None
        entry = ScheduleEntry(name=name, task=d.get("task"), schedule=sched, args=list(d.get("args") or []),
                              kwargs=dict(d.get("kwargs") or {}), options=dict(d.get("options") or {}),
                              last_run_at=getattr(live, "last_run_at", None),
                              total_run_count=getattr(live, "total_run_count", 0), app=self.app)
        enabled = d.get("enabled") is not False
        item = Item(entry, enabled, _epoch(live.last_run_at) if live is not None else None,
                    int(getattr(live, "total_run_count", 0) or 0), None)
        if sched is not None:
            item.next_run_at = next_run(live if live is not None and live == entry else entry, enabled)
        return item

    def _deleted(self, defined: dict[str, Any]) -> set[str]:
        """Entries gone from the file that beat still runs until its next tick
        merges the file: listed, they would come back in z4j after a delete."""
        return set(getattr(self.scheduler, "_z4j_names", ())) - set(defined)

    def items(self) -> list[Item]:
        live, defined = self._live(), self._defined()
        deleted = self._deleted(defined)
        out = [self._from_definition(n, defined[n], e) if n in defined else self._item(e)
               for n, e in live.items() if n not in deleted]
        out += [self._from_definition(n, d, None) for n, d in defined.items() if n not in live]
        return out[:MAX_ENTRIES]

    def get(self, name: str) -> Item | None:
        live, defined = self._live(), self._defined()
        if name in defined:
            return self._from_definition(name, defined[name], live.get(name))
        entry = live.get(name)
        return None if entry is None or name in self._deleted(defined) else self._item(entry)

    def save(self, name, task, schedule, spec, args, kwargs, options, enabled, old) -> None:  # noqa: ANN001
        from z4j_agents.celery.beat.scheduler import write_file

        defined = self._defined()
        defined[name] = {"task": task, "schedule": spec, "args": args, "kwargs": kwargs, "options": options,
                         "enabled": enabled}
        self._write(write_file, defined)

    def delete(self, name: str) -> None:
        from z4j_agents.celery.beat.scheduler import write_file

        defined = self._defined()
        if name not in defined:
            raise CommandError(f"schedule {name!r} is not one z4j manages in {self.scheduler.z4j_path}")
        del defined[name]
        self._write(write_file, defined)

    def _write(self, write_file: Any, defined: dict[str, Any]) -> None:
        try:
            write_file(self.scheduler.z4j_path, defined)
        except TypeError as exc:
            raise CommandError(f"arguments must be JSON: {exc}") from None
        self.scheduler.z4j_changed.set()


class DjangoStore(BeatStore):
    """django-celery-beat: PeriodicTask rows and their schedule tables."""

    kind = "django"

    def __init__(self, app: Any, scheduler: Any) -> None:
        super().__init__(app, scheduler)
        from django_celery_beat import models

        self.models = models

    def _items_of(self, tasks: Any) -> list[Item]:
        out = []
        for task in tasks:
            try:
                entry = self.scheduler.Entry(task, app=self.app)
            except Exception:  # noqa: BLE001 - a row django-celery-beat cannot load itself
                continue
            out.append(Item(entry, bool(task.enabled), _epoch(task.last_run_at), int(task.total_run_count or 0),
                            next_run(entry, bool(task.enabled))))
        return out

    def items(self) -> list[Item]:
        from django.db import close_old_connections

        close_old_connections()
        return self._items_of(self.models.PeriodicTask.objects.all()[:MAX_ENTRIES])

    def get(self, name: str) -> Item | None:
        found = self._items_of(self.models.PeriodicTask.objects.filter(name=name))
        return found[0] if found else None

    def save(self, name, task, schedule, spec, args, kwargs, options, enabled, old) -> None:  # noqa: ANN001
        import json

        m = self.models
        fields: dict[str, Any] = {"interval": None, "crontab": None, "clocked": None, "solar": None,
                                  "one_off": False}
        kind = spec["kind"]
        if kind not in ("interval", "crontab", "clocked"):
            fields = {}  # a schedule z4j does not write (solar): the row keeps its own
        elif kind == "interval":
            every = float(spec["every"])
            if every != int(every):
                raise CommandError("django-celery-beat intervals are whole seconds")
            fields["interval"], _ = m.IntervalSchedule.objects.get_or_create(every=int(every),
                                                                              period=m.IntervalSchedule.SECONDS)
        elif kind == "crontab":
            cron = {f: str(spec.get(f, "*")) for f in ("minute", "hour", "day_of_week", "day_of_month",
                                                        "month_of_year")}
            fields["crontab"], _ = m.CrontabSchedule.objects.get_or_create(**cron)
        elif kind == "clocked":
            at = datetime.fromtimestamp(float(spec["at"]), timezone.utc)
            fields["clocked"], _ = m.ClockedSchedule.objects.get_or_create(clocked_time=at)
            fields["one_off"] = True
        options = dict(options)
        for key in ("queue", "exchange", "routing_key", "priority", "expires"):
            if key in options:
                fields[key] = options.pop(key)
        if options.get("headers"):
            fields["headers"] = json.dumps(options.pop("headers"))
        m.PeriodicTask.objects.update_or_create(
            name=name, defaults={"task": task, "args": json.dumps(args), "kwargs": json.dumps(kwargs),
                                 "enabled": enabled, **fields})
        m.PeriodicTasks.update_changed()

    def delete(self, name: str) -> None:
        self.models.PeriodicTask.objects.filter(name=name).delete()
        self.models.PeriodicTasks.update_changed()


def store_for(app: Any, scheduler: Any) -> BeatStore:
    """The store of the scheduler beat is running."""
    from z4j_agents.celery.beat.scheduler import Z4JScheduler

    if isinstance(scheduler, Z4JScheduler):
        return FileStore(app, scheduler)
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(scheduler).__mro__}
    if "redbeat.schedulers.RedBeatScheduler" in names:
        return RedBeatStore(app, scheduler)
    if "django_celery_beat.schedulers.DatabaseScheduler" in names:
        return DjangoStore(app, scheduler)
    return ReadOnlyStore(app, scheduler)


def describe(item: Item, code: bool) -> dict[str, Any]:
    """An entry as the JSON the collector stores (arguments not yet redacted)."""
    e = item.entry
    options = dict(e.options or {})
    try:
        spec = to_spec(e.schedule)
    except Exception:  # noqa: BLE001
        spec = {"kind": "other", "text": repr(e.schedule)[:500]}
    return {
        "name": str(e.name), "task": e.task, "schedule": spec, "args": list(e.args or ()),
        "kwargs": dict(e.kwargs or {}), "queue": options.get("queue"), "options": options,
        "enabled": item.enabled, "last_run_at": item.last_run_at, "next_run_at": item.next_run_at,
        "total_run_count": item.total_run_count, "code": code,
    }
