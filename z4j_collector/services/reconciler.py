"""The reconciler: closes tasks stuck in ``received``/``started``.

A task is stuck when its worker is gone (the worker row says offline, or
nothing was heard from it for ``worker_offline_after_s``) or it has run for
``stuck_after_s``. Every ``Z4J_RECONCILE_INTERVAL_S`` one pass takes, per
project, at most ``reconcile_batch`` stuck tasks in the order they became
due (store/reconcile.py: a queue, so a task the probe keeps failing on goes
to the back and never starves the others), and asks one connected agent of
the task's engine that declared ``<engine>.probe`` what the engine's own
store (Celery's result backend, RQ's registries, …) knows:

* a terminal state there (success/failure/revoked/rejected, with result and
  traceback) closes the task with it;
* nothing known (or only "still running") while the worker is gone closes it
  ``lost`` (engine_state ``LOST``, rank 1: a real terminal event that comes
  later still wins);
* anything else (probe failed or timed out, a retry is pending, the worker is
  alive and the task merely long) leaves it open and looks again later, with
  exponential backoff (``Z4J_RECONCILE_BACKOFF_S`` doubling per attempt, at
  most ``Z4J_RECONCILE_BACKOFF_MAX_S``);
* with no agent able to probe, the task is marked for a later look the same
  way, and closed ``lost`` unprobed only once its worker has been gone for
  ``lost_unprobed_after_s`` (default one hour).

Each change is an event on the task's timeline plus an audit row
(``task.reconciled``, actor ``system``, outcome ``settled``/``lost``, old and
new state) in the same transaction. Runs in every collector process: with
several collectors (issue 9) each runs passes; a task already closed by
another is skipped inside the transaction (its state is re-read under lock),
so the worst case is a duplicate probe, never a duplicate change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.redaction import default_redactor
from z4j_collector.errors import CollectorError
from z4j_collector.services.agents import AgentRegistry
from z4j_collector.services.audit import SYSTEM, Actor, Audit
from z4j_collector.services.commands import CommandService
from z4j_collector.services.metrics import Family
from z4j_collector.settings import env_number
from z4j_collector.store.base import IngestResult, SqlStore
from z4j_collector.store.reconcile import SETTING_COLUMNS
from z4j_collector.services.periodic import cancel, every

log = logging.getLogger("z4j.collector.reconciler")

# Project settings: (column, environment variable for the collector-wide default, default, integer?)
SETTINGS = (
    ("stuck_after_s", "Z4J_RECONCILE_STUCK_AFTER_S", 3600.0, False),
    ("worker_offline_after_s", "Z4J_RECONCILE_WORKER_OFFLINE_S", 60.0, False),
    ("reconcile_batch", "Z4J_RECONCILE_BATCH", 500, True),
    ("lost_unprobed_after_s", "Z4J_RECONCILE_LOST_UNPROBED_S", 3600.0, False),
)
MAX_BATCH = 10_000
TERMINAL = {"success": "succeeded", "failure": "failed", "revoked": "revoked", "rejected": "rejected"}
UNKNOWN = frozenset({"unknown", "pending", "received", "started"})
"""What a probe may answer for a task the engine's store does not (or no longer) know."""
_KNOWN_STATES = frozenset(p.TASK_STATES) | {"unknown"}


@dataclass
class PassStats:
    looked: int = 0
    settled: int = 0
    lost: int = 0
    later: int = 0
    no_agent: int = 0
    skipped: int = 0
    """Closed by a real event between the look and the change."""
    projects: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("projects", "looked", "settled", "lost", "later", "no_agent",
                                               "skipped", "errors")}


def defaults_from_env() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column, var, default, integer in SETTINGS:
        value = env_number(var, default)
        out[column] = int(value) if integer else value
    return out


