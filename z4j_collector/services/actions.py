"""Actions on tasks, queues and workers: typed, checked and audited commands.

Each action is a command (services/commands.py: stored, audited as
``command.<engine>.<action>`` with the task, queue or worker as target) sent
to the agent that can do it:

* retry: to the agent that sealed the task's original call (only it can open
  ``tasks.replay``); refused when nothing was sealed, never run with
  placeholders;
* cancel: revoke a queued task; a running one only with terminate + confirm;
* purge: a whole queue or the messages matching a name or an age;
* worker control: Flower's controls, checked here before anything is sent;
* bulk retry: a job (a ``commands`` row with the filter and its progress)
  that walks the task list page by page and retries each match once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import re
import time
from dataclasses import asdict
from typing import Any

from z4j_collector.errors import CollectorError, Conflict, NotFound
from z4j_collector.services.agents import AgentRegistry
from z4j_collector.services.audit import Actor, Audit
from z4j_collector.services.commands import CommandService
from z4j_collector.store import actions as sql
from z4j_collector.store.base import SqlStore, TaskQuery

log = logging.getLogger("z4j.collector.actions")

NOT_REPLAYABLE = ("the original arguments were not captured (task seen only by an observer, or published "
                  "before the agent was installed); nothing was sent")
BULK_ACTION = "tasks.bulk_retry"
BULK_DEFAULT, BULK_MAX = 1000, 10_000
BULK_PAGE, BULK_PARALLEL = 200, 16
# Engines whose own store keeps every job's exact call, so a retry needs no
# sealed replay: the agent reads the call from the engine (RQ's job hash).
STORED_CALL_ENGINES = ("rq",)
RUNNING_STATES = ("started",)
FINISHED_STATES = ("success", "failure", "revoked", "rejected")

# op -> (parameters it takes, those it needs)
WORKER_OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pool_grow": (("n",), ()),
    "pool_shrink": (("n",), ()),
    "autoscale": (("max", "min"), ("max", "min")),
    "add_consumer": (("queue",), ("queue",)),
    "cancel_consumer": (("queue",), ("queue",)),
    "rate_limit": (("task_name", "rate"), ("task_name", "rate")),
    "time_limit": (("task_name", "soft", "hard"), ("task_name",)),
    "shutdown": ((), ()),
    "pool_restart": (("reload",), ()),
}
_RATE = re.compile(r"^\d+(\.\d+)?(/[smh])?$")
_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(value: str | float | int | None, name: str = "older_than") -> float | None:
    """Seconds from a number or an age like 90s, 15m, 1h, 2d."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise CollectorError(f"{name} must be seconds or an age like 15m/1h/2d, got {value!r}", code="bad_age")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _AGE.match(value.strip())
        if not match:
            raise CollectorError(f"{name} must be seconds or an age like 15m/1h/2d, got {value!r}", code="bad_age")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise CollectorError(f"{name} must be a positive age, got {value!r}", code="bad_age")
    return seconds


def check_worker_op(op: str, params: dict[str, Any], confirm: bool) -> dict[str, Any]:
    """The op's parameters, checked; raises with a one-line reason."""
    if op not in WORKER_OPS:
        raise CollectorError(f"unknown op {op!r}: use {', '.join(WORKER_OPS)}", code="bad_op")
    allowed, needed = WORKER_OPS[op]
    given = {k: v for k, v in params.items() if v is not None}
    extra = sorted(set(given) - set(allowed))
    if extra:
        takes = ", ".join(allowed) or "no parameters"
        raise CollectorError(f"{op} does not take {', '.join(extra)} (it takes {takes})", code="bad_args")
    missing = [k for k in needed if k not in given]
    if missing:
        raise CollectorError(f"{op} needs {', '.join(missing)}", code="bad_args")
    for key in ("n", "max", "min"):
        if key in given and (not isinstance(given[key], int) or isinstance(given[key], bool)
                             or not 0 <= given[key] <= 10_000):
            raise CollectorError(f"{key} must be a whole number from 0 to 10000, got {given[key]!r}", code="bad_args")
    if op in ("pool_grow", "pool_shrink"):
        given.setdefault("n", 1)
        if given["n"] < 1:
            raise CollectorError("n must be at least 1", code="bad_args")
    if op == "autoscale" and given["min"] > given["max"]:
        raise CollectorError(f"min ({given['min']}) must not exceed max ({given['max']})", code="bad_args")
    for key in ("queue", "task_name"):
        if key in given and (not isinstance(given[key], str) or not 0 < len(given[key]) <= 255):
            raise CollectorError(f"{key} must be a name of 1 to 255 characters", code="bad_args")
    if "rate" in given and (not isinstance(given["rate"], str) or not _RATE.match(given["rate"])):
        raise CollectorError(f"rate must look like 10/s, 100/m, 5/h or 0 (no limit), got {given['rate']!r}",
                             code="bad_args")
    if op == "time_limit":
        if "soft" not in given and "hard" not in given:
            raise CollectorError("time_limit needs soft, hard or both (seconds)", code="bad_args")
        for key in ("soft", "hard"):
            value = given.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise CollectorError(f"{key} must be a positive number of seconds, got {value!r}", code="bad_args")
    if "reload" in given and not isinstance(given["reload"], bool):
        raise CollectorError("reload must be true or false", code="bad_args")
    if op == "shutdown" and not confirm:
        raise CollectorError("shutdown stops the worker for good: pass confirm=true", code="confirm_required")
    return given


