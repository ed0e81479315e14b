"""Periodic schedules (Celery Beat first): what the scheduler's own store
holds, kept in sync through the agent that runs next to the scheduler.

Flow (docs/celery.md, "Beat"):

* Every ``interval_s`` (``Z4J_SCHEDULE_SYNC_S``, 10 s by default) the
  collector asks each connected agent that declared ``<engine>.schedules.list``
  for its entries and for the fires since the last one it saw, and stores
  them: new entries appear (``source`` ``store``, or ``code`` for
  ``beat_schedule``), changed ones are updated, entries gone from the store
  are removed, fires are added to the history once each.
* A change made through z4j (create, edit, delete, enable, disable) is sent
  to that agent, which applies it to the store beat really reads and answers
  the entry as stored; only then is the row written, with its audit entry, in
  one transaction. Trigger-now sends the task at once through the agent and
  records a manual fire. With no agent to apply it, a change is refused (and
  audited as refused): z4j never shows a schedule beat does not have.
* One lock per agent orders syncs and changes, so a list answered before a
  change can never undo the change's row.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from typing import Any

import msgspec

from z4j_agents.protocol import ENGINES
from z4j_collector.errors import CollectorError, Conflict, NotFound
from z4j_collector.services.agents import AgentRegistry
from z4j_collector.services.audit import Actor, Audit
from z4j_collector.services.commands import CommandService
from z4j_collector.store.base import SqlStore
from z4j_collector.store.schedules import DEFINITION
from z4j_collector.services.periodic import cancel, every

log = logging.getLogger("z4j.collector.schedules")

SOURCES = ("z4j", "store", "code")
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "queue": (str,), "exchange": (str,), "routing_key": (str,), "priority": (int,), "expires": (int, float),
    "soft_time_limit": (int, float), "time_limit": (int, float), "headers": (dict,),
}
MAX_JSON = 64 * 1024
ASK_TIMEOUT_S = 15.0
_encode = msgspec.json.Encoder().encode


class AgentTimeout(CollectorError):
    status_code = 504
    code = "agent_timeout"


# ------------------------------------------------------------------ validation

CRON_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
_CRON_RANGES = {"minute": (0, 59), "hour": (0, 23), "day_of_week": (0, 6), "day_of_month": (1, 31),
                "month_of_year": (1, 12)}
_CRON_NAMES = {
    "day_of_week": {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
    "month_of_year": {m: i + 1 for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug",
                                                      "sep", "oct", "nov", "dec"))},
}
_CRON_PART = re.compile(r"^(\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(\d+))?$")


def _cron_value(field: str, text: str) -> int:
    lo, hi = _CRON_RANGES[field]
    names = _CRON_NAMES.get(field, {})
    if text.isdigit():
        value = int(text)
        if field == "day_of_week" and value == 7:
            return 0  # Sunday, as cron allows
    elif text[:3] in names and (len(text) == 3 or text in ("sunday", "monday", "tuesday", "wednesday", "thursday",
                                                           "friday", "saturday")):
        value = names[text[:3]]
    else:
        raise ValueError(f"{text!r} is not a number" + (" or a name" if names else ""))
    if not lo <= value <= hi:
        raise ValueError(f"{value} is outside {lo}-{hi}")
    return value


def check_cron_field(field: str, value: Any) -> str:
    """The field as text; ValueError naming the field and what is wrong."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"crontab {field} must be text like '*/5' or '1,15', got {value!r}")
    text = str(value).strip().lower()
    if not text:
        raise ValueError(f"crontab {field} is empty")
    for part in text.split(","):
        m = _CRON_PART.match(part.strip())
        if not m:
            raise ValueError(f"crontab {field} {value!r}: cannot read {part!r}")
        base, step = m.group(1), m.group(2)
        try:
            if step is not None and int(step) < 1:
                raise ValueError("a step must be 1 or more")
            if base != "*":
                ends = base.split("-")
                numbers = [_cron_value(field, e) for e in ends]
                if len(numbers) == 2 and numbers[0] > numbers[1] and field != "day_of_week":
                    raise ValueError(f"range {base} runs backwards")
        except ValueError as exc:
            raise ValueError(f"crontab {field} {value!r}: {exc}") from None
    return str(value).strip()