def check_settings(data: Any) -> dict[str, Any]:
    """A settings body, checked: known keys, positive numbers or null (default)."""
    if not isinstance(data, dict):
        raise CollectorError("the body must be a JSON object", code="invalid_request")
    unknown = set(data) - set(SETTING_COLUMNS)
    if unknown:
        raise CollectorError(f"unknown field(s) {', '.join(sorted(unknown))}: use {', '.join(SETTING_COLUMNS)}",
                             code="invalid_request")
    out: dict[str, Any] = {}
    for column, _, _, integer in SETTINGS:
        if column not in data:
            continue
        value = data[column]
        if value is None:
            out[column] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                or (integer and (value != int(value) or value > MAX_BATCH)) or value == float("inf"):
            need = f"a whole number from 1 to {MAX_BATCH}" if integer else "a number of seconds above 0"
            raise CollectorError(f"{column} must be {need} or null (the default), got {value!r}",
                                 code="invalid_request")
        out[column] = int(value) if integer else float(value)
    return out


class Reconciler:
    def __init__(self, store: SqlStore, registry: AgentRegistry, commands: CommandService, audit: Audit,
                 interval_s: float | None = None, hub: Any = None) -> None:
        self.store = store
        self.hub = hub
        self.totals: dict[tuple[int, str], int] = {}
        """(project id, outcome settled/lost/later/no_agent) -> tasks, since this process started."""
        self.passes = 0
        self.registry = registry
        self.commands = commands
        self.audit = audit
        self.interval_s = interval_s or env_number("Z4J_RECONCILE_INTERVAL_S", 30.0)
        self.backoff_s = env_number("Z4J_RECONCILE_BACKOFF_S", 60.0)
        self.backoff_max_s = env_number("Z4J_RECONCILE_BACKOFF_MAX_S", 3600.0)
        self.probe_timeout_s = env_number("Z4J_RECONCILE_PROBE_TIMEOUT_S", 15.0)
        self.defaults = defaults_from_env()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._redactor = default_redactor()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(every(self.interval_s, self._logged_pass, "reconciler pass"))

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _logged_pass(self) -> None:
        stats = await self.run_pass()
        if stats.looked:
            log.info("reconciler pass: %s", stats.as_dict())

    # ------------------------------------------------------------ settings

    async def settings(self, project_id: int) -> dict[str, Any]:
        own = await self.store.reconcile_settings(project_id)
        effective = {c: own[c] if own[c] is not None else self.defaults[c] for c in SETTING_COLUMNS}
        return {"settings": effective, "project": own, "defaults": dict(self.defaults),
                "interval_s": self.interval_s, "backoff_s": self.backoff_s, "backoff_max_s": self.backoff_max_s,
                "stuck": await self.store.count_stuck(project_id, time.time(), effective["stuck_after_s"],
                                                      effective["worker_offline_after_s"])}

    async def set_settings(self, project_id: int, data: Any, actor: Actor) -> dict[str, Any]:
        changes = check_settings(data)
        old = await self.store.reconcile_settings(project_id)
        new = old | changes

        async def tx_fn(tx: Any) -> None:
            await self.store.set_reconcile_settings(tx, project_id, new)
            await self.audit.record(tx, actor.entry(project_id, "reconciler.settings", "project",
                                                    old=old, new=new))

        await self.store.write(tx_fn)
        return await self.settings(project_id)

    # ------------------------------------------------------------ passes

    async def run_pass(self, project_id: int | None = None) -> PassStats:
        """One bounded pass over every project (or one)."""
        async with self._lock:
            stats = PassStats()
            if project_id is None:
                projects = [row["id"] for row in await self.store.list_projects()]
            else:
                projects = [project_id]
            for pid in projects:
                stats.projects += 1
                before = (stats.settled, stats.lost, stats.later, stats.no_agent)
                try:
                    await self._project_pass(pid, stats)
                except Exception as exc:  # noqa: BLE001 - one project's trouble never stops the others
                    log.exception("reconciler: project %s", pid)
                    stats.errors.append(f"project {pid}: {type(exc).__name__}: {exc}")
                after = (stats.settled, stats.lost, stats.later, stats.no_agent)
                for outcome, old, new in zip(("settled", "lost", "later", "no_agent"), before, after):
                    if new > old:
                        self.totals[(pid, outcome)] = self.totals.get((pid, outcome), 0) + new - old
            self.passes += 1
            return stats

    async def metrics(self) -> list[Family]:
        """Prometheus families (services/metrics.py add_source)."""
        slugs = await self.store.metric_project_slugs()
        tasks = Family("z4j_reconciler_tasks_total", "counter",
                       "Stuck tasks the reconciler handled since this collector process started, by outcome: "
                       "settled (real state applied), lost, later (left for a later look), no_agent (no agent "
                       "could probe; also counted as later or lost).")
        for (pid, outcome), count in sorted(self.totals.items()):
            tasks.add(count, project=slugs.get(pid, str(pid)), outcome=outcome)
        passes = Family("z4j_reconciler_passes_total", "counter", "Reconciler passes since this process started.")
        passes.add(self.passes)
        return [tasks, passes]

    async def _project_pass(self, project_id: int, stats: PassStats) -> None:
        own = await self.store.reconcile_settings(project_id)
        cfg = {c: own[c] if own[c] is not None else self.defaults[c] for c in SETTING_COLUMNS}
        now = time.time()
        candidates = await self.store.stuck_candidates(project_id, now, cfg["stuck_after_s"],
                                                       cfg["worker_offline_after_s"], int(cfg["reconcile_batch"]))
        stats.looked += len(candidates)
        by_engine: dict[str, list[dict[str, Any]]] = {}
        for task in candidates:
            gone_since = task["worker_seen_at"] if task["worker_seen_at"] is not None else task["updated_at"]
            task["gone"] = task["worker_state"] == "offline" or gone_since < now - cfg["worker_offline_after_s"]
            task["gone_since"] = gone_since
            by_engine.setdefault(task["engine"], []).append(task)
        for engine, tasks in by_engine.items():
            await self._engine_pass(project_id, engine, tasks, cfg, now, stats)

    async def _engine_pass(self, project_id: int, engine: str, tasks: list[dict[str, Any]], cfg: dict[str, Any],
                           now: float, stats: PassStats) -> None:
        action = f"{engine}.probe"
        # Each task is probed by the agent that reported it when that agent
        # can probe (several apps of one engine in a project each know only
        # their own store), else by any agent of the engine that can.
        groups: dict[int, tuple[Any, list[dict[str, Any]]]] = {}
        for task in tasks:
            session = self.registry.get(task["agent_id"], action) if task["agent_id"] is not None else None
            if session is None or session.project_id != project_id:
                session = self.registry.find(project_id, action, engine)
            groups.setdefault(id(session), (session, []))[1].append(task)
        for session, group in groups.values():
            await self._probe_group(project_id, engine, session, group, cfg, now, stats)

    async def _probe_group(self, project_id: int, engine: str, session: Any, tasks: list[dict[str, Any]],
                           cfg: dict[str, Any], now: float, stats: PassStats) -> None:
        action = f"{engine}.probe"
        changes: list[tuple[dict[str, Any], p.TaskEvent, str]] = []
        later: list[dict[str, Any]] = []
        if session is None:
            stats.no_agent += len(tasks)
            for task in tasks:
                if task["gone"] and task["gone_since"] < now - cfg["lost_unprobed_after_s"]:
                    reason = (f"no agent could probe {engine}; worker gone for more than "
                              f"{cfg['lost_unprobed_after_s']:.0f} s")
                    changes.append((task, self._event(task, "lost", {}, now), reason))
                else:
                    later.append(task)
        else:
            answers: dict[str, Any] = {}
            failure: str | None = None
            try:
                result = await self.commands.ask(session, action, {"task_ids": [t["task_id"] for t in tasks]},
                                                 timeout_s=self.probe_timeout_s, engine=engine)
                if not result.ok:
                    failure = f"probe refused: {result.error}"
                elif isinstance(result.result, dict) and isinstance(result.result.get("tasks"), dict):
                    answers = result.result["tasks"]
                else:
                    failure = "probe answered without a tasks object"
            except TimeoutError:
                failure = f"probe timed out after {self.probe_timeout_s:.0f} s"
            except Exception as exc:  # noqa: BLE001 - the agent went away meanwhile
                failure = f"probe failed: {type(exc).__name__}: {exc}"
            if failure:
                log.warning("reconciler: project %s, %s: %s", project_id, engine, failure)
            for task in tasks:
                answer = answers.get(task["task_id"])
                decided = None if failure else self._decide(task, answer, now)
                if decided is None:
                    later.append(task)
                else:
                    changes.append((task, *decided))
        if later:
            stats.later += len(later)
            await self.store.reconcile_later(project_id, engine, [
                (t["task_id"], now + min(self.backoff_max_s, self.backoff_s * 2 ** min(t["reconcile_attempts"] or 0, 30)))
                for t in later])
        if changes:
            await self._apply(project_id, engine, changes, stats)

    def _decide(self, task: dict[str, Any], answer: Any, now: float) -> tuple[p.TaskEvent, str] | None:
        """(event, reason) closing the task, or None: look again later."""
        if not isinstance(answer, dict) or answer.get("error"):
            return None
        state = answer.get("state")
        if state not in _KNOWN_STATES:
            return None
        if state in TERMINAL:
            where = answer.get("engine_state") or state.upper()
            return self._event(task, state, answer, now), f"the engine's store says {where}"
        if state in UNKNOWN and task["gone"]:
            what = "does not know the task" if state in ("unknown", "pending") else f"still says {state}"
            return self._event(task, "lost", answer, now), f"worker gone and the engine's store {what}"
        return None  # a retry is on its way, or the worker lives and the task is long: look later

    def _event(self, task: dict[str, Any], state: str, answer: dict[str, Any], now: float) -> p.TaskEvent:
        kind = "lost" if state == "lost" else TERMINAL[state]
        ts = answer.get("date_done")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not 0 < ts <= now + 300:
            ts = now
        fields: dict[str, Any] = {}
        if state != "lost":
            engine_state = answer.get("engine_state")
            fields["engine_state"] = str(engine_state)[:64] if engine_state else state.upper()
            for key in ("result", "exception", "traceback"):
                value = answer.get(key)
                if value is not None:
                    if key != "result":
                        value = str(value)
                    value, masked = self._redactor.redact(value)
                    fields["redacted"] = fields.get("redacted", False) or masked
                    fields[key] = value if key == "result" else str(value)
        else:
            fields["engine_state"] = "LOST"
        return p.TaskEvent(id=p.new_id(), task_id=task["task_id"], engine=task["engine"], kind=kind, ts=ts,
                           extra={"reconciled": True}, **fields)

    async def _apply(self, project_id: int, engine: str, changes: list[tuple[dict[str, Any], p.TaskEvent, str]],
                     stats: PassStats) -> None:
        for start in range(0, len(changes), 250):
            chunk = changes[start:start + 250]

            async def tx_fn(tx: Any, chunk=chunk) -> tuple[int, int, int]:
                still = await self.store.lock_open_tasks(tx, project_id, engine, [t["task_id"] for t, _, _ in chunk])
                events, settled, lost = [], 0, 0
                for task, event, reason in chunk:
                    current = still.get(task["task_id"])
                    if current is None:
                        continue
                    events.append(event)
                    new = p.KIND_TO_STATE[event.kind]
                    outcome = "lost" if new == "lost" else "settled"
                    lost += new == "lost"
                    settled += new != "lost"
                    await self.audit.record(tx, SYSTEM.entry(
                        project_id, "task.reconciled", f"task:{task['task_id']}", outcome=outcome, engine=engine,
                        old=current["state"], new=new, old_engine_state=current["engine_state"],
                        engine_state=event.engine_state, worker=current["worker"], reason=reason))
                await self.store.apply_reconciled(tx, project_id, events)
                changed: list[dict[str, Any]] = []
                if events and self.hub is not None and project_id in self.hub.watched():
                    changed = await self.store.read_back_tasks(tx, project_id, engine, [e.task_id for e in events])
                return settled, lost, len(chunk) - len(events), changed

            settled, lost, skipped, changed = await self.store.write(tx_fn)
            if changed:
                self.hub.publish(IngestResult(outcomes=[], tasks=changed))  # live clients see it at once
            stats.settled += settled
            stats.lost += lost
            stats.skipped += skipped
