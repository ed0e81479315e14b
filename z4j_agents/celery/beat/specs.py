"""Schedules as JSON and back: what travels between z4j and the beat agent.

A spec is a dict with ``kind``:

* ``{"kind": "interval", "every": 30.0}``: every N seconds;
* ``{"kind": "crontab", "minute": "*/5", "hour": "*", "day_of_week": "*",
  "day_of_month": "*", "month_of_year": "*"}`` (missing fields are ``*``);
* ``{"kind": "clocked", "at": 1795000000.0}``: once, at that time (epoch
  seconds). RedBeat keeps it as a one-occurrence rrule, the file scheduler as
  :class:`Clocked`.

Entries z4j did not write may hold other kinds; they are described read-only
(``{"kind": "solar" | "rrule" | "other", "text": "…"}``).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

from celery.schedules import BaseSchedule, crontab, schedstate, schedule, solar

from z4j_agents.runtime import CommandError

CRON_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
KINDS = ("interval", "crontab", "clocked")


class Clocked(BaseSchedule):
    """Runs once, at ``at`` (an aware datetime), then never again."""

    def __init__(self, at: datetime, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self.at - self.now()

    def is_due(self, last_run_at: datetime) -> schedstate:
        if last_run_at is not None and _aware(last_run_at) >= self.at:
            return schedstate(False, None)  # it ran: nothing left
        remaining = (self.at - self.now()).total_seconds()
        if remaining <= 0:
            return schedstate(True, None)
        return schedstate(False, remaining)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Clocked) and other.at == self.at

    def __reduce__(self) -> tuple:
        return self.__class__, (self.at,)

    def __repr__(self) -> str:
        return f"<clocked: {self.at.isoformat()}>"


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def epoch(dt: datetime | None) -> float | None:
    return None if dt is None else _aware(dt).timestamp()


def to_spec(sched: Any) -> dict[str, Any]:
    """Describe a Celery schedule object as a spec."""
    if isinstance(sched, Clocked):
        return {"kind": "clocked", "at": sched.at.timestamp()}
    if type(sched).__name__ == "clocked" and isinstance(getattr(sched, "clocked_time", None), datetime):
        return {"kind": "clocked", "at": _aware(sched.clocked_time).timestamp()}  # django-celery-beat's
    if isinstance(sched, crontab):
        return {"kind": "crontab", **{f: str(getattr(sched, f"_orig_{f}")) for f in CRON_FIELDS}}
    if isinstance(sched, solar):
        return {"kind": "solar", "text": f"{sched.event} at {sched.lat},{sched.lon}"}
    if isinstance(sched, schedule):
        return {"kind": "interval", "every": sched.run_every.total_seconds()}
    rrule = _redbeat_rrule()
    if rrule is not None and isinstance(sched, rrule):
        if sched.count == 1 and sched.dtstart is not None:
            return {"kind": "clocked", "at": _aware(sched.dtstart).timestamp()}
        return {"kind": "rrule", "text": str(sched.rrule)[:500]}
    return {"kind": "other", "text": repr(sched)[:500]}


def from_spec(spec: Any, app: Any, *, clocked_as_rrule: bool = False) -> Any:
    """A Celery schedule object for a spec; :class:`CommandError` with one line
    saying what is wrong otherwise."""
    if not isinstance(spec, dict):
        raise CommandError("schedule must be an object with a kind")
    kind = spec.get("kind")
    if kind == "interval":
        every = spec.get("every")
        if isinstance(every, bool) or not isinstance(every, int | float) or not math.isfinite(every) or every <= 0:
            raise CommandError(f"interval every must be a number of seconds above 0, got {every!r}")
        return schedule(timedelta(seconds=float(every)), app=app)
    if kind == "crontab":
        unknown = set(spec) - {"kind", *CRON_FIELDS}
        if unknown:
            raise CommandError(f"unknown crontab field(s) {', '.join(sorted(unknown))}: use {', '.join(CRON_FIELDS)}")
        fields = {f: str(spec.get(f, "*")) for f in CRON_FIELDS}
        try:
            return crontab(app=app, **fields)
        except Exception as exc:  # noqa: BLE001 - Celery's parser says what is wrong
            raise CommandError(f"bad crontab: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if kind == "clocked":
        at = spec.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) or at <= 0:
            raise CommandError(f"clocked at must be a time in epoch seconds, got {at!r}")
        when = datetime.fromtimestamp(float(at), timezone.utc)
        if clocked_as_rrule:
            rrule = _redbeat_rrule()
            if rrule is None:
                raise CommandError("one-off schedules need redbeat's rrule, which is not installed")
            return rrule("SECONDLY", dtstart=when, count=1, app=app)
        return Clocked(when, app=app)
    raise CommandError(f"unknown schedule kind {kind!r}: use {', '.join(KINDS)}")


def _redbeat_rrule() -> Any:
    try:
        from redbeat.schedules import rrule
    except Exception:  # noqa: BLE001 - redbeat is optional
        return None
    return rrule
