"""RQ schedules: rq-scheduler's jobs (changed at runtime) and ``rq cron`` jobs (shown, triggered).

The commands (declared by every worker agent unless ``Z4J_RQ_SCHEDULES=0``;
both stores live in Redis, so any worker on that Redis can answer):

* ``rq.schedules.list {fires_after?}`` -> ``{scheduler, read_only, entries, fires}``
* ``rq.schedules.upsert {name, create?, task?, schedule?, args?, kwargs?, queue?, options?, enabled?}``
* ``rq.schedules.delete {name}``
* ``rq.schedules.trigger {name, actor?}`` -> ``{task_id, fire}``

**rq-scheduler** (``rqscheduler`` process): an entry is one scheduled job of
its sorted set ``rq:scheduler:scheduled_jobs``; its name is the job id (the
id rq-scheduler enqueues on every run). ``interval`` schedules are
``Scheduler.schedule(..., interval=)``, ``crontab`` ones ``Scheduler.cron()``,
``clocked`` ones a single run at a time. rq-scheduler has no pause: z4j
disables an entry by taking it out of the sorted set and keeping its id in
the hash ``z4j:rq-scheduler:disabled``; enabling puts it back at its next
time. A fire is recorded when this worker starts a job that rq-scheduler
enqueued for a periodic entry (``meta.interval`` or ``meta.cron_string``).

**rq cron** (``rq cron config.py``, RQ 2.4+): entries come from the
schedulers RQ registers in Redis (``CronScheduler.all``), named
``cron:<name>``, with RQ's own next and latest enqueue times; fires are RQ's
job history of each cron job. They are defined in the config file that
``rq cron`` reads, so create, edit, delete, enable and disable are refused
with that reason; trigger-now enqueues the function with the stored
arguments (when RQ could store them as JSON).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.rq.agent import emit
from z4j_agents.rq.capture import sent_event, ts
from z4j_agents.runtime import CommandError

log = logging.getLogger("z4j.rq.schedules")

DISABLED_KEY = "z4j:rq-scheduler:disabled"
CRON_PREFIX = "cron:"
SCHEDULE_META = "z4j_schedule"
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
MAX_FIRES = 1000
FIELDS = {"name", "create", "task", "schedule", "args", "kwargs", "queue", "options", "enabled"}


def register(agent: Any) -> RQSchedules:
    schedules = RQSchedules(agent)
    for verb in ("list", "upsert", "delete", "trigger"):
        agent.on_command(f"rq.schedules.{verb}", getattr(schedules, verb))
    return schedules


def _scheduler_module() -> Any:
    try:
        import rq_scheduler
    except ImportError:
        return None
    return rq_scheduler


def _cron_module() -> Any:
    try:
        from rq import cron
    except ImportError:  # RQ before 2.4
        return None
    return cron if hasattr(cron, "CronScheduler") else None


def fire_id(when: float, job_id: str) -> str:
    """Time-ordered like protocol ids, and the same for the same run (RQ's cron history is read again)."""
    return f"{int(when * 1000):012x}{hashlib.sha1(job_id.encode()).hexdigest()[:20]}"


def cron_spec(expr: str) -> dict[str, Any]:
    parts = expr.split()
    if len(parts) != 5:
        return {"kind": "other", "text": expr}
    return {"kind": "crontab", **dict(zip(CRON_FIELDS, parts))}


class RQSchedules:
    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.fires: deque[dict[str, Any]] = deque(maxlen=MAX_FIRES)
        self._lock = threading.Lock()

    @property
    def connection(self) -> Any:
        return self.agent.connection

    def scheduler(self) -> Any:
        module = _scheduler_module()
        if module is None:
            raise CommandError("rq-scheduler is not installed where this worker runs (pip install rq-scheduler); "
                               "nothing changed")
        return module.Scheduler(connection=self.connection)

    # ------------------------------------------------------------ fires

    def seen(self, job: Any) -> None:
        """A job this worker starts: a fire when rq-scheduler enqueued it for a periodic entry."""
        meta = getattr(job, "meta", None)
        if not isinstance(meta, dict) or not ("interval" in meta or "cron_string" in meta):
            return
        when = ts(job.enqueued_at) or time.time()
        self._record({"id": fire_id(when, f"{job.id}@{when}"), "schedule": job.id, "task": job.func_name,
                      "task_id": job.id, "ts": when, "manual": False})

    def _record(self, fire: dict[str, Any]) -> None:
        with self._lock:
            self.fires.append(fire)

    # ------------------------------------------------------------ list

    def list(self, args: dict[str, Any]) -> dict[str, Any]:
        after = args.get("fires_after")
        if after is not None and not isinstance(after, str):
            raise CommandError("fires_after must be a fire id")
        kinds, entries, fires = [], [], []
        if _scheduler_module() is not None:
            kinds.append("rq-scheduler")
            entries += self._scheduler_entries()
        cron = _cron_module()
        if cron is not None:
            cron_entries, cron_fires = self._cron_entries(cron)
            if cron_entries:
                kinds.append("rq cron")
            entries += cron_entries
            fires += cron_fires
        with self._lock:
            fires += list(self.fires)
        fires = sorted((f for f in fires if after is None or f["id"] > after), key=lambda f: f["id"])
        return {"scheduler": ", ".join(kinds) or "none", "read_only": None, "entries": entries, "fires": fires}

    def _scheduler_entries(self) -> list[dict[str, Any]]:
        scheduler = self.scheduler()
        rows = [(job, ts(when), True) for job, when in scheduler.get_jobs(with_times=True)]
        disabled = {k.decode(): float(v) for k, v in self.connection.hgetall(DISABLED_KEY).items()}
        if disabled:
            from rq.job import Job

            for job_id, job in zip(disabled, Job.fetch_many(list(disabled), connection=self.connection)):
                if job is not None:
                    rows.append((job, disabled[job_id], False))
        return [self._describe(job, when, enabled) for job, when, enabled in rows]

    def _describe(self, job: Any, when: float | None, enabled: bool) -> dict[str, Any]:
        meta = job.meta or {}
        if meta.get("cron_string"):
            spec = cron_spec(str(meta["cron_string"]))
        elif meta.get("interval"):
            spec = {"kind": "interval", "every": float(meta["interval"])}
        else:
            spec = {"kind": "clocked", "at": when}
        options: dict[str, Any] = {}
        if job.timeout is not None:
            options["time_limit"] = job.timeout
        if meta.get("repeat") is not None:
            options["repeat"] = meta["repeat"]
        row = {"name": job.id, "task": job.func_name, "schedule": spec, "args": list(job.args),
               "kwargs": dict(job.kwargs), "queue": job.origin, "options": options, "enabled": enabled,
               "next_run_at": when if enabled else None, "last_run_at": ts(job.enqueued_at),
               "total_run_count": 0}
        return self._redact(row)

    def _redact(self, row: dict[str, Any]) -> dict[str, Any]:
        redactor = self.agent.runtime.redactor
        masked = False
        for key in ("args", "kwargs"):
            row[key], hit = redactor.redact(row[key], row["task"])
            masked = masked or hit
        row["redacted"] = masked
        return row

    def _cron_entries(self, cron: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        entries, fires = [], []
        for scheduler in cron.CronScheduler.all(self.connection):
            for job in scheduler.get_jobs():
                name = f"{CRON_PREFIX}{job.name}"
                spec = cron_spec(job.cron) if job.cron else {"kind": "interval", "every": float(job.interval or 0)}
                args, kwargs = job.args, job.kwargs
                row = {"name": name, "task": job.func_name, "schedule": spec,
                       "args": list(args) if isinstance(args, (list, tuple)) else str(args),
                       "kwargs": kwargs if isinstance(kwargs, dict) else str(kwargs), "queue": job.queue_name,
                       "options": {"source": "rq cron", "config_file": scheduler.config_file or None,
                                   "cron_scheduler": scheduler.name},
                       "enabled": True, "next_run_at": _cron_time(job.next_enqueue_time),
                       "last_run_at": _cron_time(job.latest_enqueue_time), "total_run_count": 0}
                history = self.connection.zrange(job.job_history_key, 0, -1, withscores=True)
                row["total_run_count"] = len(history)
                entries.append(self._redact(row))
                for raw_id, score in history:
                    job_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                    fires.append({"id": fire_id(score, job_id), "schedule": name, "task": job.func_name,
                                  "task_id": job_id, "ts": float(score), "manual": False})
        return entries, fires

    def _cron_job(self, name: str) -> tuple[Any, Any]:
        cron = _cron_module()
        if cron is not None:
            for scheduler in cron.CronScheduler.all(self.connection):
                for job in scheduler.get_jobs():
                    if f"{CRON_PREFIX}{job.name}" == name:
                        return scheduler, job
        raise CommandError(f"no schedule named {name!r} (no running `rq cron` has it)")

    # ------------------------------------------------------------ changes

    def _name(self, args: dict[str, Any]) -> str:
        name = args.get("name") if isinstance(args, dict) else None
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise CommandError("name must be 1 to 200 characters")
        return name

    def _refuse_cron(self, name: str) -> None:
        if name.startswith(CRON_PREFIX):
            scheduler, _ = self._cron_job(name)
            where = f"the config file {scheduler.config_file}" if scheduler.config_file else "the `rq cron` config"
            raise CommandError(f"{name} is an rq cron job defined in {where}: change it there (it can be triggered)")

    def _find(self, scheduler: Any, name: str) -> tuple[Any, float | None, bool] | None:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        score = self.connection.zscore(scheduler.scheduled_jobs_key, name)
        paused = self.connection.hget(DISABLED_KEY, name)
        if score is None and paused is None:
            return None
        try:
            job = Job.fetch(name, connection=self.connection)
        except NoSuchJobError:
            return None
        if score is not None:
            return job, float(score), True
        return job, float(paused), False

    def upsert(self, args: dict[str, Any]) -> dict[str, Any]:
        name = self._name(args)
        self._refuse_cron(name)
        unknown = set(args) - FIELDS
        if unknown:
            raise CommandError(f"unknown field(s) {', '.join(sorted(unknown))}")
        scheduler = self.scheduler()
        found = self._find(scheduler, name)
        if args.get("create") and found is not None:
            raise CommandError(f"a schedule named {name!r} already exists")
        if not args.get("create") and found is None:
            raise CommandError(f"no schedule named {name!r} in rq-scheduler")
        old, old_next, old_enabled = found if found is not None else (None, None, True)
        base = self._describe(old, old_next, old_enabled) if old is not None else {}
        task = args.get("task", old.func_name if old is not None else None)
        if not isinstance(task, str) or not task or " " in task:
            raise CommandError("task must be a function's dotted path like app.jobs.send_report")
        call_args = args["args"] if "args" in args else (list(old.args) if old is not None else [])
        call_kwargs = args["kwargs"] if "kwargs" in args else (dict(old.kwargs) if old is not None else {})
        if not isinstance(call_args, list):
            raise CommandError("args must be a JSON array")
        if not isinstance(call_kwargs, dict):
            raise CommandError("kwargs must be a JSON object")
        queue = args.get("queue", old.origin if old is not None else None) or "default"
        if not isinstance(queue, str):
            raise CommandError("queue must be a queue name")
        options = args.get("options") if "options" in args else dict(base.get("options") or {})
        if not isinstance(options, dict):
            raise CommandError("options must be a JSON object")
        unknown = set(options) - {"time_limit", "repeat"}
        if unknown:
            raise CommandError(f"rq-scheduler jobs take the options time_limit (the job timeout, seconds) and "
                               f"repeat, not {', '.join(sorted(unknown))}")
        enabled = args.get("enabled", old_enabled)
        if not isinstance(enabled, bool):
            raise CommandError("enabled must be true or false")
        spec = args.get("schedule") if "schedule" in args else base.get("schedule")
        if spec is None:
            raise CommandError("schedule is required")
        cron_string, every, at = self._timing(spec)
        if "schedule" not in args and old_next is not None:
            first = old_next  # an unchanged schedule keeps its next run
        elif cron_string:
            first = None
        else:
            first = at if at is not None else time.time() + (every or 0)

        timeout = options.get("time_limit")
        repeat = options.get("repeat")
        for key, value in (("time_limit", timeout), ("repeat", repeat)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise CommandError(f"{key} must be a positive number")
        common = {"args": call_args, "kwargs": call_kwargs, "id": name, "queue_name": queue,
                  "timeout": int(timeout) if timeout else None, "repeat": int(repeat) if repeat else None}
        with self.connection.pipeline() as pipe:
            pipe.zrem(scheduler.scheduled_jobs_key, name)
            pipe.hdel(DISABLED_KEY, name)
            pipe.execute()
        try:
            if cron_string:
                job = scheduler.cron(cron_string, task, **common)
            else:
                when = datetime.fromtimestamp(first, timezone.utc).replace(tzinfo=None)
                job = scheduler.schedule(when, task, interval=int(every) if every else None, **common)
        except Exception as exc:  # noqa: BLE001 - rq-scheduler refuses (bad cron string, repeat without interval)
            if old is not None:  # put the old entry back as it was
                self.connection.zadd(scheduler.scheduled_jobs_key, {name: old_next})
            raise CommandError(f"rq-scheduler refused the schedule: {exc}") from None
        if not enabled:
            self._pause(scheduler, name)
        found = self._find(scheduler, name)
        if found is None:
            raise CommandError(f"schedule {name!r} was written but cannot be read back")
        row = self._describe(*found)
        row["scheduler"] = "rq-scheduler"
        log.info("z4j rq: schedule %s saved (%s)", name, job.func_name)
        return row

    def _timing(self, spec: Any) -> tuple[str | None, float | None, float | None]:
        """(cron string, interval seconds, one-off epoch) of a spec; CommandError otherwise."""
        if not isinstance(spec, dict):
            raise CommandError("schedule must be an object with a kind: interval, crontab or clocked")
        kind = spec.get("kind")
        if kind == "interval":
            every = spec.get("every")
            if isinstance(every, bool) or not isinstance(every, (int, float)) or every < 1:
                raise CommandError(f"interval every must be a whole number of seconds, 1 or more, got {every!r}")
            if float(every) != int(every):
                raise CommandError(f"rq-scheduler repeats in whole seconds: every {every} cannot be kept")
            return None, float(every), None
        if kind == "crontab":
            expr = " ".join(str(spec.get(f, "*")) for f in CRON_FIELDS)
            try:
                from rq_scheduler.utils import get_next_scheduled_time

                get_next_scheduled_time(expr)
            except Exception as exc:  # noqa: BLE001 - the cron parser says what is wrong
                raise CommandError(f"bad cron expression {expr!r}: {exc}") from None
            return expr, None, None
        if kind == "clocked":
            at = spec.get("at")
            if isinstance(at, bool) or not isinstance(at, (int, float)) or at <= 0:
                raise CommandError(f"clocked at must be a time in epoch seconds, got {at!r}")
            return None, None, float(at)
        raise CommandError(f"rq-scheduler cannot run a {kind!r} schedule: use interval, crontab or clocked")

    def _pause(self, scheduler: Any, name: str) -> None:
        score = self.connection.zscore(scheduler.scheduled_jobs_key, name)
        with self.connection.pipeline() as pipe:
            pipe.zrem(scheduler.scheduled_jobs_key, name)
            pipe.hset(DISABLED_KEY, name, score if score is not None else time.time())
            pipe.execute()

    def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        name = self._name(args)
        self._refuse_cron(name)
        scheduler = self.scheduler()
        found = self._find(scheduler, name)
        if found is None:
            raise CommandError(f"no schedule named {name!r} in rq-scheduler")
        scheduler.cancel(name)
        self.connection.hdel(DISABLED_KEY, name)
        found[0].delete(remove_from_queue=False)
        return {"deleted": name}

    # ------------------------------------------------------------ trigger

    def trigger(self, args: dict[str, Any]) -> dict[str, Any]:
        name = self._name(args)
        if name.startswith(CRON_PREFIX):
            _, cron_job = self._cron_job(name)
            call_args, call_kwargs = cron_job.args, cron_job.kwargs
            if not isinstance(call_args, (list, tuple)) or not isinstance(call_kwargs, dict):
                raise CommandError(f"{name}: RQ could not store its arguments as JSON, so they cannot be read "
                                   "back to run it now; nothing was enqueued")
            func, queue_name, options = cron_job.func_name, cron_job.queue_name, {}
            if cron_job.job_options.get("job_timeout"):
                options["timeout"] = cron_job.job_options["job_timeout"]
        else:
            found = self._find(self.scheduler(), name)
            if found is None:
                raise CommandError(f"no schedule named {name!r}")
            job = found[0]
            func, queue_name = job.func_name, job.origin
            call_args, call_kwargs = job.args, job.kwargs
            options = {"timeout": job.timeout} if job.timeout else {}
        from rq import Queue

        task_id = str(uuid.uuid4())
        queue = Queue(queue_name, connection=self.connection)
        job = queue.enqueue_call(func, args=list(call_args), kwargs=dict(call_kwargs), job_id=task_id,
                                 meta={SCHEDULE_META: name}, **options)
        event = sent_event(job, queue.name)
        event.extra = {**(event.extra or {}), "schedule": name, "manual": True}
        emit(event)
        fire = {"id": p.new_id(), "schedule": name, "task": func, "task_id": task_id, "ts": time.time(),
                "manual": True}
        actor = args.get("actor")
        if isinstance(actor, str):
            fire["actor"] = actor[:400]
        self._record(fire)
        return {"task_id": task_id, "fire": fire}


def _cron_time(value: Any) -> float | None:
    if not isinstance(value, datetime) or value.year >= 9999:
        return None
    return ts(value)


