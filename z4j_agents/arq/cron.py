"""arq cron jobs as z4j schedules: listed with their next run, triggerable, read-only.

arq's cron jobs live in code (``cron_jobs`` of the worker settings); every
worker evaluates them itself and arq keeps no store of them that z4j could
write to. So:

* ``arq.schedules.list {fires_after?}`` -> ``{scheduler: "arq-cron", read_only, entries, fires}``:
  one entry per cron job of this worker (``source: code``), its spec as a
  crontab (arq's ``second`` kept beside the five fields), its next run as
  the worker computed it, and the fires this agent saw (the cron's
  enqueues that this worker won, and triggers);
* ``arq.schedules.trigger {name}`` enqueues the cron job's function now,
  under a new job id, on the worker's queue; the schedule does not move;
* ``arq.schedules.upsert`` / ``delete`` are refused with one sentence.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

from z4j_agents.arq import capture
from z4j_agents.arq.call import job_bytes
from z4j_agents.runtime import CommandError

SCHEDULER = "arq-cron"
READ_ONLY = ("arq cron jobs are defined in code (cron_jobs in the worker settings): z4j lists and triggers them "
             "but cannot create, change, enable, disable or delete them; change the code")
WEEKDAYS = ("mon", "tues", "wed", "thurs", "fri", "sat", "sun")
TIMEOUT_S = 15.0


def register(agent: Any) -> None:
    if not getattr(agent.worker, "cron_jobs", None):
        return
    schedules = CronSchedules(agent)
    agent.on_command("arq.schedules.list", schedules.list)
    agent.on_command("arq.schedules.upsert", schedules.refuse)
    agent.on_command("arq.schedules.delete", schedules.refuse)
    agent.on_command("arq.schedules.trigger", schedules.trigger)


def _field(value: Any, weekday: bool = False) -> str:
    if value is None:
        return "*"
    if isinstance(value, str):  # arq's weekday names
        value = WEEKDAYS.index(value.lower())
    values = sorted(value) if isinstance(value, (set, frozenset, list, tuple)) else [value]
    if weekday:  # arq: Monday is 0; cron: Sunday is 0
        values = sorted((int(v) + 1) % 7 for v in values)
    return ",".join(str(v) for v in values)


def spec_of(job: Any) -> dict[str, Any]:
    return {"kind": "crontab", "minute": _field(job.minute), "hour": _field(job.hour),
            "day_of_week": _field(job.weekday, weekday=True), "day_of_month": _field(job.day),
            "month_of_year": _field(job.month), "second": _field(job.second)}


class CronSchedules:
    def __init__(self, agent: Any) -> None:
        self.agent = agent

    @property
    def jobs(self) -> dict[str, Any]:
        return {cj.name: cj for cj in self.agent.worker.cron_jobs}

    def list(self, args: dict[str, Any]) -> dict[str, Any]:
        after = args.get("fires_after")
        if after is not None and not isinstance(after, str):
            raise CommandError("fires_after must be a fire id")
        with self.agent.fires_lock:
            fires = list(self.agent.fires)
        entries = [self._entry(job, fires) for job in self.jobs.values()]
        return {"scheduler": SCHEDULER, "read_only": READ_ONLY, "entries": entries,
                "fires": [f for f in fires if after is None or f["id"] > after]}

    def _entry(self, job: Any, fires: list[dict[str, Any]]) -> dict[str, Any]:
        worker = self.agent.worker
        next_run = job.next_run
        if next_run is None:  # the worker computes it at its first poll
            from arq.cron import next_cron

            next_run = next_cron(datetime.now(tz=worker.timezone), month=job.month, day=job.day,
                                 weekday=job.weekday, hour=job.hour, minute=job.minute, second=job.second,
                                 microsecond=job.microsecond)
        own = [f for f in fires if f["schedule"] == job.name]
        return {"name": job.name, "task": job.name, "schedule": spec_of(job), "args": [], "kwargs": {},
                "queue": worker.queue_name, "enabled": True, "code": True, "redacted": False,
                "options": {"run_at_startup": job.run_at_startup, "unique": job.unique, "job_id": job.job_id,
                            "timeout": job.timeout_s, "max_tries": job.max_tries},
                "next_run_at": next_run.timestamp(), "last_run_at": own[-1]["ts"] if own else None,
                "total_run_count": len(own)}

    def refuse(self, args: dict[str, Any]) -> dict[str, Any]:
        raise CommandError(READ_ONLY)

    def trigger(self, args: dict[str, Any]) -> dict[str, Any]:
        name = args.get("name")
        if not isinstance(name, str) or name not in self.jobs:
            raise CommandError(f"no arq cron job named {name!r} on this worker")
        worker = self.agent.worker
        job_id = uuid.uuid4().hex

        async def enqueue() -> Any:
            pool = await self.agent.pool()
            return await capture.state.original_enqueue(pool, name, _job_id=job_id, _queue_name=worker.queue_name)

        if self.agent.call(enqueue, TIMEOUT_S, f"trigger {name}") is None:
            raise CommandError(f"arq refused job id {job_id} (it exists already); nothing was enqueued")
        now = time.time()
        actor = args.get("actor") if isinstance(args.get("actor"), str) else None
        capture.note("sent", job_id, {"name": name, "queue": worker.queue_name, "args": [], "kwargs": {},
                                      "engine_state": "queued", "extra": {"schedule": name, "manual": True}},
                     (name, worker.queue_name, job_bytes(name, (), {}, worker.job_serializer)), now)
        fire = self.agent.cron_fired(name, job_id, now, manual=True, actor=actor)
        return {"task_id": job_id, "fire": fire}