class ActionService:
    def __init__(self, store: SqlStore, commands: CommandService, registry: AgentRegistry, audit: Audit) -> None:
        self.store = store
        self.commands = commands
        self.registry = registry
        self.audit = audit
        self._jobs: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------ retry

    async def retry(self, project_id: int, task_id: str, *, actor: Actor, engine: str | None = None,
                    wait_s: float = 10.0, job: str | None = None) -> dict[str, Any]:
        task = await sql.retry_source(self.store, project_id, task_id, engine)
        if task is None:
            raise NotFound(f"no task {task_id!r}")
        action = f"{task['engine']}.retry"
        if not task["replays"] and task["engine"] in STORED_CALL_ENGINES:
            # The engine's own store keeps the exact call (RQ's job hash): the
            # agent that reported the task (else any of the engine) re-enqueues it.
            agent_id = self._route(project_id, action, [task["agent_id"]])
            args = {"task_id": task_id, "name": task["name"], "engine_state": task["engine_state"],
                    **({"queue": task["queue"]} if task["queue"] else {}), **_job(job)}
            return await self.commands.send(project_id, action, args, actor=actor, agent_id=agent_id,
                                            engine=task["engine"], wait_s=wait_s)
        if not task["replays"]:
            await self.audit.write(actor.entry(project_id, f"command.{action}", f"task:{task_id}",
                                               outcome="refused", reason=NOT_REPLAYABLE, **_job(job)))
            raise Conflict(NOT_REPLAYABLE, code="not_replayable")
        # The newest sealed call whose agent is connected (else the newest:
        # the commands service refuses it as offline, and audits that).
        agent_id, blob = next(((a, b) for a, b in task["replays"] if self._route(project_id, action, [a])),
                              task["replays"][0])
        args = {"task_id": task_id, "replay": base64.b64encode(blob).decode(),
                "engine_state": task["engine_state"], "name": task["name"], **_job(job)}
        shown = {"task_id": task_id, "name": task["name"], **_job(job)}
        if agent_id is None:
            reason = f"the agent that captured task {task_id} no longer exists; nothing was sent"
            await self.audit.write(actor.entry(project_id, f"command.{action}", f"task:{task_id}",
                                               outcome="refused", reason=reason, **_job(job)))
            raise Conflict(reason, code="agent_offline")
        return await self.commands.send(project_id, action, args, actor=actor, agent_id=agent_id,
                                        engine=task["engine"], wait_s=wait_s, shown_args=shown)

    # ------------------------------------------------------------ cancel

    async def cancel(self, project_id: int, task_id: str, *, actor: Actor, terminate: bool = False,
                     confirm: bool = False, engine: str | None = None, wait_s: float = 10.0) -> dict[str, Any]:
        task = await sql.task_agent(self.store, project_id, task_id, engine)
        if task is None:
            raise NotFound(f"no task {task_id!r}")
        if task["state"] in FINISHED_STATES:
            raise Conflict(f"task {task_id} is already {task['state']}; nothing to cancel", code="task_finished")
        if terminate and not confirm:
            raise CollectorError("terminating kills the process running the task: pass confirm=true",
                                 code="confirm_required")
        if task["state"] in RUNNING_STATES and not terminate:
            raise Conflict(f"task {task_id} is running; revoking it would not stop it: pass terminate=true "
                           "and confirm=true to kill it", code="task_running")
        action = f"{task['engine']}.cancel"
        # The agent that reported the task, else one that reports its queue: a
        # task only a producer's agent has seen is revoked by its queue's worker.
        preferred = [task["agent_id"]]
        if task["queue"]:
            preferred += [a for e, a in await sql.reporting_agents(self.store, project_id, "queues", task["queue"])
                          if e == task["engine"]]
        agent_id = self._route(project_id, action, preferred)
        args = {"task_id": task_id, "terminate": terminate, **({"queue": task["queue"]} if task["queue"] else {})}
        return await self.commands.send(project_id, action, args,
                                        actor=actor, agent_id=agent_id, engine=task["engine"], wait_s=wait_s)

    # ------------------------------------------------------------ purge

    async def purge(self, project_id: int, queue: str, *, actor: Actor, confirm: bool = False,
                    name: str | None = None, older_than: str | float | None = None, engine: str | None = None,
                    dead_letters: bool = False, wait_s: float = 10.0) -> dict[str, Any]:
        if not queue or len(queue) > 255:
            raise CollectorError("queue must be a name of 1 to 255 characters", code="bad_queue")
        if name is not None and not 0 < len(name) <= 255:
            raise CollectorError("name must be a task name of 1 to 255 characters", code="bad_name")
        age = parse_age(older_than)
        if not confirm:
            what = "matching messages" if name or age else "every message"
            raise CollectorError(f"purging deletes {what} of queue {queue!r} for good: pass confirm=true",
                                 code="confirm_required")
        args: dict[str, Any] = {"queue": queue}
        if name:
            args["name"] = name
        if age:
            args["older_than_s"] = age
        if dead_letters:
            args["dead_letters"] = True
        return await self._queue_command(project_id, queue, "purge", args, actor, engine, wait_s)

    # ------------------------------------------------------------ dead letters

    async def requeue_dead(self, project_id: int, queue: str, *, actor: Actor, task_ids: list[str] | None = None,
                           every: bool = False, confirm: bool = False, engine: str | None = None,
                           wait_s: float = 10.0) -> dict[str, Any]:
        """Put dead letters of a queue (RQ failed registry, Dramatiq XQ, …)
        back on it: the named ones, or all of them with ``every`` + confirm."""
        if not queue or len(queue) > 255:
            raise CollectorError("queue must be a name of 1 to 255 characters", code="bad_queue")
        ids = list(task_ids or [])
        if bool(ids) == every:
            raise CollectorError("give task_ids (the dead letters to requeue) or all=true, not both",
                                 code="bad_args")
        if len(ids) > BULK_MAX or any(not isinstance(t, str) or not 0 < len(t) <= 255 for t in ids):
            raise CollectorError(f"task_ids must be 1 to {BULK_MAX} task ids of 1 to 255 characters",
                                 code="bad_args")
        if every and not confirm:
            raise CollectorError(f"requeueing every dead letter of {queue!r} runs them all again: pass confirm=true",
                                 code="confirm_required")
        args: dict[str, Any] = {"queue": queue, "all": every}
        if ids:
            args["task_ids"] = ids
        return await self._queue_command(project_id, queue, "requeue_dead", args, actor, engine, wait_s)

    async def _queue_command(self, project_id: int, queue: str, verb: str, args: dict[str, Any], actor: Actor,
                             engine: str | None, wait_s: float) -> dict[str, Any]:
        """Send ``<engine>.<verb>`` about a queue, preferring the agent that reports it."""
        known = await sql.reporting_agents(self.store, project_id, "queues", queue)
        engine = engine or (known[0][0] if known else "celery")
        action = f"{engine}.{verb}"
        agent_id = self._route(project_id, action, [a for e, a in known if e == engine])
        return await self.commands.send(project_id, action, args, actor=actor, agent_id=agent_id, engine=engine,
                                        wait_s=wait_s)

    # ------------------------------------------------------------ worker controls

    async def worker_control(self, project_id: int, worker: str, op: str, params: dict[str, Any], *, actor: Actor,
                             confirm: bool = False, engine: str | None = None,
                             wait_s: float = 10.0) -> dict[str, Any]:
        if not worker or len(worker) > 255:
            raise CollectorError("worker must be a name of 1 to 255 characters", code="bad_worker")
        given = check_worker_op(op, params, confirm)
        known = await sql.reporting_agents(self.store, project_id, "workers", worker)
        engine = engine or (known[0][0] if known else "celery")
        action = f"{engine}.worker_control"
        agent_id = self._route(project_id, action, [a for e, a in known if e == engine])
        return await self.commands.send(project_id, action, {"worker": worker, "op": op, **given}, actor=actor,
                                        agent_id=agent_id, engine=engine, wait_s=wait_s)

    def _route(self, project_id: int, action: str, preferred: list[int | None]) -> int | None:
        """The agent that reported the thing, when it is connected and can do
        ``action``; else None (any connected agent of the engine that can)."""
        for agent_id in preferred:
            if agent_id is None:
                continue
            session = self.registry.get(agent_id, action)
            if session is not None and session.project_id == project_id:
                return agent_id
        return None

    # ------------------------------------------------------------ bulk retry

    async def bulk_retry(self, project_id: int, query: TaskQuery, limit: int, *, actor: Actor,
                         resume: str | None = None, dry_run: bool = False, wait_s: float = 0.0) -> dict[str, Any]:
        if resume is not None:
            job = await self.commands.get(project_id, resume)
            if job["action"] != BULK_ACTION:
                raise CollectorError(f"command {resume} is not a bulk retry", code="bad_job")
            if resume in self._jobs and not self._jobs[resume].done():
                raise Conflict(f"bulk retry {resume} is still running", code="job_running")
            query, limit = _query_from(job["args"]["filter"]), job["args"]["limit"]
        elif not 1 <= limit <= BULK_MAX:
            raise CollectorError(f"limit must be between 1 and {BULK_MAX}, got {limit}", code="bad_limit")
        else:
            now = time.time()
            # A snapshot: tasks created after the job started (its own retries
            # among them) are never part of it.
            query = TaskQuery(**{**asdict(query), "states": query.states or ("failure",),
                                 "until": min(query.until, now) if query.until is not None else now})
        if dry_run:
            return await self._count(project_id, query, limit)
        args = {"filter": _query_args(query), "limit": limit}
        if resume is None:
            job_id = await self._create_job(project_id, args, actor)
        else:
            job_id = resume
            await self.audit.write(actor.entry(project_id, BULK_ACTION, f"job:{job_id}", outcome="resumed"))
        await sql.update_job(self.store, job_id, "dispatched", _progress(limit))
        runner = asyncio.create_task(self._run(project_id, job_id, query, limit, actor))
        self._jobs[job_id] = runner
        runner.add_done_callback(lambda _t, j=job_id: self._jobs.pop(j, None))
        if wait_s > 0:
            try:
                await asyncio.wait_for(asyncio.shield(runner), timeout=wait_s)
            except TimeoutError:
                pass
        return await self.commands.get(project_id, job_id)

    async def _create_job(self, project_id: int, args: dict[str, Any], actor: Actor) -> str:
        from z4j_agents import protocol as p

        job_id = p.new_id()

        async def tx_fn(tx: Any) -> None:
            await self.store.insert_command(tx, job_id, project_id, None, BULK_ACTION, args, actor.name)
            await self.audit.record(tx, actor.entry(project_id, BULK_ACTION, f"job:{job_id}", outcome="started",
                                                    **args))

        await self.store.write(tx_fn)
        return job_id

    async def _count(self, project_id: int, query: TaskQuery, limit: int) -> dict[str, Any]:
        matched = 0
        cursor = None
        while matched <= limit:
            rows = await self.store.list_tasks(project_id, query, BULK_PAGE, cursor)
            if not rows:
                break
            matched += len(rows)
            cursor = (rows[-1]["created_at"], rows[-1]["engine"], rows[-1]["task_id"])
        return {"dry_run": True, "matched": min(matched, limit), "capped": matched > limit, "limit": limit,
                "filter": _query_args(query)}

    async def _run(self, project_id: int, job_id: str, query: TaskQuery, limit: int, actor: Actor) -> None:
        progress = _progress(limit)
        seen: set[tuple[str, str]] = set()
        cursor = None
        # Tasks already retried (by any job, or by hand) are skipped: a retry
        # can only follow its task, so the commands since the oldest task of
        # the page hold every retry of the page's tasks.
        retried: set[str] = set()
        loaded_since = math.inf
        gate = asyncio.Semaphore(BULK_PARALLEL)

        async def one(row: dict[str, Any]) -> None:
            async with gate:
                try:
                    command = await self.retry(project_id, row["task_id"], actor=actor, engine=row["engine"],
                                               wait_s=30.0, job=job_id)
                except Conflict as exc:
                    outcome = exc.code if exc.code in ("not_replayable", "agent_offline") else "failed"
                    _note(progress, outcome, row["task_id"], exc.message)
                    return
                except Exception as exc:  # noqa: BLE001 - one task's trouble never stops the job
                    log.exception("bulk retry %s: task %s", job_id, row["task_id"])
                    _note(progress, "failed", row["task_id"], f"{type(exc).__name__}: {exc}")
                    return
                if command["state"] == "succeeded":
                    progress["retried"] += 1
                else:
                    _note(progress, "failed", row["task_id"], command["error"] or f"command {command['state']}")

        try:
            while not progress["capped"]:
                rows = await self.store.list_tasks(project_id, query, BULK_PAGE, cursor)
                if not rows:
                    break
                cursor = (rows[-1]["created_at"], rows[-1]["engine"], rows[-1]["task_id"])
                if rows[-1]["created_at"] < loaded_since:
                    loaded_since = rows[-1]["created_at"]
                    retried = await sql.retried_since(self.store, project_id, loaded_since)
                todo = []
                for row in rows:
                    key = (row["engine"], row["task_id"])
                    if key in seen:
                        continue
                    if progress["matched"] >= limit:
                        progress["capped"] = True
                        break
                    seen.add(key)
                    progress["matched"] += 1
                    if row["task_id"] in retried:
                        progress["already_retried"] += 1
                    else:
                        todo.append(row)
                await asyncio.gather(*(one(row) for row in todo))
                await sql.update_job(self.store, job_id, "dispatched", progress)
            progress["done"] = True
            state, outcome, error = "succeeded", "ok", None
        except Exception as exc:  # noqa: BLE001 - the job row says why; resume picks up the rest
            log.exception("bulk retry %s failed", job_id)
            state, outcome, error = "failed", "failed", f"{type(exc).__name__}: {exc}"
        counts = {k: v for k, v in progress.items() if k != "errors"}

        async def finish(tx: Any) -> None:
            # The job's end and its audit entry commit together: whoever sees
            # the job finished finds the entry.
            await sql.update_job(tx, job_id, state, progress, error=error, finished=True)
            await self.audit.record(tx, actor.entry(project_id, f"{BULK_ACTION}.result", f"job:{job_id}",
                                                    outcome=outcome, **counts))

        await self.store.write(finish)


