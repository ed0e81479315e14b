"""Trends: rollups of task events per minute, hour and day, and retention.

The ingest writer hands every commit's *new* task events to :meth:`Trends.observe`
(a list append, nothing else). Every ``flush_s`` seconds (Z4J_TRENDS_FLUSH_S,
default 5) the pending events are aggregated in memory per (project, engine,
name, queue, bucket) for the three bucket sizes and merged into
``task_rollups`` in one transaction:

* counts: each new event counts once under the state it moves its task to
  (sent -> pending, received, started, retried -> retry, succeeded -> success,
  failed -> failure, revoked, rejected, lost), in the bucket of its timestamp;
* runtime: the event's own runtime (succeeded/failed), else its timestamp
  minus the task's started_at;
* queue wait: a started event's timestamp minus the task's sent_at.

Name, queue, sent_at and started_at missing from an event are read from the
committed task row (one query per 500 tasks, off the ingest path). The hour
and day rows are updated from the same aggregation, so they equal the merge
of their minutes exactly (sketch merges are lossless).

Retention (every Z4J_RETENTION_PASS_S, default 600 s) deletes, per project,
task events, tasks and rollups older than the project's retention in
batches of Z4J_RETENTION_BATCH (default 2,000) rows, one transaction each,
yielding between them so ingest is never held for long. Minute rollups are
kept at most MINUTE_ROLLUP_DAYS; hour and day rollups for the project's
rollup retention.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from z4j_agents import protocol as p
from z4j_collector.sketch import ALPHA, Sketch
from z4j_collector.store.base import IngestResult, SqlStore
from z4j_collector.store.trends import ROLLUP_STATES, RollupKey
from z4j_collector.services.periodic import cancel, every
from z4j_collector.settings import env_number

log = logging.getLogger("z4j.collector.trends")

BUCKETS = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}
MINUTE_ROLLUP_DAYS = 7
MAX_PENDING_EVENTS = 1_000_000
AGGREGATE_SLICE = 1_000
"""Events aggregated between two yields to the event loop: a flush at full
ingest rate holds 150,000 events, half a second of Python, and held the
loop (and so ingest's next commit) that long in one go."""
_STATE_INDEX = {state: i for i, state in enumerate(ROLLUP_STATES)}
_KIND_INDEX = {kind: _STATE_INDEX[state] for kind, state in p.KIND_TO_STATE.items()}
_FINISHED = frozenset({"succeeded", "failed"})


def merge_sketch_text(stored: str | None, new: str | None) -> str | None:
    if not new:
        return stored
    if not stored:
        return new
    return Sketch.from_text(stored).merge(Sketch.from_text(new)).to_text()


class _Acc:
    __slots__ = ("counts", "runtime", "wait")

    def __init__(self) -> None:
        self.counts = [0] * len(ROLLUP_STATES)
        self.runtime: Sketch | None = None
        self.wait: Sketch | None = None


class Trends:
    def __init__(self, store: SqlStore, flush_s: float | None = None, retention_s: float | None = None,
                 retention_batch: int | None = None) -> None:
        self.store = store
        self.flush_s = flush_s or env_number("Z4J_TRENDS_FLUSH_S", 5.0)
        self.retention_s = retention_s or env_number("Z4J_RETENTION_PASS_S", 600.0)
        self.retention_batch = retention_batch or int(env_number("Z4J_RETENTION_BATCH", 2000))
        self.pending: list[tuple[int, list[p.TaskEvent]]] = []
        self.pending_events = 0
        self.dropped = 0
        self.flushes = 0
        self.deleted = {"task_events": 0, "tasks": 0, "task_rollups": 0}
        self.partitions_dropped = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._retention: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Roll up what this process ingests (every collector of a cluster does)."""
        # A failed flush keeps its events pending for the next one.
        self._tasks = [asyncio.create_task(every(self.flush_s, self.flush, "trends flush"), name="z4j-trends-flush")]

    def start_retention(self) -> None:
        """The retention passes (the cluster's leader alone runs them)."""
        self._retention = asyncio.create_task(every(self.retention_s, self.retention_pass, "retention pass"),
                                              name="z4j-retention")

    async def stop_retention(self) -> None:
        await cancel(self._retention)
        self._retention = None

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel(task)
        self._tasks = []
        try:
            await self.flush()  # what was committed but not yet rolled up
        except Exception as exc:  # noqa: BLE001
            log.warning("last trends flush failed: %s", exc)

    # ------------------------------------------------------------ ingest hook

    def observe(self, result: IngestResult) -> None:
        """Called by the ingest writer after each commit: keep the new task events."""
        for project_id, events in result.fresh:
            if self.pending_events + len(events) > MAX_PENDING_EVENTS:
                self.dropped += len(events)
                continue
            self.pending.append((project_id, events))
            self.pending_events += len(events)

    # ------------------------------------------------------------ rollups

    async def flush(self) -> int:
        """Roll pending events into task_rollups; the number of events rolled up."""
        if not self.pending:
            return 0
        pending, self.pending, count = self.pending, [], self.pending_events
        self.pending_events = 0
        try:
            rows = await self._aggregate(pending)
            await self.store.merge_rollups(rows, merge_sketch_text)
        except BaseException:
            self.pending[:0] = pending  # put back in front; next flush retries
            self.pending_events += count
            raise
        self.flushes += 1
        return count

    async def _aggregate(self, pending: list[tuple[int, list[p.TaskEvent]]]
                         ) -> dict[RollupKey, tuple[list[int], str | None, str | None]]:
        by_engine: dict[tuple[int, str], list[p.TaskEvent]] = {}
        for project_id, events in pending:
            for ev in events:
                by_engine.setdefault((project_id, ev.engine), []).append(ev)
        accs: dict[RollupKey, _Acc] = {}
        aggregated = 0  # across every (project, engine): many small groups must yield too
        for (project_id, engine), events in by_engine.items():
            need = [ev.task_id for ev in events
                    if ev.name is None or ev.queue is None or ev.kind == "started"
                    or (ev.kind in _FINISHED and ev.runtime is None)]
            facts = await self.store.trend_task_facts(project_id, engine, need) if need else {}
            for ev in events:
                aggregated += 1
                if aggregated % AGGREGATE_SLICE == 0:
                    await asyncio.sleep(0)
                fact = facts.get(ev.task_id)
                name = ev.name if ev.name is not None else (fact[0] if fact else None)
                queue = ev.queue if ev.queue is not None else (fact[1] if fact else None)
                runtime = wait = None
                if ev.kind in _FINISHED:
                    runtime = ev.runtime
                    if runtime is None and fact and fact[3] is not None:
                        runtime = max(0.0, ev.ts - fact[3])
                elif ev.kind == "started" and fact and fact[2] is not None:
                    wait = max(0.0, ev.ts - fact[2])
                index = _KIND_INDEX[ev.kind]
                for size, seconds in BUCKETS.items():
                    key = (project_id, size, math.floor(ev.ts / seconds) * seconds, engine, name or "", queue or "")
                    acc = accs.get(key)
                    if acc is None:
                        acc = accs[key] = _Acc()
                    acc.counts[index] += 1
                    if runtime is not None:
                        if acc.runtime is None:
                            acc.runtime = Sketch()
                        acc.runtime.add(runtime)
                    if wait is not None:
                        if acc.wait is None:
                            acc.wait = Sketch()
                        acc.wait.add(wait)
        return {key: (acc.counts, acc.runtime.to_text() if acc.runtime else None,
                      acc.wait.to_text() if acc.wait else None) for key, acc in accs.items()}

    async def read(self, project_id: int, bucket: str, group_by: str, since: float, until: float,
                   engine: str | None, name: str | None, queue: str | None) -> dict[str, Any]:
        seconds = BUCKETS[bucket]
        since = math.floor(since / seconds) * seconds
        rows = await self.store.read_rollups(project_id, bucket, since, until, engine, name, queue)
        groups: dict[str, dict[float, _Acc]] = {}
        for row in rows:
            acc = groups.setdefault(row[group_by], {}).get(row["bucket_start"])
            if acc is None:
                acc = groups[row[group_by]][row["bucket_start"]] = _Acc()
            for i, state in enumerate(ROLLUP_STATES):
                acc.counts[i] += int(row[f"n_{state}"])
            for attr, column in (("runtime", "runtime_sketch"), ("wait", "wait_sketch")):
                if row[column]:
                    sketch = Sketch.from_text(row[column])
                    current = getattr(acc, attr)
                    setattr(acc, attr, sketch if current is None else current.merge(sketch))
        out = []
        for key in sorted(groups):
            buckets = []
            for start in sorted(groups[key]):
                acc = groups[key][start]
                counts = dict(zip(ROLLUP_STATES, acc.counts))
                done = counts["success"] + counts["failure"]
                buckets.append({
                    "start": start, "counts": counts,
                    "failure_rate": counts["failure"] / done if done else None,
                    "runtime": _summary(acc.runtime), "queue_wait": _summary(acc.wait),
                })
            out.append({group_by: key or None, "buckets": buckets})
        return {"bucket": bucket, "group_by": group_by, "since": since, "until": until,
                "relative_error": ALPHA, "groups": out}

    # ------------------------------------------------------------ retention

    async def retention_pass(self, now: float | None = None) -> dict[str, int]:
        """Delete what each project's retention no longer keeps; rows deleted per table."""
        now = time.time() if now is None else now
        deleted = {"task_events": 0, "tasks": 0, "task_rollups": 0}
        limit = self.retention_batch
        store = self.store
        projects = [(pid, await store.get_retention(pid)) for pid in await store.retention_projects()]
        if store.partitioned_events:
            # Whole days that no project keeps any more go at once (a
            # partition dropped); the batched deletes below do the rest.
            await store.ensure_event_partitions(now)
            longest = max((s["events_days"] for _, s in projects if s), default=None)
            if longest is not None:
                self.partitions_dropped += len(await store.drop_event_partitions(now - longest * 86400.0))
        for project_id, settings in projects:
            if not settings:
                continue
            rollup_days = settings["rollups_days"]
            jobs = [
                ("task_events", lambda c, pid=project_id: store.delete_old_events(pid, c, limit),
                 settings["events_days"]),
                ("tasks", lambda c, pid=project_id: store.delete_old_tasks(pid, c, limit), settings["tasks_days"]),
                ("task_rollups", lambda c, pid=project_id: store.delete_old_rollups(pid, "minute", c, limit),
                 min(rollup_days, MINUTE_ROLLUP_DAYS)),
                ("task_rollups", lambda c, pid=project_id: store.delete_old_rollups(pid, "hour", c, limit),
                 rollup_days),
                ("task_rollups", lambda c, pid=project_id: store.delete_old_rollups(pid, "day", c, limit),
                 rollup_days),
            ]
            for table, delete, days in jobs:
                cutoff = now - days * 86400.0
                while True:
                    n = await delete(cutoff)
                    deleted[table] += n
                    await asyncio.sleep(0)  # let the ingest writer in between batches
                    if n < limit:
                        break
        for table, n in deleted.items():
            self.deleted[table] += n
        return deleted


def _summary(sketch: Sketch | None) -> dict[str, Any]:
    if sketch is None or sketch.count == 0:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "mean": None}
    p50, p95, p99 = sketch.quantiles((0.5, 0.95, 0.99))
    return {"count": sketch.count, "p50": p50, "p95": p95, "p99": p99, "mean": sketch.total / sketch.count}