def check_spec(spec: Any, now: float | None = None) -> dict[str, Any]:
    """A normalized schedule spec; CollectorError (bad_schedule) with one line otherwise."""
    def bad(message: str) -> CollectorError:
        return CollectorError(message, code="bad_schedule")

    if not isinstance(spec, dict):
        raise bad("schedule must be an object with a kind: interval, crontab or clocked")
    kind = spec.get("kind")
    if kind == "interval":
        unknown = set(spec) - {"kind", "every"}
        if unknown:
            raise bad(f"unknown interval field(s) {', '.join(sorted(unknown))}: use every (seconds)")
        every = spec.get("every")
        if isinstance(every, bool) or not isinstance(every, int | float) or not math.isfinite(every):
            raise bad(f"interval every must be a number of seconds, got {every!r}")
        if not 1 <= every <= 366 * 86400:
            raise bad(f"interval every must be between 1 second and 366 days, got {every}")
        return {"kind": "interval", "every": float(every)}
    if kind == "crontab":
        fields = dict(spec)
        fields.pop("kind")
        expr = fields.pop("expr", None)
        if expr is not None:
            if fields:
                raise bad("crontab takes expr or the separate fields, not both")
            parts = str(expr).split() if isinstance(expr, str) else []
            if len(parts) != 5:
                raise bad(f"crontab expr must have 5 fields (minute hour day-of-month month day-of-week), "
                          f"got {expr!r}")
            fields = dict(zip(("minute", "hour", "day_of_month", "month_of_year", "day_of_week"), parts))
        unknown = set(fields) - set(CRON_FIELDS)
        if unknown:
            raise bad(f"unknown crontab field(s) {', '.join(sorted(unknown))}: use {', '.join(CRON_FIELDS)} or expr")
        try:
            return {"kind": "crontab", **{f: check_cron_field(f, fields.get(f, "*")) for f in CRON_FIELDS}}
        except ValueError as exc:
            raise bad(str(exc)) from None
    if kind == "clocked":
        unknown = set(spec) - {"kind", "at"}
        if unknown:
            raise bad(f"unknown clocked field(s) {', '.join(sorted(unknown))}: use at (epoch seconds)")
        at = spec.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) or at <= 0:
            raise bad(f"clocked at must be a time in epoch seconds, got {at!r}")
        if at < (now or time.time()) - 60:
            raise bad(f"clocked at {at} is in the past")
        return {"kind": "clocked", "at": float(at)}
    raise bad(f"unknown schedule kind {kind!r}: use interval, crontab or clocked")


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or any(ord(c) < 32 for c in name):
        raise CollectorError("name must be 1 to 200 characters without control characters", code="bad_name")
    return name


def check_task(task: Any) -> str:
    if not isinstance(task, str) or not task or len(task) > 255 or any(c.isspace() for c in task):
        raise CollectorError(f"task must be a task name (1 to 255 characters, no spaces), got {task!r}",
                             code="bad_task")
    return task