def _job(job: str | None) -> dict[str, str]:
    return {"job": job} if job else {}


def _progress(limit: int) -> dict[str, Any]:
    return {"limit": limit, "matched": 0, "retried": 0, "already_retried": 0, "not_replayable": 0, "agent_offline": 0,
            "failed": 0, "capped": False, "done": False, "errors": []}


def _note(progress: dict[str, Any], outcome: str, task_id: str, message: str) -> None:
    progress[outcome] += 1
    if len(progress["errors"]) < 20:
        progress["errors"].append({"task_id": task_id, "outcome": outcome, "message": message[:300]})


_FILTER_KEYS = ("states", "not_states", "name", "queue", "worker", "engine", "since", "until", "search",
                "parent_id", "root_id")


def _query_args(query: TaskQuery) -> dict[str, Any]:
    out = {k: getattr(query, k) for k in _FILTER_KEYS if getattr(query, k) not in (None, ())}
    for key in ("states", "not_states"):
        if key in out:
            out[key] = list(out[key])
    return out


def _query_from(args: dict[str, Any]) -> TaskQuery:
    values = {k: args.get(k) for k in _FILTER_KEYS if args.get(k) is not None}
    for key in ("states", "not_states"):
        if key in values:
            values[key] = tuple(values[key])
    return TaskQuery(**values)