def _json_size(value: Any, what: str) -> None:
    try:
        size = len(_encode(value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise CollectorError(f"{what} must be JSON: {exc}", code=f"bad_{what}") from None
    if size > MAX_JSON:
        raise CollectorError(f"{what} is {size} bytes of JSON; at most {MAX_JSON}", code=f"bad_{what}")


def check_change(body: dict[str, Any], creating: bool) -> dict[str, Any]:
    """The fields of a create or edit, checked; what the agent gets."""
    out: dict[str, Any] = {}
    if creating:
        for required in ("name", "task", "schedule"):
            if body.get(required) is None:
                raise CollectorError(f"{required} is required", code=f"bad_{required}" if required != "schedule"
                                     else "bad_schedule")
        out["name"] = check_name(body["name"])
    if body.get("task") is not None:
        out["task"] = check_task(body["task"])
    if body.get("schedule") is not None:
        out["schedule"] = check_spec(body["schedule"])
    if body.get("args") is not None:
        if not isinstance(body["args"], list):
            raise CollectorError(f"args must be a JSON array, got {type(body['args']).__name__}", code="bad_args")
        _json_size(body["args"], "args")
        out["args"] = body["args"]
    if body.get("kwargs") is not None:
        if not isinstance(body["kwargs"], dict):
            raise CollectorError(f"kwargs must be a JSON object, got {type(body['kwargs']).__name__}",
                                 code="bad_kwargs")
        _json_size(body["kwargs"], "kwargs")
        out["kwargs"] = body["kwargs"]
    if "queue" in body and (body["queue"] is not None or not creating):
        queue = body["queue"]
        if queue is not None and (not isinstance(queue, str) or len(queue) > 255 or any(c.isspace() for c in queue)):
            raise CollectorError(f"queue must be a queue name (up to 255 characters, no spaces), got {queue!r}",
                                 code="bad_queue")
        out["queue"] = queue or None
    if body.get("options") is not None:
        options = body["options"]
        if not isinstance(options, dict):
            raise CollectorError("options must be a JSON object", code="bad_options")
        for key, value in options.items():
            types = OPTION_TYPES.get(key)
            if types is None:
                raise CollectorError(f"unknown option {key!r}: use {', '.join(OPTION_TYPES)}", code="bad_options")
            if isinstance(value, bool) or not isinstance(value, types):
                raise CollectorError(f"option {key} must be {' or '.join(t.__name__ for t in types)}, got {value!r}",
                                     code="bad_options")
        _json_size(options, "options")
        out["options"] = options
    if body.get("enabled") is not None:
        if not isinstance(body["enabled"], bool):
            raise CollectorError("enabled must be true or false", code="bad_enabled")
        out["enabled"] = body["enabled"]
    if not creating and not out:
        raise CollectorError("nothing to change: give task, schedule, args, kwargs, queue, options or enabled",
                             code="empty_change")
    return out


# ------------------------------------------------------------------ the service


def _entry_row(entry: dict[str, Any], engine: str, scheduler: str, agent_id: int, source: str,
               old: dict[str, Any] | None, now: float) -> dict[str, Any] | None:
    """A schedules row from an agent's entry (None when unusable)."""
    name, task = entry.get("name"), entry.get("task")
    if not isinstance(name, str) or not 0 < len(name) <= 200 or not isinstance(task, str) or len(task) > 255:
        return None
    spec = entry.get("schedule") if isinstance(entry.get("schedule"), dict) else {"kind": "other"}
    queue = entry.get("queue") if isinstance(entry.get("queue"), str) else None

    def number(key: str) -> float | None:
        value = entry.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    row = {
        "engine": engine, "scheduler": str(scheduler)[:32], "name": name, "task": task or "", "spec": spec,
        "args": entry.get("args"), "kwargs": entry.get("kwargs"), "queue": queue[:255] if queue else None,
        "options": entry.get("options") if isinstance(entry.get("options"), dict) else {},
        "enabled": entry.get("enabled") is not False, "redacted": bool(entry.get("redacted")),
        "next_run_at": number("next_run_at"), "last_run_at": number("last_run_at"),
        "total_run_count": int(entry.get("total_run_count") or 0) if isinstance(entry.get("total_run_count"), int)
        else 0,
        "source": source, "agent_id": agent_id, "created_at": old["created_at"] if old else now,
        "updated_at": now, "synced_at": now,
    }
    if old is not None and all(old[k] == row[k] for k in DEFINITION):
        row["updated_at"] = old["updated_at"]
    return row


def _unchanged(old: dict[str, Any], row: dict[str, Any]) -> bool:
    return all(old.get(k) == row.get(k) for k in row if k not in ("synced_at", "updated_at", "created_at"))


def _fire_rows(fires: Any, engine: str, agent_id: int) -> list[dict[str, Any]]:
    out = []
    for f in fires if isinstance(fires, list) else []:
        if not isinstance(f, dict) or not isinstance(f.get("id"), str) or not 0 < len(f["id"]) <= 64:
            continue
        if not isinstance(f.get("schedule"), str) or not isinstance(f.get("ts"), int | float):
            continue
        task_id = f.get("task_id") if isinstance(f.get("task_id"), str) else None
        task = f.get("task") if isinstance(f.get("task"), str) else None
        actor = f.get("actor") if isinstance(f.get("actor"), str) else None
        out.append({"id": f["id"], "engine": engine, "schedule": f["schedule"][:200], "task": task and task[:255],
                    "task_id": task_id and task_id[:255], "ts": float(f["ts"]), "manual": bool(f.get("manual")),
                    "actor": actor and actor[:400], "agent_id": agent_id})
    return out


class Schedules:
    def __init__(self, store: SqlStore, registry: AgentRegistry, commands: CommandService, audit: Audit,
                 interval_s: float = 10.0) -> None:
        self.store = store
        self.registry = registry
        self.commands = commands
        self.audit = audit
        self.interval_s = interval_s
        self._locks: dict[int, asyncio.Lock] = {}
        self._cursors: dict[int, str] = {}
        self._problems: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None

    def _lock(self, agent_id: int) -> asyncio.Lock:
        return self._locks.setdefault(agent_id, asyncio.Lock())

    # ------------------------------------------------------------ sync

    def start(self) -> None:
        self._task = asyncio.create_task(every(self.interval_s, self.sync_all, "schedule sync", first_now=True))

    async def stop(self) -> None:
        await cancel(self._task)

    def _scheduler_sessions(self) -> dict[tuple[int, str], Any]:
        """(agent id, engine) -> the agent's newest connection that lists schedules."""
        found: dict[tuple[int, str], Any] = {}
        for session in self.registry.all_sessions():
            for engine in ENGINES:
                if f"{engine}.schedules.list" in session.capabilities:
                    found[(session.agent_id, engine)] = session
        return found

    async def sync_all(self) -> None:
        pairs = self._scheduler_sessions()
        await asyncio.gather(*(self.sync(session, engine) for (_, engine), session in pairs.items()),
                             return_exceptions=True)

    async def sync(self, session: Any, engine: str) -> None:
        agent_id = session.agent_id
        async with self._lock(agent_id):
            try:
                reply = await self.commands.ask(session, f"{engine}.schedules.list",
                                                {"fires_after": self._cursors.get(agent_id)}, ASK_TIMEOUT_S, engine)
            except (TimeoutError, ConnectionError, OSError) as exc:
                self._problem(agent_id, f"no schedule list from agent {agent_id}: {type(exc).__name__} {exc}")
                return
            if not reply.ok or not isinstance(reply.result, dict):
                self._problem(agent_id, f"agent {agent_id} could not list schedules: {reply.error}")
                return
            self._problems.pop(agent_id, None)
            await self._apply(session.project_id, agent_id, engine, reply.result)

    def _problem(self, agent_id: int, message: str) -> None:
        if self._problems.get(agent_id) != message:  # say it once, not every round
            log.warning("%s", message)
        self._problems[agent_id] = message

    async def _apply(self, project_id: int, agent_id: int, engine: str, snapshot: dict[str, Any]) -> None:
        scheduler = str(snapshot.get("scheduler") or "unknown")
        entries = snapshot.get("entries") if isinstance(snapshot.get("entries"), list) else []
        fires = _fire_rows(snapshot.get("fires"), engine, agent_id)
        now = time.time()

        async def tx_fn(tx: Any) -> None:
            existing = await self.store.schedules_tx(tx, project_id, engine)
            seen, rows = set(), []
            for entry in entries:
                if not isinstance(entry, dict):
                    continue
                old = existing.get(entry.get("name"))
                source = "z4j" if old and old["source"] == "z4j" else ("code" if entry.get("code") else "store")
                row = _entry_row(entry, engine, scheduler, agent_id, source, old, now)
                if row is None:
                    continue
                seen.add(row["name"])
                if old is None or not _unchanged(old, row):
                    rows.append(row)
            await self.store.put_schedules(tx, project_id, rows)
            gone = [old["id"] for name, old in existing.items() if old["agent_id"] == agent_id and name not in seen]
            await self.store.delete_schedules(tx, project_id, gone)
            await self.store.insert_fires(tx, project_id, fires)

        await self.store.write(tx_fn)
        if fires:
            self._cursors[agent_id] = max(f["id"] for f in fires)

    # ------------------------------------------------------------ reads

    async def list(self, project_id: int, engine: str | None = None, source: str | None = None,
                   enabled: bool | None = None) -> list[dict[str, Any]]:
        if engine is not None and engine not in ENGINES:
            raise CollectorError(f"unknown engine {engine!r}: use {', '.join(ENGINES)}", code="bad_engine")
        if source is not None and source not in SOURCES:
            raise CollectorError(f"unknown source {source!r}: use {', '.join(SOURCES)}", code="bad_source")
        return [self._view(r) for r in await self.store.list_schedules(project_id, engine, source, enabled)]

    async def get(self, project_id: int, schedule_id: int) -> dict[str, Any]:
        row = await self.store.get_schedule(project_id, schedule_id)
        if row is None:
            raise NotFound(f"no schedule {schedule_id}")
        return row

    def _view(self, row: dict[str, Any]) -> dict[str, Any]:
        view = dict(row)
        view["schedule"] = view.pop("spec")
        view["agent_connected"] = self.registry.get(row["agent_id"]) is not None if row["agent_id"] else False
        return view

    async def one(self, project_id: int, schedule_id: int) -> dict[str, Any]:
        return self._view(await self.get(project_id, schedule_id))

    async def fires(self, project_id: int, schedule_id: int, limit: int = 100,
                    before: float | None = None) -> list[dict[str, Any]]:
        row = await self.get(project_id, schedule_id)
        return await self.store.schedule_fires(project_id, row["engine"], row["name"], limit, before)

    # ------------------------------------------------------------ changes

    def _session_for(self, project_id: int, engine: str, action: str, agent_id: int | None) -> Any:
        """The scheduler's agent (the row's), or any connected one that can do ``action``."""
        return self.commands._pick(project_id, action, agent_id, engine)

    async def _ask(self, session: Any, engine: str, op: str, args: dict[str, Any]) -> Any:
        try:
            reply = await self.commands.ask(session, f"{engine}.schedules.{op}", args, ASK_TIMEOUT_S, engine)
        except TimeoutError:
            raise AgentTimeout(f"the scheduler's agent {session.agent_id} did not answer within "
                               f"{ASK_TIMEOUT_S:.0f} s") from None
        except Exception as exc:  # noqa: BLE001 - the connection went away while we sent
            raise Conflict(f"could not reach the scheduler's agent: {exc}", code="agent_offline") from None
        if not reply.ok:
            raise Conflict(f"the scheduler refused: {reply.error}", code="scheduler_refused")
        return reply.result

    async def _refused(self, actor: Actor, project_id: int, action: str, target: str, exc: CollectorError,
                       **detail: Any) -> None:
        await self.audit.write(actor.entry(project_id, action, target, outcome="refused", reason=exc.message,
                                           code=exc.code, **detail))

    async def create(self, project_id: int, body: dict[str, Any], actor: Actor) -> dict[str, Any]:
        engine = body.get("engine") or "celery"
        target = f"schedule:{body.get('name')}"
        try:
            if engine not in ENGINES:
                raise CollectorError(f"unknown engine {engine!r}: use {', '.join(ENGINES)}", code="bad_engine")
            change = check_change(body, creating=True)
        except CollectorError as exc:
            await self._refused(actor, project_id, "schedule.create", target, exc)
            raise
        agent_id = body.get("agent_id")
        return await self._change(project_id, engine, "schedule.create", target, actor, agent_id, "upsert",
                                  {**change, "create": True}, source="z4j", shown=change)

    async def edit(self, project_id: int, schedule_id: int, body: dict[str, Any], actor: Actor) -> dict[str, Any]:
        row = await self.get(project_id, schedule_id)
        target = f"schedule:{row['name']}"
        try:
            self._check_writable(row)
            change = check_change(body, creating=False)
        except CollectorError as exc:
            await self._refused(actor, project_id, "schedule.edit", target, exc)
            raise
        return await self._change(project_id, row["engine"], "schedule.edit", target, actor, row["agent_id"],
                                  "upsert", {"name": row["name"], **change}, source=row["source"], shown=change,
                                  before=row)

    async def set_enabled(self, project_id: int, schedule_id: int, enabled: bool, actor: Actor) -> dict[str, Any]:
        row = await self.get(project_id, schedule_id)
        action = "schedule.enable" if enabled else "schedule.disable"
        target = f"schedule:{row['name']}"
        try:
            self._check_writable(row)
        except CollectorError as exc:
            await self._refused(actor, project_id, action, target, exc)
            raise
        return await self._change(project_id, row["engine"], action, target, actor, row["agent_id"], "upsert",
                                  {"name": row["name"], "enabled": enabled}, source=row["source"], shown={},
                                  before=row)

    async def delete(self, project_id: int, schedule_id: int, actor: Actor) -> None:
        row = await self.get(project_id, schedule_id)
        target = f"schedule:{row['name']}"
        try:
            self._check_writable(row)
        except CollectorError as exc:
            await self._refused(actor, project_id, "schedule.delete", target, exc)
            raise
        await self._change(project_id, row["engine"], "schedule.delete", target, actor, row["agent_id"], "delete",
                           {"name": row["name"]}, source=row["source"], shown={}, before=row)

    async def trigger(self, project_id: int, schedule_id: int, actor: Actor) -> dict[str, Any]:
        row = await self.get(project_id, schedule_id)
        target = f"schedule:{row['name']}"
        engine = row["engine"]
        try:
            session = self._session_for(project_id, engine, f"{engine}.schedules.trigger", row["agent_id"])
            async with self._lock(session.agent_id):
                result = await self._ask(session, engine, "trigger", {"name": row["name"], "actor": actor.name})
        except CollectorError as exc:
            await self._refused(actor, project_id, "schedule.trigger", target, exc)
            raise
        fire = _fire_rows([result.get("fire")] if isinstance(result, dict) else [], engine, session.agent_id)
        task_id = result.get("task_id") if isinstance(result, dict) else None

        async def tx_fn(tx: Any) -> None:
            await self.store.insert_fires(tx, project_id, fire)
            await self.audit.record(tx, actor.entry(project_id, "schedule.trigger", target, task_id=task_id,
                                                    task=row["task"], agent=session.agent_id))

        await self.store.write(tx_fn)
        return {"task_id": task_id, "fire": fire[0] if fire else None}

    def _check_writable(self, row: dict[str, Any]) -> None:
        if row["source"] == "code":
            where = "in beat_schedule in code" if row["engine"] == "celery" else f"in code ({row['engine']})"
            raise Conflict(f"schedule {row['name']!r} is defined {where} (read-only): change it "
                           "there; it can still be triggered", code="read_only")

    async def _change(self, project_id: int, engine: str, action: str, target: str, actor: Actor,
                      agent_id: int | None, op: str, args: dict[str, Any], *, source: str, shown: dict[str, Any],
                      before: dict[str, Any] | None = None) -> dict[str, Any]:
        """Apply one change through the scheduler's agent, then store the entry
        as it answers and audit the change, in one transaction."""
        shown = {k: v for k, v in shown.items() if k not in ("args", "kwargs", "options")}
        try:
            session = self._session_for(project_id, engine, f"{engine}.schedules.{op}", agent_id)
            async with self._lock(session.agent_id):
                result = await self._ask(session, engine, op, args)
                return await self._store_change(project_id, engine, action, target, actor, session, op, result,
                                                source, shown, before)
        except CollectorError as exc:
            await self._refused(actor, project_id, action, target, exc, **shown)
            raise

    async def _store_change(self, project_id: int, engine: str, action: str, target: str, actor: Actor,
                            session: Any, op: str, result: Any, source: str, shown: dict[str, Any],
                            before: dict[str, Any] | None) -> dict[str, Any]:
        now = time.time()

        async def tx_fn(tx: Any) -> dict[str, Any]:
            detail: dict[str, Any] = {"agent": session.agent_id, **shown}
            if op == "delete":
                if before is not None:
                    await self.store.delete_schedules(tx, project_id, [before["id"]])
                await self.audit.record(tx, actor.entry(project_id, action, target, **detail))
                return {}
            if not isinstance(result, dict):
                raise Conflict("the scheduler answered no entry", code="scheduler_refused")
            old = await self.store.schedule_tx(tx, project_id, engine, result.get("name", ""))
            row = _entry_row(result, engine, result.get("scheduler") or (old or {}).get("scheduler") or "unknown",
                             session.agent_id, source, old, now)
            if row is None:
                raise Conflict("the scheduler answered an entry z4j cannot store", code="scheduler_refused")
            await self.store.put_schedules(tx, project_id, [row])
            if before is not None:
                changed = sorted(k for k in DEFINITION if before.get(k) != row.get(k))
                detail["changed"] = changed
            await self.audit.record(tx, actor.entry(project_id, action, target, **detail))
            return row

        row = await self.store.write(tx_fn)
        if op == "delete":
            return {}
        stored = await self.store.schedule_by_name(project_id, engine, row["name"])
        if stored is None:
            raise NotFound(f"schedule {row['name']!r} vanished")
        return self._view(stored)
